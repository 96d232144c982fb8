"""What every amad system shares: the optimizer schedule, generation metrics, and checkpoint content.

Subclasses (:class:`~amad.lit.FineTuneModule`, :class:`~amad.lit.DistillationModule`) say which
module is trainable (:attr:`trainable`) and how a training loss is made; evaluation is the same for
both: greedy generation with the trainable model, scored by the task's metric.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch
from torch import nn

from amad.lit.checkpoint import add_model_to_checkpoint

RNG_KEY = "amad_rng_states"
#: a config value ``compare:<comparison yaml>`` names the teacher of that comparison
COMPARE_PREFIX = "compare:"


def guard_nonfinite(module: L.LightningModule, terms: dict[str, torch.Tensor], batch_idx: int, batch_size: int) -> bool:
    """Whether the objective's ``terms`` may be stepped on: True when ``terms["loss"]`` is finite.

    A non-finite loss stops training with an error that names the non-finite terms, or, with the
    module's ``skip_nonfinite``, skips the batch and counts it in the module's ``skipped_batches`` buffer
    (logged as ``train/skipped_batches``). One implementation for every system, so that the message and
    the count mean the same thing everywhere.
    """
    if torch.isfinite(terms["loss"]):
        return True
    bad = sorted(k for k, v in terms.items() if not torch.isfinite(v))
    if not module.skip_nonfinite:
        raise FloatingPointError(
            f"non-finite loss at global step {module.global_step} (batch {batch_idx}): terms {bad} are "
            "not finite. Set skip_nonfinite=True to skip such batches."
        )
    module.skipped_batches += 1
    module.log("train/skipped_batches", module.skipped_batches.float(), batch_size=batch_size)
    return False


def _collect_rng_states() -> dict[str, Any]:
    """torch / CUDA / numpy / python RNG states as plain tensors and lists (``weights_only``-loadable)."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in states["python"]))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


#: Task name -> (metric names logged as ``<stage>/<name>``, the one used for checkpoints / comparison).
TASK_METRICS: dict[str, tuple[tuple[str, ...], str]] = {
    "vqa": (("vqa_acc",), "vqa_acc"),
    "caption": (("cider", "bleu4", "bleu1", "rouge_l"), "cider"),
    "translate": (("bleu",), "bleu"),
}


def build_task_metric(task: str) -> nn.Module:
    """The torchmetrics ``Metric`` that scores generated text for ``task``."""
    from amad.metrics import CaptionMetrics, TranslationBLEU, VQAAccuracy

    if task == "vqa":
        return VQAAccuracy()
    if task == "caption":
        return CaptionMetrics()
    if task == "translate":
        return TranslationBLEU()
    raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASK_METRICS)}")


