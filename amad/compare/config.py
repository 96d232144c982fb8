"""The comparison config: one YAML names the data, the teacher, the student, the budget and the methods.

Layout (``experiments/compare/*.yaml``)::

    name: easyvqa_blip
    description: ...                      # printed in results.md (say "synthetic" where it is)
    data: {class_path: ..., init_args: {...}}
    teacher: {model: {family: ..., preset: ...}, path: null, max_steps: ..., lr: ..., ...}
    student: {num_heads: ..., num_layers: ..., hidden_size: ..., init: random}
    train: {max_steps: ..., lr: ..., warmup_ratio: ..., schedule: ..., precision: 32-true}
    methods: {gt: {beta: 0, attn_method: none}, kd: {...}, amad: {attn_method: amad}, ...}
    run_methods: [gt, kd, ..., amad]      # which of them a run trains (default: all); --methods overrides
    seeds: 3
    presets: {smoke: {<overrides>}, full: {<overrides>}}   # "default" = the file as written

Method entries are keyword arguments of :class:`amad.lit.DistillationModule`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from amad.config import deep_merge, load_config

METHOD_ORDER = ("gt", "kd", "one_to_one", "head_mean", "minilm_relation", "shd", "a2d", "attn_distill", "amad")
REQUIRED = ("name", "data", "teacher", "student", "train", "methods")


def load_compare_config(
    path: str, preset: str = "default", seeds: int | None = None, methods: list[str] | None = None
) -> dict[str, Any]:
    """Load a comparison YAML, apply a preset, and optionally override the seed count / method subset.

    Raises:
        ValueError: a required key is missing, the preset or a requested method is unknown.
    """
    cfg = load_config(path)
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise ValueError(f"comparison config {path} lacks {missing}; see amad/compare/config.py")
    presets = cfg.pop("presets", {}) or {}
    if preset != "default":
        if preset not in presets:
            raise ValueError(f"unknown preset {preset!r} in {path}; available: default, {', '.join(presets)}")
        cfg = deep_merge(cfg, presets[preset])
    cfg["preset"] = preset
    if seeds is not None:
        cfg["seeds"] = seeds
    cfg.setdefault("seeds", 3)
    methods = methods or cfg.pop("run_methods", None) or list(cfg["methods"])
    cfg.pop("run_methods", None)
    unknown = sorted(set(methods) - set(cfg["methods"]))
    if unknown:
        raise ValueError(f"methods {unknown} are not in {path}; available: {sorted(cfg['methods'])}")
    cfg["methods"] = {m: cfg["methods"][m] for m in methods}
    return cfg


def fingerprint(obj: Any) -> str:
    """A short, stable hash of a JSON-able object (config parts, data facts)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def ordered_methods(names: list[str]) -> list[str]:
    """Baselines first in a fixed order, AMAD and its variants last."""

    def rank(m: str) -> tuple[int, str]:
        base = "amad" if m.startswith("amad") else m
        return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER) - 1, m)

    return sorted(names, key=rank)
