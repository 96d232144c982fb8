"""What the benchmarks share: the cases, the device, timing, the memory probe and output."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import torch

from amad.distill import DistillationTask
from amad.losses.methods import AMAD, AttentionMethod

STEP_CASES = (("blip-vqa", "tiny"), ("blip-vqa", "small"), ("vlt5", "tiny"), ("vlt5", "small"))
GPU_CASES = (("blip-vqa", "base"), ("vlt5", "base"))


def cases(quick: bool, models: list[tuple[str, str]] | None = None) -> tuple[tuple[str, str], ...]:
    if models:
        bad = [m for m in models if len(m) != 2]
        if bad:
            raise ValueError(f"--models takes family/preset pairs such as blip-vqa/base, got {bad}")
        return tuple(models)
    if quick:
        return STEP_CASES[:1]
    return STEP_CASES + (GPU_CASES if torch.cuda.is_available() else ())


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def device_under_test() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        return int(fh.read().split(key + ":")[1].split()[0])


def step_memory(step: Callable[[], object]) -> dict[str, float]:
    """Run ``step`` once: ``{"base_mb": memory held just before it, "peak_mb": its high-water mark}``.

    The one memory probe of the benchmarks (memory, qk). Call it after a warm-up step, so that optimizer
    state and gradient buffers already count in the base.

    * CUDA: allocated memory, torch's peak counter reset just before the step (synchronised both sides).
    * CPU: the process's resident set. Its high-water mark ``VmHWM`` is reset to the current resident set
      by writing 5 to ``/proc/self/clear_refs`` (``ru_maxrss`` would carry a parent's peak across fork +
      exec), so a CPU measurement needs the process to itself: the benchmarks run each in a fresh one.
    """
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return {"base_mb": base / 2**20, "peak_mb": torch.cuda.max_memory_allocated() / 2**20}
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = _status_kb("VmRSS")
    step()
    return {"base_mb": base / 1024, "peak_mb": _status_kb("VmHWM") / 1024}


def build_case(
    family: str, preset: str, batch_size: int, attention: AttentionMethod | None = None, seed: int = 0, **overrides: Any
) -> tuple[DistillationTask, dict[str, Any], torch.optim.Optimizer]:
    """Teacher, the half-head student's :class:`~amad.distill.DistillationTask` (the object that trains),
    a batch and an optimizer, on the device.

    ``attention`` defaults to ``AMAD()``; ``overrides`` are :func:`amad.models.build_model` overrides of
    the teacher (e.g. ``image_size``).
    """
    from amad.bench._batches import random_batch
    from amad.models import build_model, derive_student

    torch.manual_seed(seed)
    teacher = build_model(family, preset=preset, **overrides)
    heads = teacher.num_heads(teacher.sites[0])
    student = derive_student(teacher, num_heads=max(heads // 2, 1), init="teacher")
    task = DistillationTask(teacher, student, AMAD() if attention is None else attention)
    device = device_under_test()
    task.to(device)
    batch = to_device(random_batch(family, batch_size, seed=seed, model=teacher), device)
    opt = torch.optim.AdamW([*task.student.parameters(), *task.attn.parameters()], lr=1e-4)
    return task, batch, opt


def clock() -> float:
    """Seconds for timing a step: wall clock with a device, the process's CPU time without one (on a
    machine whose cores are shared, wall time also counts the slices other jobs ran in; the steps of a
    CPU benchmark run on one thread under ``OMP_NUM_THREADS=1``, where the two agree on an idle core)."""
    return time.perf_counter() if torch.cuda.is_available() else time.process_time()


def timed(fn, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        sync()
        t0 = clock()
        fn()
        sync()
        times.append(clock() - t0)
    return times


def precision_under_test() -> str:
    return "bf16" if torch.cuda.is_available() else "32"


def print_table(title: str, records: list[dict], cols: tuple[str, ...]) -> None:
    print(f"\n[{title}]")
    print(" | ".join(cols))
    for r in records:
        print(" | ".join(f"{r.get(c):.4g}" if isinstance(r.get(c), float) else str(r.get(c)) for c in cols))


def write_json(result: dict, out: str | None) -> dict:
    if out:
        with open(out, "w") as fh:
            json.dump(result, fh, indent=1)
    return result
