"""Step, memory and scaling benchmarks of a distillation step (issue: performance).

``step``: the physical limit of a distillation step is one teacher forward (no_grad) plus one
student training step. Measured interleaved in one process (a, b, c, a, b, c, ...; medians):
(a) teacher forward alone, (b) student training step alone (task loss only), (c) the full AMAD
step through :class:`~amad.lit.DistillationModule` (all sites, output KD).
``overhead = c / (a + b)``.

``memory``: peak memory of (c) against (b). On CPU each measurement runs in a fresh subprocess that
resets its resident-set high-water mark (``/proc/self/clear_refs``) after building everything, runs
one step (optimizer state already allocated) and reads ``VmHWM``;
on CUDA ``torch.cuda.max_memory_allocated``. Also reports the bytes of attention maps a step keeps.

``scaling``: AMAD loss forward+backward time against tokens (65, 197, 577 query/key tokens, the
ViT-B/16 patch counts at 128/224/384 px) and against student heads (Ht 12 → Hs 2, 4, 6, 8, 12); and
the step of ``step`` against tokens (a BLIP-VQA model with ViT-B/16 patches at 128/224/384 px).

On CUDA every step and memory measurement runs under bf16 autocast (``precision: bf16``) and the
step cases add the ``base`` presets (BLIP-VQA base, VL-T5 base shapes).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

STEP_CASES = (("blip-vqa", "tiny"), ("blip-vqa", "small"), ("vlt5", "tiny"), ("vlt5", "small"))
GPU_CASES = (("blip-vqa", "base"), ("vlt5", "base"))
#: image sizes whose ViT-B/16 token counts (with the CLS token) are 65, 197 and 577
TOKEN_IMAGE_SIZES = {65: 128, 197: 224, 577: 384}


def _cases(quick: bool, models: list[tuple[str, str]] | None = None) -> tuple[tuple[str, str], ...]:
    if models:
        bad = [m for m in models if len(m) != 2]
        if bad:
            raise ValueError(f"--models takes family/preset pairs such as blip-vqa/base, got {bad}")
        return tuple(models)
    if quick:
        return STEP_CASES[:1]
    return STEP_CASES + (GPU_CASES if torch.cuda.is_available() else ())


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def build_case(family: str, preset: str, batch_size: int, attn_method: str = "amad", seed: int = 0, **overrides: Any):
    """Teacher, the half-head student's DistillationModule, a batch and an optimizer (on the device).

    ``overrides`` are :func:`amad.models.build_model` overrides of the teacher (e.g. ``image_size``).
    """
    from amad.lit import DistillationModule
    from amad.models import build_model, random_batch

    torch.manual_seed(seed)
    teacher = build_model(family, preset=preset, **overrides)
    heads = teacher.num_heads(teacher.sites[0])
    module = DistillationModule(
        teacher=teacher,
        student={"num_heads": max(heads // 2, 1), "init": "teacher"},
        attn_method=attn_method,
        task="vqa" if family != "blip-caption" else "caption",
    )
    device = _device()
    module.to(device)
    batch = _to(random_batch(family, batch_size, seed=seed, model=teacher), device)
    opt = torch.optim.AdamW([p for p in module.student.parameters()] + list(module.attn.parameters()), lr=1e-4)
    return module, batch, opt


def _time(fn, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return times


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
    module, batch, opt = build_case(family, preset, batch_size, **overrides)
    device = _device()
    autocast = _autocast(device, precision)
    module.student.train()

    def teacher_fwd():
        with autocast:
            module.teacher(batch, sites=())

    def student_step():
        with autocast:
            loss = module.student(batch, sites=()).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def distill_step(gamma: float | None = None, beta: float | None = None):
        keep = module.gamma, module.beta
        module.gamma = keep[0] if gamma is None else gamma
        module.beta = keep[1] if beta is None else beta
        try:
            with autocast:
                loss = module.distillation_losses(batch)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        finally:
            module.gamma, module.beta = keep

    fns = {"teacher_s": teacher_fwd, "student_s": student_step, "distill_s": distill_step}
    if breakdown:  # where the overhead goes: the step with only output KD, and with only attention
        fns["kd_only_s"] = lambda: distill_step(gamma=0.0)
        fns["attn_only_s"] = lambda: distill_step(beta=0.0)
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):  # interleaved: machine noise hits all of them alike
        for k, fn in fns.items():
            times[k] += _time(fn, 1)
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


def _precision() -> str:
    return "bf16" if torch.cuda.is_available() else "32"


def run_step(out: str | None = None, quick: bool = False, models: list[tuple[str, str]] | None = None) -> dict:
    bs, reps = (4, 2) if quick else (32, 15)
    records = []
    for family, preset in _cases(quick, models):
        records.append(measure_step(family, preset, bs, reps, _precision(), breakdown=not quick))
        if torch.cuda.is_available():  # the case's models are gone: hand their cache back
            torch.cuda.empty_cache()
    _print("step", records, ("model", "batch_size", "teacher_s", "student_s", "distill_s", "overhead"))
    return _write({"step": records}, out)


# -- memory -------------------------------------------------------------------------------------
_MEM_CHILD = r"""
import json, resource, sys, torch
from amad.bench.step import build_case
family, preset, bs, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
module, batch, opt = build_case(family, preset, bs)
module.student.train()
def step():
    if mode == "student":
        loss = module.student(batch, sites=()).loss
    else:
        loss = module.distillation_losses(batch)["loss"]
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=False)
step()  # warm-up: optimizer state and gradient buffers exist before the measured step
maps = 0
if mode == "distill":
    sites, qkv = module.attn.capture_sites()
    with torch.no_grad():
        t = module.teacher(batch, sites=sites, layers=module.attn.teacher_layers())
    maps = sum(m.numel() * m.element_size() for site in t.attentions.values() for m in site if m is not None)
    del t
