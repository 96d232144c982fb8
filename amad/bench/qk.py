"""``qk`` bench: AMAD-KL from maps against AMAD-KL rebuilt from queries and keys in chunks of rows.

For synthetic queries and keys at BLIP-base vision shapes (B = 8, Ht = 12 -> Hs = 6 heads, Q = K = 577
tokens, d = 64) and T5-base encoder shapes (B = 8, 12 -> 6 heads, Q = K = 256 with a T5 position bias
per model and padded tokens), it measures the forward + backward (gradient w.r.t. the student's q and k)
of

* (a) the map path: both models' maps built eagerly from q/k (``AttentionInputs.maps()``, the teacher's
  without autograd), then :func:`amad.losses.amad_loss`;
* (b) the qk path: :func:`amad.losses.qk.qk_attention_loss` (``"amad"``, default options), which never
  holds a whole map;

side by side in one process (interleaved repetitions, medians, one intra-op thread as ``amad bench
losses``), and reports ``time_ratio = qk / map``. Peak memory: each (case, path) runs in a fresh
subprocess (``python -m amad.bench.qk --child ...``) that builds its inputs, runs one warm-up step, resets
its resident-set high-water mark (``/proc/self/clear_refs``), runs one step and reads ``VmHWM``, with
glibc's mmap threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``) so that the resident set follows the
live tensors (on CUDA: ``torch.cuda.max_memory_allocated`` in process). ``step_extra_mb`` = peak minus the resident set
just before the step; ``mem_ratio = qk / map`` of it. The full run also sweeps the chunk size at the
BLIP shapes.

``python -m amad.bench.qk --out runs/qk.json [--quick]``; from Python ``run(out=None, quick=False)``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from amad.losses import amad_loss
from amad.losses.qk import DEFAULT_CHUNK_ELEMENTS, AttentionInputs, default_chunk_size, qk_attention_loss

#: name -> (B, Ht, Hs, Q, K, d, T5-like: position bias, no scale, padded tokens)
CASES: dict[str, tuple[int, int, int, int, int, int, bool]] = {
    "blip-base-vision": (8, 12, 6, 577, 577, 64, False),
    "t5-base-encoder": (8, 12, 6, 256, 256, 64, True),
}
#: ``--quick``: one small case (position bias and padding), two child processes: seconds
QUICK_CASES: dict[str, tuple[int, int, int, int, int, int, bool]] = {"t5-like-quick": (4, 4, 2, 96, 96, 16, True)}
PATHS = ("map", "qk")
SWEEP = (16, 32, 64, 128, 256, 577)  # chunk sizes tried at the BLIP shapes (full run)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _shape(name: str) -> tuple[int, int, int, int, int, int, bool]:
    table = {**CASES, **QUICK_CASES}
    if name not in table:
        raise ValueError(f"unknown qk bench case {name!r}; expected one of {list(table)}")
    return table[name]


def build_case(name: str, seed: int = 0):
    """Teacher and student :class:`AttentionInputs` (the student's q/k require grad) and the query mask.

    q and k are ``randn * d**-0.25`` so the scores have unit scale (BERT/ViT: ``scale = d**-0.5`` on top;
    T5: ``scale = 1``, a random (1, H, Q, K) position bias per model, the last quarter of the tokens of
    every other example padded through a (B, 1, 1, K) additive mask and the query mask).
    """
    B, Ht, Hs, Q, K, d, t5 = _shape(name)
    device = _device()
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, std: float = d**-0.25) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * std).to(device)

    qt, kt, qs, ks = rnd(B, Ht, Q, d), rnd(B, Ht, K, d), rnd(B, Hs, Q, d), rnd(B, Hs, K, d)
    qs.requires_grad_(True)
    ks.requires_grad_(True)
    if not t5:
        scale = d**-0.5
        return AttentionInputs(qt, kt, scale), AttentionInputs(qs, ks, scale), None
    qmask = torch.ones(B, Q, dtype=torch.bool, device=device)
    qmask[1::2, Q - Q // 4 :] = False
    mask = torch.zeros(B, 1, 1, K, device=device).masked_fill(~qmask[:, None, None, :], torch.finfo(torch.float32).min)
    bt, bs = rnd(1, Ht, Q, K, std=1.0), rnd(1, Hs, Q, K, std=1.0)
    return (
        AttentionInputs(qt, kt, 1.0, mask=mask, bias=bt),
        AttentionInputs(qs, ks, 1.0, mask=mask, bias=bs),
        qmask,
    )


def default_chunk(name: str) -> int:
    """The rows per chunk ``chunk_size=None`` picks for the case."""
    B, Ht, Hs, Q, K, _, _ = _shape(name)
    return default_chunk_size(B, Ht, Hs, Q, K)


def _step(path: str, teacher: AttentionInputs, student: AttentionInputs, qmask, chunk_size: int | None) -> float:
    """One forward + backward of AMAD-KL by ``path``; returns the loss."""
    if path == "map":
        with torch.no_grad():
            t = teacher.maps()
        loss = amad_loss(t, student.maps(), query_mask=qmask)
    else:
        loss, _ = qk_attention_loss("amad", teacher, student, query_mask=qmask, chunk_size=chunk_size)
    loss.backward()
    return float(loss.detach())


def _zero(student: AttentionInputs) -> None:
    for x in (student.q, student.k):
        x.grad = None


def _time(name: str, chunk_sizes: list[int | None], reps: int) -> dict:
    """Interleaved rounds (map, qk at each chunk size); medians and the per-round ratios."""
    teacher, student, qmask = build_case(name)
    keys = ["map", *(f"qk{c}" for c in chunk_sizes)]
    runs = {"map": lambda: _step("map", teacher, student, qmask, None)}
    for c in chunk_sizes:
        runs[f"qk{c}"] = lambda c=c: _step("qk", teacher, student, qmask, c)
    values = {}
    for k in keys:  # warm-up, and the values to compare
        values[k] = runs[k]()
        _zero(student)
    times: dict[str, list[float]] = {k: [] for k in keys}
    gc.disable()
    try:
        for _ in range(reps):
            for k in keys:
                _sync()
                t0 = time.perf_counter()
                runs[k]()
                _sync()
                times[k].append(time.perf_counter() - t0)
                _zero(student)
    finally:
        gc.enable()
    return {"times": times, "values": values}


#: A fixed glibc mmap threshold: every buffer >= 64 KiB is mapped on allocation and unmapped on free, so
#: the resident set follows the live tensors. (glibc's default threshold grows up to 32 MiB after the
#: first frees, and blocks below it stay resident: a chunk's buffers freed in the warm-up step would then
#: already count in the base and the step would seem to need nothing.)
_CHILD_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}


def _memory(jobs: list[tuple[str, str, int | None]]) -> list[dict]:
    """Peak memory of one step per (case, path, chunk size): each in a fresh process on CPU (two at a
    time: each reads its own high-water mark), in this process on CUDA."""
    if torch.cuda.is_available():
        return [_measure_memory(*job) for job in jobs]

    def child(job: tuple[str, str, int | None]) -> dict:
        name, path, chunk_size = job
        cmd = [sys.executable, "-m", "amad.bench.qk", "--child", name, path, str(chunk_size or 0)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=_CHILD_ENV)
        return json.loads(res.stdout.strip().splitlines()[-1])

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(child, jobs))


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        return int(fh.read().split(key + ":")[1].split()[0])


def _measure_memory(name: str, path: str, chunk_size: int | None) -> dict:
    """Build, one warm-up step, reset the high-water mark, one step: {base_mb, peak_mb}."""
    torch.set_num_threads(1)
    teacher, student, qmask = build_case(name)
    _step(path, teacher, student, qmask, chunk_size)  # warm-up: gradient buffers exist, allocator warm
    _zero(student)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        _step(path, teacher, student, qmask, chunk_size)
        torch.cuda.synchronize()
        return {"base_mb": base / 2**20, "peak_mb": torch.cuda.max_memory_allocated() / 2**20}
    # VmHWM, reset to the current resident set by writing 5 to clear_refs (ru_maxrss would carry the
    # parent's peak across fork + exec)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = _status_kb("VmRSS")
    _step(path, teacher, student, qmask, chunk_size)
    return {"base_mb": base / 1024, "peak_mb": _status_kb("VmHWM") / 1024}


def _quartiles(x: list[float]) -> list[float]:
    if len(x) < 2:
        return [x[0], x[0]]
    q = statistics.quantiles(x, n=4)
    return [q[0], q[2]]


def _record(name: str, chunk: int, timing: dict, mem: dict[str, dict]) -> dict:
    B, Ht, Hs, Q, K, d, t5 = _shape(name)
    tm, tq = timing["times"]["map"], timing["times"][f"qk{chunk}"]
    extra = {p: max(mem[p]["peak_mb"] - mem[p]["base_mb"], 0.0) for p in PATHS}
    return {
        "case": name,
        "shape": {"B": B, "Ht": Ht, "Hs": Hs, "Q": Q, "K": K, "d": d},
        "t5_bias_and_padding": t5,
        "device": _device().type,
        "chunk_size": chunk,
        "chunks": -(-Q // chunk),
        "map_ms": 1e3 * statistics.median(tm),
        "qk_ms": 1e3 * statistics.median(tq),
        "time_ratio": statistics.median(tq) / statistics.median(tm),
        "time_ratio_per_rep_iqr": _quartiles([b / a for a, b in zip(tm, tq, strict=True)]),
        "map_peak_mb": mem["map"]["peak_mb"],
        "qk_peak_mb": mem["qk"]["peak_mb"],
        "map_step_extra_mb": extra["map"],
        "qk_step_extra_mb": extra["qk"],
        "mem_ratio": extra["qk"] / extra["map"] if extra["map"] else None,
        "whole_maps_mb": B * (Ht + Hs) * Q * K * 4 / 2**20,
        "chunk_maps_mb": B * (Ht + Hs) * chunk * K * 4 / 2**20,
        "loss_abs_diff": abs(timing["values"]["map"] - timing["values"][f"qk{chunk}"]),
    }


def run(out: str | None = None, quick: bool = False) -> dict:
    """Measure every case (and, in the full run, the chunk-size sweep); return ``{"qk": {...}}``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cases = QUICK_CASES if quick else CASES
        reps = 3 if quick else 7
        jobs = [(name, p, default_chunk(name)) for name in cases for p in PATHS]
        if not quick:
            jobs += [("blip-base-vision", "qk", c) for c in SWEEP]
        mem = dict(zip(jobs, _memory(jobs), strict=True))
        records = []
        for name in cases:
            chunk = default_chunk(name)
            timing = _time(name, [chunk], reps)
            records.append(_record(name, chunk, timing, {p: mem[name, p, chunk] for p in PATHS}))
        sweep = []
        if not quick:
            name = "blip-base-vision"
            timing = _time(name, list(SWEEP), 3)
            mem_map = mem[name, "map", default_chunk(name)]
            for c in SWEEP:
                sweep.append(_record(name, c, timing, {"map": mem_map, "qk": mem[name, "qk", c]}))
    finally:
        torch.set_num_threads(threads)
    result = {
        "qk": {
            "threads": 1,
            "default_chunk_elements": DEFAULT_CHUNK_ELEMENTS,
            "records": records,
            "chunk_sweep": sweep,
        }
    }
    _print(records + sweep)
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
    return result


def _print(records: list[dict]) -> None:
    cols = ("case", "chunk_size", "map_ms", "qk_ms", "time_ratio", "map_step_extra_mb", "qk_step_extra_mb", "mem_ratio")
    print(" | ".join(cols))
    for r in records:
        print(" | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m amad.bench.qk", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="small shapes (seconds; for tests)")
    parser.add_argument(
        "--child", nargs=3, metavar=("CASE", "PATH", "CHUNK"), help="internal: measure one step's peak memory"
    )
    ns = parser.parse_args(argv)
    if ns.child:
        name, path, chunk = ns.child
        if path not in PATHS:
            parser.error(f"PATH must be one of {PATHS}")
        print(json.dumps(_measure_memory(name, path, int(chunk) or None)))
        return 0
    run(out=ns.out, quick=ns.quick)
    if ns.out:
        print(f"wrote {ns.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
