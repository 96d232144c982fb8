"""Replay benchmark: a comparison's own training step with the teacher's outputs replayed from its cache.

What ``amad compare`` runs for each method once the teacher's outputs are cached
(:class:`~amad.distill.cache.TeacherCache`): the comparison's data (its training loader), its student and
the method's :class:`~amad.distill.DistillationTask` with the cache as input. Ground truth, one-to-one and
AMAD are built side by side in one process (same seed: same student initialisation) and their steps are
interleaved (gt, one-to-one, AMAD, gt, ...), each step timed as (a) the wait for its next batch from its
own loader and (b) forward, backward and AdamW step. Reported per method: medians, steps/s, and the
ratio of its step (b) to ground truth's (medians of the per-round ratios, and their IQR: the machine's
noise), and the data wait's share of (a + b).

Times are the process's CPU time (``time.process_time``): on a machine whose cores are shared with other
jobs, wall-clock time also counts the slices the other jobs ran in (the ``*_wall`` fields keep it). The
steps run on one thread in a comparison (``OMP_NUM_THREADS=1``), where the two agree on an idle core.

The teacher is randomly initialised at the configured shape: replay costs the same whatever its weights.
Lightning's own per-step work (logging, callbacks) is not in the step: it is the same for every method.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import lightning as L
import torch

from amad.bench.common import print_table, write_json

CONFIGS = ("experiments/compare/easyvqa_blip.yaml", "experiments/compare/shapes-caption_blip.yaml")
METHODS = ("gt", "one_to_one", "amad")


def _build(cfg: dict[str, Any], dm: Any, teacher: Any, method: str) -> tuple[Any, torch.optim.Optimizer]:
    from amad.compare.config import method_kwargs
    from amad.lit import DistillationModule

    L.seed_everything(0, verbose=False)
    module = DistillationModule(
        teacher=teacher, student=dict(cfg["student"]), task=dm.task, **method_kwargs(cfg["methods"][method])
    )
    params = [*module.student.parameters(), *module.attn.parameters()]
    return module, torch.optim.AdamW(params, lr=float(cfg["train"]["lr"]))


def measure_replay(config: str, preset: str = "default", steps: int = 40, warmup: int = 3) -> dict:
    """One comparison's replayed-teacher steps (see the module doc); ``steps`` timed rounds per method."""
    from amad.compare.config import load_compare_config, make_datamodule
    from amad.distill.cache import TeacherCache
    from amad.models import build_model

    cfg = load_compare_config(config, preset)
    dm = make_datamodule(cfg["data"])
    dm.setup("fit")
    torch.manual_seed(0)
    teacher = build_model(**{**cfg["teacher"]["model"], "vocab_size": dm.vocab_size})
    teacher.tokenizer = dm.tokenizer
    built = {m: _build(cfg, dm, teacher, m) for m in METHODS}
    layers: dict[str, set[int]] = {}
    for module, _ in built.values():
        if module.distillation.uses_attention:
            for site, ls in module.attn.teacher_layers().items():
                layers.setdefault(site, set()).update(ls)
    start = time.perf_counter()
    loader = torch.utils.data.DataLoader(dm.datasets["train"], batch_size=dm.eval_batch_size, collate_fn=dm.collator())
    cache = TeacherCache(built["amad"][0].teacher, {s: sorted(ls) for s, ls in layers.items()}).fill(loader)
    fill_s = time.perf_counter() - start
    for module, _ in built.values():
        module.distillation.teacher_cache = cache if module.distillation.uses_teacher else None
        module.train()
    loaders = {m: iter(_cycle(dm)) for m in METHODS}

    def step(method: str) -> tuple[float, float, float, float]:
        module, opt = built[method]
        t0, w0 = time.process_time(), time.perf_counter()
        batch = next(loaders[method])
        t1, w1 = time.process_time(), time.perf_counter()
        loss = module.distillation(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return t1 - t0, time.process_time() - t1, w1 - w0, time.perf_counter() - w1

    for _ in range(warmup):
        for m in METHODS:
            step(m)
    times: dict[str, list[tuple[float, float, float, float]]] = {m: [] for m in METHODS}
    for _ in range(steps):  # interleaved: machine noise hits every method alike
        for m in METHODS:
            times[m].append(step(m))
    methods = {}
    for m in METHODS:
        wait, compute, wait_wall, compute_wall = (list(x) for x in zip(*times[m], strict=True))
        gt = [x[1] for x in times["gt"]]
        per_round = sorted(c / g for c, g in zip(compute, gt, strict=True))
        q = len(per_round) // 4
        med = statistics.median(compute)
        methods[m] = {
            "step_s": med,
            "wait_s": statistics.median(wait),
            "steps_per_s": 1.0 / (med + statistics.median(wait)),
            "ratio_to_gt": statistics.median(per_round),
            "ratio_iqr": [per_round[q], per_round[-1 - q]],
            "data_wait_fraction": sum(wait) / (sum(wait) + sum(compute)),
            "step_s_wall": statistics.median(compute_wall),
            "ratio_to_gt_wall": statistics.median(
                c / g for c, g in zip(compute_wall, [x[3] for x in times["gt"]], strict=True)
            ),
            "data_wait_fraction_wall": sum(wait_wall) / (sum(wait_wall) + sum(compute_wall)),
        }
    rec = {
        "config": config,
        "preset": preset,
        "batch_size": dm.batch_size,
        "train_examples": len(cache),
        "cache_mb": cache.nbytes / 2**20,
        "cache_memory_mapped": cache.memory_mapped,
        "cache_fill_s": fill_s,
        "rounds": steps,
        "methods": methods,
    }
    cache.close()
    return rec


def _cycle(dm: Any):
    while True:
        yield from dm.train_dataloader()


def run(out: str | None = None, quick: bool = False, configs: tuple[str, ...] = CONFIGS) -> dict:
    records = []
    for config in configs[:1] if quick else configs:
        records.append(measure_replay(config, "smoke" if quick else "default", steps=3 if quick else 40))
    rows = [
        {"config": r["config"].rsplit("/", 1)[-1], "method": m, **v} for r in records for m, v in r["methods"].items()
    ]
    print_table("replay", rows, ("config", "method", "step_s", "steps_per_s", "ratio_to_gt", "data_wait_fraction"))
    return write_json({"replay": records}, out)
