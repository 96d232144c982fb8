"""Summaries, the results table (results.md) and the bar chart of a comparison.

Besides each metric's mean ± std over seeds, the table says whether a method is told apart from
ground-truth-only training (``gt``): its difference in pooled standard deviations,
``(mean_m - mean_gt) / sqrt((std_m² + std_gt²) / 2)``, and the share of the gap between ``gt`` and the
teacher that it closes, ``(mean_m - mean_gt) / (teacher - mean_gt)``. A comparison *separates* when its
best distillation method is ≥ 3 pooled σ above ``gt`` and closes ≥ 1/3 of the gap.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

#: per task: the table's metrics (the first is the main one), then breakdown metrics shown when present
TABLE_METRICS: dict[str, tuple[str, ...]] = {
    "vqa": ("vqa_acc", "vqa_acc_shape", "vqa_acc_colour", "vqa_acc_yesno_shape", "vqa_acc_yesno_colour"),
    "caption": ("cider", "bleu4", "attr_acc"),
    "translate": ("bleu", "bleu4", "attr_acc", "ref_attr_acc"),  # bleu: sacreBLEU 0-100; bleu4: pycocoevalcap 0-1
    "classify": ("acc",),
}
#: metrics on a 0-1 scale shown as percentages
PERCENT = {
    "acc",
    "vqa_acc",
    "vqa_acc_shape",
    "vqa_acc_colour",
    "vqa_acc_yesno_shape",
    "vqa_acc_yesno_colour",
    "attr_acc",
    "ref_attr_acc",
}
SEPARATION_SIGMAS, SEPARATION_GAP = 3.0, 1 / 3


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
            "eval_time_s": round(statistics.fmean(r.get("eval_time_s", 0.0) for r in rs), 2),
            "teacher": rs[0].get("teacher", ""),
        }
        for name in rs[0]["metrics"]:
            vals = [r["metrics"][name] for r in rs]
            rec[name] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
        summary.append(rec)
    return summary


def separation(summary: list[dict[str, Any]], teacher: dict[str, float], metric: str) -> dict[str, dict[str, float]]:
    """Per method (but ``gt``): ``sigmas`` above ``gt`` (pooled std; inf when both stds are 0 and the
    means differ; nan when either has a single seed, whose spread is unknown) and ``gap_closed``, the
    share of the gt→teacher gap closed (None without a gap)."""
    by = {s["method"]: s for s in summary if metric in s}
    if "gt" not in by:
        return {}
    gt = by["gt"][metric]
    out = {}
    for name, s in by.items():
        if name == "gt":
            continue
        diff = s[metric]["mean"] - gt["mean"]
        pooled = math.sqrt((s[metric]["std"] ** 2 + gt["std"] ** 2) / 2)
        sig = diff / pooled if pooled > 0 else (math.inf if diff > 0 else (-math.inf if diff < 0 else 0.0))
        if min(s.get("n", 2), by["gt"].get("n", 2)) < 2:
            sig = math.nan  # one seed says nothing about the spread: never "separates"
        gap = teacher.get(metric, math.nan) - gt["mean"]
        # no gap when the teacher is not above ground truth on this metric: a share of a negative gap would
        # count falling below gt as "closing" it
        out[name] = {"sigmas": sig, "gap_closed": diff / gap if gap > 0 else None}
    return out


def verdict(sep: dict[str, dict[str, float]]) -> tuple[str | None, bool]:
    """(the best distillation method — any but ``gt`` — by gap closed, whether it separates by both criteria)."""
    if not sep:
        return None, False
    best = max(sep, key=lambda m: (sep[m]["gap_closed"] or -math.inf, sep[m]["sigmas"]))
    v = sep[best]
    return best, v["sigmas"] >= SEPARATION_SIGMAS and (v["gap_closed"] or 0) >= SEPARATION_GAP


def headline(results: dict[str, Any], sep: dict[str, dict[str, float]], best: str | None, separates: bool) -> str:
    """One line for the top of the report: whether the instrument (teacher, separation) can be trusted."""
    missed = results.get("teacher_shortfalls") or []
    parts = [f"**Weak teacher**: it misses its target ({'; '.join(missed)})."] if missed else []
    if sep and all(v["gap_closed"] is None for v in sep.values()) and results.get("teacher", {}).get("metrics"):
        parts.append("**No gap**: ground truth is not below the teacher on the headline metric: nothing to close.")
    if best is None:
        parts.append("No distillation method ran beside gt: nothing to separate.")
    elif separates:
        v = sep[best]
        parts.append(
            f"**Separates**: {best} is {v['sigmas']:+.1f} pooled σ above gt and closes "
            f"{100 * v['gap_closed']:.0f} % of the gap to the teacher."
        )
    else:
        parts.append(
            f"**Does not separate**: no method is ≥ {SEPARATION_SIGMAS:g} pooled σ above gt while closing "
            f"≥ {100 * SEPARATION_GAP:.0f} % of the gap to the teacher (best: {best}); read the table as inconclusive."
        )
    return " ".join(parts)


def _fmt(x: float, metric: str) -> str:
    if metric in PERCENT:
        return f"{100 * x:.1f}"
    return f"{x:.3f}" if metric == "cider" else f"{x:.2f}"


def _relative(path: str, root: Path) -> str:
    p = Path(path)
    return str(p.relative_to(root)) if p.is_relative_to(root) else path


def table_metrics(results: dict[str, Any]) -> list[str]:
    """The table's metrics, the headline first: the task's (:data:`TABLE_METRICS`), else those the runs
    logged; a system comparison's ``system.metric`` (``results["headline"]``) leads either way."""
    logged = list(dict.fromkeys(name for s in results["summary"] for name in s if isinstance(s[name], dict)))
    known = TABLE_METRICS.get(results.get("task") or "vqa")
    metrics = [m for m in known if m in logged] if known else logged
    head = results.get("headline")
    if head and head in logged:
        metrics = [head] + [m for m in metrics if m != head]
    return metrics


