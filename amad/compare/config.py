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

Every section is typed (:mod:`amad.compare.schema`) and checked when the file is read, after ``base:``
and for every preset: a misspelt or mistyped key fails at once, in one line naming the file, the key
and the closest valid key. Method entries are keyword arguments of :class:`amad.lit.DistillationModule`,
read with the same parser as ``amad fit`` reads a YAML, once per distinct entry; what a method does is
asked of its attention method (:func:`method_attention`: ``is_amad``, ``has_head_weights``), never of
its name. ``amad compare --print_config`` prints :func:`comparison_settings`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
from typing import Any

from amad.compare.schema import (
    ComparisonConfig,
    SchemaError,
    StudentSection,
    SystemComparisonConfig,
    build,
    check_keys,
    close_key,
    family_override_keys,
)
from amad.config import deep_merge, load_config, method_subclasses

REQUIRED = ("name", "data", "teacher", "student", "train", "methods")
#: ``train:`` keys that are :class:`~amad.lit.TaskModule` settings (the rest drive the Trainer)
OPTIMIZATION_KEYS = ("lr", "weight_decay", "warmup_ratio", "schedule", "max_new_tokens", "lr_scale")
#: keyword arguments of DistillationModule that a comparison sets itself, never a method entry
_NOT_A_METHOD_OPTION = {"teacher", "student", "vocab_size", "task", *OPTIMIZATION_KEYS}


def load_compare_config(
    path: str, preset: str = "default", seeds: int | None = None, methods: list[str] | None = None
) -> dict[str, Any]:
    """Load a comparison YAML, check it against its schema (:mod:`amad.compare.schema`; every preset
    too), apply a preset, and optionally override the seed count / method subset.

    Returns:
        The resolved file as written (fingerprints hash it), with ``preset`` set, ``methods`` cut to the
        methods to run and ``presets`` / ``run_methods`` removed.

    Raises:
        ValueError: one line naming the file and the key: a required key missing, an unknown key (with
            the closest valid one), a mistyped value, an unknown preset or requested method.
    """
    cfg = load_config(path)
    presets = cfg.pop("presets", {}) or {}
    try:
        if not isinstance(presets, dict):
            raise SchemaError(f"presets: expected a mapping of name -> overrides, got {presets!r}")
        validate_comparison(cfg)
        for name, overrides in presets.items():
            try:
                validate_comparison(deep_merge(cfg, overrides or {}))
            except SchemaError as err:
                raise SchemaError(f"presets.{name}: {err}") from None
    except SchemaError as err:
        raise SchemaError(f"{path}: {err}") from None
    if preset != "default":
        if preset not in presets:
            raise ValueError(f"unknown preset {preset!r} in {path}; available: default, {', '.join(presets)}")
        cfg = deep_merge(cfg, presets[preset] or {})
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


def validate_comparison(cfg: dict[str, Any]) -> ComparisonConfig:
    """The typed view of a resolved comparison (no ``presets``); SchemaError naming the key otherwise.

    Besides the schema's own checks: the data's ``init_args`` against the DataModule's signature, the
    model's and the student's flat overrides against the teacher's family, every method entry against
    :class:`~amad.lit.DistillationModule`, and ``run_methods`` against ``methods``.
    """
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise SchemaError(f"required key(s) {missing} missing (see amad/compare/schema.py)")
    if cfg.get("system") is not None:
        return validate_system_comparison(cfg)
    typed: ComparisonConfig = build(ComparisonConfig, {k: v for k, v in cfg.items() if k != "preset"}, "")
    if typed.teacher.path is None and typed.teacher.max_steps is None:
        raise SchemaError("teacher.max_steps: required key missing (to train the teacher; or give teacher.path)")
    check_data(cfg["data"], "data")
    if typed.teacher.data is not None:
        check_data(deep_merge(cfg["data"], cfg["teacher"]["data"]), "teacher.data")
    check_student_overrides(typed.student, typed.teacher.model.family, "student")
    for name, entry in typed.methods.items():
        method_kwargs(entry, f"methods.{name}")
    for k, name in enumerate(typed.run_methods or []):
        if name not in typed.methods:
            raise SchemaError(f"run_methods[{k}]: {name!r} is not in methods{close_key(name, typed.methods)}")
    return typed


