"""PredictionSamplesCallback: a table of image, input text, reference, teacher and student outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only


class PredictionSamplesCallback(L.Callback):
    """After each validation epoch, generate for the first ``num_samples`` examples of a fixed batch.

    Writes ``<run dir>/samples/epoch<E>.json`` and, with a ``WandbLogger``, a W&B table with the images.
    Rank-zero only; generation runs in whatever mode validation left the modules in (eval).

    Args:
        num_samples: how many examples of the first validation batch to show.
    """

    def __init__(self, num_samples: int = 8) -> None:
        super().__init__()
        self.num_samples = num_samples
        self._batch: dict[str, Any] | None = None
        self.last_rows: list[dict[str, Any]] = []

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._batch is None and batch_idx == 0:
            n = self.num_samples
            self._batch = {k: v[:n] for k, v in batch.items()}

    @rank_zero_only
    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._batch is None or trainer.sanity_checking:
            return
        batch, kw = self._batch, {"max_new_tokens": getattr(pl_module, "max_new_tokens", 8)}
        student = pl_module.trainable.generate(batch, **kw)
        teacher = pl_module.teacher.generate(batch, **kw) if hasattr(pl_module, "teacher") else None
        rows = []
        for i, pred in enumerate(student):
            rows.append(
                {
                    "id": str(batch["ids"][i]),
                    "input": batch["source_text"][i],
                    "reference": " | ".join(batch["references"][i]),
                    "teacher": teacher[i] if teacher else None,
                    "student": pred,
                }
            )
        self.last_rows = rows
        out = Path(trainer.log_dir or trainer.default_root_dir) / "samples"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"epoch{trainer.current_epoch}.json").write_text(json.dumps(rows, indent=1))
        self._log_wandb(trainer, batch, rows)

    @staticmethod
    def _log_wandb(trainer: L.Trainer, batch: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        import wandb

        # pixel_values are normalised with mean = std = 0.5 by default: map back to [0, 1] for display.
        images = (batch["pixel_values"].float().cpu() * 0.5 + 0.5).clamp(0, 1)
        data = [
            [wandb.Image(images[i].permute(1, 2, 0).numpy()), r["input"], r["reference"], r["teacher"], r["student"]]
            for i, r in enumerate(rows)
        ]
        for logger in loggers:
            logger.log_table(
                "samples",
                columns=["image", "input", "reference", "teacher", "student"],
                data=data,
                step=trainer.global_step,
            )
