"""The comparison config: one YAML names the data, the teacher, the student, the budget and the methods.

Layout (``experiments/compare/*.yaml``)::

    name: easyvqa_blip
    description: ...                      # printed in results.md (say "synthetic" where it is)
    data: {class_path: ..., init_args: {...}}
    teacher: {model: {family: ..., preset: ...}, path: null, max_steps: ..., lr: ..., ...}
    student: {num_heads: ..., num_layers: ..., hidden_size: ..., init: random}
    train: {max_steps: ..., lr: ..., warmup_ratio: ..., schedule: ..., precision: 32-true}
    methods: {gt: {beta: 0, attention: null}, kd: {...}, amad: {attention: AMAD}, ...}
    run_methods: [gt, kd, ..., amad]      # which of them a run trains (default: all); --methods overrides
    seeds: 3
    presets: {smoke: {<overrides>}, full: {<overrides>}}   # "default" = the file as written

Method entries are keyword arguments of :class:`amad.lit.DistillationModule`, read with the same
parser as ``amad fit`` reads a YAML: a misspelt or mistyped option fails when the file is loaded.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from amad.config import deep_merge, load_config, method_subclasses
from amad.losses.methods import ATTENTION_METHODS

#: Methods without an attention loss, then every attention method of the registry (AMAD's last).
METHOD_ORDER: tuple[str, ...] = (
    "gt",
    "kd",
    *(m for m in ATTENTION_METHODS if not m.startswith("amad")),
    *(m for m in ATTENTION_METHODS if m.startswith("amad")),
)
REQUIRED = ("name", "data", "teacher", "student", "train", "methods")
#: ``train:`` keys that are :class:`~amad.lit.TaskModule` settings (the rest drive the Trainer)
OPTIMIZATION_KEYS = ("lr", "weight_decay", "warmup_ratio", "schedule", "max_new_tokens", "lr_scale")
#: keyword arguments of DistillationModule that a comparison sets itself, never a method entry
_NOT_A_METHOD_OPTION = {"teacher", "student", "vocab_size", "task", *OPTIMIZATION_KEYS}


def load_compare_config(
    path: str, preset: str = "default", seeds: int | None = None, methods: list[str] | None = None
) -> dict[str, Any]:
    """Load a comparison YAML, apply a preset, and optionally override the seed count / method subset.

    Raises:
        ValueError: a required key is missing, the preset or a requested method is unknown, or a method
            entry has an unknown or mistyped option.
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
    for name, entry in cfg["methods"].items():
        method_kwargs(entry, f"{path}: methods.{name}")  # fail now, not after the first runs
    return cfg


def method_kwargs(entry: dict[str, Any], where: str = "method") -> dict[str, Any]:
    """A method entry as :class:`~amad.lit.DistillationModule` keyword arguments, validated and with its
    ``attention`` instantiated (``attention: AMAD`` → ``AMAD()``).

    Raises:
        ValueError: an unknown option, a mistyped value, or a setting the comparison owns (``lr``...).
    """
    from jsonargparse import ArgumentParser

    from amad.lit import DistillationModule

    entry = dict(entry or {})
    owned = sorted(set(entry) & _NOT_A_METHOD_OPTION)
    if owned:
        raise ValueError(f"{where}: {owned} are set by the comparison (train:, student:, teacher:), not a method")
    with method_subclasses():  # `attention:` takes any AttentionMethod subclass (amad.config)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(DistillationModule, "m", skip=_NOT_A_METHOD_OPTION, instantiate=False)
        try:
            parsed = parser.instantiate(parser.parse_object({"m": entry})).m
        except Exception as err:  # jsonargparse: ArgumentError / TypeError with a multi-line report
            raise ValueError(f"{where}: {summarize_parse_error(str(err))}") from err
    return {k: parsed[k] for k in entry}


def summarize_parse_error(message: str) -> str:
    """One line from jsonargparse's multi-line report: the (nested) key and its most specific complaint,
    e.g. ``model.gamma: Expected a <class 'float'>. Got value: much``."""
    lines = [ln.strip().lstrip("- ") for ln in message.splitlines() if ln.strip()]
    markers = ("not accepted", "Expected a", "does not accept", "not a valid", "either not accessible")
    keys: list[str] = []
    for ln in lines:
        if any(m in ln for m in markers) and "NoneType" not in ln:
            path = ".".join(dict.fromkeys(keys))
            return f"{path}: {ln}" if path else ln
        for prefix in ("Parser key ", "Group "):
            if ln.startswith(prefix):
                keys.append(ln[len(prefix) :].split(":")[0].split(" ")[0].strip("\"'"))
    return lines[0] if lines else message


def optimization_kwargs(train: dict[str, Any]) -> dict[str, Any]:
    """The :class:`~amad.lit.TaskModule` settings (lr, schedule...) of a ``train:`` or ``teacher:`` section."""
    kwargs = {k: train[k] for k in OPTIMIZATION_KEYS if train.get(k) is not None}
    for k in ("lr", "weight_decay", "warmup_ratio"):  # YAML reads 5e-4 (no dot) as a string
        if k in kwargs:
            kwargs[k] = float(kwargs[k])
    if "max_new_tokens" in kwargs:
        kwargs["max_new_tokens"] = int(kwargs["max_new_tokens"])
    return kwargs


def make_datamodule(data_cfg: dict[str, Any]) -> Any:
    """Instantiate a ``{class_path, init_args}`` data section."""
    import importlib

    module, _, name = data_cfg["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"data.class_path {data_cfg['class_path']!r} cannot be imported: {err}") from err
    return cls(**(data_cfg.get("init_args") or {}))


def fingerprint(obj: Any) -> str:
    """A short, stable hash of a JSON-able object (config parts, data facts)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def ordered_methods(names: list[str]) -> list[str]:
    """Baselines first in the registry's order, AMAD and its variants last."""

    def rank(m: str) -> tuple[int, str]:
        base = "amad" if m.startswith("amad") else m
        return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER) - 1, m)

    return sorted(names, key=rank)
