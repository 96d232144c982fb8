"""Step benchmark: a distillation step against its physical limit (issue: performance).

The physical limit of a distillation step is one teacher forward (no_grad) plus one student training
step. Measured interleaved in one process (a, b, c, a, b, c, ...; medians): (a) teacher forward alone,
(b) student training step alone (task loss only), (c) the full AMAD step of
:class:`~amad.distill.DistillationTask` (all sites, output KD) — the object ``amad fit`` and ``amad
compare`` train. ``overhead = c / (a + b)``. On CUDA every step runs under bf16 autocast and the cases
add the ``base`` presets (BLIP-VQA base, VL-T5 base shapes).
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from amad.bench.common import (
    autocast,
    build_case,
    cases,
    device_under_test,
    precision_under_test,
    print_table,
    timed,
    write_json,
)


def measure_step(
    family: str,
    preset: str,
    batch_size: int = 32,
    reps: int = 15,
    precision: str = "32",
    breakdown: bool = False,
    **overrides: Any,
) -> dict:
    """One step case: medians of ``reps`` interleaved rounds (see the module doc).

    ``breakdown`` also times the step with output KD only (γ = 0) and with attention only (β = 0),
    reported as ``kd_only_overhead`` and ``attn_only_overhead`` (each over teacher + student).
    """
    task, batch, opt = build_case(family, preset, batch_size, **overrides)
    device = device_under_test()
    amp = autocast(device, precision)
    task.train()

    def teacher_fwd():
        with amp:
            task.teacher(batch, sites=())

    def student_step():
        with amp:
            loss = task.student(batch, sites=()).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def distill_step(gamma: float | None = None, beta: float | None = None):
        keep = task.gamma, task.beta
        task.gamma = keep[0] if gamma is None else gamma
        task.beta = keep[1] if beta is None else beta
        try:
            with amp:
                loss = task(batch)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        finally:
            task.gamma, task.beta = keep

    fns = {"teacher_s": teacher_fwd, "student_s": student_step, "distill_s": distill_step}
    if breakdown:  # where the overhead goes: the step with only output KD, and with only attention
        fns["kd_only_s"] = lambda: distill_step(gamma=0.0)
        fns["attn_only_s"] = lambda: distill_step(beta=0.0)
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):  # interleaved: machine noise hits all of them alike
        for k, fn in fns.items():
            times[k] += timed(fn, 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    limit = med["teacher_s"] + med["student_s"]
    # per-rep ratios c_i / (a_i + b_i) of one interleaved round: their spread shows the machine's noise
    rounds = zip(times["teacher_s"], times["student_s"], times["distill_s"], strict=True)
    per_rep = sorted(c / (a + b) for a, b, c in rounds)
    q = len(per_rep) // 4
    extra = {f"{k[:-2]}_overhead": med[k] / limit for k in ("kd_only_s", "attn_only_s") if k in med}
    return {
        "model": f"{family}/{preset}",
        "batch_size": batch_size,
        "device": device.type,
        "precision": precision,
        **med,
        "overhead": med["distill_s"] / limit,
        "overhead_iqr": [per_rep[q], per_rep[-1 - q]],
        **extra,
        "reps": reps,
        **({"overrides": overrides} if overrides else {}),
    }


def run_step(out: str | None = None, quick: bool = False, models: list[tuple[str, str]] | None = None) -> dict:
    bs, reps = (4, 2) if quick else (32, 15)
    records = []
    for family, preset in cases(quick, models):
        records.append(measure_step(family, preset, bs, reps, precision_under_test(), breakdown=not quick))
        if torch.cuda.is_available():  # the case's models are gone: hand their cache back
            torch.cuda.empty_cache()
    print_table("step", records, ("model", "batch_size", "teacher_s", "student_s", "distill_s", "overhead"))
    return write_json({"step": records}, out)
