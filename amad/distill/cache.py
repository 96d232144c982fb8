"""The frozen teacher's outputs, computed once per training example and replayed for every run.

A comparison trains many students (methods × seeds) on the same training examples against the same
frozen teacher, and recomputes the teacher's forward for each of them: output KD alone doubled a run's
time. When the training inputs are deterministic — no augmentation, no dropout in the teacher (it is in
eval mode) — the teacher's logits and attention maps of an example never change, so they can be
computed once and replayed. :class:`TeacherCache` does that:

* :meth:`TeacherCache.fill` runs the teacher over the training set once and keeps, per example id, its
  logits (real target rows) and the maps of the distilled (site, teacher layer) pairs, each cut to the
  example's real query rows (keys are kept at the width of the batch they were computed in);
* :meth:`TeacherCache.replay` hands a training batch a :class:`ReplayedTeacher`, which
  :class:`~amad.distill.DistillationTask` turns into an :class:`~amad.models.AdapterOutput` of the
  batch's shapes (:meth:`ReplayedTeacher.for_student`), re-padding with zeros: padded query rows are
  masked by every loss and padded keys carry zero probability in the live maps too.

Only map-based methods and output KD are served; relation methods (MiniLMv2's q/k/v) and augmented or
otherwise non-deterministic inputs must use the live teacher (:meth:`TeacherCache.serves` says which).
The replayed values equal the live ones up to floating-point summation order (the teacher saw another
batch composition); ``tests/distill/test_teacher_cache.py`` holds losses and gradients to the live path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from amad.models.capture import AdapterOutput


class TeacherCache:
    """Per-example teacher logits and attention maps.

    Args:
        teacher: the frozen teacher (:class:`~amad.distill.FrozenTeacher` or an adapter in eval mode).
        layers: site -> the teacher layers whose maps to keep (the union of what the runs' layer maps
            use); an empty dict keeps logits only (output KD).
    """

    def __init__(self, teacher: Any, layers: Mapping[str, Sequence[int]]) -> None:
        self.teacher = teacher
        self.layers = {site: tuple(sorted(set(ls))) for site, ls in layers.items()}
        self.examples: dict[Any, dict[str, Any]] = {}

    @torch.no_grad()
    def fill(self, batches: Iterable[dict[str, Any]]) -> TeacherCache:
        """Run the teacher once over ``batches`` (the training set, in any order and batch size)."""
        was_training = self.teacher.training
        self.teacher.eval()
        try:
            for batch in batches:
                out = self.teacher(batch, sites=tuple(self.layers), layers=self.layers)
                self._keep(batch, out)
        finally:
            self.teacher.train(was_training)
        return self

    def _keep(self, batch: dict[str, Any], out: AdapterOutput) -> None:
        rows_t = out.target_mask.sum(1).tolist()
        rows = {site: out.query_masks[site].sum(1).tolist() for site in self.layers}
        for b, key in enumerate(batch["ids"]):
            maps = {
                site: {layer: out.attentions[site][layer][b, :, : rows[site][b]].clone() for layer in self.layers[site]}
                for site in self.layers
            }
            self.examples[_key(key)] = {"logits": out.logits[b, : rows_t[b]].clone(), "maps": maps}

    @property
    def nbytes(self) -> int:
        """Memory the cache holds."""
        total = 0
        for ex in self.examples.values():
            total += ex["logits"].numel() * ex["logits"].element_size()
            total += sum(m.numel() * m.element_size() for site in ex["maps"].values() for m in site.values())
        return total

    def serves(self, sites: Sequence[str], qkv_sites: Sequence[str], layers: Mapping[str, Sequence[int]]) -> bool:
        """Whether a run that captures ``sites`` (maps) and ``qkv_sites`` at ``layers`` can replay this cache."""
        if qkv_sites:
            return False
        return all(site in self.layers and set(layers.get(site, ())) <= set(self.layers[site]) for site in sites)

    def replay(self, batch: dict[str, Any]) -> ReplayedTeacher:
        """The teacher's outputs for ``batch`` (by ``batch["ids"]``); KeyError names a missing example."""
        try:
            return ReplayedTeacher([self.examples[_key(i)] for i in batch["ids"]])
        except KeyError as err:
            raise KeyError(f"example {err.args[0]!r} is not in the teacher cache (it holds the training set)") from None


def _key(i: Any) -> Any:
    return i.item() if isinstance(i, Tensor) else i


class ReplayedTeacher:
    """The cached teacher outputs of one batch, padded to the batch's shapes on demand."""

    def __init__(self, examples: list[dict[str, Any]]) -> None:
        self.examples = examples

    def for_student(self, student_out: AdapterOutput) -> AdapterOutput:
        """An :class:`AdapterOutput` shaped like ``student_out`` (same batch): logits (B, T, V) and, for
        every site the student captured, a tuple over teacher layers of (B, Ht, Q, K) maps (None at layers
        not cached)."""
        bsz, steps = student_out.logits.shape[:2]
        first = self.examples[0]
        logits = first["logits"].new_zeros((bsz, steps, first["logits"].shape[-1]))
        for b, ex in enumerate(self.examples):
            logits[b, : ex["logits"].shape[0]] = ex["logits"]
        attentions: dict[str, tuple[Tensor | None, ...]] = {}
        for site, s_maps in student_out.attentions.items():
            ref = next(m for m in s_maps if m is not None)
            q_len, k_len = ref.shape[-2:]
            cached = first["maps"][site]
            per_layer: list[Tensor | None] = [None] * (max(cached) + 1)
            for layer, m0 in cached.items():
                out = m0.new_zeros((bsz, m0.shape[0], q_len, k_len))
                for b, ex in enumerate(self.examples):
                    m = ex["maps"][site][layer]
                    k = min(k_len, m.shape[-1])  # columns past an example's keys are zero either way
                    out[b, :, : m.shape[1], :k] = m[..., :k]
                per_layer[layer] = out
            attentions[site] = tuple(per_layer)
        return AdapterOutput(
            loss=logits.new_zeros(()),
            logits=logits,
            target_mask=student_out.target_mask,
            attentions=attentions,
            query_masks=student_out.query_masks,
        )
