"""Building adapters from presets and configs: the family table and :func:`build_model` (no weights loaded)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from amad.models.adapter import AttentionAdapter
from amad.models.blip import BlipCaptionAdapter, BlipVQAAdapter
from amad.models.configs import blip_config, vlt5_config
from amad.models.tokenizers import placeholder_tokenizer
from amad.models.vlt5 import VLT5Adapter

#: family name -> adapter class.
FAMILIES: dict[str, type[AttentionAdapter]] = {
    "blip-vqa": BlipVQAAdapter,
    "blip-caption": BlipCaptionAdapter,
    "vlt5": VLT5Adapter,
}


def adapter_class(family: str) -> type[AttentionAdapter]:
    """The adapter class of ``family``; ValueError naming the known families otherwise."""
    try:
        return FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; use one of {sorted(FAMILIES)}") from None


def model_config(
    family: str,
    preset: str = "tiny",
    tokenizer: Any = None,
    *,
    hf_config: dict[str, Any] | None = None,
    **overrides: Any,
) -> tuple[Any, dict[str, Any]]:
    """The ``(HF config, adapter settings)`` that :func:`build_model` would instantiate (cheap: no weights)."""
    adapter_class(family)
    if family == "vlt5":
        return vlt5_config(preset, hf_config=hf_config, tokenizer=tokenizer, **overrides)
    return blip_config(preset, hf_config=hf_config, tokenizer=tokenizer, **overrides), {}


def build_model(
    family: str,
    preset: str = "tiny",
    tokenizer: Any = None,
    *,
    hf_config: dict[str, Any] | None = None,
    seed: int | None = None,
    **overrides: Any,
) -> AttentionAdapter:
    """Build a randomly initialised adapter of ``family`` from a preset and overrides.

    Args:
        family: ``blip-vqa``, ``blip-caption`` or ``vlt5``.
        preset: ``tiny`` (tests), ``small`` (demo teacher), ``base`` (BLIP-base / T5-base shapes).
        tokenizer: sets ``vocab_size`` and the pad / bos / eos ids (preset builds); without one, a
            placeholder vocabulary (``tok7``, ``tok8``...) of the model's size is attached.
        hf_config: a full HF config dict (from :meth:`AttentionAdapter.config_dict`); replaces the preset.
        seed: when given, initialise under ``torch.manual_seed(seed)`` without touching the global RNG.
        **overrides: flat overrides (``num_heads``, ``num_layers``, ``hidden_size``,
            ``intermediate_size``, ``image_size``, ``patch_size``, ``vocab_size``, tower-specific
            ``vision_*`` / ``text_*`` / ``encoder_num_layers`` / ``decoder_num_layers``, raw
            ``vision_config`` / ``text_config`` / ``t5_config`` dicts; see :mod:`amad.models.configs`).

    Returns:
        The adapter (an ``nn.Module``), in train mode as any new module.
    """
    cls = adapter_class(family)
    config, extra = model_config(family, preset, tokenizer, hf_config=hf_config, **overrides)
    if tokenizer is None:
        vocab = config.vocab_size if family == "vlt5" else config.text_config.vocab_size
        tokenizer = placeholder_tokenizer(vocab)
    ctx = torch.random.fork_rng(devices=[]) if seed is not None else nullcontext()
    with ctx:
        if seed is not None:
            torch.manual_seed(seed)
        return cls.from_config(config, tokenizer, **extra)
