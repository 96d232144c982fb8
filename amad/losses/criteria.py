"""The criteria: one ``nn.Module`` per attention-distillation method, built from its options.

>>> crit = AMAD(variant="kl").build(teacher_heads=12, student_heads=8)   # amad.losses.methods
>>> loss, weights = crit(teacher_maps, student_maps, query_mask=mask)   # doctest: +SKIP

Every criterion has a class attribute ``input_kind``:

* ``"maps"``: ``forward(teacher (B, Ht, Q, K), student (B, Hs, Q, K), *, query_mask=None,
  key_mask=None, layer=0)``;
* ``"qkv"``: ``forward((q, k, v) teacher each (B, L, d_t), (q, k, v) student each (B, L, d_s), ...)``.

It returns ``(scalar loss, weights)``; ``weights`` is a detached (B, Ht, Hs) teacher-to-student head
assignment for the alignment heatmaps, or ``None`` where the method has none. ``layer`` (0 <= layer <
``num_layers``) picks the parameter set of the methods with parameters (``amad_proj``, ``a2d``): they
are trained with the student (their parameters go in the optimizer) and are not part of the exported
student. Build one criterion per site with ``num_layers`` = the number of distilled layer pairs of that
site that it serves; each parameter set is used only when ``forward(..., layer=l)`` is called with its
index (an unused one breaks DDP without ``find_unused_parameters``).

The options (typed, validated, with defaults) live in :mod:`amad.losses.methods`; a criterion keeps
them as ``self.method``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from amad.losses.a2d import A2DLoss
from amad.losses.attention import amad_loss, head_mean_loss, one_to_one_loss
from amad.losses.attn_distill import attn_distill_loss
from amad.losses.projection import AMADProjectionLoss
from amad.losses.relation import minilm_relation_loss
from amad.losses.resize import resize_teacher_attention
from amad.losses.shd import shd_groups, shd_loss

if TYPE_CHECKING:
    from amad.losses.methods import AttentionMethod


class AttentionCriterion(nn.Module):
    """Base class: checks heads, layer index and optional grid resizing, then calls ``compute``.

    Args:
        teacher_heads: Ht of the site.
        student_heads: Hs of the site.
        num_layers: parameter sets (methods with parameters) = distilled layer pairs served.
        method: the options (:class:`amad.losses.methods.AttentionMethod`).
    """

    input_kind: ClassVar[str] = "maps"
    #: True when the loss is a mean over the batch of per-example terms and has no per-layer
    #: parameters, so the pairs of several layers can be stacked along the batch into one call
    #: (the mean over the stacked batch is the mean of the per-layer losses).
    stackable: ClassVar[bool] = True

    def __init__(self, teacher_heads: int, student_heads: int, num_layers: int, method: AttentionMethod) -> None:
        super().__init__()
        if min(teacher_heads, student_heads, num_layers) < 1:
            raise ValueError(
                f"teacher_heads, student_heads and num_layers must be >= 1, got "
                f"{teacher_heads}, {student_heads}, {num_layers}"
            )
        self.teacher_heads = teacher_heads
        self.student_heads = student_heads
        self.num_layers = num_layers
        self.method = method

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
            for x, h in ((teacher, self.teacher_heads), (student, self.student_heads)):
                if isinstance(x, Tensor) and x.dim() == 4 and x.shape[1] != h:
                    raise ValueError(
                        f"{type(self).__name__} was built for {self.teacher_heads} teacher / {self.student_heads} "
                        f"student heads, got teacher {tuple(teacher.shape)} and student {tuple(student.shape)}"
                    )
            grids = self.method.teacher_grid, self.method.student_grid
            if grids[0] is not None and tuple(grids[0]) != tuple(grids[1]):
                teacher = resize_teacher_attention(
                    teacher, grids[0], grids[1], num_prefix_tokens=self.method.num_prefix_tokens
                ).to(student.dtype)
        loss, weights = self.compute(teacher, student, query_mask=query_mask, key_mask=key_mask, layer=layer)
        return loss, (None if weights is None else weights.detach())

    def compute(self, teacher, student, *, query_mask, key_mask, layer):  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{self.teacher_heads} -> {self.student_heads} heads, {self.method}"


class AMADCriterion(AttentionCriterion):
    """``amad``: :func:`amad_loss`; weights = the AMAD weights a (B, Ht, Hs)."""

    def compute(self, teacher, student, *, query_mask, key_mask, layer):
        m = self.method
        return amad_loss(
            teacher,
            student,
            query_mask=query_mask,
            variant=m.variant,
            temperature=m.weight_temperature,
            detach_weights=m.detach_weights,
            eps=m.eps,
            return_weights=True,
        )


class AMADProjectionCriterion(AttentionCriterion):
    """``amad_proj``: one :class:`AMADProjectionLoss` per layer; weights = its AMAD weights."""

    stackable: ClassVar[bool] = False  # one parameter set per layer

    def __init__(self, teacher_heads, student_heads, num_layers, method) -> None:
        super().__init__(teacher_heads, student_heads, num_layers, method)
        n = None if method.map_size is None else int(method.map_size[0]) * int(method.map_size[1])
        self.projections = nn.ModuleList(
            AMADProjectionLoss(
                n,
                temperature=method.weight_temperature,
                detach_weights=method.detach_weights,
                normalize_rows=method.normalize_rows,
                eps=method.eps,
            )
            for _ in range(num_layers)
        )

    def compute(self, teacher, student, *, query_mask, key_mask, layer):
        return self.projections[layer](teacher, student, query_mask)


class OneToOneCriterion(AttentionCriterion):
    """``one_to_one``: :func:`one_to_one_loss`; weights = the fixed identity assignment."""

    def __init__(self, teacher_heads, student_heads, num_layers, method) -> None:
        super().__init__(teacher_heads, student_heads, num_layers, method)
        if student_heads > teacher_heads:
            raise ValueError(f"one_to_one needs student_heads <= teacher_heads, got {student_heads} > {teacher_heads}")
        self.register_buffer("assignment", torch.eye(teacher_heads, student_heads), persistent=False)

    def compute(self, teacher, student, *, query_mask, key_mask, layer):
        loss = one_to_one_loss(teacher, student, query_mask=query_mask, kind=self.method.row_loss, eps=self.method.eps)
        weights = self.assignment.to(device=loss.device, dtype=loss.dtype).expand(teacher.shape[0], -1, -1)
        return loss, weights


class HeadMeanCriterion(AttentionCriterion):
    """``head_mean``: :func:`head_mean_loss`; no per-head assignment (weights None)."""

    def compute(self, teacher, student, *, query_mask, key_mask, layer):
        m = self.method
        return head_mean_loss(teacher, student, query_mask=query_mask, kind=m.row_loss, eps=m.eps), None


class MiniLMRelationCriterion(AttentionCriterion):
    """``minilm_relation``: :func:`minilm_relation_loss` on (q, k, v); weights None.

    ``num_relation_heads`` defaults to ``teacher_heads`` (ours); it must divide both hidden sizes.
    ``query_mask`` defaults to ``key_mask``.
    """

    input_kind: ClassVar[str] = "qkv"

    def compute(self, teacher, student, *, query_mask, key_mask, layer):
        r = self.method.num_relation_heads
        loss = minilm_relation_loss(
            teacher,
            student,
            key_mask=key_mask,
            query_mask=query_mask,
            num_relation_heads=self.teacher_heads if r is None else int(r),
        )
        return loss, None


class SHDCriterion(AttentionCriterion):
    """``shd``: :func:`amad.losses.shd_loss`; weights = the merge coefficients (columns sum to 1)."""

    def __init__(self, teacher_heads, student_heads, num_layers, method) -> None:
        super().__init__(teacher_heads, student_heads, num_layers, method)
        shd_groups(teacher_heads, student_heads)  # raises for student_heads > teacher_heads

    def compute(self, teacher, student, *, query_mask, key_mask, layer):
        m = self.method
        return shd_loss(
            teacher,
            student,
            query_mask=query_mask,
            key_mask=key_mask,
            return_weights=True,
            temperature=m.softening_temperature,
            alpha_granularity=m.merge_granularity,
            eps=m.eps,
        )


class A2DCriterion(AttentionCriterion):
    """``a2d``: one :class:`amad.losses.A2DLoss` (1x1 conv Hs -> Ht, sized from the head counts) per
    layer; weights = its kernel (not normalised)."""

    stackable: ClassVar[bool] = False  # one parameter set per layer

    def __init__(self, teacher_heads, student_heads, num_layers, method) -> None:
        super().__init__(teacher_heads, student_heads, num_layers, method)
        self.aligners = nn.ModuleList(
            A2DLoss(teacher_heads, student_heads, teacher_as_logits=method.teacher_as_logits) for _ in range(num_layers)
        )

    def compute(self, teacher, student, *, query_mask, key_mask, layer):
        return self.aligners[layer](teacher, student, query_mask, key_mask)


class AttnDistillCriterion(AttentionCriterion):
    """``attn_distill``: :func:`amad.losses.attn_distill_loss`; no per-head assignment (weights None)."""

    def compute(self, teacher, student, *, query_mask, key_mask, layer):
        m = self.method
        loss = attn_distill_loss(
            teacher,
            student,
            query_mask=query_mask,
            key_mask=key_mask,
            temperature=m.aggregation_temperature,
            query_index=m.query_index,
            prob_clamp=m.prob_clamp,
            eps=m.eps,
        )
        return loss, None
