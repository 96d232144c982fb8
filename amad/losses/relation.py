"""MiniLMv2 multi-head self-attention relation distillation.

Wang et al., "MiniLMv2: Multi-Head Self-Attention Relation Distillation for Compressing Pretrained
Transformers", Findings of ACL 2021. The queries (keys, values) of all attention heads are
concatenated and re-split into the same number R of *relation heads* for teacher and student, so
neither the head counts nor the hidden sizes need to match.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from amad.losses._common import check_mask, check_pair, compute_dtype, masked_row_mean, no_autocast

QKV_NAMES = ("q", "k", "v")


def relation_log_probs(x: Tensor, num_relation_heads: int, key_mask: Tensor | None) -> Tensor:
    """Self-attention relation ``log softmax(x_h x_h^T / sqrt(d_h))`` over keys.

    Args:
        x: (B, L, d) queries, keys or values; d divisible by ``num_relation_heads``.
        num_relation_heads: R; ``d_h = d / R``.
        key_mask: (B, L) bool, True = real key; padded keys get probability 0.
    Returns:
        (B, R, L, L) log-probabilities (padded keys at a large negative finite value; a row
        whose keys are all padded is uniform, never NaN).
    """
    B, L, d = x.shape
    dh = d // num_relation_heads
    xh = x.view(B, L, num_relation_heads, dh).transpose(1, 2)  # (B, R, L, dh)
    scores = torch.matmul(xh, xh.transpose(-1, -2)) / math.sqrt(dh)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
    return torch.log_softmax(scores, dim=-1)


def minilm_relation_loss(
    teacher_qkv: Sequence[Tensor],
    student_qkv: Sequence[Tensor],
    *,
    key_mask: Tensor | None = None,
    query_mask: Tensor | None = None,
    num_relation_heads: int,
) -> Tensor:
    """MiniLMv2 Q-Q, K-K and V-V self-attention relation loss for one layer.

    Args:
        teacher_qkv: ``(q, k, v)`` of the teacher layer, each (B, L, d_t): the self-attention
            projections before the split into heads. Detached.
        student_qkv: ``(q, k, v)`` of the student layer, each (B, L, d_s); d_s may differ from d_t.
        key_mask: (B, L) bool, True = real token; padded keys get relation probability 0.
        query_mask: (B, L) bool, the query rows that count; defaults to ``key_mask`` (self-attention).
        num_relation_heads: R, must divide both d_t and d_s. Each model is re-split into R heads of
            its own size d/R, and its relation is scaled by its own ``1/sqrt(d/R)``.

    Returns:
        Scalar loss. For each relation X in (Q-Q, K-K, V-V), relation head r and valid query row l:
        ``KL(R^T_{X,r,l} || R^S_{X,r,l})`` over the real keys. Per example: mean over valid rows,
        then mean over the R relation heads, then mean over the three relations; then mean over
        the batch. (MiniLMv2 averages over relation heads and tokens; it sums the three relation
        terms with weight 1, i.e. 3x this value.) A fully padded example contributes 0.

    Raises:
        ValueError: not three tensors each, rank/shape/dtype/device mismatch (naming both shapes),
            R not dividing a hidden size, or a mask of the wrong shape.
    """
    for name, qkv in (("teacher_qkv", teacher_qkv), ("student_qkv", student_qkv)):
        if isinstance(qkv, Tensor) or len(qkv) != 3:
            raise ValueError(f"{name} must be a (q, k, v) sequence of three (B, L, d) tensors")
    if num_relation_heads < 1:
        raise ValueError(f"num_relation_heads must be >= 1, got {num_relation_heads}")
    ref = teacher_qkv[0]
    for name, xt, xs in zip(QKV_NAMES, teacher_qkv, student_qkv, strict=False):
        check_pair(xt, xs, rank=3, match_dims=(0, 1), names=(f"teacher {name}", f"student {name}"), layout="(B, L, d)")
        check_pair(ref, xt, rank=3, match_dims=(0, 1), names=("teacher q", f"teacher {name}"), layout="(B, L, d)")
        for who, x in (("teacher", xt), ("student", xs)):
            if x.shape[-1] % num_relation_heads:
                raise ValueError(
                    f"num_relation_heads={num_relation_heads} does not divide the hidden size of {who} {name} "
                    f"{tuple(x.shape)} (teacher {tuple(xt.shape)}, student {tuple(xs.shape)})"
                )
    kmask = check_mask(key_mask, ref, (0, 1), name="key_mask", ref_name="teacher q")
    qmask = check_mask(query_mask, ref, (0, 1), name="query_mask", ref_name="teacher q")
    qmask = kmask if qmask is None else qmask
    dtype = compute_dtype(ref)
    with no_autocast(ref.device.type):
        per_example = 0
        for xt, xs in zip(teacher_qkv, student_qkv, strict=False):
            lt = relation_log_probs(xt.detach().to(dtype), num_relation_heads, kmask)
            ls = relation_log_probs(xs.to(dtype), num_relation_heads, kmask)
            kl = lt.exp() * (lt - ls)
            if kmask is not None:
                kl = torch.where(kmask[:, None, None, :], kl, torch.zeros((), dtype=dtype, device=kl.device))
            per_example = per_example + masked_row_mean(kl.sum(-1), qmask).mean(1)
        return (per_example / 3).mean()
