"""``amad bench qk``: attention distillation from maps against distillation from queries and keys.

Two parts, one JSON (``{"qk": {...}}``):

**Models** (``steps``, ``memory``, ``batch_fit``): whole training steps of
:class:`~amad.distill.DistillationTask` with AMAD-KL on every site and output KD, at BLIP-VQA base (ViT-B/16
at 384 px, 577 image tokens) and VL-T5 base shapes, batch 8, the half-head student derived with
``init="teacher"`` (:func:`amad.bench.common.build_case`), fp32 on CPU, bf16 autocast on CUDA:

* ``steps``: interleaved rounds (medians) of the teacher forward and the student step (task loss only),
  each with eager attention and with SDPA (``attention_source="qk"``, nothing captured), and of the
  distillation step with ``attention_source="maps"`` (eager, maps captured) and ``"qk"`` (SDPA, queries and
  keys captured, :mod:`amad.losses.qk`). ``time_qk_over_maps`` (target <= 1); ``overhead_qk`` = qk step /
  (SDPA teacher + SDPA student step) beside ``overhead_maps`` = map step / (eager teacher + eager student).
* ``memory``: peak resident set of one step per mode, each in a fresh process (build, warm-up step, reset
  ``VmHWM``, one step; glibc's mmap threshold fixed at 64 KiB so that the resident set follows the live
  tensors), or ``torch.cuda.max_memory_allocated`` on CUDA. ``peak_ratio_qk`` = qk step / SDPA student
  step (target <= 1.15), beside the map path's ratios; "step extra" = peak minus the resident set just
  before the step.
* ``batch_fit`` (BLIP base): the largest batch whose step extra fits a budget (8 GiB), for each path, from
  the step extra measured at two batch sizes (it is linear in the batch: activations, maps and queries
  scale with it) -- ``max_batch_qk / max_batch_maps`` (target >= 2).

**Losses** (``records``, ``chunk_sweep``): one layer pair's AMAD-KL alone. For synthetic queries and
keys at BLIP-base vision shapes (B = 8, Ht = 12 -> Hs = 6 heads, Q = K = 577 tokens, d = 64) and T5-base
encoder shapes (B = 8, 12 -> 6 heads, Q = K = 256 with a T5 position bias per model and padded tokens), it
measures the forward + backward (gradient w.r.t. the student's q and k) of

* (a) the map path: both models' maps built eagerly from q/k (``AttentionInputs.maps()``, the teacher's
  without autograd), then :func:`amad.losses.amad_loss`;
* (b) the qk path: :func:`amad.losses.qk.qk_attention_loss` (``AMAD()``'s criterion), which never
  holds a whole map;

side by side in one process (interleaved repetitions, medians, one intra-op thread as ``amad bench
losses``), and reports ``time_ratio = qk / map``. Peak memory: each (case, path) runs in a fresh
subprocess (``python -m amad.bench.qk --child ...``) that builds its inputs, runs one warm-up step, resets
its resident-set high-water mark (``/proc/self/clear_refs``), runs one step and reads ``VmHWM``, with
glibc's mmap threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``) so that the resident set follows the
live tensors (on CUDA: ``torch.cuda.max_memory_allocated`` in process). ``step_extra_mb`` = peak minus
the resident set just before the step; ``mem_ratio = qk / map`` of it. The full run also sweeps the chunk
size at the BLIP shapes.

``amad bench qk --out runs/bench_qk.json [--quick] [--models blip-vqa/base,vlt5/base]`` (or ``python -m
amad.bench.qk``); from Python ``run(out=None, quick=False)``. ``--quick``: a tiny BLIP-VQA at batch 4 and a
small loss case (seconds, for tests). Not part of ``amad bench all`` (the full run takes about an hour on
the 2-core VM).
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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from amad.losses import amad_loss
from amad.losses.methods import AMAD
from amad.losses.qk import qk_attention_loss
from amad.models.attention_inputs import DEFAULT_CHUNK_ELEMENTS, AttentionInputs, default_chunk_size

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
        criterion = AMAD().build(teacher.num_heads, student.num_heads)
        loss, _ = qk_attention_loss(criterion, teacher, student, query_mask=qmask, chunk_size=chunk_size)
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


def _measure_memory(name: str, path: str, chunk_size: int | None) -> dict:
    """Build, one warm-up step, then one step under :func:`amad.bench.common.step_memory`: {base_mb, peak_mb}."""
    from amad.bench.common import step_memory

    torch.set_num_threads(1)
    teacher, student, qmask = build_case(name)
    _step(path, teacher, student, qmask, chunk_size)  # warm-up: gradient buffers exist, allocator warm
    _zero(student)
    gc.collect()
    return step_memory(lambda: _step(path, teacher, student, qmask, chunk_size))


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


def run_losses(quick: bool = False) -> dict:
    """The loss part: every case (and, in the full run, the chunk-size sweep)."""
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
    _print(records + sweep)
    return {"threads": 1, "default_chunk_elements": DEFAULT_CHUNK_ELEMENTS, "records": records, "chunk_sweep": sweep}


def run(
    out: str | None = None,
    quick: bool = False,
    models: list[tuple[str, str]] | None = None,
    parts: tuple[str, ...] = ("models", "losses"),
) -> dict:
    """Measure the model part (steps, memory, batch fit) and the loss part; return ``{"qk": {...}}``.

    Args:
        out: JSON file to write (None: none).
        quick: tiny shapes (seconds; for tests).
        models: ``(family, preset)`` cases of the model part (default: BLIP-VQA and VL-T5 base; quick:
            BLIP-VQA tiny).
        parts: ``"models"`` and/or ``"losses"``.
    """
    unknown = sorted(set(parts) - {"models", "losses"})
    if unknown:
        raise ValueError(f"unknown qk bench part(s) {unknown}; expected 'models' and/or 'losses'")
    result: dict = {}
    if "models" in parts:
        result.update(run_models(quick=quick, models=models))
    if "losses" in parts:
        result.update(run_losses(quick=quick))
    result = {"qk": result}
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
    return result


# ------------------------------------------------------------------------------------- model part

#: (family, preset) cases of the model part, their batch size, and the quick case
MODEL_CASES: tuple[tuple[str, str], ...] = (("blip-vqa", "base"), ("vlt5", "base"))
QUICK_MODEL_CASES: tuple[tuple[str, str], ...] = (("blip-vqa", "tiny"),)
MODEL_BATCH, QUICK_MODEL_BATCH = 8, 4
#: the budget of ``batch_fit``: step extra (activations, maps or queries and keys, gradients) in GiB
FIT_BUDGET_GIB = 8.0
#: the modes of a step: the two paths of the distillation step, and the student-only steps beside them
MODES = ("student_eager", "student_sdpa", "distill_maps", "distill_qk")


#: (family, preset) -> (map-path task, qk task, optimizer) of the quick run, built once
_BUILT: dict[tuple[str, str], tuple] = {}


def _model_case(family: str, preset: str, batch_size: int, reuse: bool = False):
    """(map-path task, qk task, batch, optimizer): one teacher, one half-head student, shared by both
    tasks. ``reuse``: the models of an earlier call for the same case (the quick run builds once)."""
    from amad.bench._batches import random_batch
    from amad.bench.common import build_case, device_under_test, to_device
    from amad.distill import DistillationTask

    if reuse and (family, preset) in _BUILT:
        task, qk_task, opt = _BUILT[family, preset]
        batch = to_device(random_batch(family, batch_size, seed=0, model=task.teacher.model), device_under_test())
        return task, qk_task, batch, opt
    task, batch, opt = build_case(family, preset, batch_size)
    qk_task = DistillationTask(task.teacher, task.student, AMAD(), attention_source="qk")
    task.train()
    qk_task.train()
    if reuse:
        _BUILT[family, preset] = task, qk_task, opt
    return task, qk_task, batch, opt


def _step_fns(task, qk_task, batch, opt, amp) -> dict:
    """name -> one call: teacher forwards (no grad), student steps, distillation steps."""

    def train(loss_fn):
        def step():
            with amp:
                loss = loss_fn()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    def teacher(source: str):
        def fwd():
            with amp:
                task.teacher(batch, sites=(), attention_source=source)

        return fwd

    return {
        "teacher_eager": teacher("maps"),
        "teacher_sdpa": teacher("qk"),
        "student_eager": train(lambda: task.student(batch, sites=()).loss),
        "student_sdpa": train(lambda: task.student(batch, sites=(), attention_source="qk").loss),
        "distill_maps": train(lambda: task(batch)["loss"]),
        "distill_qk": train(lambda: qk_task(batch)["loss"]),
    }


def measure_model_steps(family: str, preset: str, batch_size: int, reps: int, reuse: bool = False) -> dict:
    """Interleaved rounds of every step function (one warm-up each); medians and ratios."""
    from amad.bench.common import autocast, device_under_test, precision_under_test, timed

    device, precision = device_under_test(), precision_under_test()
    task, qk_task, batch, opt = _model_case(family, preset, batch_size, reuse)
    amp = autocast(device, precision)
    task.eval()  # the two paths' terms on the same weights, without dropout: equal up to rounding
    with torch.no_grad(), amp:
        t_maps = {k: float(v) for k, v in task(batch).items()}
        t_qk = {k: float(v) for k, v in qk_task(batch).items()}
    task.train()
    fns = _step_fns(task, qk_task, batch, opt, amp)
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            times[k] += timed(fn, 1)
    del task, qk_task, batch, opt, fns
    if device.type == "cuda":  # the case's models are gone: hand their cache back
        gc.collect()
        torch.cuda.empty_cache()
    med = {f"{k}_s": statistics.median(v) for k, v in times.items()}
    per_rep = [q / m for q, m in zip(times["distill_qk"], times["distill_maps"], strict=True)]
    return {
        "model": f"{family}/{preset}",
        "batch_size": batch_size,
        "device": device.type,
        "precision": precision,
        "threads": torch.get_num_threads(),
        **med,
        "time_qk_over_maps": med["distill_qk_s"] / med["distill_maps_s"],
        "time_qk_over_maps_iqr": _quartiles(per_rep),
        "overhead_qk": med["distill_qk_s"] / (med["teacher_sdpa_s"] + med["student_sdpa_s"]),
        "overhead_maps": med["distill_maps_s"] / (med["teacher_eager_s"] + med["student_eager_s"]),
        "overhead_maps_over_sdpa": med["distill_maps_s"] / (med["teacher_sdpa_s"] + med["student_sdpa_s"]),
        "terms_maps": t_maps,
        "terms_qk": t_qk,
        "loss_abs_diff": abs(t_maps["loss"] - t_qk["loss"]),
        "reps": reps,
    }


def _captured_mb(task, qk_task, batch, amp) -> dict[str, float]:
    """MB the teacher's capture holds per step: its maps (map path), its q/k/masks/biases (qk path)."""
    seen: set[int] = set()

    def size(x) -> int:
        if x is None or x.untyped_storage().data_ptr() in seen:
            return 0
        seen.add(x.untyped_storage().data_ptr())
        return x.untyped_storage().nbytes()

    with torch.no_grad(), amp:
        maps = task.teacher_outputs(batch)
        n_maps = sum(size(m) for v in maps.attentions.values() for m in v)
        del maps
        seen.clear()
        qk = qk_task.teacher_outputs(batch)
        n_qk = sum(
            size(t)
            for v in qk.attention_inputs.values()
            for x in v
            if x is not None
            for t in (x.q, x.k, x.mask, x.bias)
        )
    return {"teacher_maps_mb": n_maps / 2**20, "teacher_qk_inputs_mb": n_qk / 2**20}


