"""The results table's separation statistics: pooled σ above ground truth and the share of the gap closed."""

from __future__ import annotations

import math

import pytest

from amad.compare.report import separation, summarise, verdict


def _runs(method, values):
    return [
        {"method": method, "seed": i, "params": 1, "train_time_s": 1.0, "metrics": {"vqa_acc": v}}
        for i, v in enumerate(values)
    ]


def test_separation_in_pooled_sigmas_and_gap_closed():
    runs = _runs("gt", [0.60, 0.62, 0.64]) + _runs("amad", [0.70, 0.72, 0.74]) + _runs("kd", [0.61, 0.63, 0.65])
    summary = summarise(runs, ["gt", "kd", "amad"])
    sep = separation(summary, {"vqa_acc": 0.92}, "vqa_acc")
    assert set(sep) == {"kd", "amad"}
    assert sep["amad"]["sigmas"] == pytest.approx(0.10 / 0.02)  # both stds 0.02
    assert sep["amad"]["gap_closed"] == pytest.approx(0.10 / 0.30)
    best, separates = verdict(sep)
    assert best == "amad" and separates
    assert verdict({"kd": sep["kd"]}) == ("kd", False)


def test_zero_spread_and_no_gap_do_not_divide_by_zero():
    summary = summarise(_runs("gt", [0.5, 0.5]) + _runs("amad", [0.6, 0.6]), ["gt", "amad"])
    sep = separation(summary, {"vqa_acc": 0.5}, "vqa_acc")
    assert sep["amad"]["sigmas"] == math.inf and sep["amad"]["gap_closed"] is None


def test_a_teacher_not_above_gt_leaves_no_gap_to_close():
    # e.g. CIDEr of teacher-initialised captioning students (3.51) above their teacher's (3.43): a method
    # falling below gt must not read as closing 191 % of a negative gap
    from amad.compare.report import headline

    runs = _runs("gt", [3.50, 3.52]) + _runs("one_to_one", [3.35, 3.37]) + _runs("kd", [3.54, 3.56])
    summary = summarise(runs, ["gt", "kd", "one_to_one"])
    sep = separation(summary, {"vqa_acc": 3.43}, "vqa_acc")
    assert all(v["gap_closed"] is None for v in sep.values())
    best, separates = verdict(sep)
    assert best == "kd" and not separates  # chosen by sigmas when no method closes a gap
    line = headline({"teacher": {"metrics": {"vqa_acc": 3.43}}}, sep, best, separates)
    assert line.startswith("**No gap**") and "Does not separate" in line


def test_one_seed_has_no_spread_and_never_separates():
    summary = summarise(_runs("gt", [0.5]) + _runs("amad", [0.9]), ["gt", "amad"])
    sep = separation(summary, {"vqa_acc": 0.95}, "vqa_acc")
    assert math.isnan(sep["amad"]["sigmas"]) and sep["amad"]["gap_closed"] == pytest.approx(0.4 / 0.45)
    assert verdict(sep) == ("amad", False)
    assert separation(summarise(_runs("amad", [0.6]), ["amad"]), {}, "vqa_acc") == {}


def _results(values_gt, values_amad, shortfalls=()):
    runs = _runs("gt", values_gt) + _runs("amad", values_amad)
    return {
        "name": "x",
        "task": "vqa",
        "preset": "default",
        "seeds": len(values_gt),
        "split": "test",
        "student": {},
        "train": {"max_steps": 1},
        "teacher": {"metrics": {"vqa_acc": 0.92}, "params": 10, "train_time_s": 1},
        "teacher_shortfalls": list(shortfalls),
        "runs": runs,
        "summary": summarise(runs, ["gt", "amad"]),
    }


@pytest.mark.parametrize(
    ("gt", "amad", "shortfalls", "first"),
    [
        ([0.60, 0.62, 0.64], [0.70, 0.72, 0.74], [], "**Separates**: amad is +5.0 pooled σ above gt and closes 33 %"),
        ([0.60, 0.62, 0.64], [0.61, 0.63, 0.65], [], "**Does not separate**"),
        ([0.60, 0.62, 0.64], [0.70, 0.72, 0.74], ["vqa_acc 0.9200 < 0.95"], "**Weak teacher**: it misses its target"),
    ],
)
def test_the_report_says_in_its_first_line_whether_the_instrument_can_be_trusted(tmp_path, gt, amad, shortfalls, first):
    from amad.compare.report import write_report

    write_report(_results(gt, amad, shortfalls), tmp_path)
    line = (tmp_path / "results.md").read_text().splitlines()[2]
    assert line.startswith(first), line
    table = (tmp_path / "results.md").read_text().split("| method |", 1)[1].splitlines()
    assert table[2].startswith("| teacher | 92.0"), "the teacher's metric is the table's first row"


def test_results_name_the_commit_of_the_code_that_made_them():
    import subprocess

    from amad.compare.run import source_commit

    commit = source_commit()
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert commit is not None and commit.split("+")[0] == head


def test_a_one_seed_table_prints_no_spread(tmp_path):
    from amad.compare.report import write_report

    write_report(_results([0.60], [0.70]), tmp_path)
    table = (tmp_path / "results.md").read_text()
    assert "| gt | 60.0 ± n/a |" in table and "| amad | 70.0 ± n/a |" in table and "± 0.0" not in table
    write_report(_results([0.60, 0.62], [0.70, 0.74]), tmp_path)
    assert "| amad | 72.0 ± 2.8 |" in (tmp_path / "results.md").read_text()


def test_a_shipped_teacher_is_scored_again_only_for_a_table_metric_it_lacks():
    import json
    from pathlib import Path

    from amad.compare.run import missing_table_metrics

    root = Path(__file__).parents[2] / "experiments/teachers"
    record = json.loads((root / "easyvqa_blip/teacher.json").read_text())
    assert missing_table_metrics("vqa", record) == set()  # its record is complete: its test metrics are kept
    translate = json.loads((root / "shapes-translate_blip/teacher.json").read_text())
    assert missing_table_metrics("translate", translate) == {"bleu4"}  # shipped before bleu4 was reported
    assert missing_table_metrics("classify", {}) == {"acc"}
