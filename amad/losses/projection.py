"""AMAD with a learned projection of the student maps (Eq. 10-11 of the AMAD paper).

``S~ = ReLU(S W^T + b)`` with ``W`` (n x n) and ``b`` (n) over the flattened maps (n = Q K), then the
KL variant of Eq. 9 with ``S~`` in place of ``S``. ``W`` has n^2 parameters: only practical for
short maps (n = 197^2 for ViT-B/16 would be 1.5 G parameters). The module is trained with the student
and is not part of the exported student.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from amad.losses._common import (
    check_maps,
    check_mask,
    check_positive,
    masked_row_mean,
    no_autocast,
    prepare_maps,
    row_kl,
)
from amad.losses.attention import amad_weights


class AMADProjectionLoss(LazyModuleMixin, nn.Module):
    """AMAD "proj" variant: a learned affine map + ReLU of the student maps, then KL as Eq. 9.

    Args:
        n: flattened map size Q*K. ``None`` = sized lazily on the first forward (then the module
            must see one batch before the optimizer is built, as for any ``torch.nn.Lazy*``
            module; pass ``n`` when the site's Q and K are fixed and known).
        temperature: tau of the weights ``softmax(cos / tau)`` (ours; the paper has none).
        detach_weights: stop the gradient through the weights.
        normalize_rows: renormalise each query row of ``S~`` to sum 1 over keys (ours, default).
            Without it ``S~`` is not a distribution and ``-t log mix`` is unbounded below: the
            projection could lower the loss by scaling up, so the paper-literal ``False`` is an
            option, not the default.
        eps: floor inside the log and of the row sums.

    Initialisation (ours): ``W = I``, ``b = 0``, so at step 0 ``S~ = S`` and the loss equals
    ``amad_loss(variant="kl")``.

    Shapes:
        forward(teacher_attn (B, Ht, Q, K), student_attn (B, Hs, Q, K), query_mask (B, Q) | None)
        -> (scalar loss, weights (B, Ht, Hs)). Reduction as ``amad_loss(variant="kl")``: per
        example, sum over teacher heads of the mean over valid rows of the row KL; batch mean.
        Padded query rows are zeroed before the projection and again after it.
    """

    cls_to_become = None

    def __init__(
        self,
        n: int | None = None,
        *,
        temperature: float = 1.0,
        detach_weights: bool = False,
        normalize_rows: bool = True,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        check_positive("temperature", temperature)
        self.temperature = temperature
        self.detach_weights = detach_weights
        self.normalize_rows = normalize_rows
        self.eps = eps
        if n is None:
            self.weight = UninitializedParameter()
            self.bias = UninitializedParameter()
        else:
            if n < 1:
                raise ValueError(f"n must be >= 1, got {n}")
            self.weight = nn.Parameter(torch.eye(n))
            self.bias = nn.Parameter(torch.zeros(n))

    @property
    def n(self) -> int | None:
        return None if isinstance(self.weight, UninitializedParameter) else self.weight.shape[0]

    def initialize_parameters(self, teacher_attn: Tensor, student_attn: Tensor, *args, **kwargs) -> None:
        """Lazy sizing hook: n = Q*K of the first batch."""
        if self.has_uninitialized_params():
            check_maps(teacher_attn, student_attn)
            n = teacher_attn.shape[-2] * teacher_attn.shape[-1]
            with torch.no_grad():
                self.weight.materialize((n, n), device=student_attn.device, dtype=torch.float32)
                self.bias.materialize((n,), device=student_attn.device, dtype=torch.float32)
                self.weight.copy_(torch.eye(n))
                self.bias.zero_()

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params():
            with torch.no_grad():
                self.weight.copy_(torch.eye(self.weight.shape[0]))
                self.bias.zero_()

    def project(self, sf: Tensor, mask: Tensor | None, q: int) -> Tensor:
        """Eq. 10: (B, Hs, n) -> ReLU(S W^T + b), padded rows re-zeroed, rows optionally renormalised."""
        w, b = self.weight.to(sf.dtype), self.bias.to(sf.dtype)
        st = torch.relu(torch.matmul(sf, w.t()) + b)
        B, H, n = st.shape
        st = st.view(B, H, q, n // q)
        if mask is not None:
            st = torch.where(mask[:, None, :, None], st, torch.zeros((), dtype=st.dtype, device=st.device))
        if self.normalize_rows:
            st = st / st.sum(-1, keepdim=True).clamp_min(self.eps)
        return st

    def forward(
        self, teacher_attn: Tensor, student_attn: Tensor, query_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        check_maps(teacher_attn, student_attn)
        mask = check_mask(query_mask, teacher_attn, (0, 2))
        B, Ht, Q, K = teacher_attn.shape
        if Q * K != self.n:
            raise ValueError(
                f"AMADProjectionLoss was sized for n = {self.n} but teacher_attn {tuple(teacher_attn.shape)} "
                f"and student_attn {tuple(student_attn.shape)} give Q*K = {Q * K}; the projection needs "
                "fixed-length maps (pad text sites to a fixed length)"
            )
        with no_autocast(teacher_attn.device.type):
            t, s = prepare_maps(teacher_attn, student_attn, mask)
            Hs = s.shape[1]
            st = self.project(s.reshape(B, Hs, Q * K), mask, Q)  # (B, Hs, Q, K)
            tf, stf = t.reshape(B, Ht, Q * K), st.reshape(B, Hs, Q * K)
            a = amad_weights(tf, stf, self.temperature)
            aw = a.detach() if self.detach_weights else a
            mix = torch.bmm(aw, stf).view(B, Ht, Q, K)
            loss = masked_row_mean(row_kl(t, mix, self.eps), mask).sum(1).mean()
        return loss, a
