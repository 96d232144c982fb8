"""``amad bench losses``: the vectorised attention losses against explicit-loop references.

For each shape (B, Ht, Hs, Q, K) and method/variant (AMAD kl/l2/token, AMAD proj at small n,
head-mean, SHD, A2D, AttnDistill), forward + backward (gradient w.r.t. the student maps) is timed for

* the vectorised loss (``vectorised_s``),
* an explicit-loop reference of the same equation (``loop_s``, :mod:`amad.bench.loop_reference`:
  Python loops over batch, heads and query rows, vectorised only over the keys of one row -- or over
  a whole flattened map where the equation is over flattened maps; the value is checked against the
  vectorised one, ``max_abs_diff``),
* ``one_to_one_loss`` at the same shape (``one_to_one_s``),

interleaved in one run ((vectorised, one-to-one) x 3, then the loop; repeated) with the garbage
collector paused inside timings, and summarised by medians, so that the ratios ``speedup_vs_loop``
(target >= 50) and ``over_one_to_one`` (``amad_over_one_to_one`` for AMAD records; target <= 3) compare
numbers taken side by side on a noisy machine. A loop reference slower than 5 s is timed once.

Memory: peak bytes of the tensors the loss allocates during forward + backward, relative to the
bytes of its two inputs (``peak_over_inputs``). There is no CUDA allocator to ask on CPU, so a
``TorchDispatchMode`` sees every tensor an operator returns, counts its storage once (by data
pointer) and un-counts it when that storage is freed (a ``weakref.finalize`` on the storage object,
which PyTorch keeps alive as long as the storage lives). Inputs and their gradients' storages are not
counted as input; the gradient of the student is counted (it is allocated by the backward pass).
"""

from __future__ import annotations

import gc
import json
import statistics
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from amad.bench.loop_reference import loop_a2d, loop_amad, loop_attn_distill, loop_head_mean, loop_shd
from amad.losses import (
    A2DLoss,
    AMADProjectionLoss,
    amad_loss,
    attn_distill_loss,
    head_mean_loss,
    method_class,
    one_to_one_loss,
    shd_loss,
)

FULL_SHAPES = [(8, 12, 8, 197, 197), (8, 12, 6, 50, 50), (8, 8, 4, 32, 32)]
QUICK_SHAPES = [(2, 4, 2, 12, 12), (2, 6, 3, 8, 8)]
PROJ_MAX_N = 32 * 32
TARGETS = {"speedup_vs_loop": 50.0, "amad_over_one_to_one": 3.0}
LOOP_REPEAT_MAX_S = 5.0  # a loop reference slower than this is timed once
INNER = 3  # (vectorised, one-to-one) pairs timed per loop-reference run


