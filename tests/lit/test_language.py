"""The embedded language-model example: next-token metrics, output KD on masked (B, T, V) logits,
LanguageDistillationModule with a tiny teacher, and every experiments/scenes-lm YAML through ``amad fit``."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from amad.cli import main
from amad.data.scene_text import SceneTextDataModule
from amad.lit.language import LanguageDistillationModule
from amad.losses import AMAD, OneToOne
from amad.metrics.next_token import NextTokenMetrics, next_token_counts
from amad.models import GenericAdapter

EXP = Path(__file__).parents[2] / "experiments" / "scenes-lm"
STUDENTS = ("gt", "kd", "one_to_one", "amad")
TINY = [
    "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar", "false",
    "--data.init_args.train_size", "32", "--data.init_args.val_size", "8", "--data.init_args.test_size", "8",
    "--data.init_args.batch_size", "8",
]  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("scenes-lm")
    mp.setenv("AMAD_CACHE", str(root / "cache"))  # scene pools of these tiny sizes: drawn here, kept here
    mp.setenv("WANDB_MODE", "offline")
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def tiny_teacher(workdir) -> Path:
    """A 2-layer Llama, 8 query / 2 key-value heads, width 32, on the scene-text vocabulary (35 tokens)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32, num_attention_heads=8, num_key_value_heads=2, num_hidden_layers=2, intermediate_size=64,
        vocab_size=35, pad_token_id=0, bos_token_id=5, eos_token_id=6, max_position_embeddings=128,
    )  # fmt: skip
    path = workdir / "tiny-teacher"
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def test_next_token_metrics_by_hand():
    # one text [BOS]=5, 8, 9, [EOS]=6 and one padded [BOS], 9, pad: targets 8, 9, 6 and 9 (4 tokens)
    labels = torch.tensor([[5, 8, 9, 6], [5, 9, -100, -100]])
    copy = torch.tensor([[False, True, True, False], [False, False, False, False]])
    logits = torch.full((2, 3, 10), -10.0)
    logits[0, 0, 8] = 0.0  # right
    logits[0, 1, 7] = 0.0  # wrong (9 expected)
    logits[0, 2, 6] = 0.0  # right
    logits[1, 0, 9] = 0.0  # right
    logits[1, 1:, 3] = 5.0  # padding targets: never counted
    counts = next_token_counts(logits, labels, copy)
    p_top = 1 / (1 + 9 * math.exp(-10))  # softmax of the 0 among nine -10s
    p_other = math.exp(-10) * p_top
    nll = 3 * -math.log(p_top) - math.log(p_other)
    assert counts.tolist() == pytest.approx([nll, 3, 4, 1, 2])
    metric = NextTokenMetrics()
    metric.update(logits[:1], labels[:1], copy[:1])
    metric.update(logits[1:], labels[1:], copy[1:])  # token-weighted over batches, not a mean of means
    out = metric.compute()
    assert out["acc"].item() == pytest.approx(0.75)
    assert out["copy_acc"].item() == pytest.approx(0.5)
    assert out["ppl"].item() == pytest.approx(math.exp(nll / 4), rel=1e-5)
    with pytest.raises(ValueError, match=r"\(B, T - 1, V\)"):
        next_token_counts(logits, labels[:, :3])