def validate_system_comparison(cfg: dict[str, Any]) -> SystemComparisonConfig:
    """:func:`validate_comparison` of an any-model comparison (``system:`` set, :mod:`amad.compare.system`):
    the system keeps the contract, ``system.init_args`` and every method entry fit its signature, and
    ``teacher.model`` names fields of the model it builds."""
    from amad.compare.system import SYSTEM_OWNED, system_class

    typed: SystemComparisonConfig = build(SystemComparisonConfig, {k: v for k, v in cfg.items() if k != "preset"}, "")
    if typed.teacher.path is None and typed.teacher.max_steps is None:
        raise SchemaError("teacher.max_steps: required key missing (to train the teacher; or give teacher.path)")
    try:
        system_class(typed.system.class_path)
    except ValueError as err:
        raise SchemaError(str(err)) from None
    check_data(cfg["data"], "data")
    if typed.teacher.data is not None:
        check_data(deep_merge(cfg["data"], cfg["teacher"]["data"]), "teacher.data")
    parser = _class_parser(typed.system.class_path, frozenset(SYSTEM_OWNED))
    check_keys(typed.system.init_args, _parser_keys(parser), "system.init_args")
    _parse(parser, typed.system.init_args, "system.init_args")
    check_teacher_model(cfg)
    for name, entry in typed.methods.items():
        method_kwargs(entry, f"methods.{name}", typed.system.class_path)
    for k, name in enumerate(typed.run_methods or []):
        if name not in typed.methods:
            raise SchemaError(f"run_methods[{k}]: {name!r} is not in methods{close_key(name, typed.methods)}")
    return typed


def check_student_overrides(student: StudentSection, family: str, where: str) -> None:
    """The student's keys beyond :class:`~amad.compare.schema.StudentSection`'s: flat overrides of ``family``."""
    check_keys(student.extra, family_override_keys(family, "teacher.model.family"), where)


@functools.cache
def _class_parser(class_path: str, skip: frozenset[str] = frozenset()) -> Any:
    """A jsonargparse parser of ``class_path``'s keyword arguments under ``c`` (built once per class)."""
    import importlib

    from jsonargparse import ArgumentParser

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise SchemaError(f"class_path {class_path!r} cannot be imported: {err}") from None
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "c", skip=set(skip), instantiate=False)
    return parser


def _parser_keys(parser: Any) -> set[str]:
    return {a.dest[2:] for a in parser._actions if a.dest.startswith("c.") and not a.dest.endswith(".help")}


def check_data(data: dict[str, Any], where: str) -> None:
    """``{class_path, init_args}``: the class imports and takes those keyword arguments, of those types."""
    try:
        parser = _class_parser(data["class_path"])
    except SchemaError as err:
        raise SchemaError(f"{where}.{err}") from None
    init_args = data.get("init_args") or {}
    check_keys(init_args, _parser_keys(parser), f"{where}.init_args")
    _parse(parser, init_args, f"{where}.init_args")


def _parse(parser: Any, values: dict[str, Any], where: str) -> Any:
    try:
        return parser.parse_object({"c": values}).c
    except Exception as err:  # jsonargparse: ArgumentError / TypeError with a multi-line report
        message = summarize_parse_error(str(err)).removeprefix("c.")
        key, sep, rest = message.partition(": ")
        if sep and key.replace(".", "").replace("_", "").isalnum():  # "gamma: Expected..." names the key
            raise SchemaError(f"{where}.{key}: {rest}") from err
        raise SchemaError(f"{where}: {message}") from err


