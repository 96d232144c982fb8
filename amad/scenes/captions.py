"""English captions and their German translations for the synthetic shapes tasks.

Every sentence is rendered from a :class:`~amad.scenes.attributes.ShapeAttributes` by one of
:data:`TEMPLATES`. Each template exists in English and German; the German side declines article and
adjectives for the noun's gender, the case the template puts it in (nominative, accusative after
"es gibt" / "zeigt", dative after "auf") and the article kind (strong/mixed after "ein", weak after
"der"), e.g.

* "Ein großer roter Kreis oben links." (masculine, nominative, indefinite)
* "Es gibt ein kleines blaues Dreieck unten." (neuter, accusative)
* "Das Bild zeigt einen mittelgroßen gelben Kreis." (masculine, accusative)
* "Eine kleine rote Form in der Mitte." (feminine "die Form" = the shape)
* "Der graue Kreis ist rechts." (definite: weak endings)
* "Das Rechteck ist klein und braun." (predicative: no ending)

Genders: der Kreis (circle), das Rechteck (rectangle), das Dreieck (triangle), die Form (shape).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import product

from amad.scenes.attributes import COLS, PALETTE, ROWS, SHAPES, SIZES, ShapeAttributes

SIZE_EN = {"small": "small", "medium": "medium-sized", "large": "large"}
SIZE_DE = {"small": "klein", "medium": "mittelgroß", "large": "groß"}
COLOUR_EN = {c: c for c in PALETTE}
COLOUR_DE = {
    "red": "rot",
    "green": "grün",
    "blue": "blau",
    "black": "schwarz",
    "gray": "grau",
    "teal": "blaugrün",
    "brown": "braun",
    "yellow": "gelb",
}
#: German noun and grammatical gender ("m", "n", "f") of each English noun.
NOUN_DE = {
    "circle": ("Kreis", "m"),
    "rectangle": ("Rechteck", "n"),
    "triangle": ("Dreieck", "n"),
    "shape": ("Form", "f"),
    "background": ("Hintergrund", "m"),
}

#: Position phrase of each (row, col) grid cell.
POSITION_EN = {
    (0, 0): "in the top left corner",
    (0, 1): "at the top",
    (0, 2): "in the top right corner",
    (1, 0): "on the left",
    (1, 1): "in the center",
    (1, 2): "on the right",
    (2, 0): "in the bottom left corner",
    (2, 1): "at the bottom",
    (2, 2): "in the bottom right corner",
}
POSITION_DE = {
    (0, 0): "oben links",
    (0, 1): "oben",
    (0, 2): "oben rechts",
    (1, 0): "links",
    (1, 1): "in der Mitte",
    (1, 2): "rechts",
    (2, 0): "unten links",
    (2, 1): "unten",
    (2, 2): "unten rechts",
}

_ARTICLES = {  # (kind, case) -> gender -> article
    ("indef", "nom"): {"m": "ein", "n": "ein", "f": "eine"},
    ("indef", "acc"): {"m": "einen", "n": "ein", "f": "eine"},
    ("indef", "dat"): {"m": "einem", "n": "einem", "f": "einer"},
    ("def", "nom"): {"m": "der", "n": "das", "f": "die"},
    ("def", "acc"): {"m": "den", "n": "das", "f": "die"},
    ("def", "dat"): {"m": "dem", "n": "dem", "f": "der"},
}
_ENDINGS = {  # (kind, case) -> gender -> attributive adjective ending
    ("indef", "nom"): {"m": "er", "n": "es", "f": "e"},  # mixed declension
    ("indef", "acc"): {"m": "en", "n": "es", "f": "e"},
    ("indef", "dat"): {"m": "en", "n": "en", "f": "en"},
    ("def", "nom"): {"m": "e", "n": "e", "f": "e"},  # weak declension
    ("def", "acc"): {"m": "en", "n": "e", "f": "e"},
    ("def", "dat"): {"m": "en", "n": "en", "f": "en"},
}


def german_noun_phrase(noun: str, adjectives: list[str], *, kind: str = "indef", case: str = "nom") -> str:
    """Article + declined adjectives + noun, e.g. ``("circle", ["groß", "rot"])`` → "ein großer roter Kreis".

    Args:
        noun: English noun, a key of :data:`NOUN_DE`.
        adjectives: German adjective stems (all used attributively here are regular).
        kind: "indef" (ein) or "def" (der).
        case: "nom", "acc" or "dat".
    """
    de, gender = NOUN_DE[noun]
    article = _ARTICLES[(kind, case)][gender]
    ending = _ENDINGS[(kind, case)][gender]
    return " ".join([article, *(a + ending for a in adjectives), de])


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


Renderer = Callable[[ShapeAttributes], tuple[str, str]]


def _t0(a: ShapeAttributes) -> tuple[str, str]:
    en = f"a {SIZE_EN[a.size]} {a.colour} {a.shape} {POSITION_EN[a.row, a.col]}."
    de = f"{german_noun_phrase(a.shape, [SIZE_DE[a.size], COLOUR_DE[a.colour]])} {POSITION_DE[a.row, a.col]}."
    return _cap(en), _cap(de)


def _t1(a: ShapeAttributes) -> tuple[str, str]:
    en = f"there is a {a.colour} {a.shape} {POSITION_EN[a.row, a.col]}."
    de = f"es gibt {german_noun_phrase(a.shape, [COLOUR_DE[a.colour]], case='acc')} {POSITION_DE[a.row, a.col]}."
    return _cap(en), _cap(de)


def _t2(a: ShapeAttributes) -> tuple[str, str]:
    en = f"the image shows a {SIZE_EN[a.size]} {a.colour} {a.shape}."
    de = f"das Bild zeigt {german_noun_phrase(a.shape, [SIZE_DE[a.size], COLOUR_DE[a.colour]], case='acc')}."
    return _cap(en), _cap(de)


def _t3(a: ShapeAttributes) -> tuple[str, str]:
    en = f"a {a.colour} {a.shape} on a light background."
    bg = german_noun_phrase("background", ["hell"], case="dat")  # einem hellen Hintergrund
    de = f"{german_noun_phrase(a.shape, [COLOUR_DE[a.colour]])} auf {bg}."
    return _cap(en), _cap(de)


def _t4(a: ShapeAttributes) -> tuple[str, str]:
    en = f"the {a.colour} {a.shape} is {POSITION_EN[a.row, a.col]}."
    de = f"{german_noun_phrase(a.shape, [COLOUR_DE[a.colour]], kind='def')} ist {POSITION_DE[a.row, a.col]}."
    return _cap(en), _cap(de)


def _t5(a: ShapeAttributes) -> tuple[str, str]:
    en = f"the {a.shape} is {SIZE_EN[a.size]} and {a.colour}."
    de = f"{german_noun_phrase(a.shape, [], kind='def')} ist {SIZE_DE[a.size]} und {COLOUR_DE[a.colour]}."
    return _cap(en), _cap(de)


def _t6(a: ShapeAttributes) -> tuple[str, str]:
    en = f"a {SIZE_EN[a.size]} {a.colour} shape {POSITION_EN[a.row, a.col]}."
    de = f"{german_noun_phrase('shape', [SIZE_DE[a.size], COLOUR_DE[a.colour]])} {POSITION_DE[a.row, a.col]}."
    return _cap(en), _cap(de)


#: All sentence templates; each maps attributes to an (English, German) pair.
TEMPLATES: tuple[Renderer, ...] = (_t0, _t1, _t2, _t3, _t4, _t5, _t6)
#: Templates whose English sentences are the reference captions (5 per image, as in COCO).
CAPTION_TEMPLATES: tuple[int, ...] = (0, 1, 2, 4, 5)


def render(attrs: ShapeAttributes, template: int) -> tuple[str, str]:
    """(English, German) sentence of ``template`` for ``attrs``."""
    return TEMPLATES[template](attrs)


def captions(attrs: ShapeAttributes) -> list[str]:
    """The reference captions of one image (English, one per :data:`CAPTION_TEMPLATES` entry)."""
    return [render(attrs, t)[0] for t in CAPTION_TEMPLATES]


def all_attributes() -> Iterator[ShapeAttributes]:
    """Every attribute combination (3 shapes × 8 colours × 3 sizes × 9 positions)."""
    for shape, colour, size, row, col in product(SHAPES, PALETTE, SIZES, range(len(ROWS)), range(len(COLS))):
        yield ShapeAttributes(shape, colour, size, row, col)


def all_sentences(templates: tuple[int, ...] | None = None) -> Iterator[tuple[str, str]]:
    """Every (English, German) sentence the templates can produce (the vocabulary corpus)."""
    ids = range(len(TEMPLATES)) if templates is None else templates
    for a in all_attributes():
        for t in ids:
            yield render(a, t)
