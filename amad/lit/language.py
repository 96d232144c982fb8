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

import torch
from torch import nn

from amad.distill.attention import LayerMapSpec
from amad.lit.generic import GenericDistillationModule
from amad.losses.methods import AttentionMethod
from amad.metrics.next_token import NextTokenMetrics
from amad.models import GenericAdapter

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


class LanguageDistillationModule(GenericDistillationModule):
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
        attention_lr_scale: multiplier of ``lr`` for the attention method's own parameters (A2D's
            aligners, the AMAD projection), as :class:`~amad.lit.DistillationModule`'s.
        skip_nonfinite: skip a batch whose loss is not finite (counted) instead of stopping with an error.
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
        attention_lr_scale: float = 1.0,
        skip_nonfinite: bool = False,
        export_dir: str | None = None,
        task: str = "lm",
        vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        if task != "lm":
            raise ValueError(f"LanguageDistillationModule serves language-modelling data, not task {task!r}")
        self.check_options(warmup_steps, attention_lr_scale)
        self.save_hyperparameters()
        spec = dict(student or {})
        if teacher is None:
            from transformers import LlamaConfig, LlamaForCausalLM

            if vocab_size is None:
                raise ValueError("LanguageDistillationModule: a student built from scratch needs vocab_size")
            ids = {"pad_token_id": _PAD, "bos_token_id": _BOS, "eos_token_id": _EOS}
            frozen = None
            built: GenericAdapter | dict[str, Any] = GenericAdapter(
                LlamaForCausalLM(LlamaConfig(**{**ids, **spec}, vocab_size=vocab_size))
            )
        else:
            frozen, built = _load_causal_lm(teacher, vocab_size), spec
        self.wire(frozen, built, attention, **self.wire_options())
        self.metrics = nn.ModuleDict({"val": NextTokenMetrics(), "test": NextTokenMetrics()})

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """(B, T - 1, V) shifted logits of the student (position t predicts token t + 1)."""
        return self.student(batch, sites=()).logits

    def evaluate(self, batch: dict[str, Any], stage: str) -> None:
        out = self.student(batch, sites=())
        self.metrics[stage].update(out.logits, batch["labels"], batch.get("copy_mask"))

    def log_epoch(self, stage: str) -> None:
        values = self.metrics[stage].compute()
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=stage == "val")
        self.metrics[stage].reset()

    def export_extras(self, export_dir: str) -> None:
        """The DataModule's tokenizer beside the model, so the export loads with ``AutoTokenizer``."""
        tokenizer = getattr(getattr(self.trainer, "datamodule", None), "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save_pretrained(export_dir)
