"""Comparisons of any-model systems: the contract a Lightning system keeps to be compared, and its uses.

A comparison YAML with a ``system:`` section distils students through that system instead of
:class:`amad.lit.DistillationModule` (BLIP / VL-T5)::

    system:
      class_path: amad.lit.classify.ClassificationDistillationModule
      init_args: {num_classes: 24}   # passed to every system built (teacher recipe and students)
      metric: acc                    # the headline metric (higher is better); default: the first logged

The class keeps the contract of :class:`DistilledSystem` (written once here; ``amad.lit.classify`` and
``amad.lit.language`` keep it), and that is all a comparison asks of it:

* **building**: ``cls(teacher=<checkpoint dir>, student=<derive_student kwargs>, <method entry>, lr=...,
  weight_decay=..., **init_args)`` for a student; ``cls(teacher=None, student=<teacher.model>, ...)``
  trains the teacher on the data alone (the recipe), ``.student.model`` being the transformers model saved.
* **evaluating**: ONE way, the Lightning one: ``trainer.test`` / ``trainer.validate`` on the system, and
  every metric it logs as ``<split>/<name>`` but the loss (:func:`evaluate_system`). The teacher is
  evaluated by the same system with the teacher in the student's place (:func:`evaluate_teacher`).

The teacher outputs are not cached and replayed for these systems (every distilling run runs the live
teacher), and there are no head-alignment snapshots unless the system has ``head_alignment(batch)``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import time
from typing import Any, Protocol, runtime_checkable

import lightning as L

#: ``train:`` / ``teacher:`` keys a system's constructor takes (the comparison sets them, no method entry)
SYSTEM_OPTIMIZATION_KEYS = ("lr", "weight_decay")
#: constructor arguments the comparison owns: never in a method entry or ``system.init_args``
SYSTEM_OWNED = ("teacher", "student", "export_dir", "task", "vocab_size", *SYSTEM_OPTIMIZATION_KEYS)
#: constructor arguments every system takes (checked when the class is named)
CONTRACT_ARGS = (
    "teacher",
    "student",
    "attention",
    "alpha",
    "beta",
    "kd_temperature",
    "gamma",
    "sites",
    "layer_map",
    "attention_source",
    "lr",
    "weight_decay",
    "export_dir",
)


@runtime_checkable
class DistilledSystem(Protocol):
    """What ``amad compare`` needs of a system (a ``LightningModule``) to compare it.

    Constructor (keyword arguments, :data:`CONTRACT_ARGS`): ``teacher`` (a transformers checkpoint
    directory, or None: train ``student`` on the data alone, the teacher recipe and no distillation),
    ``student`` (with a teacher, :func:`~amad.models.derive_student` keyword arguments; without, the
    fields of the model built from scratch), ``attention`` (an :class:`~amad.losses.AttentionMethod` or
    None), ``alpha``, ``beta``, ``kd_temperature``, ``gamma``, ``sites``, ``layer_map``,
    ``attention_source`` (as :class:`~amad.distill.DistillationTask`), ``lr``, ``weight_decay``,
    ``export_dir`` (save the trained student there at the end of ``fit``), ``task`` / ``vocab_size``
    where it takes them (from the DataModule, :func:`data_links`), and any fixed settings of its own
    (``num_classes``...) that ``system.init_args`` gives.

    Attributes:
        student: the trained model, a :class:`~amad.models.GenericAdapter` (``.model`` the transformers model).
        distillation: the :class:`~amad.distill.DistillationTask` (``.teacher.model`` the teacher's
            adapter), or None without a teacher.

    Evaluation: ``test_step`` / ``validation_step`` score ``self.student`` and log ``test/<metric>`` /
    ``val/<metric>`` (a ``*loss*`` metric is not reported); every metric is higher-is-better or named
    so (the report's separation assumes the headline one is).
    """

    student: Any
    distillation: Any

    def test_step(self, batch: Any, batch_idx: int) -> Any: ...

    def validation_step(self, batch: Any, batch_idx: int) -> Any: ...


def system_path(cfg: dict[str, Any]) -> str | None:
    """The class path of a comparison's system, or None for a BLIP / VL-T5 comparison."""
    return (cfg.get("system") or {}).get("class_path")


@functools.cache
def system_class(class_path: str) -> type:
    """The system class, checked to keep the constructor contract.

    Raises:
        ValueError: one line: it cannot be imported, is not a LightningModule, or lacks contract arguments.
    """
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"system.class_path {class_path!r} cannot be imported: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, L.LightningModule)):
        raise ValueError(f"system.class_path {class_path!r} is not a LightningModule")
    params = inspect.signature(cls.__init__).parameters
    missing = [a for a in CONTRACT_ARGS if a not in params]
    if missing:
        raise ValueError(
            f"system.class_path {class_path!r} lacks constructor argument(s) {missing} of the "
            "amad.compare.system.DistilledSystem contract"
        )
    return cls


def system_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    """``system.init_args``: the fixed settings given to every system built."""
    return dict((cfg.get("system") or {}).get("init_args") or {})


def system_optimization(section: dict[str, Any]) -> dict[str, float]:
    """``lr`` / ``weight_decay`` of a ``train:`` or ``teacher:`` section (YAML reads 5e-4 as a string)."""
    return {k: float(section[k]) for k in SYSTEM_OPTIMIZATION_KEYS if section.get(k) is not None}


def data_links(cls: type, dm: Any) -> dict[str, Any]:
    """What the DataModule gives the system, as ``amad fit`` links it: ``task`` and ``vocab_size`` where
    the system takes them and the DataModule has them (a language model's vocabulary)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: getattr(dm, k) for k in ("task", "vocab_size") if k in params and dm is not None and hasattr(dm, k)}


def build_student_system(
    cfg: dict[str, Any], method_kwargs: dict[str, Any], seed: int, teacher_path: Any, dm: Any = None
) -> Any:
    """A run's student system, seeded: its initial weights depend on the seed only."""
    L.seed_everything(seed, workers=True, verbose=False)
    cls = system_class(system_path(cfg))
    return cls(
        teacher=str(teacher_path),
        **data_links(cls, dm),
        student=dict(cfg["student"]),
        **system_optimization(cfg["train"]),
        **(system_kwargs(cfg) | method_kwargs),  # a method entry may override a fixed setting
    )


def evaluate_system(module: Any, dm: Any, split: str) -> dict[str, float]:
    """Every ``<split>/<name>`` metric the system logs on ``split`` (``val`` or ``test``) of ``dm``, but losses."""
    from amad.compare.teacher_files import fault_callbacks

    trainer = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        devices=1,
        callbacks=fault_callbacks(),
    )
    run = trainer.test if split == "test" else trainer.validate
    res = run(module, datamodule=dm, verbose=False)[0]
    return {k.split("/", 1)[1]: float(v) for k, v in res.items() if k.startswith(f"{split}/") and "loss" not in k}


