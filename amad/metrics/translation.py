"""Corpus BLEU for translation with sacreBLEU (the Multi30K / WMT standard).

``TranslationBLEU.compute()`` is sacreBLEU's corpus BLEU-4 on its usual **0–100 scale** (unlike
pycocoevalcap's 0–1), with the ``13a`` tokenizer by default; ``lowercase=True`` makes it
case-insensitive (as VL-T5 scores Multi30K, and as the embedded translation task needs since its
word tokenizer lower-cases). Examples may have several references (a variable number is fine).
BLEU-4 of a corpus with no matching 4-gram is 0 (e.g. only sentences under 4 tokens).

``TranslationBLEU(bleu4=True)`` also reports ``bleu4``: pycocoevalcap's corpus BLEU-4 (0–1, the captioning
comparisons' BLEU-4) on the Java-free tokenisation of :func:`~amad.metrics.captioning.simple_tokenize`
(lower-cased, punctuation dropped), so translation and captioning tables share one BLEU-4; ``compute()``
then returns a dict ``{"bleu", "bleu4"}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from amad.metrics.records import RecordMetric


def corpus_bleu(
    predictions: Sequence[str], references: Sequence[Sequence[str]], *, lowercase: bool = False, tokenize: str = "13a"
) -> float:
    """sacreBLEU corpus BLEU (0–100) of aligned predictions and reference lists."""
    import sacrebleu

    if len(predictions) == 0:
        return 0.0
    n_refs = max(len(r) for r in references)
    streams = [[r[k] if k < len(r) else None for r in references] for k in range(n_refs)]
    return float(sacrebleu.corpus_bleu(list(predictions), streams, lowercase=lowercase, tokenize=tokenize).score)


def coco_bleu4(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """pycocoevalcap corpus BLEU-4 (0–1) of aligned predictions and reference lists, tokenised by
    :func:`~amad.metrics.captioning.simple_tokenize`."""
    from pycocoevalcap.bleu.bleu import Bleu

    from amad.metrics.captioning import simple_tokenize

    if len(predictions) == 0:
        return 0.0
    gts = {str(i): [simple_tokenize(r) for r in refs] for i, refs in enumerate(references)}
    res = {str(i): [simple_tokenize(p)] for i, p in enumerate(predictions)}
    scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return float(scores[3])


class TranslationBLEU(RecordMetric):
    """sacreBLEU corpus BLEU (0–100) over the translations seen, each id counted once.

    Args:
        lowercase: case-insensitive BLEU.
        tokenize: sacreBLEU tokenizer ("13a" default, "intl", "none", ...).
        bleu4: also report ``bleu4``, pycocoevalcap's BLEU-4 (:func:`coco_bleu4`).

    ``update(predictions, references, ids=None)``; ``compute()`` → 0-dim float tensor, or with ``bleu4``
    a dict ``{"bleu", "bleu4"}``.
    """

    names: tuple[str, ...] = ("bleu",)

    def __init__(self, lowercase: bool = False, tokenize: str = "13a", bleu4: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.lowercase = lowercase
        self.tokenize = tokenize
        self.bleu4 = bleu4
        if bleu4:
            self.names = (*type(self).names[:1], "bleu4", *type(self).names[1:])

    def _record(self, prediction: str, references: Sequence[str], **extras: Any) -> dict:
        if not references:
            raise ValueError("every translation needs at least one reference")
        return {"p": prediction, "r": list(references)}

    def _score(self, records: list[dict]) -> torch.Tensor | dict[str, torch.Tensor]:
        predictions, references = [r["p"] for r in records], [r["r"] for r in records]
        score = torch.tensor(
            corpus_bleu(predictions, references, lowercase=self.lowercase, tokenize=self.tokenize), dtype=torch.float32
        )
        if not self.bleu4:
            return score
        return {"bleu": score, "bleu4": torch.tensor(coco_bleu4(predictions, references), dtype=torch.float32)}
