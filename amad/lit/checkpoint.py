"""What a checkpoint of an amad system holds besides Lightning's ``state_dict``.

A checkpoint written by :class:`~amad.lit.FineTuneModule` or :class:`~amad.lit.DistillationModule` is
self-contained for its trainable model (the keys are defined, and read back, in :mod:`amad.models.io`):
its ``config_dict()``, its ``state_dict`` prefix and its tokenizer. The teacher is never in a
checkpoint (see :mod:`amad.distill.teacher`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from amad.models.io import MODEL_CONFIG_KEY, MODEL_PREFIX_KEY, TOKENIZER_KEY, tokenizer_to_json


def add_model_to_checkpoint(checkpoint: dict[str, Any], model: nn.Module, prefix: str) -> None:
    """Record what rebuilding ``model`` from ``checkpoint`` needs (called from ``on_save_checkpoint``)."""
    checkpoint[MODEL_CONFIG_KEY] = model.config_dict()
    checkpoint[MODEL_PREFIX_KEY] = prefix
    tok = tokenizer_to_json(getattr(model, "tokenizer", None))
    if tok is not None:
        checkpoint[TOKENIZER_KEY] = tok
