"""``attention_source="qk"``: the models run SDPA and hand over queries and keys instead of maps.

Float64 tiny models of every family on padded batches: the SDPA forward gives the eager logits and
gradients, the captured :class:`AttentionInputs` rebuild the eager maps, the capture contract (sites,
layers, masks, errors, nothing left behind) holds, the BLIP patch is explicit and idempotent and keeps the
cross-attention mask fix, and T5's chunked position-bias attention has the eager gradients.
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.blip import modeling_blip as hf_blip
from transformers.models.blip import modeling_blip_text as hf_blip_text

from amad.bench._batches import random_batch
from amad.models import build_model
from amad.models import fast_attention as fa
from amad.models.attention_inputs import AttentionInputs
from amad.models.blip_patch import (
    _ORIGINAL_TEXT_SELF_FORWARD,
    apply_blip_fast_attention,
    blip_cross_attention_fix_applied,
    blip_fast_attention_applied,
    remove_blip_fast_attention,
)
from amad.models.capture import FAST_ATTR, QK_SINK_ATTR, SINK_ATTR

F64 = torch.float64


def f64(batch):
    return {k: v.to(F64) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}


@pytest.fixture(scope="module")
def tiny64(family):
    """(float64 adapter in eval mode, padded float64 batch of 4) per family."""
    model = build_model(family, "tiny", seed=0).to(F64).eval()
    return model, f64(random_batch(family, 4, model=model, seed=1))


def _grads(model, out):
    model.zero_grad(set_to_none=True)
    out.loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_sdpa_forward_gives_the_eager_logits_and_gradients(tiny64):
    model, batch = tiny64
    assert (batch["labels"] == -100).any(), "the batch must be padded"
    eager = model(batch, sites=())
    g_eager = _grads(model, eager)
    fast = model(batch, sites=(), attention_source="qk")
    g_fast = _grads(model, fast)
    assert eager.attention_source == "maps" and fast.attention_source == "qk"
    torch.testing.assert_close(fast.logits, eager.logits, rtol=0, atol=1e-12)
    torch.testing.assert_close(fast.loss, eager.loss, rtol=0, atol=1e-12)
    assert g_fast.keys() == g_eager.keys()
    for name, g in g_eager.items():
        torch.testing.assert_close(g_fast[name], g, rtol=0, atol=1e-12, msg=name)


def test_sdpa_path_never_runs_eager_attention(tiny64, monkeypatch):
    """Under qk no attention module reaches its eager softmax (BLIP: the dropout module on the
    probabilities; T5: the eager branch of amad_eager)."""
    model, batch = tiny64
    seen = []
    for site in model.sites:
        for p in model.attention_points(site):
            if p.kind == "dropout":
                p.probe.register_forward_hook(lambda *a: seen.append("dropout"))
    real_softmax = torch.nn.functional.softmax
    monkeypatch.setattr(torch.nn.functional, "softmax", lambda *a, **k: seen.append("softmax") or real_softmax(*a, **k))
    try:
        with torch.no_grad():
            model(batch, sites=(), attention_source="qk")
        assert seen == []
        with torch.no_grad():
            model(batch, sites=())  # the map path still runs eager (and is seen)
        assert seen
    finally:
        for site in model.sites:
            for p in model.attention_points(site):
                p.probe._forward_hooks.clear()


def test_captured_inputs_rebuild_the_eager_maps(tiny64, family):
    model, batch = tiny64
    with torch.no_grad():
        eager = model(batch)
        fast = model(batch, attention_source="qk")
    assert fast.attentions == {} and set(fast.attention_inputs) == set(model.sites)
    assert eager.attention_inputs == {}
    for site in model.sites:
        inputs = fast.attention_inputs[site]
        assert len(inputs) == model.num_layers(site)
        for layer, (x, a) in enumerate(zip(inputs, eager.attentions[site], strict=True)):
            assert isinstance(x, AttentionInputs)
            assert x.shape == tuple(a.shape) and x.num_heads == model.num_heads(site)
            if family == "vlt5":
                assert x.scale == 1.0  # T5 does not scale q kᵀ
                assert (x.bias is None) == (site == "decoder.cross")  # T5's zero cross bias is left out
            else:
                assert x.scale == pytest.approx(x.q.shape[-1] ** -0.5) and x.bias is None
            torch.testing.assert_close(x.maps(), a, rtol=0, atol=1e-13, msg=f"{site} layer {layer}")


def test_key_masks_cover_cross_sites(tiny64, family):
    model, batch = tiny64
    with torch.no_grad():
        out = model(batch, sites=(), attention_source="qk")
    assert set(out.key_masks) == set(model.sites)
    memory = {
        ("blip-vqa", "text.cross"): None,  # question -> image: never padded
        ("blip-vqa", "decoder.cross"): batch["attention_mask"].bool(),
        ("blip-caption", "decoder.cross"): None,
        ("vlt5", "decoder.cross"): out.query_masks.get("encoder.self"),
    }
    for site in model.sites:
        km = out.key_masks[site]
        assert km.dtype == torch.bool
        if site.endswith(".self"):
            assert torch.equal(km, out.query_masks[site])
        elif memory[family, site] is None:
            assert km.all()
        else:
            assert torch.equal(km, memory[family, site]) and not km.all()


def test_only_requested_sites_and_layers(tiny64):
    model, batch = tiny64
    site = model.sites[-1]
    n = model.num_layers(site)
    with torch.no_grad():
        out = model(batch, sites=[site], layers={site: [n - 1]}, attention_source="qk")
        none = model(batch, sites=(), attention_source="qk")
    assert list(out.attention_inputs) == [site] and none.attention_inputs == {}
    assert all(x is None for x in out.attention_inputs[site][:-1]) and out.attention_inputs[site][-1] is not None
    torch.testing.assert_close(none.logits, out.logits, rtol=0, atol=0)


def test_switchable_per_forward_and_nothing_left_behind(tiny64):
    model, batch = tiny64
    self_sites = [s for s in model.sites if s.endswith(".self")]
    with torch.no_grad():
        fast = model(batch, qkv_sites=self_sites, attention_source="qk")
        eager = model(batch, qkv_sites=self_sites)  # maps again right after
    assert set(eager.attentions) == set(model.sites)
    for site in self_sites:  # the q/k/v projections (MiniLMv2) are the same under either source
        for a, b in zip(fast.qkv[site], eager.qkv[site], strict=True):
            for x, y in zip(a, b, strict=True):
                torch.testing.assert_close(x, y, rtol=0, atol=1e-12)
    for mod in model.modules():
        assert not mod._forward_hooks, type(mod).__name__
        for attr in (SINK_ATTR, QK_SINK_ATTR, FAST_ATTR):
            assert not hasattr(mod, attr), (type(mod).__name__, attr)


def test_unknown_source_is_an_error(tiny64):
    model, batch = tiny64
    with pytest.raises(ValueError, match=r"attention_source must be one of \['maps', 'qk'\], got 'fast'"):
        model(batch, attention_source="fast")


def test_site_that_hands_over_nothing_raises_naming_it():
    """T5 switched to transformers' own sdpa bypasses amad's fast path: the qk capture must raise."""
    model = build_model("vlt5", "tiny", seed=0).eval()
    model.model.set_attn_implementation("sdpa")
    with pytest.raises(RuntimeError, match=r"'encoder\.self' produced no queries and keys"):
        model(random_batch("vlt5", 2, model=model), sites=("encoder.self",), attention_source="qk")


def test_blip_fast_attention_patch_is_per_model_idempotent_and_removable():
    model = build_model("blip-vqa", "tiny")  # building a BLIP adapter patches its model's modules
    assert blip_fast_attention_applied(model.model) and blip_cross_attention_fix_applied(model.model)
    assert apply_blip_fast_attention(model.model) == 0
    # transformers' classes are untouched: a BLIP model built without an adapter runs transformers' code
    plain = hf_blip.BlipForQuestionAnswering(model.model.config)
    assert not blip_fast_attention_applied(plain) and not blip_cross_attention_fix_applied(plain)
    assert type(plain.vision_model.encoder.layers[0].self_attn) is hf_blip.BlipAttention
    assert hf_blip_text.BlipTextSelfAttention.forward is _ORIGINAL_TEXT_SELF_FORWARD
    n = remove_blip_fast_attention(model.model)
    assert n == sum(isinstance(m, (hf_blip.BlipAttention, hf_blip_text.BlipTextSelfAttention)) for m in model.modules())
    assert not blip_fast_attention_applied(model.model)
    assert blip_cross_attention_fix_applied(model.model)  # the two patches are independent
    assert apply_blip_fast_attention(model.model) == n
    assert blip_fast_attention_applied(model.model)


def test_blip_vqa_fast_path_keeps_the_cross_attention_mask_fix():
    """Under qk the answer decoder still ignores padded question tokens: a padded example gives the
    logits it gives alone, unpadded."""
    model = build_model("blip-vqa", "tiny", seed=0).to(F64).eval()
    batch = f64(random_batch("blip-vqa", 3, model=model, seed=1, source_len=10))
    n = int(batch["attention_mask"][2].sum())
    assert n < batch["input_ids"].shape[1]
    padded = {k: v[2:3] for k, v in batch.items()}
    alone = dict(padded, input_ids=padded["input_ids"][:, :n], attention_mask=padded["attention_mask"][:, :n])
    with torch.no_grad():
        a = model(alone, sites=(), attention_source="qk")
        p = model(padded, sites=("decoder.cross",), attention_source="qk")
    t = int(alone["labels"].ne(-100).sum())
    torch.testing.assert_close(p.logits[0, :t], a.logits[0, :t], rtol=0, atol=1e-12)
    maps = p.attention_inputs["decoder.cross"][0].maps()
    assert maps[..., n:].abs().max() == 0  # no probability on the padded question tokens


def test_dropout_runs_in_training_and_maps_stay_pre_dropout(family):
    kw = {"attention_dropout": 0.5} if family != "vlt5" else {"dropout": 0.5}
    model = build_model(family, "tiny", seed=0, **kw).train()
    batch = random_batch(family, 2, model=model)
    torch.manual_seed(0)
    out = model(batch, attention_source="qk")
    model.eval()
    with torch.no_grad():
        ref = model(batch, sites=(), attention_source="qk")
    assert torch.isfinite(out.loss) and not torch.allclose(out.logits, ref.logits)
    for site, inputs in out.attention_inputs.items():
        for x in inputs:
            maps = x.maps()
            torch.testing.assert_close(maps.sum(-1), torch.ones_like(maps[..., 0]), msg=site)


def test_generation_is_unchanged_by_the_patch(tiny64):
    model, batch = tiny64
    first = model.generate_ids(batch, max_new_tokens=3)
    remove_blip_fast_attention(model.model)
    try:
        plain = model.generate_ids(batch, max_new_tokens=3)
    finally:
        apply_blip_fast_attention(model.model)
    assert torch.equal(first, plain)


# ----------------------------------------------------------------------- T5's position-bias attention


def _eager(q, k, v, scale, mask, bias):
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale + bias
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(q.dtype).min) if mask.dtype == torch.bool else scores + mask
    return torch.matmul(torch.softmax(scores, -1), v)


@pytest.mark.parametrize("mask_kind", ["additive", "bool", "none"])
@pytest.mark.parametrize("bias_rows", ["per_row", "broadcast"])
def test_biased_sdpa_equals_eager_in_value_and_gradients(monkeypatch, mask_kind, bias_rows):
    """T5's attention with a trainable (1, H, Q, K) position bias, in chunks of query rows (3 rows here):
    value and gradients for q, k, v and the bias equal eager attention's, and nothing of B·H·Q·K is
    kept for the backward."""
    B, H, Q, K, d = 3, 2, 7, 9, 4
    monkeypatch.setattr(fa, "ROW_CHUNK_ELEMENTS", B * H * 3 * K)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, n, d, generator=g, dtype=F64, requires_grad=True) for n in (Q, K, K))
    bias = torch.randn(1, H, Q if bias_rows == "per_row" else 1, K, generator=g, dtype=F64, requires_grad=True)
    real = torch.ones(B, K, dtype=torch.bool)
    real[1, 6:] = False
    mask = {
        "additive": torch.zeros(B, 1, 1, K, dtype=F64).masked_fill(~real[:, None, None], torch.finfo(F64).min),
        "bool": real[:, None, None, :] & torch.ones(1, 1, Q, 1, dtype=torch.bool),
        "none": None,
    }[mask_kind]
    saved = []

    def pack(x):
        saved.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = fa.sdpa_attention(q, k, v, scale=0.7, mask=mask, bias=bias)
    ref = _eager(q, k, v, 0.7, mask, bias)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    assert max(saved) < B * H * Q * K, saved
    w = torch.randn(ref.shape, generator=g, dtype=F64)
    got = torch.autograd.grad((out * w).sum(), (q, k, v, bias))
    want = torch.autograd.grad((ref * w).sum(), (q, k, v, bias))
    for name, a, b in zip("qkvb", got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=name)


def test_biased_sdpa_without_gradient_and_with_dropout():
    B, H, Q, K, d = 2, 2, 5, 5, 4
    q, k, v = (torch.randn(B, H, n, d, dtype=F64) for n in (Q, K, K))
    bias = torch.randn(1, H, Q, K, dtype=F64)
    with torch.no_grad():
        out = fa.sdpa_attention(q, k, v, scale=1.0, bias=bias)
    torch.testing.assert_close(out, _eager(q, k, v, 1.0, None, bias), rtol=0, atol=1e-12)
    torch.manual_seed(0)
    dropped = fa.sdpa_attention(q, k, v, scale=1.0, bias=bias.requires_grad_(True), dropout_p=0.5)
    assert torch.isfinite(dropped).all() and not torch.allclose(dropped, out)
