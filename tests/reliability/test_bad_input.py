"""Bad input gets a clear error that names the culprit, and loses nothing."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from jsonargparse import ArgumentError

from amad.bench._batches import random_batch
from amad.lit import DistillationModule
from amad.losses import AMAD, one_to_one_loss
from amad.models import build_model, derive_student, load_checkpoint_model, save_pretrained

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_model("blip-vqa", preset="tiny")


def test_maps_with_different_q_or_k_name_site_layer_and_shapes(teacher):
    # a student at another patch size (e.g. another image resolution) has another number of vision tokens
    student = derive_student(teacher, num_heads=2, num_layers=1, patch_size=8, init="random")
    module = DistillationModule(teacher=copy.deepcopy(teacher), student=student)
    batch = random_batch("blip-vqa", 2, tokenizer=teacher.tokenizer)
    with pytest.raises(ValueError) as err:
        module.distillation_losses(batch)
    msg = str(err.value)
    assert "vision.self" in msg and "teacher layer" in msg and "student layer 0" in msg
    assert "(2, 4, 17, 17)" in msg and "(2, 2, 65, 65)" in msg


def test_one_to_one_with_more_student_heads_is_a_clear_error():
    t, s = torch.rand(1, 2, 3, 3).softmax(-1), torch.rand(1, 4, 3, 3).softmax(-1)
    with pytest.raises(ValueError, match="student"):
        one_to_one_loss(t, s)


def test_nonfinite_loss_stops_naming_step_and_term_or_is_skipped_and_counted(teacher, tmp_path):
    from torch.utils.data import DataLoader

    batches = [random_batch("blip-vqa", 2, seed=i, tokenizer=teacher.tokenizer) for i in range(3)]
    loader = DataLoader(batches, batch_size=None)

    def poisoned(skip: bool) -> DistillationModule:
        m = DistillationModule(
            teacher=copy.deepcopy(teacher), student={"num_heads": 2, "num_layers": 1}, skip_nonfinite=skip
        )
        with torch.no_grad():
            next(m.student.parameters()).fill_(float("nan"))
        return m

    kw = dict(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    with pytest.raises(FloatingPointError, match=r"global step 0 .*loss_task"):
        L.Trainer(**kw).fit(poisoned(False), train_dataloaders=loader)
    m = poisoned(True)
    L.Trainer(**kw).fit(m, train_dataloaders=loader)
    assert int(m.skipped_batches) == 2


def test_teacher_checkpoint_that_does_not_match_its_config(tmp_path, teacher):
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    module = DistillationModule(teacher=copy.deepcopy(teacher), student={"num_heads": 2, "num_layers": 1})
    loader = DataLoader([random_batch("blip-vqa", 2, tokenizer=teacher.tokenizer)], batch_size=None)
    L.Trainer(
        max_steps=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)],
        accelerator="cpu",
    ).fit(module, loader)
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    ckpt["amad_model_config"]["hf_config"]["text_config"]["hidden_size"] = 32  # config says 32, weights 64
    torch.save(ckpt, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="does not match its own model config"):
        load_checkpoint_model(tmp_path / "bad.ckpt")
    (tmp_path / "trunc.ckpt").write_bytes((tmp_path / "last.ckpt").read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"trunc\.ckpt"):
        load_checkpoint_model(tmp_path / "trunc.ckpt")
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt"):
        DistillationModule(teacher=str(tmp_path / "missing.ckpt"))


def test_teacher_with_another_vocabulary_is_rejected(teacher):
    with pytest.raises(ValueError, match="vocabulary"):
        DistillationModule(teacher=copy.deepcopy(teacher), vocab_size=len(teacher.tokenizer) + 5)


@pytest.mark.parametrize(
    "override,match",
    [
        ("--model.init_args.sites=[nope.self]", "unknown site"),
        ("--model.init_args.attention=amad.losses.Nope", "Nope"),
        ("--model.init_args.attention.init_args.variant=nope", "variant"),
        ("--model.init_args.layer_map=[7, 9]", "layer map"),
    ],
)
def test_bad_yaml_values_fail_clearly(tmp_path, override, match, monkeypatch):
    from amad.data import EasyVQADataModule
    from amad.lightning_cli import build_cli

    dm = EasyVQADataModule()
    t = build_model("blip-vqa", preset="tiny", tokenizer=dm.tokenizer)
    save_pretrained(t, tmp_path / "t")
    args = [
        "--config",
        str(ROOT / "experiments/easyvqa/blip/amad.yaml"),
        f"--model.init_args.teacher={tmp_path / 't'}",
        "--trainer.logger=false",
        override,
    ]
    with pytest.raises((ValueError, ArgumentError)) as err:  # parse errors raise: amad prints them as one line
        build_cli(args, run=False)
    text = str(err.value) + str(getattr(err.value, "__context__", ""))
    assert match in text


def test_bf16_autocast_gives_finite_losses_and_gradients_on_embedded_data():
    from amad.data import EasyVQADataModule

    dm = EasyVQADataModule(batch_size=8, subset=16, eval_subset=8)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    t = build_model("blip-vqa", preset="tiny", tokenizer=dm.tokenizer)
    module = DistillationModule(teacher=t, student={"num_heads": 2, "num_layers": 1}, attention=AMAD())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = module.distillation_losses(batch)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in terms.values()), terms
    terms["loss"].backward()
    grads = [p.grad for p in module.student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_all_padding_targets_and_single_token_sequences(teacher):
    module = DistillationModule(teacher=copy.deepcopy(teacher), student={"num_heads": 2, "num_layers": 1})
    batch = random_batch("blip-vqa", 2, tokenizer=teacher.tokenizer)
    batch["labels"][:] = -100  # no target token at all
    assert all(torch.isfinite(v) for v in module.distillation_losses(batch).values())
    one = random_batch("blip-vqa", 2, tokenizer=teacher.tokenizer)
    one["input_ids"], one["attention_mask"] = one["input_ids"][:, :1], one["attention_mask"][:, :1]
    one["labels"] = one["labels"][:, :1]
    one["labels"][:, 0] = teacher.tokenizer.eos_token_id
    assert all(torch.isfinite(v) for v in module.distillation_losses(one).values())


def test_hub_id_fails_fast_with_a_local_path_hint():
    from amad.models import load_pretrained

    start = time.perf_counter()
    with pytest.raises(Exception, match="local"):
        load_pretrained("Salesforce/blip-vqa-base-not-cached")
    assert time.perf_counter() - start < 10


def test_run_starts_offline_with_a_wandb_key_and_no_network(tmp_path):
    """With WANDB_API_KEY set and WANDB_MODE unset, the amad command defaults W&B to offline: no ~100 s hang."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "HF_HUB_OFFLINE")}
    env.update(WANDB_API_KEY="0" * 40, AMAD_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    script = (
        "import os, time\n"
        "from amad.cli import set_environment_defaults; set_environment_defaults()  # what `amad` does first\n"
        "from lightning.pytorch.loggers import WandbLogger\n"
        "t=time.time(); lg=WandbLogger(project='amad', save_dir=os.environ['OUT']); lg.experiment\n"
        "lg.log_metrics({'x': 1.0}); lg.experiment.finish()\n"
        "print('mode', os.environ['WANDB_MODE'], 'init_s', round(time.time()-t, 1))\n"
    )
    env["OUT"] = str(tmp_path)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mode offline" in proc.stdout
    assert time.perf_counter() - start < 60
    assert list(tmp_path.glob("wandb/offline-run-*"))
