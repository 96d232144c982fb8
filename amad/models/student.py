"""Derive a smaller student of the teacher's family, optionally initialised from the teacher.

In BLIP (and in T5 with ``d_kv = d_model / heads``) the number of heads does not change the parameter
count at a fixed hidden size: a smaller student needs a smaller ``hidden_size`` or fewer layers too.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch

from amad.models.adapter import AttentionAdapter
from amad.models.build import build_model
from amad.models.generic import GenericAdapter
from amad.models.generic_student import generic_student
from amad.models.layer_map import resolve_layer_map

_LAYER_KEY = re.compile(r"^(.*?\.(?:layers|layer|block))\.(\d+)\.(.*)$")


def derive_student(
    teacher: AttentionAdapter,
    *,
    num_heads: int | None = None,
    num_layers: int | None = None,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    init: Literal["teacher", "random"] = "teacher",
    layer_map: str | Sequence[int] = "uniform",
    seed: int | None = None,
    **overrides: Any,
) -> AttentionAdapter:
    """A student of the teacher's family, smaller where asked, same vocabulary and tokenizer.

    Args:
        teacher: the teacher adapter.
        num_heads, num_layers, hidden_size, intermediate_size: new sizes for every tower (None: the
            teacher's). With ``hidden_size`` and no ``intermediate_size``, each tower keeps the teacher's
            intermediate / hidden ratio.
        init: ``"teacher"``: copy every student parameter whose teacher counterpart has the same shape —
            embeddings, heads, norms, and transformer layer l from teacher layer ``layer_map[l]`` (per
            tower); ``"random"``: fresh initialisation.
        layer_map: ``uniform`` / ``last`` / ``first`` / explicit list (see :mod:`amad.models.layer_map`),
            used per tower for the copy.
        seed: seed of the student's random initialisation.
        **overrides: further flat overrides (``vision_num_layers``, ``decoder_num_layers``...). For a
            :class:`~amad.models.generic.GenericAdapter` teacher: ``num_key_value_heads`` and raw HF config
            fields (:func:`amad.models.generic_student.generic_student`).

    Returns:
        The student adapter; ``student.init_report`` says what was copied: ``init``, ``layer_maps``
        (tower -> teacher layer per student layer), ``copied`` (parameter names), ``skipped`` (name ->
        reason), ``copied_fraction`` (of the student's parameters, by count of elements).
    """
    if init not in ("teacher", "random"):
        raise ValueError(f"init must be 'teacher' or 'random', got {init!r}")
    if isinstance(teacher, GenericAdapter):  # any transformers model: sizes from its own config fields
        student = generic_student(
            teacher,
            num_heads=num_heads,
            num_layers=num_layers,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            layer_map=layer_map,
            seed=seed,
            **overrides,
        )
    else:
        student = _family_student(teacher, num_heads, num_layers, hidden_size, intermediate_size, seed, overrides)
    if init == "random":
        student.init_report = {"init": "random"}
    else:
        student.init_report = copy_from_teacher(teacher, student, layer_map)
        share = student.init_report["copied_fraction"]
        if share < 0.5:  # e.g. a narrower student: only same-shape tensors copy, the rest stays random
            warnings.warn(
                f"init='teacher' copied only {100 * share:.0f} % of the student's parameters (a student "
                f"narrower than its teacher keeps random weights wherever shapes differ); student.init_report "
                "lists what was skipped and why",
                stacklevel=2,
            )
    return student


def _family_student(
    teacher: AttentionAdapter,
    num_heads: int | None,
    num_layers: int | None,
    hidden_size: int | None,
    intermediate_size: int | None,
    seed: int | None,
    overrides: dict[str, Any],
) -> AttentionAdapter:
    """A randomly initialised student of a BLIP / VL-T5 teacher's family, from its config and the new sizes."""
    cfg = teacher.config_dict()
    family, hf_config = cfg.pop("family"), cfg.pop("hf_config")
    sizes = {
        k: v
        for k, v in dict(
            num_heads=num_heads, num_layers=num_layers, hidden_size=hidden_size, intermediate_size=intermediate_size
        ).items()
        if v is not None
    }
    if hidden_size is not None and intermediate_size is None and not any("intermediate" in k for k in overrides):
        sizes.update(_scaled_intermediate(teacher, hidden_size))
    return build_model(
        family, tokenizer=teacher.tokenizer, hf_config=hf_config, seed=seed, **{**cfg, **sizes, **overrides}
    )


def _scaled_intermediate(teacher: AttentionAdapter, hidden: int) -> dict[str, int]:
    c = teacher.model.config
    if teacher.family == "vlt5":
        return {"intermediate_size": max(1, round(c.d_ff * hidden / c.d_model))}
    v, t = c.vision_config, c.text_config
    return {
        "vision_intermediate_size": max(1, round(v.intermediate_size * hidden / v.hidden_size)),
        "text_intermediate_size": max(1, round(t.intermediate_size * hidden / t.hidden_size)),
    }


def _tower_depths(state: dict[str, torch.Tensor]) -> dict[str, int]:
    depth: dict[str, int] = {}
    for key in state:
        m = _LAYER_KEY.match(key)
        if m:
            depth[m.group(1)] = max(depth.get(m.group(1), 0), int(m.group(2)) + 1)
    return depth


@torch.no_grad()
def copy_from_teacher(
    teacher: AttentionAdapter, student: AttentionAdapter, layer_map: str | Sequence[int] = "uniform"
) -> dict[str, Any]:
    """Copy teacher tensors into the student wherever names (after the layer map) and shapes match.

    A layer parameter that the mapped teacher layer lacks (T5's relative position bias lives in block 0
    only) is taken from the same-named teacher parameter.
    """
    t_state, s_state = teacher.state_dict(), student.state_dict()
    t_depth, s_depth = _tower_depths(t_state), _tower_depths(s_state)
    maps = {tower: resolve_layer_map(layer_map, t_depth[tower], n) for tower, n in s_depth.items() if tower in t_depth}
    copied, skipped = [], {}
    n_copied = n_total = 0
    seen: set[int] = set()
    for key, dst in s_state.items():
        src_key = key
        m = _LAYER_KEY.match(key)
        if m and m.group(1) in maps:
            src_key = f"{m.group(1)}.{maps[m.group(1)][int(m.group(2))]}.{m.group(3)}"
            if src_key not in t_state and key in t_state:
                src_key = key
        count = dst.data_ptr() not in seen  # tied weights count once
        seen.add(dst.data_ptr())
        n_total += dst.numel() if count else 0
        src = t_state.get(src_key)
        if src is None:
            skipped[key] = "no teacher counterpart"
        elif src.shape != dst.shape:
            skipped[key] = f"shape {tuple(dst.shape)} vs teacher {src_key} {tuple(src.shape)}"
        else:
            dst.copy_(src)
            copied.append(key if src_key == key else f"{key} <- {src_key}")
            n_copied += dst.numel() if count else 0
    return {
        "init": "teacher",
        "layer_maps": maps,
        "copied": copied,
        "skipped": skipped,
        "copied_fraction": n_copied / max(n_total, 1),
    }
