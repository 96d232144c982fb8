"""The speed paths of the attention distiller give the same losses and gradients as the plain ones:
layer pairs stacked along the batch into one call, and capturing only the mapped teacher layers."""

from __future__ import annotations

import pytest
import torch

from amad.bench._batches import random_batch
from amad.distill import AttentionDistiller
from amad.lit import DistillationModule
from amad.losses import A2D, attention_method
from amad.models import build_model


def _terms_and_grads(module, batch):
    module.student.zero_grad(set_to_none=True)
    terms = module.distillation_losses(batch)
    terms["loss"].backward()
    grads = {n: p.grad.clone() for n, p in module.student.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in terms.items()}, grads


@pytest.mark.parametrize("method", ["amad", "one_to_one", "head_mean", "shd", "attn_distill"])
@pytest.mark.parametrize("family", ["blip-vqa", "vlt5"])
def test_stacked_layer_pairs_equal_one_call_per_pair(monkeypatch, family, method):
    torch.manual_seed(0)
    teacher = build_model(family, preset="tiny")
    module = DistillationModule(teacher=teacher, student={"num_heads": 2}, attention=attention_method(method))
    module.student.eval()  # no dropout: both passes see the same maps
    batch = random_batch(family, 4, seed=3, tokenizer=teacher.tokenizer)
    assert not batch["attention_mask"].all(), "the batch must have padded text rows"

    calls = []
    real = AttentionDistiller._call

    def counting(self, *args, **kwargs):
        calls.append(args[0])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(AttentionDistiller, "_call", counting)
    monkeypatch.setattr(AttentionDistiller, "STACK_MAX_NUMEL", 0)
    per_pair, g_pair = _terms_and_grads(module, batch)
    n_pair_calls = len(calls)
    calls.clear()
    monkeypatch.setattr(AttentionDistiller, "STACK_MAX_NUMEL", 1 << 40)
    stacked, g_stacked = _terms_and_grads(module, batch)

    sites = module.attn.layer_maps
    assert n_pair_calls == sum(len(v) for v in sites.values())
    assert len(calls) == len(sites) < n_pair_calls  # one call per site
    assert per_pair.keys() == stacked.keys()
    for k in per_pair:
        torch.testing.assert_close(stacked[k], per_pair[k], rtol=1e-5, atol=1e-6, msg=k)
    for n in g_pair:
        torch.testing.assert_close(g_stacked[n], g_pair[n], rtol=1e-4, atol=1e-6, msg=n)


def test_parameterised_methods_are_never_stacked(monkeypatch):
    torch.manual_seed(0)
    teacher = build_model("blip-vqa", preset="tiny")
    module = DistillationModule(teacher=teacher, student={"num_heads": 2}, attention=A2D())
    monkeypatch.setattr(AttentionDistiller, "STACK_MAX_NUMEL", 1 << 40)
    calls = []
    real = AttentionDistiller._call
    monkeypatch.setattr(AttentionDistiller, "_call", lambda self, *a, **k: calls.append(a[1]) or real(self, *a, **k))
    module.distillation_losses(random_batch("blip-vqa", 2, seed=0, tokenizer=teacher.tokenizer))
    assert all(isinstance(l_s, int) for l_s in calls)  # one call per layer pair, each its own aligner


def test_only_the_mapped_teacher_layers_are_captured(monkeypatch):
    torch.manual_seed(0)
    teacher = build_model("blip-vqa", preset="tiny", num_layers=4)
    module = DistillationModule(teacher=teacher, student={"num_layers": 2, "num_heads": 2}, layer_map="last")
    seen = {}
    real = type(teacher).forward

    def spy(self, batch, sites=None, qkv_sites=(), layers=None):
        out = real(self, batch, sites=sites, qkv_sites=qkv_sites, layers=layers)
        if self is teacher:
            seen.update({s: [m is not None for m in maps] for s, maps in out.attentions.items()})
        return out

    monkeypatch.setattr(type(teacher), "forward", spy)
    terms = module.distillation_losses(random_batch("blip-vqa", 2, seed=0, tokenizer=teacher.tokenizer))
    assert torch.isfinite(terms["loss"])
    assert module.attn.teacher_layers() == {s: (2, 3) for s in module.attn.layer_maps}
    assert seen and all(kept == [False, False, True, True] for kept in seen.values())


def test_unpadded_sites_skip_the_mask_with_the_same_loss(monkeypatch):
    torch.manual_seed(0)
    teacher = build_model("blip-vqa", preset="tiny")
    module = DistillationModule(teacher=teacher, student={"num_heads": 2})
    module.student.eval()
    batch = random_batch("blip-vqa", 4, seed=3, tokenizer=teacher.tokenizer)
    assert module.attn._unpadded == {"vision.self"}
    masks = {}
    real = AttentionDistiller._call

    def recording(self, site, *args):
        masks[site] = args[-1]["query_mask"]
        return real(self, site, *args)

    monkeypatch.setattr(AttentionDistiller, "_call", recording)
    fast, g_fast = _terms_and_grads(module, batch)
    assert masks["vision.self"] is None and masks["text.self"] is not None
    monkeypatch.setattr(module.attn, "_unpadded", set())
    plain, g_plain = _terms_and_grads(module, batch)
    assert masks["vision.self"] is not None
    torch.testing.assert_close(fast["loss_attn/vision.self"], plain["loss_attn/vision.self"], rtol=1e-6, atol=0)
    for n in g_plain:
        torch.testing.assert_close(g_fast[n], g_plain[n], rtol=1e-5, atol=1e-7, msg=n)
