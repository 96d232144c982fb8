"""The shared collate: special tokens per tokenizer family, padding, truncation, image handling."""

import pytest
import torch
from data_helpers import assert_batch_contract
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from amad.data.collate import IGNORE_INDEX, VisionTextCollator, prepare_images
from amad.models.tokenizers import build_word_tokenizer

WORDS = ["what", "color", "is", "the", "shape", "?", "red", "blue", "vqa", ":", "a", "circle"]


def _wordlevel(specials: list[str], **roles) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=roles["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, **roles)


def _items(n=3):
    texts = [("what color is the shape ?", "red"), ("what is the shape ?", "a red circle"), ("", "blue")]
    return [
        {
            "image": torch.full((3, 8, 8), 10 * i, dtype=torch.uint8),
            "id": i,
            "source": s,
            "target": t,
            "references": [t],
        }
        for i, (s, t) in enumerate(texts[:n])
    ]


def test_word_tokenizer_cls_sep_eos_and_padding():
    tok = build_word_tokenizer([" ".join(WORDS)])
    batch = VisionTextCollator(tok, image_size=8)(_items())
    assert_batch_contract(batch, tok, image_size=8)
    assert tok.convert_ids_to_tokens(batch["input_ids"][0].tolist()) == [
        "[CLS]",
        "what",
        "color",
        "is",
        "the",
        "shape",
        "?",
        "[SEP]",
    ]
    assert batch["input_ids"][2].tolist()[:2] == [tok.cls_token_id, tok.sep_token_id]  # empty source
    red = tok.convert_tokens_to_ids("red")
    assert batch["labels"][0].tolist() == [red, tok.eos_token_id, IGNORE_INDEX, IGNORE_INDEX]
    assert batch["ids"] == [0, 1, 2] and batch["references"] == [["red"], ["a red circle"], ["blue"]]


def test_bert_style_tokenizer_ends_targets_with_sep():
    tok = _wordlevel(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    assert tok.eos_token_id is None
    batch = VisionTextCollator(tok)(_items())
    assert_batch_contract(batch, tok, image_size=8)
    assert batch["labels"][2].tolist()[:2] == [tok.convert_tokens_to_ids("blue"), tok.sep_token_id]


def test_t5_style_tokenizer_no_cls_source_ends_with_eos():
    tok = _wordlevel(["<pad>", "</s>", "<unk>"], pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    assert tok.cls_token_id is None and tok.sep_token_id is None
    col = VisionTextCollator(tok, text_prefix="vqa:")
    batch = col(_items())
    assert_batch_contract(batch, tok, image_size=8)
    row = tok.convert_ids_to_tokens(batch["input_ids"][2].tolist())
    assert row == ["vqa", ":", "</s>"] + ["<pad>"] * (len(row) - 3) and len(row) == 9
    assert batch["source_text"][2] == ""


def test_truncation_keeps_special_tokens():
    tok = build_word_tokenizer([" ".join(WORDS)])
    col = VisionTextCollator(tok, max_source_len=4, max_target_len=2)
    batch = col(_items())
    assert batch["input_ids"].shape[1] == 4 and batch["labels"].shape[1] == 2
    assert batch["input_ids"][0, -1].item() == tok.sep_token_id
    assert batch["labels"][1].tolist() == [tok.convert_tokens_to_ids("a"), tok.eos_token_id]
    with pytest.raises(ValueError):
        VisionTextCollator(tok, max_source_len=1)
    with pytest.raises(ValueError):
        col([])


def test_prepare_images_resize_and_normalise():
    img = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    img[:, 0] = 255
    out = prepare_images(img, 32)
    assert out.shape == (2, 3, 32, 32)
    assert torch.allclose(out[:, 0], torch.ones(1)) and torch.allclose(out[:, 1], -torch.ones(1))
    out = prepare_images(img, 96, mean=(0.0, 0.0, 0.0), std=[1.0, 1.0, 1.0])
    assert out.shape == (2, 3, 96, 96) and out.min() >= 0 and out.max() <= 1
    assert torch.equal(prepare_images(img, None), prepare_images(img, 64))
    with pytest.raises(ValueError):
        prepare_images(img, 8, mean=(0.5, 0.5))
