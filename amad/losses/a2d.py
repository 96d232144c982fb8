"""Align-to-Distill (A2D): a learned 1x1 convolution maps the student's heads onto the teacher's.

Jin et al., "Align-to-Distill: Trainable Attention Alignment for Knowledge Distillation in Neural
Machine Translation", LREC-COLING 2024 (code: github.com/ncsoft/Align-to-Distill). The Attention
Alignment Module (AAM) is ``nn.Conv2d(C_s, C_t, kernel_size=1)`` over the stacked student maps; each
of its C_t output maps is compared with one teacher map by KL.

Differences from the public code, all ours:

* The code stacks the heads of *all* layers (C = layers x heads) into one AAM; our interface is one
  (teacher layer, student layer) pair at a time, so the AAM maps Hs -> Ht heads of one layer. Passing
  maps concatenated over layers along the head axis (and ``teacher_heads``/``student_heads`` = the
  totals) reproduces the code's all-layer alignment.
* The code applies ``log_softmax`` to both the AAM output and the teacher map flattened over the whole
  (Q x K) map and sums the KL; we apply it per query row over the real keys (so query and key masks
  work as for the other methods) and reduce as AMAD does. With ``teacher_as_logits=True`` (default,
  as the code) the teacher map goes through the same softmax (its values act as logits); with False
  the teacher's probabilities are the target directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amad.losses._common import check_maps, check_mask, compute_dtype, masked_row_mean, no_autocast, prepare_maps


class A2DLoss(nn.Module):
    """A2D attention loss with its trainable aligner (trained with the student, not exported with it).

    Args:
        teacher_heads: Ht (output channels of the 1x1 convolution).
        student_heads: Hs (input channels).
        teacher_as_logits: put the teacher map through the row softmax too (the public code's choice);
            False uses the teacher's probabilities as the target (0 log 0 = 0).

    Shapes:
        forward(teacher_attn (B, Ht, Q, K), student_attn (B, Hs, Q, K), query_mask (B, Q) | None,
        key_mask (B, K) | None) -> (scalar loss, weights (B, Ht, Hs)): the loss is, per example, the
        sum over teacher heads of the mean over valid rows of ``KL(p_T row || softmax(aligned row))``
        over real keys, ``aligned = Conv1x1(student)``; mean over the batch. The weights are the 1x1
        kernel (Ht, Hs) repeated over the batch (not normalised; may be negative).
    """

    def __init__(self, teacher_heads: int, student_heads: int, *, teacher_as_logits: bool = True) -> None:
        super().__init__()
        self.aligner = nn.Conv2d(student_heads, teacher_heads, kernel_size=1)
        self.teacher_as_logits = teacher_as_logits

    def align(self, student: Tensor) -> Tensor:
        """(B, Hs, Q, K) -> (B, Ht, Q, K) with the 1x1 convolution, in the dtype of ``student``."""
        w, b = self.aligner.weight.to(student.dtype), self.aligner.bias.to(student.dtype)
        return F.conv2d(student, w, b)

    def row_kl(self, teacher: Tensor, student: Tensor, key_mask: Tensor | None) -> Tensor:
        """Per head and query row ``KL(p_T row || softmax(aligned row))`` over real keys: (B, Ht, r, K) teacher
        and (B, Hs, r, K) student maps (or blocks of their rows; padded rows zeroed) -> (B, Ht, r)."""
        fill = torch.finfo(teacher.dtype).min
        aligned = self.align(student)  # 1x1 convolution over heads, within each row
        keys = None if key_mask is None else key_mask[:, None, None, :]
        if keys is not None:
            aligned = aligned.masked_fill(~keys, fill)
        ls = torch.log_softmax(aligned, dim=-1)
        if self.teacher_as_logits:
            lt = torch.log_softmax(teacher if keys is None else teacher.masked_fill(~keys, fill), dim=-1)
            kl = lt.exp() * (lt - ls)
        else:
            kl = torch.xlogy(teacher, teacher) - teacher * ls
        if keys is not None:
            kl = torch.where(keys, kl, torch.zeros((), dtype=kl.dtype, device=kl.device))
        return kl.sum(-1)

    def forward(
        self,
        teacher_attn: Tensor,
        student_attn: Tensor,
        query_mask: Tensor | None = None,
        key_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        check_maps(teacher_attn, student_attn)
        Ht, Hs = self.aligner.out_channels, self.aligner.in_channels
        if teacher_attn.shape[1] != Ht or student_attn.shape[1] != Hs:
            raise ValueError(
                f"A2DLoss aligns {Hs} student heads to {Ht} teacher heads, got teacher_attn "
                f"{tuple(teacher_attn.shape)} and student_attn {tuple(student_attn.shape)}"
            )
        qmask = check_mask(query_mask, teacher_attn, (0, 2))
        kmask = check_mask(key_mask, teacher_attn, (0, 3), name="key_mask")
        dtype = compute_dtype(teacher_attn)
        with no_autocast(teacher_attn.device.type):
            t, s = prepare_maps(teacher_attn, student_attn, qmask)
            loss = masked_row_mean(self.row_kl(t, s, kmask), qmask).sum(1).mean()
            weights = self.aligner.weight[:, :, 0, 0].to(dtype).expand(t.shape[0], Ht, Hs)
        return loss, weights
