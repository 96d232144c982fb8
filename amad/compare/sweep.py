"""``amad sweep``: one comparison repeated over a grid of student and method settings.

The sweep YAML (:class:`amad.compare.schema.SweepConfig`) names a base comparison and the grid::

    comparison: ../compare/easyvqa_blip.yaml   # teacher, data and budget (relative to here or the cwd)
    name: amad_heads
    seeds: 3
    student: {hidden_size: 128, intermediate_size: 512}   # shared by every cell
    grid:
      num_heads: [1, 2, 4, 8]         # student heads (a cell per value × init)
      init: [random, teacher]         # student initialisation
    methods:                          # methods of every cell (DistillationModule arguments)
      one_to_one: {attention: amad.losses.OneToOne}
      amad_t1: {attention: {class_path: amad.losses.AMAD, init_args: {weight_temperature: 1.0}}}

Every cell is an ordinary comparison written to ``<out>/<cell>/``: the console shows one line per run as
``amad compare`` does (prefixed by the cell), each finished run is kept at once and a rerun resumes
after it, and the comparison's teacher is shared by every cell. ``--cells num_heads=4,8 --cells
init=teacher`` runs part of the grid, ``--methods`` and ``--seeds`` part of the methods and seeds, so the
sweep can be spread over sittings. Each student is evaluated on the validation split (for choosing)
**and** on the test split (for reporting): the choice of a setting never sees test.

``--grid num_heads=4 --grid init=teacher`` replaces the file's values of those keys (a one-cell study
such as ``experiments/sweeps/amad_variants.yaml`` at the cell the main sweep points to).

``<out>/sweep.json``, ``sweep.md`` and ``sweep.png`` gather every finished run of the whole grid (from any
sitting), :mod:`amad.compare.sweep_report`: per cell and method, the val and test metric (mean ± std over
seeds; n/a with one seed) and the run diagnostics (:mod:`amad.callbacks.diagnostics`: the attention term
before γ at the start and end, the student heads' diversity, AMAD's a_ij spread), AMAD's τ chosen on val
per cell, and once the teacher's per-layer head similarity; the figure draws test against student heads.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import itertools
import json
import typing
from pathlib import Path
from typing import Any

from amad.compare.config import (
    check_student_overrides,
    load_compare_config,
    method_kwargs,
    method_settings,
    print_settings,
    validate_comparison,
)
from amad.compare.console import Console
from amad.compare.schema import (
    GRID_KEYS,
    SchemaError,
    StudentSection,
    SweepConfig,
    SystemTrainSection,
    TrainSection,
    build,
    check_keys,
    check_value,
    close_key,
)
from amad.compare.sweep_report import cell_rows, choose, sweep_figure, sweep_table, tau_families, teacher_similarity
from amad.compare.system import system_path
from amad.config import deep_merge, load_config


def load_sweep(path: str, grid: dict[str, list[Any]] | None = None) -> dict[str, Any]:
    """The sweep YAML, checked against :class:`~amad.compare.schema.SweepConfig` and every cell's
    comparison against the comparison schema; ``comparison`` resolved to a path that exists.

    Args:
        grid: values that replace the file's for these grid keys (``--grid``, :func:`parse_grid`),
            checked like the file's.

    Raises:
        ValueError: one line naming the file and the key (an unknown key with the closest valid one).
    """
    cfg = load_config(path)
    if grid:
        cfg["grid"] = {**(cfg.get("grid") or {}), **grid}
    try:
        typed: SweepConfig = build(SweepConfig, cfg, "")
        cfg["comparison"] = str(_comparison_path(typed.comparison, path))
        check_keys(typed.grid, GRID_KEYS, "grid")
        hints = typing.get_type_hints(StudentSection)
        for key, values in typed.grid.items():
            if not values:
                raise SchemaError(f"grid.{key}: no values")
            for k, value in enumerate(values):
                check_value(hints[key], value, f"grid.{key}[{k}]")
        base = _comparison(Path(cfg["comparison"]).resolve())
        system = system_path(base)
        if system:  # an any-model comparison: its system's own budget keys and keyword arguments
            check_partial(SystemTrainSection, typed.train, "train")
        else:
            family = base["teacher"]["model"]["family"]
            check_student_overrides(build(StudentSection, typed.student, "student"), family, "student")
            check_partial(TrainSection, typed.train, "train")
        for name, entry in typed.methods.items():
            method_kwargs(entry, f"methods.{name}", system)
        for cell in cells(cfg):
            try:
                validate_comparison({k: v for k, v in cell_config(cfg, cell, path).items() if k != "preset"})
            except SchemaError as err:
                raise SchemaError(f"cell {cell_name(cell)}: {err}") from None
    except SchemaError as err:
        raise SchemaError(f"{path}: {err}") from None
    return cfg


def check_partial(cls: type, values: dict[str, Any], where: str) -> None:
    """Overrides of some fields of dataclass ``cls``: known keys of the right types."""
    fields = {f.name for f in dataclasses.fields(cls)}
    check_keys(values, fields, where)
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        check_value(hints[key], value, f"{where}.{key}")


def _comparison_path(name: str, sweep_path: str) -> Path:
    base = Path(name)
    if not base.is_absolute() and not base.exists():
        base = Path(sweep_path).parent / base
    if not base.is_file():
        raise SchemaError(f"comparison: {name} does not exist (relative to the working directory or the sweep)")
    return base


def cells(sweep: dict[str, Any], only: dict[str, list[Any]] | None = None) -> list[dict[str, Any]]:
    """Every combination of the grid, as student overrides, in the grid's order (``only``: the values
    kept per key, see :func:`parse_cells`)."""
    keys = list(sweep["grid"])
    grid = [dict(zip(keys, values, strict=True)) for values in itertools.product(*(sweep["grid"][k] for k in keys))]
    return [c for c in grid if all(c[k] in vs for k, vs in (only or {}).items())]


def parse_cells(specs: list[str], grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """``--cells`` values (``num_heads=4,8``; repeated for other keys) as grid values per key.

    Raises:
        ValueError: a key that is not in the grid, or a value that is not one of its values.
    """
    only: dict[str, list[Any]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not values:
            raise ValueError(f"--cells {spec!r}: expected KEY=VALUE[,VALUE...], e.g. num_heads=4")
        if key not in grid:
            raise ValueError(f"--cells {spec!r}: {key!r} is not a key of the grid{close_key(key, grid)}")
        by_text = {str(v): v for v in grid[key]}
        for text in values.split(","):
            if text.strip() not in by_text:
                raise ValueError(f"--cells {spec!r}: {text.strip()!r} is not a value of {key} {list(by_text)}")
            only.setdefault(key, []).append(by_text[text.strip()])
    return only


def parse_grid(specs: list[str]) -> dict[str, list[Any]]:
    """``--grid`` values (``num_heads=4``, ``init=teacher``; repeated for other keys) as the grid values
    that replace the file's for those keys: a sweep of one cell chosen on the command line. Each value
    is read as YAML (``4`` an integer); :func:`load_sweep` checks them.

    Raises:
        ValueError: a spec that is not KEY=VALUE[,VALUE...].
    """
    import yaml

    grid: dict[str, list[Any]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ValueError(f"--grid {spec!r}: expected KEY=VALUE[,VALUE...], e.g. num_heads=4")
        grid[key.strip()] = [yaml.safe_load(v.strip()) for v in values.split(",")]
    return grid


def cell_name(cell: dict[str, Any]) -> str:
    return "-".join(f"{k}{v}" for k, v in cell.items())


def cell_config(sweep: dict[str, Any], cell: dict[str, Any], sweep_path: str) -> dict[str, Any]:
    """The comparison config of one cell: the base comparison, the sweep's student settings and methods.

    The cell keeps the comparison's name, which names its teacher's cache: every cell (and ``amad
    compare`` of that comparison) uses the same teacher.
    """
    cfg = copy.deepcopy(_comparison(_comparison_path(sweep["comparison"], sweep_path).resolve()))
    cfg["description"] = f"{sweep.get('name', 'sweep')} cell {cell_name(cell)}: {cfg.get('description', '')}"
    cfg["student"] = {**cfg["student"], **(sweep.get("student") or {}), **cell}
    if sweep.get("train"):
        cfg["train"] = deep_merge(cfg["train"], sweep["train"])
    cfg["methods"] = dict(sweep["methods"])
    if sweep.get("seeds") is not None:
        cfg["seeds"] = int(sweep["seeds"])
    if sweep.get("eval_subset") is not None:
        cfg["eval_subset"] = sweep["eval_subset"]
    return cfg


def _comparison(path: Path) -> dict[str, Any]:
    return _comparison_at(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _comparison_at(path: str, mtime_ns: int) -> dict[str, Any]:
    """The comparison, loaded (and checked) once for every cell of a sweep, while its file is unchanged."""
    return load_compare_config(path)


def restrict(
    sweep: dict[str, Any],
    only: dict[str, list[Any]] | None = None,
    methods: list[str] | None = None,
    seeds: int | None = None,
    max_steps: int | None = None,
    eval_subset: int | None = None,
) -> dict[str, Any]:
    """The sweep limited from the command line: part of the grid and methods, other seeds or budget.

    Raises:
        ValueError: a method that is not in the sweep.
    """
    sweep = copy.deepcopy(sweep)
    for key, values in (only or {}).items():
        sweep["grid"][key] = [v for v in sweep["grid"][key] if v in values]
    if methods:
        unknown = [m for m in methods if m not in sweep["methods"]]
        if unknown:
            raise ValueError(f"--methods: {unknown} are not in the sweep; available: {list(sweep['methods'])}")
        sweep["methods"] = {m: sweep["methods"][m] for m in methods}
    if seeds is not None:
        sweep["seeds"] = seeds
    if max_steps is not None:
        sweep["train"] = {**(sweep.get("train") or {}), "max_steps": max_steps}
    if eval_subset is not None:
        sweep["eval_subset"] = eval_subset
    return sweep


def sweep_settings(sweep: dict[str, Any], path: str) -> dict[str, Any]:
    """The sweep as the YAML of ``--print_config``: the comparison's path as found, the seeds it resolves
    to, every method with its defaults; loading the printed YAML gives the same sweep."""
    comparison = Path(sweep["comparison"]).resolve()
    here = Path.cwd().resolve()
    seeds = sweep.get("seeds")
    if seeds is None:
        seeds = _comparison(comparison)["seeds"]
    out = {
        "comparison": str(comparison.relative_to(here) if comparison.is_relative_to(here) else comparison),
        "name": sweep.get("name", "sweep"),
        "seeds": int(seeds),
        "student": sweep.get("student") or {},
        "train": sweep.get("train") or {},
        "grid": sweep["grid"],
        "methods": {name: method_settings(entry, f"methods.{name}") for name, entry in sweep["methods"].items()},
    }
    if sweep.get("eval_subset") is not None:
        out["eval_subset"] = sweep["eval_subset"]
    return out


def run_sweep(
    path: str,
    out: str | Path,
    logger: str = "none",
    log=None,
    console: Console | None = None,
    overrides: dict[str, Any] | None = None,
    only: dict[str, list[Any]] | None = None,
    methods: list[str] | None = None,
    grid: dict[str, list[Any]] | None = None,
) -> dict:
    """Run (or resume) the cells of the sweep, or those of ``only``; write ``sweep.json`` and ``sweep.md``
    in ``out`` from every finished run of the whole grid.

    Args:
        overrides: quick checks and sittings: ``max_steps``, ``seeds``, ``eval_subset``.
        only: grid values kept per key (:func:`parse_cells`).
        methods: the methods to train (default: all of the sweep's).
        grid: grid values replacing the file's (:func:`parse_grid`).
    """
    from amad.compare.run import run_comparison

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    console = console or Console(enabled=False)
    sweep = load_sweep(path, grid)
    full = restrict(sweep, **overrides)
    part = restrict(full, only, methods)
    out = Path(out)
    todo = cells(part)
    for k, cell in enumerate(todo, 1):
        console.prefix = f"[cell {k}/{len(todo)} {cell_name(cell)}] "
        try:
            cfg = cell_config(part, cell, path)
            run_comparison(
                cfg, out / cell_name(cell), logger, "val", log=log or console.say, console=console, also_test=True
            )
        finally:
            console.prefix = ""
    rows, missing = [], []
    for cell in cells(full):
        cell_rows_ = cell_rows(cell, cell_config(full, cell, path), out / cell_name(cell))
        rows += cell_rows_
        done = {r["method"] for r in cell_rows_}
        missing += [{**cell, "method": m} for m in full["methods"] if m not in done]
    families = tau_families(full["methods"])
    report = {
        "sweep": str(path),
        "name": sweep.get("name"),
        "grid": full["grid"],
        "teacher_head_similarity": teacher_similarity([out / cell_name(c) for c in cells(full)]),
        "families": families,
        "choices": choose(rows, families, list(full["grid"])),
        "rows": rows,
        "missing": missing,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(report, indent=1))
    (out / "sweep.md").write_text(sweep_table(report))
    sweep_figure(report, out / "sweep.png")
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="amad sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="the sweep YAML (e.g. experiments/sweeps/amad_heads.yaml)")
    parser.add_argument("--out", help="output folder (resumes)")
    parser.add_argument("--logger", default="none", choices=("wandb", "csv", "none"))
    parser.add_argument(
        "--cells",
        action="append",
        default=[],
        metavar="KEY=V1[,V2]",
        help="run only these cells of the grid (repeat for other keys), e.g. --cells num_heads=4,8 --cells init=random",
    )
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1[,V2]",
        help="replace the YAML's values of a grid key (repeat for other keys), e.g. --grid num_heads=4 --grid "
        "init=teacher for a one-cell sweep (experiments/sweeps/amad_variants.yaml)",
    )
    parser.add_argument("--methods", default=None, help="comma-separated subset of the sweep's methods")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the YAML's)")
    parser.add_argument("--max-steps", type=int, default=None, help="quick check: cap every student's steps")
    parser.add_argument("--eval-subset", type=int, default=None, help="quick check: evaluate on this many examples")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' output instead of logging it")
    parser.add_argument(
        "--print_config", action="store_true", help="print the resolved sweep with its defaults (YAML) and exit"
    )
    ns = parser.parse_args(argv)
    if ns.out is None and not ns.print_config:
        parser.error("the following arguments are required: --out")
    grid = parse_grid(ns.grid)
    sweep = load_sweep(ns.config, grid)
    only = parse_cells(ns.cells, sweep["grid"])
    methods = ns.methods.split(",") if ns.methods else None
    quick = {"max_steps": ns.max_steps, "seeds": ns.seeds, "eval_subset": ns.eval_subset}
    if ns.print_config:
        print_settings(sweep_settings(restrict(sweep, only, methods, **quick), ns.config))
        return 0
    from amad.compare.run import quiet_libraries

    quiet_libraries()
    import torch

    torch.set_float32_matmul_precision("high")
    report = run_sweep(
        ns.config,
        ns.out,
        ns.logger,
        console=Console(enabled=not ns.verbose),
        overrides=quick,
        only=only,
        methods=methods,
        grid=grid,
    )
    print((Path(ns.out) / "sweep.md").read_text())
    print(f"sweep: {len(report['rows'])} rows, {len(report['missing'])} cell methods not run yet -> {ns.out}")
    return 0
