"""Ground-truth training: fine-tunes the teacher, and is the ground-truth-only student baseline."""

from __future__ import annotations

from typing import Any

from torch import nn

from amad.lit.base import TaskModule, resolve_model


class FineTuneModule(TaskModule):
    """Train one model on the task's ground truth (cross-entropy under teacher forcing).

    Args:
        model: the model to train: a dict ``{"family": ..., "preset": ..., **overrides}`` given to
            :func:`amad.models.build_model`, a path (``save_pretrained`` dir or amad ``.ckpt``), or an
            adapter instance (Python use).
        vocab_size: vocabulary size (linked from the DataModule by the CLI); overrides the preset's.
        **kwargs: the optimisation and evaluation settings of :class:`~amad.lit.TaskModule` (``task``,
            ``lr``, ``weight_decay``, ``warmup_ratio``, ``schedule``, ``max_new_tokens``, ``lr_scale``).
    """

    trainable_prefix = "model."

    def __init__(
        self,
        model: dict[str, Any] | str | nn.Module | None = None,
        vocab_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["model"] if isinstance(model, nn.Module) else None)
        self.model = resolve_model(model, vocab_size)

    @property
    def trainable(self) -> nn.Module:
        return self.model

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.check_compatible(self.model, "model", "model.init_args.model")

    def forward(self, batch: dict[str, Any], **kwargs: Any) -> Any:
        return self.model(batch, **kwargs)

    def training_step(self, batch: dict[str, Any], batch_idx: int):
        loss = self.model(batch, sites=()).loss
        self.log("train/loss_task", loss, prog_bar=True, batch_size=len(batch["ids"]))
        self.log("train/loss", loss, batch_size=len(batch["ids"]))
        return loss
