"""A fused forward/backward of the AMAD KL variant (Eq. 2, 3, 9), the default and hot path.

Autograd through cosine -> softmax -> mix -> clamp -> log builds a dozen map-sized intermediates
(every one a fresh buffer: on CPU the page faults of a new 15 MB buffer cost as much as the arithmetic).
This ``autograd.Function`` computes the same value and the same gradient with two map-sized buffers
in the forward (the mixture, clamped in place and kept for the backward, and ``t log(t / mix)``) and
two in the backward (dL/dmix, dL/dS), using in-place ``baddbmm_``/``addcmul_`` for the cosine's
gradient. The tests hold it to the loop reference
(value and gradient, float64).

Gradient (per example b, with r_b = dL/dper_example_b / #valid rows, masked rows already zero):
    G = dL/dmix = -r_b t / max(mix, eps)   (0 where mix < eps)
    dL/da = G S^T;   dL/dS += a^T G
    dL/dw = a * (dL/da - sum_j a dL/da) / tau                      (softmax over student heads)
    w_ij = t_i.s_j / (|t_i| c_j),  c_j = max(|s_j|, 1e-12)
    dL/ds_j += sum_i dL/dw_ij t_i / (|t_i| c_j)  -  [sum_i dL/dw_ij w_ij] s_j / (c_j |s_j|)
    (the last term only where |s_j| >= 1e-12, as ``clamp_min`` passes no gradient below it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from amad.losses._common import NORM_EPS


def _below(x: Tensor, eps: float) -> Tensor | None:
    """Mask of ``x < eps``; on CPU only built when needed (one cheap reduction, no host sync on GPU)."""
    if x.device.type != "cpu":
        return x < eps
    return (x < eps) if x.numel() and bool(torch.amin(x) < eps) else None


class AMADKLFunction(torch.autograd.Function):
    """``(tf, sf, inv_rows, temperature, detach_weights, eps) -> (per_example (B,), a (B, Ht, Hs))``.

    ``tf`` (B, Ht, n) and ``sf`` (B, Hs, n) are the masked, flattened maps (``tf`` a constant);
    ``inv_rows`` (B,) is ``1 / max(#valid rows, 1)``. ``a`` is returned without gradient.
    """

    @staticmethod
    def forward(ctx, tf: Tensor, sf: Tensor, inv_rows: Tensor, temperature: float, detach_weights: bool,
                eps: float) -> tuple[Tensor, Tensor]:
        nt = torch.linalg.vector_norm(tf, dim=-1).clamp_min(NORM_EPS)  # (B, Ht)
        ns = torch.linalg.vector_norm(sf, dim=-1)  # (B, Hs), unclamped
        c = ns.clamp_min(NORM_EPS)
        w = torch.bmm(tf, sf.transpose(1, 2)).div_(nt.unsqueeze(-1) * c.unsqueeze(-2))  # Eq. 2
        a = torch.softmax(w / temperature, dim=-1)  # Eq. 3
        mix = torch.bmm(a, sf)  # Eq. 9 mixture, (B, Ht, n)
        below = _below(mix, eps)
        clamped = mix.clamp_min_(eps)  # in place: the raw mixture is not needed any more
        # sum_k t log(t / max(mix, eps)) with 0 log 0 = 0: t = 0 gives 0 * log(tiny / mix) = 0
        tiny = torch.finfo(tf.dtype).tiny
        ratio = tf.clamp_min(tiny).div_(clamped).clamp_min_(tiny).log_().mul_(tf)
        per_example = ratio.sum(dim=(1, 2)) * inv_rows
        del ratio
        ctx.save_for_backward(tf, sf, a, w, nt, c, ns, clamped, below, inv_rows)
        ctx.temperature, ctx.detach_weights, ctx.eps = temperature, detach_weights, eps
        ctx.mark_non_differentiable(a)
        return per_example, a

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor, _grad_a: Tensor | None):
        tf, sf, a, w, nt, c, ns, clamped, below, inv_rows = ctx.saved_tensors
        G = torch.div(tf, clamped)
        if below is not None:
            G.masked_fill_(below, 0)
        G.mul_((-grad * inv_rows)[:, None, None])  # dL/dmix
        grad_sf = torch.bmm(a.transpose(1, 2), G)
        if not ctx.detach_weights:
            grad_a = torch.bmm(G, sf.transpose(1, 2))
            grad_w = a * (grad_a - (a * grad_a).sum(-1, keepdim=True)) / ctx.temperature
            grad_sf.baddbmm_((grad_w / (nt.unsqueeze(-1) * c.unsqueeze(-2))).transpose(1, 2), tf)
            coef = -(grad_w * w).sum(1) / c  # (B, Hs)
            coef = torch.where(ns >= NORM_EPS, coef / ns.clamp_min(NORM_EPS), torch.zeros_like(coef))
            grad_sf.addcmul_(sf, coef.unsqueeze(-1))
        return None, grad_sf, None, None, None, None