def test_output_kd_on_causal_lm_logits_counts_only_real_targets(tiny_teacher):
    from amad.distill import DistillationTask
    from amad.models import derive_student

    teacher = GenericAdapter(LlamaForCausalLM.from_pretrained(tiny_teacher))
    student = derive_student(teacher, num_heads=2, init="random", seed=0)
    task = DistillationTask(teacher, student, None, alpha=0.0, beta=1.0, kd_temperature=2.0)
    ids = torch.tensor([[5, 8, 9, 10, 6], [5, 11, 6, 0, 0]])
    mask = (torch.arange(5) < torch.tensor([[5], [3]])).long()
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    kd = task(batch)["loss_kd"]
    with torch.no_grad():
        zt = teacher.model(input_ids=ids, attention_mask=mask).logits[:, :-1] / 2
        zs = student.model(input_ids=ids, attention_mask=mask).logits[:, :-1] / 2
        kl = (zt.softmax(-1) * (zt.log_softmax(-1) - zs.log_softmax(-1))).sum(-1)  # (B, T - 1)
    real = [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]  # targets 8 9 10 6 | 11 6
    expected = 4 * sum(kl[b, t] for b, t in real) / len(real)
    assert kd.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("name", "attention", "beta", "gamma"),
    [("gt", None, 0.0, 0.0), ("kd", None, 1.0, 0.0), ("one_to_one", OneToOne(), 1.0, 1.0), ("amad", AMAD(), 1.0, 1.0)],
)
def test_students_train_two_steps(name, attention, beta, gamma, tiny_teacher, workdir):
    dm = SceneTextDataModule(train_size=16, val_size=8, test_size=8, batch_size=8)
    system = LanguageDistillationModule(
        teacher=str(tiny_teacher),
        student={"num_heads": 2, "init": "random", "seed": 0},
        attention=attention,
        beta=beta,
        gamma=gamma,
        vocab_size=dm.vocab_size,
    )
    assert (system.distillation.teacher.num_heads("decoder.self"), system.student.num_heads("decoder.self")) == (8, 2)
    before = [p.detach().clone() for p in system.student.parameters()]
    logs = workdir / f"logs-{name}"
    trainer = L.Trainer(
        max_steps=2, limit_val_batches=1, logger=L.pytorch.loggers.CSVLogger(logs), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(system, dm)
    m = dict(trainer.logged_metrics)
    trainer.test(system, dm, verbose=False)
    m.update(trainer.logged_metrics)
    assert any(not torch.equal(a, b) for a, b in zip(before, system.student.parameters(), strict=True))
    assert {"train/loss_task", "val/acc", "val/ppl", "val/copy_acc", "test/acc", "test/copy_acc"} <= set(m)
    assert ("train/loss_kd" in m) == (beta > 0) and ("train/loss_attn" in m) == (gamma > 0)
    assert 0 <= float(m["test/acc"]) <= 1 and float(m["test/ppl"]) > 1


def test_every_yaml_runs_teacher_first(workdir):
    teacher = workdir / "teacher"
    logs = ["--trainer.logger.init_args.save_dir", str(workdir / "runs")]
    rc = main(
        ["fit", "--config", str(EXP / "teacher.yaml"), *TINY, *logs, "--model.init_args.export_dir", str(teacher)]
    )
    assert rc in (0, None) and (teacher / "config.json").is_file() and (teacher / "tokenizer.json").is_file()
    for name in STUDENTS:
        rc = main(
            ["fit", "--config", str(EXP / f"{name}.yaml"), *TINY, *logs, "--model.init_args.teacher", str(teacher)]
        )
        assert rc in (0, None), name
    metrics = sorted((workdir / "runs" / "scenes-lm").glob("version_*/metrics.csv"))
    assert len(metrics) == 1 + len(STUDENTS)
    for path in metrics:
        rows = list(csv.DictReader(path.open()))
        assert any(r.get("val/copy_acc") for r in rows), path
    system = LanguageDistillationModule(teacher=str(teacher), student={"num_heads": 2, "init": "random"}, vocab_size=35)
    t, s = system.distillation.teacher, system.student
    assert (t.num_heads("decoder.self"), t.num_kv_heads("decoder.self")) == (8, 2)
    assert (s.num_heads("decoder.self"), s.num_kv_heads("decoder.self")) == (2, 1)
    assert s.num_layers("decoder.self") == t.num_layers("decoder.self") == 4


def test_bad_teachers_and_data_are_one_line(workdir, tiny_teacher):
    with pytest.raises(FileNotFoundError, match="train the teacher first"):
        LanguageDistillationModule(teacher=str(workdir / "nothing"))
    with pytest.raises(ValueError, match="vocabulary of 35 tokens, the data 50"):
        LanguageDistillationModule(teacher=str(tiny_teacher), student={"num_heads": 2}, vocab_size=50)
    with pytest.raises(ValueError, match="not task 'classify'"):
        LanguageDistillationModule(task="classify", vocab_size=35)


SHIPPED = Path(__file__).parents[2] / "experiments" / "teachers" / "scenes_lm"


@pytest.mark.skipif(not (SHIPPED / "teacher.json").is_file(), reason="no shipped scenes-lm teacher")
def test_the_shipped_teacher_is_intact_small_and_reads_the_data():
    import json

    from amad.artefacts import folder_digests
    from amad.data.scene_text import scene_text_tokenizer

    record = json.loads((SHIPPED / "teacher.json").read_text())
    assert record["files"] == folder_digests(SHIPPED, skip=("teacher.json",))
    assert record["command"].startswith("amad compare") and record["config"]["seed"] == 0 and record["train_time_s"] > 0
    assert sum(f.stat().st_size for f in SHIPPED.iterdir()) < 2 * 2**20
    model = LlamaForCausalLM.from_pretrained(SHIPPED)
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (8, 2, 35)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(SHIPPED).get_vocab() == scene_text_tokenizer().get_vocab()
    # the YAML students read it by default
    assert "experiments/teachers/scenes_lm" in (EXP / "distill.yaml").read_text()
