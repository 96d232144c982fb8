"""Random attention maps with padding for the loss tests (float64, small shapes)."""

from __future__ import annotations

import torch


def random_maps(B=3, H=4, Q=5, K=6, *, seed=0, key_pad=None, dtype=torch.float64, sharp=2.0):
    """(B, H, Q, K) row-stochastic maps; ``key_pad`` (B, K) bool True = padded key -> prob exactly 0."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, H, Q, K, generator=g, dtype=dtype) * sharp
    if key_pad is not None:
        logits = logits.masked_fill(key_pad[:, None, None, :], float("-inf"))
    return torch.softmax(logits, dim=-1)


def make_masks(B=3, Q=5, K=6):
    """query_mask (B, Q): full / partial / fully padded example; key_pad (B, K) for the same lengths."""
    lengths = [Q, Q - 2, 0][:B] + [Q] * max(0, B - 3)
    query_mask = torch.zeros(B, Q, dtype=torch.bool)
    key_pad = torch.zeros(B, K, dtype=torch.bool)
    for b, n in enumerate(lengths):
        query_mask[b, :n] = True
        key_pad[b, max(n, 1) :] = True  # keep at least one key so every row is a distribution
    return query_mask, key_pad
