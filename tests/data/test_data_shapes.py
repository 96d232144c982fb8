"""Synthetic caption / translation tasks: attributes read from pixels agree with easy-VQA answers,
captions describe them, German agrees in gender / case, DataModules yield the batch contract."""

import re
from collections import Counter

import pytest
import torch
from data_helpers import assert_batch_contract

from amad.data import ShapesCaptionDataModule, ShapesTranslationDataModule
from amad.data.shapes import image_attributes
from amad.metrics import CaptionMetrics, TranslationBLEU
from amad.scenes import easyvqa_source as src
from amad.scenes.attributes import PALETTE, SHAPES, ShapeAttributes, read_attributes
from amad.scenes.captions import CAPTION_TEMPLATES, TEMPLATES, all_sentences, captions, german_noun_phrase, render


def _facts(question: str, answer: str):
    """(attribute, value, holds) facts an easy-VQA question/answer states about its image."""
    words = re.findall(r"[a-z]+", question)
    colours = [w for w in words if w in PALETTE]
    shapes = [w for w in words if w in SHAPES]
    if answer in ("yes", "no"):
        holds = (answer == "yes") != ("not" in words or "no" in words)
        return [("colour", c, holds) for c in colours] + [("shape", s, holds) for s in shapes]
    kind = "colour" if answer in PALETTE else "shape"
    return [(kind, answer, True)] + [("colour", c, True) for c in colours] + [("shape", s, True) for s in shapes]


@pytest.mark.parametrize("split", ["train", "test"])
def test_pixel_attributes_agree_with_every_easyvqa_answer(split):
    attrs = image_attributes(split)
    checked = Counter()
    for q in src.load_questions(split):
        a = attrs[q.image_id]
        for kind, value, holds in _facts(q.question, q.answer):
            assert ((a.shape if kind == "shape" else a.colour) == value) == holds, (split, q)
            if holds:
                checked[kind, q.image_id] += 1
    n = len(attrs)
    # nearly every image has its shape and its colour stated positively by some question
    assert sum(1 for i in range(n) if ("shape", i) in checked) > 0.8 * n
    assert sum(1 for i in range(n) if ("colour", i) in checked) > 0.8 * n
    assert {a.size for a in attrs} == {"small", "medium", "large"}
    assert len({(a.row, a.col) for a in attrs}) == 9


def test_position_and_size_read_from_pixels_on_drawn_images():
    img = torch.full((3, 64, 64), 240, dtype=torch.uint8)
    img[:, 2:12, 50:62] = torch.tensor([0, 0, 255], dtype=torch.uint8).view(3, 1, 1)  # small blue square, top right
    a = read_attributes(img)
    assert (a.shape, a.colour, a.size, a.row, a.col) == ("rectangle", "blue", "small", 0, 2)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    img2 = torch.full((3, 64, 64), 250, dtype=torch.uint8)
    disc = (yy - 40) ** 2 + (xx - 12) ** 2 <= 14**2
    img2[:, disc] = torch.tensor([165, 42, 42], dtype=torch.uint8).view(3, 1)
    a2 = read_attributes(img2)
    assert (a2.shape, a2.colour, a2.size, a2.row, a2.col) == ("circle", "brown", "large", 1, 0)


def test_transformed_positions_match_pixels_after_rot90_and_flip():
    images, attrs = src.load_images("train"), image_attributes("train")
    for i in range(0, 4000, 97):
        for k in range(4):
            for flip in (False, True):
                img = torch.rot90(images[i], k, dims=(-2, -1))
                img = img.flip(-1) if flip else img
                got = read_attributes(img)
                want = attrs[i].transformed(k, flip)
                assert (got.row, got.col, got.shape, got.colour) == (want.row, want.col, want.shape, want.colour)


def test_captions_mention_the_attributes():
    a = ShapeAttributes("triangle", "yellow", "small", 2, 0)
    caps = captions(a)
    assert len(caps) == 5 and len(set(caps)) == 5
    assert caps[0] == "A small yellow triangle in the bottom left corner."
    assert all("triangle" in c for c in caps)
    assert all("yellow" in c for c in caps)
    assert sum("bottom left" in c for c in caps) >= 2 and sum("small" in c for c in caps) >= 2


@pytest.mark.parametrize(
    "shape, adjs, kind, case, expected",
    [
        ("circle", ["groß", "rot"], "indef", "nom", "ein großer roter Kreis"),
        ("triangle", ["klein", "blau"], "indef", "nom", "ein kleines blaues Dreieck"),
        ("rectangle", ["mittelgroß", "grün"], "indef", "nom", "ein mittelgroßes grünes Rechteck"),
        ("shape", ["klein", "rot"], "indef", "nom", "eine kleine rote Form"),
        ("circle", ["rot"], "indef", "acc", "einen roten Kreis"),
        ("triangle", ["rot"], "indef", "acc", "ein rotes Dreieck"),
        ("shape", ["gelb"], "indef", "acc", "eine gelbe Form"),
        ("circle", ["grau"], "def", "nom", "der graue Kreis"),
        ("rectangle", ["schwarz"], "def", "nom", "das schwarze Rechteck"),
        ("shape", ["braun"], "def", "nom", "die braune Form"),
        ("circle", ["grau"], "def", "acc", "den grauen Kreis"),
        ("background", ["hell"], "indef", "dat", "einem hellen Hintergrund"),
        ("shape", ["hell"], "indef", "dat", "einer hellen Form"),
    ],
)
def test_german_agreement(shape, adjs, kind, case, expected):
    assert german_noun_phrase(shape, adjs, kind=kind, case=case) == expected


