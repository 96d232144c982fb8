"""StepTimer: where a training run's time goes (compute per step, and the wait for data before each)."""

from __future__ import annotations

import time
from typing import Any

import lightning as L


class StepTimer(L.Callback):
    """Record per-step compute time and the data-wait gap before each step.

    Data wait is the gap between the end of one step and the start of the next (the DataLoader fetching
    and collating). The first ``skip`` steps are left out (warm-up).
    """

    def __init__(self, skip: int = 3) -> None:
        self.skip, self.compute, self.wait, self.sizes = skip, [], [], []
        self._end: float | None = None
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._end is not None and batch_idx >= self.skip:
            self.wait.append(now - self._end)
        self._start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if batch_idx >= self.skip:
            self.compute.append(now - self._start)
            # VL batches carry "ids"; any-model batches (amad.compare.system) carry "labels"
            self.sizes.append(len(batch["ids"] if "ids" in batch else batch["labels"]))
        self._end = now
