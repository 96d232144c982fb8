"""The typed schema of the comparison and sweep YAMLs, checked when a file is read.

Each section of ``experiments/compare/*.yaml`` and ``experiments/sweeps/*.yaml`` is a dataclass below;
:func:`build` reads a mapping into one, refusing an unknown key (naming the closest valid one) or a value
of the wrong type, so a misspelt key fails at load with one line such as::

    experiments/compare/x.yaml: train.max_step: unknown key; did you mean 'max_steps'?

Sections whose keys belong to another class are checked against that class's signature instead: the
data's ``init_args`` (the DataModule's), a method entry (:class:`amad.lit.DistillationModule`'s, with its
``attention`` one of :mod:`amad.losses.methods`), a model's or student's flat overrides (the family's).

The loaders (:func:`amad.compare.config.load_compare_config`, :func:`amad.compare.sweep.load_sweep`)
still return the resolved YAML as written, so fingerprints hash what the file says; these types are
its checked, defaults-filled view (``--print_config``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal


class SchemaError(ValueError):
    """A config that does not fit its schema; the message is one line naming the key."""


def close_key(key: str, valid: typing.Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the valid key closest to ``key``, or the valid keys when none is close."""
    valid = sorted(valid)
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else f" (valid: {', '.join(valid)})"


def check_keys(given: typing.Iterable[str], valid: typing.Iterable[str], where: str) -> None:
    """Raise :class:`SchemaError` for the first key of ``given`` not in ``valid``."""
    valid = set(valid)
    for key in given:
        if key not in valid:
            raise SchemaError(f"{_join(where, key)}: unknown key{close_key(str(key), valid)}")


def family_override_keys(family: str, where: str) -> set[str]:
    """The flat model overrides of ``family`` (``image_size``, ``text_num_layers``...)."""
    from amad.models.build import FAMILIES
    from amad.models.configs import BLIP_OVERRIDES, VISUAL_OVERRIDES, VLT5_OVERRIDES

    if family not in FAMILIES:
        raise SchemaError(f"{where}: unknown model family {family!r}{close_key(str(family), FAMILIES)}")
    if family == "vlt5":
        return set(VLT5_OVERRIDES) | set(VISUAL_OVERRIDES) | {"t5_config"}
    return set(BLIP_OVERRIDES) | {"vision_config", "text_config"}


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


# --------------------------------------------------------------------------------------- sections
@dataclass(kw_only=True)
class DataSection:
    """``data:``: the task's DataModule.

    Args:
        class_path: import path of the DataModule (``amad.data.EasyVQADataModule``).
        init_args: its keyword arguments (checked against its signature).
    """

    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class DataOverride:
    """``teacher.data:``: overrides deep-merged into ``data:`` for the teacher only (e.g. ``fraction``)."""

    class_path: str | None = None
    init_args: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class ModelSection:
    """``teacher.model:``: :func:`amad.models.build_model` arguments; further keys are the family's flat
    overrides (``image_size``, ``text_num_layers``...), checked against the family.

    Args:
        family: ``blip-vqa``, ``blip-caption`` or ``vlt5``.
        preset: ``tiny``, ``small`` or ``base``.
        hf_config: a full HF config dict (replaces the preset).
        seed: seed of the initialisation.
    """

    family: str
    preset: Literal["tiny", "small", "base"] = "tiny"
    hf_config: dict[str, Any] | None = None
    seed: int | None = None

    @staticmethod
    def extra_keys(value: dict[str, Any], where: str) -> set[str]:
        return family_override_keys(value.get("family"), _join(where, "family")) if "family" in value else set()


@dataclass(kw_only=True)
class Optimization:
    """Settings of a :class:`~amad.lit.TaskModule` (None: the module's default).

    Args:
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_ratio: share of the steps spent warming up.
        schedule: ``linear``, ``cosine`` or ``constant`` decay.
        max_new_tokens: generation length at evaluation.
        lr_scale: parameter-name prefix -> learning-rate factor.
    """

    lr: float | None = None
    weight_decay: float | None = None
    warmup_ratio: float | None = None
    schedule: Literal["linear", "cosine", "constant"] | None = None
    max_new_tokens: int | None = None
    lr_scale: dict[str, float] | None = None


