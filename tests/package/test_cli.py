"""`amad fit|validate|test|predict|export` and `--help` work end to end on a tiny model."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

from amad.cli import main

ROOT = Path(__file__).parents[2]


def test_the_command_sets_the_environment_defaults_only_where_unset(monkeypatch):
    """The `amad` command, not `import amad`, makes runs offline by default; a user's choice stands."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    monkeypatch.setenv("WANDB_MODE", "online")
    assert main(["--help"]) == 0
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TOKENIZERS_PARALLELISM"] == "false"
    assert os.environ["WANDB_MODE"] == "online"


def test_the_command_leaves_the_warning_filters_as_it_found_them():
    before = list(warnings.filters)
    assert main(["export", "runs/none/last.ckpt", "runs/never"]) == 2  # ran, failed in one line
    assert warnings.filters == before


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in ("fit", "validate", "test", "predict", "compare", "bench", "export"):
        assert f"  {verb}" in out


def test_fit_test_predict_export_from_yaml(tmp_path, monkeypatch):
    from amad.data import EasyVQADataModule
    from amad.models import load_pretrained

    """The README's flow with the shipped teacher: fit, test, validate, predict, export."""
    monkeypatch.setenv("AMAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    dm = EasyVQADataModule()
    common = [
        "--config",
        str(ROOT / "experiments/easyvqa/blip/amad.yaml"),
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--trainer.default_root_dir={tmp_path}",
        "--data.init_args.subset=32",
        "--data.init_args.eval_subset=8",
        "--data.init_args.batch_size=8",
    ]
    assert main(["fit", *common, "--trainer.max_steps=3", "--trainer.val_check_interval=2"]) == 0
    ckpts = list(tmp_path.glob("**/checkpoints/last.ckpt"))
    assert len(ckpts) == 1
    ckpt = ckpts[0]
    assert main(["test", *common, f"--ckpt_path={ckpt}"]) == 0
    assert main(["validate", *common, f"--ckpt_path={ckpt}"]) == 0
    assert main(["predict", *common, f"--ckpt_path={ckpt}"]) == 0
    assert main(["export", str(ckpt), str(tmp_path / "student")]) == 0
    student = load_pretrained(tmp_path / "student")
    assert student.num_heads("text.self") == 2
    assert student.tokenizer.get_vocab() == dm.tokenizer.get_vocab()


AMAD_YAML = str(ROOT / "experiments/easyvqa/blip/amad.yaml")
COMPARE_YAML = str(ROOT / "experiments/compare/easyvqa_blip.yaml")


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["fit", "--config", AMAD_YAML, "--model.init_args.attention.init_args.varient=l2"], "'varient'"),
        (["fit", "--config", AMAD_YAML, "--model.init_args.attention=amad.losses.NoSuchMethod"], "NoSuchMethod"),
        (["fit", "--config", AMAD_YAML, "--model.init_args.gamma=much"], "gamma"),
        (["fit", "--config", "experiments/nope.yaml"], "does not exist"),
        (["test", "--config", AMAD_YAML, "--ckpt_path=README.md"], "not a readable checkpoint"),
        (["test", "--config", AMAD_YAML, "--ckpt_path=runs/none/last.ckpt"], "does not exist"),
        (["compare", "--config", COMPARE_YAML, "--out", "runs/never", "--preset", "nope"], "unknown preset 'nope'"),
        (["compare", "--config", COMPARE_YAML, "--out", "runs/never", "--methods", "amad,nope"], "['nope']"),
        (["export", "runs/none/last.ckpt", "runs/never"], "does not exist"),
    ],
)
def test_user_mistakes_end_in_one_error_line(argv, match, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("AMAD_DEBUG", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("amad: error: ") and match in last, err


def test_debug_shows_the_traceback(monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ValueError, match="unknown preset"):
        main(["--debug", "compare", "--config", COMPARE_YAML, "--out", "runs/never", "--preset", "nope"])
    monkeypatch.setenv("AMAD_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["export", "runs/none/last.ckpt", "runs/never"])


def test_a_teacher_that_cannot_read_the_data_fails_at_setup_naming_both_sizes(tmp_path, capsys, monkeypatch):
    from amad.data import EasyVQADataModule
    from amad.models import build_model, save_pretrained

    monkeypatch.chdir(ROOT)
    torch.manual_seed(0)  # a 64 px teacher, while the config's data make 32 px images
    save_pretrained(build_model("blip-vqa", preset="tiny", tokenizer=EasyVQADataModule().tokenizer), tmp_path / "t")
    argv = ["fit", "--config", AMAD_YAML, f"--model.init_args.teacher={tmp_path / 't'}", "--trainer.logger=false"]
    assert main([*argv, "--trainer.fast_dev_run=true"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "reads 64×64 px images" in last and "32×32" in last and "data.init_args.image_size: 64" in last
