"""Tiny models and an in-memory DataModule of random batches, for fast Lightning integration tests."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset

from amad.bench._batches import random_batch
from amad.losses import attention_method


def method(name: str, **options):
    """The attention method ``name`` with ``options``; ``"none"`` is no attention loss."""
    return None if name == "none" else attention_method(name, **options)


TASK_OF = {"blip-vqa": "vqa", "blip-caption": "caption", "vlt5": "vqa"}


class _Batches(Dataset):
    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return self.batches[i]


class RandomBatchDataModule(L.LightningDataModule):
    """Pre-collated random batches (``amad.models.random_batch``); ``batch_size=None`` loaders."""

    def __init__(self, family: str, tokenizer=None, n_batches: int = 4, batch_size: int = 4, task="vqa"):
        super().__init__()
        self.task = task
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer) if tokenizer is not None else None
        self.batches = [random_batch(family, batch_size, seed=i, tokenizer=tokenizer) for i in range(n_batches)]

    def _loader(self):
        return DataLoader(_Batches(self.batches), batch_size=None, shuffle=False)

    train_dataloader = val_dataloader = test_dataloader = predict_dataloader = _loader


def fit_trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(
        max_steps=2,
        limit_val_batches=1,
        limit_test_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        devices=1,
        num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)
