"""A fused forward/backward of the AMAD KL variant (Eq. 2, 3, 9), the default and hot path.

Autograd through mask -> cosine -> softmax -> mix -> clamp -> log builds a dozen map-sized
intermediates (every one a fresh buffer: on CPU the page faults of a new 15 MB buffer cost as much as
the arithmetic). This ``autograd.Function`` computes the same value and the same gradient with few
map-sized passes:

* forward: the norms, ``w = T S^T`` (one GEMM), ``mix = a S`` (one GEMM, clamped in place),
  ``G = T / mix`` (in the mixture's buffer on CPU), ``T log max(G, tiny)`` (``clamp_min``, then
  ``log_``, ``mul_`` in place), summed;
* backward: ``G`` (kept on CPU, rebuilt on accelerators), two GEMMs and an in-place
  ``baddbmm_``/``addcmul_``; the per-example scale ``r_b`` multiplies the small ``a`` / ``dL/da``
  instead of the map-sized ``G``.

Inputs are the raw maps. Padded query rows are zeroed here, in plain copies without an autograd node
(autograd's ``where`` would add a map-sized zeros buffer and a masked pass to the backward): every
term of the gradient is then zero on those rows by itself, whatever the raw values there (NaN
included). The maths runs in float32 (float64 for float64 inputs) whatever the maps' dtype.

Two modes (``recompute``). CPU (False): the forward computes ``G = t / max(mix, eps)`` once, takes the
KL from it and keeps it for the backward (zeroed where the mixture is below the floor), so the backward
divides nothing; it keeps the upcast, masked maps and ``G`` (up to 2·|T| + |S| floats per layer pair
beyond the inputs). It runs over blocks of examples of about :data:`CHUNK_NUMEL` teacher-map elements,
so that a block's mixture, ``G`` and log stay in the core's cache between the four elementwise passes:
at the demo's vision maps (64 × 8 × 65 × 65) a block of 7 examples ran the forward in half the time of
one whole-batch pass, which reads and writes memory at every step (docs/performance.md).
Accelerators (True): only the raw inputs are kept (the teacher maps in their
own dtype, e.g. bf16, and the student maps autograd keeps anyway); the backward rebuilds the masked
maps and the mixture (one more GEMM). (Compiling the two elementwise steps with ``torch.compile`` was
measured slower on an H200, 1.71 against 1.38 step overhead at BLIP base shapes: docs/performance.md.)
The tests hold both modes to the float64 loop reference (value, gradient).

Gradient (per example b, with r_b = dL/dper_example_b / #valid rows):
    G = dL/dmix = -r_b t / max(mix, eps)   (0 where mix < eps; 0 on padded rows, where t = 0)
    dL/da = G S^T;   dL/dS += a^T G
    dL/dw = a * (dL/da - sum_j a dL/da) / tau                      (softmax over student heads)
    w_ij = t_i.s_j / (|t_i| c_j),  c_j = max(|s_j|, 1e-12)          (|s_j| over valid rows)
    dL/ds_j += sum_i dL/dw_ij t_i / (|t_i| c_j)  -  [sum_i dL/dw_ij w_ij] s_j / (c_j |s_j|)
    (the last term only where |s_j| >= 1e-12, as ``clamp_min`` passes no gradient below it),
    with s the student maps, padded rows zeroed.

:class:`AMADKLBlockHooks` is the same loss written on blocks of query rows (for maps rebuilt from queries
and keys, :mod:`amad.losses.qk`): the cosines need the whole maps, so pass 1 accumulates over blocks
``D = Σ_c T_c S_cᵀ`` (B, Ht, Hs), ``|t_i|²``, ``|s_j|²`` and the teacher's ``Σ t log t``; then ``w`` (Eq. 2) and
``a`` (Eq. 3) on these small tensors. Pass 2: per block ``Σ T_c log max(a S_c, eps)`` (Eq. 9: the mixture of
a block's rows needs only those rows and ``a``) and -- the loss being linear in its upstream gradient -- the
whole ``dCE/da = Σ_c G_c S_cᵀ``. The backward, per block: ``dL/dS_c = r aᵀ G_c + (dL/dD)ᵀ T_c +
(dL/d|s| / |s|) S_c`` (r = -upstream), with ``dL/dD``, ``dL/d|s|`` from ``dL/da = r dCE/da`` through the
softmax and the cosine.
"""