class PeakMemory(TorchDispatchMode):
    """Track live and peak bytes of the storages created by operators while active.

    Attributes:
        peak: peak bytes; current: bytes still alive; max_numel: largest tensor an op returned.
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, int] = {}
        self.current = self.peak = self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in tree_flatten(out)[0]:
            if isinstance(x, torch.Tensor) and x.layout == torch.strided:
                self.max_numel = max(self.max_numel, x.numel())
                storage = x.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self._live:
                    self._live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)


# -- timing --------------------------------------------------------------------------------------------


def _maps(B, H, Q, K, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(B, H, Q, K, generator=g) * 2, dim=-1)


def _fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor], student: torch.Tensor) -> tuple[float, float]:
    s = student.detach().requires_grad_(True)
    start = time.perf_counter()
    loss = fn(s)
    loss.backward()
    return time.perf_counter() - start, float(loss.detach())


def _peak(fn, student, input_bytes) -> tuple[int, float]:
    s = student.detach().requires_grad_(True)
    with PeakMemory() as mem:
        fn(s).backward()
    return mem.peak, mem.peak / input_bytes


def _cases(teacher, mask, Ht, Hs, n):
    """(method, variant, vectorised fn, loop fn) for one shape; each fn maps the student to a loss."""
    cases = []
    for variant in ("kl", "l2", "token"):
        cases.append(
            (
                "amad",
                variant,
                lambda s, v=variant: amad_loss(teacher, s, query_mask=mask, variant=v),
                lambda s, v=variant: loop_amad(teacher, s, mask, v),
            )
        )
    if n <= PROJ_MAX_N:
        proj = AMADProjectionLoss(n)
        cases.append(
            (
                "amad_proj",
                "proj",
                lambda s: proj(teacher, s, mask)[0],
                lambda s: loop_amad(teacher, s, mask, "proj", projection=proj),
            )
        )
    cases.append(
        (
            "head_mean",
            "kl",
            lambda s: head_mean_loss(teacher, s, query_mask=mask),
            lambda s: loop_head_mean(teacher, s, mask),
        )
    )
    cases.append(("shd", "map", lambda s: shd_loss(teacher, s, query_mask=mask), lambda s: loop_shd(teacher, s, mask)))
    torch.manual_seed(0)
    a2d = A2DLoss(Ht, Hs)
    cases.append(("a2d", "conv1x1", lambda s: a2d(teacher, s, mask)[0], lambda s: loop_a2d(teacher, s, a2d, mask)))
    cases.append(
        (
            "attn_distill",
            "all_rows",
            lambda s: attn_distill_loss(teacher, s, query_mask=mask),
            lambda s: loop_attn_distill(teacher, s, mask),
        )
    )
    return cases


def _bench_case(teacher, student, mask, case, repeats, loop_repeats) -> dict:
    method, variant, vec, loop = case
    o2o = lambda s: one_to_one_loss(teacher, s, query_mask=mask)  # noqa: E731
    _fwd_bwd(vec, student), _fwd_bwd(o2o, student)  # warm-up
    times: dict[str, list[float]] = {"vec": [], "loop": [], "o2o": []}
    values = {}
    gc.collect()
    gc.disable()  # no collector pauses inside a timing (the loop references make much garbage)
    try:
        for r in range(repeats):  # interleaved: (vectorised, one-to-one) x INNER, then the loop once
            for _ in range(INNER):
                times["vec"].append(_fwd_bwd(vec, student)[0])
                times["o2o"].append(_fwd_bwd(o2o, student)[0])
            if r < loop_repeats and (r == 0 or times["loop"][0] < LOOP_REPEAT_MAX_S):
                dt, values["loop"] = _fwd_bwd(loop, student)
                times["loop"].append(dt)
                gc.collect()
    finally:
        gc.enable()
    values["vec"] = _fwd_bwd(vec, student)[1]
    med = {k: statistics.median(v) for k, v in times.items()}
    input_bytes = teacher.nbytes + student.nbytes
    peak, ratio = _peak(vec, student, input_bytes)
    _, o2o_ratio = _peak(o2o, student, input_bytes)
    B, Ht, Q, K = teacher.shape
    record = {
        "shape": {"B": B, "Ht": Ht, "Hs": student.shape[1], "Q": Q, "K": K},
        "method": method,
        "variant": variant,
        "masked_rows": mask is not None,
        "vectorised_s": med["vec"],
        "loop_s": med["loop"],
        "one_to_one_s": med["o2o"],
        "speedup_vs_loop": med["loop"] / med["vec"],
        "over_one_to_one": med["vec"] / med["o2o"],
        "max_abs_diff": abs(values["vec"] - values["loop"]),
        "input_bytes": input_bytes,
        "peak_bytes": peak,
        "peak_over_inputs": ratio,
        "one_to_one_peak_over_inputs": o2o_ratio,
        "repeats": {"vectorised": len(times["vec"]), "one_to_one": len(times["o2o"]), "loop": len(times["loop"])},
    }
    if method_class(method).is_amad:
        record["amad_over_one_to_one"] = record["over_one_to_one"]
    return record


def _print_table(records: list[dict]) -> None:
    cols = [
        "shape",
        "method",
        "variant",
        "vectorised_s",
        "loop_s",
        "speedup_vs_loop",
        "over_one_to_one",
        "peak_over_inputs",
    ]

    def fmt(r, c):
        v = r.get(c)
        if c == "shape":
            return "{B}x{Ht}/{Hs}x{Q}x{K}".format(**v)
        if isinstance(v, float):
            return f"{v:.2f}" if c not in ("vectorised_s", "loop_s") else f"{v * 1e3:.1f} ms"
        return "-" if v is None else str(v)

    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="amad bench losses (forward + backward, medians)")
        for c in cols:
            table.add_column(c)
        for r in records:
            table.add_row(*(fmt(r, c) for c in cols))
        Console(width=max(140, Console().width)).print(table)
    except ImportError:  # pragma: no cover - rich is a dependency, plain text is the fallback
        print(" | ".join(cols))
        for r in records:
            print(" | ".join(fmt(r, c) for c in cols))


def run(
    out: str | None = None, quick: bool = False, threads: int | None = 1, methods: tuple[str, ...] | None = None
) -> dict:
    """Run the loss benchmark; print a table; write ``{"losses": [records]}`` to ``out`` if given.

    Args:
        out: JSON path, or None.
        quick: small shapes only, a few repeats (a few seconds; used by the tests).
        threads: intra-op threads during the run (restored afterwards). 1 by default: on a shared
            CPU, OpenMP barriers of small ops stall for milliseconds when other processes hold the
            cores, which swamps the loss itself; None keeps the current setting.
        methods: restrict to these methods ("amad", "amad_proj", "head_mean", "shd", "a2d",
            "attn_distill").

    Returns:
        ``{"losses": [record, ...]}``, one record per (shape, method, variant); see the module doc.
    """
    shapes = QUICK_SHAPES if quick else FULL_SHAPES
    repeats, loop_repeats = (2, 1) if quick else (5, 3)
    records = []
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for B, Ht, Hs, Q, K in shapes:
            teacher, student = _maps(B, Ht, Q, K, 0), _maps(B, Hs, Q, K, 1)
            mask = None
            if Q != 197:  # text-like shapes: every other example has its last quarter of rows padded
                mask = torch.ones(B, Q, dtype=torch.bool)
                mask[1::2, Q - Q // 4 :] = False
            for case in _cases(teacher, mask, Ht, Hs, Q * K):
                if methods is not None and case[0] not in methods:
                    continue
                record = _bench_case(teacher, student, mask, case, repeats, loop_repeats)
                record["threads"] = torch.get_num_threads()
                records.append(record)
    finally:
        torch.set_num_threads(previous)
    _print_table(records)
    result = {"losses": records}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1))
    return result
