"""AMAD (Attention Map Alignment Distillation) and the two head-count baselines.

Zhao et al., "No Head Left Behind - Multi-Head Alignment Distillation for Transformers", AAAI 2024.
Equation numbers refer to that paper; the exact contract (masking, reductions, defaults) is
``docs/method.md`` section 3 and ``docs/losses.md``.

All three functions take post-softmax maps ``teacher_attn`` (B, Ht, Q, K) and ``student_attn``
(B, Hs, Q, K) of the same site on the same inputs, and a ``query_mask`` (B, Q) bool (True = real
query row; None = all real). Padded query rows are zeroed in both maps first; padded key columns
already carry ~0 probability and nothing is renormalised. The teacher is detached. Math is float32
(float64 stays float64), also under bf16 autocast. Everything is vectorised: no Python loop over
batch, heads or rows, and memory stays O(B (Ht + Hs) Q K).
"""

from __future__ import annotations

import torch
from torch import Tensor

from amad.losses._common import (
    check_choice,
    check_maps,
    check_mask,
    check_positive,
    compute_dtype,
    cosine_matrix,
    masked_row_mean,
    no_autocast,
    prepare_maps,
    row_kl,
    sqrt_clamped,
)
from amad.losses._fused import AMADKLFunction

AMAD_VARIANTS = ("kl", "l2", "token")
ROW_LOSS_KINDS = ("kl", "mse")


