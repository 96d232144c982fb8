"""Building adapters from configs, and loading them from local directories (no hub)."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from amad.models.adapter import ADAPTER_FILE, EXTRA_WEIGHTS_FILE, AttentionAdapter
from amad.models.blip import BlipCaptionAdapter, BlipVQAAdapter
from amad.models.configs import blip_config, vlt5_config
from amad.models.tokenizers import load_tokenizer, placeholder_tokenizer
from amad.models.vlt5 import VLT5Adapter

#: family name -> adapter class.
FAMILIES: dict[str, type[AttentionAdapter]] = {
    "blip-vqa": BlipVQAAdapter,
    "blip-caption": BlipCaptionAdapter,
    "vlt5": VLT5Adapter,
}
_ARCHITECTURES = {
    "BlipForQuestionAnswering": "blip-vqa",
    "BlipForConditionalGeneration": "blip-caption",
    "T5ForConditionalGeneration": "vlt5",
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model")


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


def resolve_local_path(path: str | Path) -> Path:
    """A local directory for ``path``: the directory itself, or a hub id's snapshot in the local HF cache.

    Raises:
        FileNotFoundError: neither exists; the message says to pass a local path (no downloads here).
    """
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise NotADirectoryError(f"{path} is a file; expected a directory written by save_pretrained")
    name = str(path)
    if not name.startswith((".", "/", "~")) and name.count("/") <= 1:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(name, local_files_only=True))
        except Exception:  # not cached (or not a valid repo id)
            pass
    raise FileNotFoundError(
        f"{name!r} is neither a local directory nor a model in the local Hugging Face cache. Hub downloads "
        "are off (HF_HUB_OFFLINE=1): pass a local path to a folder written by save_pretrained "
        "(e.g. a downloaded Salesforce/blip-vqa-base or t5-base)."
    )


def load_pretrained(
    path: str | Path, *, family: str | None = None, tokenizer: Any = None, **extra: Any
) -> AttentionAdapter:
    """Load an adapter saved by ``save_pretrained``, or wrap a plain HF checkpoint directory.

    Args:
        path: a local directory, or a hub id already in the local HF cache.
        family: needed only when the directory has no ``amad_adapter.json`` and its ``config.json``
            architecture does not say (``BlipForQuestionAnswering`` → ``blip-vqa``, etc.).
        tokenizer: overrides the directory's tokenizer files.
        **extra: adapter settings (VL-T5: ``image_size``, ``patch_size``, ``visual_feat_dim``...) that
            override the saved ones — useful when wrapping a plain T5 checkpoint.

    A plain T5 checkpoint gets a freshly initialised visual embedding, listed in ``adapter.init_report``.
    """
    local = resolve_local_path(path)
    meta_file = local / ADAPTER_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if family is None:
        family = meta.get("family")
    if family is None:
        cfg_file = local / "config.json"
        archs = (json.loads(cfg_file.read_text()).get("architectures") or []) if cfg_file.is_file() else []
        family = next((_ARCHITECTURES[a] for a in archs if a in _ARCHITECTURES), None)
        if family is None:
            raise ValueError(f"cannot tell the model family of {local} (architectures {archs}); pass family=")
    cls = adapter_class(family)
    model = cls.load_hf(str(local))
    if tokenizer is None and any((local / f).is_file() for f in _TOKENIZER_FILES):
        tokenizer = load_tokenizer(local)
    adapter = cls(model, tokenizer, **{**meta.get("extra_config", {}), **extra})
    expected = adapter._extra_state()
    weights = local / EXTRA_WEIGHTS_FILE
    if weights.is_file():
        from safetensors.torch import load_file

        state = load_file(str(weights))
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{weights} does not match the adapter: missing {missing}, unexpected {unexpected}")
        adapter.load_state_dict(state, strict=False)
    elif expected:
        adapter.init_report = {
            "random": sorted(expected),
            "note": f"{local} has no {EXTRA_WEIGHTS_FILE}: the adapter's own modules are freshly initialised",
        }
    return adapter