class TaskModule(L.LightningModule):
    """Base system: optimizer + schedule, generation-based evaluation, self-contained checkpoints.

    Args:
        task: ``vqa``, ``caption`` or ``translate`` (linked from the DataModule by the CLI).
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        warmup_ratio: fraction of the total optimizer steps spent warming up linearly from 0.
        schedule: decay after warm-up: ``linear`` to 0, ``cosine`` to 0, or ``constant``.
        max_new_tokens: generation length for evaluation (VQA answers are 1-3 tokens).
        lr_scale: per-parameter-name-prefix multipliers of ``lr`` (the first matching prefix wins),
            e.g. ``{"model.vision_model.": 2.0}`` for a faster vision tower.
        freeze: parameter-name prefixes of the trained model to keep fixed (no gradient, not in the
            optimizer), e.g. ``["model.vision_model."]`` to keep a pre-trained vision tower as it is.
    """

    #: Prefix of the trainable model in ``state_dict`` (``model.`` / ``student.``).
    trainable_prefix = "model."

    def __init__(
        self,
        task: Literal["vqa", "caption", "translate"] = "vqa",
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.05,
        schedule: Literal["linear", "cosine", "constant"] = "linear",
        max_new_tokens: int = 8,
        lr_scale: dict[str, float] | None = None,
        freeze: list[str] | None = None,
    ) -> None:
        super().__init__()
        if task not in TASK_METRICS:
            raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASK_METRICS)}")
        self.task = task
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_ratio, self.schedule, self.max_new_tokens = warmup_ratio, schedule, max_new_tokens
        self.lr_scale = dict(lr_scale or {})
        self.freeze = list(freeze or [])
        self.val_metric = build_task_metric(task)
        self.test_metric = build_task_metric(task)

    # -- to be provided by subclasses ------------------------------------------------------------
    @property
    def trainable(self) -> nn.Module:
        """The model being trained (and evaluated, checkpointed, exported)."""
        raise NotImplementedError

    #: Multiplier of ``lr`` for :meth:`extra_trainable_parameters` (a subclass option).
    extra_lr_scale: float = 1.0

    def extra_trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters trained alongside the model but not part of it (e.g. an A2D aligner)."""
        return []

    # -- setup -----------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Take the DataModule's metric settings (e.g. lower-cased BLEU) and, if needed, its tokenizer."""
        dm = self.datamodule
        if hasattr(dm, "make_metric"):
            self.val_metric, self.test_metric = dm.make_metric(), dm.make_metric()
        from amad.models.tokenizers import is_placeholder_tokenizer

        tok = getattr(dm, "tokenizer", None)
        current = getattr(self.trainable, "tokenizer", None)
        # A model built from a preset + vocab_size carries placeholder words: decode with the data's.
        if tok is not None and (current is None or is_placeholder_tokenizer(current)):
            if current is not None and len(current) != len(tok):
                raise ValueError(f"the model's vocabulary has {len(current)} tokens, the data's {len(tok)}")
            self.trainable.tokenizer = tok

    @property
    def datamodule(self) -> Any:
        """The trainer's DataModule (None outside a trainer or without one)."""
        return getattr(self.trainer, "datamodule", None) if self._trainer is not None else None

    def check_compatible(self, model: nn.Module, role: str, config_key: str) -> None:
        """Fail before any step when ``model`` cannot read the DataModule's batches.

        Checks the task (model family), the image size (the patch grid follows from it) and the
        tokenizer (same words, same ids), and names both values and the config keys to change —
        instead of a tensor-size error from inside transformers, or silently wrong inputs.

        Args:
            model: an adapter (the teacher, or the model being fine-tuned).
            role: its name in the message (``teacher``, ``model``).
            config_key: where the model is configured (``model.init_args.teacher``).
        """
        dm = self.datamodule
        if dm is None:
            return
        problems = []
        data_task = getattr(dm, "task", None)
        tasks = getattr(model, "tasks", None)
        if data_task and tasks and data_task not in tasks:
            problems.append(
                f"the {role} is a {model.family!r} model, for tasks {list(tasks)}, but the data's task is "
                f"{data_task!r} (data.class_path)"
            )
        want, got = getattr(model, "image_size", None), getattr(dm, "pixel_size", None)
        if want is not None and got is not None and want != got:
            patch = getattr(model, "patch_size", None)
            grid = f", patch {patch}: {want // patch}×{want // patch} image tokens" if patch else ""
            problems.append(
                f"the {role} reads {want}×{want} px images{grid}, but the data makes {got}×{got} px images: "
                f"set data.init_args.image_size: {want}"
            )
        data_tok, model_tok = getattr(dm, "tokenizer", None), getattr(model, "tokenizer", None)
        if data_tok is not None and model_tok is not None and data_tok.get_vocab() != model_tok.get_vocab():
            problems.append(
                f"the {role}'s tokenizer ({len(model_tok)} tokens) differs from the data's ({len(data_tok)} "
                "tokens, or other ids): use the data the model was trained on, or give the DataModule the "
                "model's tokenizer (data.init_args.tokenizer_path)"
            )
        if problems:
            raise ValueError(f"{config_key} does not fit the data: " + "; ".join(problems))

    # -- evaluation ------------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metric)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metric)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        preds = self.trainable.generate(batch, max_new_tokens=self.max_new_tokens)
        return [
            {"id": i, "source": s, "prediction": p}
            for i, s, p in zip(batch["ids"], batch["source_text"], preds, strict=True)
        ]

    def _eval_step(self, batch: dict[str, Any], stage: str, metric: nn.Module) -> None:
        out = self.trainable(batch, sites=())
        self.log(f"{stage}/loss", out.loss, batch_size=len(batch["ids"]), sync_dist=True)
        preds = self.trainable.generate(batch, max_new_tokens=self.max_new_tokens)
        extras = {k: batch[k] for k in getattr(metric, "extra_keys", ()) if k in batch}
        metric.update(preds, batch["references"], ids=batch["ids"], **extras)

    def on_validation_epoch_end(self) -> None:
        self._log_metric("val", self.val_metric)

    def on_test_epoch_end(self) -> None:
        self._log_metric("test", self.test_metric)

    def _log_metric(self, stage: str, metric: nn.Module) -> None:
        value = metric.compute()
        values = value if isinstance(value, dict) else {TASK_METRICS[self.task][1]: value}
        for name, v in values.items():
            # compute() already gathered every rank: the value is global, no sync needed.
            self.log(f"{stage}/{name}", float(v), rank_zero_only=False, sync_dist=False)
        metric.reset()

    # -- optimisation ----------------------------------------------------------------------------
    def freeze_parameters(self) -> int:
        """Fix the parameters named by :attr:`freeze`; returns how many tensors (ValueError if a prefix
        names none: a typo would otherwise silently train everything)."""
        named = dict(self.trainable.named_parameters())
        for prefix in self.freeze:
            hits = [p for n, p in named.items() if n.startswith(prefix)]
            if not hits:
                example = next(iter(named))
                raise ValueError(f"freeze prefix {prefix!r} names no parameter of the model (e.g. {example!r})")
            for p in hits:
                p.requires_grad_(False)
        return sum(1 for p in named.values() if not p.requires_grad)

    def configure_optimizers(self) -> dict[str, Any]:
        self.freeze_parameters()
        buckets: dict[tuple[float, bool], list[nn.Parameter]] = {}
        for name, p in self.trainable.named_parameters():
            if p.requires_grad:
                scale = next((v for k, v in self.lr_scale.items() if name.startswith(k)), 1.0)
                decays = not (p.ndim < 2 or "norm" in name.lower())
                buckets.setdefault((scale, decays), []).append(p)
        groups = [
            {"params": ps, "lr": self.lr * scale, "weight_decay": self.weight_decay if decays else 0.0}
            for (scale, decays), ps in buckets.items()
        ]
        extra = [p for p in self.extra_trainable_parameters() if p.requires_grad]
        if extra:  # no decay: the AMAD projection starts at W = I, and decay would pull it towards 0
            groups.append({"params": extra, "lr": self.lr * self.extra_lr_scale, "weight_decay": 0.0})
        opt = torch.optim.AdamW(groups, lr=self.lr)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(total, self.warmup_ratio, self.schedule))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoints -----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        add_model_to_checkpoint(checkpoint, self.trainable, self.trainable_prefix)
        # RNG states (torch, numpy, python, CUDA): a resumed run draws the same dropout masks as an
        # uninterrupted one. Lightning does not store them itself.
        checkpoint[RNG_KEY] = _collect_rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if RNG_KEY in checkpoint:
            _set_rng_states(checkpoint[RNG_KEY])