def measure_model_memory(
    family: str, preset: str, batch_size: int, modes: Sequence[str], reuse: bool = False
) -> dict[str, dict]:
    """Per mode: a warm-up step, then one step between a reset of the high-water mark and its reading.

    The full CPU run calls it in a fresh process per mode (``--model-child``); ``--quick`` and CUDA runs
    measure every mode of a case on one build, in this process (``reuse``: the quick run's one build).
    """
    from amad.bench.common import autocast, device_under_test, precision_under_test, step_memory

    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"modes must be among {MODES}, got {bad}")
    device = device_under_test()
    amp = autocast(device, precision_under_test())
    task, qk_task, batch, opt = _model_case(family, preset, batch_size, reuse)
    fns = _step_fns(task, qk_task, batch, opt, amp)
    out = {}
    for mode in modes:
        step = fns[mode]
        step()  # warm-up: optimizer state and gradient buffers exist before the measured step
        extra = _captured_mb(task, qk_task, batch, amp) if mode.startswith("distill") else {}
        gc.collect()
        out[mode] = {**step_memory(step), **extra}
    del task, qk_task, batch, opt, fns
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
    return out


def _model_memory(jobs: list[tuple[str, str, int, str]], fresh: bool) -> list[dict]:
    """The measurement of each (family, preset, batch, mode): in a fresh process each (``fresh``, CPU; one
    at a time, a base-size case needs about 12 GB), else one build per case in this process."""
    if fresh and not torch.cuda.is_available():

        def child(job: tuple[str, str, int, str]) -> dict:
            family, preset, bs, mode = job
            cmd = [sys.executable, "-m", "amad.bench.qk", "--model-child", family, preset, str(bs), mode]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=_CHILD_ENV)
            return json.loads(res.stdout.strip().splitlines()[-1])[mode]

        return [child(job) for job in jobs]
    cases: dict[tuple[str, str, int], list[str]] = {}
    for family, preset, bs, mode in jobs:
        cases.setdefault((family, preset, bs), []).append(mode)
    got = {case: measure_model_memory(*case, modes, reuse=not fresh) for case, modes in cases.items()}
    return [got[job[:3]][job[3]] for job in jobs]