def method_kwargs(entry: dict[str, Any], where: str = "method", system: str | None = None) -> dict[str, Any]:
    """A method entry as :class:`~amad.lit.DistillationModule` keyword arguments (those of the ``system``
    class, :mod:`amad.compare.system`, when given), validated and with its ``attention`` instantiated
    (``attention: AMAD`` → ``AMAD()``). Parsed once per distinct entry.

    Raises:
        ValueError: an unknown option, a mistyped value, or a setting the comparison owns (``lr``...).
    """
    entry = dict(entry or {})
    parsed = _parsed_method(_entry_key(entry), where, system)
    return copy.deepcopy({k: parsed[k] for k in entry})  # the cached parse stays as read


def method_attention(entry: dict[str, Any], where: str = "method", system: str | None = None) -> Any:
    """The attention method (an :class:`~amad.losses.AttentionMethod`) that a method entry trains with —
    DistillationModule's (or the ``system``'s) default when the entry names none — or None for a method
    without attention loss."""
    return _parsed_method(_entry_key(dict(entry or {})), where, system)["attention"]


def _entry_key(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, default=str)


@functools.lru_cache(maxsize=256)
def _parsed_method(key: str, where: str, system: str | None = None) -> dict[str, Any]:
    entry = json.loads(key)
    owned = sorted(set(entry) & _owned(system))
    if owned:
        raise SchemaError(f"{where}: {owned} are set by the comparison (train:, student:, teacher:), not a method")
    with method_subclasses():  # `attention:` takes any AttentionMethod subclass (amad.config)
        parser = _method_parser(system)
        check_keys(entry, _parser_keys(parser), where)
        _check_attention(entry.get("attention"), f"{where}.attention")
        return dict(parser.instantiate(_namespace(parser, entry, where)).c)


def _check_attention(spec: Any, where: str) -> None:
    """An ``attention:`` value names a method of :mod:`amad.losses.methods` and only its options
    (jsonargparse's own report of these mistakes does not name the key)."""
    import importlib

    from amad.losses.methods import METHODS, AttentionMethod

    if spec is None or not isinstance(spec, (str, dict)):
        return  # null (no attention loss) or a type error that the parser reports
    name = spec if isinstance(spec, str) else spec.get("class_path")
    if not isinstance(name, str):
        return
    known = {c.__name__: c for c in METHODS.values()}
    cls = known.get(name)
    if cls is None and "." in name:
        module, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr, None)
        except ImportError:
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, AttentionMethod)):
        valid = [f"amad.losses.{n}" for n in known]
        raise SchemaError(f"{where}: unknown attention method {name!r}{close_key(name, valid)}")
    if isinstance(spec, dict):
        check_keys(spec, ("class_path", "init_args"), where)
        fields = [f.name for f in dataclasses.fields(cls)]
        check_keys(spec.get("init_args") or {}, fields, f"{where}.init_args")


def _owned(system: str | None) -> set[str]:
    """The keyword arguments a comparison sets itself, never a method entry."""
    if system is None:
        return _NOT_A_METHOD_OPTION
    from amad.compare.system import SYSTEM_OWNED

    return set(SYSTEM_OWNED)


def _method_parser(system: str | None = None) -> Any:
    return _class_parser(system or "amad.lit.DistillationModule", frozenset(_owned(system)))


def _namespace(parser: Any, entry: dict[str, Any], where: str) -> Any:
    from jsonargparse import Namespace

    return Namespace(c=_parse(parser, entry, where))


def comparison_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """A loaded comparison (:func:`load_compare_config`) as the YAML of ``--print_config``: every setting
    of the students and methods with its default filled in; ``data`` and ``teacher`` as written (their
    fingerprint hashes what the file says, so nothing is added to them). Loading the printed YAML gives
    the same comparison."""
    from amad.compare.schema import as_dict

    typed = validate_comparison({k: v for k, v in cfg.items() if k != "preset"})
    system = typed.system.class_path if typed.system is not None else None
    train = as_dict(typed.train)
    if system is None:  # a system's own defaults are its signature's (the students get only what is set)
        for key, default in _task_defaults().items():
            if train.get(key) is None:
                train[key] = default
    out = {
        "name": typed.name,
        "description": typed.description,
        **({"system": cfg["system"]} if system else {}),
        "data": cfg["data"],
        "teacher": cfg["teacher"],
        "student": as_dict(typed.student),
        "train": train,
        "methods": {name: method_settings(entry, f"methods.{name}", system) for name, entry in typed.methods.items()},
        "seeds": typed.seeds,
    }
    if typed.eval_subset is not None:
        out["eval_subset"] = typed.eval_subset
    return out


