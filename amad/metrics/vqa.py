"""Official VQA accuracy (VQA v2 evaluation script, ``vqaEval.py`` of GT-Vision-Lab/VQA), ported.

For one question with human answers ``a_1 .. a_n`` and a predicted answer ``p``:

1. strip ``\\n`` / ``\\t`` / surrounding spaces from ``p`` and every ``a_i``;
2. if the humans disagree (more than one distinct answer), normalise ``p`` and every ``a_i``:
   punctuation (:func:`process_punctuation`) then digits / articles / contractions
   (:func:`process_digit_article`) — exactly as the official script, which skips normalisation
   when all humans agree;
3. ``acc = mean_i min(1, #{j != i : a_j == p} / 3)`` — the average over the n leave-one-out
   subsets of ``min(#matching humans / 3, 1)`` (n = 10 in VQA v2).

With a **single** reference (easy-vqa) leave-one-out is undefined (the official formula gives 0):
we score exact match after the same normalisation of both strings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from amad.metrics.records import RecordMetric
from amad.scenes.text import QUESTION_KINDS, question_kind

CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
MANUAL_MAP = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = ("a", "an", "the")
# Kept byte-for-byte from the official script: "(?!<=\d)" is a (harmless) typo for a look-behind,
# so the rule removes every "." that is not followed by a digit.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
PUNCT = (";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")


def process_punctuation(text: str) -> str:
    """Official ``processPunctuation``: drop a mark next to a space (or anywhere if the text has a
    digit-comma-digit), otherwise replace it by a space; then drop periods not before a digit."""
    out = text
    for p in PUNCT:
        if (p + " " in text or " " + p in text) or re.search(_COMMA_STRIP, text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def process_digit_article(text: str) -> str:
    """Official ``processDigitArticle``: lower-case, number words → digits, drop articles, restore
    apostrophes of contractions."""
    words = [MANUAL_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """Both official normalisation steps (after stripping whitespace)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def vqa_score(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction against its human answers (see the module docstring)."""
    if len(answers) == 0:
        raise ValueError("VQA accuracy needs at least one reference answer")
    pred = prediction.replace("\n", " ").replace("\t", " ").strip()
    gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
    if len(gts) == 1:
        return float(normalize_answer(pred) == normalize_answer(gts[0]))
    if len(set(gts)) > 1:
        gts = [process_digit_article(process_punctuation(a)) for a in gts]
        pred = process_digit_article(process_punctuation(pred))
    accs = []
    for i in range(len(gts)):
        matching = sum(1 for j, a in enumerate(gts) if j != i and a == pred)
        accs.append(min(1.0, matching / 3.0))
    return sum(accs) / len(accs)


class VQAAccuracy(RecordMetric):
    """Mean official VQA accuracy over the examples seen (each id counted once, across ranks).

    ``update(predictions, references, ids=None)``; ``compute()`` → 0-dim float tensor in [0, 1]
    (0 when nothing was added).
    """

    names = ("accuracy",)

    def _record(self, prediction: str, references: Sequence[str], **extras: Any) -> dict:
        return {"s": vqa_score(prediction, references)}

    def _score(self, records: list[dict]) -> torch.Tensor:
        if not records:
            return torch.tensor(0.0)
        return torch.tensor(sum(r["s"] for r in records) / len(records), dtype=torch.float32)


class EasyVQAAccuracy(VQAAccuracy):
    """:class:`VQAAccuracy` plus its breakdown by the kind of easy-VQA question (from ``source_text``):
    ``vqa_acc`` and ``vqa_acc_<kind>`` for the kinds of :data:`~amad.scenes.text.QUESTION_KINDS`
    (answer is a shape, a colour; yes/no about a shape, a colour). A model that reads colour but not
    shape scores well overall and at chance on ``vqa_acc_shape``: the breakdown shows it.
    """

    extra_keys = ("source_text",)

    def _record(self, prediction: str, references: Sequence[str], source_text: str | None = None, **extras) -> dict:
        rec = super()._record(prediction, references)
        if source_text is not None:
            rec["k"] = question_kind(source_text)
        return rec

    def _score(self, records: list[dict]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        out = {"vqa_acc": super()._score(records)}
        for kind in QUESTION_KINDS:
            mine = [r for r in records if r.get("k") == kind]
            if mine:
                out[f"vqa_acc_{kind}"] = super()._score(mine)
        return out
