"""Resize a teacher's ViT attention maps to the student's patch grid.

When teacher and student use different patch sizes (e.g. ViT-B/16 at 14x14 patches teaching a /32
student at 7x7), their maps differ in Q and K. AttnDistill (Wang et al., BMVC 2022) interpolates the
teacher's patch part bicubically and rescales it so that the mass on the prefix ([CLS]) keys is
unchanged; :func:`resize_teacher_attention` does that for the key axis, and (our extension, on by
default) for the query axis too, so that the result can feed any attention loss of this package.
Every method of :func:`amad.losses.build_attention_criterion` accepts ``teacher_grid`` /
``student_grid`` options that apply it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from amad.losses._common import compute_dtype, no_autocast


def _grid(name: str, grid: tuple[int, int] | int) -> tuple[int, int]:
    g = (grid, grid) if isinstance(grid, int) else tuple(grid)
    if len(g) != 2 or min(g) < 1:
        raise ValueError(f"{name} must be (rows, cols) of positive ints, got {grid!r}")
    return int(g[0]), int(g[1])


def _interp_last(x: Tensor, src: tuple[int, int], dst: tuple[int, int], mode: str) -> Tensor:
    """Interpolate the last dim of x (..., src_h*src_w) as an image to (..., dst_h*dst_w)."""
    lead = x.shape[:-1]
    img = x.reshape(-1, 1, *src)
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(img, size=dst, mode=mode, **kwargs)
    return out.reshape(*lead, dst[0] * dst[1])


def resize_teacher_attention(
    teacher_attn: Tensor,
    teacher_grid: tuple[int, int] | int,
    student_grid: tuple[int, int] | int,
    *,
    num_prefix_tokens: int = 1,
    resize_queries: bool = True,
    mode: str = "bicubic",
    eps: float = 1e-12,
) -> Tensor:
    """Interpolate (B, H, Q, K) teacher maps from ``teacher_grid`` patches to ``student_grid``.

    Tokens are ``num_prefix_tokens`` prefix tokens ([CLS], registers) followed by the row-major
    patch grid. Keys: the patch columns of every row are interpolated as an image (``mode``,
    bicubic by default), negatives clamped to 0, and rescaled so that the row's patch mass is what
    it was (the prefix columns are kept): rows keep summing to 1. Queries (``resize_queries``,
    ours): the patch rows are interpolated the same way along the query grid, clamped to >= 0 and
    renormalised to sum 1 (rows whose mass is ~0, e.g. padded ones, stay 0); prefix rows are kept.

    Args:
        teacher_attn: (B, H, Q, K) probabilities with K = P + th*tw (and Q = P + th*tw when
            ``resize_queries``).
        teacher_grid: (th, tw) patch grid of the teacher (an int n means (n, n)).
        student_grid: (sh, sw) patch grid of the student.
        num_prefix_tokens: P.
        resize_queries: also resize the query axis (False for a map whose rows are e.g. [CLS] only).
        mode: ``F.interpolate`` mode ("bicubic", "bilinear", "nearest", "area").
        eps: mass below which a row counts as empty.

    Returns:
        (B, H, Q', K') with K' = P + sh*sw (Q' likewise when ``resize_queries``), float32 at least.
        Detached (the teacher is a constant target).

    Raises:
        ValueError: rank, or Q/K not equal to P + th*tw.
    """
    th, tw = _grid("teacher_grid", teacher_grid)
    sh, sw = _grid("student_grid", student_grid)
    if not isinstance(teacher_attn, Tensor) or teacher_attn.dim() != 4:
        shape = tuple(teacher_attn.shape) if isinstance(teacher_attn, Tensor) else type(teacher_attn).__name__
        raise ValueError(f"teacher_attn {shape} must be (B, H, Q, K)")
    _B, _H, Q, K = teacher_attn.shape
    P = num_prefix_tokens
    if K != P + th * tw or (resize_queries and Q != P + th * tw):
        raise ValueError(
            f"teacher_attn {tuple(teacher_attn.shape)} does not fit teacher_grid {(th, tw)} with {P} prefix "
            f"tokens: expected K{' and Q' if resize_queries else ''} = {P + th * tw} "
            f"(student_grid {(sh, sw)} gives {P + sh * sw})"
        )
    if (th, tw) == (sh, sw):
        return teacher_attn.detach()
    dtype = compute_dtype(teacher_attn)
    zero = torch.zeros((), dtype=dtype, device=teacher_attn.device)
    with torch.no_grad(), no_autocast(teacher_attn.device.type):
        a = teacher_attn.to(dtype)
        prefix, patch = a[..., :P], a[..., P:]
        new = _interp_last(patch, (th, tw), (sh, sw), mode).clamp_min(0)
        old_mass, new_mass = patch.sum(-1, keepdim=True), new.sum(-1, keepdim=True)
        uniform = old_mass.expand_as(new) / (sh * sw)
        new = torch.where(new_mass > eps, new * (old_mass / new_mass.clamp_min(eps)), uniform)
        a = torch.cat([prefix, new], dim=-1)  # (B, H, Q, P + sh*sw)
        if resize_queries:
            rows = a[:, :, P:, :].transpose(-1, -2)  # (B, H, K', th*tw)
            rows = _interp_last(rows, (th, tw), (sh, sw), mode).transpose(-1, -2).clamp_min(0)
            mass = rows.sum(-1, keepdim=True)
            rows = torch.where(mass > eps, rows / mass.clamp_min(eps), zero)
            a = torch.cat([a[:, :, :P, :], rows], dim=2)
    return a