@dataclass(kw_only=True)
class AttributeStage:
    """``teacher.pretrain.attributes:``: the image encoder reads generated scenes' attributes.

    Args:
        max_steps: updates.
        batch_size: scenes per update (None: 64).
        scenes: size of the scene pool (None: 20,000).
        seed: seed of the scenes (None: 0).
        shared: train the stage once per image tower and reuse it in every teacher of the family group
            (amad.compare.tower_stage).
    """

    max_steps: int
    shared: bool | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_ratio: float | None = None
    schedule: Literal["linear", "cosine", "constant"] | None = None
    batch_size: int | None = None
    scenes: int | None = None
    seed: int | None = None


@dataclass(kw_only=True)
class TaskStage(Optimization):
    """``teacher.pretrain.task:``: the task itself on generated scenes.

    Args:
        max_steps: updates.
        scenes: size of the scene pool (None: one new scene per example).
        seed: seed of the scenes (None: 1).
        freeze: parameter-name prefixes left untrained.
    """

    max_steps: int
    scenes: int | None = None
    seed: int | None = None
    freeze: list[str] | None = None


@dataclass(kw_only=True)
class PretrainSection:
    """``teacher.pretrain:``: optional stages before fine-tuning (amad.compare.teacher.train_teacher)."""

    attributes: AttributeStage | None = None
    task: TaskStage | None = None


@dataclass(kw_only=True)
class TeacherTarget:
    """``teacher.target:``: what ``amad compare --teacher-only`` requires of the teacher's test metrics.

    Args:
        metric: the headline metric (``vqa_acc``, ``attr_acc``, ``ref_attr_acc``...).
        min: its lowest acceptable value.
        kinds_min: the lowest acceptable value of every breakdown ``<metric>_<kind>`` (VQA's question kinds).
    """

    metric: str
    min: float = 0.0
    kinds_min: float | None = None


@dataclass(kw_only=True)
class TeacherSection(Optimization):
    """``teacher:``: where the teacher is, or its recipe. Unset keys stay unset (printed as null): the
    recipe's fingerprint hashes what the file writes.

    Args:
        model: the architecture.
        path: a shipped or user-given teacher (used while its recorded fingerprint matches the recipe).
        data: overrides of ``data:`` for the teacher.
        max_steps: fine-tuning updates (needed to train one: without ``path``).
        seed: seed of every stage (None: 0).
        precision: Lightning precision (None: ``32-true``).
        pretrain: stages before fine-tuning.
        freeze: parameter-name prefixes left untrained during fine-tuning.
        target: the bar ``--teacher-only`` holds the teacher to (not part of the recipe's fingerprint).
    """

    model: ModelSection
    path: str | None = None
    data: DataOverride | None = None
    max_steps: int | None = None
    seed: int | None = None
    precision: str | None = None
    pretrain: PretrainSection | None = None
    freeze: list[str] | None = None
    target: TeacherTarget | None = None


@dataclass(kw_only=True)
class StudentSection:
    """``student:``: :func:`amad.models.derive_student` arguments (further keys: the family's flat overrides).

    Args:
        num_heads: heads of every tower (None: the teacher's).
        num_layers: layers of every tower (None: the teacher's).
        hidden_size: width (None: the teacher's).
        intermediate_size: MLP width (None: the teacher's ratio).
        init: ``teacher`` (copy every weight of matching shape) or ``random``.
        layer_map: which teacher layers the student's are copied from.
        seed: seed of the random initialisation.
    """

    num_heads: int | None = None
    num_layers: int | None = None
    hidden_size: int | None = None
    intermediate_size: int | None = None
    init: Literal["teacher", "random"] = "teacher"
    layer_map: str | list[int] = "uniform"
    seed: int | None = None

    @staticmethod
    def extra_keys(value: dict[str, Any], where: str) -> None:
        return None  # the teacher family's flat overrides: checked with the family (check_student_overrides)


@dataclass(kw_only=True)
class TrainSection(Optimization):
    """``train:``: every student's budget (the same for every method).

    Args:
        max_steps: updates per student.
        precision: Lightning precision.
        teacher_cache: replay the teacher's outputs, computed once, to every run that can use them.
        teacher_cache_memory_mb: beyond this size the replayed outputs live in memory-mapped files under
            the cache folder (None: a quarter of the machine's RAM).
    """

    max_steps: int
    precision: str = "32-true"
    teacher_cache: bool = True
    teacher_cache_memory_mb: float | None = None


