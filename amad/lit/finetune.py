"""Ground-truth training: fine-tunes the teacher, and is the ground-truth-only student baseline."""

from __future__ import annotations

from typing import Any, Literal

from torch import nn

from amad.lit.base import TaskModule


class FineTuneModule(TaskModule):
    """Train one model on the task's ground truth (cross-entropy under teacher forcing).

    Args:
        model: the model to train: a dict ``{"family": ..., "preset": ..., **overrides}`` given to
            :func:`amad.models.build_model`, a path (``save_pretrained`` dir or amad ``.ckpt``), or an
            adapter instance (Python use).
        vocab_size: vocabulary size (linked from the DataModule by the CLI); overrides the preset's.
        task, lr, weight_decay, warmup_ratio, schedule, max_new_tokens, lr_scale: see :class:`TaskModule`.
    """

    trainable_prefix = "model."

    def __init__(
        self,
        model: dict[str, Any] | str | nn.Module | None = None,
        vocab_size: int | None = None,
        task: Literal["vqa", "caption", "translate"] = "vqa",
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.05,
        schedule: Literal["linear", "cosine", "constant"] = "linear",
        max_new_tokens: int = 8,
        lr_scale: dict[str, float] | None = None,
    ) -> None:
        super().__init__(task, lr, weight_decay, warmup_ratio, schedule, max_new_tokens, lr_scale)
        self.save_hyperparameters(ignore=["model"] if isinstance(model, nn.Module) else None)
        self.model = resolve_model(model, vocab_size)

    @property
    def trainable(self) -> nn.Module:
        return self.model

    def forward(self, batch: dict[str, Any], **kwargs: Any) -> Any:
        return self.model(batch, **kwargs)

    def training_step(self, batch: dict[str, Any], batch_idx: int):
        loss = self.model(batch, sites=()).loss
        self.log("train/loss_task", loss, prog_bar=True, batch_size=len(batch["ids"]))
        self.log("train/loss", loss, batch_size=len(batch["ids"]))
        return loss


COMPARE_PREFIX = "compare:"


def resolve_model(spec: dict[str, Any] | str | nn.Module | None, vocab_size: int | None = None) -> nn.Module:
    """Turn a model spec into an adapter.

    Args:
        spec: a dict for :func:`amad.models.build_model`; a path (``save_pretrained`` dir or amad
            ``.ckpt``); ``"compare:<comparison yaml>"`` — the teacher of that comparison, reused from
            the cache or trained once (how the embedded-task configs find their teacher); or an adapter.
        vocab_size: vocabulary size for dict specs.
    """
    from amad.lit.checkpoint import load_adapter
    from amad.models import build_model

    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, str) and spec.startswith(COMPARE_PREFIX):
        from amad.compare.config import load_compare_config
        from amad.compare.run import make_datamodule
        from amad.compare.teacher_cache import ensure_teacher

        path, _ = ensure_teacher(load_compare_config(spec[len(COMPARE_PREFIX) :]), make_datamodule)
        return load_adapter(path)
    if isinstance(spec, str):
        return load_adapter(spec)
    spec = dict(spec or {"family": "blip-vqa", "preset": "tiny"})
    if vocab_size is not None:
        spec.setdefault("vocab_size", vocab_size)
    return build_model(**spec)
