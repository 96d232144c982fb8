"""Attribute accuracy of generated captions and translations: do they name the image's shape and colour?

BLEU and CIDEr reward template wording; on the synthetic shapes tasks the facts are what matter. A
prediction names a **shape** with any of the words

* English: circle, rectangle, triangle (also plural);
* German: Kreis, Rechteck, Dreieck and their inflected forms (Kreise, Kreises, Kreisen, Rechtecke,
  Rechtecks, Rechteckes, Rechtecken, likewise Dreieck) — the nouns :mod:`amad.scenes.captions` uses;

and a **colour** with any of the words

* English: red, green, blue, black, gray (or grey), teal, brown, yellow;
* German: rot, grün, blau, schwarz, grau, blaugrün (teal), braun, gelb, bare (predicative: "ist rot")
  or with an adjective ending -e, -er, -es, -en, -em ("roter", "blaugrünen"). Words are matched
  whole, so "blaugrün" is teal and never green.

The generic nouns "shape" / "Form" name no shape. Matching is case-insensitive and language-free
(the two vocabularies do not overlap). For each prediction, the attribute is **right** when the
prediction names exactly one value and it is the image's: naming two shapes ("a red circle and a
blue triangle") or two colours is wrong for that attribute, naming none is wrong too.

:class:`AttributeAccuracy` is DDP-safe like the other metrics (:class:`amad.metrics.records.RecordMetric`):
records travel as a byte tensor with ``cat`` reduction and ``compute`` keeps one record per id.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from amad.metrics.records import RecordMetric, _plain_id, encode_records
from amad.scenes.attributes import PALETTE, SHAPES, ShapeAttributes
from amad.scenes.captions import COLOUR_DE, NOUN_DE, render

_GERMAN_NOUN_ENDINGS = ("", "e", "s", "es", "en")
_GERMAN_ADJ_ENDINGS = ("", "e", "er", "es", "en", "em")

#: Word (lower case) → shape it names.
SHAPE_WORDS: dict[str, str] = {}
for _shape in SHAPES:
    SHAPE_WORDS[_shape] = _shape
    SHAPE_WORDS[_shape + "s"] = _shape
    for _end in _GERMAN_NOUN_ENDINGS:
        SHAPE_WORDS[NOUN_DE[_shape][0].lower() + _end] = _shape

#: Word (lower case) → colour it names.
COLOUR_WORDS: dict[str, str] = {"grey": "gray"}
for _colour in PALETTE:
    COLOUR_WORDS[_colour] = _colour
    for _end in _GERMAN_ADJ_ENDINGS:
        COLOUR_WORDS[COLOUR_DE[_colour] + _end] = _colour

_WORD = re.compile(r"[a-zäöüß]+")


def named_values(text: str) -> tuple[set[str], set[str]]:
    """The shapes and colours a text names.

    Returns:
        (shapes, colours): sets of keys of :data:`~amad.scenes.attributes.SHAPES` / ``PALETTE``.
    """
    words = _WORD.findall(text.lower())
    return {SHAPE_WORDS[w] for w in words if w in SHAPE_WORDS}, {COLOUR_WORDS[w] for w in words if w in COLOUR_WORDS}


def _shape_colour(a: ShapeAttributes | Mapping[str, Any]) -> tuple[str, str]:
    if isinstance(a, ShapeAttributes):
        return a.shape, a.colour
    if isinstance(a, Mapping):
        return str(a["shape"]), str(a["colour"])
    raise TypeError(f"attributes must be ShapeAttributes or a mapping with shape/colour, got {type(a).__name__}")


def attribute_record(prediction: str, attrs: ShapeAttributes | Mapping[str, Any]) -> dict[str, bool]:
    """Whether one prediction names the right shape (``s``) and the right colour (``c``)."""
    shape, colour = _shape_colour(attrs)
    shapes, colours = named_values(prediction)
    return {"s": shapes == {shape}, "c": colours == {colour}}


def reference_oracle(attrs: ShapeAttributes, language: str = "en") -> str:
    """What a perfect model writes: the first caption template (English, ``language="en"``) or its
    German translation (``"de"``), e.g. "A small red triangle in the bottom left corner." /
    "Ein kleines rotes Dreieck unten links." Scores 1.0 on every attribute."""
    if language not in ("en", "de"):
        raise ValueError(f"language must be 'en' or 'de', got {language!r}")
    en, de = render(attrs, 0)
    return en if language == "en" else de


class AttributeAccuracy(RecordMetric):
    """Share of predictions that name the image's shape and colour (each id counted once, across ranks).

    ``update(preds, attributes, ids=None)``; ``compute()`` → dict of 0-dim float tensors in [0, 1]:
    ``attr_acc`` (shape and colour both right), ``shape_acc``, ``colour_acc`` (all 0 when nothing
    was added).
    """

    names = ("attr_acc", "shape_acc", "colour_acc")

    def update(  # type: ignore[override]
        self,
        preds: Sequence[str],
        attributes: Sequence[ShapeAttributes | Mapping[str, Any]],
        ids: Sequence[Any] | None = None,
    ) -> None:
        """Add a batch.

        Args:
            preds: (B) generated captions or translations.
            attributes: (B) the images' :class:`~amad.scenes.attributes.ShapeAttributes` (or
                mappings with ``shape`` and ``colour``).
            ids: (B) example ids (``batch["ids"]``); a repeated id counts once.
        """
        if isinstance(preds, str):
            raise TypeError("preds must be a sequence of strings, not one string")
        if len(preds) != len(attributes) or (ids is not None and len(ids) != len(preds)):
            raise ValueError(
                f"batch sizes differ: {len(preds)} predictions, {len(attributes)} attributes, "
                f"{None if ids is None else len(ids)} ids"
            )
        recs = []
        for j, (p, a) in enumerate(zip(preds, attributes, strict=True)):
            rec: dict[str, Any] = attribute_record(str(p), a)
            rec["id"] = None if ids is None else _plain_id(ids[j])
            recs.append(rec)
        if recs:
            self.records.append(encode_records(recs).to(self.device))

    def _score(self, records: list[dict]) -> dict[str, torch.Tensor]:
        return attribute_scores(records)


def attribute_scores(records: list[dict]) -> dict[str, torch.Tensor]:
    """``attr_acc``, ``shape_acc``, ``colour_acc`` of records holding :func:`attribute_record`'s ``s``, ``c``."""
    n = len(records)

    def mean(values) -> torch.Tensor:
        return torch.tensor(sum(values) / n if n else 0.0, dtype=torch.float32)

    out = {
        "attr_acc": mean(r["s"] and r["c"] for r in records),
        "shape_acc": mean(r["s"] for r in records),
        "colour_acc": mean(r["c"] for r in records),
    }
    if records and all("f" in r for r in records):  # text metrics only: see WithAttributes
        out["ref_attr_acc"] = mean(r["f"] for r in records)
    return out


