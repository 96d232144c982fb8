"""Shared helpers of the attention losses: input checks, float32 math, masked reductions.

Every loss in :mod:`amad.losses` goes through these, so they all agree on the same conventions:

* inputs are checked up front and a mismatch raises ``ValueError`` naming both shapes;
* math runs in float32 at least (float64 stays float64), with autocast switched off inside the
  loss, so a bf16 autocast region upstream still yields a float32 loss;
* the teacher is a constant target: its tensors are detached;
* padded query rows are zeroed with ``torch.where`` (not a product), so even non-finite values in
  padded rows cannot reach the loss or its gradient;
* "mean over valid rows" divides by ``max(#valid, 1)``: an example without a valid row gives 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

#: Cosine norms are clamped here, the ``F.normalize`` convention (method.md section 3).
NORM_EPS = 1e-12


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; every other floating dtype is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@contextlib.contextmanager
def no_autocast(device_type: str) -> Iterator[None]:
    """Switch autocast off for ``device_type`` (a no-op where autocast does not exist)."""
    try:
        ctx = torch.autocast(device_type=device_type, enabled=False)
    except (RuntimeError, ValueError):  # device type without autocast support
        ctx = contextlib.nullcontext()
    with ctx:
        yield


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def check_pair(
    teacher: object,
    student: object,
    *,
    rank: int,
    match_dims: Sequence[int],
    names: tuple[str, str] = ("teacher_attn", "student_attn"),
    layout: str = "(B, H, Q, K)",
) -> None:
    """Check rank, the dims that must agree, dtype and device of a teacher/student pair.

    Raises:
        ValueError: naming both shapes, on any mismatch.
    """
    tn, sn = names
    both = f"{tn} {_shape(teacher)} and {sn} {_shape(student)}"
    if not isinstance(teacher, Tensor) or not isinstance(student, Tensor):
        raise ValueError(f"{both}: both must be tensors")
    if teacher.dim() != rank or student.dim() != rank:
        raise ValueError(f"{both}: both must have rank {rank} {layout}")
    bad = [d for d in match_dims if teacher.shape[d] != student.shape[d]]
    if bad:
        raise ValueError(f"{both}: dims {bad} of {layout} must be equal")
    if not teacher.is_floating_point() or not student.is_floating_point():
        raise ValueError(f"{both}: both must be floating point, got {teacher.dtype} and {student.dtype}")
    if teacher.dtype != student.dtype:
        raise ValueError(f"{both}: dtypes differ ({teacher.dtype} vs {student.dtype})")
    if teacher.device != student.device:
        raise ValueError(f"{both}: devices differ ({teacher.device} vs {student.device})")


def check_maps(teacher_attn: object, student_attn: object) -> None:
    """Check a (B, Ht, Q, K) / (B, Hs, Q, K) pair of attention maps."""
    check_pair(teacher_attn, student_attn, rank=4, match_dims=(0, 2, 3))


def check_mask(
    mask: Tensor | None, ref: Tensor, dims: Sequence[int], name: str = "query_mask", ref_name: str = "attn"
) -> Tensor | None:
    """Validate a padding mask against ``ref.shape[dims]`` and return it as bool (True = real).

    Returns None (= everything real) for None, and on CPU for a mask that is True everywhere.

    Bool and integer (0/1) masks are accepted; float masks are refused (a float is ambiguous
    between "keep" and an additive -inf mask).
    """
    if mask is None:
        return None
    want = tuple(ref.shape[d] for d in dims)
    if not isinstance(mask, Tensor):
        raise ValueError(f"{name} must be a tensor of shape {want}, got {type(mask).__name__}")
    if tuple(mask.shape) != want:
        raise ValueError(f"{name} {tuple(mask.shape)} does not match {ref_name} {tuple(ref.shape)}: expected {want}")
    if mask.is_floating_point() or mask.is_complex():
        raise ValueError(f"{name} {tuple(mask.shape)} must be bool (True = real), got {mask.dtype}")
    if mask.device != ref.device:
        raise ValueError(f"{name} is on {mask.device} but {ref_name} {tuple(ref.shape)} is on {ref.device}")
    mask = mask if mask.dtype == torch.bool else mask != 0
    # A mask without padding (e.g. every image patch) means the same as None, which skips a masked copy
    # of the maps. Only checked on CPU: on an accelerator the check would be a host sync per call.
    if mask.device.type == "cpu" and bool(mask.all()):
        return None
    return mask


def prepare_teacher(teacher_attn: Tensor, mask: Tensor | None) -> Tensor:
    """Upcast and detach the teacher maps (B, H, Q, K), and zero their padded query rows."""
    dtype = compute_dtype(teacher_attn)
    t = teacher_attn.detach().to(dtype)
    if mask is not None:
        t = torch.where(mask[:, None, :, None], t, torch.zeros((), dtype=dtype, device=t.device))
    return t


def prepare_maps(teacher_attn: Tensor, student_attn: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Upcast, detach the teacher, and zero the padded query rows of both maps."""
    t = prepare_teacher(teacher_attn, mask)
    s = student_attn.to(t.dtype)
    if mask is not None:
        s = torch.where(mask[:, None, :, None], s, torch.zeros((), dtype=s.dtype, device=s.device))
    return t, s


