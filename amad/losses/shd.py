"""Squeezing-Heads Distillation (SHD): merge teacher heads pairwise until the head counts match.

Bing, Li, Liang, "Optimizing Knowledge Distillation in Transformers: Enabling Multi-Head Attention
without Alignment Barriers", arXiv 2502.07436 (2025). The full text was not reachable offline; what is
public (abstract and summaries) says SHD compresses teacher maps by a *linear approximation* of
several teacher heads into fewer heads, without parameters, at O(N^2) cost, then distils with a
temperature-softened KL. **Our reading** (documented in ``docs/losses.md``):

* the Ht teacher heads are cut into Hs contiguous groups (sizes differ by at most one, larger groups
  first), one per student head;
* inside a group, adjacent maps are merged two at a time (a binary tree: (0,1), (2,3), then the
  merged pairs, ...) as ``alpha A_p + (1 - alpha) A_q``, with alpha in closed form: the least-squares
  fit of the merged map to the student's map of that group,
  ``alpha = <S - A_q, A_p - A_q> / |A_p - A_q|^2``, clamped to [0, 1] so the result stays a
  distribution (0.5 when A_p = A_q); computed per map (default) or per query row;
* alpha is a constant of the target (no gradient flows through it); the teacher side is detached;
* the merged teacher map and the student map are softened, ``softmax(log max(A, eps) / tau)`` over the
  real keys, and compared by row KL(teacher || student).
"""

from __future__ import annotations

import torch
from torch import Tensor

from amad.losses._common import (
    check_choice,
    check_maps,
    check_mask,
    check_positive,
    masked_row_mean,
    no_autocast,
    prepare_maps,
)
from amad.losses.blocks import RowBlocks

ALPHA_GRANULARITY = ("map", "row")


def shd_groups(teacher_heads: int, student_heads: int) -> list[list[int]]:
    """Contiguous teacher-head groups, one per student head; sizes differ by <= 1, larger first."""
    if student_heads > teacher_heads:
        raise ValueError(
            f"SHD merges teacher heads: needs student_heads <= teacher_heads, got {student_heads} > {teacher_heads}"
        )
    base, extra = divmod(teacher_heads, student_heads)
    groups, start = [], 0
    for j in range(student_heads):
        size = base + (j < extra)
        groups.append(list(range(start, start + size)))
        start += size
    return groups


def soften(p: Tensor, temperature: float, key_mask: Tensor | None, eps: float) -> Tensor:
    """Log of the temperature-softened rows: ``log_softmax(log max(p, eps) / tau)`` over real keys.

    Args:
        p: (B, H, Q, K) probabilities; key_mask: (B, K) bool or None.
    Returns:
        (B, H, Q, K) log-probabilities (padded keys at a large negative finite value).
    """
    z = torch.log(p.clamp_min(eps)) / temperature
    if key_mask is not None:
        z = z.masked_fill(~key_mask[:, None, None, :], torch.finfo(z.dtype).min)
    return torch.log_softmax(z, dim=-1)


def softened_row_kl(lt: Tensor, ls: Tensor, key_mask: Tensor | None) -> Tensor:
    """Row KL of two log-distributions over real keys: (B, H, Q, K) -> (B, H, Q)."""
    kl = lt.exp() * (lt - ls)
    if key_mask is not None:
        kl = torch.where(key_mask[:, None, None, :], kl, torch.zeros((), dtype=kl.dtype, device=kl.device))
    return kl.sum(-1)


