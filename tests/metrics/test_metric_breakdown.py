"""The embedded tasks' metrics: VQA accuracy by kind of question, and shape-and-colour correctness
beside CIDEr / BLEU, from the batch keys the systems pass (source_text, attributes)."""

from __future__ import annotations

import pytest

from amad.metrics import (
    AttributeAccuracy,
    CaptionMetrics,
    EasyVQAAccuracy,
    ShapesCaptionMetrics,
    ShapesTranslationBLEU,
    TranslationBLEU,
    metric_dict,
)
from amad.scenes.attributes import ShapeAttributes

RED_CIRCLE = ShapeAttributes("circle", "red", "small", 0, 0)
BLUE_TRIANGLE = ShapeAttributes("triangle", "blue", "large", 2, 2)


def test_vqa_accuracy_by_kind_of_question():
    m = EasyVQAAccuracy()
    questions = [
        "what shape is in the image?",
        "what shape is present?",
        "what color is the shape?",
        "is there a circle?",
        "is there not a red shape?",
    ]
    m.update(
        ["circle", "circle", "red", "no", "no"],
        [["circle"], ["triangle"], ["red"], ["yes"], ["no"]],
        ids=list(range(5)),
        source_text=questions,
    )
    got = metric_dict(m)
    assert got["vqa_acc"] == pytest.approx(3 / 5)
    assert got["vqa_acc_shape"] == pytest.approx(1 / 2) and got["vqa_acc_colour"] == 1.0
    assert got["vqa_acc_yesno_shape"] == 0.0 and got["vqa_acc_yesno_colour"] == 1.0


def test_without_questions_it_is_the_plain_accuracy():
    m = EasyVQAAccuracy()
    m.update(["yes"], [["yes"]], ids=[0])
    assert metric_dict(m) == {"vqa_acc": 1.0}


def test_caption_metrics_gain_attribute_scores_and_keep_their_own():
    preds = ["A small red circle in the top left corner.", "A large blue circle in the bottom right corner."]
    refs = [["A small red circle in the top left corner."], ["A large blue triangle in the bottom right corner."]]
    plain, shapes = CaptionMetrics(tokenizer="simple"), ShapesCaptionMetrics(tokenizer="simple")
    plain.update(preds, refs, ids=[0, 1])
    shapes.update(preds, refs, ids=[0, 1], attributes=[RED_CIRCLE, BLUE_TRIANGLE])
    a, b = metric_dict(plain), metric_dict(shapes)
    assert all(b[k] == pytest.approx(v) for k, v in a.items())
    assert b["attr_acc"] == 0.5 and b["shape_acc"] == 0.5 and b["colour_acc"] == 1.0
    alone = AttributeAccuracy()
    alone.update(preds, [RED_CIRCLE, BLUE_TRIANGLE], ids=[0, 1])
    assert metric_dict(alone)["attr_acc"] == b["attr_acc"]


def test_translation_bleu_gains_attribute_scores_in_german():
    preds = ["ein kleiner roter kreis ist oben links.", "ein großer blauer kreis ist unten rechts."]
    refs = [["Ein kleiner roter Kreis ist oben links."], ["Ein großes blaues Dreieck ist unten rechts."]]
    plain, shapes = TranslationBLEU(lowercase=True), ShapesTranslationBLEU(lowercase=True)
    plain.update(preds, refs, ids=[0, 1])
    shapes.update(preds, refs, ids=[0, 1], attributes=[RED_CIRCLE, BLUE_TRIANGLE])
    got = metric_dict(shapes)
    assert got["bleu"] == pytest.approx(metric_dict(plain)["bleu"])
    assert got["shape_acc"] == 0.5 and got["attr_acc"] == 0.5


def test_extra_batch_keys_must_match_the_batch():
    with pytest.raises(ValueError, match="attributes"):
        ShapesTranslationBLEU().update(["a"], [["a"]], ids=[0], attributes=[RED_CIRCLE, BLUE_TRIANGLE])