def lr_schedule(total_steps: int, warmup_ratio: float, schedule: str):
    """Multiplier of the peak lr at step ``s``: linear warm-up, then linear/cosine decay or constant."""
    if schedule not in ("linear", "cosine", "constant"):
        raise ValueError(f"unknown schedule {schedule!r}; expected linear, cosine or constant")
    warmup = round(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        if schedule == "linear":
            return max(1.0 - progress, 0.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def resolve_model(spec: dict[str, Any] | str | nn.Module | None, vocab_size: int | None = None) -> nn.Module:
    """Turn a model spec into an adapter.

    Args:
        spec: a dict for :func:`amad.models.build_model` (``{"family": ..., "preset": ..., **overrides}``);
            a path (``save_pretrained`` dir or amad ``.ckpt``); or an adapter.
        vocab_size: vocabulary size for dict specs.

    Raises:
        ValueError: a ``compare:`` reference: the ``amad`` command resolves those before building
            anything (see :func:`amad.compare.teacher.resolve_teacher_reference`), never a constructor.
    """
    from amad.models import build_model, load_model

    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, str) and spec.startswith(COMPARE_PREFIX):
        raise ValueError(
            f"{spec!r} names a comparison's teacher: the amad command resolves such references to a path before "
            "anything is built; from Python, call amad.compare.teacher.resolve_teacher_reference(spec) first"
        )
    if isinstance(spec, str):
        return load_model(spec)
    spec = dict(spec or {"family": "blip-vqa", "preset": "tiny"})
    if vocab_size is not None:
        spec.setdefault("vocab_size", vocab_size)
    return build_model(**spec)
