"""The frozen teacher's outputs, computed once per training example and replayed for every run.

A comparison trains many students (methods × seeds) on the same training examples against the same
frozen teacher, and recomputes the teacher's forward for each of them: output KD alone doubled a run's
time. When the training inputs are deterministic — no augmentation, no dropout in the teacher (it is in
eval mode) — the teacher's logits and attention maps of an example never change, so they can be
computed once and replayed. :class:`TeacherCache` does that:

* :meth:`TeacherCache.fill` runs the teacher over the training set once and keeps, per example, its
  logits and the maps of the distilled (site, teacher layer) pairs, in the layout the losses read: one
  dense ``(examples, heads, Q, K)`` array per (site, layer), rows past an example's real query rows and
  keys past the width of the batch it was computed in left at zero;
* :meth:`TeacherCache.replay` gives a training batch its teacher outputs as an
  :class:`~amad.models.AdapterOutput` of the batch's shapes: one ``index_select`` per array (a batch's
  rows, cut to its widths) instead of a copy per example. Zero padding is what the live maps have
  where it matters: padded query rows are masked by every loss and padded keys carry zero probability.

The task takes the cache as an explicit input (``DistillationTask(..., teacher_cache=cache)`` or
``task.teacher_cache = cache``) and replays from it instead of running the teacher.

Memory: :attr:`TeacherCache.nbytes` is the cache's size. When the arrays would exceed ``memory_budget``
bytes (default a quarter of the machine's RAM) they live in memory-mapped files under ``folder``
(default ``<cache_root>/teacher_outputs``, removed with the cache) instead of RAM: same values, read
back by the page cache.

Only map-based methods and output KD are served; relation methods (MiniLMv2's q/k/v) and augmented or
otherwise non-deterministic inputs must use the live teacher (:meth:`TeacherCache.serves` says which).
The replayed values equal the live ones up to floating-point summation order (the teacher saw another
batch composition); ``tests/distill/test_teacher_cache.py`` holds losses and gradients to the live path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from amad.models.capture import AdapterOutput
from amad.paths import cache_root


def default_memory_budget() -> int:
    """A quarter of the machine's physical memory, in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


