"""The capture contract per family and site: shapes, probabilities, masks, causality, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from amad.bench._batches import random_batch
from amad.models import build_model
from amad.models.capture import SINK_ATTR, AttentionPoint


def key_padding(family, site, out, batch):
    """(B, K) bool of real keys for ``site``, or None when its keys are never padded."""
    if site.endswith(".self") and site in out.key_masks:
        mask = out.key_masks[site]
        return None if mask.all() else mask
    if (family, site) == ("blip-vqa", "decoder.cross"):
        return batch["attention_mask"].bool()  # answer -> question
    if (family, site) == ("vlt5", "decoder.cross"):
        return out.query_masks["encoder.self"]  # target -> joint encoder tokens
    return None  # keys are image tokens


def test_sites_shapes_and_probabilities(tiny, family):
    model, batch = tiny
    with torch.no_grad():
        out = model(batch)
    assert set(out.attentions) == set(model.sites)
    bsz = batch["input_ids"].shape[0]
    assert out.logits.shape[:2] == batch["labels"].shape
    assert out.logits.shape[2] == len(model.tokenizer)
    assert torch.equal(out.target_mask, batch["labels"] != -100)
    assert torch.isfinite(out.loss)
    for site in model.sites:
        maps = out.attentions[site]
        assert isinstance(maps, tuple) and len(maps) == model.num_layers(site) > 0
        qmask = out.query_masks[site]
        assert qmask.dtype == torch.bool and qmask.shape[0] == bsz
        keys = key_padding(family, site, out, batch)
        if keys is not None:
            assert keys.logical_not().any(), f"{site}: the batch should pad some keys"
        for a in maps:
            assert a.shape[:3] == (bsz, model.num_heads(site), qmask.shape[1]), site
            torch.testing.assert_close(a.sum(-1), torch.ones_like(a[..., 0]), msg=site)
            assert (a >= 0).all()
            if keys is not None:
                assert a.shape[-1] == keys.shape[1]
                padded = a.masked_select(~keys[:, None, None, :].expand_as(a))
                assert padded.abs().max() == 0, f"{site}: probability on padded keys"


def test_query_masks_match_batch(tiny, family):
    model, batch = tiny
    with torch.no_grad():
        out = model(batch, sites=())
    tm = batch["labels"] != -100
    for site, mask in out.query_masks.items():
        if site.startswith("decoder"):
            assert torch.equal(mask, tm)
        elif site in ("text.self", "text.cross"):
            assert torch.equal(mask, batch["attention_mask"].bool())
        elif site == "vision.self":
            assert mask.all()
        elif site == "encoder.self":  # [visual tokens; text]
            n_text = batch["input_ids"].shape[1]
            assert mask[:, :-n_text].all() and torch.equal(mask[:, -n_text:], batch["attention_mask"].bool())


def test_decoder_self_attention_is_causal(tiny):
    model, batch = tiny
    with torch.no_grad():
        out = model(batch, sites=("decoder.self",))
    for a in out.attentions["decoder.self"]:
        q = a.shape[-2]
        upper = torch.triu(torch.ones(q, q, dtype=torch.bool), diagonal=1)
        assert a[..., upper].abs().max() == 0


def test_only_requested_sites(tiny):
    model, batch = tiny
    with torch.no_grad():
        none = model(batch, sites=())
        one = model(batch, sites=[model.sites[-1]])
        as_str = model(batch, sites=model.sites[0])
    assert none.attentions == {} and none.qkv == {}
    assert list(one.attentions) == [model.sites[-1]]
    assert list(as_str.attentions) == [model.sites[0]]
    torch.testing.assert_close(none.logits, one.logits)


def test_qkv_projections(tiny, family):
    model, batch = tiny
    self_sites = [s for s in model.sites if s.endswith(".self")]
    with torch.no_grad():
        out = model(batch, sites=(), qkv_sites=self_sites)
    assert out.attentions == {}
    for site in self_sites:
        layers = out.qkv[site]
        assert len(layers) == model.num_layers(site)
        length = out.key_masks[site].shape[1]
        for q, k, v in layers:
            assert q.shape == k.shape == v.shape
            assert q.shape[:2] == (batch["input_ids"].shape[0], length)
            assert not torch.equal(q, k)


def test_no_hooks_or_sinks_left_behind(tiny):
    model, batch = tiny
    with torch.no_grad():
        model(batch, qkv_sites=[s for s in model.sites if s.endswith(".self")])
    for mod in model.modules():
        assert not mod._forward_hooks, type(mod).__name__
        assert not hasattr(mod, SINK_ATTR)


def test_maps_are_pre_dropout_in_train_mode(family):
    """With attention dropout on, training-mode maps are still probabilities (read before dropout)."""
    model = (
        build_model(family, "tiny", seed=0, attention_dropout=0.5)
        if family != "vlt5"
        else build_model(family, "tiny", seed=0, dropout=0.5)
    )
    model.train()
    batch = random_batch(family, 2, model=model)
    out = model(batch)
    for site, maps in out.attentions.items():
        for a in maps:
            torch.testing.assert_close(a.sum(-1), torch.ones_like(a[..., 0]), msg=site)


def test_unknown_site_is_an_error_naming_it(tiny):
    model, batch = tiny
    with pytest.raises(ValueError, match=r"'text\.nope'"):
        model(batch, sites=("text.nope",))
    with pytest.raises(ValueError, match=r"'decoder\.cross'"):
        model(batch, sites=(), qkv_sites=("decoder.cross",))
    with pytest.raises(ValueError, match="not a site"):
        model.num_heads("nope")


def test_site_without_maps_raises_naming_it(tiny, monkeypatch):
    """A probe that never runs (e.g. a bypassed attention path) must raise, never return ()."""
    model, batch = tiny
    site = model.sites[-1]
    real = model.attention_points

    def broken(s):
        pts = real(s)
        if s == site:
            pts[-1] = AttentionPoint(probe=nn.Dropout(), kind="dropout")
        return pts

    monkeypatch.setattr(model, "attention_points", broken)
    with pytest.raises(RuntimeError, match=f"'{site}'.*layers \\[{model.num_layers(site) - 1}\\]"):
        model(batch, sites=(site,))


def test_vlt5_sdpa_returns_no_maps_and_raises():
    model = build_model("vlt5", "tiny", seed=0).eval()
    model.model.set_attn_implementation("sdpa")
    with pytest.raises(RuntimeError, match=r"'encoder\.self'"):
        model(random_batch("vlt5", 2, model=model), sites=("encoder.self",))


def test_vlt5_region_features():
    model = build_model("vlt5", "tiny", seed=0, patch_size=None, visual_feat_dim=12).eval()
    batch = random_batch("vlt5", 3, model=model, num_regions=5)
    assert batch["visual_feats"].shape == (3, 5, 12) and "visual_boxes" in batch
    with torch.no_grad():
        out = model(batch, sites=("encoder.self",))
    assert out.attentions["encoder.self"][0].shape[-1] == 5 + batch["input_ids"].shape[1]
    del batch["visual_feats"]
    with pytest.raises(ValueError, match="region features only"):
        model(batch)


def test_layers_captures_only_the_requested_layers(tiny, family):
    model, batch = tiny
    site = model.sites[0]
    n = model.num_layers(site)
    with torch.no_grad():
        full = model(batch, sites=[site])
        part = model(batch, sites=[site], layers={site: [n - 1]})
    maps = part.attentions[site]
    assert len(maps) == n and all(m is None for m in maps[:-1])
    torch.testing.assert_close(maps[-1], full.attentions[site][-1], rtol=0, atol=0)
    # no hook left behind: the next plain call captures every layer again
    with torch.no_grad():
        again = model(batch, sites=[site])
    assert all(m is not None for m in again.attentions[site])


def test_layers_out_of_range_names_the_site(tiny):
    model, batch = tiny
    site = model.sites[0]
    n = model.num_layers(site)
    with pytest.raises(ValueError, match=rf"out of range for site '{site}', which has {n} layers"):
        model(batch, sites=[site], layers={site: [n]})
