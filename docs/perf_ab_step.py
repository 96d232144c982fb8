"""In-process before/after harness of docs/performance.md ("Second round"): a comparison's replayed-teacher
step with the loss code of a base commit against this tree's, side by side in one process.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 taskset -c 0 python docs/perf_ab_step.py \\
        experiments/compare/easyvqa_blip.yaml 30 6e1ed39 > runs/ab_step.json

Builds the comparison's gt student and two each of its one_to_one and amad students (same seed: same
initialisation) on a random teacher of the configured shape, fills the teacher cache once, and trains all
five interleaved step by step on the same batches. The "old" students run the base commit's
``amad/losses/_fused.py`` and ``amad/losses/_common.py`` (loaded from ``git show``) and replay and stack
every teacher head; the "new" ones run this tree. Reports per student the median CPU time of a step
(forward, backward, AdamW), its ratio to gt (median of per-step ratios), new / old per method, and the
largest difference of the per-step losses (the same-results check).
"""

import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import amad.losses._common as common_new
import amad.losses._fused as fused_new
import amad.losses.attention as attention
from amad.bench import replay as R
from amad.compare.config import load_compare_config, make_datamodule
from amad.distill.cache import TeacherCache
from amad.models import build_model


def _module_at(commit: str, path: str, folder: Path):
    file = folder / path.replace("/", "_")
    file.write_text(
        subprocess.run(["git", "show", f"{commit}:{path}"], check=True, capture_output=True, text=True).stdout
    )
    spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(config: str, steps: int, base: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        fused_old = _module_at(base, "amad/losses/_fused.py", Path(tmp))
        common_old = _module_at(base, "amad/losses/_common.py", Path(tmp))
    code = {"old": (fused_old.AMADKLFunction, common_old.row_kl), "new": (fused_new.AMADKLFunction, common_new.row_kl)}
    cfg = load_compare_config(config, "default")
    dm = make_datamodule(cfg["data"])
    dm.setup("fit")
    torch.manual_seed(0)
    teacher = build_model(**{**cfg["teacher"]["model"], "vocab_size": dm.vocab_size})
    teacher.tokenizer = dm.tokenizer
    runs = {"gt": R._build(cfg, dm, teacher, "gt")}
    for m in ("one_to_one", "amad"):
        for c in ("old", "new"):
            runs[f"{m}/{c}"] = R._build(cfg, dm, teacher, m)
    layers: dict[str, set[int]] = {}
    for module, _ in runs.values():
        if module.distillation.uses_attention:
            for site, ls in module.attn.teacher_layers().items():
                layers.setdefault(site, set()).update(ls)
    fill = torch.utils.data.DataLoader(dm.datasets["train"], batch_size=dm.eval_batch_size, collate_fn=dm.collator())
    cache = TeacherCache(runs["amad/new"][0].teacher, {s: sorted(ls) for s, ls in layers.items()}).fill(fill)
    for name, (module, _) in runs.items():
        module.distillation.teacher_cache = cache if module.distillation.uses_teacher else None
        module.train()
        if name.endswith("/old"):  # every teacher head replayed and stacked, as before
            attn = module.distillation.attn
            attn.teacher_heads = dict
            attn._heads_read = {site: teacher.num_heads(site) for site in attn.layer_maps}
    batches = R._cycle(dm)
    rec: dict[str, dict[str, list[float]]] = {k: {"step": [], "loss": []} for k in runs}
    for _ in range(steps + 3):  # 3 warm-up steps
        batch = next(batches)
        for name, (module, opt) in runs.items():
            attention.AMADKLFunction, attention.row_kl = code["old" if name.endswith("/old") else "new"]
            start = time.process_time()
            loss = module.distillation(batch)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            rec[name]["step"].append(time.process_time() - start)
            rec[name]["loss"].append(float(loss.detach()))
    cache.close()
    gt = rec["gt"]["step"][3:]
    out: dict = {"config": config, "steps": steps, "base": base}
    for name, r in rec.items():
        s = r["step"][3:]
        out[name] = {
            "step_ms": 1e3 * statistics.median(s),
            "ratio_to_gt": statistics.median(a / b for a, b in zip(s, gt, strict=True)),
        }
    for m in ("one_to_one", "amad"):
        old, new = rec[f"{m}/old"], rec[f"{m}/new"]
        out[m] = {
            "new_over_old": statistics.median(a / b for a, b in zip(new["step"][3:], old["step"][3:], strict=True)),
            "max_loss_diff": max(abs(a - b) for a, b in zip(old["loss"], new["loss"], strict=True)),
        }
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]), indent=1))
