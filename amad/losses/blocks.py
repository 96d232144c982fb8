"""Blocks of query rows: the one interface through which a criterion computes its loss, from maps or from q/k.

A criterion that says ``supports_qk`` defines its method once, on *blocks of query rows* of the two maps --
the teacher's (B, Ht, r, K) and the student's (B, Hs, r, K), in the compute dtype, padded query rows zeroed
-- whichever way a block was produced: cut from whole maps (:class:`MapBlocks`, here) or rebuilt from the
queries and keys chunk by chunk (:class:`amad.losses.qk.QKBlocks`). The criterion asks the blocks for
*passes* and reduces what they return:

* :meth:`RowBlocks.sum`: the sum over all blocks of a function of one block (a tuple of tensors), with or
  without autograd (the q/k source checkpoints each block: its backward rebuilds the block);
* :meth:`RowBlocks.two_pass`: a loss of two passes (statistics of the whole maps, then a per-row value) whose
  backward the criterion writes per block (:class:`TwoPassHooks`; AMAD "kl");
* the row reductions every method shares: the masked sum of per-row values over a block's valid rows, the
  mean over each example's valid rows, per-row weights averaged over the valid rows.

How many blocks there are, how they are built and what autograd keeps of them is the source's business;
what is computed on a block is the criterion's (:mod:`amad.losses.criteria`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor

from amad.losses._common import check_maps, check_mask, compute_dtype, prepare_maps

#: one block's function: ``fn(rows) -> tuple of tensors``, summed over the blocks
BlockFn = Callable[[slice], Sequence[Tensor]]


class TwoPassHooks(Protocol):
    """A loss of two passes over the blocks with a per-block backward (AMAD "kl": :mod:`amad.losses._fused`).

    ``t`` (B, Ht, r, K) and ``s`` (B, Hs, r, K) are a block's maps (``s`` without autograd). The forward is
    ``stats`` summed over blocks -> ``state`` -> ``value`` summed over blocks -> ``output``; the backward,
    given the upstream gradient of the per-example output, is ``backward`` once -> ``block_grad`` per block:
    the gradient of the loss w.r.t. that block of the student's maps (the source carries it on to q and k).
    """

    def stats(self, t: Tensor, s: Tensor) -> tuple[Tensor, ...]: ...

    def state(self, stats: Sequence[Tensor]) -> tuple[Tensor, ...]: ...

    def value(self, t: Tensor, s: Tensor, state: Sequence[Tensor]) -> tuple[Tensor, ...]: ...

    def output(
        self, stats: Sequence[Tensor], state: Sequence[Tensor], sums: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor]: ...

    def backward(self, state: Sequence[Tensor], sums: Sequence[Tensor], grad: Tensor) -> tuple: ...

    def block_grad(self, t: Tensor, s: Tensor, prep: tuple) -> Tensor: ...


class RowBlocks:
    """What every block source shares: the geometry, the masks and the row reductions.

    Args:
        shapes: (B, Ht, Hs, Q, K) of the maps.
        dtype: the compute dtype of the blocks (float32, or float64).
        device: where the blocks live.
        query_mask: (B, Q) bool (already checked), True = real query row; None = all real.
        key_mask: (B, K) bool (already checked), True = real key; None = all real.
    """

    def __init__(
        self,
        shapes: tuple[int, int, int, int, int],
        dtype: torch.dtype,
        device: torch.device,
        query_mask: Tensor | None,
        key_mask: Tensor | None,
    ) -> None:
        self.B, self.Ht, self.Hs, self.Q, self.K = shapes
        self.dtype, self.device = dtype, device
        self.key_mask = key_mask
        self._set_query_mask(query_mask)

    def _set_query_mask(self, qmask: Tensor | None) -> None:
        self.query_mask = qmask
        n_valid = qmask.sum(-1) if qmask is not None else torch.full((self.B,), self.Q, device=self.device)
        self.has_valid = n_valid > 0
        self.row_keep = None if qmask is None else qmask.to(self.dtype)  # (B, Q) 0/1
        self.inv_rows = 1.0 / n_valid.clamp_min(1).to(self.dtype)  # (B,)

    # ------------------------------------------------------------------------------------- the source's part

    def teacher(self, rows: slice, heads: slice = slice(None)) -> Tensor:
        """(B, h, r, K): the teacher's maps of query rows ``rows`` (a constant), padded rows zeroed."""
        raise NotImplementedError

    def student(self, rows: slice) -> Tensor:
        """(B, Hs, r, K): the student's maps of query rows ``rows``, padded rows zeroed."""
        raise NotImplementedError

    def student_tensors(self) -> list[Tensor]:
        """The tensors the student's blocks are made of (for :meth:`needs_grad`)."""
        raise NotImplementedError

    def slices(self) -> list[slice]:
        """The blocks' query rows, in order, covering 0..Q."""
        raise NotImplementedError

    def sum(self, fn: BlockFn, grad: bool, slices: list[slice] | None = None) -> list[Tensor]:
        """Σ over the blocks (``slices``, default :meth:`slices`) of ``fn(rows)``; ``grad``: with autograd."""
        raise NotImplementedError

    def two_pass(self, hooks: TwoPassHooks) -> tuple[Tensor, Tensor]:
        """``hooks.output`` of the two passes (per-example loss with its gradient, weights without)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------- shared

    def needs_grad(self, *extra: Tensor) -> bool:
        """Whether the loss needs autograd: grad mode and a student tensor (or ``extra``) requiring grad."""
        return torch.is_grad_enabled() and any(x.requires_grad for x in (*self.student_tensors(), *extra))

    def row_mask(self, rows: slice) -> Tensor | None:
        return None if self.query_mask is None else self.query_mask[:, rows]

    def select_row(self, index: int) -> list[slice]:
        """Keep only query row ``index`` (negative counts from the end): the mask becomes that row (and the
        padding mask), and the returned slices build only it. ValueError if out of range."""
        if not -self.Q <= index < self.Q:
            raise ValueError(f"query_index {index} out of range for maps (B, H, Q, K) with Q = {self.Q}")
        i = index % self.Q
        rows = torch.zeros(self.B, self.Q, dtype=torch.bool, device=self.device)
        rows[:, i] = True
        self._set_query_mask(rows if self.query_mask is None else rows & self.query_mask)
        return [slice(i, i + 1)]

    def masked_row_sum(self, x: Tensor, rows: slice) -> Tensor:
        """(B, H, r) per-row values of a block -> (B, H): the sum over its valid rows."""
        m = self.row_mask(rows)
        if m is None:
            return x.sum(-1)
        return torch.where(m[:, None, :], x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(-1)

    def row_weight_sums(self, w: Tensor, rows: slice) -> tuple[Tensor, Tensor]:
        """(B, r, Ht, Hs) per-row weights of a block -> their sums over its valid rows and over all its rows
        (both detached), for :meth:`average_rows`."""
        w = w.detach()
        m = self.row_mask(rows)
        valid = w if m is None else torch.where(m[:, :, None, None], w, w.new_zeros(()))
        return valid.sum(1), w.sum(1)

    def mean_over_rows(self, per_example: Tensor) -> Tensor:
        """(B,) sums over valid rows -> the scalar loss: each example's mean over its valid rows, mean over B."""
        return (per_example * self.inv_rows).mean()

    def average_rows(self, valid_sum: Tensor, all_sum: Tensor) -> Tensor:
        """Per-row weights averaged over each example's valid rows (over all rows for an example without one)."""
        n_valid = 1.0 / self.inv_rows
        return torch.where(self.has_valid[:, None, None], valid_sum / n_valid[:, None, None], all_sum / self.Q)


