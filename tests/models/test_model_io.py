"""Saving, loading (local dirs only, HF_HUB_OFFLINE=1), rebuilding from config dicts, tokenizers, generation."""

from __future__ import annotations

import json
import time

import pytest
import torch

from amad.bench._batches import random_batch
from amad.models import build_model, load_pretrained, save_pretrained
from amad.models.tokenizers import build_word_tokenizer, load_tokenizer


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def logits(model, batch):
    with torch.no_grad():
        return model(batch, sites=()).logits


def test_save_load_round_trip(tiny, family, tmp_path):
    model, batch = tiny
    save_pretrained(model, tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "amad_adapter.json").is_file()
    assert (tmp_path / "tokenizer.json").is_file()
    loaded = load_pretrained(tmp_path, family=model.family).eval()
    assert type(loaded) is type(model) and loaded.family == family
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch))
    generic = load_pretrained(str(tmp_path)).eval()  # family from amad_adapter.json
    assert type(generic) is type(model)
    assert loaded.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    assert loaded.config_dict() == model.config_dict()


def test_config_dict_rebuilds_the_architecture(tiny, family):
    model, batch = tiny
    cfg = model.config_dict()
    json.dumps(cfg)  # plain data: fits in Lightning hparams / YAML
    rebuilt = build_model(**cfg, tokenizer=model.tokenizer).eval()
    assert rebuilt.config_dict() == cfg
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(logits(rebuilt, batch), logits(model, batch))


def test_plain_hf_checkpoint_is_wrapped(tmp_path):
    """A plain T5 checkpoint (no amad files) becomes a VL-T5 with a fresh visual embedding."""
    model = build_model("vlt5", "tiny", seed=0)
    model.model.save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path, patch_size=16)
    assert loaded.family == "vlt5" and loaded.tokenizer is None
    assert loaded.init_report["random"] and all(k.startswith("visual.") for k in loaded.init_report["random"])
    torch.testing.assert_close(loaded.model.shared.weight, model.model.shared.weight)
    with pytest.raises(RuntimeError, match="no tokenizer"):
        loaded.generate(random_batch("vlt5", 1, model=loaded))


def test_uncached_hub_id_fails_fast_with_a_local_path_hint():
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="pass a local path"):
        load_pretrained("Salesforce/blip-vqa-base-not-cached-xyz")
    assert time.perf_counter() - start < 10


def test_missing_directory_and_unknown_family(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_pretrained(tmp_path / "nope")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(ValueError, match="pass family="):
        load_pretrained(tmp_path)


def test_word_tokenizer_round_trip_and_model_ids(tmp_path):
    tok = build_word_tokenizer(["What colour is the circle?", "red", "Is there a blue square?"])
    assert tok.pad_token_id == 0 and tok.bos_token_id == 5 and tok.eos_token_id == 6
    ids = tok("is there a red circle?")["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "is there a red circle?"
    model = build_model("blip-vqa", "tiny", tokenizer=tok)
    text = model.model.config.text_config
    assert (text.vocab_size, text.pad_token_id, text.bos_token_id, text.sep_token_id) == (len(tok), 0, 5, 6)
    t5 = build_model("vlt5", "tiny", tokenizer=tok).model.config
    assert (t5.vocab_size, t5.decoder_start_token_id, t5.eos_token_id) == (len(tok), 5, 6)
    save_pretrained(model, tmp_path)
    assert load_tokenizer(tmp_path).get_vocab() == tok.get_vocab()


def test_generate_returns_strings(tiny, family):
    model, batch = tiny
    was_training = model.training
    out = model.generate(batch, max_new_tokens=3)
    assert isinstance(out, list) and len(out) == batch["input_ids"].shape[0]
    assert all(isinstance(s, str) for s in out)
    ids = model.generate_ids(batch, max_new_tokens=3)
    assert ids.shape[0] == len(out) and ids.shape[1] <= 3
    assert model.training == was_training


def test_generate_stops_at_eos_and_matches_teacher_forcing():
    """Greedy decoding agrees with the argmax of the teacher-forced logits on its own output."""
    model = build_model("blip-vqa", "tiny", seed=3).eval()
    batch = random_batch("blip-vqa", 2, model=model)
    ids = model.generate_ids(batch, max_new_tokens=4)
    labels = ids.clone()
    labels[labels == model.pad_token_id] = -100
    forced = model({**batch, "labels": labels}, sites=()).logits.argmax(-1)
    real = labels != -100
    assert torch.equal(forced[real], ids[real])
