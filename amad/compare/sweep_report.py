"""The report of ``amad sweep``: rows gathered from the finished runs, AMAD's τ chosen on val, the tables
(``sweep.md``) and the figure (``sweep.png``).

Per cell and method, over the seeds run (mean ± sample std; n/a with one seed): the val metric (to
choose), the test metric (to report) and the run diagnostics (:mod:`amad.callbacks.diagnostics`): the
unweighted attention term at the start and end of training, the student heads' diversity, and for
methods with head weights the spread of a_ij at the end. Once at the top, the teacher's per-layer head
similarity (the same for every cell: they share the teacher and the fixed batch).

Methods that differ only in AMAD's weight temperature τ (``amad_t1``, ``amad_t0.3``...) form a family:
in each cell the member with the best **val** mean is the chosen one (test never chooses), drawn in the
figure as one line named after the family (``amad``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import statistics
from pathlib import Path
from typing import Any

from amad.artefacts import DamagedFile, read_json, warn
from amad.compare.config import method_kwargs


def stats(values: list[float | None]) -> dict[str, float | None]:
    """Mean and sample std of the known values; the std of one value is unknown (None), never 0; {} for none."""
    known = [v for v in values if v is not None]
    if not known:
        return {}
    return {"mean": statistics.fmean(known), "std": statistics.stdev(known) if len(known) > 1 else None}


def finished_runs(cfg: dict[str, Any], cell_out: Path) -> list[dict[str, Any]]:
    """The runs of one cell kept in ``cell_out/runs`` whose config is the cell's (any number of seeds,
    from any sitting), in method then seed order."""
    from amad.compare.run import _run_fingerprint

    records = []
    for method in cfg["methods"]:
        paths = sorted(
            (cell_out / "runs").glob(f"{method}-seed*.json"), key=lambda p: int(p.stem.rpartition("seed")[2] or 0)
        )
        for path in paths:
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # half-written: the run is not finished
            if record.get("method") != method or not isinstance(record.get("seed"), int):
                continue
            if record.get("fingerprint") == _run_fingerprint(cfg, method, record["seed"], "val", True):
                records.append(record)
    return records


def cell_rows(cell: dict[str, Any], cfg: dict[str, Any], cell_out: Path) -> list[dict[str, Any]]:
    """One row per method of the cell that has a finished run: metrics and diagnostics over its seeds."""
    runs = finished_runs(cfg, cell_out)
    if not runs:
        return []
    # a system comparison names its headline (system.metric); a VL comparison's comes first in its records
    metric = (cfg.get("system") or {}).get("metric") or next(iter(runs[0]["metrics"]))
    rows = []
    for method in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == method]
        row = {
            **cell,
            "method": method,
            "metric": metric,
            "n": len(rs),
            "val": stats([r["metrics"][metric] for r in rs]),
            "val_by_seed": {str(r["seed"]): r["metrics"][metric] for r in rs},
            "test": stats([r["metrics_test"][metric] for r in rs if "metrics_test" in r]),
        }
        row.update(_diagnostics(rs) or _snapshot_diagnostics(cell_out, method, rs))
        rows.append(row)
    return rows


def _diagnostics(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs' diagnostics over seeds: ``attn_loss`` and ``head_diversity`` ({start, end} of stats) and
    ``weight_row_range`` (stats of the a_ij rows' max - min at the end; 0 = uniform)."""
    diags = [r["diagnostics"] for r in runs if r.get("diagnostics")]
    if not diags:
        return {}
    out: dict[str, Any] = {"diagnostics_n": len(diags)}
    for name in ("attn_loss", "head_diversity"):
        out[name] = {when: stats([(d.get(name) or {}).get(when) for d in diags]) for when in ("start", "end")}
    spreads = [d["weight_spread"] for d in diags if d.get("weight_spread")]
    if spreads:
        out["weight_row_range"] = stats([s["mean_row_range"] for s in spreads])
        out["weight_uniform"] = spreads[0]["uniform"]
    return out