def test_german_sentences():
    big_red_circle = ShapeAttributes("circle", "red", "large", 0, 0)
    small_blue_tri = ShapeAttributes("triangle", "blue", "small", 1, 1)
    assert render(big_red_circle, 0) == (
        "A large red circle in the top left corner.",
        "Ein großer roter Kreis oben links.",
    )
    assert render(small_blue_tri, 0)[1] == "Ein kleines blaues Dreieck in der Mitte."
    assert render(big_red_circle, 1)[1] == "Es gibt einen roten Kreis oben links."
    assert render(small_blue_tri, 2)[1] == "Das Bild zeigt ein kleines blaues Dreieck."
    assert render(big_red_circle, 2)[1] == "Das Bild zeigt einen großen roten Kreis."
    assert render(big_red_circle, 4)[1] == "Der rote Kreis ist oben links."
    assert render(small_blue_tri, 5)[1] == "Das Dreieck ist klein und blau."
    assert render(small_blue_tri, 6)[1] == "Eine kleine blaue Form in der Mitte."
    # every sentence: nouns capitalised, article/adjective endings consistent with the noun
    for en, de in all_sentences():
        assert en[0].isupper() and de[0].isupper() and en.endswith(".") and de.endswith(".")
        if "Kreis" in de:
            assert not re.search(r"\b(das|eine|ein \w+es) \w*\s?Kreis", de)
        if "Dreieck" in de or "Rechteck" in de:
            noun_phrase = de.split(" auf ")[0].replace("in der Mitte", "")
            assert not re.search(r"\b(der|den|einen|eine) ", noun_phrase, flags=re.IGNORECASE)
            assert not re.search(r"\w+er (Dreieck|Rechteck)", de)


@pytest.fixture(scope="module")
def cap_dm():
    d = ShapesCaptionDataModule(batch_size=8)
    d.setup("fit")
    d.setup("test")
    return d


def test_caption_datamodule(cap_dm):
    assert {k: len(v) for k, v in cap_dm.datasets.items()} == {"train": 18000, "val": 400, "test": 1000}
    assert cap_dm.task == "caption" and cap_dm.metadata["synthetic"]
    batch = next(iter(cap_dm.test_dataloader()))
    assert_batch_contract(batch, cap_dm.tokenizer, image_size=64)
    assert batch["input_ids"].shape[1] == 2  # [CLS] [SEP]
    assert all(len(r) == 5 for r in batch["references"]) and batch["source_text"] == [""] * 8
    attrs = image_attributes("test")
    assert batch["references"][0] == captions(attrs[batch["ids"][0]])
    # same images as EasyVQADataModule's val split
    val_images = sorted({ex.image for ex in cap_dm.datasets["val"].examples})
    from amad.data.embedded import split_train_images

    assert val_images == split_train_images(4000, 0.1, 0)[1]
    tok = cap_dm.tokenizer
    assert all(tok.unk_token_id not in tok(c)["input_ids"] for r in batch["references"] for c in r)
    assert isinstance(cap_dm.make_metric(), CaptionMetrics) and "cider" in cap_dm.metric_names


def test_caption_targets_cover_every_reference(cap_dm):
    train = cap_dm.datasets["train"].examples
    by_image = {}
    for ex in train:
        by_image.setdefault(ex.image, []).append(ex.target)
    assert all(sorted(t) == sorted(captions(image_attributes("train")[i])) for i, t in list(by_image.items())[:50])
    assert len({ex.id for ex in train}) == len(train)


def test_caption_augmentation_keeps_text_true():
    torch.manual_seed(1)
    d = ShapesCaptionDataModule(augment=True, subset=64)
    d.setup("fit")
    ds = d.datasets["train"]
    for j in range(64):
        item = ds[j]
        a = read_attributes(item["image"])
        assert item["references"] == captions(a)
        assert item["target"] in captions(a)


def test_translation_datamodule():
    d = ShapesTranslationDataModule(batch_size=6, text_prefix="translate English to German:", eval_subset=12)
    d.setup("fit")
    d.setup("test")
    assert len(d.datasets["train"]) == 3600 * len(TEMPLATES) and len(d.datasets["val"]) == 12
    batch = next(iter(d.test_dataloader()))
    assert_batch_contract(batch, d.tokenizer, image_size=64)
    toks = d.tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    assert toks[:6] == ["[CLS]", "translate", "english", "to", "german", ":"]
    attrs = image_attributes("test")
    for i, src_text, refs in zip(batch["ids"], batch["source_text"], batch["references"], strict=False):
        img, t = divmod(i, 10)
        assert (src_text, refs[0]) == render(attrs[img], t) and len(refs) == 1
    full_test = d._build_examples("test")
    assert Counter(ex.id % 10 for ex in full_test) == Counter(i % len(TEMPLATES) for i in range(1000))
    m = d.make_metric()
    assert isinstance(m, TranslationBLEU) and m.lowercase and d.metric_names == ("bleu", "bleu4")
    de_words = [w for w in d.tokenizer.get_vocab() if w in ("kreis", "dreieck", "rechteck", "form", "großer")]
    assert len(de_words) == 5
    one = ShapesTranslationDataModule(pairs_per_image=1)
    one.setup("fit")
    assert len(one.datasets["train"]) == 3600
    with pytest.raises(ValueError):
        ShapesTranslationDataModule(pairs_per_image=0)


def test_caption_templates_subset():
    assert set(CAPTION_TEMPLATES) <= set(range(len(TEMPLATES))) and len(CAPTION_TEMPLATES) == 5
