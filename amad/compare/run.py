"""``amad compare``: distil one student per method and seed on the same budget, evaluate, tabulate.

Every student has the same architecture, data, steps, optimizer and seeds; only the loss differs.
Each finished run is written to ``<out>/runs/<method>-seed<k>.json`` at once, so an interrupted
comparison resumes where it stopped (finished runs are not redone). The teacher is trained once and
cached (:mod:`amad.compare.teacher`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from amad.compare.config import (
    fingerprint,
    load_compare_config,
    make_datamodule,
    method_kwargs,
    optimization_kwargs,
    ordered_methods,
)
from amad.compare.report import summarise, write_report
from amad.compare.teacher import ensure_teacher
from amad.config import deep_merge


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def make_logger(kind: str, out: Path, group: str, name: str, cfg: dict[str, Any]):
    """One logger per run; all runs of a comparison share a W&B ``group``."""
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(
            project="amad-compare",
            group=group,
            name=name,
            save_dir=str(out),
            config=cfg,
            tags=[cfg["name"], cfg["preset"]],
        )
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(out / "logs"), name=name)
    return False


def run_one(
    cfg: dict[str, Any],
    method: str,
    seed: int,
    teacher_path: Path,
    dm: L.LightningDataModule,
    out: Path,
    logger_kind: str,
    split: str,
) -> dict[str, Any]:
    """Train and evaluate one student; returns its run record."""
    from amad.lit import DistillationModule

    train = cfg["train"]
    L.seed_everything(seed, workers=True, verbose=False)
    module = DistillationModule(
        teacher=str(teacher_path),
        student=dict(cfg["student"]),
        task=dm.task,
        **optimization_kwargs(train),
        **method_kwargs(cfg["methods"][method], f"methods.{method}"),
    )
    logger = make_logger(
        logger_kind, out, f"{cfg['name']}-{out.name}", f"{method}-seed{seed}", {**cfg, "method": method, "seed": seed}
    )
    trainer = L.Trainer(
        max_steps=int(train["max_steps"]),
        logger=logger,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        accelerator="auto",
        devices=1,
        precision=train.get("precision", "32-true"),
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    train_time = time.perf_counter() - start
    metrics = evaluate(module, dm, split)
    record = {
        "method": method,
        "seed": seed,
        "metrics": metrics,
        "params": count_params(module.student),
        "train_time_s": round(train_time, 2),
        "steps": int(train["max_steps"]),
        "config": cfg["methods"][method],
    }
    if method.startswith("amad") and seed == 0:
        record["head_alignment"] = save_heatmaps(module, dm, out / "heatmaps" / method)
    if logger:
        logger.finalize("success")
        if logger_kind == "wandb":
            logger.experiment.finish()
    return record


def save_heatmaps(module, dm: L.LightningDataModule, out: Path) -> str:
    """AMAD weights a_ij on a fixed test batch (the first), as PNG heatmaps + JSON."""
    from amad.callbacks.head_alignment import plot_head_alignment

    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    weights = module.head_alignment(batch)
    plot_head_alignment(weights, out, title=f"{module.attn.method}")
    (out / "weights.json").write_text(json.dumps({k: v.tolist() for k, v in weights.items()}))
    return str(out)


def run_comparison(
    cfg: dict[str, Any], out: str | Path, logger_kind: str = "wandb", split: str = "test", log=print
) -> dict[str, Any]:
    """Run (or resume) a comparison; writes results.json, results.md, the chart and heatmaps in ``out``."""
    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    teacher_path, teacher_record = ensure_teacher(cfg, log=log)
    data_cfg = cfg["data"]
    if cfg.get("eval_subset") is not None:
        data_cfg = deep_merge(data_cfg, {"init_args": {"eval_subset": cfg["eval_subset"]}})
    dm = make_datamodule(data_cfg)
    dm.prepare_data()
    from amad.models.io import load_model

    teacher = load_model(teacher_path)
    teacher_record = {
        **teacher_record,
        "params": count_params(teacher),
        "heads": {s: teacher.num_heads(s) for s in teacher.sites},
        "layers": {s: teacher.num_layers(s) for s in teacher.sites},
    }
    if split != "test" or "metrics" not in teacher_record:
        teacher_record["metrics"] = evaluate_teacher(teacher, dm, split)
    del teacher
    methods = ordered_methods(list(cfg["methods"]))
    runs = []
    for method in methods:
        for seed in range(int(cfg["seeds"])):
            path = out / "runs" / f"{method}-seed{seed}.json"
            run_fp = fingerprint(
                {k: cfg[k] for k in ("data", "teacher", "student", "train")}
                | {"method": cfg["methods"][method], "seed": seed, "split": split}
                | ({"eval_subset": cfg["eval_subset"]} if cfg.get("eval_subset") is not None else {})
            )
            if path.is_file():
                record = json.loads(path.read_text())
                if record.get("fingerprint") == run_fp:
                    log(f"{method} seed {seed}: done already ({path})")
                    runs.append(record)
                    continue
                log(f"{method} seed {seed}: {path} is from a different config; rerunning")
            log(f"{method} seed {seed}: training")
            record = run_one(cfg, method, seed, teacher_path, dm, out, logger_kind, split)
            record["fingerprint"] = run_fp
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=1))
            tmp.replace(path)
            log(f"{method} seed {seed}: {record['metrics']} ({record['train_time_s']:.0f}s)")
            runs.append(record)
    results = {
        "name": cfg["name"],
        "task": getattr(dm, "task", None),
        "task_description": cfg.get("description", ""),
        "model": cfg["teacher"]["model"].get("family"),
        "preset": cfg["preset"],
        "split": split,
        "seeds": int(cfg["seeds"]),
        "student": cfg["student"],
        "train": cfg["train"],
        "teacher": teacher_record,
        "runs": runs,
        "summary": summarise(runs, methods),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_report(results, out)
    return results


def evaluate(module: L.LightningModule, dm: L.LightningDataModule, split: str) -> dict[str, float]:
    """Generation metrics of ``module`` on the ``test`` or ``val`` split (a fresh, quiet Trainer)."""
    trainer = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="auto",
        devices=1,
    )
    run = trainer.test if split == "test" else trainer.validate
    res = run(module, datamodule=dm, verbose=False)[0]
    return {k.split("/", 1)[1]: float(v) for k, v in res.items() if k.startswith(f"{split}/") and "loss" not in k}


def evaluate_teacher(teacher, dm: L.LightningDataModule, split: str) -> dict[str, float]:
    from amad.lit import FineTuneModule

    return evaluate(FineTuneModule(model=teacher, task=dm.task), dm, split)


def quiet_libraries() -> None:
    """Dozens of runs: keep the console to our progress lines (warnings still show)."""
    import logging

    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="amad compare", description=__doc__)
    parser.add_argument("--config", default="experiments/compare/easyvqa_blip.yaml")
    parser.add_argument("--out", required=True, help="output folder (resumes if it holds a partial run)")
    parser.add_argument("--preset", default="default", help="smoke | default | full (as the YAML defines)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the YAML's)")
    parser.add_argument("--methods", default=None, help="comma-separated subset of the YAML's methods")
    parser.add_argument("--logger", default="wandb", choices=("wandb", "csv", "none"))
    parser.add_argument(
        "--teacher-only",
        action="store_true",
        help="only fine-tune (or find) the teacher, print its metrics and cache path",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=("test", "val"),
        help="evaluate on test (reporting) or val (tuning: never tune on test)",
    )
    parser.add_argument("--max-steps", type=int, default=None, help="quick check: cap every student's steps")
    parser.add_argument(
        "--eval-subset", type=int, default=None, help="quick check: evaluate students on this many examples"
    )
    ns = parser.parse_args(argv)
    quiet_libraries()
    torch.set_float32_matmul_precision("high")
    cfg = load_compare_config(ns.config, ns.preset, ns.seeds, ns.methods.split(",") if ns.methods else None)
    if ns.max_steps is not None:
        cfg["train"]["max_steps"] = ns.max_steps
    if ns.eval_subset is not None:  # the students' data only: the teacher's recipe (and fingerprint) stays
        cfg["eval_subset"] = ns.eval_subset
    start = time.perf_counter()
    if ns.teacher_only:
        path, record = ensure_teacher(cfg)
        print(json.dumps({"teacher": str(path), **{k: record.get(k) for k in ("metrics", "train_time_s")}}))
        return 0
    results = run_comparison(cfg, ns.out, ns.logger, ns.split)
    print((Path(ns.out) / "results.md").read_text())
    print(f"compare: {len(results['runs'])} runs, {time.perf_counter() - start:.0f}s wall -> {ns.out}")
    return 0
