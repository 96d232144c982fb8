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

**Blocks of query rows.** A criterion whose class says ``supports_qk`` also defines its loss on blocks of
query rows (:mod:`amad.losses.blocks`), whichever way a block was produced: cut from whole maps or rebuilt
from queries and keys (``attention_source: qk``, :func:`amad.losses.qk.qk_attention_loss`, which only
produces the blocks and runs the passes). This is the one place each method is written for both:

* one-pass methods (every term belongs to one query row: one-to-one, head-mean, AttnDistill, A2D, AMAD
  "token", SHD per row) write :meth:`AttentionCriterion.row_loss` -- the per-row loss of a block (and
  per-row weights where the method has them) -- with the same row kernels as their map functions; the
  base class sums it over the valid rows of every block and divides by each example's valid rows;
* multi-pass methods override :meth:`AttentionCriterion.block_loss`: AMAD "kl" (the cosines need whole
  maps: statistics pass, then the mixture pass, :class:`amad.losses._fused.AMADKLBlockHooks`), AMAD "l2"
  (one pass of sums, :func:`amad.losses.attention.amad_l2_stats`), SHD per map (one pass per merge level,
  :func:`amad.losses.shd.shd_map_coefficients`, then the row pass).

A new method needs only its criterion: with ``supports_qk`` and ``row_loss`` (or ``block_loss``) the base
class's ``compute`` runs the same definition on whole maps as one block (:class:`MapBlocks`); the methods
here keep their whole-map functions for the map path (same kernels; the tests hold both paths equal).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from amad.losses._common import no_autocast
from amad.losses._fused import AMADKLBlockHooks
from amad.losses.a2d import A2DLoss
from amad.losses.attention import (
    amad_l2_from_stats,
    amad_l2_stats,
    amad_loss,
    amad_token_rows,
    head_mean_loss,
    one_to_one_loss,
    row_loss,
)
from amad.losses.attn_distill import attn_distill_loss, attn_distill_rows
from amad.losses.blocks import MapBlocks, RowBlocks
from amad.losses.projection import AMADProjectionLoss
from amad.losses.relation import minilm_relation_loss
from amad.losses.resize import resize_teacher_attention
from amad.losses.shd import shd_groups, shd_loss, shd_map_coefficients, shd_merge, soften, softened_row_kl

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
    #: True when the method is defined on blocks of query rows (``row_loss`` or ``block_loss``), so that
    #: ``attention_source: qk`` can serve it (module docstring).
    supports_qk: ClassVar[bool] = False

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
            # teacher maps may hold all Ht heads or only those the loss reads (the distiller and the teacher
            # cache leave the others out: they would only be copied)
            for x, hs in ((teacher, (self.teacher_heads, self.teacher_heads_read())), (student, (self.student_heads,))):
                if isinstance(x, Tensor) and x.dim() == 4 and x.shape[1] not in hs:
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

    def compute(self, teacher, student, *, query_mask, key_mask, layer):
        """The loss on whole maps: by default the block definition on one block of all rows."""
        if not self.supports_qk:
            raise NotImplementedError(f"{type(self).__name__} defines neither compute nor a block computation")
        with no_autocast(teacher.device.type):
            return self.block_loss(MapBlocks(teacher, student, query_mask, key_mask), layer)

    # ------------------------------------------------------------------------- blocks of query rows

    def loss_from_blocks(self, blocks: RowBlocks, layer: int = 0) -> tuple[Tensor, Tensor | None]:
        """``(loss, detached weights)`` from blocks of query rows (:func:`amad.losses.qk.qk_attention_loss`).

        Raises:
            ValueError: a layer out of range, or blocks of other head counts than the criterion's.
        """
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} out of range for num_layers={self.num_layers}")
        if (blocks.Ht, blocks.Hs) != (self.teacher_heads, self.student_heads):
            raise ValueError(
                f"{type(self).__name__} was built for {self.teacher_heads} teacher / {self.student_heads} student "
                f"heads, got teacher maps with {blocks.Ht} and student maps with {blocks.Hs} heads"
            )
        loss, weights = self.block_loss(blocks, layer)
        return loss, (None if weights is None else weights.detach())

    def block_loss(self, blocks: RowBlocks, layer: int) -> tuple[Tensor, Tensor | None]:
        """The loss and weights from blocks; by default one pass of :meth:`row_loss` (:meth:`row_pass`)."""
        return self.row_pass(blocks, layer, self.row_loss)

    def row_loss(self, t: Tensor, s: Tensor, *, key_mask: Tensor | None, layer: int) -> tuple[Tensor, Tensor | None]:
        """A block's per-row loss (B, r), summed over heads, and its per-row weights (B, r, Ht, Hs) or None.

        Args:
            t: (B, h, r, K) teacher rows (the heads of :meth:`block_teacher_heads`), padded rows zeroed.
            s: (B, Hs, r, K) student rows, padded rows zeroed.
            key_mask: (B, K) bool or None; layer: the parameter set.
        """
        raise NotImplementedError(f"{type(self).__name__} has no row_loss")

    def block_teacher_heads(self) -> slice:
        """The teacher heads the loss reads (only these are built); a leading slice ``0:h`` or all."""
        return slice(None)

    def teacher_heads_read(self) -> int:
        """How many leading teacher heads the loss reads (:meth:`block_teacher_heads`): teacher maps of just
        these heads are accepted in place of all ``teacher_heads``."""
        return len(range(self.teacher_heads)[self.block_teacher_heads()])

    def block_slices(self, blocks: RowBlocks) -> list[slice] | None:
        """The query rows to build (None: all); may restrict ``blocks``' query mask to them."""
        return None

    def block_parameters(self, layer: int) -> list[Tensor]:
        """Parameters of ``layer`` the loss depends on (beyond the student's maps)."""
        return []

    def block_weights(self, blocks: RowBlocks, layer: int) -> Tensor | None:
        """The weights of a method whose weights do not come from the rows (None: none)."""
        return None

    def row_pass(self, blocks: RowBlocks, layer: int, row_loss) -> tuple[Tensor, Tensor | None]:
        """One pass of ``row_loss(t, s, key_mask=, layer=)`` over the blocks: per example the mean over its valid
        rows, mean over the batch; weights averaged over the valid rows, or :meth:`block_weights`."""
        heads = self.block_teacher_heads()
        slices = self.block_slices(blocks)

        def fn(rows: slice) -> tuple[Tensor, ...]:
            per_row, row_w = row_loss(
                blocks.teacher(rows, heads), blocks.student(rows), key_mask=blocks.key_mask, layer=layer
            )
            out = (blocks.masked_row_sum(per_row[:, None], rows).squeeze(1),)
            return out if row_w is None else (*out, *blocks.row_weight_sums(row_w, rows))

        per_example, *w = blocks.sum(fn, blocks.needs_grad(*self.block_parameters(layer)), slices)
        weights = blocks.average_rows(*w) if w else self.block_weights(blocks, layer)
        return blocks.mean_over_rows(per_example), weights

    def extra_repr(self) -> str:
        return f"{self.teacher_heads} -> {self.student_heads} heads, {self.method}"


