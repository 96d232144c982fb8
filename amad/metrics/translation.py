"""Corpus BLEU for translation with sacreBLEU (the Multi30K / WMT standard).

``TranslationBLEU.compute()`` is sacreBLEU's corpus BLEU-4 on its usual **0–100 scale** (unlike
pycocoevalcap's 0–1), with the ``13a`` tokenizer by default; ``lowercase=True`` makes it
case-insensitive (as VL-T5 scores Multi30K, and as the embedded translation task needs since its
word tokenizer lower-cases). Examples may have several references (a variable number is fine).
BLEU-4 of a corpus with no matching 4-gram is 0 (e.g. only sentences under 4 tokens).
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


class TranslationBLEU(RecordMetric):
    """sacreBLEU corpus BLEU (0–100) over the translations seen, each id counted once.

    Args:
        lowercase: case-insensitive BLEU.
        tokenize: sacreBLEU tokenizer ("13a" default, "intl", "none", ...).

    ``update(predictions, references, ids=None)``; ``compute()`` → 0-dim float tensor.
    """

    names = ("bleu",)

    def __init__(self, lowercase: bool = False, tokenize: str = "13a", **kwargs) -> None:
        super().__init__(**kwargs)
        self.lowercase = lowercase
        self.tokenize = tokenize

    def _record(self, prediction: str, references: Sequence[str], **extras: Any) -> dict:
        if not references:
            raise ValueError("every translation needs at least one reference")
        return {"p": prediction, "r": list(references)}

    def _score(self, records: list[dict]) -> torch.Tensor:
        score = corpus_bleu(
            [r["p"] for r in records], [r["r"] for r in records], lowercase=self.lowercase, tokenize=self.tokenize
        )
        return torch.tensor(score, dtype=torch.float32)