def shd_layout(teacher_heads: int, student_heads: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The merge tree's leaves: teacher-head index (Hs, width) (-1 in empty slots) and its validity; the
    groups of :func:`shd_groups` (contiguous, larger first), width the largest group rounded up to a power of 2."""
    base, extra = divmod(teacher_heads, student_heads)
    width = 1 << (base + (extra > 0) - 1).bit_length()
    j = torch.arange(student_heads, device=device)[:, None]
    pos = torch.arange(width, device=device)[None, :]
    start = j * base + torch.clamp(j, max=extra)
    valid = pos < base + (j < extra).long()
    return torch.where(valid, start + pos, -1), valid


def shd_merge(
    teacher: Tensor, student: Tensor, *, granularity: str = "map", eps: float = 1e-12
) -> tuple[Tensor, Tensor]:
    """Squeeze (B, Ht, Q, K) teacher maps into (B, Hs, Q, K), fitting each merge to the student.

    Vectorised over batch, groups and pairs; the only Python loop is over the log2(group size)
    levels of the merge tree.

    Args:
        teacher: (B, Ht, Q, K), masked; student: (B, Hs, Q, K), masked (used as a constant).
        granularity: one alpha per merged map ("map") or per query row ("row").
        eps: ``|A_p - A_q|^2`` below which two maps count as equal (alpha = 0.5).

    Returns:
        merged (B, Hs, Q, K) and coefficients (B, Hs, R, Ht): the share of teacher head i in merged
        map j (summing to 1 over i), R = 1 for "map" and Q for "row".
    """
    check_choice("alpha_granularity", granularity, ALPHA_GRANULARITY)
    B, Ht, Q, _K = teacher.shape
    Hs = student.shape[1]
    shd_groups(Ht, Hs)  # validates Hs <= Ht
    index, valid = shd_layout(Ht, Hs, teacher.device)
    maps = teacher[:, index.clamp_min(0)]  # (B, Hs, width, Q, K)
    R = Q if granularity == "row" else 1
    coef = torch.nn.functional.one_hot(index.clamp_min(0), Ht).to(teacher.dtype) * valid[..., None]
    coef = coef[None, :, :, None, :].expand(B, Hs, index.shape[1], R, Ht)  # (B, Hs, width, R, Ht)
    target = student.detach()[:, :, None]  # (B, Hs, 1, Q, K)
    dims = (-1,) if granularity == "row" else (-2, -1)
    while maps.shape[2] > 1:
        x, y = maps[:, :, 0::2], maps[:, :, 1::2]
        vy = valid[:, 1::2]
        d = x - y
        den = (d * d).sum(dims)
        num = ((target - y) * d).sum(dims)
        alpha = torch.where(den > eps, num / den.clamp_min(eps), torch.full_like(den, 0.5)).clamp(0, 1)
        alpha = torch.where(vy[None, :, :, None] if granularity == "row" else vy[None], alpha, torch.ones_like(alpha))
        a = alpha.reshape(B, Hs, -1, R, 1)
        maps = a * x + (1 - a) * y
        coef = a * coef[:, :, 0::2] + (1 - a) * coef[:, :, 1::2]
        valid = valid[:, 0::2]
    return maps[:, :, 0], coef[:, :, 0]  # (B, Hs, Q, K), (B, Hs, R, Ht)


def _mean_coefficients(coef: Tensor, qmask: Tensor | None) -> Tensor:
    """(B, Hs, R, Ht) -> (B, Hs, Ht): per-row coefficients averaged over valid rows (all rows if none)."""
    if coef.shape[2] == 1 or qmask is None:
        return coef.mean(2)
    B, Hs, Q, Ht = coef.shape
    per_row = coef.permute(0, 1, 3, 2).reshape(B, Hs * Ht, Q)
    avg = masked_row_mean(per_row, qmask).view(B, Hs, Ht)
    return torch.where((qmask.sum(-1) > 0)[:, None, None], avg, coef.mean(2))


def shd_loss(
    teacher_attn: Tensor,
    student_attn: Tensor,
    *,
    query_mask: Tensor | None = None,
    key_mask: Tensor | None = None,
    temperature: float = 1.0,
    alpha_granularity: str = "map",
    eps: float = 1e-8,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """SHD loss (our reading of Bing et al. 2025, see the module docstring).

    Args:
        teacher_attn: (B, Ht, Q, K) teacher probabilities. Detached.
        student_attn: (B, Hs, Q, K) student probabilities, Hs <= Ht.
        query_mask: (B, Q) bool, True = real query row.
        key_mask: (B, K) bool, True = real key; softening renormalises over real keys only (without
            it, zero-probability keys get ``eps^(1/tau)`` relative weight after softening).
        temperature: tau of the softening (1 = the maps themselves, up to the eps floor).
        alpha_granularity: "map" (one alpha per merge, default) or "row" (one per query row).
        eps: probability floor inside the log.
        return_weights: also return the merge coefficients (B, Ht, Hs) (columns sum to 1).

    Returns:
        Scalar: per example, sum over the Hs student heads of the mean over valid rows of
        ``KL(soft(merged_j) || soft(S_j))``; mean over the batch. (No tau^2 factor.)

    Raises:
        ValueError: Hs > Ht, bad option, or a shape/dtype/device/mask mismatch.
    """
    check_positive("temperature", temperature)
    check_choice("alpha_granularity", alpha_granularity, ALPHA_GRANULARITY)
    check_maps(teacher_attn, student_attn)
    Ht, Hs = teacher_attn.shape[1], student_attn.shape[1]
    if Hs > Ht:
        raise ValueError(
            f"shd_loss needs Hs <= Ht: student_attn {tuple(student_attn.shape)} has more heads than "
            f"teacher_attn {tuple(teacher_attn.shape)}"
        )
    qmask = check_mask(query_mask, teacher_attn, (0, 2))
    kmask = check_mask(key_mask, teacher_attn, (0, 3), name="key_mask")
    with no_autocast(teacher_attn.device.type):
        t, s = prepare_maps(teacher_attn, student_attn, qmask)
        merged, coef = shd_merge(t, s, granularity=alpha_granularity)
        row = softened_row_kl(soften(merged, temperature, kmask, eps), soften(s, temperature, kmask, eps), kmask)
        loss = masked_row_mean(row, qmask).sum(1).mean()
        weights = _mean_coefficients(coef, qmask).transpose(1, 2)  # (B, Ht, Hs)
    return (loss, weights) if return_weights else loss


def shd_map_coefficients(blocks: RowBlocks, den_eps: float = 1e-12) -> Tensor:
    """The per-map merge coefficients (B, Hs, Ht) of ``granularity="map"``, from blocks of query rows: one
    pass over the blocks per tree level, without gradient (alpha is a constant of the target).

    Each coefficient ``alpha = <S_j - y, x - y> / |x - y|^2`` is a sum over the whole map, and the merged maps
    of a level depend on the alphas of the levels below. The merged maps are linear in the teacher heads,
    ``x = c_x T`` with coefficients ``c`` (B, Hs, width, Ht); level by level, for the pairs (x, y) = (even, odd)
    slots, ``d = (c_x - c_y) T``, ``den = Σ |d|²`` and ``num = Σ <S_j - y, d>`` over all rows (blocks),
    ``alpha = clamp(num / den, 0, 1)`` (0.5 where ``den <= 1e-12``, 1 where y is an empty slot), ``c <- alpha c_x
    + (1 - alpha) c_y`` -- directly on the differences (no expanded Gram form, so no cancellation when two
    heads are alike). As :func:`shd_merge` on whole maps.
    """
    B, Ht, Hs = blocks.B, blocks.Ht, blocks.Hs
    index, valid = shd_layout(Ht, Hs, blocks.device)
    coef = torch.nn.functional.one_hot(index.clamp_min(0), Ht).to(blocks.dtype) * valid[..., None]
    coef = coef.expand(B, Hs, -1, Ht).contiguous()  # (B, Hs, width, Ht)
    while coef.shape[2] > 1:
        cx, cy = coef[:, :, 0::2], coef[:, :, 1::2]
        half = cx.shape[2]
        cd, cyf = (cx - cy).reshape(B, Hs * half, Ht), cy.reshape(B, Hs * half, Ht)

        def fn(rows: slice, cd=cd, cyf=cyf, half=half) -> tuple[Tensor, Tensor]:
            t = blocks.teacher(rows).reshape(B, Ht, -1)
            s = blocks.student(rows).reshape(B, Hs, 1, -1)
            d = torch.bmm(cd, t)
            y = torch.bmm(cyf, t).view(B, Hs, half, -1)
            return d.square().sum(-1), ((s - y) * d.view(B, Hs, half, -1)).sum(-1).view(B, -1)

        den, num = (x.view(B, Hs, half) for x in blocks.sum(fn, grad=False))
        alpha = torch.where(den > den_eps, num / den.clamp_min(den_eps), torch.full_like(den, 0.5)).clamp(0, 1)
        alpha = torch.where(valid[None, :, 1::2], alpha, torch.ones_like(alpha))
        a = alpha[..., None]
        coef = a * cx + (1 - a) * cy
        valid = valid[:, 0::2]
    return coef[:, :, 0]
