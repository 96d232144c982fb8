"""Summaries, the results table (results.md) and the bar chart of a comparison."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from amad.lit.base import TASK_METRICS


def summarise(runs: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    """One record per method: every metric's mean and sample std over seeds (std 0 for one seed)."""
    summary = []
    for method in methods:
        rs = [r for r in runs if r["method"] == method]
        if not rs:
            continue
        rec: dict[str, Any] = {
            "method": method,
            "n": len(rs),
            "params": rs[0]["params"],
            "train_time_s": round(statistics.fmean(r["train_time_s"] for r in rs), 2),
        }
        for name in rs[0]["metrics"]:
            vals = [r["metrics"][name] for r in rs]
            rec[name] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
        summary.append(rec)
    return summary


def _fmt(x: float, metric: str) -> str:
    return f"{100 * x:.1f}" if metric in ("vqa_acc",) else f"{x:.3f}" if metric == "cider" else f"{x:.2f}"


def _relative(path: str, root: Path) -> str:
    p = Path(path)
    return str(p.relative_to(root)) if p.is_relative_to(root) else path


def write_report(results: dict[str, Any], out: Path) -> None:
    """Write results.md (table, gap to teacher) and results.png (bar chart with std error bars)."""
    task = results.get("task") or "vqa"
    metrics = [m for m in TASK_METRICS[task][0] if any(m in s for s in results["summary"])]
    teacher = results["teacher"].get("metrics", {})
    unit = " (%)" if task == "vqa" else ""
    lines = [
        f"# {results['name']}: {results.get('task_description', '')}".rstrip(": "),
        "",
        f"preset `{results['preset']}`, {results['seeds']} seed(s), evaluated on the **{results['split']}** "
        f"split; student {results['student']}, {results['train'].get('max_steps')} steps each.",
        "",
        "| method | " + " | ".join(f"{m}{unit} mean ± std" for m in metrics) + " | gap to teacher | params | train s |",
        "|---|" + "---|" * (len(metrics) + 3),
    ]
    t_params = results["teacher"].get("params", "")
    lines.append(
        "| teacher | "
        + " | ".join(_fmt(teacher[m], m) if m in teacher else "" for m in metrics)
        + f" | - | {t_params:,} | {results['teacher'].get('train_time_s', '')} |"
        if isinstance(t_params, int)
        else "| teacher | | | | |"
    )
    main = metrics[0] if metrics else None
    for s in results["summary"]:
        cells = [f"{_fmt(s[m]['mean'], m)} ± {_fmt(s[m]['std'], m)}" for m in metrics]
        gap = _fmt(s[main]["mean"] - teacher[main], main) if main and main in teacher else ""
        lines.append(f"| {s['method']} | " + " | ".join(cells) + f" | {gap} | {s['params']:,} | {s['train_time_s']} |")
    ha = [r for r in results["runs"] if r.get("head_alignment")]
    chart = "Chart: `results.png`."
    if ha:
        chart += " Head alignment of the AMAD student (seed 0): " + ", ".join(
            f"`{_relative(r['head_alignment'], out)}`" for r in ha
        )
    lines += ["", chart]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    if main:
        _bar_chart(results, main, out / "results.png")


def _bar_chart(results: dict[str, Any], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    names = [s["method"] for s in summary]
    means = [s[metric]["mean"] for s in summary]
    stds = [s[metric]["std"] for s in summary]
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 3.6))
    colors = ["tab:red" if n.startswith("amad") else "tab:gray" for n in names]
    ax.bar(names, means, yerr=stds, capsize=4, color=colors)
    t = results["teacher"].get("metrics", {}).get(metric)
    if t is not None:
        ax.axhline(t, color="k", ls="--", lw=1, label=f"teacher {t:.3f}")
        ax.legend(loc="lower right")
    lo = min(m - s for m, s in zip(means, stds, strict=True))
    ax.set_ylim(max(0.0, lo - 0.1 * abs(lo) - 0.02), None)
    ax.set_ylabel(f"{results['split']} {metric}")
    ax.set_title(f"{results['name']} ({results['preset']}, {results['seeds']} seeds)")
    plt.xticks(rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
