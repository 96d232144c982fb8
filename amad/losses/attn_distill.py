"""AttnDistill: KL between head-aggregated, temperature-softened attention maps.

Wang, Yang, van de Weijer, "Attention Distillation: self-supervised vision transformer students
need more guidance", BMVC 2022 (code: github.com/wangkai930418/attndistill). The public code sums
the log attention of all heads, ``softmax(sum_h log A_h / T)`` (T = ``attn_T``, default 20), clamps
the probabilities to [1e-5, 0.996], renormalises them (L1) and takes ``KL(teacher || student)`` with
``reduction="batchmean"``, on the [CLS] query row of the last layer. When the patch grids differ it
interpolates the teacher's map bicubically (see :func:`amad.losses.resize_teacher_attention`).

Ours: any query rows (``query_index=None``, the default, uses every valid row; ``query_index=0`` is the
paper's [CLS] row), a log floor ``eps`` (the code takes ``log`` of exact zeros), and padded keys
excluded from the softmax when a ``key_mask`` is given.
"""

from __future__ import annotations

import torch
from torch import Tensor

from amad.losses._common import check_maps, check_mask, check_positive, masked_row_mean, no_autocast, prepare_maps


def aggregate_heads(attn: Tensor, temperature: float, key_mask: Tensor | None, eps: float) -> Tensor:
    """``softmax(sum_h log max(A_h, eps) / T)`` over real keys: (B, H, Q, K) -> (B, Q, K)."""
    z = torch.log(attn.clamp_min(eps)).sum(1) / temperature
    if key_mask is not None:
        z = z.masked_fill(~key_mask[:, None, :], torch.finfo(z.dtype).min)
    return torch.softmax(z, dim=-1)


def attn_distill_rows(
    t: Tensor,
    s: Tensor,
    temperature: float,
    key_mask: Tensor | None,
    prob_clamp: tuple[float, float] | None,
    eps: float,
) -> Tensor:
    """Per query row ``KL(p_T || p_S)`` of the aggregated maps: (B, Ht, r, K), (B, Hs, r, K) -> (B, r).

    ``p = aggregate_heads(A)``, then (with ``prob_clamp``) clamped to [lo, hi], zero on padded keys and
    renormalised (L1) as the code; ``sum_k p_T log p_T - p_T log max(p_S, eps)``.
    """
    pt = aggregate_heads(t, temperature, key_mask, eps)
    ps = aggregate_heads(s, temperature, key_mask, eps)
    if prob_clamp is not None:
        lo, hi = prob_clamp
        pt, ps = pt.clamp(lo, hi), ps.clamp(lo, hi)
        if key_mask is not None:
            zero = torch.zeros((), dtype=pt.dtype, device=pt.device)
            pt = torch.where(key_mask[:, None, :], pt, zero)
            ps = torch.where(key_mask[:, None, :], ps, zero)
        pt = pt / pt.sum(-1, keepdim=True).clamp_min(eps)
        ps = ps / ps.sum(-1, keepdim=True).clamp_min(eps)
    return (torch.xlogy(pt, pt) - pt * torch.log(ps.clamp_min(eps))).sum(-1)


def attn_distill_loss(
    teacher_attn: Tensor,
    student_attn: Tensor,
    *,
    query_mask: Tensor | None = None,
    key_mask: Tensor | None = None,
    temperature: float = 20.0,
    query_index: int | None = None,
    prob_clamp: tuple[float, float] | None = (1e-5, 0.996),
    eps: float = 1e-8,
) -> Tensor:
    """AttnDistill loss.

    Args:
        teacher_attn: (B, Ht, Q, K) teacher probabilities. Detached.
        student_attn: (B, Hs, Q, K) student probabilities (any Hs: heads are aggregated).
        query_mask: (B, Q) bool, True = real query row.
        key_mask: (B, K) bool, True = real key.
        temperature: T of the aggregation softmax (the code's ``attn_T`` default, 20).
        query_index: a single query row to distil (0 = [CLS], as the paper), or None for all rows.
        prob_clamp: (lo, hi) clamp of both aggregated distributions before L1 renormalisation, as
            the code; None to skip.
        eps: floor inside the log of the per-head maps.

    Returns:
        Scalar: per example, the mean over the valid (selected) query rows of
        ``KL(p_T row || p_S row)`` of the aggregated maps; mean over the batch ("batchmean" of the
        code when one row is selected). An example without a valid row contributes 0.
    """
    check_positive("temperature", temperature)
    check_maps(teacher_attn, student_attn)
    Q = teacher_attn.shape[2]
    qmask = check_mask(query_mask, teacher_attn, (0, 2))
    kmask = check_mask(key_mask, teacher_attn, (0, 3), name="key_mask")
    if query_index is not None:
        if not -Q <= query_index < Q:
            raise ValueError(f"query_index {query_index} out of range for teacher_attn {tuple(teacher_attn.shape)}")
        rows = torch.zeros(teacher_attn.shape[0], Q, dtype=torch.bool, device=teacher_attn.device)
        rows[:, query_index] = True
        qmask = rows if qmask is None else rows & qmask
    with no_autocast(teacher_attn.device.type):
        t, s = prepare_maps(teacher_attn, student_attn, qmask)
        kl = attn_distill_rows(t, s, temperature, kmask, prob_clamp, eps)  # (B, Q)
        return masked_row_mean(kl[:, None], qmask).squeeze(1).mean()