@dataclass(kw_only=True)
class ComparisonConfig:
    """A comparison YAML after ``base:`` and its preset are resolved.

    Args:
        name: names the teacher's cache and the results.
        description: printed in results.md (say "synthetic" where it is).
        data: the task's data.
        teacher: the teacher or its recipe.
        student: every student's architecture.
        train: every student's budget.
        methods: name -> :class:`~amad.lit.DistillationModule` keyword arguments.
        run_methods: the methods a run trains (None: all).
        seeds: seeds per method.
        eval_subset: quick checks: evaluate the students on this many examples.
        presets: name -> overrides of this file (``--preset``).
        system: an any-model comparison's Lightning system (then the file is a
            :class:`SystemComparisonConfig`); None: BLIP / VL-T5 through DistillationModule.
    """

    name: str
    description: str = ""
    data: DataSection
    teacher: TeacherSection
    student: StudentSection = field(default_factory=StudentSection)
    train: TrainSection
    methods: dict[str, dict[str, Any]]
    run_methods: list[str] | None = None
    seeds: int = 3
    eval_subset: int | None = None
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    system: SystemSection | None = None


@dataclass(kw_only=True)
class SystemSection:
    """``system:``: the Lightning system of an any-model comparison (:mod:`amad.compare.system`).

    Args:
        class_path: import path of a LightningModule keeping
            :class:`~amad.compare.system.DistilledSystem`'s contract.
        init_args: its fixed settings, given to every system built (checked against its signature).
        metric: the headline metric, logged as ``test/<metric>`` (None: the first one logged).
    """

    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)
    metric: str | None = None


@dataclass(kw_only=True)
class SystemOptimization:
    """The optimisation settings a system takes (:data:`amad.compare.system.SYSTEM_OPTIMIZATION_KEYS`).

    Args:
        lr: AdamW learning rate (the system's schedule).
        weight_decay: AdamW weight decay.
    """

    lr: float | None = None
    weight_decay: float | None = None


@dataclass(kw_only=True)
class SystemTeacherSection(SystemOptimization):
    """``teacher:`` of a system comparison: a shipped checkpoint, or the recipe that trains one with the
    system's ``teacher=None`` mode.

    Args:
        model: the fields of the model the system builds from scratch (``ViTConfig``'s for the
            classifier), checked against its config class.
        path: a shipped or user-given transformers checkpoint (used while its recorded fingerprint
            matches the recipe).
        data: overrides of ``data:`` for the teacher.
        max_steps: training updates (needed to train one: without ``path``).
        seed: seed of the recipe (None: 0).
        precision: Lightning precision (None: ``32-true``).
        target: the bar ``--teacher-only`` holds the teacher to (not part of the recipe's fingerprint).
    """

    model: dict[str, Any]
    path: str | None = None
    data: DataOverride | None = None
    max_steps: int | None = None
    seed: int | None = None
    precision: str | None = None
    target: TeacherTarget | None = None


@dataclass(kw_only=True)
class SystemStudentSection:
    """``student:`` of a system comparison: :func:`amad.models.derive_student` arguments for a
    :class:`~amad.models.GenericAdapter` teacher (see :class:`StudentSection`).

    Args:
        num_key_value_heads: key/value heads of a grouped-query student (None: the teacher's ratio).
    """

    num_heads: int | None = None
    num_layers: int | None = None
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_key_value_heads: int | None = None
    init: Literal["teacher", "random"] = "teacher"
    layer_map: str | list[int] = "uniform"
    seed: int | None = None


@dataclass(kw_only=True)
class SystemTrainSection(SystemOptimization):
    """``train:`` of a system comparison: every student's budget.

    Args:
        max_steps: updates per student.
        precision: Lightning precision.
        teacher_cache: replay the teacher's outputs, computed once, to every run that can use them (the
            DataModule's batches must carry ``ids``, as :class:`~amad.data.generated.GeneratedSplitsDataModule`'s do).
        teacher_cache_memory_mb: beyond this size the replayed outputs live in memory-mapped files under
            the cache folder (None: a quarter of the machine's RAM).
    """

    max_steps: int
    precision: str = "32-true"
    teacher_cache: bool = True
    teacher_cache_memory_mb: float | None = None


