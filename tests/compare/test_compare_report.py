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


def test_one_seed_has_no_spread_and_never_separates():
    summary = summarise(_runs("gt", [0.5]) + _runs("amad", [0.9]), ["gt", "amad"])
    sep = separation(summary, {"vqa_acc": 0.95}, "vqa_acc")
    assert math.isnan(sep["amad"]["sigmas"]) and sep["amad"]["gap_closed"] == pytest.approx(0.4 / 0.45)
    assert verdict(sep) == ("amad", False)
    assert separation(summarise(_runs("amad", [0.6]), ["amad"]), {}, "vqa_acc") == {}
