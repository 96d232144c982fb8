"""``amad compare``: distil one student per method and seed on the same budget, evaluate, tabulate.

Every student has the same architecture, data, steps, optimizer and seeds; only the loss differs.
Each finished run is written to ``<out>/runs/<method>-seed<k>.json`` at once, so an interrupted
comparison resumes where it stopped (finished runs are not redone). The teacher is trained once and
cached (:mod:`amad.compare.teacher`); its outputs on the training examples are computed once per
comparison and replayed to every run that can use them (:class:`~amad.distill.cache.TeacherCache`: exact
for un-augmented inputs; MiniLMv2's relations and augmented data use the live teacher).

The console shows which run of how many is going, its step and the time left, then one result line per
run; each run's library output (W&B banners, Lightning and transformers messages) goes to
``<out>/logs/<method>-seed<k>.log``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from amad.artefacts import DamagedFile, FileLock, atomic_write_json, fault_point, read_json, set_aside
from amad.callbacks.progress import ProgressLine, format_seconds
from amad.callbacks.timing import StepTimer
from amad.compare.config import (
    comparison_settings,
    fingerprint,
    load_compare_config,
    make_datamodule,
    method_attention,
    method_kwargs,
    optimization_kwargs,
    ordered_methods,
    print_settings,
)
from amad.compare.console import Console
from amad.compare.report import TABLE_METRICS, summarise, write_report
from amad.compare.system import build_student_system, evaluate_system, system_path, teacher_facts, teacher_system
from amad.compare.teacher import ensure_teacher, evaluate_model, quiet_trainer, teacher_shortfalls
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


def build_module(cfg: dict[str, Any], method: str, seed: int, teacher_path: Path, task: str, dm: Any = None):
    """The run's :class:`~amad.lit.DistillationModule` (or the comparison's system,
    :mod:`amad.compare.system`), seeded: the student's initial weights depend on the seed only (never on
    whether the teacher was trained or its outputs cached)."""
    from amad.lit import DistillationModule

    system = system_path(cfg)
    if system:
        return build_student_system(
            cfg, method_kwargs(cfg["methods"][method], f"methods.{method}", system), seed, teacher_path, dm
        )
    L.seed_everything(seed, workers=True, verbose=False)
    return DistillationModule(
        teacher=str(teacher_path),
        student=dict(cfg["student"]),
        task=task,
        **optimization_kwargs(cfg["train"]),
        **method_kwargs(cfg["methods"][method], f"methods.{method}"),
    )


def run_one(
    cfg: dict[str, Any],
    method: str,
    seed: int,
    teacher_path: Path,
    dm: L.LightningDataModule,
    out: Path,
    logger_kind: str,
    split: str,
    progress: ProgressLine | None = None,
    cache: Any = None,
    also_test: bool = False,
    diagnostics_batch: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one student; returns its run record.

    Args:
        cache: a :class:`~amad.distill.cache.TeacherCache` of the training set, replayed when it serves
            this method's captures (else the live teacher runs).
        also_test: with ``split="val"``, evaluate on test too (``metrics_test``): a sweep chooses on val
            and reports test from the same students.
        diagnostics_batch: the comparison's fixed validation batch
            (:func:`~amad.callbacks.diagnostics.fixed_batch`): the record's ``diagnostics`` are measured on
            it at the first and last step (:class:`~amad.callbacks.diagnostics.DiagnosticsCallback`).
    """
    train = cfg["train"]
    module = build_module(cfg, method, seed, teacher_path, dm.task, dm)
    system = system_path(cfg)
    uses_teacher = module.distillation is not None and module.distillation.uses_teacher
    replay = cache is not None and uses_teacher and _serves(cache, module)
    if replay:
        module.distillation.teacher_cache = cache
    logger = make_logger(
        logger_kind, out, f"{cfg['name']}-{out.name}", f"{method}-seed{seed}", {**cfg, "method": method, "seed": seed}
    )
    timer = StepTimer(skip=1)
    callbacks = [timer] + ([progress] if progress else [])
    attention = method_attention(cfg["methods"][method], f"methods.{method}", system)
    snapshots = attention is not None and attention.has_head_weights and seed == 0 and hasattr(module, "head_alignment")
    if snapshots:
        from amad.callbacks.head_alignment import AlignmentSnapshots

        callbacks.append(AlignmentSnapshots(dm, out / "heatmaps" / method))
    diagnostics = None
    if diagnostics_batch is not None:
        from amad.callbacks.diagnostics import DiagnosticsCallback

        diagnostics = DiagnosticsCallback(diagnostics_batch)
        callbacks.append(diagnostics)
    trainer = quiet_trainer(int(train["max_steps"]), train.get("precision", "32-true"), callbacks, logger)
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=dm)
    finally:
        if module.distillation is not None:
            module.distillation.teacher_cache = None
    train_time = time.perf_counter() - start
    fault_point("student.trained")
    start = time.perf_counter()
    metrics = _evaluate(module, dm, split, system)
    record = {
        "method": method,
        "seed": seed,
        "metrics": metrics,
        "params": count_params(module.student),
        "weights_sha256": weights_digest(module.student),
        "train_time_s": round(train_time, 2),
        "eval_time_s": round(time.perf_counter() - start, 2),
        "data_wait_s": round(sum(timer.wait), 2),
        "teacher": "cached" if replay else ("live" if uses_teacher else "unused"),
        "steps": int(train["max_steps"]),
        "config": cfg["methods"][method],
    }
    if also_test and split != "test":
        record["metrics_test"] = _evaluate(module, dm, "test", system)
    if snapshots:
        record["head_alignment"] = str(out / "heatmaps" / method)
    if diagnostics is not None:
        record["diagnostics"] = diagnostics.result
    if logger:
        logger.finalize("success")
        if logger_kind == "wandb":
            logger.experiment.finish()
    return record


