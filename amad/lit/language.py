"""Causal language modelling with (or without) distillation, for any transformers causal LM.

The Lightning glue of the embedded language-model example (``experiments/scenes-lm/``), built like
:class:`~amad.lit.classify.ClassificationDistillationModule` (the same constructor contract, so ``amad
compare`` drives either): the models are :class:`~amad.models.GenericAdapter` s, the objective
:class:`~amad.distill.DistillationTask` -- next-token cross-entropy, output KD on the (B, T - 1, V) logits
over the non-padding targets (the adapter's ``target_mask``), an attention method on ``decoder.self`` --
and the metrics those of :class:`~amad.metrics.next_token.NextTokenMetrics`: next-token accuracy, loss and
perplexity over every non-padding target, and ``copy_acc``, the accuracy on the words the scene texts'
recall sentences copy from the description (where attention matters). Without a teacher the student is a
``LlamaForCausalLM`` built from a ``LlamaConfig`` and trained on the text alone: that is how the example's
teacher is made (``export_dir`` saves it, with the data's tokenizer, as a transformers checkpoint) and what
its ``gt`` baseline is.
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
from amad.metrics.next_token import NextTokenMetrics
from amad.models import GenericAdapter, derive_student

#: special ids of the word-level tokenizers (amad.models.tokenizers.SPECIAL_TOKENS)
_PAD, _BOS, _EOS = 0, 5, 6


def _load_causal_lm(path: str, vocab_size: int | None) -> GenericAdapter:
    from transformers import AutoModelForCausalLM

    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(
            f"no transformers checkpoint at {path!r} (config.json missing): train the teacher first "
            "(amad fit --config experiments/scenes-lm/teacher.yaml)"
        )
    model = AutoModelForCausalLM.from_pretrained(path)
    if vocab_size is not None and model.config.vocab_size != vocab_size:
        raise ValueError(
            f"teacher {path!r} has a vocabulary of {model.config.vocab_size} tokens, the data {vocab_size}"
        )
    return GenericAdapter(model)


class LanguageDistillationModule(L.LightningModule):
    """A causal-LM student, distilled from a teacher causal LM or trained on the text alone.

    Args:
        teacher: directory of a transformers causal-LM checkpoint (``save_pretrained``), or None: no teacher,
            the student learns from the text (``alpha`` only).
        student: with a teacher, :func:`~amad.models.derive_student` arguments (``num_heads``, ``num_layers``,
            ``hidden_size``, ``init``...); without, the fields of a ``LlamaConfig`` for a ``LlamaForCausalLM``
            built from scratch (``vocab_size`` and the special ids come from the data).
        attention: the attention method (None: none).
        alpha, beta, kd_temperature, gamma, sites, layer_map, attention_source: as
            :class:`~amad.distill.DistillationTask`.
        lr, weight_decay: AdamW; the learning rate follows a cosine decay over the run.
        warmup_steps: linear warm-up of the learning rate before the cosine (transformers trained from
            scratch need one; 0 for none).
        export_dir: where to save the trained student as a transformers checkpoint at the end of ``fit``
            (with the DataModule's ``tokenizer`` when it has one).
        task, vocab_size: linked from the DataModule by the CLI (``lm``; the vocabulary size).

    Attributes:
        student: the trained :class:`~amad.models.GenericAdapter`.
        distillation: the :class:`~amad.distill.DistillationTask`, or None without a teacher.
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
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
        export_dir: str | None = None,
        task: str = "lm",
        vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        if task != "lm":
            raise ValueError(f"LanguageDistillationModule serves language-modelling data, not task {task!r}")
        self.save_hyperparameters()
        spec = dict(student or {})
        if teacher is None:
            from transformers import LlamaConfig, LlamaForCausalLM

            if vocab_size is None:
                raise ValueError("LanguageDistillationModule: a student built from scratch needs vocab_size")
            ids = {"pad_token_id": _PAD, "bos_token_id": _BOS, "eos_token_id": _EOS}
            self.student = GenericAdapter(LlamaForCausalLM(LlamaConfig(**{**ids, **spec}, vocab_size=vocab_size)))
            self.distillation: DistillationTask | None = None
        else:
            frozen = _load_causal_lm(teacher, vocab_size)
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
        self.lr, self.weight_decay, self.warmup_steps, self.export_dir = lr, weight_decay, warmup_steps, export_dir
        self.metrics = nn.ModuleDict({"val": NextTokenMetrics(), "test": NextTokenMetrics()})

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """(B, T - 1, V) shifted logits of the student (position t predicts token t + 1)."""
        return self.student(batch, sites=()).logits

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.distillation is None:
            terms = {"loss": self.student(batch, sites=()).loss}
        else:
            terms = self.distillation(batch)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=len(batch["input_ids"]))
        return terms["loss"]

    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        out = self.student(batch, sites=())
        self.metrics[stage].update(out.logits, batch["labels"], batch.get("copy_mask"))

    def _log_metrics(self, stage: str) -> None:
        values = self.metrics[stage].compute()
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=stage == "val")
        self.metrics[stage].reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def configure_optimizers(self) -> Any:
        params: list[nn.Parameter] = [p for p in self.student.parameters() if p.requires_grad]
        if self.distillation is not None:  # A2D's aligners learn with the student
            params += [p for p in self.distillation.attn.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
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
            tokenizer = getattr(getattr(self.trainer, "datamodule", None), "tokenizer", None)
            if tokenizer is not None:
                tokenizer.save_pretrained(self.export_dir)