from __future__ import annotations

import torch
from torch import Tensor

from amad.losses._common import NORM_EPS, row_entropy_term, sqrt_clamped

#: CPU forward: examples are processed in blocks of about this many teacher-map elements (1 MiB of
#: float32: a block's few map-sized buffers fit a core's L2 cache)
CHUNK_NUMEL = 1 << 18


def _below(x: Tensor, eps: float) -> Tensor | None:
    """Mask of ``x <= eps``; on CPU only built when needed (one cheap reduction; no host sync on GPU).

    ``x`` is the mixture, raw or clamped at ``eps``: ``x <= eps`` marks where the raw mixture was below
    the floor (and the measure-zero ties ``mix == eps``), where ``clamp_min`` passes no gradient.
    """
    if x.device.type != "cpu":
        return x <= eps
    return (x <= eps) if x.numel() and bool(torch.amin(x) <= eps) else None


def _kl_sum(tf: Tensor, clamped: Tensor, tiny: float, inplace: bool) -> Tensor:
    """Per example ``sum_{h,k} t log max(t / clamped, tiny)``: (B, H, n) -> (B,), with ``clamped`` the
    mixture floored at eps. ``inplace``: compute in ``clamped``'s buffer (when the caller keeps no use
    for it), so the peak grows by no map-sized buffer."""
    r = torch.div(tf, clamped, out=clamped) if inplace else torch.div(tf, clamped)
    return r.clamp_min_(tiny).log_().mul_(tf).sum(dim=(1, 2))


