"""Questions for generated scenes: the 24 easy-VQA templates, checked against the package's own questions."""

import re
from collections import Counter

from amad.data.shapes import image_attributes
from amad.scenes import easyvqa_source as src
from amad.scenes.attributes import PALETTE, SHAPES, ShapeAttributes
from amad.scenes.captions import captions, render
from amad.scenes.text import (
    ANSWERS,
    QUESTION_TEMPLATES,
    scene_captions,
    scene_translations,
    vqa_pairs,
)

_COLOURS = "|".join(PALETTE)
_SHAPES = "|".join(SHAPES)


def _template(question: str) -> str:
    q = re.sub(rf"\b({_COLOURS})\b", "{colour}", question)
    return re.sub(rf"\b({_SHAPES})\b", "{shape}", q)


def test_every_package_train_question_is_among_the_pairs_of_its_image():
    """For all 4,000 train images: vqa_pairs(read_attributes(image)) holds every stated (question, answer)."""
    attrs = image_attributes("train")
    pairs = [set(vqa_pairs(a)) for a in attrs]
    missing = [q for q in src.load_questions("train") if (q.question, q.answer) not in pairs[q.image_id]]
    assert not missing, f"{len(missing)} of the package's train questions are not generated, e.g. {missing[:3]}"
    assert len(src.load_questions("train")) == 38_575


def test_templates_are_the_packages_24():
    questions = src.load_questions("train") + src.load_questions("test")
    used = Counter(_template(q.question) for q in questions)
    assert set(used) == set(QUESTION_TEMPLATES) and len(QUESTION_TEMPLATES) == 24
    assert all("colour" not in q.question for q in questions)  # American spelling in the package
    assert set(ANSWERS) == set(src.load_answers())
    # every yes/no template appears with both answers in the package, as in vqa_pairs
    answers_of = {}
    for q in questions:
        answers_of.setdefault(_template(q.question), set()).add(q.answer)
    for t, answers in answers_of.items():
        if answers & {"yes", "no"}:
            assert answers == {"yes", "no"}, t


def test_pairs_of_one_image_by_hand():
    a = ShapeAttributes("triangle", "teal", "small", 0, 0)
    pairs = vqa_pairs(a)
    assert len(pairs) == 96 and len(set(pairs)) == 96
    d = dict(pairs)
    assert d["what is the teal shape?"] == "triangle"
    assert d["what color is the triangle?"] == "teal"
    assert d["what is the color of the shape?"] == "teal"
    assert d["is there a triangle?"] == "yes" and d["is there a circle?"] == "no"
    assert d["is there not a triangle in the image?"] == "no" and d["is no circle present?"] == "yes"
    assert d["does the image contain a teal shape?"] == "yes" and d["is a red shape present?"] == "no"
    assert d["does the image not contain a gray shape?"] == "yes"
    assert "what color is the circle?" not in d  # open questions only name the image's own shape/colour
    yes_no = [ans for _, ans in pairs if ans in ("yes", "no")]
    assert len(yes_no) == 88 and yes_no.count("yes") == 44  # each template: one yes-case of 3 (or 8)
    assert {ans for _, ans in pairs} <= set(ANSWERS)


def test_captions_and_translations_reuse_shapes_text():
    a = ShapeAttributes("circle", "red", "large", 1, 2)
    assert scene_captions(a) == captions(a)
    assert scene_translations(a) == [render(a, t) for t in range(7)]
    assert scene_translations(a, (0,)) == [("A large red circle on the right.", "Ein großer roter Kreis rechts.")]


def test_every_package_question_has_a_kind():
    from amad.scenes import easyvqa_source as src
    from amad.scenes.text import QUESTION_KINDS, question_kind

    for split in ("train", "test"):
        kinds = {question_kind(q.question) for q in src.load_questions(split)}
        assert kinds == set(QUESTION_KINDS)
    assert question_kind("what is the capital of france?") is None
