"""Padding must not change outputs: the BLIP cross-attention mask fix, and VL-T5's visual-first layout."""

from __future__ import annotations

import copy
import inspect
import pickle

import pytest
import torch
from transformers import BlipForQuestionAnswering
from transformers.models.blip import modeling_blip_text

from amad.bench._batches import random_batch
from amad.models import build_model
from amad.models.blip_patch import (
    _ORIGINAL_FORWARD,
    apply_blip_cross_attention_fix,
    blip_cross_attention_fix_applied,
    remove_blip_cross_attention_fix,
)


def padded_vs_alone(model, family):
    """Max |logit difference| on the real targets of a padded example run alone without padding,
    and the two losses."""
    batch = random_batch(family, 3, model=model, seed=1, source_len=10)
    n = int(batch["attention_mask"][2].sum())
    assert n < batch["input_ids"].shape[1]  # example 2 is padded
    alone = {k: v[2:3] for k, v in batch.items()}
    alone["input_ids"], alone["attention_mask"] = alone["input_ids"][:, :n], alone["attention_mask"][:, :n]
    padded = {k: v[2:3] for k, v in batch.items()}
    with torch.no_grad():
        a, p = model(alone, sites=()), model(padded, sites=())
    t = int(alone["labels"].ne(-100).sum())
    return (a.logits[0, :t] - p.logits[0, :t]).abs().max().item(), a.loss.item(), p.loss.item()


def test_the_installed_blip_has_the_bug():
    """Read the installed source: the cross-attention mask goes in as attention_mask and is dropped."""
    attention_src = inspect.getsource(_ORIGINAL_FORWARD)
    self_src = inspect.getsource(modeling_blip_text.BlipTextSelfAttention.forward)
    layer_src = inspect.getsource(modeling_blip_text.BlipTextLayer.forward)
    assert "attention_mask=encoder_attention_mask" in layer_src
    assert "encoder_attention_mask" not in attention_src
    assert "attention_mask = encoder_attention_mask if is_cross_attention else attention_mask" in self_src


def test_fix_is_explicit_idempotent_and_scoped_to_the_adapters_model():
    model = build_model("blip-vqa", "tiny")  # building a BLIP adapter applies it to its model
    assert blip_cross_attention_fix_applied(model.model)
    assert apply_blip_cross_attention_fix(model.model) == 0
    # transformers' class keeps its (buggy) forward: a BLIP model built without amad is unchanged
    assert modeling_blip_text.BlipTextAttention.forward is _ORIGINAL_FORWARD
    plain = BlipForQuestionAnswering(model.model.config)
    assert not blip_cross_attention_fix_applied(plain)
    assert apply_blip_cross_attention_fix(plain) == sum(
        isinstance(m, modeling_blip_text.BlipTextAttention) for m in plain.modules()
    )
    assert blip_cross_attention_fix_applied(plain)
    for copied in (copy.deepcopy(model.model), pickle.loads(pickle.dumps(model.model))):  # the fix travels
        assert blip_cross_attention_fix_applied(copied)


def test_blip_vqa_padded_equals_unpadded_and_bug_shows_without_fix():
    model = build_model("blip-vqa", "tiny", seed=0).eval()
    diff, loss_alone, loss_padded = padded_vs_alone(model, "blip-vqa")
    assert diff < 1e-5
    assert loss_alone == pytest.approx(loss_padded, abs=1e-6)
    remove_blip_cross_attention_fix(model.model)
    try:
        diff_bug, _, _ = padded_vs_alone(model, "blip-vqa")
        batch = random_batch("blip-vqa", 3, model=model, seed=1)
        with torch.no_grad():
            maps = model(batch, sites=("decoder.cross",)).attentions["decoder.cross"][0]
        leaked = maps.masked_select(~batch["attention_mask"].bool()[:, None, None, :].expand_as(maps))
    finally:
        apply_blip_cross_attention_fix(model.model)
    assert diff_bug > 1e-3, "without the fix padding should change the logits"
    assert leaked.sum() > 0, "without the fix the decoder attends to padded question tokens"


def test_blip_vqa_padded_batch_equals_single_examples():
    model = build_model("blip-vqa", "tiny", seed=0).eval()
    batch = random_batch("blip-vqa", 4, model=model, seed=2)
    with torch.no_grad():
        full = model(batch, sites=())
        for i in range(4):
            n = int(batch["attention_mask"][i].sum())
            t = int(batch["labels"][i].ne(-100).sum())
            one = {k: v[i : i + 1] for k, v in batch.items()}
            one["input_ids"], one["attention_mask"] = one["input_ids"][:, :n], one["attention_mask"][:, :n]
            one["labels"] = one["labels"][:, :t]
            out = model(one, sites=())
            torch.testing.assert_close(out.logits[0], full.logits[i, :t], atol=1e-5, rtol=1e-5)


def test_vlt5_padded_equals_unpadded():
    model = build_model("vlt5", "tiny", seed=0).eval()
    diff, loss_alone, loss_padded = padded_vs_alone(model, "vlt5")
    assert diff < 1e-5
    assert loss_alone == pytest.approx(loss_padded, abs=1e-6)