def _snapshot_diagnostics(cell_out: Path, method: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs recorded before the diagnostics existed: the seed-0 head-weight snapshot at the last step."""
    snap = _last_snapshot(cell_out, method, runs)
    if not snap:
        return {}
    out: dict[str, Any] = {"head_diversity": {"end": stats([snap.get("head_diversity")])}}
    if snap.get("spread"):
        out["weight_row_range"] = stats([snap["spread"]["mean_row_range"]])
        out["weight_uniform"] = snap["spread"]["uniform"]
    return out


def _last_snapshot(cell_out: Path, method: str, runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The head-weight snapshot at the last step of the seed-0 run (methods with head weights only)."""
    if not any(r["seed"] == 0 and r.get("head_alignment") for r in runs):
        return None
    path = cell_out / "heatmaps" / method / "snapshots.json"
    if not path.is_file():
        return None
    try:
        snaps = read_json(path)
    except DamagedFile as err:  # a figure's input: the row goes without it, the sweep goes on
        warn(f"{err}; the sweep table shows no head statistics for {method}")
        return None
    return snaps[max(snaps, key=int)] if snaps else None


def teacher_similarity(cell_outs: list[Path]) -> dict[str, list[float | None]] | None:
    """The teacher's per-layer head similarity kept by the first cell that has it (every cell shares the
    teacher and the fixed batch); None before any cell ran."""
    for cell_out in cell_outs:
        path = cell_out / "teacher_heads.json"
        if path.is_file():
            try:
                return read_json(path)["head_similarity"]
            except (DamagedFile, KeyError):
                continue  # the next cell's copy says the same
    return None


# -- AMAD's τ, chosen on val ---------------------------------------------------------------------------
def tau_families(methods: dict[str, Any]) -> dict[str, list[str]]:
    """label -> the AMAD methods (two or more) that differ only in ``weight_temperature``, e.g. ``{"amad":
    ["amad_t1", "amad_t0.3", "amad_t0.1"]}``; the label is the members' common name prefix."""
    groups: dict[str, list[str]] = {}
    for name, entry in methods.items():
        kwargs = method_kwargs(entry, f"methods.{name}")
        attention = kwargs.get("attention")
        if attention is None or not attention.is_amad or not hasattr(attention, "weight_temperature"):
            continue
        key = repr({**kwargs, "attention": dataclasses.replace(attention, weight_temperature=1.0)})
        groups.setdefault(key, []).append(name)
    families = {}
    for names in groups.values():
        if len(names) < 2:
            continue
        label = names[0]
        while not all(n.startswith(label) for n in names):
            label = label[:-1]
        label = label.removesuffix("_t").rstrip("_-.") or names[0]
        families[label if label not in families else names[0]] = names
    return families


def _val_on(row: dict[str, Any], seeds: list[str]) -> float:
    """The row's val mean over ``seeds`` (all of its seeds when empty)."""
    if not seeds:
        return row["val"]["mean"]
    return statistics.fmean(row["val_by_seed"][s] for s in seeds)


def choose(rows: list[dict[str, Any]], families: dict[str, list[str]], keys: list[str]) -> list[dict[str, Any]]:
    """Per cell and family, the member with the best val mean (ties: the first listed). Marks the chosen
    rows (``chosen``: the family's label) and returns one record per choice.

    The means are taken over the seeds every member has (``on_seeds``; usually seed 0, the sitting where
    every τ ran): once the chosen τ is repeated at more seeds, its 3-seed mean must not be weighed against
    the others' single seed, which could flip the choice to a τ with one seed."""
    choices = []
    for label, names in families.items():
        for _, group in itertools.groupby(rows, key=lambda r: tuple(r[k] for k in keys)):
            members = [r for r in group if r["method"] in names and r["val"]]
            if not members:
                continue
            per_seed = [r.get("val_by_seed") or {} for r in members]
            common = sorted(set.intersection(*(set(v) for v in per_seed)), key=int) if all(per_seed) else []

            best = max(members, key=lambda r: (_val_on(r, common), -names.index(r["method"])))
            best["chosen"] = label
            choices.append(
                {
                    **{k: best[k] for k in keys},
                    "family": label,
                    "chosen": best["method"],
                    "of": names,
                    "on_seeds": [int(x) for x in common] or None,
                }
            )
    return choices


# -- sweep.md -----------------------------------------------------------------------------------------
def _pm(st: dict[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    if not st:
        return ""
    spread = "n/a" if st["std"] is None else f"{scale * st['std']:.{digits}f}"
    return f"{scale * st['mean']:.{digits}f} ± {spread}"


def _start_end(pair: dict[str, Any] | None, digits: int = 3) -> str:
    pair = pair or {}
    start, end = pair.get("start") or {}, pair.get("end") or {}
    if not end:
        return ""
    text = f"{end['mean']:.{digits}f}"
    return f"{start['mean']:.{digits}f} → {text}" if start else text


def teacher_table(similarity: dict[str, list[float | None]] | None) -> list[str]:
    """Markdown lines: the teacher's mean pairwise cosine between its heads' maps, per site and layer."""
    if not similarity:
        return []
    layers = max(len(v) for v in similarity.values())
    known = [c for v in similarity.values() for c in v if c is not None]
    lines = [
        "Teacher heads: mean pairwise cosine between two heads' maps, per site and layer (1 = every head "
        f"attends alike; 0 = disjoint); over all layers {sum(known) / len(known):.3f}.",
        "",
        "| site | " + " | ".join(f"layer {k}" for k in range(layers)) + " |",
        "|---|" + "---|" * layers,
    ]
    for site, per_layer in similarity.items():
        cells = ["" if c is None else f"{c:.3f}" for c in per_layer] + [""] * (layers - len(per_layer))
        lines.append(f"| {site} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def sweep_table(report: dict[str, Any]) -> str:
    """Markdown: the teacher's head similarity, then one row per (cell, method): seeds, val (choose) and
    test (report) in % (± n/a with one seed), the attention term before γ (start → end), the student
    heads' diversity (start → end) and AMAD's a_ij row range at the end (0 = uniform), means over seeds;
    ``*`` marks the τ chosen on val."""
    keys = list(report["grid"])
    lines = [f"# sweep {report.get('name') or ''}", "", *teacher_table(report.get("teacher_head_similarity"))]
    lines += [
        "| "
        + " | ".join(keys)
        + " | method | n | val % | test % | L_attn before γ (start → end) | head diversity (start → end)"
        " | a_ij row range |",
        "|" + "---|" * (len(keys) + 7),
    ]
    for r in report["rows"]:
        spread = r.get("weight_row_range")
        row = [str(r[k]) for k in keys] + [
            r["method"] + (" *" if r.get("chosen") else ""),
            str(r["n"]),
            _pm(r["val"]),
            _pm(r["test"]),
            _start_end(r.get("attn_loss"), 4),
            _start_end(r.get("head_diversity")),
            _pm(spread, 1.0, 3) if spread else "",
        ]
        lines.append("| " + " | ".join(row) + " |")
    if report.get("choices"):
        lines += [
            "",
            "`*`: the weight temperature chosen on val in its cell, on the seeds every temperature ran (test "
            "reports it, never chooses it).",
        ]
    missing = report.get("missing") or []
    if missing:
        by_cell: dict[str, list[str]] = {}
        for m in missing:
            by_cell.setdefault("-".join(f"{k}{m[k]}" for k in keys), []).append(m["method"])
        done = {"-".join(f"{k}{r[k]}" for k in keys) for r in report["rows"]}
        parts = [f"{c} ({'all' if c not in done else ', '.join(ms)})" for c, ms in by_cell.items()]
        lines += ["", f"Not run yet ({len(missing)} cell methods): " + "; ".join(parts) + "."]
    return "\n".join(lines) + "\n"


# -- sweep.png ----------------------------------------------------------------------------------------
def figure_lines(report: dict[str, Any]) -> dict[tuple, dict[str, list[tuple[Any, float, float | None]]]]:
    """panel (values of the grid keys but the x axis) -> line label -> [(x, test mean, test std)]: one line
    per method, a τ family drawn as its chosen member per cell (its label), the unchosen members left out."""
    keys = list(report["grid"])
    x_key = "num_heads" if "num_heads" in keys else keys[0]
    family_of = {m: label for label, names in (report.get("families") or {}).items() for m in names}
    panels: dict[tuple, dict[str, list]] = {}
    for r in report["rows"]:
        if not r["test"] or (r["method"] in family_of and not r.get("chosen")):
            continue
        panel = tuple((k, r[k]) for k in keys if k != x_key)
        label = r.get("chosen") or r["method"]
        panels.setdefault(panel, {}).setdefault(label, []).append((r[x_key], r["test"]["mean"], r["test"]["std"]))
    return panels


def sweep_figure(report: dict[str, Any], path: Path) -> Path | None:
    """``sweep.png``: the test metric against the x grid key (student heads), one line per method with
    error bars (std over seeds; none with one seed), one panel per value of the other keys (init).
    As ``amad compare``'s chart, AMAD (the chosen τ) is red; None without test scores."""
    panels = figure_lines(report)
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from amad.compare.report import PERCENT

    keys = list(report["grid"])
    x_key = "num_heads" if "num_heads" in keys else keys[0]
    metric = report["rows"][0]["metric"]
    scale = 100.0 if metric in PERCENT else 1.0
    amad = set(report.get("families") or {})  # the τ chosen on val: the method under test, in red
    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    palette = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 3]  # tab10 without its red
    others = [label for label in labels if label not in amad]
    colours = {label: palette[i % len(palette)] for i, label in enumerate(others)} | dict.fromkeys(amad, "tab:red")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.5, 3.8), squeeze=False, sharey=True)
    one_x = len({p[0] for lines in panels.values() for pts in lines.values() for p in pts}) == 1
    for ax, (panel, lines) in zip(axes[0], panels.items(), strict=True):
        if one_x:  # a one-cell study (amad_variants): the methods side by side, not lines of one point
            _methods_side_by_side(ax, lines, scale, colours)
        else:
            _lines_against_x(ax, lines, scale, colours, amad)
            ax.set_xlabel("student heads" if x_key == "num_heads" else x_key)
        if one_x:
            panel = ((x_key, next(iter(lines.values()))[0][0]), *panel)
        ax.set_title(", ".join(f"{k} {v}" for k, v in panel) or report.get("name") or "sweep", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"test {metric}" + (" %" if scale == 100.0 else ""))
    if not one_x:
        axes[0][-1].legend(fontsize=8, loc="best")
    fig.suptitle(f"sweep {report.get('name') or ''}: mean ± std over seeds (no bar: one seed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _lines_against_x(ax: Any, lines: dict[str, list], scale: float, colours: dict, amad: set[str]) -> None:
    for label, points in lines.items():
        points = sorted(points, key=lambda p: p[0])
        xs = [p[0] for p in points]
        ys = [scale * p[1] for p in points]
        err = [0.0 if p[2] is None else scale * p[2] for p in points]
        amad_line = label in amad
        ax.errorbar(
            xs, ys, yerr=err, label=label, marker="o", capsize=3, color=colours[label],
            lw=2.2 if amad_line else 1.2, ls="-" if amad_line else "--", zorder=3 if amad_line else 2,
        )  # fmt: skip
    if all(isinstance(x, (int, float)) for x in {p[0] for pts in lines.values() for p in pts}):
        ax.set_xscale("log", base=2)
        ticks = sorted({p[0] for pts in lines.values() for p in pts})
        ax.set_xticks(ticks, [str(t) for t in ticks])


def _methods_side_by_side(ax: Any, lines: dict[str, list], scale: float, colours: dict) -> None:
    for k, (label, ((_, mean, std),)) in enumerate(lines.items()):
        err = 0.0 if std is None else scale * std
        ax.errorbar([k], [scale * mean], yerr=[err], marker="o", capsize=4, color=colours[label])
    ax.set_xticks(range(len(lines)), list(lines), rotation=30, ha="right")
