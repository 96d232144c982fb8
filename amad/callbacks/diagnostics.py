"""Cheap per-run diagnostics that test *why* a method wins, on one fixed validation batch.

A sweep asks where AMAD beats one-to-one; its accuracies alone cannot say whether a gain comes from the
method or from a stronger attention term in disguise (the losses have different scales), nor whether the
method's own argument (the teacher's heads are correlated, so a student head should mix several) holds.
These numbers are measured on the same fixed validation batch for every run of a comparison, without
gradients, at step 0 (``start``) and after the last step (``end``):

* ``attn_loss``: the unweighted attention term ``L_attn`` (before γ) of the run's own method, on the
  live teacher's maps; None for methods without one (gt, kd).
* ``head_diversity``: the student's :func:`~amad.callbacks.head_alignment.head_diversity` (1 - mean
  pairwise cosine between its heads' maps) over **every** attention site of the student, whatever the
  method distils, so that gt and kd students compare with the others; None for one-head students.
* ``weight_spread`` (end only; methods with head weights, AMAD): the
  :func:`~amad.callbacks.head_alignment.weight_spread` of the a_ij.

Once per teacher (not per run), :func:`teacher_head_similarity` gives the teacher's per-layer mean pairwise
cosine between its heads' maps on the same batch.

The batch is taken once per comparison by :func:`fixed_batch`, before any run, so that no run's random
state changes: the students trained with the diagnostics are bit-identical to those trained without.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from amad.callbacks.head_alignment import head_diversity, layer_head_cosines, weight_spread

#: examples of the fixed batch (one training batch): stable means, and about 1 s per measurement on one
#: CPU core for the sweep's 128-d students (2-3 % of a 600-step run)
DIAGNOSTICS_EXAMPLES = 64


def fixed_batch(datamodule: Any, examples: int = DIAGNOSTICS_EXAMPLES) -> dict[str, Any]:
    """The first ``examples`` of the first validation batch (the validation loader does not shuffle: the
    same examples for every run). The global random state is left as it was (creating a loader draws
    from it)."""
    with torch.random.fork_rng(devices=[]):
        batch = next(iter(datamodule.val_dataloader()))
    return {k: v[:examples] for k, v in batch.items()}


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def teacher_head_similarity(teacher: torch.nn.Module, batch: dict[str, Any]) -> dict[str, list[float | None]]:
    """site -> per layer, the mean cosine between two of the teacher's heads' maps on ``batch`` (1: every
    head attends alike; AMAD's argument for mixing several teacher heads into one student head)."""
    was = teacher.training
    teacher.eval()
    try:
        device = next(teacher.parameters()).device
        out = teacher(_to(batch, device), sites=tuple(teacher.sites))
    finally:
        teacher.train(was)
    return layer_head_cosines(out, tuple(teacher.sites))


@torch.no_grad()
def measure(pl_module: L.LightningModule, batch: dict[str, Any]) -> dict[str, Any]:
    """The attention term, the student's head diversity and (AMAD) the weight spread, now.

    Args:
        pl_module: a :class:`~amad.lit.DistillationModule`, or an any-model system
            (:class:`~amad.lit.generic.GenericDistillationModule`, whose ``distillation`` is None without a
            teacher).
        batch: the fixed batch (any device).
    """
    task = pl_module.distillation  # None: an any-model system trained on labels alone (its gt)
    student = pl_module.student
    batch = _to(batch, pl_module.device)
    was = student.training
    (task or student).train(False)  # no dropout: the same batch gives the same maps
    try:
        sites = tuple(student.sites)
        uses_attention = task is not None and task.uses_attention
        capture = task.capture() if uses_attention else {"sites": (), "qkv_sites": ()}
        qkv_sites = capture.get("qkv_sites", ())
        if capture.get("attention_source", "maps") == "maps":  # one forward: every site's maps serve both
            s_out = maps_out = student(batch, sites=sites, qkv_sites=qkv_sites)
        else:  # the loss takes queries and keys (attention_source "qk"); the diversity needs maps
            s_out = student(batch, sites=capture["sites"], qkv_sites=qkv_sites, attention_source="qk")
            maps_out = student(batch, sites=sites)
        result: dict[str, Any] = {"head_diversity": head_diversity(maps_out, sites), "attn_loss": None}
        if uses_attention:
            # the live teacher: a teacher cache holds training examples only, never this batch
            t_out = task.teacher_outputs(batch)
            loss, _ = task.attn(t_out, s_out)
            result["attn_loss"] = float(loss)
            if task.attn.method.has_head_weights:
                weights = task.attn.weights(t_out, s_out)
                result["weight_spread"] = weight_spread(weights) if weights else None
    finally:
        (task or student).train(was)
    return result


class DiagnosticsCallback(L.Callback):
    """Measure :func:`measure` on a fixed batch at the start and the end of training.

    After ``fit``, :attr:`result` holds ``{"examples": n, "attn_loss": {"start", "end"}, "head_diversity":
    {"start", "end"}, "weight_spread": {...} | None}`` (the last for methods with head weights only). The
    values are also sent to the trainer's loggers as ``diag/<name>_<start|end>``.

    Args:
        batch: the fixed batch (:func:`fixed_batch`), the same for every run of a comparison.
    """

    def __init__(self, batch: dict[str, Any]) -> None:
        super().__init__()
        self.batch = batch
        self.result: dict[str, Any] = {}
        self._start: dict[str, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = measure(pl_module, self.batch)
        self._log(trainer, self._start, "start")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        end = measure(pl_module, self.batch)
        self._log(trainer, end, "end")
        self.result = {
            "examples": len(self.batch["ids"]) if "ids" in self.batch else None,
            "attn_loss": {"start": self._start.get("attn_loss"), "end": end["attn_loss"]},
            "head_diversity": {"start": self._start.get("head_diversity"), "end": end["head_diversity"]},
        }
        if "weight_spread" in end:
            self.result["weight_spread"] = end["weight_spread"]

    @staticmethod
    def _log(trainer: L.Trainer, values: dict[str, Any], when: str) -> None:
        # on_train_start/end may not self.log(): the loggers take the numbers directly
        metrics = {f"diag/{k}_{when}": v for k, v in values.items() if isinstance(v, float)}
        spread = values.get("weight_spread")
        if spread:
            metrics[f"diag/weight_row_range_{when}"] = spread["mean_row_range"]
        if metrics:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
