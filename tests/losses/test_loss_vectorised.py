"""Vectorisation and memory: no (Ht x Hs x n) intermediate, peak memory linear in the inputs; quick bench."""

from __future__ import annotations

import json

import pytest
import torch
from losses_helpers import random_maps

from amad.bench.losses import PeakMemory, loop_amad, run
from amad.losses import amad_loss, head_mean_loss, one_to_one_loss


@pytest.mark.parametrize("variant", ["kl", "l2", "token"])
def test_no_heads_by_heads_by_n_intermediate(variant):
    B, Ht, Hs, Q, K = 2, 6, 5, 12, 12
    t = random_maps(B, Ht, Q, K, dtype=torch.float32)
    s = random_maps(B, Hs, Q, K, dtype=torch.float32, seed=1).requires_grad_(True)
    with PeakMemory() as mem:
        amad_loss(t, s, query_mask=torch.ones(B, Q, dtype=torch.bool), variant=variant).backward()
    n = Q * K
    assert mem.max_numel <= B * max(Ht, Hs) * n  # never B*Ht*Hs*n
    assert mem.peak <= 12 * (t.nbytes + s.nbytes)  # O(B (Ht + Hs) Q K)


def test_peak_memory_tracker_counts_saved_tensors_and_frees():
    x = torch.randn(1000, requires_grad=True)
    with PeakMemory() as mem:
        y = (x.exp() * 2).sin().sum()
        alive = mem.current
        y.backward()
    assert alive >= 2 * x.nbytes  # exp output and mul output are saved for backward
    assert mem.current == x.nbytes + y.nbytes  # only x.grad and the loss are left


def test_loop_reference_of_the_bench_agrees():
    t = random_maps(2, 3, 4, 5, dtype=torch.float64)
    s = random_maps(2, 2, 4, 5, dtype=torch.float64, seed=1)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    for variant in ("kl", "l2", "token"):
        torch.testing.assert_close(loop_amad(t, s, mask, variant), amad_loss(t, s, query_mask=mask, variant=variant))


def test_quick_bench_writes_records(tmp_path):
    out = tmp_path / "bench.json"
    result = run(out=str(out), quick=True)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    records = result["losses"]
    assert {r["variant"] for r in records} == {"kl", "l2", "token", "proj"}
    for r in records:
        for key in ("shape", "variant", "vectorised_s", "loop_s", "speedup_vs_loop", "amad_over_one_to_one",
                    "peak_over_inputs"):
            assert key in r
        assert r["max_abs_diff"] < 1e-4


def test_all_losses_are_finite_at_float32_vit_scale_values():
    # sharp (near one-hot) rows at float32, a realistic failure mode for log / cosine
    t = random_maps(1, 4, 20, 20, dtype=torch.float32, sharp=30.0)
    s = random_maps(1, 2, 20, 20, dtype=torch.float32, seed=1, sharp=30.0).requires_grad_(True)
    for loss in (amad_loss(t, s), amad_loss(t, s, variant="token"), one_to_one_loss(t, s), head_mean_loss(t, s)):
        (g,) = torch.autograd.grad(loss, s)
        assert torch.isfinite(loss) and torch.isfinite(g).all()