@dataclass(kw_only=True)
class SystemComparisonConfig(ComparisonConfig):
    """A comparison of an any-model system (``system:`` set): its teacher, student and budget sections
    are the system's (:mod:`amad.compare.system`); method entries are the system's keyword arguments."""

    system: SystemSection  # type: ignore[assignment]  # required here
    teacher: SystemTeacherSection  # type: ignore[assignment]
    student: SystemStudentSection = field(default_factory=SystemStudentSection)  # type: ignore[assignment]
    train: SystemTrainSection  # type: ignore[assignment]


#: student settings a sweep's grid may vary
GRID_KEYS = ("num_heads", "init", "num_layers", "hidden_size", "intermediate_size")


@dataclass(kw_only=True)
class SweepConfig:
    """A sweep YAML: one comparison over a grid of student settings.

    Args:
        comparison: the comparison YAML (data, teacher, budget); relative to the working directory or
            to the sweep file.
        name: names the results.
        seeds: seeds per method and cell (None: the comparison's).
        student: student settings shared by every cell (over the comparison's).
        train: budget overrides (over the comparison's).
        grid: student setting -> values; a cell per combination.
        methods: the methods of every cell (:class:`~amad.lit.DistillationModule` keyword arguments).
        eval_subset: quick checks: evaluate the students on this many examples.
    """

    comparison: str
    name: str = "sweep"
    seeds: int | None = None
    student: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]]
    methods: dict[str, dict[str, Any]]
    eval_subset: int | None = None


# --------------------------------------------------------------------------------------- reading
def build(cls: type, value: Any, where: str, extra: typing.Iterable[str] = ()) -> Any:
    """Read the mapping ``value`` into dataclass ``cls``, checking every key and type.

    Args:
        cls: the section's dataclass.
        value: the YAML mapping (None reads as empty).
        where: the section's path in the file, for messages (``teacher.pretrain``).
        extra: further keys allowed (kept in the instance's ``extra`` attribute, unchecked here).

    Raises:
        SchemaError: an unknown or missing key, or a value of the wrong type.
    """
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise SchemaError(f"{where or 'the file'}: expected a mapping, got {type(value).__name__} {value!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    extra = set(extra)
    if hasattr(cls, "extra_keys"):
        open_keys = cls.extra_keys(value, where)
        extra |= set(value) - set(fields) if open_keys is None else open_keys
    check_keys(value, set(fields) | extra, where)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = check_value(hints[name], value[name], _join(where, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SchemaError(f"{_join(where, name)}: required key missing")
    obj = cls(**kwargs)
    obj.extra = {k: value[k] for k in value if k in extra and k not in fields}
    return obj


def check_value(hint: Any, value: Any, where: str) -> Any:
    """``value`` read as type ``hint`` (nested dataclasses built); SchemaError naming ``where`` if not."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return check_value(arg, value, where)
            except SchemaError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise SchemaError(f"{where}: expected {_name(hint)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise SchemaError(f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise SchemaError(f"{where}: expected a list, got {value!r}")
        return [check_value(args[0], v, f"{where}[{k}]") for k, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: expected a mapping, got {value!r}")
        return {k: check_value(args[1], v, _join(where, k)) for k, v in value.items()} if args else value
    if hint is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        # YAML reads 5e-4 (no dot) as a string; the loaders convert it (amad.compare.config.optimization_kwargs)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok and isinstance(value, str):
            try:
                float(value)
                ok = True
            except ValueError:
                pass
        if not ok:
            raise SchemaError(f"{where}: expected a number, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise SchemaError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"schema: no check for type {hint!r} at {where}")  # a bug in the schema, not the config


def _name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("NoneType", "null")


def as_dict(obj: Any) -> Any:
    """A section as plain YAML-able data, with its ``extra`` keys (overrides) merged back in."""
    if dataclasses.is_dataclass(obj):
        out = {f.name: as_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return out | {k: as_dict(v) for k, v in getattr(obj, "extra", {}).items()}
    if isinstance(obj, dict):
        return {k: as_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_dict(v) for v in obj]
    return obj
