"""amad_loss, one_to_one_loss, head_mean_loss: against loop references, and the contract's properties."""

from __future__ import annotations

import re

import losses_reference as ref
import pytest
import torch
from losses_helpers import make_masks, random_maps

from amad.losses import amad_loss, amad_mixture, head_mean_loss, one_to_one_loss

TOL = dict(rtol=1e-9, atol=1e-11)


def _grad(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


# -- against the loop references (float64, padded rows and keys, one fully padded example) ----------


@pytest.mark.parametrize("variant", ["kl", "l2", "token"])
@pytest.mark.parametrize("tau,detach", [(1.0, False), (0.5, True)])
def test_amad_matches_loop_reference(maps, variant, tau, detach):
    teacher, student, qmask = maps
    loss, w = amad_loss(
        teacher, student, query_mask=qmask, variant=variant, temperature=tau, detach_weights=detach, return_weights=True
    )
    want, want_w = ref.amad(teacher, student, qmask, variant, tau, detach_weights=detach)
    torch.testing.assert_close(loss, want, **TOL)
    torch.testing.assert_close(w.detach(), want_w, **TOL)
    torch.testing.assert_close(_grad(loss, student), _grad(want, student), **TOL)


@pytest.mark.parametrize("variant", ["kl", "l2", "token"])
def test_amad_without_mask_matches_reference(variant):
    teacher = random_maps(B=2, H=3, seed=3)
    student = random_maps(B=2, H=2, seed=4).requires_grad_(True)
    loss = amad_loss(teacher, student, variant=variant)
    want, _ = ref.amad(teacher, student, None, variant)
    torch.testing.assert_close(loss, want, **TOL)
    torch.testing.assert_close(_grad(loss, student), _grad(want, student), **TOL)


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_one_to_one_matches_reference(maps, kind):
    teacher, student, qmask = maps
    loss = one_to_one_loss(teacher, student, query_mask=qmask, kind=kind)
    want = ref.one_to_one(teacher, student, qmask, kind)
    torch.testing.assert_close(loss, want, **TOL)
    torch.testing.assert_close(_grad(loss, student), _grad(want, student), **TOL)


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_head_mean_matches_reference(maps, kind):
    teacher, student, qmask = maps
    loss = head_mean_loss(teacher, student, query_mask=qmask, kind=kind)
    want = ref.head_mean(teacher, student, qmask, kind)
    torch.testing.assert_close(loss, want, **TOL)
    torch.testing.assert_close(_grad(loss, student), _grad(want, student), **TOL)


# -- properties --------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["kl", "l2", "token"])
def test_weights_rows_sum_to_one(maps, variant):
    teacher, student, qmask = maps
    _, w = amad_loss(teacher, student, query_mask=qmask, variant=variant, return_weights=True)
    assert w.shape == (3, 4, 3)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, dtype=w.dtype))


def test_mixture_rows_sum_to_one_over_keys(maps):
    teacher, student, qmask = maps
    mix, _a = amad_mixture(teacher, student, query_mask=qmask)
    sums = mix.sum(-1)  # (B, Ht, Q)
    valid = qmask[:, None, :].expand_as(sums)
    torch.testing.assert_close(sums[valid], torch.ones_like(sums[valid]))
    assert torch.all(sums[~valid] == 0)


@pytest.mark.parametrize("fill", ["random", "nan"])
@pytest.mark.parametrize("fn", ["kl", "l2", "token", "one_to_one", "head_mean"])
def test_values_in_padded_rows_do_not_matter(maps, fn, fill):
    teacher, student, qmask = maps
    pad = ~qmask[:, None, :, None]

    def run(t, s):
        if fn in ("one_to_one", "head_mean"):
            f = one_to_one_loss if fn == "one_to_one" else head_mean_loss
            return f(t, s, query_mask=qmask)
        return amad_loss(t, s, query_mask=qmask, variant=fn)

    junk_t = torch.rand_like(teacher) * 5 if fill == "random" else torch.full_like(teacher, float("nan"))
    junk_s = torch.rand_like(student) * 5 if fill == "random" else torch.full_like(student, float("nan"))
    s2 = torch.where(pad, junk_s, student.detach()).requires_grad_(True)
    base, other = run(teacher, student), run(torch.where(pad, junk_t, teacher), s2)
    torch.testing.assert_close(other, base, rtol=1e-12, atol=1e-12)
    g1, g2 = _grad(base, student), _grad(other, s2)
    torch.testing.assert_close(g2, g1, rtol=1e-12, atol=1e-12)
    assert torch.all(g2[pad.expand_as(g2)] == 0)


