"""Presets, overrides, config errors and the random batch format."""

from __future__ import annotations

import pytest
import torch

from amad.bench._batches import random_batch
from amad.models import FAMILIES, build_model, model_config
from amad.models.tokenizers import build_word_tokenizer


def test_small_preset_is_the_demo_teacher_size():
    model = build_model("blip-vqa", "small", seed=0)
    n = sum(p.numel() for p in model.parameters())
    assert 2.5e6 < n < 3.5e6
    vc, tc = model.model.config.vision_config, model.model.config.text_config
    assert (vc.num_hidden_layers, vc.num_attention_heads, vc.hidden_size, vc.patch_size, vc.image_size) == (
        4,
        8,
        128,
        8,
        64,
    )
    assert (tc.num_hidden_layers, tc.num_attention_heads, tc.hidden_size) == (4, 8, 128)
    assert model.num_heads("vision.self") == 8 and model.num_layers("decoder.cross") == 4


def test_base_presets_have_real_shapes_without_instantiating():
    blip, _ = model_config("blip-vqa", "base")
    assert (
        blip.vision_config.hidden_size,
        blip.vision_config.num_hidden_layers,
        blip.vision_config.image_size,
        blip.text_config.vocab_size,
        blip.text_config.num_attention_heads,
    ) == (768, 12, 384, 30524, 12)
    t5, visual = model_config("vlt5", "base")
    assert (t5.d_model, t5.num_heads, t5.d_kv, t5.num_layers, t5.num_decoder_layers, t5.vocab_size) == (
        768,
        12,
        64,
        12,
        12,
        32128,
    )
    assert visual["visual_feat_dim"] == 2048 and visual["patch_size"] is None


@pytest.mark.parametrize("family", FAMILIES)
def test_overrides(family):
    model = build_model(
        family,
        "tiny",
        num_heads=2,
        num_layers=3,
        hidden_size=32,
        intermediate_size=48,
        image_size=32,
        patch_size=8,
        vocab_size=50,
    )
    for site in model.sites:
        assert model.num_heads(site) == 2 and model.num_layers(site) == 3
    batch = random_batch(family, 2, model=model)
    assert batch["pixel_values"].shape[-1] == 32 and int(batch["input_ids"].max()) < 50
    with torch.no_grad():
        out = model(batch)
    assert out.logits.shape[-1] == 50
    first = out.attentions[model.sites[0]][0]
    if family != "vlt5":
        assert first.shape[-1] == (32 // 8) ** 2 + 1  # [CLS] + patches


def test_tower_specific_and_raw_overrides():
    model = build_model("blip-vqa", "tiny", vision_num_layers=1, text_num_heads=2, text_config={"layer_norm_eps": 1e-6})
    assert model.num_layers("vision.self") == 1 and model.num_layers("text.self") == 2
    assert model.num_heads("decoder.cross") == 2 and model.num_heads("vision.self") == 4
    assert model.model.config.text_config.layer_norm_eps == 1e-6
    t5 = build_model("vlt5", "tiny", decoder_num_layers=1, num_heads=8)
    assert t5.num_layers("encoder.self") == 2 and t5.num_layers("decoder.cross") == 1
    assert t5.model.config.d_kv == 64 // 8


@pytest.mark.parametrize(
    ("family", "kwargs", "match"),
    [
        ("blip-vqa", {"num_head": 2}, "unknown override"),
        ("vlt5", {"vision_num_layers": 2}, "unknown override"),
        ("blip-vqa", {"text_config": {"no_such_field": 1}}, "unknown text_config fields"),
        ("blip-vqa", {"num_heads": 3}, "not a multiple"),
        ("vlt5", {"hidden_size": 30, "num_heads": 4}, "not a multiple"),
        ("vlt5", {"patch_size": None}, "patch embedding"),
        ("blip-vqa", {"preset": "huge"}, "unknown preset"),
        ("bert", {}, "unknown model family"),
    ],
)
def test_config_errors(family, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(family, **kwargs)


def test_tokenizer_must_fit_vocab():
    tok = build_word_tokenizer([f"w{i}" for i in range(80)])
    with pytest.raises(ValueError, match="vocab_size"):
        build_model("blip-vqa", "tiny", tokenizer=tok, vocab_size=50)


def test_seed_makes_builds_reproducible_without_touching_global_rng():
    state = torch.random.get_rng_state()
    a, b = build_model("vlt5", "tiny", seed=7), build_model("vlt5", "tiny", seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), na


@pytest.mark.parametrize("family", FAMILIES)
def test_random_batch_format(family):
    batch = random_batch(family, 4, source_len=7, target_len=5, seed=3)
    assert batch["pixel_values"].shape == (4, 3, 64, 64) and batch["pixel_values"].dtype == torch.float32
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.dtype == mask.dtype == labels.dtype == torch.long
    assert labels.shape == (4, 5)
    assert (ids[:, 0] == 2).all()  # [CLS]
    assert torch.equal(ids == 0, mask == 0)  # right padding with [PAD] = 0
    lengths = mask.sum(1)
    assert torch.equal(mask, (torch.arange(ids.shape[1]) < lengths[:, None]).long())
    assert (ids[torch.arange(4), lengths - 1] == 3).all()  # [SEP] ends the source
    real = labels != -100
    n = real.sum(1)
    assert torch.equal(real, torch.arange(5) < n[:, None])
    assert (labels[torch.arange(4), n - 1] == 6).all()  # [EOS] ends the target, no [BOS]
    assert n[0] == 5 and n[-1] == 1
    assert len(batch["ids"]) == len(batch["references"]) == len(batch["source_text"]) == 4
    assert all(isinstance(r, list) and isinstance(r[0], str) for r in batch["references"])
    again = random_batch(family, 4, source_len=7, target_len=5, seed=3)
    assert torch.equal(again["input_ids"], ids) and torch.equal(again["pixel_values"], batch["pixel_values"])
    if family == "blip-caption":
        assert ids.shape[1] == 2
    else:
        assert mask[0].all() and not mask[-1].all()


def test_random_batch_from_a_tokenizer():
    tok = build_word_tokenizer(["is there a red circle", "yes", "no", "blue square"])
    batch = random_batch("blip-vqa", 3, tokenizer=tok, seed=0)
    assert int(batch["input_ids"].max()) < len(tok)
    assert (batch["labels"][:, 0] != -100).all()
    assert set(batch["references"][0][0].split()) <= set(tok.get_vocab())
    model = build_model("blip-vqa", "tiny", tokenizer=tok)
    with torch.no_grad():
        assert torch.isfinite(model(batch, sites=()).loss)
