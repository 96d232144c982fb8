"""The attention-distillation methods: one typed option set per method, and the one registry of methods.

Each method is a frozen dataclass whose fields are its options, with types and defaults. They are the
config schema: LightningCLI / jsonargparse validates a YAML's ``attention:`` entry against them when it
reads the file (an unknown or mistyped option fails at parse time), and ``--print_config`` shows every
option with its default::

    model:
      init_args:
        attention:
          class_path: AMAD            # or amad.losses.AMAD
          init_args: {variant: kl, weight_temperature: 1.0}

From Python: ``AMAD(variant="l2").build(teacher_heads=12, student_heads=6)`` returns the criterion
(:mod:`amad.losses.criteria`), an ``nn.Module`` called as ``criterion(teacher, student, query_mask=...,
key_mask=...) -> (loss, weights)``.

Option names are distinct where meanings differ: ``weight_temperature`` (AMAD's τ of Eq. 3, the
softmax over cosines), ``softening_temperature`` (SHD's softened KL), ``aggregation_temperature``
(AttnDistill's head aggregation) and, elsewhere, the output distillation's ``kd_temperature``;
``row_loss`` (the per-row loss of one-to-one / head-mean) vs ``variant`` (which AMAD equation);
``merge_granularity`` (SHD's merge coefficients) vs the objective's weight ``alpha``.

:data:`METHODS` (name -> class) is the single list of methods: the Lightning system, ``amad compare``,
``experiments/make_configs.py`` and the docs derive from it (a test checks them against it).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from amad.losses import criteria as C


@dataclass(frozen=True, kw_only=True)
class AttentionMethod:
    """Base of the methods: the options every map-based method shares.

    Args:
        teacher_grid: the teacher's patch grid (rows, cols); with ``student_grid``, teacher maps of a
            different grid are resized to the student's first (:func:`amad.losses.resize_teacher_attention`).
        student_grid: the student's patch grid (rows, cols).
        num_prefix_tokens: tokens before the patches ([CLS]) that the resize leaves alone.
    """

    #: the method's name in configs, results tables and run names
    name: ClassVar[str] = ""
    #: the criterion class that computes the loss (amad.losses.criteria)
    criterion: ClassVar[type[C.AttentionCriterion]]
    #: the paper's method or one of its variants: ``amad compare`` lists it after the baselines and
    #: highlights it (ask this, never the method's name in a config)
    is_amad: ClassVar[bool] = False
    #: its criterion weighs every student head per teacher head with weights a_ij that follow the maps
    #: (Eq. 3, rows sum to 1): ``amad compare`` records their spread and the student heads' diversity
    has_head_weights: ClassVar[bool] = False

    teacher_grid: tuple[int, int] | None = None
    student_grid: tuple[int, int] | None = None
    num_prefix_tokens: int = 1

    def __post_init__(self) -> None:
        # Python does not check a Literal at construction (the config parser does): check it here too
        for name, hint in typing.get_type_hints(type(self)).items():
            if typing.get_origin(hint) is Literal and getattr(self, name) not in typing.get_args(hint):
                choices = ", ".join(map(repr, typing.get_args(hint)))
                raise ValueError(f"{self.name}: {name} must be one of {choices}, got {getattr(self, name)!r}")
        if (self.teacher_grid is None) != (self.student_grid is None):
            raise ValueError("give both teacher_grid and student_grid, or neither")
        if self.teacher_grid is not None and self.input_kind != "maps":
            raise ValueError(f"teacher_grid/student_grid only apply to attention maps, not to {self.name!r}")

    @property
    def input_kind(self) -> str:
        """``"maps"`` (post-softmax maps) or ``"qkv"`` (query/key/value projections)."""
        return self.criterion.input_kind

    def options(self) -> dict[str, Any]:
        """The method's options as a plain dict (JSON-able; used in fingerprints and run records)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def build(self, teacher_heads: int, student_heads: int, num_layers: int = 1) -> C.AttentionCriterion:
        """The criterion for one site: ``teacher_heads`` → ``student_heads``, ``num_layers`` parameter sets."""
        return self.criterion(teacher_heads, student_heads, num_layers, self)


def _positive(method: AttentionMethod, *names: str) -> None:
    for name in names:
        if not getattr(method, name) > 0:
            raise ValueError(f"{method.name}: {name} must be > 0, got {getattr(method, name)}")