def _evaluate(module: Any, dm: Any, split: str, system: str | None) -> dict[str, float]:
    if system:  # the system's own test / validation steps (amad.compare.system's one way)
        return evaluate_system(module, dm, split)
    return evaluate_model(module.student, dm, split, module.max_new_tokens)


def _tensor_bytes(value: Any) -> bytes:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    return repr(value).encode()


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 (16 hex digits) of a module's state: a resumed comparison is checked against an
    uninterrupted one bit for bit, not only by its (coarse) metrics."""
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(_tensor_bytes(value))
    return h.hexdigest()[:16]


def read_run_record(path: Path) -> dict[str, Any] | None:
    """The run record at ``path``; None if there is none, or if it is damaged (set aside with one warning
    line: the run is trained again)."""
    try:
        record = read_json(path)
        if not isinstance(record.get("metrics"), dict):
            raise DamagedFile(path, "no metrics: not a finished run's record")
        return record
    except FileNotFoundError:
        return None
    except DamagedFile as err:
        set_aside(path, err.problem)
        return None


def _serves(cache: Any, module: Any) -> bool:
    task = module.distillation
    capture = task.capture()
    layers = task.attn.teacher_layers() if task.uses_attention else {}
    return capture.get("attention_source", "maps") == "maps" and cache.serves(
        capture["sites"], capture["qkv_sites"], layers
    )


def build_teacher_cache(cfg: dict[str, Any], teacher_path: Path, dm: Any, methods: list[str], log) -> Any:
    """One :class:`~amad.distill.cache.TeacherCache` for every method that can replay it (None when the
    comparison turns it off, its training data are augmented, no method uses the teacher, or the runs
    would read fewer training examples than filling the cache computes)."""
    from amad.distill.cache import TeacherCache

    if not cfg["train"].get("teacher_cache", True):
        return None
    system = system_path(cfg)
    if system and not hasattr(dm, "loader"):  # the cache keys rows by batch["ids"]: a DataModule must give them
        log("teacher outputs: live (this system's DataModule gives no example ids)")
        return None
    if getattr(dm, "augment", False):
        log("teacher outputs: live (augmented training data change every epoch)")
        return None
    layers: dict[str, set[int]] = {}
    users = 0
    for method in methods:
        module = build_module(cfg, method, 0, teacher_path, dm.task, dm)
        task = module.distillation
        if task is None or not task.uses_teacher:  # (a system without a teacher: its gt)
            continue
        teacher = task.teacher
        users += 1
        if task.uses_attention and task.capture()["sites"]:
            for site, ls in task.attn.teacher_layers().items():
                layers.setdefault(site, set()).update(ls)
    if not users:
        return None
    dm.setup("fit")
    examples = len(dm.datasets["train"])
    if int(cfg["train"]["max_steps"]) * dm.batch_size * users <= examples:
        log(f"teacher outputs: live (the runs read fewer examples than caching {examples} would compute)")
        return None
    start = time.perf_counter()
    if system:  # amad.data.generated.GeneratedSplitsDataModule: the training split in order, with ids
        loader = dm.loader("train", batch_size=dm.eval_batch_size)
    else:
        loader = torch.utils.data.DataLoader(
            dm.datasets["train"], batch_size=dm.eval_batch_size, collate_fn=dm.collator()
        )
    budget = cfg["train"].get("teacher_cache_memory_mb")  # beyond it: memory-mapped (default: RAM / 4)
    cache = TeacherCache(
        teacher,
        {s: sorted(ls) for s, ls in layers.items()},
        memory_budget=None if budget is None else int(float(budget) * 2**20),
    ).fill(loader)
    log(
        f"teacher outputs: {len(cache)} training examples cached once ({cache.nbytes / 2**20:.0f} MB"
        f"{' memory-mapped' if cache.memory_mapped else ''}, "
        f"{time.perf_counter() - start:.0f}s), replayed to every run that distils maps or logits"
    )
    return cache


def run_comparison(
    cfg: dict[str, Any],
    out: str | Path,
    logger_kind: str = "wandb",
    split: str = "test",
    log=print,
    console: Console | None = None,
    also_test: bool = False,
) -> dict[str, Any]:
    """Run (or resume) a comparison; writes results.json, results.md, the chart and heatmaps in ``out``.

    One process at a time writes to ``out`` (``out/.lock``: a second one is refused, naming the first).
    ``also_test``: see :func:`run_one`.
    """
    out = Path(out)
    with FileLock(out / ".lock", f"the comparison output {out}"):
        (out / "runs").mkdir(parents=True, exist_ok=True)
        return _run_comparison(cfg, out, logger_kind, split, log, console, also_test)


def _run_comparison(
    cfg: dict[str, Any], out: Path, logger_kind: str, split: str, log, console: Console | None, also_test: bool
) -> dict[str, Any]:
    console = console or Console(enabled=False)
    teacher_path, teacher_record = ensure_teacher(cfg, log=log)
    data_cfg = cfg["data"]
    if cfg.get("eval_subset") is not None:
        data_cfg = deep_merge(data_cfg, {"init_args": {"eval_subset": cfg["eval_subset"]}})
    dm = make_datamodule(data_cfg)
    dm.prepare_data()
    system = system_path(cfg)
    if system:  # scored by the system, as its students are
        teacher = teacher_system(cfg, teacher_path, dm)
        teacher_record = {**teacher_record, **teacher_facts(teacher)}
    else:
        from amad.models.io import load_model

        teacher = load_model(teacher_path)
        teacher_record = {
            **teacher_record,
            "params": count_params(teacher),
            "heads": {s: teacher.num_heads(s) for s in teacher.sites},
            "layers": {s: teacher.num_layers(s) for s in teacher.sites},
        }
    stale = missing_table_metrics(dm.task, teacher_record)
    if split != "test" or "metrics" not in teacher_record or cfg.get("eval_subset") is not None or stale:
        if system:
            teacher_record["metrics"] = evaluate_system(teacher, dm, split)
        else:
            teacher_record["metrics"] = evaluate_model(teacher, dm, split, cfg["teacher"]["max_new_tokens"])
    from amad.callbacks.diagnostics import fixed_batch

    diagnostics_batch = fixed_batch(dm)
    teacher_record["head_similarity"] = teacher_head_similarity_cached(
        teacher.student if system else teacher, teacher_record, diagnostics_batch, out
    )  # a system's teacher sits in its student's place (amad.compare.system.teacher_system)
    del teacher
    methods = ordered_methods(cfg["methods"], system)
    plan = [(m, s) for m in methods for s in range(int(cfg["seeds"]))]
    records: dict[tuple[str, int], dict[str, Any]] = {}
    todo = []
    for method, seed in plan:
        path = out / "runs" / f"{method}-seed{seed}.json"
        run_fp = _run_fingerprint(cfg, method, seed, split, also_test)
        record = read_run_record(path)  # damaged: set aside and rerun
        if record is not None and record.get("fingerprint") == run_fp:
            log(f"{method} seed {seed}: done already ({path})")
            records[(method, seed)] = record
        else:
            if record is not None:
                log(f"{method} seed {seed}: {path} is from a different config; rerunning")
            todo.append((method, seed, path, run_fp))
    if todo:
        log(f"{cfg['name']}: {len(todo)} of {len(plan)} runs to train; library output of each run in {out / 'logs'}")
    cache = build_teacher_cache(cfg, teacher_path, dm, sorted({m for m, *_ in todo}), log) if todo else None
    start = time.perf_counter()
    for k, (method, seed, path, run_fp) in enumerate(todo, 1):
        prefix = f"[{k}/{len(todo)}] {method} seed {seed}:"
        progress = ProgressLine(prefix, every_n_steps=max(int(cfg["train"]["max_steps"]) // 4, 1), write=console.say)
        with console.quiet(out / "logs" / f"{method}-seed{seed}.log"):
            record = run_one(
                cfg,
                method,
                seed,
                teacher_path,
                dm,
                out,
                logger_kind,
                split,
                progress,
                cache,
                also_test,
                diagnostics_batch,
            )
        record["fingerprint"] = run_fp
        atomic_write_json(path, record)
        records[(method, seed)] = record
        elapsed = time.perf_counter() - start
        left = elapsed / k * (len(todo) - k)
        scores = ", ".join(f"{n} {v:.4g}" for n, v in record["metrics"].items())
        log(
            f"{prefix} {scores} (train {record['train_time_s']:.0f}s, eval {record['eval_time_s']:.0f}s, "
            f"teacher {record['teacher']})" + (f"; ~{format_seconds(left)} left" if k < len(todo) else "")
        )
    if cache is not None:
        cache.close()  # frees it now (and deletes its memory-mapped files, if it has any)
    runs = [records[p] for p in plan]
    results = {
        "name": cfg["name"],
        "commit": source_commit(),
        "task": getattr(dm, "task", None),
        "task_description": cfg.get("description", ""),
        "model": system.rpartition(".")[2] if system else cfg["teacher"]["model"].get("family"),
        "headline": (cfg.get("system") or {}).get("metric"),
        "preset": cfg["preset"],
        "split": split,
        "seeds": int(cfg["seeds"]),
        "student": cfg["student"],
        "train": cfg["train"],
        "teacher": teacher_record,
        "teacher_target": cfg["teacher"].get("target"),
        "teacher_shortfalls": teacher_shortfalls(teacher_record, cfg["teacher"].get("target")),
        "runs": runs,
        "summary": summarise(runs, methods),
    }
    for rec in results["summary"]:  # the report highlights AMAD: asked of the method, not of its name
        attention = method_attention(cfg["methods"][rec["method"]], f"methods.{rec['method']}", system)
        rec["is_amad"] = attention is not None and attention.is_amad
    atomic_write_json(out / "results.json", results)
    write_report(results, out)
    return results


def missing_table_metrics(task: str, teacher_record: dict[str, Any]) -> set[str]:
    """The task's table metrics that a teacher's record lacks: one added since the teacher was shipped
    (translation's ``bleu4``) makes the comparison score the teacher again, on its split. Read from the
    table's metrics, not the metric object's ``names`` (VQA's says ``accuracy`` for its ``vqa_acc*``)."""
    return set(TABLE_METRICS.get(task, ())) - set(teacher_record.get("metrics", {}))


def teacher_head_similarity_cached(
    teacher: torch.nn.Module, teacher_record: dict[str, Any], batch: dict[str, Any], out: Path
) -> dict[str, Any]:
    """The teacher's per-layer head similarity (:func:`~amad.callbacks.diagnostics.teacher_head_similarity`)
    on the fixed batch: computed once per teacher and batch, kept in ``out/teacher_heads.json``."""
    from amad.callbacks.diagnostics import teacher_head_similarity

    examples = batch.get("ids")
    if examples is None:  # an any-model batch names no examples: its tensors do
        examples = hashlib.sha256(b"".join(_tensor_bytes(v) for _, v in sorted(batch.items()))).hexdigest()[:16]
    key = fingerprint(
        {"teacher": teacher_record.get("fingerprint"), "weights": weights_digest(teacher), "ids": examples}
    )
    path = out / "teacher_heads.json"
    try:
        kept = read_json(path)
        if kept.get("key") == key and isinstance(kept.get("head_similarity"), dict):
            return kept["head_similarity"]
    except FileNotFoundError:
        pass
    except DamagedFile as err:
        set_aside(path, err.problem)
    similarity = teacher_head_similarity(teacher, batch)
    n = len(batch["ids"]) if "ids" in batch else len(next(iter(batch.values())))
    atomic_write_json(path, {"key": key, "examples": n, "head_similarity": similarity})
    return similarity


def _run_fingerprint(cfg: dict[str, Any], method: str, seed: int, split: str, also_test: bool = False) -> str:
    # replay is exact, from RAM or a memory-mapped file: the same run
    train = {k: v for k, v in cfg["train"].items() if k not in ("teacher_cache", "teacher_cache_memory_mb")}
    return fingerprint(
        {k: cfg[k] for k in ("data", "teacher", "student")}
        | ({"system": cfg["system"]} if cfg.get("system") else {})
        | {"train": train, "method": cfg["methods"][method], "seed": seed, "split": split}
        | ({"eval_subset": cfg["eval_subset"]} if cfg.get("eval_subset") is not None else {})
        | ({"also_test": True} if also_test else {})
    )


def source_commit() -> str | None:
    """The git commit of the amad source that made a result (``+dirty`` with uncommitted changes), or
    None outside a git checkout: results.json says which code produced it."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "amad"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


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
    parser.add_argument("--out", help="output folder (resumes if it holds a partial run)")
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
    parser.add_argument("--verbose", action="store_true", help="show the libraries' output instead of logging it")
    parser.add_argument(
        "--print_config", action="store_true", help="print the resolved comparison with its defaults (YAML) and exit"
    )
    ns = parser.parse_args(argv)
    if ns.out is None and not (ns.print_config or ns.teacher_only):
        parser.error("the following arguments are required: --out")
    cfg = load_compare_config(ns.config, ns.preset, ns.seeds, ns.methods.split(",") if ns.methods else None)
    if ns.max_steps is not None:
        cfg["train"]["max_steps"] = ns.max_steps
    if ns.eval_subset is not None:  # the students' data only: the teacher's recipe (and fingerprint) stays
        cfg["eval_subset"] = ns.eval_subset
    if ns.print_config:
        print_settings(comparison_settings(cfg))
        return 0
    quiet_libraries()
    torch.set_float32_matmul_precision("high")
    start = time.perf_counter()
    if ns.teacher_only:
        path, record = ensure_teacher(cfg)
        print(json.dumps({"teacher": str(path), **{k: record.get(k) for k in ("metrics", "train_time_s")}}))
        missed = teacher_shortfalls(record, cfg["teacher"].get("target"))
        if missed:  # a weak teacher is never silent: the comparison would judge students against it
            print(f"amad: error: teacher {path} misses its target: {'; '.join(missed)}", file=sys.stderr)
            return 1
        return 0
    results = run_comparison(cfg, ns.out, ns.logger, ns.split, console=Console(enabled=not ns.verbose))
    print((Path(ns.out) / "results.md").read_text())
    print(f"compare: {len(results['runs'])} runs, {time.perf_counter() - start:.0f}s wall -> {ns.out}")
    return 0
