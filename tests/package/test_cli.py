"""`amad fit|validate|test|predict|export` and `--help` work end to end on a tiny model."""

from __future__ import annotations

from pathlib import Path

import torch

from amad.cli import main

ROOT = Path(__file__).parents[1]


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in ("fit", "validate", "test", "predict", "compare", "bench", "export"):
        assert f"  {verb}" in out


def test_fit_test_predict_export_from_yaml(tmp_path, monkeypatch):
    from amad.data import EasyVQADataModule
    from amad.models import build_model, load_pretrained

    monkeypatch.setenv("AMAD_CACHE", str(tmp_path / "cache"))
    dm = EasyVQADataModule()
    torch.manual_seed(0)
    build_model("blip-vqa", preset="tiny", tokenizer=dm.tokenizer).save_pretrained(tmp_path / "teacher")
    common = [
        "--config",
        str(ROOT / "experiments/easyvqa/blip/amad.yaml"),
        f"--model.init_args.teacher={tmp_path / 'teacher'}",
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
