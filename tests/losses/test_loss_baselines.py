"""SHD, A2D, AttnDistill against loop references; resize_teacher_attention properties."""

from __future__ import annotations

import re

import losses_reference as ref
import pytest
import torch
from losses_helpers import make_masks, random_maps

from amad.losses import (
    A2DLoss,
    attn_distill_loss,
    build_attention_criterion,
    one_to_one_loss,
    resize_teacher_attention,
    shd_groups,
    shd_loss,
)

TOL = dict(rtol=1e-9, atol=1e-11)


def _grad(loss, *xs):
    return torch.autograd.grad(loss, xs)


def _inputs(Ht=5, Hs=2, seed=0, with_kmask=True):
    qmask, kpad = make_masks(B=3, Q=5, K=6)
    t = random_maps(3, Ht, 5, 6, seed=seed, key_pad=kpad)
    s = random_maps(3, Hs, 5, 6, seed=seed + 1, key_pad=kpad).requires_grad_(True)
    return t, s, qmask, (~kpad if with_kmask else None)


# -- SHD -----------------------------------------------------------------------------------------------


def test_shd_groups():
    assert shd_groups(12, 8) == [[0, 1], [2, 3], [4, 5], [6, 7], [8], [9], [10], [11]]
    assert shd_groups(6, 3) == [[0, 1], [2, 3], [4, 5]]
    assert shd_groups(5, 2) == [[0, 1, 2], [3, 4]]
    with pytest.raises(ValueError, match="student_heads <= teacher_heads"):
        shd_groups(2, 3)


@pytest.mark.parametrize("Ht,Hs", [(5, 2), (4, 4), (7, 2), (6, 3)])
@pytest.mark.parametrize("granularity,tau,with_kmask", [("map", 1.0, True), ("row", 2.0, True), ("map", 0.5, False)])
def test_shd_matches_loop_reference(Ht, Hs, granularity, tau, with_kmask):
    t, s, qmask, kmask = _inputs(Ht, Hs, with_kmask=with_kmask)
    loss, w = shd_loss(
        t, s, query_mask=qmask, key_mask=kmask, temperature=tau, alpha_granularity=granularity, return_weights=True
    )
    want, want_w = ref.shd(t, s, qmask, kmask, tau, granularity)
    torch.testing.assert_close(loss, want, **TOL)
    torch.testing.assert_close(w, want_w, **TOL)
    torch.testing.assert_close(w.sum(1), torch.ones(3, Hs, dtype=w.dtype), **TOL)  # columns sum to 1
    torch.testing.assert_close(_grad(loss, s), _grad(want, s), **TOL)


def test_shd_with_equal_heads_is_one_to_one_kl():
    t, s, qmask, _ = _inputs(3, 3)
    torch.testing.assert_close(
        shd_loss(t, s, query_mask=qmask), one_to_one_loss(t, s, query_mask=qmask), rtol=1e-6, atol=1e-6
    )


# -- A2D -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("teacher_as_logits", [True, False])
@pytest.mark.parametrize("with_kmask", [True, False])
def test_a2d_matches_loop_reference(teacher_as_logits, with_kmask):
    t, s, qmask, kmask = _inputs(4, 3, with_kmask=with_kmask)
    torch.manual_seed(0)
    a2d = A2DLoss(4, 3, teacher_as_logits=teacher_as_logits).double()
    loss, w = a2d(t, s, qmask, kmask)
    W, b = a2d.aligner.weight[:, :, 0, 0], a2d.aligner.bias
    want = ref.a2d(t, s, W, b, qmask, kmask, teacher_as_logits)
    torch.testing.assert_close(loss, want, **TOL)
    torch.testing.assert_close(w.detach(), W.detach().expand(3, 4, 3), **TOL)
    for got, exp in zip(
        _grad(loss, s, a2d.aligner.weight, a2d.aligner.bias),
        _grad(want, s, a2d.aligner.weight, a2d.aligner.bias),
        strict=True,
    ):
        torch.testing.assert_close(got, exp, **TOL)


def test_a2d_head_count_error_names_both_shapes():
    t, s, _, _ = _inputs(4, 3)
    with pytest.raises(ValueError, match=re.escape("(3, 4, 5, 6)") + ".*" + re.escape("(3, 3, 5, 6)")):
        A2DLoss(5, 3).double()(t, s)


# -- AttnDistill ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query_index,prob_clamp,tau,with_kmask",
    [
        (None, (1e-5, 0.996), 20.0, True),
        (0, (1e-5, 0.996), 20.0, False),
        (None, None, 2.0, True),
        (-1, None, 5.0, False),
    ],
)
def test_attn_distill_matches_loop_reference(query_index, prob_clamp, tau, with_kmask):
    t, s, qmask, kmask = _inputs(4, 2, with_kmask=with_kmask)
    loss = attn_distill_loss(
        t, s, query_mask=qmask, key_mask=kmask, temperature=tau, query_index=query_index, prob_clamp=prob_clamp
    )
    want = ref.attn_distill(t, s, qmask, kmask, tau, query_index, prob_clamp)
    torch.testing.assert_close(loss, want, **TOL)
    torch.testing.assert_close(_grad(loss, s), _grad(want, s), **TOL)


# -- all three: degenerate inputs, padding, bf16 -------------------------------------------------------


