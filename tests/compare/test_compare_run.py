"""The main job end to end: `amad compare --preset smoke` (what CI runs), its outputs, and resume."""

from __future__ import annotations

import json

import pytest

from amad.cli import main

CONFIG = "experiments/compare/easyvqa_blip.yaml"
METHODS = ["gt", "kd", "one_to_one", "head_mean", "minilm_relation", "amad"]


@pytest.mark.slow
def test_compare_smoke_writes_results_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AMAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "out"
    assert main(["compare", "--config", CONFIG, "--out", str(out), "--preset", "smoke"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"task", "model", "teacher", "runs", "summary"} <= set(results)
    assert results["task"] == "vqa" and results["model"] == "blip-vqa"
    assert {"metrics", "params", "heads"} <= set(results["teacher"])
    assert [r["method"] for r in results["runs"]] == METHODS
    for r in results["runs"]:
        assert {"method", "seed", "metrics", "params", "train_time_s"} <= set(r)
        assert 0.0 <= r["metrics"]["vqa_acc"] <= 1.0
    assert all(s["vqa_acc"]["std"] == 0.0 and "mean" in s["vqa_acc"] for s in results["summary"])
    assert [s["is_amad"] for s in results["summary"]] == [m == "amad" for m in METHODS], "asked of the method"
    table = (out / "results.md").read_text()
    assert all(f"| {m} |" in table for m in METHODS) and "| teacher |" in table
    assert (out / "results.png").is_file()
    snapshots = json.loads((out / "heatmaps" / "amad" / "snapshots.json").read_text())
    assert sorted(map(int, snapshots)) == [0, 2, 5], "first, middle and last step"
    assert sorted(p.name for p in (out / "heatmaps" / "amad" / "step5").glob("*.png"))
    assert {r["teacher"] for r in results["runs"]} == {"unused", "cached", "live"}  # gt; maps and KD; MiniLMv2
    assert (out / "logs" / "amad-seed0.log").is_file()
    assert list((out / "wandb").glob("offline-run-*")), "runs are tracked in W&B (offline)"
    teacher_dirs = list((tmp_path / "cache" / "teachers").iterdir())
    assert len(teacher_dirs) == 1 and (teacher_dirs[0] / "teacher.json").is_file()

    # Resume: drop one run; a second invocation redoes only that one and reuses the cached teacher.
    (out / "runs" / "amad-seed0.json").unlink()
    capsys.readouterr()
    assert main(["compare", "--config", CONFIG, "--out", str(out), "--preset", "smoke", "--logger", "none"]) == 0
    log = capsys.readouterr().out
    assert "teacher: reusing" in log
    assert log.count("done already") == len(METHODS) - 1
    assert "[1/1] amad seed 0: vqa_acc" in log, log
