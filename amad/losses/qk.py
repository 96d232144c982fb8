"""Attention losses from queries and keys: the maps rebuilt in blocks of query rows, never whole.

Returning attention maps forces eager attention and keeps the B·H·Q·K maps of every distilled layer of
teacher and student alive until the backward. Under ``attention_source: qk`` a model runs its fast
attention (SDPA) and the distiller keeps, per distilled layer, only what the maps are made of --
:class:`~amad.models.attention_inputs.AttentionInputs`: the queries, the keys, the scale and the additive
mask / position bias. :func:`qk_attention_loss` hands the method's criterion a :class:`QKBlocks`, which
rebuilds the maps ``softmax(q kᵀ·scale + mask + bias)`` (pre-dropout probabilities, as the map path) chunk
by chunk of query rows, and the criterion computes its loss on those blocks exactly as it does on blocks
cut from whole maps (:mod:`amad.losses.blocks`; each method's passes are in its criterion,
:mod:`amad.losses.criteria`). This module holds no method: only the rebuilding and the passes.

* :meth:`QKBlocks.sum`: with autograd, every chunk runs under ``torch.utils.checkpoint.checkpoint(
  use_reentrant=False)``: its forward keeps nothing but its inputs (views of q, k and the bias), and the
  backward rebuilds the chunk's maps. So at most O(B·(Ht+Hs)·chunk·K) map elements are alive at a time,
  forward and backward.
* :meth:`QKBlocks.two_pass` (a loss of two passes whose backward the criterion writes per block): one custom
  ``autograd.Function`` instead of a checkpoint per pass, which would rebuild each chunk twice in the
  backward. Forward: the statistics pass and the value pass (the second reuses the first's maps when there
  is one chunk); backward, one pass: per chunk the criterion's gradient w.r.t. the student's block, then
  through the chunk's softmax and ``q kᵀ`` by autograd on that chunk alone. Each chunk's maps are built three
  times in all (twice when there is one chunk).

The value and the gradients are those of the map path, ``criterion(teacher_maps, student_maps,
query_mask=..., key_mask=...)`` with the maps built from the same q/k (the tests hold every method and
option to 1e-10 in float64): only the summation order differs.

Masks: ``query_mask`` (B, Q) bool as in the map path: padded rows of both maps are zeroed before anything
(so they take no part in cosines, merges or losses) and each example's loss is the mean over its valid
rows (the gradient on padded rows is 0, as in the map path). Additive masks should use the dtype's min, as
transformers' do, not ``-inf``: a row masked to all ``-inf`` is NaN before it is zeroed. ``key_mask`` (B, K)
bool as each method uses it.

Chunk size: ``chunk_size=None`` picks the fewest balanced chunks whose maps of both models hold at most
:data:`~amad.models.attention_inputs.DEFAULT_CHUNK_ELEMENTS` elements (``B·(Ht+Hs)·rows·K``;
:func:`~amad.models.attention_inputs.default_chunk_size`); see ``docs/losses.md`` for the measurements.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from amad.losses._common import check_mask, no_autocast
from amad.losses.blocks import BlockFn, RowBlocks, TwoPassHooks
from amad.losses.criteria import AttentionCriterion
from amad.models.attention_inputs import AttentionInputs, compute_dtype, default_chunk_size


class QKBlocks(RowBlocks):
    """Blocks of query rows rebuilt from one layer pair's queries and keys (see the module docstring).

    Args:
        teacher: the teacher layer's :class:`AttentionInputs` (detached here: a constant target).
        student: the student layer's :class:`AttentionInputs`; same B, Q, K.
        query_mask: (B, Q) bool, True = real query row; None = all real.
        key_mask: (B, K) bool, True = real key; None = all real.
        chunk_size: query rows per chunk; None = :func:`default_chunk_size`. Values >= Q mean one chunk.

    Raises:
        ValueError: inputs that are not :class:`AttentionInputs`, different B, Q or K (naming both shapes),
            devices that differ, masks of the wrong shape, or a chunk size that is not a positive int.
    """

    def __init__(
        self,
        teacher: AttentionInputs,
        student: AttentionInputs,
        query_mask: Tensor | None = None,
        key_mask: Tensor | None = None,
        chunk_size: int | None = None,
    ) -> None:
        for name, x in (("teacher", teacher), ("student", student)):
            if not isinstance(x, AttentionInputs):
                raise ValueError(f"{name} must be AttentionInputs, got {type(x).__name__}")
        B, Ht, Q, K = teacher.shape
        Bs, Hs, Qs, Ks = student.shape
        if (B, Q, K) != (Bs, Qs, Ks):
            raise ValueError(
                f"teacher maps (B, Ht, Q, K) = {teacher.shape} and student maps (B, Hs, Q, K) = {student.shape}: "
                "B, Q and K must be equal"
            )
        if teacher.q.device != student.q.device:
            raise ValueError(
                f"teacher q {tuple(teacher.q.shape)} is on {teacher.q.device}, student q {tuple(student.q.shape)} "
                f"on {student.q.device}"
            )
        qmask = check_mask(query_mask, teacher.q, (0, 2), ref_name="teacher q (B, H, Q, d)")
        kmask = check_mask(key_mask, teacher.k, (0, 2), name="key_mask", ref_name="teacher k (B, H, K, d)")
        super().__init__((B, Ht, Hs, Q, K), compute_dtype(teacher.q, student.q), student.q.device, qmask, kmask)
        self.t = teacher.detach()
        self.s = student
        if chunk_size is None:
            chunk_size = default_chunk_size(B, Ht, Hs, Q, K)
        elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        self.chunk_size = min(max(int(chunk_size), 1), max(Q, 1))

    def slices(self) -> list[slice]:
        return [slice(i, min(i + self.chunk_size, self.Q)) for i in range(0, self.Q, self.chunk_size)]

    def _probs(self, x: AttentionInputs, rows: slice, heads: slice = slice(None), sub_rows: bool = False) -> Tensor:
        """(B, h, rows, K) maps of ``x``, padded query rows zeroed (``sub_rows``: ``x`` holds only those rows).

        Zeroed by a product with the 0/1 row mask (a broadcast ``where`` costs 3-4x more on CPU); its
        gradient is 0 on those rows, as the map path's ``where``. (A row whose mask and bias are all
        ``-inf`` would be NaN times 0: masks use the dtype's min, as transformers' do.)
        """
        p = torch.softmax(x.scores(slice(None) if sub_rows else rows, heads, self.dtype), dim=-1)
        if self.row_keep is None:
            return p
        keep = self.row_keep[:, None, rows, None]
        return p * keep if p.requires_grad else p.mul_(keep)  # softmax's backward needs its output

    def teacher(self, rows: slice, heads: slice = slice(None)) -> Tensor:
        return self._probs(self.t, rows, heads)

    def student(self, rows: slice) -> Tensor:
        return self._probs(self.s, rows)

    def student_tensors(self) -> list[Tensor]:
        s = self.s
        return [s.q, s.k, *(x for x in (s.mask, s.bias) if x is not None)]

    def sum(self, fn: BlockFn, grad: bool, slices: list[slice] | None = None) -> list[Tensor]:
        """Σ over chunks of ``fn(rows)``; with ``grad`` each chunk is checkpointed (its forward keeps only its
        inputs, its backward rebuilds the chunk), else it runs without autograd."""
        total: list[Tensor] | None = None
        for rows in slices if slices is not None else self.slices():
            if grad:
                out = checkpoint(fn, rows, use_reentrant=False, preserve_rng_state=False)
            else:
                with torch.no_grad():
                    out = fn(rows)
            total = _add(total, out)
        return total

    def two_pass(self, hooks: TwoPassHooks) -> tuple[Tensor, Tensor]:
        s = self.s
        mask = s.mask if s.mask is not None and s.mask.is_floating_point() else None
        return _TwoPass.apply(self, hooks, s.q, s.k, mask, s.bias)


def _add(total: list[Tensor] | None, out: tuple[Tensor, ...]) -> list[Tensor]:
    return list(out) if total is None else [a + b for a, b in zip(total, out, strict=True)]


class _TwoPass(torch.autograd.Function):
    """:meth:`QKBlocks.two_pass`: ``apply(blocks, hooks, q, k, mask, bias) -> hooks.output(...)``, with q, k,
    mask, bias the student's tensors (mask None unless float); the maps come from ``blocks``. Saved for the
    backward: the hooks' state and value sums (small tensors), plus the inputs."""

    @staticmethod
    def forward(ctx, blocks: QKBlocks, hooks: TwoPassHooks, q, k, mask, bias):
        slices = blocks.slices()
        # one chunk (small maps, or a large chunk_size): pass 2 reuses pass 1's maps (two builds, not three;
        # they are freed before the backward either way)
        kept = None
        stats = None
        for rows in slices:
            t, s = blocks.teacher(rows), blocks.student(rows)
            if len(slices) == 1:
                kept = t, s
            stats = _add(stats, hooks.stats(t, s))
        state = hooks.state(stats)
        sums = None
        for rows in slices:
            t, s = kept if kept is not None else (blocks.teacher(rows), blocks.student(rows))
            sums = _add(sums, hooks.value(t, s, state))
        per_example, weights = hooks.output(stats, state, sums)
        ctx.blocks, ctx.hooks, ctx.n_state = blocks, hooks, len(state)
        ctx.save_for_backward(*state, *sums)
        ctx.mark_non_differentiable(weights)
        return per_example, weights

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor, _grad_weights: Tensor | None):
        blocks: QKBlocks = ctx.blocks
        saved = ctx.saved_tensors
        state, sums = saved[: ctx.n_state], saved[ctx.n_state :]
        prep = ctx.hooks.backward(state, sums, grad.to(blocks.dtype))
        s_in = blocks.s
        needs = ctx.needs_input_grad[2:6]
        grads: list[Tensor | None] = [None] * 4
        for rows in blocks.slices():
            leaves = _chunk_leaves(s_in, rows, needs)
            with torch.enable_grad():
                sub = AttentionInputs(*(x for x in leaves[:2]), s_in.scale, mask=leaves[2], bias=leaves[3])
                s = blocks._probs(sub, rows, sub_rows=True)
            dS = ctx.hooks.block_grad(blocks.teacher(rows), s.detach(), prep)
            wanted = [x for x, n in zip(leaves, needs, strict=True) if n]
            got = iter(torch.autograd.grad(s, wanted, dS.view_as(s)))
            for i, n in enumerate(needs):
                if n:
                    grads[i] = _place(grads[i], next(got), [s_in.q, s_in.k, s_in.mask, s_in.bias][i], rows, i)
        return (None, None, *grads)