def _run(name, t, s, qmask=None, kmask=None):
    if name == "shd":
        return shd_loss(t, s, query_mask=qmask, key_mask=kmask, temperature=2.0)
    if name == "a2d":
        torch.manual_seed(0)
        return A2DLoss(t.shape[1], s.shape[1]).to(t.dtype)(t, s, qmask, kmask)[0]
    return attn_distill_loss(t, s, query_mask=qmask, key_mask=kmask)


@pytest.mark.parametrize("name", ["shd", "a2d", "attn_distill"])
@pytest.mark.parametrize("case", ["zeros", "one_hot", "all_masked"])
def test_degenerate_inputs_are_finite(name, case):
    B, Ht, Hs, Q, K = 2, 4, 2, 3, 5
    t, s = random_maps(B, Ht, Q, K, dtype=torch.float32), random_maps(B, Hs, Q, K, seed=1, dtype=torch.float32)
    qmask = kmask = None
    if case == "zeros":
        t, s = torch.zeros_like(t), torch.zeros_like(s)
    elif case == "one_hot":
        t = torch.nn.functional.one_hot(torch.randint(0, K, (B, Ht, Q)), K).float()
        s = torch.nn.functional.one_hot(torch.randint(0, K, (B, Hs, Q)), K).float()
    else:
        qmask, kmask = torch.zeros(B, Q, dtype=torch.bool), torch.zeros(B, K, dtype=torch.bool)
    s.requires_grad_(True)
    loss = _run(name, t, s, qmask, kmask)
    (g,) = _grad(loss, s)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    if case == "all_masked":
        assert float(loss.detach()) == 0


@pytest.mark.parametrize("name", ["shd", "a2d", "attn_distill"])
def test_padded_rows_do_not_matter_and_masked_example_counts(name):
    t, s, qmask, kmask = _inputs(4, 2)
    pad = ~qmask[:, None, :, None]
    base = _run(name, t, s, qmask, kmask)
    junk = _run(name, torch.where(pad, 3.0, t), torch.where(pad, 7.0, s.detach()), qmask, kmask)
    torch.testing.assert_close(junk, base, **TOL)
    first_two = _run(name, t[:2], s[:2], qmask[:2], kmask[:2])
    torch.testing.assert_close(base, first_two * 2 / 3, **TOL)


@pytest.mark.parametrize("name", ["shd", "a2d", "attn_distill"])
def test_bf16_autocast_gives_float32(name):
    t, s = random_maps(2, 4, 3, 5, dtype=torch.float32), random_maps(2, 2, 3, 5, seed=1, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _run(name, t.bfloat16(), s.bfloat16()).dtype == torch.float32


# -- resize_teacher_attention --------------------------------------------------------------------------


def test_resize_equal_grids_is_identity_and_rows_stay_distributions():
    a = random_maps(2, 3, 1 + 16, 1 + 16, dtype=torch.float32)
    assert torch.equal(resize_teacher_attention(a, (4, 4), (4, 4)), a)
    for dst in [(2, 2), (3, 3), (6, 6), (2, 3)]:
        out = resize_teacher_attention(a, (4, 4), dst)
        n = 1 + dst[0] * dst[1]
        assert out.shape == (2, 3, n, n) and (out >= 0).all()
        torch.testing.assert_close(out.sum(-1), torch.ones(2, 3, n))


def test_resize_keys_keeps_cls_mass_and_uniform_stays_uniform():
    a = random_maps(2, 3, 1 + 16, 1 + 16, dtype=torch.float64)
    out = resize_teacher_attention(a, 4, 2, resize_queries=False)
    assert out.shape == (2, 3, 17, 5)
    torch.testing.assert_close(out[..., 0], a[..., 0])  # [CLS] key mass unchanged
    uniform = torch.full((1, 1, 17, 17), 1 / 17, dtype=torch.float64)
    torch.testing.assert_close(
        resize_teacher_attention(uniform, 4, 2)[..., 1:], torch.full((1, 1, 5, 4), (16 / 17) / 4, dtype=torch.float64)
    )


def test_resize_errors():
    a = random_maps(1, 2, 17, 17)
    with pytest.raises(ValueError, match=re.escape("(1, 2, 17, 17)") + ".*teacher_grid"):
        resize_teacher_attention(a, (5, 5), (2, 2))
    with pytest.raises(ValueError, match="student_grid"):
        resize_teacher_attention(a, (4, 4), (0, 2))


def test_registry_runs_new_baselines_with_key_mask():
    t, s, qmask, kmask = _inputs(4, 2)
    t, s = t.float(), s.detach().float().requires_grad_(True)
    for method, kw in [("shd", {"softening_temperature": 2.0}), ("a2d", {}), ("attn_distill", {"query_index": 0})]:
        crit = build_attention_criterion(method, teacher_heads=4, student_heads=2, **kw)
        loss, w = crit(t, s, query_mask=qmask, key_mask=kmask)
        loss.backward()
        assert torch.isfinite(loss)
        assert (w is None) == (method == "attn_distill")
    a2d = build_attention_criterion("a2d", teacher_heads=4, student_heads=2, num_layers=3)
    assert sum(p.numel() for p in a2d.parameters()) == 3 * (4 * 2 + 4)
    with pytest.raises(ValueError, match="student_heads <= teacher_heads"):
        build_attention_criterion("shd", teacher_heads=2, student_heads=4)
