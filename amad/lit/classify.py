"""Classification with (or without) distillation, for any transformers image or text classifier.

The Lightning glue of the embedded ViT example (``experiments/scenes-vit/``): the models are
:class:`~amad.models.GenericAdapter` s, the objective :class:`~amad.distill.DistillationTask` (task
cross-entropy, output KD, an attention method), the metric top-1 accuracy. Without a teacher the
student trains on the labels alone: that is how the example's teacher is made (``export_dir`` saves it
as a transformers checkpoint) and what its ``gt`` baseline is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from amad.distill.attention import LayerMapSpec
from amad.lit.generic import GenericDistillationModule
from amad.losses.methods import AttentionMethod
from amad.models import GenericAdapter


def _load_classifier(path: str) -> GenericAdapter:
    from transformers import AutoModelForImageClassification

    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(
            f"no transformers checkpoint at {path!r} (config.json missing): train the teacher first "
            "(amad fit --config experiments/scenes-vit/teacher.yaml)"
        )
    return GenericAdapter(AutoModelForImageClassification.from_pretrained(path))


class ClassificationDistillationModule(GenericDistillationModule):
    """A classifier student, distilled from a teacher classifier or trained on labels alone.

    Args:
        teacher: directory of a transformers image-classification checkpoint (``save_pretrained``), or
            None: no teacher, the student learns from the labels (``alpha`` only).
        student: with a teacher, :func:`~amad.models.derive_student` arguments (``num_heads``,
            ``num_layers``, ``hidden_size``, ``init``...); without, the fields of a ``ViTConfig`` for a
            ``ViTForImageClassification`` built from scratch (``num_labels`` is ``num_classes``).
        attention: the attention method (None: none).
        alpha, beta, kd_temperature, gamma, sites, layer_map, attention_source: as
            :class:`~amad.distill.DistillationTask`.
        num_classes: classes of a student built from scratch.
        lr, weight_decay: AdamW; the learning rate follows a cosine decay over the run.
        warmup_steps: linear warm-up of the learning rate before the cosine (0: none).
        attention_lr_scale: multiplier of ``lr`` for the attention method's own parameters (A2D's
            aligners, the AMAD projection), as :class:`~amad.lit.DistillationModule`'s.
        skip_nonfinite: skip a batch whose loss is not finite (counted) instead of stopping with an error.
        export_dir: where to save the trained student as a transformers checkpoint at the end of ``fit``.
        task, vocab_size: linked from the DataModule by the CLI (``classify``; no vocabulary).
    """

    def __init__(
        self,
        teacher: str | None = None,
        student: dict[str, Any] | None = None,
        attention: AttentionMethod | None = None,
        alpha: float = 1.0,
        beta: float = 1.0,
        kd_temperature: float = 2.0,
        gamma: float = 1.0,
        sites: list[str] | None = None,
        layer_map: LayerMapSpec = "uniform",
        attention_source: Literal["maps", "qk"] = "maps",
        num_classes: int = 24,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
        attention_lr_scale: float = 1.0,
        skip_nonfinite: bool = False,
        export_dir: str | None = None,
        task: str = "classify",
        vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        if task != "classify":
            raise ValueError(f"ClassificationDistillationModule serves classification data, not task {task!r}")
        self.check_options(warmup_steps, attention_lr_scale)
        self.save_hyperparameters()
        spec = dict(student or {})
        if teacher is None:
            from transformers import ViTConfig, ViTForImageClassification

            frozen = None
            built: GenericAdapter | dict[str, Any] = GenericAdapter(
                ViTForImageClassification(ViTConfig(**spec, num_labels=num_classes))
            )
        else:
            frozen, built = _load_classifier(teacher), spec
        self.wire(frozen, built, attention, **self.wire_options())

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """(B, C) logits of the student."""
        return self.student(batch, sites=()).logits

    def evaluate(self, batch: dict[str, Any], stage: str) -> None:
        """Top-1 accuracy and loss of one batch (Lightning averages them over the epoch, by batch size)."""
        out = self.student(batch, sites=())
        acc = (out.logits.argmax(-1) == batch["labels"]).float().mean()
        n = len(batch["labels"])
        self.log_dict({f"{stage}/acc": acc, f"{stage}/loss": out.loss}, batch_size=n, prog_bar=stage == "val")
