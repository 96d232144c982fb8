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

import lightning as L
import torch
from torch import nn

from amad.distill import DistillationTask
from amad.distill.attention import LayerMapSpec
from amad.losses.methods import AttentionMethod
from amad.models import GenericAdapter, derive_student


def _load_classifier(path: str) -> GenericAdapter:
    from transformers import AutoModelForImageClassification

    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(
            f"no transformers checkpoint at {path!r} (config.json missing): train the teacher first "
            "(amad fit --config experiments/scenes-vit/teacher.yaml)"
        )
    return GenericAdapter(AutoModelForImageClassification.from_pretrained(path))


class ClassificationDistillationModule(L.LightningModule):
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
        export_dir: str | None = None,
        task: str = "classify",
        vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        if task != "classify":
            raise ValueError(f"ClassificationDistillationModule serves classification data, not task {task!r}")
        self.save_hyperparameters()
        spec = dict(student or {})
        if teacher is None:
            from transformers import ViTConfig, ViTForImageClassification

            self.student = GenericAdapter(ViTForImageClassification(ViTConfig(**spec, num_labels=num_classes)))
            self.distillation: DistillationTask | None = None
        else:
            frozen = _load_classifier(teacher)
            self.student = derive_student(frozen, **spec)
            self.distillation = DistillationTask(
                frozen,
                self.student,
                attention,
                alpha=alpha,
                beta=beta,
                kd_temperature=kd_temperature,
                gamma=gamma,
                sites=sites,
                layer_map=layer_map,
                attention_source=attention_source,
            )
        self.lr, self.weight_decay, self.export_dir = lr, weight_decay, export_dir

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """(B, C) logits of the student."""
        return self.student(batch, sites=()).logits

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.distillation is None:
            terms = {"loss": self.student(batch, sites=()).loss}
        else:
            terms = self.distillation(batch)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=len(batch["labels"]))
        return terms["loss"]

    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        out = self.student(batch, sites=())
        acc = (out.logits.argmax(-1) == batch["labels"]).float().mean()
        n = len(batch["labels"])
        self.log_dict({f"{stage}/acc": acc, f"{stage}/loss": out.loss}, batch_size=n, prog_bar=stage == "val")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> Any:
        params: list[nn.Parameter] = [p for p in self.student.parameters() if p.requires_grad]
        if self.distillation is not None:  # A2D's aligners learn with the student
            params += [p for p in self.distillation.attn.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_fit_end(self) -> None:
        if self.export_dir is not None and self.trainer.is_global_zero:
            self.student.model.save_pretrained(self.export_dir)