def teacher_system(cfg: dict[str, Any], teacher_path: Any, dm: Any = None) -> Any:
    """The system with the teacher in the student's place: evaluating it evaluates the teacher."""
    cls = system_class(system_path(cfg))
    module = cls(
        teacher=str(teacher_path),
        student={},
        attention=None,
        beta=0.0,
        gamma=0.0,
        **data_links(cls, dm),
        **system_kwargs(cfg),
    )
    module.student = module.distillation.teacher.model
    return module


def evaluate_teacher(cfg: dict[str, Any], teacher_path: Any, dm: Any, split: str) -> dict[str, float]:
    """The teacher's metrics on ``split``, scored by the comparison's system as its students are."""
    return evaluate_system(teacher_system(cfg, teacher_path, dm), dm, split)


def train_system_teacher(cfg: dict[str, Any], dm: Any, log=print) -> tuple[Any, list[dict[str, Any]]]:
    """The teacher recipe of a system comparison: ``cls(teacher=None, student=teacher.model)`` trained
    ``teacher.max_steps`` on the teacher's data, seeded ``teacher.seed``; returns (the system, one stage record)."""
    from amad.callbacks.progress import ProgressLine
    from amad.compare.teacher_files import quiet_trainer

    t = cfg["teacher"]
    L.seed_everything(int(t.get("seed") or 0), workers=True, verbose=False)
    cls = system_class(system_path(cfg))
    module = cls(
        teacher=None, student=dict(t["model"]), **data_links(cls, dm), **system_optimization(t), **system_kwargs(cfg)
    )
    steps = int(t["max_steps"])
    progress = ProgressLine("teacher:", every_n_steps=max(steps // 10, 1), write=log)
    trainer = quiet_trainer(steps, t.get("precision") or "32-true", [progress])
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    elapsed = time.perf_counter() - start
    val = evaluate_system(module, dm, "val")
    log(f"teacher: {steps} steps in {elapsed:.0f}s; val {val}")
    return module, [{"stage": "fit", "steps": steps, "train_time_s": round(elapsed, 1), "val": val}]


def save_hf_model(module: Any, path: Any) -> None:
    """Save a system's trained model as a transformers checkpoint (what ``teacher=<dir>`` loads)."""
    module.student.model.save_pretrained(str(path))


def teacher_facts(module: Any) -> dict[str, Any]:
    """Parameter count, heads and layers per site of the teacher's adapter (results.json)."""
    teacher = module.student
    return {
        "params": sum(p.numel() for p in teacher.parameters()),
        "heads": {s: teacher.num_heads(s) for s in teacher.sites},
        "layers": {s: teacher.num_layers(s) for s in teacher.sites},
    }
