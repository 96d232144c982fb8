"""Exact resume: interrupted + resumed == uninterrupted (losses and final weights, bitwise on CPU)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from amad.data import EasyVQADataModule
from amad.lit import DistillationModule
from amad.losses import AMAD
from amad.losses.methods import checkpoint_safe_globals
from amad.models import build_model

STEPS, CRASH_AT = 9, 5
RUNS: list = []  # loss recorders, also of the crashed run


class LossRecorder(L.Callback):
    def __init__(self):
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = float(outputs["loss"])


class SimulatedCrash(RuntimeError):
    pass


class Crash(L.Callback):
    # at the start of the step after CRASH_AT: that step's checkpoint is written (Lightning runs
    # ModelCheckpoint after the other callbacks of on_train_batch_end)
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == CRASH_AT:
            raise SimulatedCrash(f"crash after step {CRASH_AT}")  # its checkpoint is already written


@pytest.fixture(scope="module")
def setup():
    dm_kwargs = dict(batch_size=8, subset=48, eval_subset=8)  # 6 batches an epoch: resume crosses epochs
    dm = EasyVQADataModule(**dm_kwargs)
    torch.manual_seed(0)
    # dropout on (the student inherits it): a resume must also restore the RNG for identical masks
    teacher = build_model("blip-vqa", preset="tiny", tokenizer=dm.tokenizer, dropout=0.1, attention_dropout=0.1)
    return dm_kwargs, teacher


def _run(tmp_path, setup, crash: bool, resume: str | None = None):
    dm_kwargs, teacher = setup
    L.seed_everything(3, verbose=False)
    module = DistillationModule(
        teacher=teacher, student={"num_heads": 2, "num_layers": 1, "init": "random"}, attention=AMAD(), lr=3e-3
    )
    rec = LossRecorder()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    trainer = L.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        devices=1,
        logger=False,
        deterministic=True,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[rec, ckpt] + ([Crash()] if crash else []),
    )
    RUNS.append(rec)
    with checkpoint_safe_globals():  # the checkpoint's hyperparameters hold the method object
        trainer.fit(module, datamodule=EasyVQADataModule(**dm_kwargs), ckpt_path=resume)
    return module, rec.losses, trainer


def test_interrupted_and_resumed_run_equals_uninterrupted_bitwise(tmp_path, setup):
    full, full_losses, _ = _run(tmp_path / "a", setup, crash=False)
    with pytest.raises(SimulatedCrash):
        _run(tmp_path / "b", setup, crash=True)
    first = RUNS[-1].losses
    resumed, second, _ = _run(
        tmp_path / "b", setup, crash=False, resume=str(tmp_path / "b" / "ckpt" / f"step={CRASH_AT}.ckpt")
    )
    curve = {**first, **second}
    assert sorted(curve) == sorted(full_losses) == list(range(1, STEPS + 1))
    assert curve == full_losses  # exact float equality: same batches, same dropout masks
    for (k, a), b in zip(full.student.state_dict().items(), resumed.student.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
