"""The methods registry (amad.losses.methods) and its criteria: the uniform interface the distiller uses."""

from __future__ import annotations

import re

import pytest
import torch
from losses_helpers import make_masks, random_maps

from amad.losses import (
    ATTENTION_METHODS,
    METHODS,
    AttentionCriterion,
    amad_loss,
    attention_method,
    build_attention_criterion,
    head_mean_loss,
    minilm_relation_loss,
    one_to_one_loss,
)


def _inputs(kind, Ht=4, Hs=3, seed=0):
    qmask, kpad = make_masks(B=3, Q=5, K=5)
    if kind == "qkv":
        g = torch.Generator().manual_seed(seed)
        t = tuple(torch.randn(3, 5, 8, generator=g) for _ in range(3))
        s = tuple(torch.randn(3, 5, 6, generator=g).requires_grad_(True) for _ in range(3))
        return t, s, qmask
    t = random_maps(3, Ht, 5, 5, seed=seed, key_pad=kpad, dtype=torch.float32)
    s = random_maps(3, Hs, 5, 5, seed=seed + 1, key_pad=kpad, dtype=torch.float32).requires_grad_(True)
    return t, s, qmask


def _options(method):
    return {"minilm_relation": {"num_relation_heads": 2}, "amad_proj": {"map_size": (5, 5)}}.get(method, {})


@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_every_method_builds_runs_and_backpropagates(method):
    crit = build_attention_criterion(method, teacher_heads=4, student_heads=3, num_layers=2, **_options(method))
    assert isinstance(crit, AttentionCriterion) and crit.input_kind in ("maps", "qkv")
    t, s, qmask = _inputs(crit.input_kind)
    kwargs = {"key_mask": qmask} if crit.input_kind == "qkv" else {"query_mask": qmask}
    loss, weights = crit(t, s, layer=1, **kwargs)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.dtype == torch.float32
    loss.backward()
    grads = [x.grad for x in (s if isinstance(s, tuple) else (s,))]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if weights is not None:
        assert weights.shape == (3, 4, 3) and not weights.requires_grad


def test_criteria_equal_the_functions():
    t, s, qmask = _inputs("maps")
    for variant in ("kl", "l2", "token"):
        crit = build_attention_criterion(
            "amad", teacher_heads=4, student_heads=3, variant=variant, weight_temperature=0.7
        )
        loss, w = crit(t, s, query_mask=qmask)
        want, want_w = amad_loss(t, s, query_mask=qmask, variant=variant, temperature=0.7, return_weights=True)
        torch.testing.assert_close(loss, want)
        torch.testing.assert_close(w, want_w.detach())
    loss, w = build_attention_criterion("one_to_one", teacher_heads=4, student_heads=3, row_loss="mse")(
        t, s, query_mask=qmask
    )
    torch.testing.assert_close(loss, one_to_one_loss(t, s, query_mask=qmask, kind="mse"))
    torch.testing.assert_close(w, torch.eye(4, 3).expand(3, 4, 3))
    loss, w = build_attention_criterion("head_mean", teacher_heads=4, student_heads=3)(t, s, query_mask=qmask)
    torch.testing.assert_close(loss, head_mean_loss(t, s, query_mask=qmask))
    assert w is None
    tq, sq, kmask = _inputs("qkv")
    loss, w = build_attention_criterion("minilm_relation", teacher_heads=4, student_heads=3, num_relation_heads=2)(
        tq, sq, key_mask=kmask
    )
    torch.testing.assert_close(loss, minilm_relation_loss(tq, sq, key_mask=kmask, num_relation_heads=2))
    assert w is None


def test_a_criterion_takes_teacher_maps_of_only_the_heads_it_reads():
    t, s, qmask = _inputs("maps")
    one = build_attention_criterion("one_to_one", teacher_heads=4, student_heads=3)
    assert one.teacher_heads_read() == 3
    loss, w = one(t[:, :3].contiguous(), s, query_mask=qmask)
    want, want_w = one(t, s, query_mask=qmask)
    torch.testing.assert_close(loss, want, rtol=0, atol=0)
    torch.testing.assert_close(w, want_w)
    with pytest.raises(ValueError, match="built for 4 teacher / 3 student heads"):
        one(t[:, :2], s, query_mask=qmask)
    amad = build_attention_criterion("amad", teacher_heads=4, student_heads=3)
    assert amad.teacher_heads_read() == 4
    with pytest.raises(ValueError, match="built for 4 teacher / 3 student heads"):
        amad(t[:, :3], s, query_mask=qmask)


