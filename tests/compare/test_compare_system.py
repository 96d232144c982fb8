"""Any-model comparisons (`system:`, amad.compare.system): the scenes-ViT smoke comparison end to end, the
schema of the system sections, and the contract a system must keep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from amad.cli import main
from amad.compare.config import load_compare_config
from amad.compare.report import table_metrics
from amad.compare.system import DistilledSystem, system_class

ROOT = Path(__file__).parents[2]
CONFIG = ROOT / "experiments/compare/scenes-vit.yaml"
METHODS = ["gt", "kd", "one_to_one", "amad"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("AMAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(ROOT)
    return tmp_path


def test_scenes_vit_smoke_comparison_writes_results_and_resumes(env, capsys):
    out = env / "out"
    argv = ["compare", "--config", str(CONFIG), "--out", str(out), "--preset", "smoke", "--logger", "none"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "classify" and results["model"] == "ClassificationDistillationModule"
    assert results["headline"] == "acc"
    teacher = results["teacher"]
    assert teacher["heads"] == {"vision.self": 8} and teacher["layers"] == {"vision.self": 1}
    assert 0.0 <= teacher["metrics"]["acc"] <= 1.0 and "loss" not in teacher["metrics"]
    assert [r["method"] for r in results["runs"]] == METHODS
    # the teacher's outputs cached once and replayed (batches carry ids: amad.data.generated)
    assert [r["teacher"] for r in results["runs"]] == ["unused", "cached", "cached", "cached"]
    assert all(0.0 <= r["metrics"]["acc"] <= 1.0 for r in results["runs"])
    assert [s["is_amad"] for s in results["summary"]] == [m == "amad" for m in METHODS]
    table = (out / "results.md").read_text()
    assert "| method | acc mean ± std |" in table and "| teacher |" in table
    assert all(f"| {m} |" in table for m in METHODS) and (out / "results.png").is_file()
    # AMAD's head weights at its first, middle and last step, as for the vision-language comparisons
    amad = next(r for r in results["runs"] if r["method"] == "amad")
    snaps = json.loads((Path(amad["head_alignment"]) / "snapshots.json").read_text())
    assert len(snaps) >= 2 and all(len(rows[0]) == 2 for s in snaps.values() for rows in s["weights"].values())
    assert all(abs(sum(r) - 1) < 1e-4 for s in snaps.values() for rows in s["weights"].values() for r in rows)
    # the run diagnostics and the teacher's head similarity, as for the vision-language comparisons
    assert all(0 <= r["diagnostics"]["head_diversity"]["end"] <= 2 for r in results["runs"])
    assert [r["diagnostics"]["attn_loss"]["start"] is None for r in results["runs"]] == [True, True, False, False]
    assert amad["diagnostics"]["weight_spread"] is not None
    (cosines,) = teacher["head_similarity"].values()
    assert len(cosines) == 1 and -1 <= cosines[0] <= 1
    # the teacher was trained by the system's teacher=None mode and cached as a transformers checkpoint
    (cached,) = (env / "cache" / "teachers").iterdir()
    record = json.loads((cached / "teacher.json").read_text())
    assert (cached / "config.json").is_file() and record["config"]["system"]["class_path"].endswith("Module")
    assert set(record["files"]) >= {"config.json", "model.safetensors"}

    (out / "runs" / "amad-seed0.json").unlink()
    capsys.readouterr()
    assert main(argv) == 0
    log = capsys.readouterr().out
    assert "teacher: reusing" in log and log.count("done already") == len(METHODS) - 1
    assert "[1/1] amad seed 0: acc" in log


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("amad: error: "), err
    return lines[0]


MISSPELT = [
    ({"system": {"metrik": "acc"}}, "system.metrik", "metric"),
    ({"system": {"init_args": {"num_clases": 24}}}, "system.init_args.num_clases", "num_classes"),
    ({"teacher": {"model": {"num_attention_head": 8}}}, "teacher.model.num_attention_head", "num_attention_heads"),
    ({"teacher": {"max_step": 5}}, "teacher.max_step", "max_steps"),
    ({"student": {"num_head": 2}}, "student.num_head", "num_heads"),
    ({"train": {"max_step": 5}}, "train.max_step", "max_steps"),
    ({"methods": {"amad": {"gama": 2.0}}}, "methods.amad.gama", "gamma"),
    ({"data": {"init_args": {"train_sise": 10}}}, "data.init_args.train_sise", "train_size"),
]


@pytest.mark.parametrize(("override", "key", "valid"), MISSPELT, ids=[m[1] for m in MISSPELT])
def test_a_misspelt_system_comparison_key_fails_at_load_in_one_line(override, key, valid, env, capsys):
    path = env / "typo.yaml"
    path.write_text(yaml.safe_dump({"base": str(CONFIG), **override}))
    assert main(["compare", "--config", str(path), "--out", str(env / "never"), "--print_config"]) == 2
    line = _one_error_line(capsys)
    assert f"{key}: unknown key; did you mean {valid!r}?" in line, line


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"system": {"class_path": "amad.lit.DistillationModul"}}, "cannot be imported"),
        ({"system": {"class_path": "amad.compare.console.Console"}}, "is not a LightningModule"),
        ({"system": {"class_path": "amad.lit.FineTuneModule"}}, "lacks constructor argument(s)"),
        ({"train": {"warmup_ratio": 0.1}}, "train.warmup_ratio: unknown key"),  # not a system setting
        ({"methods": {"kd": {"lr": 0.1}}}, "methods.kd: ['lr'] are set by the comparison"),
        ({"teacher": {"model": "big"}}, "teacher.model: expected a mapping, got 'big'"),
        ({"teacher": {"path": None, "max_steps": None}}, "teacher.max_steps: required key missing"),
    ],
)
def test_a_system_that_breaks_the_contract_or_a_setting_it_does_not_take_is_one_line(override, expected, env, capsys):
    path = env / "bad.yaml"
    path.write_text(yaml.safe_dump({"base": str(CONFIG), **override}))
    assert main(["compare", "--config", str(path), "--out", str(env / "never"), "--print_config"]) == 2
    assert expected in _one_error_line(capsys)


def test_the_system_comparison_loads_and_prints_back(env, capsys):
    cfg = load_compare_config(str(CONFIG), "smoke")
    assert cfg["system"]["class_path"] == "amad.lit.classify.ClassificationDistillationModule"
    assert main(["compare", "--config", str(CONFIG), "--print_config"]) == 0
    printed = capsys.readouterr().out
    copy = env / "printed.yaml"
    copy.write_text(printed)
    assert main(["compare", "--config", str(copy), "--print_config"]) == 0
    assert capsys.readouterr().out == printed


def test_the_classifier_keeps_the_system_contract():
    cls = system_class("amad.lit.classify.ClassificationDistillationModule")
    module = cls(teacher=None, student={"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1})
    assert isinstance(module, DistilledSystem) and module.distillation is None
    assert module.student.sites == ("vision.self",)


def test_the_table_leads_with_the_systems_headline_metric():
    summary = [{"method": "gt", "ppl": {"mean": 3.0}, "next_token_acc": {"mean": 0.5}, "n": 1}]
    assert table_metrics({"task": "lm", "summary": summary}) == ["ppl", "next_token_acc"]
    assert table_metrics({"task": "lm", "headline": "next_token_acc", "summary": summary}) == ["next_token_acc", "ppl"]
    assert table_metrics({"task": "classify", "summary": [{"acc": {"mean": 1.0}}]}) == ["acc"]


def test_the_datamodule_gives_the_system_its_task_and_vocabulary_as_amad_fit_links_them():
    from types import SimpleNamespace

    from amad.compare.system import data_links

    class LanguageSystem:  # a constructor of the contract's shape that also takes the vocabulary
        def __init__(self, teacher=None, student=None, task: str = "lm", vocab_size: int | None = None): ...

    assert data_links(LanguageSystem, SimpleNamespace(task="lm", vocab_size=57)) == {"task": "lm", "vocab_size": 57}
    assert data_links(LanguageSystem, SimpleNamespace()) == {} and data_links(LanguageSystem, None) == {}
    classify = system_class("amad.lit.classify.ClassificationDistillationModule")
    assert data_links(classify, SimpleNamespace(task="classify")) == {"task": "classify"}


def test_scenes_lm_smoke_comparison_runs_the_language_system_with_gqa_teacher(env):
    """The second embedded example through the same system: section (Llama, 8 query / 2 key-value heads)."""
    out = env / "out"
    config = ROOT / "experiments/compare/scenes-lm.yaml"
    argv = ["compare", "--config", str(config), "--out", str(out), "--preset", "smoke", "--logger", "none"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "lm" and results["model"] == "LanguageDistillationModule"
    assert results["headline"] == "acc" and results["teacher"]["heads"] == {"decoder.self": 8}
    assert [r["method"] for r in results["runs"]] == METHODS
    assert [r["teacher"] for r in results["runs"]] == ["unused", "live", "live", "live"]  # teacher_cache: false
    for run in results["runs"]:
        assert 0.0 <= run["metrics"]["acc"] <= 1.0 and 0.0 <= run["metrics"]["copy_acc"] <= 1.0
        assert run["metrics"]["ppl"] >= 1.0 and "loss" not in run["metrics"]


def test_the_language_model_keeps_the_system_contract():
    cls = system_class("amad.lit.language.LanguageDistillationModule")
    module = cls(
        teacher=None, student={"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1}, vocab_size=35
    )
    assert isinstance(module, DistilledSystem) and module.distillation is None
    assert module.student.sites == ("decoder.self",)


def test_a_sweep_over_a_system_comparison(env, capsys):
    """`amad sweep` takes an any-model comparison: its budget keys and method arguments are the system's,
    its rows read the system's headline metric, and the teacher's head similarity is reported."""
    sweep = env / "vit_heads.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "comparison": str(CONFIG),
                "name": "vit_heads",
                "seeds": 1,
                "grid": {"num_heads": [1, 2]},
                "methods": {
                    "gt": {"beta": 0.0, "gamma": 0.0, "attention": None},
                    "amad": {"beta": 1.0, "gamma": 1.0, "attention": "amad.losses.AMAD"},
                },
            }
        )
    )
    out = env / "sweep"
    argv = ["sweep", "--config", str(sweep), "--out", str(out), "--max-steps", "2", "--eval-subset", "16"]
    assert main(argv) == 0
    report = json.loads((out / "sweep.json").read_text())
    assert sorted((r["num_heads"], r["method"], r["metric"]) for r in report["rows"]) == [
        (1, "amad", "acc"), (1, "gt", "acc"), (2, "amad", "acc"), (2, "gt", "acc")
    ]  # fmt: skip
    assert all(0 <= r["test"]["mean"] <= 1 for r in report["rows"]) and not report["missing"]
    assert set(report["teacher_head_similarity"]) == {"vision.self"}
    assert "[cell 2/2 num_heads2] [2/2] amad seed 0: acc" in capsys.readouterr().out
    bad = env / "bad.yaml"
    bad.write_text(sweep.read_text() + "train: {max_stepz: 3}\n")
    assert main(["sweep", "--config", str(bad), "--out", str(out)]) == 2
    assert "train.max_stepz: unknown key" in capsys.readouterr().err
