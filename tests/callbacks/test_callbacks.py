"""The callbacks on a tiny distillation run: head-alignment heatmaps and prediction sample tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "lit"))
from lit_helpers import RandomBatchDataModule, fit_trainer

from amad.callbacks import HeadAlignmentCallback, PredictionSamplesCallback
from amad.callbacks.head_alignment import rows_sum_to_one
from amad.lit import DistillationModule
from amad.losses import AMAD, OneToOne
from amad.models import build_model


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_model("blip-vqa", preset="tiny")


def _module(teacher, attention):
    return DistillationModule(teacher=teacher, student={"num_heads": 2, "num_layers": 1}, attention=attention)


def test_head_alignment_callback_writes_heatmaps_whose_rows_sum_to_one(tmp_path, teacher):
    module = _module(teacher, AMAD())
    dm = RandomBatchDataModule("blip-vqa", tokenizer=teacher.tokenizer)
    cb = HeadAlignmentCallback(out_dir=str(tmp_path / "ha"))
    trainer = fit_trainer(tmp_path, max_epochs=1, max_steps=-1, limit_train_batches=2, callbacks=[cb])
    trainer.fit(module, datamodule=dm)
    assert cb.last_weights and rows_sum_to_one(cb.last_weights)
    assert sorted(p.name for p in cb.last_dir.glob("*.png"))
    saved = json.loads((cb.last_dir / "weights.json").read_text())
    assert set(saved) == set(cb.last_weights)


def test_one_to_one_alignment_is_its_fixed_assignment(teacher):
    dm = RandomBatchDataModule("blip-vqa", tokenizer=teacher.tokenizer)
    weights = _module(teacher, OneToOne()).head_alignment(dm.batches[0])
    assert weights
    for m in weights.values():  # teacher head i -> student head i (i < Hs)
        assert torch.equal(m[: m.shape[1]], torch.eye(m.shape[1]))


def test_prediction_samples_callback_writes_teacher_and_student_outputs(tmp_path, teacher):
    module = _module(teacher, AMAD())
    dm = RandomBatchDataModule("blip-vqa", tokenizer=teacher.tokenizer)
    cb = PredictionSamplesCallback(num_samples=3)
    trainer = fit_trainer(tmp_path, max_steps=2, val_check_interval=1, limit_val_batches=1, callbacks=[cb])
    trainer.fit(module, datamodule=dm)
    assert len(cb.last_rows) == 3
    assert all(r["student"] is not None and r["teacher"] is not None for r in cb.last_rows)
    written = sorted((Path(trainer.default_root_dir) / "samples").glob("epoch*.json"))
    assert written and json.loads(written[-1].read_text()) == cb.last_rows
