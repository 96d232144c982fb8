"""What every any-model system shares: the wiring of a transformers student to its objective.

:class:`~amad.lit.classify.ClassificationDistillationModule` and
:class:`~amad.lit.language.LanguageDistillationModule` differ only in how a model is loaded or built,
which metric they report and what they save beside an exported student. Everything else lives here once:
the :class:`~amad.distill.DistillationTask` (task loss, output KD, an attention method) when there is a
teacher, the labels-only objective when there is none, the guard against non-finite losses, AdamW with an
optional linear warm-up before a cosine decay, the attention method's own parameters in the optimizer,
and the export of the trained student as a transformers checkpoint.

A subclass keeps its own typed ``__init__`` (the LightningCLI / ``amad compare`` schema), calls
``super().__init__()`` and ``save_hyperparameters()``, then :meth:`GenericDistillationModule.wire`, and
implements :meth:`~GenericDistillationModule.evaluate` (plus :meth:`~GenericDistillationModule.log_epoch`
when its metric accumulates over an epoch).
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from amad.distill import DistillationTask
from amad.distill.attention import LayerMapSpec
from amad.lit.base import guard_nonfinite
from amad.losses.methods import AttentionMethod
from amad.models import GenericAdapter, derive_student


class GenericDistillationModule(L.LightningModule):
    """Base of the systems around :class:`~amad.models.GenericAdapter` models (any transformers model).

    Attributes:
        student: the trained :class:`~amad.models.GenericAdapter`.
        distillation: the :class:`~amad.distill.DistillationTask`, or None without a teacher (the student
            then learns from the labels alone: how the examples' teachers are made, and their ``gt``).
    """

    student: GenericAdapter
    distillation: DistillationTask | None

    #: the ``__init__`` arguments of every subclass that :meth:`wire` takes as they are
    WIRE_OPTIONS = (
        "alpha",
        "beta",
        "kd_temperature",
        "gamma",
        "sites",
        "layer_map",
        "attention_source",
        "lr",
        "weight_decay",
        "warmup_steps",
        "attention_lr_scale",
        "skip_nonfinite",
        "export_dir",
    )

    def wire_options(self) -> dict[str, Any]:
        """:meth:`wire`'s keyword options, read from the saved hyperparameters (a subclass calls
        ``save_hyperparameters()`` first, so that its signature stays the one place that names them)."""
        return {k: self.hparams[k] for k in self.WIRE_OPTIONS}

    @staticmethod
    def check_options(warmup_steps: int, attention_lr_scale: float) -> None:
        """Reject a bad schedule option. Subclasses call it before they load a teacher, so that a typo in
        a config fails in milliseconds, not after a checkpoint load; :meth:`wire` calls it again for
        direct users."""
        if warmup_steps < 0 or attention_lr_scale < 0:
            raise ValueError(
                f"warmup_steps ({warmup_steps}) and attention_lr_scale ({attention_lr_scale}) must be >= 0"
            )

    def wire(
        self,
        teacher: GenericAdapter | None,
        student: GenericAdapter | dict[str, Any],
        attention: AttentionMethod | None,
        *,
        alpha: float,
        beta: float,
        kd_temperature: float,
        gamma: float,
        sites: list[str] | None,
        layer_map: LayerMapSpec,
        attention_source: Literal["maps", "qk"],
        lr: float,
        weight_decay: float,
        warmup_steps: int = 0,
        attention_lr_scale: float = 1.0,
        skip_nonfinite: bool = False,
        export_dir: str | None = None,
    ) -> None:
        """Build the objective: with ``teacher``, ``student`` is :func:`~amad.models.derive_student`'s
        arguments (or a ready adapter); without, the adapter trained on the labels alone."""
        self.check_options(warmup_steps, attention_lr_scale)
        if teacher is None:
            if not isinstance(student, GenericAdapter):
                raise TypeError("without a teacher the subclass builds the student adapter itself")
            self.student, self.distillation = student, None
        else:
            self.student = student if isinstance(student, GenericAdapter) else derive_student(teacher, **student)
            self.distillation = DistillationTask(
                teacher,
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
        self.lr, self.weight_decay, self.warmup_steps = float(lr), float(weight_decay), int(warmup_steps)
        self.attention_lr_scale, self.skip_nonfinite, self.export_dir = attention_lr_scale, skip_nonfinite, export_dir
        self.register_buffer("skipped_batches", torch.zeros((), dtype=torch.long), persistent=True)

    # -- what a subclass says ---------------------------------------------------------------------------
    def evaluate(self, batch: dict[str, Any], stage: str) -> None:
        """Score one ``val`` / ``test`` batch (log it, or update a metric that :meth:`log_epoch` logs)."""
        raise NotImplementedError

    def log_epoch(self, stage: str) -> None:
        """Log what :meth:`evaluate` accumulated over the epoch (nothing by default)."""

    def export_extras(self, export_dir: str) -> None:
        """Save what belongs beside the exported student (a tokenizer...); nothing by default."""

    # -- the parts, by name (what the head-alignment callbacks read) ----------------------------------------
    @property
    def attn(self) -> Any:
        """The :class:`~amad.distill.AttentionDistiller`, or None without a teacher."""
        return None if self.distillation is None else self.distillation.attn

    def head_alignment(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Teacher->student head weights on ``batch`` (:meth:`~amad.distill.DistillationTask.head_alignment`):
        ``amad compare`` snapshots them for AMAD's first seed, as for the vision-language comparisons."""
        return {} if self.distillation is None else self.distillation.head_alignment(batch)

    # -- Lightning ----------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        if self.distillation is None:
            terms = {"loss": self.student(batch, sites=()).loss}
        else:
            terms = self.distillation(batch)
        bs = len(batch["labels"])
        if not guard_nonfinite(self, terms, batch_idx, bs):
            return None
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=bs)
        return terms["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self.log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self.log_epoch("test")

    def configure_optimizers(self) -> Any:
        """AdamW over the student (and, at ``attention_lr_scale`` x lr, the attention method's own
        parameters: A2D's aligners, AMAD's projection, no weight decay); linear warm-up, then cosine to 0
        per step. A lazily sized projection must have seen a batch first, as any ``torch.nn.Lazy*`` module."""
        groups: list[dict[str, Any]] = [{"params": [p for p in self.student.parameters() if p.requires_grad]}]
        extra = [] if self.distillation is None else [p for p in self.distillation.attn.parameters() if p.requires_grad]
        if extra:  # no decay: the AMAD projection starts at W = I, and decay would pull it towards 0
            groups.append({"params": extra, "lr": self.lr * self.attention_lr_scale, "weight_decay": 0.0})
        opt = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warm = min(self.warmup_steps, total - 1)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warm)
        if warm <= 0:
            sched: Any = cosine
        else:
            ramp = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / (warm + 1), total_iters=warm)
            sched = torch.optim.lr_scheduler.SequentialLR(opt, [ramp, cosine], milestones=[warm])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_fit_end(self) -> None:
        if self.export_dir is not None and self.trainer.is_global_zero:
            self.student.model.save_pretrained(self.export_dir)
            self.export_extras(self.export_dir)