class AMADCriterion(AttentionCriterion):
    """``amad``: :func:`amad_loss`; weights = the AMAD weights a (B, Ht, Hs).

    Blocks: "kl" two passes (:class:`AMADKLBlockHooks`), "l2" one pass of sums (:func:`amad_l2_stats`),
    "token" per row (:func:`amad_token_rows`).
    """

    supports_qk: ClassVar[bool] = True

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

    def block_loss(self, blocks, layer):
        m = self.method
        if m.variant == "kl":
            per_example, a = blocks.two_pass(AMADKLBlockHooks(m.weight_temperature, m.detach_weights, m.eps))
            return blocks.mean_over_rows(per_example), a
        if m.variant == "l2":
            B, Ht, Hs = blocks.B, blocks.Ht, blocks.Hs

            def fn(rows: slice) -> tuple[Tensor, ...]:
                t = blocks.teacher(rows).reshape(B, Ht, -1)
                return amad_l2_stats(t, blocks.student(rows).reshape(B, Hs, -1))

            stats = blocks.sum(fn, blocks.needs_grad())
            per_example, a = amad_l2_from_stats(*stats, m.weight_temperature, m.detach_weights)
            return per_example.mean(), a
        return super().block_loss(blocks, layer)

    def row_loss(self, t, s, *, key_mask, layer):
        m = self.method  # "token" (Eq. 12)
        return amad_token_rows(t, s, m.weight_temperature, m.detach_weights, m.eps)


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

    supports_qk: ClassVar[bool] = True

    def __init__(self, teacher_heads, student_heads, num_layers, method) -> None:
        super().__init__(teacher_heads, student_heads, num_layers, method)
        if student_heads > teacher_heads:
            raise ValueError(f"one_to_one needs student_heads <= teacher_heads, got {student_heads} > {teacher_heads}")
        self.register_buffer("assignment", torch.eye(teacher_heads, student_heads), persistent=False)

    def compute(self, teacher, student, *, query_mask, key_mask, layer):
        loss = one_to_one_loss(teacher, student, query_mask=query_mask, kind=self.method.row_loss, eps=self.method.eps)
        weights = self.assignment.to(device=loss.device, dtype=loss.dtype).expand(teacher.shape[0], -1, -1)
        return loss, weights

    def block_teacher_heads(self):
        return slice(0, self.student_heads)  # only the paired teacher heads are ever built

    def row_loss(self, t, s, *, key_mask, layer):
        return row_loss(t, s, self.method.row_loss, self.method.eps).sum(1), None

    def block_weights(self, blocks, layer):
        return self.assignment.to(device=blocks.device, dtype=blocks.dtype).expand(blocks.B, -1, -1)


