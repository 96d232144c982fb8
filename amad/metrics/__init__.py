"""Task metrics as torchmetrics ``Metric``s: correct under DDP, de-duplicated by example id.

All three share one API: ``update(predictions, references, ids=None)`` with ``predictions`` a list
of strings, ``references`` a list of reference lists (``batch["references"]``) and ``ids``
``batch["ids"]``; ``compute()`` after all batches (every rank gets the same value).

* :class:`VQAAccuracy` → 0-dim tensor in [0, 1] (official VQA accuracy).
* :class:`CaptionMetrics` → dict ``bleu1..bleu4, rouge_l, cider`` (+ ``meteor``), pycocoevalcap scale.
* :class:`TranslationBLEU` → 0-dim tensor, sacreBLEU corpus BLEU on 0–100.

:func:`metric_dict` gives any of them as ``{name: float}`` (names = ``metric.names``).
"""

from __future__ import annotations

from torchmetrics import Metric

from amad.metrics.captioning import CaptionMetrics, coco_caption_scores, java_available
from amad.metrics.translation import TranslationBLEU, corpus_bleu
from amad.metrics.vqa import VQAAccuracy, normalize_answer, vqa_score

__all__ = [
    "CaptionMetrics",
    "TranslationBLEU",
    "VQAAccuracy",
    "coco_caption_scores",
    "corpus_bleu",
    "java_available",
    "metric_dict",
    "normalize_answer",
    "vqa_score",
]


def metric_dict(metric: Metric) -> dict[str, float]:
    """``metric.compute()`` as ``{name: float}`` (a scalar result is keyed by ``metric.names[0]``)."""
    value = metric.compute()
    if isinstance(value, dict):
        return {k: float(v) for k, v in value.items()}
    return {metric.names[0]: float(value)}
