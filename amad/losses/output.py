"""Output (logit) distillation, the ``beta`` term of the full objective (method.md section 4)."""

from __future__ import annotations

import torch
from torch import Tensor

from amad.losses._common import check_mask, check_pair, check_positive, compute_dtype, no_autocast


def output_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Token-level KD: ``tau^2 KL(softmax(z_T / tau) || softmax(z_S / tau))``, mean over real tokens.

    Args:
        student_logits: (B, T, V) student logits (any leading dims work: (..., V)).
        teacher_logits: (B, T, V) teacher logits on the same decoder inputs. Detached.
        mask: (B, T) bool, True for real target positions (``labels != -100``); None = all real.
        temperature: tau > 0.

    Returns:
        Scalar: ``tau^2 * sum over real positions of KL / max(#real positions, 1)`` -- the mean over
        all real tokens of the batch (a token-level mean, not a per-example mean), float32 at least.
        Vocabulary entries where the teacher has probability 0 contribute 0. A batch without a real
        position gives 0.

    Raises:
        ValueError: shape/dtype/device mismatch (naming both shapes), bad mask, tau <= 0.
    """
    check_positive("temperature", temperature)
    if isinstance(student_logits, Tensor) and student_logits.dim() < 1:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} must be (..., V)")
    rank = student_logits.dim() if isinstance(student_logits, Tensor) else -1
    check_pair(
        teacher_logits,
        student_logits,
        rank=rank,
        match_dims=range(max(rank, 0)),
        names=("teacher_logits", "student_logits"),
        layout="(B, T, V)",
    )
    lead = tuple(range(student_logits.dim() - 1))
    m = check_mask(mask, student_logits, lead, name="mask", ref_name="student_logits")
    dtype = compute_dtype(student_logits)
    with no_autocast(student_logits.device.type):
        lt = torch.log_softmax(teacher_logits.detach().to(dtype) / temperature, dim=-1)
        ls = torch.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
        pt = lt.exp()
        kl = torch.where(pt > 0, pt * (lt - ls), torch.zeros((), dtype=dtype, device=pt.device)).sum(-1)
        if m is None:
            total, count = kl.sum(), kl.numel()
            return kl.sum() * 0 if count == 0 else total / count * temperature**2
        total = torch.where(m, kl, torch.zeros((), dtype=dtype, device=kl.device)).sum()
        return total / m.sum().clamp_min(1).to(dtype) * temperature**2