class HeadMeanCriterion(AttentionCriterion):
    """``head_mean``: :func:`head_mean_loss`; no per-head assignment (weights None)."""

    supports_qk: ClassVar[bool] = True

    def compute(self, teacher, student, *, query_mask, key_mask, layer):
        m = self.method
        return head_mean_loss(teacher, student, query_mask=query_mask, kind=m.row_loss, eps=m.eps), None

    def row_loss(self, t, s, *, key_mask, layer):
        m = self.method
        return row_loss(t.mean(1, keepdim=True), s.mean(1, keepdim=True), m.row_loss, m.eps).squeeze(1), None


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
    """``shd``: :func:`amad.losses.shd_loss`; weights = the merge coefficients (columns sum to 1).

    Blocks: per row, the merge of each block's rows (:func:`shd_merge`); per map, one pass per merge level
    for the coefficients (:func:`shd_map_coefficients`), then the row pass on the merged blocks.
    """

    supports_qk: ClassVar[bool] = True

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

    def _softened_kl(self, merged: Tensor, s: Tensor, key_mask: Tensor | None) -> Tensor:
        """(B, Hs, r, K) merged teacher and student rows -> (B, r): the softened row KL, summed over heads."""
        tau, eps = self.method.softening_temperature, self.method.eps
        return softened_row_kl(soften(merged, tau, key_mask, eps), soften(s, tau, key_mask, eps), key_mask).sum(1)

    def block_loss(self, blocks, layer):
        if self.method.merge_granularity == "row":
            return super().block_loss(blocks, layer)
        coef = shd_map_coefficients(blocks)  # (B, Hs, Ht), the first passes

        def rows_of(t, s, *, key_mask, layer):
            B, Ht, r, K = t.shape
            merged = torch.bmm(coef, t.reshape(B, Ht, -1)).view(B, -1, r, K)
            return self._softened_kl(merged, s, key_mask), None

        loss, _ = self.row_pass(blocks, layer, rows_of)
        return loss, coef.transpose(1, 2)

    def row_loss(self, t, s, *, key_mask, layer):
        merged, c = shd_merge(t, s, granularity="row")  # alpha per row: local to the block
        return self._softened_kl(merged, s, key_mask), c.permute(0, 2, 3, 1)  # (B, r, Ht, Hs)


class A2DCriterion(AttentionCriterion):
    """``a2d``: one :class:`amad.losses.A2DLoss` (1x1 conv Hs -> Ht, sized from the head counts) per
    layer; weights = its kernel (not normalised)."""

    stackable: ClassVar[bool] = False  # one parameter set per layer
    supports_qk: ClassVar[bool] = True

    def __init__(self, teacher_heads, student_heads, num_layers, method) -> None:
        super().__init__(teacher_heads, student_heads, num_layers, method)
        self.aligners = nn.ModuleList(
            A2DLoss(teacher_heads, student_heads, teacher_as_logits=method.teacher_as_logits) for _ in range(num_layers)
        )

    def compute(self, teacher, student, *, query_mask, key_mask, layer):
        return self.aligners[layer](teacher, student, query_mask, key_mask)

    def row_loss(self, t, s, *, key_mask, layer):
        return self.aligners[layer].row_kl(t, s, key_mask).sum(1), None

    def block_parameters(self, layer):
        return [x for x in self.aligners[layer].parameters() if x.requires_grad]

    def block_weights(self, blocks, layer):
        kernel = self.aligners[layer].aligner.weight[:, :, 0, 0]
        return kernel.detach().to(blocks.dtype).expand(blocks.B, self.teacher_heads, self.student_heads)


class AttnDistillCriterion(AttentionCriterion):
    """``attn_distill``: :func:`amad.losses.attn_distill_loss`; no per-head assignment (weights None)."""

    supports_qk: ClassVar[bool] = True

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

    def block_slices(self, blocks):
        i = self.method.query_index
        return None if i is None else blocks.select_row(i)  # every other row is masked out: only this one is built

    def row_loss(self, t, s, *, key_mask, layer):
        m = self.method
        return attn_distill_rows(t, s, m.aggregation_temperature, key_mask, m.prob_clamp, m.eps), None
