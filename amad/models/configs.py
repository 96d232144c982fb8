"""Presets and flat overrides → Hugging Face configs, per family.

Every model is built from a config (no hub). A config starts from a **preset** (``tiny`` for tests,
``small`` for the demo teacher, ``base`` for real BLIP-base / T5-base shapes) or from a full HF config
dict (``hf_config=``, what :meth:`AttentionAdapter.config_dict` stores), then takes, in this order:

1. the tokenizer's vocabulary size and special ids (preset builds only: a rebuild from ``hf_config``
   keeps its ids and only checks the tokenizer fits),
2. raw HF fields (``vision_config={...}``, ``text_config={...}`` for BLIP, ``t5_config={...}`` for
   VL-T5), checked against the HF config's fields,
3. flat overrides: generic (``num_heads``, ``num_layers``, ``hidden_size``, ``intermediate_size``)
   first, then tower-specific (``vision_num_heads``, ``text_num_layers``, ``decoder_num_layers``...).

Flat override names: see :data:`BLIP_OVERRIDES` and :data:`VLT5_OVERRIDES` (and
:data:`VISUAL_OVERRIDES` for VL-T5's visual embedding).
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import BlipConfig, T5Config

PRESET_NAMES = ("tiny", "small", "base")

# ----------------------------------------------------------------------------------------- BLIP
_BLIP_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "vision_config": dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=64,
            patch_size=16,
            initializer_range=0.02,
        ),
        "text_config": dict(
            vocab_size=100,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            pad_token_id=0,
            bos_token_id=5,
            eos_token_id=6,
            sep_token_id=6,
        ),
    },
    # the demo teacher: ~3 M parameters with a few hundred words
    "small": {
        "vision_config": dict(
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=4,
            num_attention_heads=8,
            image_size=64,
            patch_size=8,
            initializer_range=0.02,
        ),
        "text_config": dict(
            vocab_size=300,
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=4,
            num_attention_heads=8,
            max_position_embeddings=64,
            pad_token_id=0,
            bos_token_id=5,
            eos_token_id=6,
            sep_token_id=6,
        ),
    },
    # Salesforce/blip-vqa-base shapes (ViT-B/16 at 384 px, BERT-base text); HF default token ids
    "base": {
        "vision_config": dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=384,
            patch_size=16,
        ),
        "text_config": dict(
            vocab_size=30524,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=512,
        ),
    },
}

#: flat override -> list of (sub-config, field) it sets (generic keys first).
BLIP_OVERRIDES: dict[str, list[tuple[str, str]]] = {
    "num_heads": [("vision_config", "num_attention_heads"), ("text_config", "num_attention_heads")],
    "num_layers": [("vision_config", "num_hidden_layers"), ("text_config", "num_hidden_layers")],
    "hidden_size": [("vision_config", "hidden_size"), ("text_config", "hidden_size")],
    "intermediate_size": [("vision_config", "intermediate_size"), ("text_config", "intermediate_size")],
    "attention_dropout": [("vision_config", "attention_dropout"), ("text_config", "attention_probs_dropout_prob")],
    "dropout": [("text_config", "hidden_dropout_prob")],
    "image_size": [("vision_config", "image_size")],
    "patch_size": [("vision_config", "patch_size")],
    "vision_num_heads": [("vision_config", "num_attention_heads")],
    "vision_num_layers": [("vision_config", "num_hidden_layers")],
    "vision_hidden_size": [("vision_config", "hidden_size")],
    "vision_intermediate_size": [("vision_config", "intermediate_size")],
    "text_num_heads": [("text_config", "num_attention_heads")],
    "text_num_layers": [("text_config", "num_hidden_layers")],
    "text_hidden_size": [("text_config", "hidden_size")],
    "text_intermediate_size": [("text_config", "intermediate_size")],
    "vocab_size": [("text_config", "vocab_size")],
    "max_position_embeddings": [("text_config", "max_position_embeddings")],
    "pad_token_id": [("text_config", "pad_token_id")],
    "bos_token_id": [("text_config", "bos_token_id")],
    "eos_token_id": [("text_config", "sep_token_id"), ("text_config", "eos_token_id")],
}

# ----------------------------------------------------------------------------------------- VL-T5
_T5_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "t5_config": dict(
            vocab_size=100,
            d_model=64,
            d_kv=16,
            num_heads=4,
            num_layers=2,
            num_decoder_layers=2,
            d_ff=128,
            dropout_rate=0.1,
            pad_token_id=0,
            decoder_start_token_id=5,
            eos_token_id=6,
        ),
        "visual": dict(image_size=64, patch_size=16, visual_feat_dim=None, num_channels=3),
    },
    "small": {
        "t5_config": dict(
            vocab_size=300,
            d_model=128,
            d_kv=16,
            num_heads=8,
            num_layers=4,
            num_decoder_layers=4,
            d_ff=512,
            dropout_rate=0.1,
            pad_token_id=0,
            decoder_start_token_id=5,
            eos_token_id=6,
        ),
        "visual": dict(image_size=64, patch_size=8, visual_feat_dim=None, num_channels=3),
    },
    # t5-base shapes; VL-T5's 36 × 2048-d Faster R-CNN region features (no patch embedding)
    "base": {
        "t5_config": dict(
            vocab_size=32128,
            d_model=768,
            d_kv=64,
            num_heads=12,
            num_layers=12,
            num_decoder_layers=12,
            d_ff=3072,
            dropout_rate=0.1,
            pad_token_id=0,
            decoder_start_token_id=0,
            eos_token_id=1,
        ),
        "visual": dict(image_size=224, patch_size=None, visual_feat_dim=2048, num_channels=3),
    },
}

VLT5_OVERRIDES: dict[str, list[str]] = {
    "num_heads": ["num_heads"],
    "num_layers": ["num_layers", "num_decoder_layers"],
    "hidden_size": ["d_model"],
    "intermediate_size": ["d_ff"],
    "dropout": ["dropout_rate"],
    "encoder_num_layers": ["num_layers"],
    "decoder_num_layers": ["num_decoder_layers"],
    "d_kv": ["d_kv"],
    "vocab_size": ["vocab_size"],
    "pad_token_id": ["pad_token_id"],
    "bos_token_id": ["decoder_start_token_id"],
    "eos_token_id": ["eos_token_id"],
}
#: VL-T5 visual-embedding settings (adapter-level, stored in ``config_dict`` as flat keys).
VISUAL_OVERRIDES = ("image_size", "patch_size", "visual_feat_dim", "num_channels")


def _check_preset(preset: str) -> None:
    if preset not in PRESET_NAMES:
        raise ValueError(f"unknown preset {preset!r}; use one of {PRESET_NAMES}")


def _tokenizer_ids(tokenizer: Any) -> dict[str, int]:
    """vocab_size / pad / bos / eos from a tokenizer (eos falls back to sep, BLIP's convention)."""
    out = {"vocab_size": len(tokenizer)}
    if tokenizer.pad_token_id is not None:
        out["pad_token_id"] = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        out["bos_token_id"] = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is not None:
        out["eos_token_id"] = eos
    return out


def _update_raw(sub: dict[str, Any], raw: dict[str, Any], valid: set[str], name: str) -> None:
    unknown = sorted(set(raw) - valid)
    if unknown:
        raise ValueError(f"unknown {name} fields {unknown}")
    sub.update(raw)


def _reject_unknown(overrides: dict[str, Any], known: set[str], family: str) -> None:
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown override(s) {unknown} for family {family!r}; valid: {sorted(known)}")


def blip_config(
    preset: str = "tiny", *, hf_config: dict[str, Any] | None = None, tokenizer: Any = None, **overrides: Any
) -> BlipConfig:
    """Build a ``BlipConfig`` from a preset (or ``hf_config``), a tokenizer and flat overrides."""
    _reject_unknown(overrides, set(BLIP_OVERRIDES) | {"vision_config", "text_config"}, "blip")
    if hf_config is not None:
        d = copy.deepcopy(dict(hf_config))
        d.setdefault("vision_config", {})
        d.setdefault("text_config", {})
    else:
        _check_preset(preset)
        d = copy.deepcopy(_BLIP_PRESETS[preset])
    base_vision = BlipConfig().vision_config.to_dict()
    base_text = BlipConfig().text_config.to_dict()
    if tokenizer is not None:
        ids = _tokenizer_ids(tokenizer)
        if hf_config is None:
            for key, value in ids.items():
                for sub, fld in BLIP_OVERRIDES[key]:
                    d[sub][fld] = value
        _check_vocab(ids["vocab_size"], {**base_text, **d["text_config"]}["vocab_size"], overrides)
    _update_raw(d["vision_config"], overrides.pop("vision_config", None) or {}, set(base_vision), "vision_config")
    _update_raw(d["text_config"], overrides.pop("text_config", None) or {}, set(base_text), "text_config")
    for key in BLIP_OVERRIDES:  # dict order: generic keys before tower-specific ones
        if key in overrides and overrides[key] is not None:
            for sub, fld in BLIP_OVERRIDES[key]:
                d[sub][fld] = overrides[key]
    if tokenizer is not None and "vocab_size" in overrides:
        _check_vocab(len(tokenizer), overrides["vocab_size"], {})
    for sub in ("vision_config", "text_config"):
        full = {**(base_vision if sub == "vision_config" else base_text), **d[sub]}
        if full["hidden_size"] % full["num_attention_heads"]:
            raise ValueError(
                f"{sub}: hidden_size {full['hidden_size']} is not a multiple of "
                f"num_attention_heads {full['num_attention_heads']}"
            )
    return BlipConfig.from_dict(d)


def vlt5_config(
    preset: str = "tiny", *, hf_config: dict[str, Any] | None = None, tokenizer: Any = None, **overrides: Any
) -> tuple[T5Config, dict[str, Any]]:
    """Build ``(T5Config, visual settings)`` from a preset (or ``hf_config``), a tokenizer and overrides.

    When ``hidden_size`` or ``num_heads`` is overridden and ``d_kv`` is not, ``d_kv = d_model / num_heads``.
    """
    _reject_unknown(overrides, set(VLT5_OVERRIDES) | set(VISUAL_OVERRIDES) | {"t5_config"}, "vlt5")
    if hf_config is not None:
        t5 = copy.deepcopy(dict(hf_config))
        visual = (
            dict(_T5_PRESETS["tiny"]["visual"]) if preset not in PRESET_NAMES else dict(_T5_PRESETS[preset]["visual"])
        )
    else:
        _check_preset(preset)
        t5 = copy.deepcopy(_T5_PRESETS[preset]["t5_config"])
        visual = dict(_T5_PRESETS[preset]["visual"])
    base = T5Config().to_dict()
    if tokenizer is not None:
        ids = _tokenizer_ids(tokenizer)
        if hf_config is None:
            for key, value in ids.items():
                for fld in VLT5_OVERRIDES[key]:
                    t5[fld] = value
        _check_vocab(ids["vocab_size"], {**base, **t5}["vocab_size"], overrides)
    raw = overrides.pop("t5_config", None) or {}
    _update_raw(t5, raw, set(base), "t5_config")
    for key in VLT5_OVERRIDES:
        if key in overrides and overrides[key] is not None:
            for fld in VLT5_OVERRIDES[key]:
                t5[fld] = overrides[key]
    if tokenizer is not None and "vocab_size" in overrides:
        _check_vocab(len(tokenizer), overrides["vocab_size"], {})
    full = {**base, **t5}
    if ("hidden_size" in overrides or "num_heads" in overrides) and "d_kv" not in overrides and "d_kv" not in raw:
        if full["d_model"] % full["num_heads"]:
            raise ValueError(
                f"d_model {full['d_model']} is not a multiple of num_heads {full['num_heads']}; pass d_kv explicitly"
            )
        t5["d_kv"] = full["d_model"] // full["num_heads"]
    for key in VISUAL_OVERRIDES:
        if key in overrides:
            visual[key] = overrides[key]
    if not visual.get("patch_size") and not visual.get("visual_feat_dim"):
        raise ValueError("VL-T5 needs a patch embedding (patch_size) or region features (visual_feat_dim)")
    t5.setdefault("num_decoder_layers", t5.get("num_layers", base["num_layers"]))
    return T5Config.from_dict(t5), visual


def _check_vocab(tokenizer_size: int, vocab_size: int, overrides: dict[str, Any]) -> None:
    size = overrides.get("vocab_size", vocab_size)
    if size is not None and tokenizer_size > size:
        raise ValueError(f"the tokenizer has {tokenizer_size} tokens but the model vocab_size is {size}")
