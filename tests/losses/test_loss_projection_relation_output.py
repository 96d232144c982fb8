"""AMADProjectionLoss (Eq. 10-11), minilm_relation_loss (MiniLMv2) and output_kd_loss vs loop references."""

from __future__ import annotations

import re

import losses_reference as ref
import pytest
import torch
from losses_helpers import make_masks, random_maps

from amad.losses import AMADProjectionLoss, amad_loss, minilm_relation_loss, output_kd_loss

TOL = dict(rtol=1e-9, atol=1e-11)


def _grads(loss, *xs):
    return torch.autograd.grad(loss, xs)


# -- AMADProjectionLoss -------------------------------------------------------------------------------


def _random_projection(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    proj = AMADProjectionLoss(n).double()
    with torch.no_grad():
        proj.weight.copy_(torch.eye(n, dtype=torch.float64) + 0.3 * torch.randn(n, n, generator=g, dtype=torch.float64))
        proj.bias.copy_(0.05 * torch.randn(n, generator=g, dtype=torch.float64))
    return proj


@pytest.mark.parametrize("normalize_rows", [True, False])
def test_projection_matches_loop_reference(normalize_rows):
    qmask, kpad = make_masks(B=3, Q=3, K=4)
    teacher = random_maps(3, 3, 3, 4, seed=1, key_pad=kpad)
    student = random_maps(3, 2, 3, 4, seed=2, key_pad=kpad).requires_grad_(True)
    proj = _random_projection(12)
    proj.normalize_rows = normalize_rows
    loss, w = proj(teacher, student, qmask)
    want = ref.amad_proj(teacher, student, proj.weight, proj.bias, qmask, normalize_rows=normalize_rows)
    torch.testing.assert_close(loss, want, **TOL)
    assert w.shape == (3, 3, 2)
    got_grads = _grads(loss, student, proj.weight, proj.bias)
    for got, exp in zip(got_grads, _grads(want, student, proj.weight, proj.bias), strict=True):
        torch.testing.assert_close(got, exp, **TOL)


def test_projection_starts_as_the_kl_variant_and_sizes_lazily(maps):
    teacher, student, qmask = maps
    proj = AMADProjectionLoss()
    assert proj.n is None
    loss, _ = proj(teacher, student, qmask)
    assert proj.n == 5 * 6 and proj.weight.shape == (30, 30)
    torch.testing.assert_close(loss, amad_loss(teacher, student, query_mask=qmask), **TOL)
    loss.backward()
    assert proj.weight.grad is not None and torch.isfinite(proj.weight.grad).all()
    with pytest.raises(ValueError, match="sized for n = 30"):
        proj(teacher[:, :, :4], student[:, :, :4])


def test_projection_degenerate_and_bf16():
    proj = AMADProjectionLoss(20)
    t = torch.zeros(2, 3, 4, 5)
    s = torch.zeros(2, 2, 4, 5, requires_grad=True)
    loss, _ = proj(t, s)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all() and torch.isfinite(proj.weight.grad).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, w = proj(random_maps(2, 3, 4, 5).bfloat16(), random_maps(2, 2, 4, 5).bfloat16())
    assert loss.dtype == w.dtype == torch.float32


# -- MiniLMv2 relations --------------------------------------------------------------------------------


def _qkv(B, L, d, seed, grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, L, d, generator=g, dtype=torch.float64).requires_grad_(grad) for _ in range(3)]


@pytest.mark.parametrize("R", [1, 2, 4])
def test_relation_matches_loop_reference(R):
    key_mask, _ = make_masks(B=3, Q=5)
    teacher, student = _qkv(3, 5, 8, seed=1), _qkv(3, 5, 4, seed=2, grad=True)
    loss = minilm_relation_loss(teacher, student, key_mask=key_mask, num_relation_heads=R)
    want = ref.minilm_relation(teacher, student, key_mask, R)
    torch.testing.assert_close(loss, want, **TOL)
    for got, exp in zip(_grads(loss, *student), _grads(want, *student), strict=False):
        torch.testing.assert_close(got, exp, **TOL)


def test_relation_padding_and_degenerate_inputs():
    key_mask, _ = make_masks(B=3, Q=5)
    teacher, student = _qkv(3, 5, 8, seed=1), _qkv(3, 5, 4, seed=2, grad=True)
    base = minilm_relation_loss(teacher, student, key_mask=key_mask, num_relation_heads=2)
    pad = ~key_mask[:, :, None]
    junk = [torch.where(pad, torch.full_like(x, 1e3), x) for x in teacher]
    other = minilm_relation_loss(
        junk, [torch.where(pad, 7.0, x) for x in student], key_mask=key_mask, num_relation_heads=2
    )
    torch.testing.assert_close(other, base, **TOL)
    two = minilm_relation_loss(
        [x[:2] for x in teacher], [x[:2] for x in student], key_mask=key_mask[:2], num_relation_heads=2
    )
    torch.testing.assert_close(base, two * 2 / 3, **TOL)  # the fully padded example adds 0, counts 1
    zeros = [torch.zeros(2, 4, 6, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    loss = minilm_relation_loss(
        _qkv(2, 4, 6, 3), zeros, key_mask=torch.zeros(2, 4, dtype=torch.bool), num_relation_heads=3
    )
    loss.backward()
    assert float(loss.detach()) == 0 and all(torch.isfinite(z.grad).all() for z in zeros)


def test_relation_errors_and_bf16():
    t, s = _qkv(2, 5, 8, 1), _qkv(2, 4, 6, 2)
    with pytest.raises(ValueError, match=re.escape("(2, 5, 8)") + ".*" + re.escape("(2, 4, 6)")):
        minilm_relation_loss(t, s, num_relation_heads=2)
    with pytest.raises(ValueError, match="does not divide"):
        minilm_relation_loss(t, _qkv(2, 5, 6, 2), num_relation_heads=4)
    with pytest.raises(ValueError, match=r"\(q, k, v\)"):
        minilm_relation_loss(t[:2], s, num_relation_heads=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = minilm_relation_loss(
            [x.bfloat16() for x in t], [x.bfloat16() for x in _qkv(2, 5, 4, 3)], num_relation_heads=2
        )
    assert out.dtype == torch.float32


# -- output KD -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_output_kd_matches_loop_reference(tau):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(3, 4, 7, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 4, 7, generator=g, dtype=torch.float64)
    mask, _ = make_masks(B=3, Q=4)
    loss = output_kd_loss(student, teacher, mask, tau)
    want = ref.output_kd(student, teacher, mask, tau)
    torch.testing.assert_close(loss, want, **TOL)
    torch.testing.assert_close(*(_grads(x, student)[0] for x in (loss, want)), **TOL)
    nomask = output_kd_loss(student, teacher, None, tau)
    torch.testing.assert_close(nomask, ref.output_kd(student, teacher, None, tau), **TOL)


def test_output_kd_edge_cases():
    s = torch.randn(2, 3, 5, requires_grad=True)
    none = output_kd_loss(s, torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.bool))
    none.backward()
    assert float(none.detach()) == 0 and torch.isfinite(s.grad).all()
    assert float(output_kd_loss(s, s.detach().clone(), None, 3.0).detach()) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match=re.escape("(2, 3, 6)") + ".*" + re.escape("(2, 3, 5)")):
        output_kd_loss(s, torch.randn(2, 3, 6))
    with pytest.raises(ValueError, match="mask"):
        output_kd_loss(s, torch.randn(2, 3, 5), torch.ones(2, 4, dtype=torch.bool))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert output_kd_loss(s.bfloat16(), torch.randn(2, 3, 5).bfloat16()).dtype == torch.float32