def _fit(batches: tuple[int, int], extra_mb: dict[str, list[float]], budget_gib: float) -> dict:
    """The largest batch whose step extra fits ``budget_gib``, per path, from a line through the two points."""
    b0, b1 = batches
    per_sample, intercept, max_batch = {}, {}, {}
    for path, (e0, e1) in extra_mb.items():
        slope = (e1 - e0) / (b1 - b0)
        per_sample[path], intercept[path] = slope, e1 - slope * b1
        max_batch[path] = int((budget_gib * 1024 - intercept[path]) // slope) if slope > 0 else None
    ok = max_batch.get("distill_maps") and max_batch.get("distill_qk") is not None
    return {
        "budget_gib": budget_gib,
        "batches": list(batches),
        "step_extra_mb": extra_mb,
        "per_sample_mb": per_sample,
        "intercept_mb": intercept,
        "max_batch": max_batch,
        "max_batch_qk_over_maps": max_batch["distill_qk"] / max_batch["distill_maps"] if ok else None,
    }


def run_models(quick: bool = False, models: list[tuple[str, str]] | None = None) -> dict:
    """The model part: ``{"steps": [...], "memory": [...], "batch_fit": [...]}`` (see the module doc)."""
    cases = tuple(models) if models else (QUICK_MODEL_CASES if quick else MODEL_CASES)
    bs = QUICK_MODEL_BATCH if quick else MODEL_BATCH
    reps = 1 if quick else 3
    fit_batches = (max(bs // 4, 1), bs)
    jobs = [(f, p, bs, m) for f, p in cases for m in MODES]
    jobs += [(f, p, fit_batches[0], m) for f, p in cases if f == "blip-vqa" for m in ("distill_maps", "distill_qk")]
    mem = {} if quick else dict(zip(jobs, _model_memory(jobs, fresh=True), strict=True))  # fresh: all threads
    threads = torch.get_num_threads()
    # timings on one intra-op thread, as the loss benches: with two, OpenMP barriers stall whenever the
    # other tenants of the shared VM hold a core, which swamped a trial run (a 0.5 s step measured 8.7 s)
    torch.set_num_threads(1)
    try:
        if quick:
            mem = dict(zip(jobs, _model_memory(jobs, fresh=False), strict=True))
        steps = [measure_model_steps(f, p, bs, reps, reuse=quick) for f, p in cases]
    finally:
        torch.set_num_threads(threads)
    memory, fits = [], []
    for family, preset in cases:
        m = {mode: mem[family, preset, bs, mode] for mode in MODES}
        ext = {mode: max(r["peak_mb"] - r["base_mb"], 0.0) for mode, r in m.items()}
        memory.append(
            {
                "model": f"{family}/{preset}",
                "batch_size": bs,
                "device": "cuda" if torch.cuda.is_available() else "cpu",
                **{f"{mode}_peak_mb": r["peak_mb"] for mode, r in m.items()},
                **{f"{mode}_step_extra_mb": e for mode, e in ext.items()},
                "peak_ratio_qk": m["distill_qk"]["peak_mb"] / m["student_sdpa"]["peak_mb"],
                "peak_ratio_maps": m["distill_maps"]["peak_mb"] / m["student_sdpa"]["peak_mb"],
                "peak_ratio_maps_over_eager_student": m["distill_maps"]["peak_mb"] / m["student_eager"]["peak_mb"],
                "step_extra_ratio_qk": ext["distill_qk"] / ext["student_sdpa"] if ext["student_sdpa"] else None,
                "step_extra_ratio_maps": ext["distill_maps"] / ext["student_sdpa"] if ext["student_sdpa"] else None,
                "teacher_maps_mb": m["distill_maps"].get("teacher_maps_mb"),
                "teacher_qk_inputs_mb": m["distill_qk"].get("teacher_qk_inputs_mb"),
            }
        )
        if family == "blip-vqa":
            extra = {
                path: [
                    max(mem[family, preset, b, path]["peak_mb"] - mem[family, preset, b, path]["base_mb"], 0.0)
                    for b in fit_batches
                ]
                for path in ("distill_maps", "distill_qk")
            }
            fits.append({"model": f"{family}/{preset}", **_fit(fit_batches, extra, FIT_BUDGET_GIB)})
    _BUILT.clear()
    _print_models(steps, memory, fits)
    return {"steps": steps, "memory": memory, "batch_fit": fits}


def _print_models(steps: list[dict], memory: list[dict], fits: list[dict]) -> None:
    from amad.bench.common import print_table

    print_table(
        "qk steps",
        steps,
        (
            "model",
            "teacher_sdpa_s",
            "student_sdpa_s",
            "distill_maps_s",
            "distill_qk_s",
            "time_qk_over_maps",
            "overhead_qk",
            "overhead_maps",
        ),
    )
    print_table(
        "qk memory",
        memory,
        (
            "model",
            "student_sdpa_peak_mb",
            "distill_qk_peak_mb",
            "distill_maps_peak_mb",
            "peak_ratio_qk",
            "peak_ratio_maps",
            "teacher_maps_mb",
            "teacher_qk_inputs_mb",
        ),
    )
    for f in fits:
        print(f"[qk batch fit] {f['model']}: {f['budget_gib']} GiB -> {f['max_batch']} ({f['max_batch_qk_over_maps']})")


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
        "--models", default=None, help="model part: comma-separated family/preset cases (default: base)"
    )
    parser.add_argument("--parts", default="models,losses", help="comma-separated: models, losses")
    parser.add_argument(
        "--child", nargs=3, metavar=("CASE", "PATH", "CHUNK"), help="internal: measure one step's peak memory"
    )
    parser.add_argument(
        "--model-child",
        nargs=4,
        metavar=("FAMILY", "PRESET", "BATCH", "MODE"),
        help="internal: measure one model step's peak memory",
    )
    ns = parser.parse_args(argv)
    if ns.model_child:
        family, preset, bs, mode = ns.model_child
        print(json.dumps(measure_model_memory(family, preset, int(bs), [mode])))
        return 0
    if ns.child:
        name, path, chunk = ns.child
        if path not in PATHS:
            parser.error(f"PATH must be one of {PATHS}")
        print(json.dumps(_measure_memory(name, path, int(chunk) or None)))
        return 0
    models = None if ns.models is None else [tuple(m.split("/", 1)) for m in ns.models.split(",")]
    run(out=ns.out, quick=ns.quick, models=models, parts=tuple(ns.parts.split(",")))
    if ns.out:
        print(f"wrote {ns.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