def _chunk_leaves(x: AttentionInputs, rows: slice, needs) -> list[Tensor | None]:
    """q, k, mask, bias of a chunk's rows, detached (leaves requiring grad where ``needs``)."""
    out = []
    for i, (v, n) in enumerate(zip((x.q, x.k, x.mask, x.bias), needs, strict=True)):
        if v is not None and i != 1 and (i == 0 or v.shape[2] > 1):
            v = v[:, :, rows]
        out.append(None if v is None else v.detach().requires_grad_(bool(n)))
    return out


def _place(acc: Tensor | None, g: Tensor, like: Tensor, rows: slice, i: int) -> Tensor:
    """Accumulate a chunk's gradient into the full one: q (and mask/bias with a query dim) by rows, k summed."""
    if i == 1 or (i > 1 and like.shape[2] == 1):
        return g.clone() if acc is None else acc.add_(g)
    if acc is None:
        acc = torch.zeros_like(like)
    acc[:, :, rows] = g
    return acc


def qk_attention_loss(
    criterion: AttentionCriterion,
    teacher: AttentionInputs,
    student: AttentionInputs,
    *,
    query_mask: Tensor | None = None,
    key_mask: Tensor | None = None,
    chunk_size: int | None = None,
    layer: int = 0,
) -> tuple[Tensor, Tensor | None]:
    """The loss of ``criterion`` for one layer pair, from queries and keys, in chunks of query rows.

    Equals the map path, ``criterion(teacher.maps(), student.maps(), query_mask=query_mask,
    key_mask=key_mask, layer=layer)`` (value, weights and gradients, to the parameters of the criterion's
    ``layer`` too), without ever holding a whole (B, H, Q, K) map.

    Args:
        criterion: the method's criterion (``method.build(teacher_heads, student_heads)``), one whose class
            says ``supports_qk``; it computes the loss on the blocks (:meth:`AttentionCriterion.block_loss`).
        teacher: the teacher layer's :class:`AttentionInputs` (detached here: a constant target).
        student: the student layer's :class:`AttentionInputs`; same B, Q, K; the criterion's head counts.
        query_mask: (B, Q) bool, True = real query row (the adapter's ``query_masks[site]``); None = all real.
        key_mask: (B, K) bool, True = real key (``key_masks[site]``); used as the method uses it.
        chunk_size: query rows per chunk; None = about ``DEFAULT_CHUNK_ELEMENTS`` map elements of both
            models per chunk. Values >= Q mean one chunk (still checkpointed).
        layer: the criterion's parameter set (methods with per-layer parameters, e.g. A2D's aligner).

    Returns:
        ``(loss, weights)``: the scalar loss (float32; float64 for float64 inputs) and the detached weights
        the criterion returns on maps (None for methods without).

    Raises:
        ValueError: a criterion that needs whole maps or is not map-based, a teacher grid resized to the
            student's (the resize needs the maps), or mismatched shapes/masks (naming both).
    """
    if not isinstance(criterion, AttentionCriterion):
        raise ValueError(f"criterion must be an AttentionCriterion (method.build(...)), got {type(criterion).__name__}")
    method = criterion.method
    if not type(criterion).supports_qk:
        raise ValueError(
            f"method {method.name!r} cannot be computed from queries and keys ({type(criterion).__name__} has "
            f"no block computation: it takes {criterion.input_kind}); use attention_source 'maps'"
        )
    tg, sg = method.teacher_grid, method.student_grid
    if tg is not None and sg is not None and tuple(tg) != tuple(sg):
        raise ValueError(
            f"teacher_grid {tuple(tg)} != student_grid {tuple(sg)}: resizing the teacher's maps needs the maps "
            "(attention_source maps)"
        )
    blocks = QKBlocks(teacher, student, query_mask, key_mask, chunk_size)
    with no_autocast(blocks.device.type):
        return criterion.loss_from_blocks(blocks, layer=layer)