def print_settings(settings: dict[str, Any]) -> None:
    """``--print_config``: the settings as YAML on stdout, in their own order."""
    import yaml

    print(yaml.safe_dump(settings, sort_keys=False, allow_unicode=True, width=120), end="")


def _task_defaults() -> dict[str, Any]:
    """The students' optimisation defaults (:class:`~amad.lit.TaskModule`'s signature)."""
    import inspect

    from amad.lit import TaskModule

    params = inspect.signature(TaskModule.__init__).parameters
    return {k: params[k].default for k in OPTIMIZATION_KEYS}


def method_settings(entry: dict[str, Any], where: str = "method", system: str | None = None) -> dict[str, Any]:
    """A method entry with every DistillationModule default filled in, as YAML-able data
    (``--print_config``); reading it back gives the same method."""
    import yaml

    method_kwargs(entry, where, system)  # checked (and the messages as at load)
    with method_subclasses():
        parser = _method_parser(system)
        dumped = yaml.safe_load(parser.dump(_namespace(parser, dict(entry or {}), where), skip_none=False))
    return dumped["c"]


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


def ordered_methods(methods: dict[str, dict[str, Any]], system: str | None = None) -> list[str]:
    """Method names, those without an attention loss first, then by their attention method's place in
    the registry (:data:`amad.losses.METHODS`) with AMAD and its variants (``is_amad``) last; by name within."""
    from amad.losses.methods import METHODS

    classes = list(METHODS.values())
    order = [c for c in classes if not c.is_amad] + [c for c in classes if c.is_amad]

    def rank(name: str) -> tuple[int, str]:
        attention = method_attention(methods[name], f"methods.{name}", system)
        return (0 if attention is None else 1 + order.index(type(attention)), name)

    return sorted(methods, key=rank)


def check_teacher_model(cfg: dict[str, Any], where: str = "teacher.model") -> None:
    """``teacher.model`` names fields of the model the system builds from scratch (its config class's
    arguments): a transformers config keeps a misspelt field silently, as an unknown attribute.

    Raises:
        SchemaError: one line naming the key and the closest field (or why the model cannot be built).
    """
    from amad.compare.system import data_links, system_class, system_kwargs, system_path

    model = (cfg.get("teacher") or {}).get("model") or {}
    links = data_links(system_class(system_path(cfg)), make_datamodule(cfg["data"]))  # a constructor: no data read
    fixed = json.dumps(system_kwargs(cfg) | links, sort_keys=True, default=str)
    try:
        fields = _config_fields(system_path(cfg), json.dumps(model, sort_keys=True, default=str), fixed)
    except (ValueError, TypeError) as err:
        raise SchemaError(f"{where}: {str(err).splitlines()[0]}") from None
    check_keys(model, fields, where)


@functools.lru_cache(maxsize=32)
def _config_fields(class_path: str, model: str, fixed: str) -> frozenset[str]:
    """The arguments of the config class of the model that ``class_path`` builds from scratch from
    ``model`` (JSON): the class is known only once it is built (tiny, under a forked RNG)."""
    import inspect

    import torch

    from amad.compare.system import system_class

    cls = system_class(class_path)
    with torch.random.fork_rng():
        module = cls(teacher=None, student=json.loads(model), **json.loads(fixed))
    params = inspect.signature(type(module.student.model.config).__init__).parameters
    return frozenset(n for n, p in params.items() if n != "self" and p.kind != p.VAR_KEYWORD)
