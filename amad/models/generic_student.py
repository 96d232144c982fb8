"""Students of a :class:`~amad.models.generic.GenericAdapter` teacher: its config with fewer heads, layers or width.

The student is the teacher's model class built from a copy of the teacher's config in which every
(sub-)config that has a field takes the new size:

* heads: ``num_attention_heads`` (and BART-style ``encoder_/decoder_attention_heads``); key/value heads
  (``num_key_value_heads``, grouped-query attention): ``num_key_value_heads=`` if given, else the teacher's
  query heads per key/value head kept where it divides (Llama 8 heads / 2 kv -> 2 heads / 1 kv; a
  multi-head teacher keeps kv = heads);
* ``head_dim``, where a config stores it: recomputed as ``hidden / heads`` when the teacher's was
  ``hidden / heads`` (the parameter count stays at a fixed width, as BERT's implicit head size), kept
  otherwise (an explicit head size: fewer heads, fewer parameters);
* layers: ``num_hidden_layers`` (``encoder_layers`` / ``decoder_layers``); a per-layer ``layer_types``
  list (sliding / full attention) follows the layer map;
* width: ``hidden_size`` (``d_model``) and ``intermediate_size`` (``encoder_/decoder_ffn_dim``), the
  intermediate / hidden ratio kept when only the width is given.

Teacher initialisation is :func:`amad.models.student.copy_from_teacher`'s (same-shape tensors, layer l from
teacher layer ``layer_map[l]``; nothing sliced).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch

from amad.models.generic import GenericAdapter, _configs
from amad.models.layer_map import resolve_layer_map

_FIELDS = {
    "heads": ("num_attention_heads", "encoder_attention_heads", "decoder_attention_heads"),
    "layers": ("num_hidden_layers", "encoder_layers", "decoder_layers"),
    "hidden": ("hidden_size",),
    "intermediate": ("intermediate_size", "encoder_ffn_dim", "decoder_ffn_dim"),
}


def _kv_default(teacher_heads: int, teacher_kv: int, heads: int) -> int:
    """Keep the teacher's query heads per key/value head where it divides the student's heads."""
    kv = max(1, heads * teacher_kv // teacher_heads)
    while heads % kv:
        kv -= 1
    return kv


def _resize(cfg: Any, sizes: dict[str, int | None], num_kv_heads: int | None, layer_map: Any) -> None:
    """Apply the new sizes to one config (in place); fields it lacks are left alone."""
    t_heads = getattr(cfg, "num_attention_heads", None)
    t_hidden = getattr(cfg, "hidden_size", None)
    t_layers = getattr(cfg, "num_hidden_layers", None)
    for key, new in sizes.items():
        if new is None:
            continue
        for name in _FIELDS[key]:
            if isinstance(getattr(cfg, name, None), int):
                setattr(cfg, name, new)
    if sizes.get("hidden") is not None and sizes.get("intermediate") is None and isinstance(t_hidden, int):
        for name in _FIELDS["intermediate"]:  # keep each intermediate / hidden ratio
            if isinstance(old := getattr(cfg, name, None), int):
                setattr(cfg, name, max(1, round(old * sizes["hidden"] / t_hidden)))
    heads, hidden = getattr(cfg, "num_attention_heads", None), getattr(cfg, "hidden_size", None)
    if isinstance(t_kv := getattr(cfg, "num_key_value_heads", None), int) and isinstance(t_heads, int):
        if num_kv_heads is not None:
            cfg.num_key_value_heads = num_kv_heads
        elif heads != t_heads:
            cfg.num_key_value_heads = _kv_default(t_heads, t_kv, heads)
    hd = getattr(cfg, "head_dim", None)
    if isinstance(hd, int) and isinstance(t_heads, int) and isinstance(t_hidden, int) and hd == t_hidden // t_heads:
        cfg.head_dim = hidden // heads
    types = getattr(cfg, "layer_types", None)
    n = getattr(cfg, "num_hidden_layers", None)
    if isinstance(types, list) and isinstance(t_layers, int) and len(types) == t_layers and n != t_layers:
        cfg.layer_types = [types[m] for m in resolve_layer_map(layer_map, t_layers, n)]


def generic_student(
    teacher: GenericAdapter,
    *,
    num_heads: int | None = None,
    num_key_value_heads: int | None = None,
    num_layers: int | None = None,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    layer_map: str | Sequence[int] = "uniform",
    seed: int | None = None,
    **overrides: Any,
) -> GenericAdapter:
    """A randomly initialised smaller student of a generic teacher; :func:`amad.models.derive_student` calls it
    (and copies the teacher's weights into it for ``init="teacher"``).

    Args:
        num_heads, num_layers, hidden_size, intermediate_size, seed: as :func:`amad.models.derive_student`.
        num_key_value_heads: key/value heads of a grouped-query student (default: see the module docstring).
        layer_map: the layer map, for a per-layer ``layer_types`` list.
        **overrides: raw fields of the student's HF config (``attention_dropout=0.0``), or a sub-config
            name with a dict (``vision_config={"num_hidden_layers": 2}``), applied after the sizes.

    Raises:
        ValueError: an override the config does not have (names the model class and the field).
    """
    cfg = copy.deepcopy(teacher.model.config)
    sizes = {"heads": num_heads, "layers": num_layers, "hidden": hidden_size, "intermediate": intermediate_size}
    for c in _configs(cfg):
        _resize(c, sizes, num_key_value_heads, layer_map)
    cls_name = type(teacher.model).__name__
    for key, value in overrides.items():
        sub = getattr(cfg, key, None)
        if key in getattr(cfg, "sub_configs", {}) and isinstance(value, dict):
            for k, v in value.items():
                if not hasattr(sub, k):
                    raise ValueError(f"{cls_name}'s {key} has no field {k!r}")
                setattr(sub, k, v)
        elif hasattr(cfg, key):
            setattr(cfg, key, value)
        else:
            raise ValueError(f"{cls_name}'s config has no field {key!r}")
    ctx = torch.random.fork_rng(devices=[]) if seed is not None else nullcontext()
    with ctx:
        if seed is not None:
            torch.manual_seed(seed)
        model = type(teacher.model)._from_config(cfg)
    param = next(teacher.model.parameters())
    return GenericAdapter(model.to(param.dtype), teacher.tokenizer)