def _kl_and_grad(tf: Tensor, sf: Tensor, a: Tensor, eps: float, tiny: float) -> tuple[Tensor, Tensor]:
    """CPU forward of the mixture, its KL and ``dL/dmix`` up to the per-example scale, by blocks of
    examples (module doc): returns per-example ``sum_{h,k} t log max(t / max(mix, eps), tiny)`` (B,) and
    ``G = t / max(mix, eps)``, zero where the mixture is below the floor (``clamp_min`` passes no
    gradient there)."""
    B, Ht, n = tf.shape
    G = torch.empty_like(tf)
    per_example = tf.new_empty(B)
    step = max(1, CHUNK_NUMEL // max(Ht * n, 1))
    for i in range(0, B, step):
        j = slice(i, i + step)
        g = torch.bmm(a[j], sf[j], out=G[j])  # Eq. 9 mixture, then G in the same buffer
        below = _below(g, eps)
        if below is not None:  # the floor changes nothing where no entry is at or below it
            g.clamp_min_(eps)
        torch.div(tf[j], g, out=g)
        per_example[j] = g.clamp_min(tiny).log_().mul_(tf[j]).sum(dim=(1, 2))
        if below is not None:
            g.masked_fill_(below, 0)
    return per_example, G


def _mix_grad(tf: Tensor, mix: Tensor, eps: float, inplace: bool) -> Tensor:
    """``dL/dmix`` up to the per-example scale: ``t / mix`` where ``mix > eps``, else 0 (the floor).

    ``mix`` may be raw or already floored at eps (``<= eps`` marks the same entries). ``inplace``:
    compute in ``mix``'s buffer and return it.
    """
    below = _below(mix, eps)
    G = torch.div(tf, mix, out=mix) if inplace else torch.div(tf, mix)
    return G if below is None else G.masked_fill_(below, 0)


def _masked(x: Tensor, row_mask: Tensor | None, dtype: torch.dtype) -> Tensor:
    """(B, H, n) maps in ``dtype`` with the padded query rows zeroed (``x`` itself when nothing to do)."""
    x = x.to(dtype)
    if row_mask is None:
        return x
    B, H, n = x.shape
    Q = row_mask.shape[1]
    zero = torch.zeros((), dtype=dtype, device=x.device)
    return torch.where(row_mask[:, None, :, None], x.view(B, H, Q, n // Q), zero).view(B, H, n)


class AMADKLFunction(torch.autograd.Function):
    """``(t, s, inv_rows, temperature, detach_weights, eps, row_mask, recompute) -> (per_example, a)``.

    Args (of ``apply``, positional):
        t: (B, Ht, n) flattened teacher maps, a constant (any floating dtype).
        s: (B, Hs, n) flattened student maps (any floating dtype; the gradient comes back in it).
        inv_rows: (B,) ``1 / max(#valid rows, 1)``.
        temperature, detach_weights, eps: as in :func:`amad.losses.amad_loss`.
        row_mask: (B, Q) bool with ``n = Q * K``, True for real query rows; None = all real.
        recompute: keep only the inputs for the backward and rebuild the rest there (module doc).

    Returns:
        ``per_example`` (B,) and ``a`` (B, Ht, Hs) (without gradient), in the compute dtype.
    """

    @staticmethod
    def forward(
        ctx,
        t: Tensor,
        s: Tensor,
        inv_rows: Tensor,
        temperature: float,
        detach_weights: bool,
        eps: float,
        row_mask: Tensor | None = None,
        recompute: bool = False,
    ) -> tuple[Tensor, Tensor]:
        dtype = torch.float64 if torch.float64 in (t.dtype, s.dtype) else torch.float32
        tf, sf = _masked(t, row_mask, dtype), _masked(s, row_mask, dtype)
        nt = torch.linalg.vector_norm(tf, dim=-1).clamp_min(NORM_EPS)  # (B, Ht)
        ns = torch.linalg.vector_norm(sf, dim=-1)  # (B, Hs), unclamped
        c = ns.clamp_min(NORM_EPS)
        w = torch.bmm(tf, sf.transpose(1, 2)).div_(nt.unsqueeze(-1) * c.unsqueeze(-2))  # Eq. 2
        a = torch.softmax(w / temperature, dim=-1)  # Eq. 3
        tiny = torch.finfo(dtype).tiny
        # sum_k t log(t / max(mix, eps)) with 0 log 0 = 0: t = 0 gives 0 * log(tiny) = 0
        if recompute:  # the backward rebuilds the mixture, so the KL may overwrite it
            clamped = torch.bmm(a, sf).clamp_min_(eps)  # Eq. 9 mixture, floored in place: (B, Ht, n)
            per_example = _kl_sum(tf, clamped, tiny, inplace=True) * inv_rows.to(dtype)
            ctx.save_for_backward(t, s, a, w, nt, c, ns, inv_rows, row_mask)
        else:
            per_example, G = _kl_and_grad(tf, sf, a, eps, tiny)
            per_example = per_example * inv_rows.to(dtype)
            ctx.save_for_backward(tf, sf, a, w, nt, c, ns, inv_rows, G)
        ctx.temperature, ctx.detach_weights, ctx.eps, ctx.recompute = temperature, detach_weights, eps, recompute
        ctx.s_dtype = s.dtype
        ctx.mark_non_differentiable(a)
        return per_example, a

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor, _grad_a: Tensor | None):
        if ctx.recompute:
            t, s, a, w, nt, c, ns, inv_rows, row_mask = ctx.saved_tensors
            tf, sf = _masked(t, row_mask, a.dtype), _masked(s, row_mask, a.dtype)
            G = _mix_grad(tf, torch.bmm(a, sf), ctx.eps, inplace=True)  # dL/dmix / r_b
        else:
            tf, sf, a, w, nt, c, ns, inv_rows, G = ctx.saved_tensors  # G from the forward (read only)
        scale = (-grad * inv_rows.to(grad.dtype))[:, None, None]  # r_b, folded into the small factors
        grad_sf = torch.bmm((a * scale).transpose(1, 2), G)
        if not ctx.detach_weights:
            grad_a = torch.bmm(G, sf.transpose(1, 2)).mul_(scale)
            grad_w = a * (grad_a - (a * grad_a).sum(-1, keepdim=True)) / ctx.temperature
            grad_sf.baddbmm_((grad_w / (nt.unsqueeze(-1) * c.unsqueeze(-2))).transpose(1, 2), tf)
            coef = -(grad_w * w).sum(1) / c  # (B, Hs)
            coef = torch.where(ns >= NORM_EPS, coef / ns.clamp_min(NORM_EPS), torch.zeros_like(coef))
            grad_sf.addcmul_(sf, coef.unsqueeze(-1))
        # Padded rows get no gradient: G and tf are zero there (t = 0) and so is the masked sf.
        return None, grad_sf.to(ctx.s_dtype), None, None, None, None, None, None


def _block_mix_grad(t: Tensor, mix: Tensor, eps: float) -> Tensor:
    """``d/dmix Σ t log max(mix, eps)`` = ``t / mix`` where ``mix >= eps``, else 0; in ``mix``'s buffer."""
    below = mix < eps
    return torch.div(t, mix.clamp_min_(eps), out=mix).masked_fill_(below, 0)


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], x.shape[1], -1)


