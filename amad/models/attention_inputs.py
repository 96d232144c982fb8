"""The queries and keys of one attention layer, as a ``qk`` capture hands them over, and the chunk policy.

Under ``attention_source: qk`` the models run their fast attention (SDPA) and keep, per distilled layer,
only what the maps are made of -- :class:`AttentionInputs`: the queries, the keys, the scale and the
additive mask / position bias (:mod:`amad.models.fast_attention` builds them, :mod:`amad.models.capture`
collects them). :mod:`amad.losses.qk` rebuilds the maps ``softmax(q kᵀ·scale + mask + bias)`` from them in
chunks of query rows; how many rows a chunk holds is :func:`default_chunk_size` (the fast attention's
biased SDPA uses the same budget, :data:`DEFAULT_CHUNK_ELEMENTS`).

This is a capture type: it lives with the models, which import nothing from :mod:`amad.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

#: ``chunk_size=None``: rows per chunk so that one chunk's maps of both models hold about this many
#: elements (B·(Ht+Hs)·rows·K); 2**23 = 32 MiB in float32 (see docs/losses.md).
DEFAULT_CHUNK_ELEMENTS = 2**23


def default_chunk_size(B: int, Ht: int, Hs: int, Q: int, K: int) -> int:
    """Rows per chunk for ``chunk_size=None``: the fewest chunks whose maps of both models hold at most
    :data:`DEFAULT_CHUNK_ELEMENTS` elements (at least one row each), balanced (577 rows at BLIP-base
    vision shapes, B = 8, 12 + 6 heads: 6 chunks of 97 rows rather than 5 of 100 and one of 77)."""
    rows = max(DEFAULT_CHUNK_ELEMENTS // max(B * (Ht + Hs) * K, 1), 1)
    n = -(-max(Q, 1) // rows)
    return -(-max(Q, 1) // n)


def compute_dtype(*xs: Tensor) -> torch.dtype:
    """The dtype the maps are built in: float64 when any input is float64, else float32."""
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


@dataclass(frozen=True, eq=False)
class AttentionInputs:
    """One layer's attention of one model, as its maps are made: ``softmax(q kᵀ·scale + mask + bias)``.

    Attributes:
        q: (B, H, Q, d) queries (after the projection and head split; whatever the model's rotary or
            other transforms, the ones its attention multiplies).
        k: (B, H, K, d) keys.
        scale: the factor of ``q kᵀ`` (``d ** -0.5`` for BERT/ViT, 1.0 for T5).
        mask: the attention mask, rank 4 and broadcastable to (B, H, Q, K), e.g. (B, 1, 1, K) padding or
            (B, 1, Q, K) causal + padding: either bool (True = attend, the convention of transformers'
            SDPA masks; False becomes the dtype's min) or additive float (0 / the dtype's min, as
            transformers' eager masks; avoid ``-inf``, which makes a fully masked row NaN). None = none.
        bias: an additive float term, rank 4 and broadcastable to (B, H, Q, K), e.g. T5's (1|B, H, Q, K)
            position bias (kept apart from ``mask``, as T5 keeps them: neither is materialised at
            (B, H, Q, K) here). None = none.

    The maps are computed in float32 (float64 when ``q`` is float64), whatever the dtype of q and k.
    Construction checks ranks and shapes and raises ``ValueError`` naming both shapes.
    """

    q: Tensor
    k: Tensor
    scale: float
    mask: Tensor | None = None
    bias: Tensor | None = None

    def __post_init__(self) -> None:
        q, k = self.q, self.k
        if not isinstance(q, Tensor) or not isinstance(k, Tensor):
            raise ValueError(f"q and k must be tensors, got {type(q).__name__} and {type(k).__name__}")
        both = f"q {tuple(q.shape)} and k {tuple(k.shape)}"
        if q.dim() != 4 or k.dim() != 4:
            raise ValueError(f"{both}: both must have rank 4, (B, H, Q, d) and (B, H, K, d)")
        if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[3] != k.shape[3]:
            raise ValueError(f"{both}: batch, heads and head size must agree ((B, H, Q, d) and (B, H, K, d))")
        if not q.is_floating_point() or not k.is_floating_point():
            raise ValueError(f"{both}: both must be floating point, got {q.dtype} and {k.dtype}")
        if q.device != k.device:
            raise ValueError(f"{both}: devices differ ({q.device} vs {k.device})")
        if isinstance(self.scale, Tensor) or not isinstance(self.scale, (int, float)):
            raise ValueError(f"scale must be a Python number, got {type(self.scale).__name__}")
        full = self.shape
        for name in ("mask", "bias"):
            x = getattr(self, name)
            if x is None:
                continue
            if not isinstance(x, Tensor):
                raise ValueError(f"{name} must be a tensor or None, got {type(x).__name__}")
            if x.dim() != 4 or any(n not in (1, m) for n, m in zip(x.shape, full, strict=True)):
                raise ValueError(f"{name} {tuple(x.shape)} does not broadcast to the maps (B, H, Q, K) = {full}")
            if name == "bias" and not x.is_floating_point():
                raise ValueError(f"bias {tuple(x.shape)} must be floating point (additive), got {x.dtype}")
            if name == "mask" and not (x.is_floating_point() or x.dtype == torch.bool):
                raise ValueError(f"mask {tuple(x.shape)} must be bool (True = attend) or additive float, got {x.dtype}")
            if x.device != q.device:
                raise ValueError(f"{name} {tuple(x.shape)} is on {x.device} but q {tuple(q.shape)} is on {q.device}")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B, H, Q, K): the shape of the maps."""
        return (self.q.shape[0], self.q.shape[1], self.q.shape[2], self.k.shape[2])

    @property
    def num_heads(self) -> int:
        return self.q.shape[1]

    def detach(self) -> AttentionInputs:
        """The same inputs, detached (the teacher is a constant target)."""
        return AttentionInputs(
            **{f.name: (v.detach() if isinstance(v := getattr(self, f.name), Tensor) else v) for f in fields(self)}
        )

    def scores(self, rows: slice = slice(None), heads: slice = slice(None), dtype: torch.dtype | None = None) -> Tensor:
        """``q kᵀ·scale + mask + bias`` of the given query rows and heads: (B, h, rows, K), in ``dtype``
        (default float32, float64 for float64 q)."""
        dtype = dtype or compute_dtype(self.q)
        q = self.q[:, heads, rows].to(dtype) * self.scale  # scale the (rows, d) queries, not the (rows, K) scores
        s = torch.matmul(q, self.k[:, heads].to(dtype).transpose(-1, -2))
        for term in (self.mask, self.bias):  # in place: the product's backward needs its inputs only
            if term is None:
                continue
            term = term[:, heads if term.shape[1] > 1 else slice(None), rows if term.shape[2] > 1 else slice(None)]
            if term.dtype == torch.bool:
                s.masked_fill_(~term, torch.finfo(dtype).min)
            else:
                s.add_(term.to(dtype))
        return s

    def maps(self, rows: slice = slice(None), heads: slice = slice(None), dtype: torch.dtype | None = None) -> Tensor:
        """The attention probabilities of the given query rows: (B, h, rows, K) = ``softmax(scores)``."""
        return torch.softmax(self.scores(rows, heads, dtype), dim=-1)
