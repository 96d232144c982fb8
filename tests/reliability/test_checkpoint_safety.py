"""A crash while a checkpoint is being written never destroys the previous one."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from fsspec.implementations.local import LocalFileOpener
from lightning.pytorch.callbacks import ModelCheckpoint

from amad.bench._batches import random_batch
from amad.lit import DistillationModule
from amad.losses.methods import checkpoint_safe_globals
from amad.models import build_model, load_checkpoint_model


class Batches(torch.utils.data.Dataset):
    def __init__(self, tok):
        self.b = [random_batch("blip-vqa", 4, seed=i, tokenizer=tok) for i in range(4)]

    def __len__(self):
        return len(self.b)

    def __getitem__(self, i):
        return self.b[i]


def test_interrupted_checkpoint_write_leaves_previous_loadable(tmp_path, monkeypatch):
    teacher = build_model("blip-vqa", preset="tiny")
    module = DistillationModule(teacher=teacher, student={"num_heads": 2, "num_layers": 1})
    loader = torch.utils.data.DataLoader(Batches(teacher.tokenizer), batch_size=None)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=1)
    trainer = L.Trainer(
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ckpt],
        accelerator="cpu",
    )
    trainer.fit(module, train_dataloaders=loader)
    last = tmp_path / "last.ckpt"
    good = load_checkpoint_model(last).state_dict()

    original = LocalFileOpener.write

    def write_half_then_die(self, data):
        original(self, data[: len(data) // 2])
        raise OSError("disk full (simulated) halfway through the checkpoint")

    monkeypatch.setattr(LocalFileOpener, "write", write_half_then_die)
    trainer2 = L.Trainer(
        max_steps=4,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=1)],
        accelerator="cpu",
    )
    with pytest.raises(OSError, match="disk full"):
        with checkpoint_safe_globals():
            trainer2.fit(module, train_dataloaders=loader, ckpt_path=str(last))
    monkeypatch.undo()
    again = load_checkpoint_model(last).state_dict()  # still the complete step-2 checkpoint
    assert all(torch.equal(good[k], again[k]) for k in good)
    assert torch.load(last, weights_only=False)["global_step"] == 2