def test_amad_proj_is_sized_per_layer_from_map_size_or_lazily():
    t, s, qmask = _inputs("maps")
    sized = build_attention_criterion("amad_proj", teacher_heads=4, student_heads=3, num_layers=2, map_size=(5, 5))
    assert sum(p.numel() for p in sized.parameters()) == 2 * (25 * 25 + 25)
    lazy = build_attention_criterion("amad_proj", teacher_heads=4, student_heads=3)
    loss, _ = lazy(t, s, query_mask=qmask)
    torch.testing.assert_close(loss, amad_loss(t, s, query_mask=qmask))  # W = I, b = 0 at start
    assert lazy.projections[0].weight.shape == (25, 25)


def test_errors_list_valid_choices():
    with pytest.raises(ValueError, match="expected one of " + re.escape(str(list(ATTENTION_METHODS)))):
        build_attention_criterion("tinybert", teacher_heads=2, student_heads=2)
    with pytest.raises(ValueError, match="'kl', 'l2', 'token'"):
        build_attention_criterion("amad", teacher_heads=2, student_heads=2, variant="proj")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['kind'\].*variant"):
        build_attention_criterion("amad", teacher_heads=2, student_heads=2, kind="kl")
    with pytest.raises(ValueError, match="student_heads <= teacher_heads"):
        build_attention_criterion("one_to_one", teacher_heads=2, student_heads=3)
    crit = build_attention_criterion("amad", teacher_heads=4, student_heads=3, num_layers=2)
    t, s, _qmask = _inputs("maps")
    with pytest.raises(ValueError, match="layer 2 out of range"):
        crit(t, s, layer=2)
    with pytest.raises(ValueError, match=re.escape("(3, 3, 5, 5)") + ".*" + re.escape("(3, 3, 5, 5)")):
        crit(s.detach(), s)  # 3 teacher heads where 4 were declared
    with pytest.raises(ValueError, match="weight_temperature must be > 0"):
        attention_method("amad", weight_temperature=0.0)
    assert "num_relation_heads" in attention_method("minilm_relation").options()


def test_registry_names_and_options_are_distinct_where_meanings_differ():
    """One list of methods; an option name means one thing across methods (temperatures, row loss)."""
    assert tuple(METHODS) == ATTENTION_METHODS and len(set(ATTENTION_METHODS)) == len(ATTENTION_METHODS)
    assert all(cls.name == name for name, cls in METHODS.items())
    owners: dict[str, set[str]] = {}
    for name in METHODS:
        for option in attention_method(name, **_options(name)).options():
            owners.setdefault(option, set()).add(name)
    assert "temperature" not in owners and "kind" not in owners and "alpha_granularity" not in owners
    assert owners["weight_temperature"] == {"amad", "amad_proj"}
    assert owners["row_loss"] == {"one_to_one", "head_mean"}


def test_grid_option_resizes_the_teacher():
    teacher = random_maps(2, 4, 1 + 16, 1 + 16, seed=3, dtype=torch.float32)  # [CLS] + 4x4 patches
    student = random_maps(2, 3, 1 + 4, 1 + 4, seed=4, dtype=torch.float32)  # [CLS] + 2x2 patches
    crit = build_attention_criterion("amad", teacher_heads=4, student_heads=3, teacher_grid=(4, 4), student_grid=(2, 2))
    loss, w = crit(teacher, student)
    assert torch.isfinite(loss) and w.shape == (2, 4, 3)
    with pytest.raises(ValueError, match="both teacher_grid and student_grid"):
        build_attention_criterion("amad", teacher_heads=4, student_heads=3, teacher_grid=(4, 4))