class AMADKLBlockHooks:
    """AMAD "kl" (Eq. 2, 3, 9) on blocks of query rows: the :class:`amad.losses.blocks.TwoPassHooks` of
    :meth:`RowBlocks.two_pass <amad.losses.blocks.RowBlocks.two_pass>` (module docstring). Blocks are
    (B, H, r, K) maps, padded rows zeroed; ``output`` is the per-example sum over valid rows and ``a``.

    Args:
        temperature, detach_weights, eps: as in :func:`amad.losses.amad_loss`.
    """

    def __init__(self, temperature: float, detach_weights: bool, eps: float) -> None:
        self.temperature, self.detach, self.eps = temperature, detach_weights, eps

    def stats(self, t: Tensor, s: Tensor) -> tuple[Tensor, ...]:
        t, s = _flat(t), _flat(s)
        return torch.bmm(t, s.transpose(1, 2)), t.square().sum(-1), s.square().sum(-1), row_entropy_term(t).sum(-1)

    def state(self, stats):
        D, tt, ss, entropy = stats
        nt, c = sqrt_clamped(tt), sqrt_clamped(ss)
        w = D / (nt.unsqueeze(-1) * c.unsqueeze(-2))  # Eq. 2
        a = torch.softmax(w / self.temperature, dim=-1)  # Eq. 3
        return a, w, nt, c, ss, entropy

    def value(self, t: Tensor, s: Tensor, state) -> tuple[Tensor, ...]:
        t, s, a = _flat(t), _flat(s), state[0]
        mix = torch.bmm(a, s)  # Eq. 9, this block's rows
        cross = mix.clamp_min(self.eps).log_().mul_(t).sum(dim=(1, 2))
        if self.detach:
            return (cross,)
        return cross, torch.bmm(_block_mix_grad(t, mix, self.eps), s.transpose(1, 2))  # dCE/da of the block

    def output(self, stats, state, sums) -> tuple[Tensor, Tensor]:
        return state[5] - sums[0], state[0]  # Σ t log t - Σ t log max(mix, eps), a

    def backward(self, state, sums, grad: Tensor) -> tuple:
        a, w, nt, c, ss, _ = state
        r = -grad[:, None, None]  # dL/dCE per example
        a_r = (a * r).transpose(1, 2)  # (B, Hs, Ht): the mixture's share, scaled
        if self.detach:
            return a, a_r, None, None
        ga = r * sums[1]  # dL/da
        gw = a * (ga - (a * ga).sum(-1, keepdim=True)) / self.temperature  # softmax over student heads
        gD = (gw / (nt.unsqueeze(-1) * c.unsqueeze(-2))).transpose(1, 2)  # (B, Hs, Ht)
        gc = -(gw * w).sum(1) / c  # dL/dc, c = max(|s|, 1e-12)
        coef = torch.where(ss >= NORM_EPS * NORM_EPS, gc / c, torch.zeros_like(gc))  # dL/ds = coef s
        return a, a_r, gD, coef

    def block_grad(self, t: Tensor, s: Tensor, prep: tuple) -> Tensor:
        a, a_r, gD, coef = prep
        t, sd = _flat(t), _flat(s)
        dS = torch.bmm(a_r, _block_mix_grad(t, torch.bmm(a, sd), self.eps))
        if gD is not None:
            dS.baddbmm_(gD, t).addcmul_(sd, coef.unsqueeze(-1))
        return dS