import gc; gc.collect()
def status(key):
    return int(open("/proc/self/status").read().split(key + ":")[1].split()[0])
# Linux keeps ru_maxrss across fork+exec (a child reports its parent's peak), so we read the
# process's own high-water mark VmHWM, reset to the current RSS by writing 5 to clear_refs: base =
# the resident set just before the step (models, batch, optimizer state), peak = the mark after it.
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
base = status("VmRSS")
step()
peak = status("VmHWM")
print(json.dumps({"base_kb": base, "peak_kb": peak, "teacher_map_bytes": maps}))
"""


def _child_mem(family: str, preset: str, bs: int, mode: str) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", _MEM_CHILD, family, preset, str(bs), mode], capture_output=True, text=True, check=True
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_memory(out: str | None = None, quick: bool = False, models: list[tuple[str, str]] | None = None) -> dict:
    bs = 4 if quick else 32
    records = []
    for family, preset in _cases(quick, models):
        if torch.cuda.is_available():
            rec = _cuda_memory(family, preset, bs)
        else:
            s = _child_mem(family, preset, bs, "student")
            d = _child_mem(family, preset, bs, "distill")
            s_peak, d_peak = max(s["peak_kb"] - s["base_kb"], 0), max(d["peak_kb"] - d["base_kb"], 0)
            rec = {
                "model": f"{family}/{preset}",
                "batch_size": bs,
                "device": "cpu",
                "student_peak_mb": s["peak_kb"] / 1024,
                "distill_peak_mb": d["peak_kb"] / 1024,
                "student_step_extra_mb": s_peak / 1024,
                "distill_step_extra_mb": d_peak / 1024,
                "peak_ratio": d["peak_kb"] / s["peak_kb"],
                # the step's own allocations (activations, maps, grads) above the pre-step footprint
                "step_extra_ratio": d_peak / s_peak if s_peak else None,
                "teacher_maps_mb": d["teacher_map_bytes"] / 2**20,
            }
        records.append(rec)
    _print(
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
    return _write({"memory": records}, out)


def _cuda_memory(family: str, preset: str, bs: int) -> dict:
    """Peak allocated CUDA memory of a bf16-autocast step; "step extra" = peak minus the memory held
    just before the step (models, optimizer state, batch)."""
    peaks, extra, maps = {}, {}, 0
    device = _device()
    module, batch, opt = build_case(family, preset, bs)  # one build serves both modes (same footprint)
    module.student.train()
    for mode in ("student", "distill"):
        for _ in range(2):  # the second step is measured: optimizer state exists
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            with _autocast(device, "bf16"):
                loss = (
                    module.student(batch, sites=()).loss
                    if mode == "student"
                    else module.distillation_losses(batch)["loss"]
                )
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
        peaks[mode] = torch.cuda.max_memory_allocated()
        extra[mode] = peaks[mode] - base
        if mode == "distill":
            with torch.no_grad(), _autocast(device, "bf16"):
                t = module.teacher(batch, sites=module.attn.capture_sites()[0], layers=module.attn.teacher_layers())
            maps = sum(m.numel() * m.element_size() for v in t.attentions.values() for m in v if m is not None)
            del t
    del module, batch, opt, loss
    torch.cuda.empty_cache()
    return {
        "model": f"{family}/{preset}",
        "batch_size": bs,
        "device": "cuda",
        "precision": "bf16",
        "student_peak_mb": peaks["student"] / 2**20,
        "distill_peak_mb": peaks["distill"] / 2**20,
        "peak_ratio": peaks["distill"] / peaks["student"],
        "student_step_extra_mb": extra["student"] / 2**20,
        "distill_step_extra_mb": extra["distill"] / 2**20,
        "step_extra_ratio": extra["distill"] / extra["student"],
        "teacher_maps_mb": maps / 2**20,
    }


# -- scaling ------------------------------------------------------------------------------------
def run_scaling(out: str | None = None, quick: bool = False) -> dict:
    from amad.losses import amad_loss

    device = _device()
    tokens = (65, 197) if quick else (65, 197, 577)
    heads = (2, 8) if quick else (2, 4, 6, 8, 12)
    bs, reps = (2, 2) if quick else (8, 5)
    records = []

    def timed(ht: int, hs: int, n: int) -> float:
        g = torch.Generator().manual_seed(0)
        t = torch.rand(bs, ht, n, n, generator=g).softmax(-1).to(device)
        s = torch.rand(bs, hs, n, n, generator=g).softmax(-1).to(device).requires_grad_()

        def fn():
            amad_loss(t, s).backward()

        fn()
        return statistics.median(_time(fn, reps))

    base = None
    for n in tokens:
        sec = timed(12, 6, n)
        base = base or sec / (n * n)
        records.append(
            {
                "axis": "tokens",
                "tokens": n,
                "teacher_heads": 12,
                "student_heads": 6,
                "seconds": sec,
                "seconds_per_qk_rel": sec / (n * n) / base,
            }
        )
    ref = None
    for hs in heads:
        sec = timed(12, hs, tokens[1])
        ref = ref or sec
        records.append(
            {
                "axis": "student_heads",
                "tokens": tokens[1],
                "teacher_heads": 12,
                "student_heads": hs,
                "seconds": sec,
                "relative": sec / ref,
            }
        )
    records += _step_vs_tokens(tokens, quick)
    _print("scaling", records, ("axis", "tokens", "student_heads", "seconds", "overhead"))
    return _write({"scaling": records}, out)


def _step_vs_tokens(tokens: tuple[int, ...], quick: bool) -> list[dict]:
    """The ``step`` measurement of a BLIP-VQA model at ViT-B/16 patches, 65 / 197 / 577 image tokens."""
    preset, bs, reps = ("tiny", 2, 2) if quick else (("base", 32, 7) if torch.cuda.is_available() else ("small", 8, 5))
    records = []
    for n in tokens:
        rec = measure_step("blip-vqa", preset, bs, reps, _precision(), image_size=TOKEN_IMAGE_SIZES[n], patch_size=16)
        records.append(
            {
                "axis": "step_tokens",
                "tokens": n,
                "student_heads": None,
                "seconds": rec["distill_s"],
                **{
                    k: rec[k]
                    for k in (
                        "model",
                        "batch_size",
                        "precision",
                        "teacher_s",
                        "student_s",
                        "distill_s",
                        "overhead",
                        "overhead_iqr",
                    )
                },
            }
        )
    return records


def _print(title: str, records: list[dict], cols: tuple[str, ...]) -> None:
    print(f"\n[{title}]")
    print(" | ".join(cols))
    for r in records:
        print(" | ".join(f"{r.get(c):.4g}" if isinstance(r.get(c), float) else str(r.get(c)) for c in cols))


def _write(result: dict, out: str | None) -> dict:
    if out:
        with open(out, "w") as fh:
            json.dump(result, fh, indent=1)
    return result
