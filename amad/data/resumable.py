"""A training DataLoader that resumes mid-epoch exactly: same order, same next batch.

Lightning restores a loader that has ``state_dict`` / ``load_state_dict`` (its ``_Stateful``
protocol). Ours shuffles with its own generator, seeded by ``(seed, epoch)``, so the order of every
epoch is a pure function of the seed and the epoch number and never draws from the global torch RNG
(an extra draw there would change the student's dropout masks after a resume). Its state is the
epoch and how many batches of it the training loop has consumed; after loading it, the next
``iter()`` replays that epoch's order and skips those batches (indices only: no data is loaded for
the skipped ones).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class _EpochSampler(Sampler[int]):
    def __init__(self, n: int, shuffle: bool, seed: int) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.epoch, self.skip = 0, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        skip, self.skip = self.skip, 0
        return iter(order[skip:])


class ResumableDataLoader(DataLoader):
    """``DataLoader`` (single process; map-style dataset) with an exact mid-epoch resume.

    Args:
        dataset: a map-style dataset.
        batch_size: examples per batch.
        shuffle: shuffle each epoch with a generator seeded by ``(seed, epoch)``.
        seed: the shuffling seed.
        **kwargs: other ``DataLoader`` arguments (``collate_fn``, ``num_workers``...).
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool = True, seed: int = 0, **kwargs: Any) -> None:
        self._amad_sampler = _EpochSampler(len(dataset), shuffle, seed)
        # A fixed generator for the base seed too: DataLoader would otherwise draw it from the
        # global RNG at every iter().
        kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
        super().__init__(dataset, batch_size=batch_size, sampler=self._amad_sampler, **kwargs)
        self._epoch = -1  # epoch of the current iterator
        self._consumed = 0  # batches of it handed to the training loop
        self._resume: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        if self._resume is not None:
            self._epoch, skip = self._resume["epoch"], self._resume["consumed"]
            self._resume = None
        else:
            self._epoch, skip = self._epoch + 1, 0
        self._amad_sampler.epoch = self._epoch
        self._amad_sampler.skip = skip * self.batch_size
        self._consumed = skip
        for batch in super().__iter__():
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "consumed": self._consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = {"epoch": int(state["epoch"]), "consumed": int(state["consumed"])}