class MapBlocks(RowBlocks):
    """Blocks cut from whole maps: one block of all rows (the maps exist already: nothing to rebuild).

    Args:
        teacher: (B, Ht, Q, K) maps (detached here: a constant target).
        student: (B, Hs, Q, K) maps, same B, Q, K, dtype and device.
        query_mask: (B, Q) bool or None; key_mask: (B, K) bool or None.
    """

    def __init__(
        self, teacher: Tensor, student: Tensor, query_mask: Tensor | None = None, key_mask: Tensor | None = None
    ) -> None:
        check_maps(teacher, student)
        qmask = check_mask(query_mask, teacher, (0, 2))
        kmask = check_mask(key_mask, teacher, (0, 3), name="key_mask")
        B, Ht, Q, K = teacher.shape
        super().__init__((B, Ht, student.shape[1], Q, K), compute_dtype(teacher), teacher.device, qmask, kmask)
        self._raw = student
        self.t, self.s = prepare_maps(teacher, student, qmask)

    def teacher(self, rows: slice, heads: slice = slice(None)) -> Tensor:
        return self.t[:, heads, rows]

    def student(self, rows: slice) -> Tensor:
        return self.s[:, :, rows]

    def student_tensors(self) -> list[Tensor]:
        return [self._raw]

    def slices(self) -> list[slice]:
        return [slice(0, self.Q)]

    def sum(self, fn: BlockFn, grad: bool, slices: list[slice] | None = None) -> list[Tensor]:
        total: list[Tensor] | None = None
        for rows in slices if slices is not None else self.slices():
            with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                out = fn(rows)
            total = list(out) if total is None else [a + b for a, b in zip(total, out, strict=True)]
        return total

    def two_pass(self, hooks: TwoPassHooks) -> tuple[Tensor, Tensor]:
        return _TwoPassMaps.apply(self, hooks, self.s)


class _TwoPassMaps(torch.autograd.Function):
    """:meth:`MapBlocks.two_pass`: the hooks on the one block of all rows; the backward hands the hooks'
    gradient w.r.t. that block to autograd (which carries it through the masking and the upcast)."""

    @staticmethod
    def forward(ctx, blocks: MapBlocks, hooks: TwoPassHooks, s: Tensor):
        t = blocks.t
        stats = hooks.stats(t, s)
        state = hooks.state(stats)
        sums = hooks.value(t, s, state)
        per_example, weights = hooks.output(stats, state, sums)
        ctx.blocks, ctx.hooks, ctx.n_state = blocks, hooks, len(state)
        ctx.save_for_backward(s, *state, *sums)
        ctx.mark_non_differentiable(weights)
        return per_example, weights

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor, _grad_weights: Tensor | None):
        s, *saved = ctx.saved_tensors
        state, sums = saved[: ctx.n_state], saved[ctx.n_state :]
        prep = ctx.hooks.backward(state, sums, grad.to(s.dtype))
        return None, None, ctx.hooks.block_grad(ctx.blocks.t, s, prep).view_as(s)
