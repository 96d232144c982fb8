"""Captioning metrics through pycocoevalcap (the COCO caption evaluation code).

``CaptionMetrics.compute()`` returns ``bleu1 .. bleu4, rouge_l, cider`` (and ``meteor`` when asked
for) on pycocoevalcap's scale (0–1; CIDEr-D typically 0–10, the ``Cider`` class of pycocoevalcap
is CIDEr-D: σ = 6, clipped counts). Captions are tokenised like the COCO server does, with the
Stanford ``PTBTokenizer`` (needs Java) — lower-cased, punctuation tokens removed. Without Java the
fallback :func:`simple_tokenize` lower-cases, splits off punctuation and drops it; it differs from
PTB on contractions ("doesn't" stays one token instead of "does n't"), so scores can differ slightly:
the result is reported with ``tokenizer="simple"`` in :attr:`CaptionMetrics.tokenizer_used`.

Notes:
    * CIDEr's IDF is computed over the evaluated set itself, so a single image always scores 0 and
      scores from different subsets are not comparable.
    * METEOR runs ``meteor-1.5.jar`` (Java, ~5 s start-up a call), so it is off by default; turn it
      on for final test evaluation (``CaptionMetrics(meteor=True)``).
    * SPICE is not available: its jar downloads Stanford CoreNLP models at first use, which cannot
      happen offline.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

import torch

from amad.metrics.records import RecordMetric

CAPTION_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider")
# pycocoevalcap's PTBTokenizer drops exactly these tokens.
_PTB_PUNCT = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
_WORD = re.compile(r"[\w']+|[^\w\s]", re.UNICODE)


@functools.lru_cache(maxsize=1)
def java_available() -> bool:
    """True when a working ``java`` is on PATH (needed by PTBTokenizer and METEOR)."""
    if shutil.which("java") is None:
        return False
    try:
        return subprocess.run(["java", "-version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def simple_tokenize(text: str) -> str:
    """Java-free stand-in for PTBTokenizer: lower-case, split off punctuation, drop punctuation."""
    return " ".join(t for t in _WORD.findall(text.lower()) if t not in _PTB_PUNCT)


def tokenize_captions(captions: dict[str, list[str]], tokenizer: str = "auto") -> tuple[dict[str, list[str]], str]:
    """Tokenise ``{key: [caption, ...]}`` the COCO way.

    Args:
        tokenizer: "ptb" (Java), "simple" (:func:`simple_tokenize`) or "auto" (ptb when Java works).

    Returns:
        (tokenised dict, the tokenizer used).
    """
    if tokenizer not in ("auto", "ptb", "simple"):
        raise ValueError(f"tokenizer must be 'auto', 'ptb' or 'simple', got {tokenizer!r}")
    use_ptb = tokenizer == "ptb" or (tokenizer == "auto" and java_available())
    if use_ptb:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        wrapped = {k: [{"caption": c} for c in v] for k, v in captions.items()}
        return PTBTokenizer().tokenize(wrapped), "ptb"
    return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}, "simple"


def coco_caption_scores(
    predictions: Sequence[str], references: Sequence[Sequence[str]], *, meteor: bool = False, tokenizer: str = "auto"
) -> tuple[dict[str, float], str]:
    """Corpus-level COCO caption scores of aligned predictions / reference lists.

    Returns:
        (scores dict with :data:`CAPTION_METRICS` [+ "meteor"], tokenizer used).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    names = CAPTION_METRICS + (("meteor",) if meteor else ())
    if len(predictions) == 0:
        return dict.fromkeys(names, 0.0), "none"
    keys = [str(i) for i in range(len(predictions))]
    gts, used = tokenize_captions({k: list(r) for k, r in zip(keys, references, strict=False)}, tokenizer)
    preds = {k: [p] for k, p in zip(keys, predictions, strict=True)}
    res, _ = tokenize_captions(preds, "ptb" if used == "ptb" else "simple")
    out: dict[str, float] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)})
    out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    out["cider"] = float(Cider().compute_score(gts, res)[0])
    if meteor:
        if not java_available():
            raise RuntimeError("METEOR needs Java (java on PATH); construct CaptionMetrics(meteor=False)")
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            out["meteor"] = float(scorer.compute_score(gts, res)[0])
        finally:
            del scorer
    return out, used


class CaptionMetrics(RecordMetric):
    """BLEU-1..4, ROUGE-L, CIDEr(-D) and optionally METEOR over the captions seen (pycocoevalcap).

    Args:
        meteor: also compute METEOR (Java, ~5 s a call).
        tokenizer: "auto" (PTB when Java works), "ptb" or "simple".

    ``update(predictions, references, ids=None)`` with ``references`` a list of reference captions
    per example; ``compute()`` → dict name → 0-dim float tensor (all 0 when nothing was added).
    """

    def __init__(self, meteor: bool = False, tokenizer: str = "auto", **kwargs) -> None:
        super().__init__(**kwargs)
        if tokenizer not in ("auto", "ptb", "simple"):
            raise ValueError(f"tokenizer must be 'auto', 'ptb' or 'simple', got {tokenizer!r}")
        self.meteor = meteor
        self.tokenizer = tokenizer
        self.names = CAPTION_METRICS + (("meteor",) if meteor else ())
        self.tokenizer_used: str | None = None

    def _record(self, prediction: str, references: Sequence[str], **extras: Any) -> dict:
        if not references:
            raise ValueError("every caption needs at least one reference")
        return {"p": prediction, "r": list(references)}

    def _score(self, records: list[dict]) -> dict[str, torch.Tensor]:
        scores, self.tokenizer_used = coco_caption_scores(
            [r["p"] for r in records], [r["r"] for r in records], meteor=self.meteor, tokenizer=self.tokenizer
        )
        return {k: torch.tensor(v, dtype=torch.float32) for k, v in scores.items()}