@dataclass(frozen=True, kw_only=True)
class AMAD(AttentionMethod):
    """AMAD (docs/method.md Eq. 2-12): every teacher head matched to a cosine-weighted mix of all student heads.

    Args:
        variant: ``kl`` (Eq. 9, the paper's best; default), ``l2`` (Eq. 4-5) or ``token`` (Eq. 12).
        weight_temperature: τ of the weights ``a_ij = softmax_j(w_ij / τ)`` (Eq. 3; ours, the paper has
            none: τ = 1). Cosines of probability maps lie in [0, 1], so τ = 1 keeps ``a`` near uniform.
        detach_weights: stop the gradient through the weights ``a`` (it flows through the mix either way).
        eps: floor inside the log of the mixed map.
    """

    name: ClassVar[str] = "amad"
    criterion: ClassVar[type[C.AttentionCriterion]] = C.AMADCriterion
    is_amad: ClassVar[bool] = True
    has_head_weights: ClassVar[bool] = True

    variant: Literal["kl", "l2", "token"] = "kl"
    weight_temperature: float = 1.0
    detach_weights: bool = False
    eps: float = 1e-8

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self, "weight_temperature", "eps")


@dataclass(frozen=True, kw_only=True)
class AMADProjection(AttentionMethod):
    """AMAD "proj" (Eq. 10-11): a learned affine map + ReLU of the student maps, then KL as Eq. 9.

    Args:
        map_size: (Q, K) of the site's maps, to size the (QK)² projection up front; None sizes it on
            the first forward (run one batch before building the optimizer). Only practical for short maps.
        weight_temperature: τ of Eq. 3 (as :class:`AMAD`).
        detach_weights: stop the gradient through the weights.
        normalize_rows: renormalise each projected row to sum 1 (ours; False is the paper-literal map).
        eps: floor inside the log and of the row sums.
    """

    name: ClassVar[str] = "amad_proj"
    criterion: ClassVar[type[C.AttentionCriterion]] = C.AMADProjectionCriterion
    is_amad: ClassVar[bool] = True
    has_head_weights: ClassVar[bool] = True

    map_size: tuple[int, int] | None = None
    weight_temperature: float = 1.0
    detach_weights: bool = False
    normalize_rows: bool = True
    eps: float = 1e-8

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self, "weight_temperature", "eps")


@dataclass(frozen=True, kw_only=True)
class OneToOne(AttentionMethod):
    """One-to-one attention KD (TinyBERT / MiniLM): teacher head i ↔ student head i; extra teacher heads dropped.

    Args:
        row_loss: ``kl`` (row KL, default) or ``mse`` (row squared error).
        eps: floor inside the log of the student's rows.
    """

    name: ClassVar[str] = "one_to_one"
    criterion: ClassVar[type[C.AttentionCriterion]] = C.OneToOneCriterion

    row_loss: Literal["kl", "mse"] = "kl"
    eps: float = 1e-8


@dataclass(frozen=True, kw_only=True)
class HeadMean(AttentionMethod):
    """Head-mean KD (TextBrewer ``attention_*_mean``): average the heads of each map, then compare.

    Args:
        row_loss: ``kl`` (default) or ``mse``.
        eps: floor inside the log.
    """

    name: ClassVar[str] = "head_mean"
    criterion: ClassVar[type[C.AttentionCriterion]] = C.HeadMeanCriterion

    row_loss: Literal["kl", "mse"] = "kl"
    eps: float = 1e-8


@dataclass(frozen=True, kw_only=True)
class MiniLMRelation(AttentionMethod):
    """MiniLMv2 relation KD: Q-Q, K-K, V-V self-attention relations over a common number of relation heads.

    Args:
        num_relation_heads: relation heads R (must divide both hidden sizes); None = the teacher's heads.
    """

    name: ClassVar[str] = "minilm_relation"
    criterion: ClassVar[type[C.AttentionCriterion]] = C.MiniLMRelationCriterion

    num_relation_heads: int | None = None