@pytest.mark.parametrize("fn", ["kl", "l2", "token", "one_to_one", "head_mean"])
def test_fully_masked_example_contributes_zero_and_counts(fn):
    qmask, kpad = make_masks(B=3)  # example 2 has no valid row
    teacher = random_maps(H=4, seed=5, key_pad=kpad)
    student = random_maps(H=4, seed=6, key_pad=kpad).requires_grad_(True)

    def run(t, s, m):
        if fn == "one_to_one":
            return one_to_one_loss(t, s, query_mask=m)
        if fn == "head_mean":
            return head_mean_loss(t, s, query_mask=m)
        return amad_loss(t, s, query_mask=m, variant=fn)

    full = run(teacher, student, qmask)
    first_two = run(teacher[:2], student[:2], qmask[:2])
    torch.testing.assert_close(full, first_two * 2 / 3, **TOL)
    g = _grad(full, student)
    assert torch.all(g[2] == 0)


@pytest.mark.parametrize("variant", ["kl", "l2", "token"])
@pytest.mark.parametrize("case", ["zeros_student", "zeros_both", "one_hot", "all_masked"])
def test_degenerate_maps_give_finite_loss_and_grads(variant, case):
    B, Ht, Hs, Q, K = 2, 3, 2, 4, 5
    teacher = random_maps(B, Ht, Q, K, seed=7)
    student = random_maps(B, Hs, Q, K, seed=8)
    mask = None
    if case == "zeros_student":
        student = torch.zeros_like(student)
    elif case == "zeros_both":
        teacher, student = torch.zeros_like(teacher), torch.zeros_like(student)
    elif case == "one_hot":
        teacher = torch.nn.functional.one_hot(torch.randint(0, K, (B, Ht, Q)), K).double()
        student = torch.nn.functional.one_hot(torch.randint(0, K, (B, Hs, Q)), K).double()
    else:
        mask = torch.zeros(B, Q, dtype=torch.bool)
    for dtype in (torch.float32, torch.float64):
        s = student.to(dtype).requires_grad_(True)
        t = teacher.to(dtype)
        losses = [
            amad_loss(t, s, query_mask=mask, variant=variant),
            one_to_one_loss(t, s, query_mask=mask),
            head_mean_loss(t, s, query_mask=mask),
            one_to_one_loss(t, s, query_mask=mask, kind="mse"),
        ]
        for loss in losses:
            assert torch.isfinite(loss), (case, loss)
            assert torch.isfinite(_grad(loss, s)).all(), case
        if case == "all_masked":
            assert all(float(x.detach()) == 0 for x in losses)


def test_one_student_head_mix_is_that_head(maps):
    teacher, student, qmask = maps
    one = student[:, :1]
    loss, w = amad_loss(teacher, one, query_mask=qmask, return_weights=True)
    assert torch.all(w == 1)
    mix, _ = amad_mixture(teacher, one, query_mask=qmask)
    torch.testing.assert_close(mix, (one * qmask[:, None, :, None]).expand_as(mix).detach(), **TOL)
    # ... so the KL variant is the sum over teacher heads of KL against that single head
    want = sum(one_to_one_loss(teacher[:, i : i + 1], one, query_mask=qmask) for i in range(teacher.shape[1]))
    torch.testing.assert_close(loss, want, **TOL)


def test_detach_weights_stops_gradient_through_weights_only(maps):
    teacher, student, qmask = maps
    _, a = amad_loss(teacher, student, query_mask=qmask, return_weights=True)
    a = a.detach()
    # with the weights held constant, the loss is a plain KL against a fixed mixture of the student
    mixed = torch.einsum("bij,bjqk->biqk", a, student * qmask[:, None, :, None])
    t = teacher * qmask[:, None, :, None]
    row = (torch.xlogy(t, t) - t * torch.log(mixed.clamp_min(1e-8))).sum(-1)
    want = ((row * qmask[:, None]).sum(-1) / qmask.sum(-1).clamp_min(1)[:, None]).sum(1).mean()
    loss = amad_loss(teacher, student, query_mask=qmask, detach_weights=True)
    torch.testing.assert_close(loss, want, **TOL)
    torch.testing.assert_close(_grad(loss, student), _grad(want, student), **TOL)
    full = amad_loss(teacher, student, query_mask=qmask)
    detached = amad_loss(teacher, student, query_mask=qmask, detach_weights=True)
    torch.testing.assert_close(full, detached, **TOL)  # same value ...
    assert not torch.allclose(_grad(full, student), _grad(detached, student))  # ... different gradient


def test_teacher_gets_no_gradient(maps):
    teacher, student, qmask = maps
    teacher = teacher.clone().requires_grad_(True)
    for loss in (
        amad_loss(teacher, student, query_mask=qmask),
        one_to_one_loss(teacher, student),
        head_mean_loss(teacher, student),
    ):
        loss.backward()
    assert teacher.grad is None


