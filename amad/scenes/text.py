"""Text for generated scenes: the easy-VQA questions and answers, captions and German translations.

The question templates are those of easy-VQA's ``gen_data/questions.py`` (vzhou842/easy-VQA), checked
against the package's ``questions.json`` (``tests/data/test_data_scene_text.py``): 24 templates,
American "color", lower case, ending in "?".

* 8 open questions per image: 4 answered by the shape ("what shape is in the image?", ...,
  "what is the {colour} shape?" naming the image's colour) and 4 by the colour
  ("what color is the {shape}?" naming the image's shape, "what color is the shape?", ...).
* 16 yes/no templates, asked about **every** shape (8 templates) and **every** colour (8 templates),
  so each comes with both answers: "is there a circle?" is "yes" for a circle and "no" otherwise;
  the negated forms ("is there not a circle?", "is no red shape present?") invert the answer.

That gives 8 + 3 × 8 + 8 × 8 = 96 (question, answer) pairs per image; the package kept a random
32 % of the open and 8 % of the yes/no ones for each of its images. Answers are the 13 of the
package's ``answers.txt`` (3 shapes, 8 colours, yes, no).

Captions and translations come from :mod:`amad.scenes.captions` (the templates of the embedded
caption and translation tasks).
"""

from __future__ import annotations

from amad.scenes.attributes import PALETTE, SHAPES, ShapeAttributes
from amad.scenes.captions import CAPTION_TEMPLATES, TEMPLATES, captions, render

#: Open questions answered by the shape; "{colour}" is the image's colour.
SHAPE_QUESTIONS: tuple[str, ...] = (
    "what shape is in the image?",
    "what shape is present?",
    "what shape does the image contain?",
    "what is the {colour} shape?",
)
#: Open questions answered by the colour; "{shape}" is the image's shape.
COLOUR_QUESTIONS: tuple[str, ...] = (
    "what color is the {shape}?",
    "what is the color of the {shape}?",
    "what color is the shape?",
    "what is the color of the shape?",
)
#: Yes/no questions about a shape, each with whether it is negated ("yes" means absent).
SHAPE_YES_NO: tuple[tuple[str, bool], ...] = (
    ("is there a {shape}?", False),
    ("is there a {shape} in the image?", False),
    ("does the image contain a {shape}?", False),
    ("is a {shape} present?", False),
    ("is there not a {shape}?", True),
    ("is there not a {shape} in the image?", True),
    ("does the image not contain a {shape}?", True),
    ("is no {shape} present?", True),
)
#: Yes/no questions about a colour, each with whether it is negated.
COLOUR_YES_NO: tuple[tuple[str, bool], ...] = (
    ("is there a {colour} shape?", False),
    ("is there a {colour} shape in the image?", False),
    ("does the image contain a {colour} shape?", False),
    ("is a {colour} shape present?", False),
    ("is there not a {colour} shape?", True),
    ("is there not a {colour} shape in the image?", True),
    ("does the image not contain a {colour} shape?", True),
    ("is no {colour} shape present?", True),
)
#: All 24 templates.
QUESTION_TEMPLATES: tuple[str, ...] = (
    SHAPE_QUESTIONS + COLOUR_QUESTIONS + tuple(t for t, _ in SHAPE_YES_NO) + tuple(t for t, _ in COLOUR_YES_NO)
)
#: The 13 answers the templates can give.
ANSWERS: tuple[str, ...] = (*SHAPES, *PALETTE, "yes", "no")


def _yes_no(holds: bool, negated: bool) -> str:
    return "yes" if holds != negated else "no"


def vqa_pairs(attrs: ShapeAttributes) -> list[tuple[str, str]]:
    """Every (question, answer) the easy-VQA templates give for an image with these attributes.

    Args:
        attrs: the image's attributes (only ``shape`` and ``colour`` are asked about).

    Returns:
        96 pairs, in the package generator's order: the 8 open questions, then the yes/no questions
        for each shape (circle, rectangle, triangle), then for each colour (palette order).
    """
    pairs = [(q.format(colour=attrs.colour), attrs.shape) for q in SHAPE_QUESTIONS]
    pairs += [(q.format(shape=attrs.shape), attrs.colour) for q in COLOUR_QUESTIONS]
    for shape in SHAPES:
        pairs += [(q.format(shape=shape), _yes_no(shape == attrs.shape, neg)) for q, neg in SHAPE_YES_NO]
    for colour in PALETTE:
        pairs += [(q.format(colour=colour), _yes_no(colour == attrs.colour, neg)) for q, neg in COLOUR_YES_NO]
    return pairs


def scene_captions(attrs: ShapeAttributes) -> list[str]:
    """The 5 reference captions of the caption task (:func:`amad.scenes.captions.captions`)."""
    return captions(attrs)


def scene_translations(attrs: ShapeAttributes, templates: tuple[int, ...] | None = None) -> list[tuple[str, str]]:
    """(English, German) pairs of the translation task, one per template (default: all 7)."""
    ids = range(len(TEMPLATES)) if templates is None else templates
    return [render(attrs, t) for t in ids]


__all__ = [
    "ANSWERS",
    "CAPTION_TEMPLATES",
    "COLOUR_QUESTIONS",
    "COLOUR_YES_NO",
    "QUESTION_TEMPLATES",
    "SHAPE_QUESTIONS",
    "SHAPE_YES_NO",
    "scene_captions",
    "scene_translations",
    "vqa_pairs",
]


#: The kinds of easy-VQA question, by what answers them (:func:`question_kind`).
QUESTION_KINDS: tuple[str, ...] = ("shape", "colour", "yesno_shape", "yesno_colour")


def _kind_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for shape in SHAPES:
        for colour in PALETTE:
            for t in SHAPE_QUESTIONS:
                table[t.format(colour=colour)] = "shape"
            for t in COLOUR_QUESTIONS:
                table[t.format(shape=shape)] = "colour"
            for t, _ in SHAPE_YES_NO:
                table[t.format(shape=shape)] = "yesno_shape"
            for t, _ in COLOUR_YES_NO:
                table[t.format(colour=colour)] = "yesno_colour"
    return table


_KINDS = _kind_table()


def question_kind(question: str) -> str | None:
    """``shape`` / ``colour`` (open questions answered by the shape / the colour), ``yesno_shape`` /
    ``yesno_colour`` (yes/no about a shape / a colour); None for a question of no easy-VQA template."""
    return _KINDS.get(question.strip().lower())