class TeacherCache:
    """Per-example teacher logits and attention maps, in dense arrays indexed by example.

    Args:
        teacher: the frozen teacher (:class:`~amad.distill.FrozenTeacher` or an adapter in eval mode).
        layers: site -> the teacher layers whose maps to keep (the union of what the runs' layer maps
            use); an empty dict keeps logits only (output KD).
        memory_budget: bytes the arrays may take in RAM; beyond it they are memory-mapped files under
            ``folder``. None: :func:`default_memory_budget` (a quarter of RAM).
        folder: where memory-mapped arrays go (a fresh sub-folder, removed by :meth:`close` or when the
            cache is garbage-collected); default ``<cache_root>/teacher_outputs``.
    """

    def __init__(
        self,
        teacher: Any,
        layers: Mapping[str, Sequence[int]],
        *,
        memory_budget: int | None = None,
        folder: str | Path | None = None,
    ) -> None:
        self.teacher = teacher
        self.layers = {site: tuple(sorted(set(ls))) for site, ls in layers.items()}
        self.memory_budget = default_memory_budget() if memory_budget is None else int(memory_budget)
        self.folder = Path(folder) if folder is not None else cache_root() / "teacher_outputs"
        #: example id -> its row in every array
        self.index: dict[Any, int] = {}
        #: "logits" and "<site>/<layer>" -> (capacity, ...) array; rows past ``len(index)`` unused
        self.arrays: dict[str, Tensor] = {}
        self._files: Path | None = None  # the memory-mapped arrays' folder, once there is one
        self._generation = 0

    # -- filling ----------------------------------------------------------------------------------
    @torch.no_grad()
    def fill(self, batches: Iterable[dict[str, Any]]) -> TeacherCache:
        """Run the teacher once over ``batches`` (the training set, in any order and batch size)."""
        was_training = self.teacher.training
        self.teacher.eval()
        try:  # a DataLoader over a map-style dataset says how many examples: the arrays' rows
            capacity = len(batches.dataset) or None  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            capacity = None  # rows grow by doubling
        try:
            for batch in batches:
                out = self.teacher(batch, sites=tuple(self.layers), layers=self.layers)
                self._keep(batch, out, capacity)
        finally:
            self.teacher.train(was_training)
        return self

    def _keep(self, batch: dict[str, Any], out: AdapterOutput, capacity: int | None) -> None:
        # padded target and query rows are kept at zero (whatever the teacher computed there)
        blocks = {"logits": out.logits.masked_fill(~out.target_mask[..., None].bool(), 0)}
        for site, layers in self.layers.items():
            padded = ~out.query_masks[site][:, None, :, None].bool()
            for layer in layers:
                blocks[f"{site}/{layer}"] = out.attentions[site][layer].masked_fill(padded, 0)
        first = len(self.index)
        for i, key in enumerate(batch["ids"]):
            self.index.setdefault(_key(key), first + i)
        if len(self.index) != first + len(batch["ids"]):
            raise ValueError(f"teacher cache: batch ids repeat or were cached already: {list(batch['ids'])[:8]}")
        self._reserve(first + len(batch["ids"]), capacity, blocks)
        rows = slice(first, first + len(batch["ids"]))
        for name, block in blocks.items():
            self.arrays[name][(rows, *(slice(0, w) for w in block.shape[1:]))] = block

    def _reserve(self, rows: int, capacity: int | None, blocks: dict[str, Tensor]) -> None:
        """Grow the arrays to hold ``rows`` rows and the blocks' widths (a few times at most: widths
        reach the data's longest rows within the first batches; rows double)."""
        shapes = {}
        for name, block in blocks.items():
            old = self.arrays.get(name)
            have = tuple(old.shape) if old is not None else (0,) * block.dim()
            cap = have[0] if have[0] >= rows else max(rows, capacity or 0, 2 * have[0])
            shapes[name] = (cap, *(max(a, b) for a, b in zip(have[1:], block.shape[1:], strict=True)))
        if all(name in self.arrays and tuple(self.arrays[name].shape) == s for name, s in shapes.items()):
            return
        itemsize = {name: b.element_size() for name, b in blocks.items()}
        total = sum(_numel(s) * itemsize[name] for name, s in shapes.items())
        mapped = self._files is not None or total > self.memory_budget
        self._generation += 1
        new = {}
        for name, shape in shapes.items():
            array = self._allocate(name, shape, blocks[name].dtype, mapped)
            old = self.arrays.get(name)
            if old is not None:
                array[tuple(slice(0, w) for w in old.shape)] = old
            new[name] = array
        self.arrays = new
        self._drop_files(keep=self._generation)

    def _allocate(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, mapped: bool) -> Tensor:
        if not mapped:
            return torch.zeros(shape, dtype=dtype)
        if self._files is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._files = Path(tempfile.mkdtemp(prefix="cache-", dir=self.folder))
        path = self._files / f"{self._generation}-{name.replace('/', '-')}.bin"
        # a fresh file reads as zeros; torch maps it shared, so writes go to the file (not to RAM)
        return torch.from_file(str(path), shared=True, size=_numel(shape), dtype=dtype).view(shape)

    def _drop_files(self, keep: int) -> None:
        if self._files is None:
            return
        for f in self._files.iterdir():
            if not f.name.startswith(f"{keep}-"):
                f.unlink(missing_ok=True)

    def close(self) -> None:
        """Release the arrays (and delete the memory-mapped files, if any)."""
        self.arrays, self.index = {}, {}
        if self._files is not None:
            shutil.rmtree(self._files, ignore_errors=True)
            self._files = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may be gone already
            pass

    # -- facts ------------------------------------------------------------------------------------
    @property
    def memory_mapped(self) -> bool:
        """Whether the arrays live in memory-mapped files (they exceeded ``memory_budget``)."""
        return self._files is not None

    @property
    def nbytes(self) -> int:
        """Size of the arrays (in RAM or in the memory-mapped files)."""
        return sum(a.numel() * a.element_size() for a in self.arrays.values())

    def __len__(self) -> int:
        return len(self.index)

    def serves(self, sites: Sequence[str], qkv_sites: Sequence[str], layers: Mapping[str, Sequence[int]]) -> bool:
        """Whether a run that captures ``sites`` (maps) and ``qkv_sites`` at ``layers`` can replay this cache."""
        if qkv_sites:
            return False
        return all(site in self.layers and set(layers.get(site, ())) <= set(self.layers[site]) for site in sites)

    # -- replay -----------------------------------------------------------------------------------
    def replay(
        self, batch: dict[str, Any], student_out: AdapterOutput, heads: Mapping[str, int] | None = None
    ) -> AdapterOutput:
        """The teacher's outputs for ``batch`` (by ``batch["ids"]``) shaped like ``student_out`` (same
        batch): logits (B, T, V) and, for every site the student captured, a tuple over teacher layers of
        (B, Ht, Q, K) maps (None at layers not cached). ``heads``: site -> how many leading heads to replay
        (the ones the losses read, :meth:`AttentionDistiller.teacher_heads`; default all): a one-to-one run
        gathers a quarter of an 8 → 2 heads cache. KeyError names a missing example."""
        try:
            rows = torch.tensor([self.index[_key(i)] for i in batch["ids"]], dtype=torch.long)
        except KeyError as err:
            raise KeyError(f"example {err.args[0]!r} is not in the teacher cache (it holds the training set)") from None
        device = student_out.logits.device
        logits = self._rows("logits", rows, (student_out.logits.shape[1],), device)
        attentions: dict[str, tuple[Tensor | None, ...]] = {}
        for site, s_maps in student_out.attentions.items():
            ref = next(m for m in s_maps if m is not None)
            cached = self.layers.get(site, ())
            per_layer: list[Tensor | None] = [None] * (max(cached, default=-1) + 1)
            h = (heads or {}).get(site)
            for layer in cached:
                per_layer[layer] = self._rows(f"{site}/{layer}", rows, (h, *ref.shape[-2:]), device)
            attentions[site] = tuple(per_layer)
        return AdapterOutput(
            loss=logits.new_zeros(()),
            logits=logits,
            target_mask=student_out.target_mask,
            attentions=attentions,
            query_masks=student_out.query_masks,
        )

    def _rows(self, name: str, rows: Tensor, widths: Sequence[int | None], device: torch.device) -> Tensor:
        """``rows`` of array ``name``, its next dims cut to ``widths`` (None: whole): one contiguous gather."""
        array = self.arrays[name]
        have = tuple(array.shape[1 : 1 + len(widths)])
        if any(w is not None and w > h for w, h in zip(widths, have, strict=True)):
            raise ValueError(
                f"teacher cache {name!r}: the batch needs widths {tuple(widths)} but the cache holds {have} "
                "(it was filled from other data or another tokenizer length)"
            )
        view = array[(slice(None), *(slice(0, w) for w in widths))]
        return torch.index_select(view, 0, rows).to(device, non_blocking=True)


def _key(i: Any) -> Any:
    return i.item() if isinstance(i, Tensor) else i


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