@pytest.mark.parametrize("variant", ["kl", "l2", "token"])
def test_bf16_autocast_gives_float32(variant):
    teacher = random_maps(2, 4, 5, 6, seed=9, dtype=torch.float32)
    student = random_maps(2, 2, 5, 6, seed=10, dtype=torch.float32)
    want = amad_loss(teacher, student, variant=variant)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = student.bfloat16().requires_grad_(True)
        loss, w = amad_loss(teacher.bfloat16(), s, variant=variant, return_weights=True)
        o2o = one_to_one_loss(teacher.bfloat16(), s)
        same_inputs = amad_loss(teacher, student, variant=variant)
    assert loss.dtype == w.dtype == o2o.dtype == same_inputs.dtype == torch.float32
    torch.testing.assert_close(same_inputs, want)  # fp32 inputs under autocast: fp32 math
    torch.testing.assert_close(loss, want, rtol=2e-2, atol=2e-2)  # bf16-rounded inputs only
    loss.backward()
    assert s.grad.dtype == torch.bfloat16 and torch.isfinite(s.grad.float()).all()


# -- errors ------------------------------------------------------------------------------------------


def _names_both(t, s):
    return re.escape(str(tuple(t.shape))) + ".*" + re.escape(str(tuple(s.shape)))


@pytest.mark.parametrize("fn", [amad_loss, one_to_one_loss, head_mean_loss])
@pytest.mark.parametrize("bad", ["Q", "K", "B", "rank", "dtype"])
def test_mismatch_errors_name_both_shapes(fn, bad):
    t = random_maps(2, 4, 5, 6)
    s = {
        "Q": random_maps(2, 3, 4, 6),
        "K": random_maps(2, 3, 5, 7),
        "B": random_maps(3, 3, 5, 6),
        "rank": random_maps(2, 3, 5, 6)[0],
        "dtype": random_maps(2, 3, 5, 6).float(),
    }[bad]
    with pytest.raises(ValueError, match=_names_both(t, s)):
        fn(t, s)


@pytest.mark.parametrize("fn", [amad_loss, one_to_one_loss, head_mean_loss])
def test_mask_shape_error_names_both_shapes(fn):
    t, s = random_maps(2, 4, 5, 6), random_maps(2, 3, 5, 6)
    bad = torch.ones(2, 6, dtype=torch.bool)
    with pytest.raises(ValueError, match=re.escape(str(tuple(bad.shape))) + ".*" + re.escape(str(tuple(t.shape)))):
        fn(t, s, query_mask=bad)
    with pytest.raises(ValueError, match="bool"):
        fn(t, s, query_mask=torch.ones(2, 5))


def test_integer_mask_is_accepted(maps):
    teacher, student, qmask = maps
    torch.testing.assert_close(
        amad_loss(teacher, student, query_mask=qmask.long()), amad_loss(teacher, student, query_mask=qmask)
    )


def test_one_to_one_refuses_more_student_heads():
    t, s = random_maps(2, 2, 5, 6), random_maps(2, 3, 5, 6)
    with pytest.raises(ValueError, match=r"Hs <= Ht.*3 heads.*2"):
        one_to_one_loss(t, s)


def test_bad_options():
    t, s = random_maps(2, 2, 5, 6), random_maps(2, 2, 5, 6)
    with pytest.raises(ValueError, match="'kl', 'l2', 'token'"):
        amad_loss(t, s, variant="cosine")
    with pytest.raises(ValueError, match="temperature"):
        amad_loss(t, s, temperature=0)
    with pytest.raises(ValueError, match="'kl', 'mse'"):
        one_to_one_loss(t, s, kind="l1")


@pytest.mark.parametrize("detach", [False, True])
def test_kl_recompute_mode_matches_loop_reference_and_keeps_less(monkeypatch, maps, detach):
    """The accelerator mode (backward rebuilds the masked maps and the mixture), forced on CPU."""
    import amad.losses.attention as attention
    from amad.bench.losses import PeakMemory

    teacher, student, qmask = maps
    want, _ = ref.amad(teacher, student, qmask, "kl", 0.7, detach_weights=detach)
    want_grad = _grad(want, student)
    kept = {}
    for mode in (False, True):
        monkeypatch.setattr(attention, "_recompute", lambda t, mode=mode: mode)
        with PeakMemory() as mem:
            loss = amad_loss(teacher, student, query_mask=qmask, temperature=0.7, detach_weights=detach)
            kept[mode] = mem.current
        torch.testing.assert_close(loss, want, **TOL)
        torch.testing.assert_close(_grad(loss, student), want_grad, **TOL)
    assert kept[True] < kept[False]  # the mixture and the masked copies are not kept


def test_kl_keeps_the_dtype_of_low_precision_maps():
    teacher = random_maps(B=2, H=3, seed=3).to(torch.bfloat16)
    student = random_maps(B=2, H=2, seed=4).to(torch.bfloat16).requires_grad_(True)
    loss = amad_loss(teacher, student, query_mask=torch.tensor([[1, 1, 1, 0, 0], [1] * 5]).bool())
    want, _ = ref.amad(
        teacher.double(), student.detach().double(), torch.tensor([[1, 1, 1, 0, 0], [1] * 5]).bool(), "kl"
    )
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
    assert _grad(loss, student).dtype == torch.bfloat16
