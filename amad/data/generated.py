"""The DataModule base of the any-model examples' generated data: three splits, each its own seed.

:class:`~amad.data.scene_classes.SceneClassesDataModule` (ViT: which shape in which colour) and
:class:`~amad.data.scene_text.SceneTextDataModule` (Llama: scene descriptions) differ only in what one split
holds and how a list of its items becomes a batch. The rest lives here once: split ``s`` is drawn from
generator seed ``seed + SPLIT_SEEDS[s]`` (so no example is shared between splits), each split is built the
first time a stage needs it, training batches are shuffled and full (``drop_last``), and validation / test
run in their own batch size, optionally on the first ``eval_subset`` examples (every example is an
independent draw, so the first N are a fair sample). Every batch also carries ``ids`` (B,) long: the
examples' indices in their split, which the models ignore and the teacher-output cache
(:class:`~amad.distill.cache.TeacherCache`) keys its rows by.

A subclass implements :meth:`GeneratedSplitsDataModule.make_dataset` and
:meth:`GeneratedSplitsDataModule.collate`, and keeps its own typed ``__init__`` (the LightningCLI schema).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

#: seed offsets of the three splits (added to the DataModule's ``seed``)
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
#: the splits each Lightning stage reads
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


class _Indexed(Dataset):
    """A dataset's items with their index: ``(i, item)``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return i, self.dataset[i]


class GeneratedSplitsDataModule(L.LightningDataModule):
    """Train / val / test drawn from three generator seeds.

    Args:
        train_size, val_size, test_size: examples per split.
        batch_size: examples per training batch.
        eval_batch_size: examples per validation / test batch (default: ``batch_size``).
        eval_subset: evaluate on the first this many val and test examples only (quick checks). None: all.
        seed: base seed (split seeds: ``seed + SPLIT_SEEDS[split]``).
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        train_size: int,
        val_size: int,
        test_size: int,
        batch_size: int,
        eval_batch_size: int | None,
        eval_subset: int | None,
        seed: int,
        num_workers: int,
    ) -> None:
        super().__init__()
        if eval_subset is not None and eval_subset < 1:
            raise ValueError(f"eval_subset must be >= 1 or None, got {eval_subset}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"batch sizes must be >= 1, got {batch_size} / {eval_batch_size}")
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.eval_batch_size, self.eval_subset = eval_batch_size or batch_size, eval_subset
        self.datasets: dict[str, Dataset] = {}

    # -- what a subclass says ---------------------------------------------------------------------------
    def make_dataset(self, split: str, size: int, seed: int) -> Dataset:
        """The ``size`` examples of ``split``, drawn from generator ``seed``."""
        raise NotImplementedError

    def collate(self, items: list[Any]) -> dict[str, Any]:
        """A list of the dataset's items -> the batch dict the system's model reads."""
        raise NotImplementedError

    # -- Lightning ----------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        for split in STAGE_SPLITS.get(stage, tuple(self.sizes)) if stage else tuple(self.sizes):
            if split not in self.datasets:
                self.datasets[split] = self.make_dataset(split, self.sizes[split], self.seed + SPLIT_SEEDS[split])

    def _collate_with_ids(self, items: list[tuple[int, Any]]) -> dict[str, Any]:
        batch = self.collate([item for _, item in items])
        batch["ids"] = torch.tensor([i for i, _ in items], dtype=torch.long)
        return batch

    def loader(self, split: str, *, shuffle: bool = False, batch_size: int | None = None) -> DataLoader:
        """A loader of ``split`` (built if needed); training shuffles and drops a short last batch, the
        others keep their order (and ``eval_subset``); ``batch_size`` default: the split's own."""
        self.setup({"train": "fit", "val": "validate"}.get(split, "test"))
        dataset: Dataset = _Indexed(self.datasets[split])
        if split != "train" and self.eval_subset is not None:
            dataset = Subset(dataset, range(min(self.eval_subset, len(dataset))))
        default = self.batch_size if split == "train" else self.eval_batch_size
        return DataLoader(
            dataset,
            batch_size=batch_size or default,
            shuffle=shuffle,
            collate_fn=self._collate_with_ids,
            num_workers=self.num_workers,
            drop_last=shuffle,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")
