"""Before/after harness of docs/performance.md ("Replayed-teacher runs"): runs unchanged on 432f309 and on
later commits (it uses only what both have), in a worktree of each:

    cd <worktree> && PYTHONPATH=$PWD OMP_NUM_THREADS=1 taskset -c 0 python docs/perf_ab.py \\
        experiments/compare/easyvqa_blip.yaml 40 runs/ab.json

The demo's gt / one_to_one / amad students (the comparison's own ``build_module``), trained side by side
(interleaved step by step) with the teacher's outputs replayed from the comparison's cache; CPU time per
step and per data wait, and every step's loss (for the same-results check). A comparison without a
shipped teacher gets a random one of the configured shape (replay costs the same whatever its weights).
"""

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from amad.compare.config import load_compare_config, make_datamodule
from amad.compare.run import build_module, build_teacher_cache

METHODS = ("gt", "one_to_one", "amad")


def main(config: str, steps: int, out: str) -> None:
    cfg = load_compare_config(config, "default")
    dm = make_datamodule(cfg["data"])
    teacher_path = Path(cfg["teacher"]["path"]) if cfg["teacher"].get("path") else None
    if teacher_path is None or not teacher_path.exists():
        from amad.models import build_model
        from amad.models.io import save_pretrained

        torch.manual_seed(0)
        teacher = build_model(**{**cfg["teacher"]["model"], "vocab_size": dm.vocab_size})
        teacher.tokenizer = dm.tokenizer
        teacher_path = Path(f"runs/random_teacher_{cfg['name']}")
        if not teacher_path.exists():
            save_pretrained(teacher, teacher_path)
    cache = build_teacher_cache(cfg, teacher_path, dm, list(METHODS), print)
    new_api = hasattr(cache, "arrays")  # the cache as the task's input (after 432f309)
    runs = {}
    for m in METHODS:
        module = build_module(cfg, m, 0, teacher_path, dm.task)
        module.train()
        if new_api and module.distillation.uses_teacher:
            module.distillation.teacher_cache = cache
        params = [*module.student.parameters(), *module.attn.parameters()]
        opt = torch.optim.AdamW(params, lr=float(cfg["train"]["lr"]))
        os.environ["PL_GLOBAL_SEED"] = "0"
        runs[m] = (module, opt, iter(dm.train_dataloader()))
    rec = {m: {"wait": [], "step": [], "loss": []} for m in METHODS}
    for _ in range(steps):
        for m in METHODS:
            module, opt, it = runs[m]
            c0 = time.process_time()
            batch = next(it)
            c1 = time.process_time()
            if new_api or not module.distillation.uses_teacher:
                terms = module.distillation(batch)
            else:
                terms = module.distillation(batch, cache.replay(batch))
            terms["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            rec[m]["wait"].append(c1 - c0)
            rec[m]["step"].append(time.process_time() - c1)
            rec[m]["loss"].append(float(terms["loss"].detach()))
    res = {"code": "new" if new_api else "base", "cache_mb": cache.nbytes / 2**20}
    for m in METHODS:
        w, s, g = rec[m]["wait"][3:], rec[m]["step"][3:], rec["gt"]["step"][3:]  # 3 warm-up steps
        res[m] = {
            "step_ms": statistics.median(s) * 1e3,
            "wait_ms": statistics.median(w) * 1e3,
            "steps_per_s": len(s) / (sum(s) + sum(w)),
            "wait_share": sum(w) / (sum(w) + sum(s)),
            "ratio_to_gt": statistics.median(a / b for a, b in zip(s, g, strict=True)),
            "loss": rec[m]["loss"],
        }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(res))
    print(res["code"], {m: {k: round(v, 3) for k, v in res[m].items() if k != "loss"} for m in METHODS})


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