def write_report(results: dict[str, Any], out: Path) -> None:
    """Write results.md (table, separation from gt, gap to teacher) and results.png (bars with std)."""
    metrics = table_metrics(results)
    main = metrics[0] if metrics else None
    teacher = results["teacher"].get("metrics", {})
    sep = separation(results["summary"], teacher, main) if main else {}
    best, separates = verdict(sep)
    lines = [
        f"# {results['name']}: {results.get('task_description', '')}".rstrip(": "),
        "",
        headline(results, sep, best, separates),
        "",
        f"preset `{results['preset']}`, {results['seeds']} seed(s), evaluated on the **{results['split']}** "
        f"split; student {results['student']}, {results['train'].get('max_steps')} steps each. Percentages: "
        f"{', '.join(m for m in metrics if m in PERCENT) or 'none'}.",
        "",
        "| method | "
        + " | ".join(f"{m} mean ± std" for m in metrics)
        + " | vs gt (pooled σ) | gap closed | params | train s | teacher |",
        "|---|" + "---|" * (len(metrics) + 5),
    ]
    t_params = results["teacher"].get("params", "")
    lines.append(
        "| teacher | "
        + " | ".join(_fmt(teacher[m], m) if m in teacher else "" for m in metrics)
        + f" | | | {t_params:,} | {results['teacher'].get('train_time_s', '')} | |"
        if isinstance(t_params, int)
        else "| teacher |" + " |" * (len(metrics) + 5)
    )
    for s in results["summary"]:
        one_seed = s.get("n", 2) < 2  # no spread: n/a, not a measured ± 0
        cells = [
            f"{_fmt(s[m]['mean'], m)} ± {'n/a' if one_seed else _fmt(s[m]['std'], m)}" if m in s else ""
            for m in metrics
        ]
        v = sep.get(s["method"])
        sig = "" if v is None else ("n/a (1 seed)" if math.isnan(v["sigmas"]) else f"{v['sigmas']:+.1f}")
        gap = "" if v is None or v["gap_closed"] is None else f"{100 * v['gap_closed']:.0f} %"
        lines.append(
            f"| {s['method']} | "
            + " | ".join(cells)
            + f" | {sig} | {gap} | {s['params']:,} | {s['train_time_s']} | {s.get('teacher', '')} |"
        )
    if best is not None:
        v = sep[best]
        gap_text = "n/a" if v["gap_closed"] is None else f"{100 * v['gap_closed']:.0f} %"
        lines += [
            "",
            f"Best distillation method: **{best}**, "
            + ("(σ unknown with one seed)" if math.isnan(v["sigmas"]) else f"{v['sigmas']:+.1f} pooled σ above gt")
            + f", closing {gap_text} of "
            f"the gap to the teacher: the comparison **{'separates' if separates else 'does not separate'}** "
            f"the methods (criterion: ≥ {SEPARATION_SIGMAS:g} σ and ≥ {100 * SEPARATION_GAP:.0f} %).",
        ]
    ha = [r for r in results["runs"] if r.get("head_alignment")]
    chart = "Chart: `results.png`."
    if ha:
        chart += " Head alignment of the AMAD student (seed 0) at its first, middle and last step: " + ", ".join(
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

    summary = [s for s in results["summary"] if metric in s]
    names = [s["method"] for s in summary]
    means = [s[metric]["mean"] for s in summary]
    stds = [s[metric]["std"] for s in summary]
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 3.6))
    colors = ["tab:red" if s.get("is_amad") else "tab:gray" for s in summary]
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
