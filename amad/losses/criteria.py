"""One interface for every attention-distillation method, for the Lightning system.

>>> crit = build_attention_criterion("amad", teacher_heads=12, student_heads=8, variant="kl")
>>> loss, weights = crit(teacher_maps, student_maps, query_mask=mask)   # doctest: +SKIP

Every criterion is an ``nn.Module`` with a class attribute ``input_kind``:

* ``"maps"``: ``forward(teacher (B, Ht, Q, K), student (B, Hs, Q, K), *, query_mask=None,
  key_mask=None, layer=0)``;
* ``"qkv"``: ``forward((q, k, v) teacher each (B, L, d_t), (q, k, v) student each (B, L, d_s), ...)``.

It returns ``(scalar loss, weights)``; ``weights`` is a detached (B, Ht, Hs) teacher-to-student head
assignment for the alignment heatmaps, or ``None`` where the method has none. ``layer`` (0 <= layer <
``num_layers``) picks the parameter set of the methods with parameters; build one criterion per site
with ``num_layers`` = the number of distilled layer pairs of that site. The parameter-free methods
ignore ``layer``.

Methods with parameters (``amad_proj``, ``a2d``) are trained with the student (put the criterion's
parameters in the optimizer) and are not part of the exported student. ``a2d`` is sized from the
arguments (``teacher_heads``, ``student_heads``): Ht*Hs + Ht parameters per layer. ``amad_proj`` is
sized from ``map_size=(Q, K)`` when given ((QK)^2 + QK parameters per layer), else lazily on its first
forward per layer: then run one batch through it before building the optimizer (as for any
``torch.nn.Lazy*`` module; an optimizer cannot hold uninitialised parameters). Each of the
``num_layers`` parameter sets is used only when ``forward(..., layer=l)`` is called with its index: a
caller that builds one criterion per layer pair should pass ``num_layers=1`` (unused parameters are
wasted and break DDP without ``find_unused_parameters``).

Every ``"maps"`` method also takes ``teacher_grid``, ``student_grid`` (patch grids) and
``num_prefix_tokens``: when both grids are given and differ, the teacher's maps are first resized to
the student's grid with :func:`amad.losses.resize_teacher_attention`.
"""

from __future__ import annotations

import inspect
from typing import ClassVar

import torch
from torch import Tensor, nn

from amad.losses._common import check_choice
from amad.losses.a2d import A2DLoss
from amad.losses.attention import AMAD_VARIANTS, ROW_LOSS_KINDS, amad_loss, head_mean_loss, one_to_one_loss
from amad.losses.attn_distill import attn_distill_loss
from amad.losses.projection import AMADProjectionLoss
from amad.losses.relation import minilm_relation_loss
from amad.losses.resize import resize_teacher_attention
from amad.losses.shd import ALPHA_GRANULARITY, shd_groups, shd_loss


class AttentionCriterion(nn.Module):
    """Base class: checks heads, layer index and optional grid resizing, then calls ``compute``."""

    input_kind: ClassVar[str] = "maps"
    #: True when the loss is a mean over the batch of per-example terms and has no per-layer
    #: parameters, so the pairs of several layers can be stacked along the batch into one call
    #: (the mean over the stacked batch is the mean of the per-layer losses).
    stackable: ClassVar[bool] = True

    def __init__(
        self,
        teacher_heads: int,
        student_heads: int,
        num_layers: int = 1,
        *,
        teacher_grid: tuple[int, int] | None = None,
        student_grid: tuple[int, int] | None = None,
        num_prefix_tokens: int = 1,
    ) -> None:
        super().__init__()
        if min(teacher_heads, student_heads, num_layers) < 1:
            raise ValueError(
                f"teacher_heads, student_heads and num_layers must be >= 1, got "
                f"{teacher_heads}, {student_heads}, {num_layers}"
            )
        if (teacher_grid is None) != (student_grid is None):
            raise ValueError("give both teacher_grid and student_grid, or neither")
        if teacher_grid is not None and self.input_kind != "maps":
            raise ValueError(f"teacher_grid/student_grid only apply to attention maps, not {self.input_kind!r}")
        self.teacher_heads = teacher_heads
        self.student_heads = student_heads
        self.num_layers = num_layers
        self.teacher_grid = teacher_grid
        self.student_grid = student_grid
        self.num_prefix_tokens = num_prefix_tokens

    def forward(
        self,
        teacher: Tensor | tuple[Tensor, Tensor, Tensor],
        student: Tensor | tuple[Tensor, Tensor, Tensor],
        *,
        query_mask: Tensor | None = None,
        key_mask: Tensor | None = None,
        layer: int = 0,
    ) -> tuple[Tensor, Tensor | None]:
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} out of range for num_layers={self.num_layers}")
        if self.input_kind == "maps":
            for _name, x, h in (("teacher", teacher, self.teacher_heads), ("student", student, self.student_heads)):
                if isinstance(x, Tensor) and x.dim() == 4 and x.shape[1] != h:
                    raise ValueError(
                        f"{type(self).__name__} was built for {self.teacher_heads} teacher / {self.student_heads} "
                        f"student heads, got teacher {tuple(teacher.shape)} and student {tuple(student.shape)}"
                    )
            if self.teacher_grid is not None and tuple(self.teacher_grid) != tuple(self.student_grid):
                teacher = resize_teacher_attention(
                    teacher, self.teacher_grid, self.student_grid, num_prefix_tokens=self.num_prefix_tokens
                ).to(student.dtype)
        loss, weights = self.compute(teacher, student, query_mask=query_mask, key_mask=key_mask, layer=layer)
        return loss, (None if weights is None else weights.detach())

    def compute(self, teacher, student, *, query_mask, key_mask, layer):  # pragma: no cover - abstract
        raise NotImplementedError


