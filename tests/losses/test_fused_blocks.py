"""The CPU forward of the fused AMAD-KL runs over blocks of examples: any block size gives the same loss,
weights and gradient (including entries where the mixture falls below the floor)."""

from __future__ import annotations

import pytest
import torch

from amad.losses import _fused, amad_loss


@pytest.mark.parametrize("detach", [False, True])
def test_blocks_of_examples_give_the_whole_batch_result(monkeypatch, detach):
    torch.manual_seed(0)
    B, Ht, Hs, Q, K = 5, 4, 2, 6, 7
    t = torch.softmax(torch.randn(B, Ht, Q, K) * 3, -1)
    s = torch.softmax(torch.randn(B, Hs, Q, K) * 3, -1)
    s[1, :, 2] = 0.0  # a row where every student head (hence the mixture) is below the floor
    mask = torch.ones(B, Q, dtype=torch.bool)
    mask[2, 4:] = False

    def run(chunk):
        monkeypatch.setattr(_fused, "CHUNK_NUMEL", chunk)
        x = s.clone().requires_grad_()
        loss, a = amad_loss(t, x, query_mask=mask, detach_weights=detach, return_weights=True)
        loss.backward()
        return loss.detach(), a, x.grad

    whole = run(1 << 30)
    for chunk in (1, Ht * Q * K * 2):  # one example per block; two per block (the last one short)
        for got, want in zip(run(chunk), whole, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert torch.isfinite(whole[2]).all() and whole[2][2, :, 4:].abs().sum() == 0  # padded rows: no gradient
