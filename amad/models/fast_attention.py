"""Fast attention for ``attention_source: qk``: SDPA in the models, queries and keys handed to the capture.

Under ``qk`` every attention module of a model runs ``torch.nn.functional.scaled_dot_product_attention``
(SDPA) instead of its eager ``softmax(q kᵀ) v``: no (B, H, Q, K) map exists in the models, and what the
distiller needs -- the queries and keys after the head split, the scale, the additive mask and T5's
position bias -- is handed to the attention module's ``_amad_qk_sink`` (set by
:class:`amad.models.capture.Capture` for the requested layers) as an
:class:`~amad.models.attention_inputs.AttentionInputs`; :mod:`amad.losses.qk` rebuilds the maps from it in chunks.

* BLIP (hand-written eager attention): :mod:`amad.models.blip_patch` replaces ``BlipAttention.forward``
  (ViT, fused qkv) and ``BlipTextSelfAttention.forward`` (text self and cross) with versions that call
  :func:`sdpa_attention` when the module's ``_amad_fast`` flag is set and the original eager code
  otherwise.
* T5 (``AttentionInterface``): :mod:`amad.models.vlt5` registers ``amad_sdpa`` (and its ``amad_eager``
  delegates to it when the flag is set).

The mask is the model's own additive float mask (0 / the dtype's min, transformers' eager masks), so both
sources see the very same mask. Without a position bias SDPA takes it as is: on CPU its flash kernel
(float32/float64/bf16) keeps only q, k, v, the output, the row log-sum-exp and the (B, 1, Q, K) mask
for its backward; on CUDA the memory-efficient kernel likewise.

T5's position bias is (1, H, Q, K) and trainable in a student: SDPA would need it summed with the mask into
one (B, H, Q, K) tensor, and on CPU a mask that needs a gradient sends SDPA to its math backend, which
keeps the whole probability maps for the backward. :class:`_BiasedAttention` avoids both: SDPA over
chunks of query rows (each with its (B, H, rows, K) bias + mask), and a backward that rebuilds each
chunk's softmax and differentiates it alone (q, k, v and the bias, whose gradient is summed over the
batch as its broadcast requires). Nothing of size B·H·Q·K is kept or built.

Dropout: SDPA's ``dropout_p`` drops the same probabilities with the same expectation as eager dropout,
from another random stream (the captured maps are pre-dropout either way). With ``dropout_p > 0`` on
CPU, PyTorch runs SDPA's math backend (it keeps the maps of that layer for the backward) -- VL-T5's
presets train with attention dropout 0.1; on CUDA the fused kernels take dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amad.models.attention_inputs import DEFAULT_CHUNK_ELEMENTS, AttentionInputs
from amad.models.capture import QK_SINK_ATTR

#: :class:`_BiasedAttention` takes query rows in chunks whose (B, H, rows, K) bias + mask (and, in the
#: backward, scores and probabilities) hold at most this many elements: the budget of the qk losses' chunks
ROW_CHUNK_ELEMENTS = DEFAULT_CHUNK_ELEMENTS


def hand_off(
    module: nn.Module, query: Tensor, key: Tensor, scale: float, mask: Tensor | None, bias: Tensor | None = None
) -> None:
    """Give a layer's queries and keys to the module's qk sink, if a capture set one.

    Args:
        query: (B, H, Q, d); key: (B, H, K, d); scale: the factor of ``q kᵀ``; mask: additive or bool,
            broadcastable to (B, H, Q, K), or None; bias: additive (1|B, H, Q, K) or None.
    """
    sink = getattr(module, QK_SINK_ATTR, None)
    if sink is None:
        return
    if not (query.requires_grad or key.requires_grad):
        # a teacher's q and k live until the loss's backward: keep compact copies rather than views
        # (BLIP's ViT q and k are views of one (B, L, 3d) qkv buffer, whose v third would stay alive)
        query, key = query.contiguous(), key.contiguous()
    sink(AttentionInputs(query, key, float(scale), mask=mask, bias=bias))


def _as_sdpa_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """An additive float mask in the queries' dtype (SDPA wants both alike); the float32 min becomes the
    target dtype's min, not -inf (which would make a fully masked row NaN)."""
    if mask is None or mask.dtype == torch.bool or mask.dtype == dtype:
        return mask
    return mask.to(dtype).clamp_min_(torch.finfo(dtype).min)


def _rows(x: Tensor | None, rows: slice) -> Tensor | None:
    """The query rows ``rows`` of a rank-4 mask or bias (itself when its query dim broadcasts)."""
    if x is None or x.shape[2] == 1:
        return x
    return x[:, :, rows]


