"""DistillationModule: the Lightning glue around :class:`~amad.distill.DistillationTask`.

The task (a plain ``nn.Module``: frozen teacher, student, attention distiller) computes the loss terms;
this system adds what Lightning does: the optimizer and schedule (:class:`~amad.lit.TaskModule`),
logging, evaluation metrics, checkpoints that hold the student only, and the guard against non-finite
losses.

Lightning (>= 2.5.5) warns "Found N module(s) in eval mode" at every fit: the frozen teacher is in eval
mode by design. The ``amad`` command silences that warning while it runs (:data:`amad.cli.QUIET_WARNINGS`);
importing this module changes no warning filter.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from amad.distill import DistillationTask, FrozenTeacher
from amad.distill.attention import LayerMapSpec
from amad.lit.base import TaskModule, guard_nonfinite, resolve_model
from amad.losses.methods import AMAD, AttentionMethod


class DistillationModule(TaskModule):
    """Distil a frozen teacher into a trainable student (docs/method.md §4).

    Args:
        teacher: the fine-tuned teacher: a path (``save_pretrained`` dir or amad ``.ckpt``) or an adapter
            / :class:`~amad.distill.FrozenTeacher` instance. In YAML, ``compare:<comparison yaml>`` names
            the teacher of a comparison; the ``amad`` command resolves it to a path before anything is
            built (:func:`amad.compare.teacher.resolve_teacher_reference`).
        student: a dict of :func:`amad.models.derive_student` arguments (``num_heads``, ``num_layers``,
            ``hidden_size``, ``intermediate_size``, ``init``: ``teacher``|``random``), a path to a model,
            or an adapter instance. ``None`` copies the teacher's architecture.
        attention: the attention method and its options, e.g. ``AMAD(variant="kl")``, ``OneToOne()``,
            ``MiniLMRelation(num_relation_heads=8)`` (:mod:`amad.losses.methods`); None: no attention loss.
        alpha: weight α of the task cross-entropy.
        beta: weight β of the output distillation (0 turns it off and skips computing it).
        kd_temperature: τ of the output distillation (the loss is multiplied by τ²).
        gamma: weight γ of the attention loss.
        sites: the attention sites to distil (default: every site of the family; self-attention
            sites only for ``MiniLMRelation``).
        layer_map: ``uniform``, ``last``, an explicit list (student layer l ↔ teacher layer
            ``layer_map[l]``), or a dict site → one of those.
        attention_source: ``maps`` (default: eager attention, the distilled layers' maps captured) or ``qk``
            (both models run SDPA and keep only the queries, keys, masks and position biases of the
            distilled layers; the losses rebuild the maps in chunks: same values, no whole map). See
            :class:`~amad.distill.DistillationTask`.
        attention_lr_scale: multiplier of ``lr`` for the attention method's own trained parameters (A2D's
            aligners, the AMAD projection's ``W``, ``b``), which are not part of the student. The
            projection's ``W`` (n x n, from ``I``) is swamped within a few steps at a student's lr.
        skip_nonfinite: on a non-finite loss, skip the batch (counted in ``train/skipped_batches``)
            instead of stopping with an error naming the step and the term.
        vocab_size: the data's vocabulary size (linked from the DataModule by the CLI); a teacher
            with another vocabulary is rejected here rather than producing garbage.
        **kwargs: the optimisation and evaluation settings of :class:`~amad.lit.TaskModule` (``task``,
            ``lr``, ``weight_decay``, ``warmup_ratio``, ``schedule``, ``max_new_tokens``, ``lr_scale``).
    """

    trainable_prefix = "distillation.student."

    def __init__(
        self,
        teacher: str | nn.Module,
        student: dict[str, Any] | str | nn.Module | None = None,
        attention: AttentionMethod | None = AMAD(),  # noqa: B008 - frozen dataclass: immutable
        alpha: float = 1.0,
        beta: float = 1.0,
        kd_temperature: float = 2.0,
        gamma: float = 1.0,
        sites: list[str] | None = None,
        layer_map: LayerMapSpec = "uniform",
        attention_source: Literal["maps", "qk"] = "maps",
        attention_lr_scale: float = 1.0,
        skip_nonfinite: bool = False,
        vocab_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.extra_lr_scale = float(attention_lr_scale)
        modules = [n for n, v in (("teacher", teacher), ("student", student)) if isinstance(v, nn.Module)]
        self.save_hyperparameters(ignore=modules or None)
        frozen = teacher if isinstance(teacher, FrozenTeacher) else FrozenTeacher(resolve_model(teacher))
        teacher_vocab = len(frozen.model.tokenizer) if frozen.model.tokenizer is not None else None
        if vocab_size is not None and teacher_vocab is not None and vocab_size != teacher_vocab:
            raise ValueError(
                f"the teacher's vocabulary has {teacher_vocab} tokens but the data's has {vocab_size}: the "
                "teacher was trained on other data or another tokenizer (model.init_args.teacher)"
            )
        self.distillation = DistillationTask(
            frozen,
            self._resolve_student(student, frozen.model),
            attention,
            alpha=alpha,
            beta=beta,
            kd_temperature=kd_temperature,
            gamma=gamma,
            sites=sites,
            layer_map=layer_map,
            attention_source=attention_source,
        )
        self.skip_nonfinite = skip_nonfinite
        self.register_buffer("skipped_batches", torch.zeros((), dtype=torch.long), persistent=True)

    @staticmethod
    def _resolve_student(spec: dict[str, Any] | str | nn.Module | None, teacher: nn.Module) -> nn.Module:
        from amad.models import derive_student

        if isinstance(spec, (str, nn.Module)):
            return resolve_model(spec)
        return derive_student(teacher, **(spec or {}))

    # -- the parts, by name ------------------------------------------------------------------------
    @property
    def teacher(self) -> FrozenTeacher:
        return self.distillation.teacher

    @property
    def student(self) -> nn.Module:
        return self.distillation.student

    @property
    def attn(self):
        return self.distillation.attn

    @property
    def trainable(self) -> nn.Module:
        return self.student

    def train(self, mode: bool = True) -> DistillationModule:
        """Put the student (and criteria) in ``mode``; the teacher stays in eval (FrozenTeacher)."""
        super().train(mode)
        self.teacher.train(False)
        return self

    def setup(self, stage: str) -> None:
        """Also check that teacher and data agree (tokenizer, image size, task) before any step runs."""
        super().setup(stage)
        self.check_compatible(self.teacher.model, "teacher", "model.init_args.teacher")

    def extra_trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.attn.parameters())

    # -- training --------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any], **kwargs: Any) -> Any:
        return self.student(batch, **kwargs)

    def distillation_losses(self, batch: dict[str, Any], teacher_out: Any = None) -> dict[str, Tensor]:
        """Every term of the objective for one batch (see :meth:`DistillationTask.forward`)."""
        return self.distillation(batch, teacher_out)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        terms = self.distillation(batch)
        bs = len(batch["ids"])
        if not guard_nonfinite(self, terms, batch_idx, bs):
            return None
        for name, value in terms.items():
            self.log(f"train/{name}", value, batch_size=bs, prog_bar=name == "loss")
        return terms["loss"]

    # -- checkpoints: the student only ---------------------------------------------------------------
    _TEACHER_PREFIX = "distillation.teacher."

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the teacher: a student checkpoint never carries (or could restore) a teacher."""
        super().on_save_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        for k in [k for k in state if k.startswith(self._TEACHER_PREFIX)]:
            del state[k]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Re-inject the live teacher so that loading stays strict for everything else."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        for k in [k for k in state if k.startswith(self._TEACHER_PREFIX)]:
            del state[k]  # a foreign checkpoint: never let it overwrite the frozen teacher
        state.update({f"{self._TEACHER_PREFIX}{k}": v for k, v in self.teacher.state_dict().items()})

    def head_alignment(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Teacher→student head weights on ``batch`` (see :meth:`DistillationTask.head_alignment`)."""
        return self.distillation.head_alignment(batch)
