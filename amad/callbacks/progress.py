"""ProgressLine: one short console line every few steps (step, loss, elapsed, time left), for long jobs
that run without a progress bar (``amad compare``, a teacher's training stages)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class ProgressLine(L.Callback):
    """Print ``<prefix> step s/N  loss L  elapsed  ~left`` every ``every_n_steps`` steps and at the end.

    Args:
        prefix: what runs (e.g. ``[3/18] amad seed 0``).
        every_n_steps: how often to print.
        write: where lines go (``print`` by default).
    """

    def __init__(self, prefix: str = "", every_n_steps: int = 50, write: Callable[[str], Any] = print) -> None:
        super().__init__()
        self.prefix, self.every_n_steps, self.write = prefix, max(1, every_n_steps), write
        self._start = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    @rank_zero_only
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step, total = trainer.global_step, trainer.max_steps
        if step % self.every_n_steps and step != total:
            return
        elapsed = time.perf_counter() - self._start
        loss = trainer.callback_metrics.get("train/loss")
        left = f"  ~{format_seconds(elapsed / step * (total - step))} left" if 0 < step < total else ""
        loss_text = f"  loss {float(loss):.4f}" if loss is not None else ""
        self.write(f"{self.prefix} step {step}/{total}{loss_text}  {format_seconds(elapsed)}{left}".strip())
