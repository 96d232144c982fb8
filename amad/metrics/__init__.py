"""Task metrics as torchmetrics ``Metric``s: correct under DDP, de-duplicated by example id.

All three share one API: ``update(predictions, references, ids=None)`` with ``predictions`` a list
of strings, ``references`` a list of reference lists (``batch["references"]``) and ``ids``
``batch["ids"]``; ``compute()`` after all batches (every rank gets the same value).

* :class:`VQAAccuracy` → 0-dim tensor in [0, 1] (official VQA accuracy).
* :class:`CaptionMetrics` → dict ``bleu1..bleu4, rouge_l, cider`` (+ ``meteor``), pycocoevalcap scale.
* :class:`TranslationBLEU` → 0-dim tensor, sacreBLEU corpus BLEU on 0–100.
* :class:`EasyVQAAccuracy`, :class:`ShapesCaptionMetrics`, :class:`ShapesTranslationBLEU`: the same
  for the embedded tasks, plus a breakdown (by kind of question; shape-and-colour correctness) from
  batch keys listed in ``extra_keys`` (``source_text``, ``attributes``).

:func:`metric_dict` gives any of them as ``{name: float}`` (names = ``metric.names``).
"""

from __future__ import annotations

from torchmetrics import Metric

from amad.metrics.attributes import AttributeAccuracy, WithAttributes, reference_oracle
from amad.metrics.captioning import CaptionMetrics, coco_caption_scores, java_available
from amad.metrics.translation import TranslationBLEU, corpus_bleu
from amad.metrics.vqa import EasyVQAAccuracy, VQAAccuracy, normalize_answer, vqa_score


class ShapesCaptionMetrics(WithAttributes, CaptionMetrics):
    """:class:`CaptionMetrics` plus the share of captions naming the image's shape and colour."""


class ShapesTranslationBLEU(WithAttributes, TranslationBLEU):
    """:class:`TranslationBLEU` plus the share of translations naming the image's shape and colour."""


__all__ = [
    "AttributeAccuracy",
    "CaptionMetrics",
    "EasyVQAAccuracy",
    "ShapesCaptionMetrics",
    "ShapesTranslationBLEU",
    "TranslationBLEU",
    "VQAAccuracy",
    "coco_caption_scores",
    "corpus_bleu",
    "java_available",
    "metric_dict",
    "normalize_answer",
    "reference_oracle",
    "vqa_score",
]


def metric_dict(metric: Metric) -> dict[str, float]:
    """``metric.compute()`` as ``{name: float}`` (a scalar result is keyed by ``metric.names[0]``)."""
    value = metric.compute()
    if isinstance(value, dict):
        return {k: float(v) for k, v in value.items()}
    return {metric.names[0]: float(value)}