class WithAttributes:
    """Mixin for a text metric (:class:`~amad.metrics.CaptionMetrics`, :class:`~amad.metrics.TranslationBLEU`):
    when the batch carries the images' ``attributes``, ``compute()`` adds ``attr_acc``, ``shape_acc`` and
    ``colour_acc`` (:class:`AttributeAccuracy`'s) to the metric's own values, from the same records, and
    ``ref_attr_acc``: the share of outputs that name exactly the shapes and colours some reference names.
    On translation, where some source sentences say only "shape" ("Form"), ``attr_acc`` is capped by the
    share of sources naming both attributes (about 86 % of the embedded test split), while a faithful
    translator scores 1.0 on ``ref_attr_acc``."""

    extra_keys = ("attributes",)

    def _record(self, prediction: str, references: Sequence[str], attributes: Any = None, **extras: Any) -> dict:
        rec = super()._record(prediction, references, **extras)
        if attributes is not None:
            rec.update(attribute_record(prediction, attributes))
            # faithful to the text: names what some reference names (nothing, where the source sentence says
            # only "shape" and a faithful translation says "Form"): attr_acc's ceiling on translation is the
            # share of sources that name both attributes; this one is 1.0 for a perfect translator
            named = named_values(prediction)
            rec["f"] = any(named_values(ref) == named for ref in references)
        return rec

    def _score(self, records: list[dict]) -> dict[str, torch.Tensor]:
        own = super()._score(records)
        values = own if isinstance(own, dict) else {self.names[0]: own}
        if records and all("s" in r for r in records):
            values.update(attribute_scores(records))
        return values
