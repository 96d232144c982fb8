"""Checkpoint plumbing shared by the systems: what a student checkpoint holds, and how to read one.

A checkpoint written by :class:`~amad.lit.FineTuneModule` or :class:`~amad.lit.DistillationModule`
is self-contained for its trainable model: besides Lightning's ``state_dict`` it carries

* ``amad_model_config``: the adapter's ``config_dict()``, enough to rebuild its architecture;
* ``amad_model_prefix``: the ``state_dict`` prefix of that model (``model.`` or ``student.``);
* ``amad_tokenizer``: the tokenizer as a ``tokenizers`` JSON string (word-level vocabularies are
  built from data; a checkpoint must not depend on rebuilding them identically).

The teacher is never in a checkpoint (see :mod:`amad.lit.teacher`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

MODEL_CONFIG_KEY = "amad_model_config"
MODEL_PREFIX_KEY = "amad_model_prefix"
TOKENIZER_KEY = "amad_tokenizer"


def tokenizer_to_json(tokenizer: Any) -> str | None:
    """Serialise a fast tokenizer (None when there is none or it is not a fast tokenizer)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return None if backend is None else backend.to_str()


def tokenizer_from_json(text: str) -> Any:
    """Rebuild a word-level tokenizer written by :func:`tokenizer_to_json`."""
    from amad.models.tokenizers import word_tokenizer_from_vocab

    vocab = json.loads(text)["model"]["vocab"]
    return word_tokenizer_from_vocab(vocab)


def add_model_to_checkpoint(checkpoint: dict[str, Any], model: nn.Module, prefix: str) -> None:
    """Record what rebuilding ``model`` from ``checkpoint`` needs (called from ``on_save_checkpoint``)."""
    checkpoint[MODEL_CONFIG_KEY] = model.config_dict()
    checkpoint[MODEL_PREFIX_KEY] = prefix
    tok = tokenizer_to_json(getattr(model, "tokenizer", None))
    if tok is not None:
        checkpoint[TOKENIZER_KEY] = tok


def adapter_from_checkpoint(path: str | Path) -> nn.Module:
    """Rebuild the trainable model (student, or fine-tuned model) of an amad ``.ckpt``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not an amad checkpoint, or its weights do not fit its config.
    """
    from amad.models import build_model

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated / not a torch file
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err
    if MODEL_CONFIG_KEY not in ckpt:
        raise ValueError(
            f"{path} is not an amad checkpoint (no '{MODEL_CONFIG_KEY}'); expected a .ckpt written by "
            "`amad fit` with FineTuneModule or DistillationModule"
        )
    tokenizer = tokenizer_from_json(ckpt[TOKENIZER_KEY]) if TOKENIZER_KEY in ckpt else None
    model = build_model(**ckpt[MODEL_CONFIG_KEY], tokenizer=tokenizer)
    prefix = ckpt[MODEL_PREFIX_KEY]
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path} does not match its own model config: {err}") from err
    return model


def load_adapter(path: str | Path) -> nn.Module:
    """Load a model adapter from a ``.ckpt`` or a ``save_pretrained`` directory.

    Raises:
        FileNotFoundError: ``path`` does not exist; the message names the two accepted forms.
    """
    from amad.models import load_pretrained

    path = Path(path)
    if path.is_dir():
        return load_pretrained(path)
    if path.is_file():
        return adapter_from_checkpoint(path)
    raise FileNotFoundError(
        f"model path {path} does not exist: expected a directory written by `amad export` / "
        "`save_pretrained`, or a .ckpt written by `amad fit`. Hub ids cannot be downloaded here."
    )