def _row_chunks(B: int, H: int, Q: int, K: int) -> list[slice]:
    rows = max(ROW_CHUNK_ELEMENTS // max(B * H * K, 1), 1)
    return [slice(i, min(i + rows, Q)) for i in range(0, Q, rows)]


def _terms(bias: Tensor, mask: Tensor | None, rows: slice, dtype: torch.dtype) -> Tensor:
    """bias + mask of the query rows ``rows``: (1|B, H, r, K), in ``dtype``."""
    out = _rows(bias, rows).to(dtype)
    m = _rows(mask, rows)
    if m is None:
        return out
    if m.dtype == torch.bool:
        return out.masked_fill(~m, torch.finfo(dtype).min)
    return (out + m.to(dtype)).clamp_min_(torch.finfo(dtype).min)


class _BiasedAttention(torch.autograd.Function):
    """``softmax(q kᵀ·scale + bias + mask) v`` by SDPA over chunks of query rows, with an exact backward that
    rebuilds one chunk's softmax at a time (see the module docstring); no dropout.

    ``apply(q (B,H,Q,d), k (B,H,K,d), v (B,H,K,dv), bias (1|B,H,1|Q,K), mask (B|1,1|H,1|Q,K) or None,
    scale) -> (B, H, Q, dv)``; gradients for q, k, v and bias (the mask is a constant).
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask: Tensor | None, scale: float) -> Tensor:
        B, H, Q, _ = q.shape
        out = q.new_empty(B, H, Q, v.shape[-1])
        for rows in _row_chunks(B, H, Q, k.shape[2]):
            out[:, :, rows] = F.scaled_dot_product_attention(
                q[:, :, rows], k, v, attn_mask=_terms(bias, mask, rows, q.dtype), scale=scale
            )
        ctx.save_for_backward(q, k, v, bias, mask)
        ctx.scale = scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        q, k, v, bias, mask = ctx.saved_tensors
        need_q, need_k, need_v, need_b = ctx.needs_input_grad[:4]
        B, H, Q, _ = q.shape
        dtype = torch.float64 if q.dtype == torch.float64 else torch.float32  # rebuilt as eager would, at least fp32
        kk = k.detach().to(dtype).requires_grad_(need_k)
        vv = v.detach().to(dtype).requires_grad_(need_v)
        dq = torch.zeros_like(q) if need_q else None
        db = torch.zeros_like(bias) if need_b else None
        dk = dv = None
        for rows in _row_chunks(B, H, Q, k.shape[2]):
            with torch.enable_grad():
                qc = q[:, :, rows].detach().to(dtype).requires_grad_(need_q)
                bc = _rows(bias, rows).detach().to(dtype).requires_grad_(need_b)
                scores = torch.matmul(qc, kk.transpose(-1, -2)) * ctx.scale + bc  # T5's eager order
                m = _rows(mask, rows)
                if m is not None:
                    scores = (
                        scores.masked_fill(~m, torch.finfo(dtype).min)
                        if m.dtype == torch.bool
                        else scores + m.to(dtype)
                    )
                out = torch.matmul(torch.softmax(scores, dim=-1), vv)
            leaves = [x for x, n in ((qc, need_q), (kk, need_k), (vv, need_v), (bc, need_b)) if n]
            got = iter(torch.autograd.grad(out, leaves, grad[:, :, rows].to(dtype)))
            if need_q:
                dq[:, :, rows] = next(got)
            if need_k:
                g = next(got)
                dk = g if dk is None else dk.add_(g)
            if need_v:
                g = next(got)
                dv = g if dv is None else dv.add_(g)
            if need_b:
                g = next(got)
                if bias.shape[2] > 1:
                    db[:, :, rows] = g
                else:
                    db.add_(g)
        cast = lambda g, like: None if g is None else g.to(like.dtype)  # noqa: E731
        return cast(dq, q), cast(dk, k), cast(dv, v), cast(db, bias), None, None


def sdpa_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    scale: float,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """``softmax(q kᵀ·scale + bias + mask) v`` (dropout on the probabilities) without a (B, H, Q, K) map.

    Args:
        query: (B, H, Q, d); key: (B, H, K, d); value: (B, H, K, dv).
        scale: the factor of ``q kᵀ``.
        mask: additive float (0 / the dtype's min) or bool (True = attend), broadcastable to (B, H, Q, K),
            or None.
        bias: additive float (1|B, H, 1|Q, K) (T5's position bias), or None.
        dropout_p: attention dropout (pass 0 in eval).

    Returns:
        (B, H, Q, dv), in the queries' dtype.
    """
    if bias is None:
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=_as_sdpa_mask(mask, query.dtype), dropout_p=dropout_p, scale=scale
        )
    if dropout_p > 0:  # the chunked backward cannot replay SDPA's dropout: let PyTorch pick a backend
        terms = _terms(bias, mask, slice(None), query.dtype)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=terms, dropout_p=dropout_p, scale=scale)
    return _BiasedAttention.apply(query, key, value, bias, mask, scale)
