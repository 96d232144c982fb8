"""EasyVQADataModule: splits by image, sizes, batch contract, low-data options, augmentation."""

import re

import pytest
import torch
from data_helpers import assert_batch_contract

from amad.data import EasyVQADataModule
from amad.data.easyvqa import random_flip_rot90
from amad.data.embedded import split_train_images
from amad.metrics import VQAAccuracy
from amad.scenes import easyvqa_source as src


@pytest.fixture(scope="module")
def dm():
    d = EasyVQADataModule(batch_size=8)
    d.setup("fit")
    d.setup("test")
    return d


def test_package_data_and_sizes(dm):
    assert len(src.load_questions("train")) == 38575 and len(src.load_questions("test")) == 9673
    assert tuple(src.load_images("train").shape) == (4000, 3, 64, 64)
    assert tuple(src.load_images("test").shape) == (1000, 3, 64, 64)
    assert len(src.load_answers()) == 13
    sizes = {k: len(v) for k, v in dm.datasets.items()}
    assert sizes["train"] + sizes["val"] == 38575 and sizes["test"] == 9673
    assert sizes == {"train": 34671, "val": 3904, "test": 9673}
    assert dm.metadata["synthetic"] is True and dm.task == "vqa"


def test_validation_split_is_by_image_and_deterministic(dm):
    train_imgs = {ex.image for ex in dm.datasets["train"].examples}
    val_imgs = {ex.image for ex in dm.datasets["val"].examples}
    assert not train_imgs & val_imgs
    assert len(val_imgs) == 400 and len(train_imgs) == 3600
    assert split_train_images(4000, 0.1, 0) == split_train_images(4000, 0.1, 0)
    assert split_train_images(4000, 0.1, 0)[1] != split_train_images(4000, 0.1, 1)[1]


def test_vocab_before_setup_and_tokenizer_roundtrip(tmp_path):
    d = EasyVQADataModule()
    assert not d.datasets and d.vocab_size == len(d.tokenizer) > 30
    assert d.tokenizer.pad_token_id == 0 and d.tokenizer.unk_token_id == 1
    assert EasyVQADataModule(fraction=0.1, seed=3).vocab_size == d.vocab_size  # independent of low-data options
    d.tokenizer.save_pretrained(tmp_path / "tok")
    loaded = EasyVQADataModule(tokenizer_path=str(tmp_path / "tok"))
    q = "is there a red circle in the image?"
    assert loaded.tokenizer(q)["input_ids"] == d.tokenizer(q)["input_ids"]
    assert d.tokenizer.unk_token_id not in d.tokenizer(q)["input_ids"]
    assert d.metric_names == ("accuracy",) and isinstance(d.make_metric(), VQAAccuracy)


def test_batch_contract_and_content(dm):
    batch = next(iter(dm.val_dataloader()))
    assert_batch_contract(batch, dm.tokenizer, image_size=64)
    assert batch["references"] == [
        [a] for a in dm.tokenizer.batch_decode([[t for t in lab if t >= 0][:-1] for lab in batch["labels"].tolist()])
    ]
    ex = dm.datasets["val"].examples[0]
    q = src.load_questions("train")[ex.id]
    assert (ex.source, ex.target, ex.image) == (q.question, q.answer, q.image_id)
    # default normalisation (x - 0.5) / 0.5 puts the light background near +1
    assert batch["pixel_values"].max() <= 1.0 and batch["pixel_values"].min() >= -1.0


def test_text_prefix_image_size_and_normalize():
    d = EasyVQADataModule(batch_size=4, text_prefix="vqa:", image_size=32, normalize=(0.0, 1.0), eval_subset=4)
    d.setup("validate")
    batch = next(iter(d.val_dataloader()))
    assert_batch_contract(batch, d.tokenizer, image_size=32)
    first = d.tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    assert first[:3] == ["[CLS]", "vqa", ":"]
    assert not any(s.startswith("vqa") for s in batch["source_text"])
    assert 0.0 <= batch["pixel_values"].min() and batch["pixel_values"].max() <= 1.0


def test_fraction_subset_deterministic():
    a = EasyVQADataModule(fraction=0.05, seed=1)
    b = EasyVQADataModule(fraction=0.05, seed=1)
    c = EasyVQADataModule(fraction=0.05, seed=2)
    for d in (a, b, c):
        d.setup("fit")
    ids = lambda d: [ex.id for ex in d.datasets["train"].examples]  # noqa: E731
    assert ids(a) == ids(b) != ids(c)
    assert len(ids(a)) == round(34671 * 0.05)
    assert len(a.datasets["val"]) == 3904  # validation untouched by fraction
    s = EasyVQADataModule(subset=100, eval_subset=50)
    s.setup("fit")
    assert len(s.datasets["train"]) == 100 and len(s.datasets["val"]) == 50
    with pytest.raises(ValueError):
        EasyVQADataModule(fraction=0.0).setup("fit")


def test_no_question_depends_on_position_so_rot_flip_keeps_answers():
    words = {
        w for split in ("train", "test") for q in src.load_questions(split) for w in re.findall(r"[a-z]+", q.question)
    }
    assert not words & {
        "left",
        "right",
        "top",
        "bottom",
        "above",
        "below",
        "upper",
        "lower",
        "corner",
        "center",
        "middle",
        "side",
        "up",
        "down",
        "rotated",
        "pointing",
    }


def test_augment_rotates_and_flips_train_only():
    torch.manual_seed(0)
    img = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(1, 2, 12)[:, :, :2].expand(3, 2, 2).contiguous()
    seen = {random_flip_rot90(img)[0].flatten().tolist().__str__() for _ in range(60)}
    assert len(seen) > 1
    d = EasyVQADataModule(augment=True, subset=8, eval_subset=8)
    d.setup("fit")
    assert d.datasets["train"].transform is not None and d.datasets["val"].transform is None
    item = d.datasets["train"][0]
    raw = src.load_images("train")[d.datasets["train"].examples[0].image]
    variants = [torch.rot90(raw, k, dims=(-2, -1)) for k in range(4)]
    variants += [v.flip(-1) for v in variants]
    assert any(torch.equal(item["image"], v) for v in variants)