class _RowCrossEntropy(torch.autograd.Function):
    """``sum_k t log max(p, eps)`` over the last dim, with ``t`` a constant; gradient w.r.t. ``p`` only.

    Fused backward: ``t / max(p, eps)``, zero where ``p < eps``, times the incoming gradient -- the
    values autograd gives through ``clamp_min`` and ``log`` -- computed in place in one buffer (on CPU
    every fresh map-sized buffer costs page faults, which dominate these memory-bound passes).
    """

    @staticmethod
    def forward(ctx, t: Tensor, p: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(t, p)
        ctx.eps = eps
        return p.clamp_min(eps).log_().mul_(t).sum(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, None]:
        t, p = ctx.saved_tensors
        gp = p.clamp_min(ctx.eps)
        torch.div(t, gp, out=gp)
        if p.device.type != "cpu" or (p.numel() and bool(torch.amin(p) < ctx.eps)):
            gp.masked_fill_(p < ctx.eps, 0)
        return None, gp.mul_(grad.unsqueeze(-1)), None


def row_entropy_term(t: Tensor) -> Tensor:
    """``sum_k t log t`` over the last dim with 0 log 0 = 0 (no gradient: ``t`` is a target)."""
    with torch.no_grad():
        return t.clamp_min(torch.finfo(t.dtype).tiny).log_().mul_(t).sum(-1)


class _RowKL(torch.autograd.Function):
    """CPU row KL ``sum_k t log max(t / max(p, eps), tiny)`` (= ``sum_k t log t - t log max(p, eps)``, 0 log 0
    = 0) with the gradient's map kept from the forward.

    ``G = t / max(p, eps)`` (zero where ``p < eps``, where ``clamp_min`` passes no gradient) is the gradient
    up to the sign and the upstream factor, and the KL is the sum of ``t log G``: one division serves both,
    and the backward is one multiply. Eight passes over a map instead of the twelve of the entropy term,
    the cross-entropy and its backward's division (docs/performance.md); it keeps ``G`` (one map) until the
    backward, so accelerators, where memory binds, keep :class:`_RowCrossEntropy`.
    """

    @staticmethod
    def forward(ctx, t: Tensor, p: Tensor, eps: float) -> Tensor:
        below = (p < eps) if p.numel() and bool(torch.amin(p) < eps) else None
        G = p.clamp_min(eps)
        torch.div(t, G, out=G)
        kl = G.clamp_min(torch.finfo(G.dtype).tiny).log_().mul_(t).sum(-1)
        if below is not None:
            G.masked_fill_(below, 0)
        ctx.save_for_backward(G)
        return kl

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, None]:
        (G,) = ctx.saved_tensors
        return None, G * (-grad).unsqueeze(-1), None


def row_kl(t: Tensor, p: Tensor, eps: float) -> Tensor:
    """Row KL over the last dim: ``sum_k t log t - t log max(p, eps)`` with 0 log 0 = 0.

    ``t`` is a detached target (teacher); the gradient flows to ``p`` only. On CPU one fused function
    (:class:`_RowKL`); elsewhere the entropy term minus :class:`_RowCrossEntropy`, which keeps no extra map.
    """
    if p.device.type == "cpu":
        return _RowKL.apply(t.detach(), p, eps)
    return row_entropy_term(t) - _RowCrossEntropy.apply(t.detach(), p, eps)


def masked_row_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the last dim (query rows) of ``x`` (..., B?, Q) counting only valid rows.

    Args:
        x: (B, H, Q) per-row values.
        mask: (B, Q) bool or None.
    Returns:
        (B, H): sum over valid rows / max(#valid rows, 1).
    """
    if mask is None:
        return x.mean(-1)
    m = mask[:, None, :]
    total = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(-1)
    return total / mask.sum(-1, keepdim=True).clamp_min(1).to(x.dtype)


def sqrt_clamped(sq: Tensor) -> Tensor:
    """``max(sqrt(sq), 1e-12)`` of a sum of squares, with the gradient of ``clamp_min(vector_norm(x), 1e-12)``
    (0 below the floor, never inf * 0 at sq = 0): norms from sums accumulated over blocks of rows."""
    return sq.clamp_min(NORM_EPS * NORM_EPS).sqrt()


def cosine_matrix(tf: Tensor, sf: Tensor) -> Tensor:
    """Cosine of every teacher row against every student row, batched (Eq. 2).

    Args:
        tf: (..., Ht, n), sf: (..., Hs, n).
    Returns:
        (..., Ht, Hs) ``t.s / (max(|t|, 1e-12) max(|s|, 1e-12))``, without normalised copies.
    """
    dot = tf @ sf.transpose(-1, -2)
    nt = torch.linalg.vector_norm(tf, dim=-1).clamp_min(NORM_EPS)
    ns = torch.linalg.vector_norm(sf, dim=-1).clamp_min(NORM_EPS)
    return dot / (nt.unsqueeze(-1) * ns.unsqueeze(-2))


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid choices: {', '.join(map(repr, choices))}")


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
