"""``amad sweep``: one comparison repeated over a grid of student and method settings.

The sweep YAML names a base comparison and the grid::

    comparison: experiments/compare/easyvqa_blip.yaml   # teacher, data and budget
    name: amad_heads
    seeds: 3
    student: {hidden_size: 128, intermediate_size: 512}   # shared by every cell
    grid:
      num_heads: [1, 2, 4]            # student heads (a cell per value × init)
      init: [random, teacher]         # student initialisation
    methods:                          # methods of every cell (DistillationModule arguments)
      one_to_one: {attention: amad.losses.OneToOne}
      amad_t1: {attention: {class_path: amad.losses.AMAD, init_args: {weight_temperature: 1.0}}}

Every cell is an ordinary comparison (resumable, teacher outputs cached once per cell) written to
``<out>/<cell>/``. Each student is evaluated on the validation split (for choosing) **and** on the test
split (for reporting): the choice of a setting never sees test. ``<out>/sweep.json`` and ``sweep.md``
gather the cells: per method, the val and test metric (mean ± std over seeds), and for AMAD the spread of
its weights a_ij and the student heads' diversity at the end of training (seed 0).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics
from pathlib import Path
from typing import Any

from amad.artefacts import DamagedFile, read_json, warn
from amad.compare.config import load_compare_config
from amad.compare.console import Console
from amad.config import deep_merge, load_config

GRID_KEYS = ("num_heads", "init", "num_layers", "hidden_size")


def load_sweep(path: str) -> dict[str, Any]:
    """The sweep YAML, checked: a comparison, a grid over student settings, methods."""
    cfg = load_config(path)
    missing = [k for k in ("comparison", "grid", "methods") if k not in cfg]
    if missing:
        raise ValueError(f"sweep {path} lacks {missing}; see amad/compare/sweep.py")
    unknown = sorted(set(cfg["grid"]) - set(GRID_KEYS))
    if unknown:
        raise ValueError(f"sweep {path}: grid keys {unknown} are not student settings {list(GRID_KEYS)}")
    return cfg


def cells(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the grid, as student overrides, in the grid's order."""
    keys = list(sweep["grid"])
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(sweep["grid"][k] for k in keys))]


def cell_name(cell: dict[str, Any]) -> str:
    return "-".join(f"{k}{v}" for k, v in cell.items())


def cell_config(sweep: dict[str, Any], cell: dict[str, Any], sweep_path: str) -> dict[str, Any]:
    """The comparison config of one cell: the base comparison, the sweep's student settings and methods."""
    base = Path(sweep["comparison"])
    if not base.is_absolute() and not base.exists():
        base = Path(sweep_path).parent / base
    cfg = load_compare_config(str(base), methods=None)
    cfg = copy.deepcopy(cfg)
    cfg["name"] = f"{sweep.get('name', 'sweep')}-{cell_name(cell)}"
    cfg["student"] = {**cfg["student"], **(sweep.get("student") or {}), **cell}
    if sweep.get("train"):
        cfg["train"] = deep_merge(cfg["train"], sweep["train"])
    cfg["methods"] = dict(sweep["methods"])
    cfg["seeds"] = int(sweep.get("seeds", cfg["seeds"]))
    return cfg