class AMADCriterion(AttentionCriterion):
    """``amad``: :func:`amad_loss`; weights = the AMAD weights a (B, Ht, Hs)."""

    def __init__(
        self,
        teacher_heads,
        student_heads,
        num_layers=1,
        *,
        variant: str = "kl",
        temperature: float = 1.0,
        detach_weights: bool = False,
        eps: float = 1e-8,
        **common,
    ):
        super().__init__(teacher_heads, student_heads, num_layers, **common)
        check_choice("variant", variant, AMAD_VARIANTS)
        self.options = dict(variant=variant, temperature=temperature, detach_weights=detach_weights, eps=eps)

    def compute(self, teacher, student, *, query_mask, key_mask, layer):
        return amad_loss(teacher, student, query_mask=query_mask, return_weights=True, **self.options)


class AMADProjectionCriterion(AttentionCriterion):
    """``amad_proj``: one :class:`AMADProjectionLoss` per layer; weights = its AMAD weights."""

    stackable: ClassVar[bool] = False  # one parameter set per layer

    def __init__(
        self,
        teacher_heads,
        student_heads,
        num_layers=1,
        *,
        map_size: tuple[int, int] | None = None,
        temperature: float = 1.0,
        detach_weights: bool = False,
        normalize_rows: bool = True,
        eps: float = 1e-8,
        **common,
    ):
        super().__init__(teacher_heads, student_heads, num_layers, **common)
        n = None if map_size is None else int(map_size[0]) * int(map_size[1])
        self.projections = nn.ModuleList(
            AMADProjectionLoss(
                n, temperature=temperature, detach_weights=detach_weights, normalize_rows=normalize_rows, eps=eps
            )
            for _ in range(num_layers)
        )

    def compute(self, teacher, student, *, query_mask, key_mask, layer):
        return self.projections[layer](teacher, student, query_mask)


class OneToOneCriterion(AttentionCriterion):
    """``one_to_one``: :func:`one_to_one_loss`; weights = the fixed identity assignment."""

    def __init__(self, teacher_heads, student_heads, num_layers=1, *, kind: str = "kl", eps: float = 1e-8, **common):
        super().__init__(teacher_heads, student_heads, num_layers, **common)
        check_choice("kind", kind, ROW_LOSS_KINDS)
        if student_heads > teacher_heads:
            raise ValueError(f"one_to_one needs student_heads <= teacher_heads, got {student_heads} > {teacher_heads}")
        self.kind, self.eps = kind, eps
        self.register_buffer("assignment", torch.eye(teacher_heads, student_heads), persistent=False)

    def compute(self, teacher, student, *, query_mask, key_mask, layer):
        loss = one_to_one_loss(teacher, student, query_mask=query_mask, kind=self.kind, eps=self.eps)
        weights = self.assignment.to(device=loss.device, dtype=loss.dtype).expand(teacher.shape[0], -1, -1)
        return loss, weights


class HeadMeanCriterion(AttentionCriterion):
    """``head_mean``: :func:`head_mean_loss`; no per-head assignment (weights None)."""

    def __init__(self, teacher_heads, student_heads, num_layers=1, *, kind: str = "kl", eps: float = 1e-8, **common):
        super().__init__(teacher_heads, student_heads, num_layers, **common)
        check_choice("kind", kind, ROW_LOSS_KINDS)
        self.kind, self.eps = kind, eps

    def compute(self, teacher, student, *, query_mask, key_mask, layer):
        return head_mean_loss(teacher, student, query_mask=query_mask, kind=self.kind, eps=self.eps), None


class MiniLMRelationCriterion(AttentionCriterion):
    """``minilm_relation``: :func:`minilm_relation_loss` on (q, k, v); weights None.

    ``num_relation_heads`` defaults to ``teacher_heads`` (ours); it must divide both hidden sizes.
    ``query_mask`` defaults to ``key_mask``.
    """

    input_kind: ClassVar[str] = "qkv"

    def __init__(self, teacher_heads, student_heads, num_layers=1, *, num_relation_heads: int | None = None, **common):
        super().__init__(teacher_heads, student_heads, num_layers, **common)
        self.num_relation_heads = teacher_heads if num_relation_heads is None else int(num_relation_heads)

    def compute(self, teacher, student, *, query_mask, key_mask, layer):
        loss = minilm_relation_loss(
            teacher, student, key_mask=key_mask, query_mask=query_mask, num_relation_heads=self.num_relation_heads
        )
        return loss, None