@dataclass(frozen=True, kw_only=True)
class SHD(AttentionMethod):
    """Squeezing-Heads Distillation: teacher heads merged pairwise down to the student's count.

    Args:
        softening_temperature: τ of the softened KL, ``softmax(log max(A, eps) / τ)``.
        merge_granularity: one merge coefficient per map (``map``, default) or per query row (``row``).
        eps: floor inside the log.
    """

    name: ClassVar[str] = "shd"
    criterion: ClassVar[type[C.AttentionCriterion]] = C.SHDCriterion

    softening_temperature: float = 1.0
    merge_granularity: Literal["map", "row"] = "map"
    eps: float = 1e-8

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self, "softening_temperature", "eps")


@dataclass(frozen=True, kw_only=True)
class A2D(AttentionMethod):
    """Align-to-Distill: a learned 1×1 convolution maps the student's heads onto the teacher's.

    Args:
        teacher_as_logits: put the teacher map through the row softmax too (the public code's choice).
    """

    name: ClassVar[str] = "a2d"
    criterion: ClassVar[type[C.AttentionCriterion]] = C.A2DCriterion

    teacher_as_logits: bool = True


@dataclass(frozen=True, kw_only=True)
class AttnDistill(AttentionMethod):
    """AttnDistill: KL between head-aggregated, temperature-softened maps.

    Args:
        aggregation_temperature: T of ``softmax(Σ_h log A_h / T)`` (the code's ``attn_T``, 20).
        query_index: one query row to distil (0 = [CLS], the paper's), or None for every valid row.
        prob_clamp: (lo, hi) clamp of the aggregated distributions before L1 renormalisation; None skips it.
        eps: floor inside the log of the per-head maps.
    """

    name: ClassVar[str] = "attn_distill"
    criterion: ClassVar[type[C.AttentionCriterion]] = C.AttnDistillCriterion

    aggregation_temperature: float = 20.0
    query_index: int | None = None
    prob_clamp: tuple[float, float] | None = (1e-5, 0.996)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self, "aggregation_temperature", "eps")


#: name -> method class: the one list of attention-distillation methods.
METHODS: dict[str, type[AttentionMethod]] = {
    cls.name: cls for cls in (AMAD, OneToOne, HeadMean, MiniLMRelation, SHD, A2D, AttnDistill, AMADProjection)
}
#: Names accepted by :func:`attention_method` and :func:`build_attention_criterion`.
ATTENTION_METHODS: tuple[str, ...] = tuple(METHODS)


def checkpoint_safe_globals() -> torch.serialization.safe_globals:
    """A context in which ``torch.load(..., weights_only=True)`` accepts the method classes.

    A :class:`~amad.lit.DistillationModule` checkpoint's hyperparameters hold the method object, and
    Lightning resumes (``trainer.fit(..., ckpt_path=...)``, ``amad validate --ckpt_path``) with
    ``weights_only=True``, which unpickles only allow-listed classes. The methods are plain frozen
    dataclasses, so allowing them is safe; it is done for the load only, never at import (torch's
    list is process-wide). The ``amad`` command enters this context around every Lightning run; a
    library user resuming a checkpoint enters it around ``trainer.fit``::

        with checkpoint_safe_globals():
            trainer.fit(module, datamodule=dm, ckpt_path="last.ckpt")
    """
    return torch.serialization.safe_globals(list(METHODS.values()))


def method_class(name: str) -> type[AttentionMethod]:
    """The class of method ``name``; ValueError listing the methods otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown attention method {name!r}; expected one of {list(METHODS)}") from None


def attention_method(name: str, **options: Any) -> AttentionMethod:
    """Method ``name`` with ``options``; ValueError naming the unknown options and the valid ones."""
    cls = method_class(name)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for attention method {name!r}; valid: {', '.join(valid)}")
    return cls(**options)


def build_attention_criterion(
    method: str, *, teacher_heads: int, student_heads: int, num_layers: int = 1, **options: Any
) -> C.AttentionCriterion:
    """Build the criterion of method ``method`` (see :func:`attention_method` for ``options``).

    Raises:
        ValueError: unknown method, unknown option, or an invalid option value.
    """
    return attention_method(method, **options).build(teacher_heads, student_heads, num_layers)


def criterion_input_kind(method: str) -> str:
    """``"maps"`` or ``"qkv"``: what method ``method`` consumes (without building anything)."""
    return method_class(method).criterion.input_kind