def run_sweep(
    path: str,
    out: str | Path,
    logger: str = "none",
    log=print,
    console: Console | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict:
    """Run (or resume) every cell; write ``sweep.json`` and ``sweep.md`` in ``out``.

    ``overrides`` (quick checks): ``max_steps``, ``seeds``, ``eval_subset``.
    """
    overrides = overrides or {}
    from amad.compare.config import method_kwargs
    from amad.compare.run import run_comparison

    sweep = load_sweep(path)
    out = Path(out)
    rows = []
    grid = cells(sweep)
    for k, cell in enumerate(grid, 1):
        cfg = cell_config(sweep, cell, path)
        if overrides.get("max_steps"):
            cfg["train"]["max_steps"] = overrides["max_steps"]
        if overrides.get("seeds"):
            cfg["seeds"] = overrides["seeds"]
        if overrides.get("eval_subset"):
            cfg["eval_subset"] = overrides["eval_subset"]
        for name, entry in cfg["methods"].items():
            method_kwargs(entry, f"{path}: methods.{name}")
        log(f"sweep cell {k}/{len(grid)}: {cell_name(cell)}")
        results = run_comparison(cfg, out / cell_name(cell), logger, "val", log=log, console=console, also_test=True)
        rows += _cell_rows(cell, results)
    report = {"sweep": str(path), "name": sweep.get("name"), "grid": sweep["grid"], "rows": rows}
    (out / "sweep.json").write_text(json.dumps(report, indent=1))
    (out / "sweep.md").write_text(sweep_table(report))
    return report


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def _cell_rows(cell: dict[str, Any], results: dict[str, Any]) -> list[dict[str, Any]]:
    metric = next(iter(results["runs"][0]["metrics"]))
    rows = []
    for method in dict.fromkeys(r["method"] for r in results["runs"]):
        rs = [r for r in results["runs"] if r["method"] == method]
        row = {
            **cell,
            "method": method,
            "metric": metric,
            "n": len(rs),
            "val": _stats([r["metrics"][metric] for r in rs]),
            "test": _stats([r["metrics_test"][metric] for r in rs if "metrics_test" in r]),
        }
        snap = _last_snapshot(results, method)
        if snap:
            row["weight_spread"], row["head_diversity"] = snap.get("spread"), snap.get("head_diversity")
        rows.append(row)
    return rows


def _last_snapshot(results: dict[str, Any], method: str) -> dict[str, Any] | None:
    for r in results["runs"]:
        if r["method"] == method and r.get("head_alignment"):
            path = Path(r["head_alignment"]) / "snapshots.json"
            if path.is_file():
                try:
                    snaps = read_json(path)
                except DamagedFile as err:  # a figure's input: the row goes without it, the sweep goes on
                    warn(f"{err}; the sweep table shows no head statistics for {method}")
                    return None
                return snaps[max(snaps, key=int)]
    return None


def sweep_table(report: dict[str, Any]) -> str:
    """Markdown: one row per (cell, method): val (choose) and test (report) in %, AMAD's weight spread (the
    mean over rows of max - min of a_ij; 0 = uniform) and the student heads' diversity (1 - mean cosine
    between a student's heads' maps; seed 0, last step)."""
    keys = list(report["grid"])
    lines = [
        f"# sweep {report.get('name') or ''}",
        "",
        "| " + " | ".join(keys) + " | method | val % | test % | a_ij row range | head diversity |",
        "|" + "---|" * (len(keys) + 5),
    ]
    for r in report["rows"]:
        spread = (r.get("weight_spread") or {}).get("mean_row_range")
        div = r.get("head_diversity")
        cells = [str(r[k]) for k in keys] + [
            r["method"],
            f"{100 * r['val']['mean']:.1f} ± {100 * r['val']['std']:.1f}",
            f"{100 * r['test']['mean']:.1f} ± {100 * r['test']['std']:.1f}" if r["test"] else "",
            "" if spread is None else f"{spread:.3f}",
            "" if div is None else f"{div:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="amad sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="the sweep YAML (e.g. experiments/sweeps/amad_heads.yaml)")
    parser.add_argument("--out", required=True, help="output folder (resumes)")
    parser.add_argument("--logger", default="none", choices=("wandb", "csv", "none"))
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the YAML's)")
    parser.add_argument("--max-steps", type=int, default=None, help="quick check: cap every student's steps")
    parser.add_argument("--eval-subset", type=int, default=None, help="quick check: evaluate on this many examples")
    ns = parser.parse_args(argv)
    from amad.compare.run import quiet_libraries

    quiet_libraries()
    quick = {"max_steps": ns.max_steps, "seeds": ns.seeds, "eval_subset": ns.eval_subset}
    report = run_sweep(ns.config, ns.out, ns.logger, console=Console(), overrides=quick)
    print((Path(ns.out) / "sweep.md").read_text())
    print(f"sweep: {len(report['rows'])} rows -> {ns.out}")
    return 0