def amad_loss(
    teacher_attn: Tensor,
    student_attn: Tensor,
    *,
    query_mask: Tensor | None = None,
    variant: str = "kl",
    temperature: float = 1.0,
    detach_weights: bool = False,
    eps: float = 1e-8,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """AMAD loss: every teacher head is matched to a cosine-weighted mix of all student heads.

    Weights (Eq. 2-3): ``a_ij = softmax_j(cos(t_i, s_j) / temperature)`` over the student heads,
    with t_i, s_j the masked, flattened maps (n = Q K) and norms clamped at 1e-12.

    Args:
        teacher_attn: (B, Ht, Q, K) teacher attention probabilities (Eq. 1). Detached.
        student_attn: (B, Hs, Q, K) student attention probabilities, same B, Q, K and dtype.
        query_mask: (B, Q) bool, True for real query rows; None = all rows real.
        variant: ``"kl"`` (Eq. 9, default), ``"l2"`` (Eq. 4-5) or ``"token"`` (Eq. 12).
        temperature: tau of ``softmax(w / tau)`` in Eq. 3 (ours; the paper has none, i.e. 1).
        detach_weights: stop the gradient through ``a`` (it still flows through the mixed maps).
        eps: floor of the mixed probabilities inside the log (``log(max(mix, eps))``).
        return_weights: also return the weights.

    Returns:
        Scalar loss, float32 (float64 for float64 inputs); with ``return_weights`` also
        ``a`` (B, Ht, Hs), every row summing to 1 (for inspection: it carries no gradient for
        "kl" and "token", whose forward/backward is fused, see ``amad.losses._fused``). Per example:

        * ``"kl"``: for each teacher head the mean over valid query rows of
          ``KL(t_row || mix_row)``, ``mix_i = sum_j a_ij A^S_j`` of the raw student maps
          (``sum_k t log t - t log max(mix, eps)``, 0 log 0 = 0); summed over teacher heads (Eq. 5).
        * ``"l2"``: ``sum_i || t_i/|t_i| - sum_j a_ij s_j/|s_j| ||^2`` over the flattened maps.
        * ``"token"``: for each valid query row l, weights from the row cosine
          ``a^l_ij = softmax_j(cos(T_l,i, S_l,j)/tau)``, ``sum_i KL(T_l,i || sum_j a^l_ij S_l,j)``;
          averaged over valid rows. The returned weights are ``a^l`` averaged over valid rows
          (uniform for an example without a valid row).

        Then the mean over the batch. An example with no valid row contributes 0 and still counts.

    Raises:
        ValueError: unknown variant, temperature <= 0, or shape/dtype/device/mask mismatch
            (the message names both shapes).
    """
    check_choice("variant", variant, AMAD_VARIANTS)
    check_positive("temperature", temperature)
    check_maps(teacher_attn, student_attn)
    mask = check_mask(query_mask, teacher_attn, (0, 2))
    with no_autocast(teacher_attn.device.type):
        if variant == "kl":  # the fused path masks and upcasts the raw maps itself
            per_example, weights = _amad_kl(teacher_attn.detach(), student_attn, mask, temperature, detach_weights, eps)
        else:
            t, s = prepare_maps(teacher_attn, student_attn, mask)
            fn = _amad_token if variant == "token" else _amad_l2
            per_example, weights = fn(t, s, mask, temperature, detach_weights, eps)
        loss = per_example.mean()
    return (loss, weights) if return_weights else loss


def amad_weights(tf: Tensor, sf: Tensor, temperature: float = 1.0) -> Tensor:
    """Eq. 2-3 on flattened maps: (B, Ht, n), (B, Hs, n) -> a (B, Ht, Hs), rows sum to 1."""
    return torch.softmax(cosine_matrix(tf, sf) / temperature, dim=-1)


def amad_mixture(
    teacher_attn: Tensor,
    student_attn: Tensor,
    *,
    query_mask: Tensor | None = None,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """The mixed student maps of Eq. 9 and their weights, e.g. to plot what a teacher head is fit to.

    Args:
        teacher_attn: (B, Ht, Q, K); student_attn: (B, Hs, Q, K); query_mask: (B, Q) bool or None.
        temperature: as in :func:`amad_loss`.

    Returns:
        ``mix`` (B, Ht, Q, K) with ``mix_i = sum_j a_ij A^S_j`` (padded rows 0; every valid row of a
        distribution-valued student sums to 1 over keys), and ``a`` (B, Ht, Hs).
    """
    check_positive("temperature", temperature)
    check_maps(teacher_attn, student_attn)
    mask = check_mask(query_mask, teacher_attn, (0, 2))
    with no_autocast(teacher_attn.device.type):
        t, s = prepare_maps(teacher_attn, student_attn, mask)
        return _mix(t, s, temperature, detach=False)


def _mix(t: Tensor, s: Tensor, temperature: float, detach: bool) -> tuple[Tensor, Tensor]:
    B, Ht, Q, K = t.shape
    sf = s.reshape(B, s.shape[1], Q * K)
    a = amad_weights(t.reshape(B, Ht, Q * K), sf, temperature)
    aw = a.detach() if detach else a
    return torch.bmm(aw, sf).view(B, Ht, Q, K), a  # Eq. 9: raw student maps, rows stay distributions


def _amad_kl(
    t: Tensor, s: Tensor, mask: Tensor | None, temperature: float, detach: bool, eps: float
) -> tuple[Tensor, Tensor]:
    # fused forward/backward of Eq. 2, 3, 9 on the raw maps (see amad.losses._fused); on an
    # accelerator the backward rebuilds the mixture instead of keeping it (memory binds there)
    B, Ht, Q, K = t.shape
    n_rows = mask.sum(-1) if mask is not None else torch.full((B,), Q, device=t.device)
    inv_rows = 1.0 / n_rows.clamp_min(1).to(compute_dtype(t))
    return AMADKLFunction.apply(
        t.reshape(B, Ht, Q * K),
        s.reshape(B, s.shape[1], Q * K),
        inv_rows,
        temperature,
        detach,
        eps,
        mask,
        _recompute(t),
    )


def _recompute(t: Tensor) -> bool:
    """Whether the fused KL backward rebuilds the mixture instead of keeping it: on accelerators."""
    return t.device.type != "cpu"


def _amad_l2(
    t: Tensor, s: Tensor, mask: Tensor | None, temperature: float, detach: bool, eps: float
) -> tuple[Tensor, Tensor]:
    B, Ht, Q, K = t.shape
    stats = amad_l2_stats(t.reshape(B, Ht, Q * K), s.reshape(B, s.shape[1], Q * K))
    return amad_l2_from_stats(*stats, temperature, detach)


def amad_l2_stats(tf: Tensor, sf: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The sums "l2" needs of (B, Ht, n) / (B, Hs, n) flattened maps (or of a block of their rows: they add
    up over blocks): ``D = t sᵀ`` (B, Ht, Hs), ``|t|²`` (B, Ht) and ``s sᵀ`` (B, Hs, Hs)."""
    return (
        torch.bmm(tf, sf.transpose(1, 2)),
        torch.linalg.vector_norm(tf, dim=-1).square(),
        torch.bmm(sf, sf.transpose(1, 2)),
    )


def amad_l2_from_stats(d: Tensor, tt: Tensor, sst: Tensor, temperature: float, detach: bool) -> tuple[Tensor, Tensor]:
    """ "l2" (Eq. 4-5) from :func:`amad_l2_stats`: per-example loss (B,) and the weights a (B, Ht, Hs).

    Expanded on the unit-normalised maps t^, s^: ``sum_i |t^_i - sum_j a_ij s^_j|^2 = sum_i (|t^_i|^2 -
    2 a_i.w_i + a_i G a_i^T)``, ``w = t^ s^T``, ``G = s^ s^T``: only (Ht x Hs) and (Hs x Hs) matrices, no
    mixture map at all, and everything a sum over rows.
    """
    nt = sqrt_clamped(tt)
    ns = sqrt_clamped(torch.diagonal(sst, dim1=1, dim2=2))  # |s|² is the diagonal of s sᵀ
    w = d / (nt.unsqueeze(-1) * ns.unsqueeze(-2))  # cosines, Eq. 2
    gram = sst / (ns.unsqueeze(-1) * ns.unsqueeze(-2))
    a = torch.softmax(w / temperature, dim=-1)
    aw = a.detach() if detach else a
    per_head = tt / nt.square() - 2 * (aw * w).sum(-1) + (torch.bmm(aw, gram) * aw).sum(-1)
    return per_head.sum(-1).clamp_min(0), a  # clamp: rounding of an exact match can dip below 0


def _amad_token(
    t: Tensor, s: Tensor, mask: Tensor | None, temperature: float, detach: bool, eps: float
) -> tuple[Tensor, Tensor]:
    B, Q = t.shape[0], t.shape[2]
    per_row, a = amad_token_rows(t, s, temperature, detach, eps)
    per_example = masked_row_mean(per_row.view(B, 1, Q), mask).squeeze(1)
    if mask is None:
        weights = a.mean(1)
    else:
        n_valid = mask.sum(-1)
        m = mask[:, :, None, None]
        summed = torch.where(m, a, torch.zeros((), dtype=a.dtype, device=a.device)).sum(1)
        weights = torch.where(
            (n_valid > 0)[:, None, None], summed / n_valid.clamp_min(1)[:, None, None].to(a.dtype), a.mean(1)
        )
    return per_example, weights


def amad_token_rows(t: Tensor, s: Tensor, temperature: float, detach: bool, eps: float) -> tuple[Tensor, Tensor]:
    """Eq. 12 on (B, Ht, r, K) / (B, Hs, r, K) maps (padded rows zeroed): per row l its own AMAD-KL problem,
    T_l (Ht, K) against S_l (Hs, K), so the fused KL function runs on B*r one-row "examples" (a zero row
    gives 0). Returns the per-row loss (B, r), summed over teacher heads, and the weights (B, r, Ht, Hs)."""
    B, Ht, r, K = t.shape
    Hs = s.shape[1]
    tq = t.transpose(1, 2).reshape(B * r, Ht, K)
    sq = s.transpose(1, 2).reshape(B * r, Hs, K)
    ones = torch.ones(B * r, dtype=t.dtype, device=t.device)
    per_row, a = AMADKLFunction.apply(tq, sq, ones, temperature, detach, eps, None, False)
    return per_row.view(B, r), a.view(B, r, Ht, Hs)


def row_loss(t: Tensor, s: Tensor, kind: str, eps: float) -> Tensor:
    """The row loss of one-to-one and head-mean: (B, H, r, K) maps -> (B, H, r), ``kind`` "kl" (row KL,
    ``sum_k t log t - t log max(s, eps)``) or "mse" (``sum_k (t - s)^2``)."""
    return row_kl(t, s, eps) if kind == "kl" else (t - s).pow(2).sum(-1)


def one_to_one_loss(
    teacher_attn: Tensor,
    student_attn: Tensor,
    *,
    query_mask: Tensor | None = None,
    kind: str = "kl",
    eps: float = 1e-8,
) -> Tensor:
    """One-to-one attention distillation (TinyBERT / MiniLM style): teacher head i <-> student head i.

    Only the first Hs teacher heads are used; the other Ht - Hs are discarded, as the baseline does.

    Args:
        teacher_attn: (B, Ht, Q, K) teacher attention probabilities. Detached.
        student_attn: (B, Hs, Q, K) student attention probabilities, Hs <= Ht.
        query_mask: (B, Q) bool, True for real query rows; None = all rows real.
        kind: ``"kl"`` (row KL, ``sum_k t log t - t log max(s, eps)``) or ``"mse"``
            (``sum_k (t - s)^2``).
        eps: floor of the student probabilities inside the log.

    Returns:
        Scalar loss: per example, sum over the Hs head pairs of the mean over valid query rows of the
        row loss; mean over the batch.

    Raises:
        ValueError: Hs > Ht, unknown kind, or a shape/dtype/device/mask mismatch.
    """
    check_choice("kind", kind, ROW_LOSS_KINDS)
    check_maps(teacher_attn, student_attn)
    Ht, Hs = teacher_attn.shape[1], student_attn.shape[1]
    if Hs > Ht:
        raise ValueError(
            f"one_to_one_loss needs Hs <= Ht, but student_attn {tuple(student_attn.shape)} has {Hs} heads "
            f"and teacher_attn {tuple(teacher_attn.shape)} has {Ht}: one-to-one pairing cannot teach the "
            "extra student heads (use amad_loss or head_mean_loss)"
        )
    mask = check_mask(query_mask, teacher_attn, (0, 2))
    with no_autocast(teacher_attn.device.type):
        t, s = prepare_maps(teacher_attn[:, :Hs], student_attn, mask)
        return masked_row_mean(row_loss(t, s, kind, eps), mask).sum(1).mean()


def head_mean_loss(
    teacher_attn: Tensor,
    student_attn: Tensor,
    *,
    query_mask: Tensor | None = None,
    kind: str = "kl",
    eps: float = 1e-8,
) -> Tensor:
    """Head-averaged attention distillation (TextBrewer ``attention_*_mean`` style).

    Averages the heads of each map, ``t = mean_i A^T_i``, ``s = mean_j A^S_j`` (both (B, Q, K)),
    so the head counts need not match.

    Args:
        teacher_attn: (B, Ht, Q, K) teacher attention probabilities. Detached.
        student_attn: (B, Hs, Q, K) student attention probabilities.
        query_mask: (B, Q) bool, True for real query rows; None = all rows real.
        kind: ``"kl"`` or ``"mse"`` row loss, as in :func:`one_to_one_loss`.
        eps: floor of the student probabilities inside the log.

    Returns:
        Scalar loss: per example the mean over valid query rows of the row loss between the
        head-averaged maps; mean over the batch.
    """
    check_choice("kind", kind, ROW_LOSS_KINDS)
    check_maps(teacher_attn, student_attn)
    mask = check_mask(query_mask, teacher_attn, (0, 2))
    with no_autocast(teacher_attn.device.type):
        t, s = prepare_maps(teacher_attn, student_attn, mask)
        t, s = t.mean(1, keepdim=True), s.mean(1, keepdim=True)
        return masked_row_mean(row_loss(t, s, kind, eps), mask).squeeze(1).mean()