class SHDCriterion(AttentionCriterion):
    """``shd``: :func:`amad.losses.shd_loss`; weights = the merge coefficients (columns sum to 1)."""

    def __init__(
        self,
        teacher_heads,
        student_heads,
        num_layers=1,
        *,
        temperature: float = 1.0,
        alpha_granularity: str = "map",
        eps: float = 1e-8,
        **common,
    ):
        super().__init__(teacher_heads, student_heads, num_layers, **common)
        check_choice("alpha_granularity", alpha_granularity, ALPHA_GRANULARITY)
        shd_groups(teacher_heads, student_heads)  # raises for student_heads > teacher_heads
        self.options = dict(temperature=temperature, alpha_granularity=alpha_granularity, eps=eps)

    def compute(self, teacher, student, *, query_mask, key_mask, layer):
        return shd_loss(teacher, student, query_mask=query_mask, key_mask=key_mask, return_weights=True, **self.options)


class A2DCriterion(AttentionCriterion):
    """``a2d``: one :class:`amad.losses.A2DLoss` (1x1 conv Hs -> Ht, sized from the arguments) per
    layer; weights = its kernel (not normalised)."""

    stackable: ClassVar[bool] = False  # one parameter set per layer

    def __init__(self, teacher_heads, student_heads, num_layers=1, *, teacher_as_logits: bool = True, **common):
        super().__init__(teacher_heads, student_heads, num_layers, **common)
        self.aligners = nn.ModuleList(
            A2DLoss(teacher_heads, student_heads, teacher_as_logits=teacher_as_logits) for _ in range(num_layers)
        )

    def compute(self, teacher, student, *, query_mask, key_mask, layer):
        return self.aligners[layer](teacher, student, query_mask, key_mask)


class AttnDistillCriterion(AttentionCriterion):
    """``attn_distill``: :func:`amad.losses.attn_distill_loss`; no per-head assignment (weights None)."""

    def __init__(
        self,
        teacher_heads,
        student_heads,
        num_layers=1,
        *,
        temperature: float = 20.0,
        query_index: int | None = None,
        prob_clamp: tuple[float, float] | None = (1e-5, 0.996),
        eps: float = 1e-8,
        **common,
    ):
        super().__init__(teacher_heads, student_heads, num_layers, **common)
        self.options = dict(temperature=temperature, query_index=query_index, prob_clamp=prob_clamp, eps=eps)

    def compute(self, teacher, student, *, query_mask, key_mask, layer):
        return attn_distill_loss(teacher, student, query_mask=query_mask, key_mask=key_mask, **self.options), None


_REGISTRY: dict[str, type[AttentionCriterion]] = {
    "amad": AMADCriterion,
    "one_to_one": OneToOneCriterion,
    "head_mean": HeadMeanCriterion,
    "minilm_relation": MiniLMRelationCriterion,
    "shd": SHDCriterion,
    "a2d": A2DCriterion,
    "attn_distill": AttnDistillCriterion,
    "amad_proj": AMADProjectionCriterion,
}


#: Names accepted by :func:`build_attention_criterion`.
ATTENTION_METHODS: tuple[str, ...] = tuple(_REGISTRY)


def criterion_input_kind(method: str) -> str:
    """``"maps"`` or ``"qkv"``: what the criteria of ``method`` consume (without building one)."""
    check_choice("attention method", method, ATTENTION_METHODS)
    return _REGISTRY[method].input_kind


def criterion_options(method: str) -> tuple[str, ...]:
    """The keyword options ``build_attention_criterion`` accepts for ``method``."""
    check_choice("attention method", method, tuple(_REGISTRY))
    names: list[str] = []
    for klass in _REGISTRY[method].__mro__:
        if klass in (nn.Module, object):
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.name not in names:
                names.append(p.name)
    return tuple(names)


def build_attention_criterion(
    method: str, *, teacher_heads: int, student_heads: int, num_layers: int = 1, **options
) -> AttentionCriterion:
    """Build the criterion of an attention-distillation method.

    Args:
        method: one of :data:`ATTENTION_METHODS`.
        teacher_heads: Ht of the site.
        student_heads: Hs of the site.
        num_layers: number of distilled layer pairs of the site (parameter sets of ``amad_proj``/``a2d``).
        **options: method options (``variant``, ``temperature``, ``detach_weights``, ``kind``,
            ``num_relation_heads``, ``map_size``, ...; see ``criterion_options(method)``) plus the
            common ``teacher_grid``, ``student_grid``, ``num_prefix_tokens``.

    Raises:
        ValueError: unknown method, unknown option, or an invalid option value (listing the valid
            choices).
    """
    check_choice("attention method", method, ATTENTION_METHODS)
    valid = criterion_options(method)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for attention method {method!r}; valid: {', '.join(valid)}")
    return _REGISTRY[method](teacher_heads, student_heads, num_layers, **options)
