"""The scene-description language-modelling data (amad.data.scene_text): texts, vocabulary, batches, splits."""

from __future__ import annotations

import pytest
import torch

from amad.data.scene_text import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SceneTextDataModule,
    collate_text,
    describe,
    scene_text_tokenizer,
    vocabulary,
)
from amad.scenes.attributes import ShapeAttributes

RED = ShapeAttributes("circle", "red", "small", 0, 0)
BLUE = ShapeAttributes("triangle", "blue", "large", 2, 1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("AMAD_CACHE", str(tmp_path_factory.mktemp("scene-text") / "cache"))  # tiny pools, drawn here
    yield
    mp.undo()


def test_describe_then_recall_and_which_words_are_copied():
    words, copied = describe([RED, BLUE], [1, 0])
    assert " ".join(words) == (
        "a small red circle in the top left corner . a large blue triangle at the bottom . "
        "the blue shape is a large triangle at the bottom . the red shape is a small circle in the top left corner ."
    )
    assert [w for w, c in zip(words, copied, strict=True) if c] == [
        *("large", "triangle", "at", "the", "bottom"),
        *("small", "circle", "in", "the", "top", "left", "corner"),
    ]


def test_describe_refuses_shared_colours_and_bad_orders():
    with pytest.raises(ValueError, match="distinct"):
        describe([RED, RED], [0, 1])
    with pytest.raises(ValueError, match="permutation"):
        describe([RED, BLUE], [0, 0])


def test_vocabulary_is_fixed_and_the_tokenizer_agrees():
    vocab = vocabulary()
    assert vocab[:7] == ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[BOS]", "[EOS]")
    assert (PAD_ID, BOS_ID, EOS_ID) == (0, 5, 6) and len(vocab) == 35
    words, _ = describe([RED, BLUE], [0, 1])
    assert scene_text_tokenizer()(" ".join(words))["input_ids"] == [vocab.index(w) for w in words]


def test_batches_are_deterministic_padded_and_masked(cache):
    a = SceneTextDataModule(train_size=24, val_size=8, test_size=8, batch_size=8, seed=3)
    b = SceneTextDataModule(train_size=24, val_size=8, test_size=8, batch_size=8, seed=3)
    a.setup("fit")
    b.setup("fit")
    assert a.datasets["train"].texts == b.datasets["train"].texts  # same seed, same texts
    assert a.datasets["train"].texts != a.datasets["val"].texts
    assert a.vocab_size == 35 and a.task == "lm"
    batch = next(iter(a.val_dataloader()))
    ids, mask, labels, copy = batch["input_ids"], batch["attention_mask"], batch["labels"], batch["copy_mask"]
    lengths = mask.sum(1)
    assert lengths.min() < lengths.max()  # 2 or 3 shapes: some texts are padded
    for row in range(len(ids)):
        n = int(lengths[row])
        assert mask[row, :n].all() and not mask[row, n:].any()  # right padding
        assert ids[row, 0] == BOS_ID and ids[row, n - 1] == EOS_ID and (ids[row, n:] == PAD_ID).all()
        assert (labels[row, :n] == ids[row, :n]).all() and (labels[row, n:] == -100).all()
        assert not copy[row, n:].any() and copy[row, :n].sum() > 0
        text = a.datasets["val"].texts[row].split()
        assert [vocabulary()[i] for i in ids[row, 1 : n - 1]] == text


def test_colours_in_a_text_are_distinct_and_counts_in_range(cache):
    dm = SceneTextDataModule(train_size=40, val_size=8, test_size=8, objects=(2, 3))
    dm.setup("fit")
    counts = set()
    for text in dm.datasets["train"].texts:
        sentences = [s.split() for s in text.split(" . ") if s.startswith("a ")]
        colours = [s[2] for s in sentences]
        assert len(set(colours)) == len(colours)
        counts.add(len(colours))
    assert counts == {2, 3}


def test_collate_of_unequal_items():
    items = [
        (torch.tensor([5, 8, 6]), torch.tensor([False, True, False])),
        (torch.tensor([5, 6]), torch.tensor([0, 0])),
    ]
    batch = collate_text(items)
    assert batch["input_ids"].tolist() == [[5, 8, 6], [5, 6, 0]]
    assert batch["labels"].tolist() == [[5, 8, 6], [5, 6, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["copy_mask"].tolist() == [[False, True, False], [False, False, False]]


def test_eval_subset_and_eval_batch_size(cache):
    dm = SceneTextDataModule(train_size=24, val_size=16, test_size=8, batch_size=8, eval_batch_size=4, eval_subset=6)
    val = list(dm.val_dataloader())
    assert [len(b["input_ids"]) for b in val] == [4, 2]  # the first 6 of 16 texts, 4 a batch
    first = collate_text([dm.datasets["val"][i] for i in range(4)])
    assert torch.equal(val[0]["input_ids"], first["input_ids"])
    assert len(next(iter(dm.train_dataloader()))["input_ids"]) == 8
    with pytest.raises(ValueError, match="eval_subset"):
        SceneTextDataModule(eval_subset=0)
