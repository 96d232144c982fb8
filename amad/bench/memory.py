"""Memory benchmark: peak memory of a distillation step against a student-only step.

Each measurement is a warm-up step (optimizer state allocated), then one step under the benchmarks' memory
probe :func:`amad.bench.common.step_memory` (CPU: the resident-set high-water mark, so each measurement
runs in a fresh process, ``python -m amad.bench.memory --child ...``; CUDA: ``max_memory_allocated``, in
this process).
Also reports the bytes of teacher attention maps a step keeps.
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from amad.bench.common import autocast, build_case, cases, device_under_test, print_table, step_memory, write_json


def child(family: str, preset: str, batch_size: int, mode: str) -> dict[str, float]:
    """One measurement, in its own process: resident set before and at the peak of one step (MB)."""
    import gc

    task, batch, opt = build_case(family, preset, batch_size)
    task.train()

    def step() -> None:
        loss = task.student(batch, sites=()).loss if mode == "student" else task(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)

    step()  # warm-up: optimizer state and gradient buffers exist before the measured step
    maps = 0
    if mode == "distill":
        with torch.no_grad():
            t = task.teacher_outputs(batch)
        maps = sum(m.numel() * m.element_size() for site in t.attentions.values() for m in site if m is not None)
        del t
    gc.collect()
    # base = the resident set just before the step (models, batch, optimizer state), peak = its mark
    return {**step_memory(step), "teacher_map_bytes": maps}


def _child_mem(family: str, preset: str, bs: int, mode: str) -> dict:
    cmd = [sys.executable, "-m", "amad.bench.memory", "--child", family, preset, str(bs), mode]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_memory(out: str | None = None, quick: bool = False, models: list[tuple[str, str]] | None = None) -> dict:
    bs = 4 if quick else 32
    records = []
    for family, preset in cases(quick, models):
        if torch.cuda.is_available():
            rec = _cuda_memory(family, preset, bs)
        else:
            s = _child_mem(family, preset, bs, "student")
            d = _child_mem(family, preset, bs, "distill")
            s_peak, d_peak = max(s["peak_mb"] - s["base_mb"], 0), max(d["peak_mb"] - d["base_mb"], 0)
            rec = {
                "model": f"{family}/{preset}",
                "batch_size": bs,
                "device": "cpu",
                "student_peak_mb": s["peak_mb"],
                "distill_peak_mb": d["peak_mb"],
                "student_step_extra_mb": s_peak,
                "distill_step_extra_mb": d_peak,
                "peak_ratio": d["peak_mb"] / s["peak_mb"],
                # the step's own allocations (activations, maps, grads) above the pre-step footprint
                "step_extra_ratio": d_peak / s_peak if s_peak else None,
                "teacher_maps_mb": d["teacher_map_bytes"] / 2**20,
            }
        records.append(rec)
    print_table(
        "memory",
        records,
        (
            "model",
            "batch_size",
            "student_peak_mb",
            "distill_peak_mb",
            "peak_ratio",
            "student_step_extra_mb",
            "distill_step_extra_mb",
            "step_extra_ratio",
            "teacher_maps_mb",
        ),
    )
    return write_json({"memory": records}, out)


def _cuda_memory(family: str, preset: str, bs: int) -> dict:
    """Peak allocated CUDA memory of a bf16-autocast step; "step extra" = peak minus the memory held
    just before the step (models, optimizer state, batch)."""
    peaks, extra, maps = {}, {}, 0
    device = device_under_test()
    task, batch, opt = build_case(family, preset, bs)  # one build serves both modes (same footprint)
    task.train()
    for mode in ("student", "distill"):

        def step(mode: str = mode, task=task, batch=batch, opt=opt) -> None:
            with autocast(device, "bf16"):
                loss = task.student(batch, sites=()).loss if mode == "student" else task(batch)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()  # warm-up: the measured step finds the optimizer state allocated
        mem = step_memory(step)
        peaks[mode] = mem["peak_mb"]
        extra[mode] = mem["peak_mb"] - mem["base_mb"]
        if mode == "distill":
            with torch.no_grad(), autocast(device, "bf16"):
                t = task.teacher_outputs(batch)
            maps = sum(m.numel() * m.element_size() for v in t.attentions.values() for m in v if m is not None)
            del t
    del task, batch, opt, step  # the step's defaults hold the models too
    torch.cuda.empty_cache()
    return {
        "model": f"{family}/{preset}",
        "batch_size": bs,
        "device": "cuda",
        "precision": "bf16",
        "student_peak_mb": peaks["student"],
        "distill_peak_mb": peaks["distill"],
        "peak_ratio": peaks["distill"] / peaks["student"],
        "student_step_extra_mb": extra["student"],
        "distill_step_extra_mb": extra["distill"],
        "step_extra_ratio": extra["distill"] / extra["student"],
        "teacher_maps_mb": maps / 2**20,
    }


if __name__ == "__main__":  # python -m amad.bench.memory --child FAMILY PRESET BATCH MODE
    if len(sys.argv) != 6 or sys.argv[1] != "--child":
        sys.exit("usage: python -m amad.bench.memory --child FAMILY PRESET BATCH student|distill")
    print(json.dumps(child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])))
