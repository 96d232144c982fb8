"""`amad sweep`: a grid of comparisons, every student scored on val (to choose) and test (to report)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from amad.compare.sweep import cell_config, cells, load_sweep

ROOT = Path(__file__).parents[2]


def test_the_shipped_sweep_expands_to_its_grid():
    path = ROOT / "experiments/sweeps/amad_heads.yaml"
    sweep = load_sweep(str(path))
    grid = cells(sweep)
    assert len(grid) == 6 and {c["num_heads"] for c in grid} == {1, 2, 4}
    cfg = cell_config(sweep, grid[0], str(path))
    assert cfg["student"]["num_heads"] == 1 and cfg["student"]["hidden_size"] == 128
    assert set(cfg["methods"]) == {"one_to_one", "head_mean", "amad_t1", "amad_t0.3", "amad_t0.1"}
    assert cfg["teacher"]["path"] == "experiments/teachers/easyvqa_blip", "the comparison's own teacher"


def test_a_grid_key_that_is_not_a_student_setting_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"comparison": "x.yaml", "grid": {"heads": [1]}, "methods": {}}))
    with pytest.raises(ValueError, match="heads"):
        load_sweep(str(bad))


@pytest.mark.slow
def test_a_tiny_sweep_runs_and_scores_val_and_test(tmp_path, monkeypatch):
    from amad.cli import main

    monkeypatch.setenv("AMAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    base = {
        "base": str(ROOT / "experiments/compare/easyvqa_blip.yaml"),
        "name": "tiny_base",
        "data": {"init_args": {"fraction": 0.02, "eval_subset": 16}},
        "teacher": {
            "path": None,
            "model": {"preset": "tiny"},
            "pretrain": None,  # the comparison's own staged recipe is not what these tests are about
            "freeze": None,
            "max_steps": 2,
            "data": {"init_args": {"fraction": 0.01, "eval_subset": 16}},
        },
        "train": {"max_steps": 3},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {
        "comparison": "base.yaml",
        "name": "tiny",
        "seeds": 1,
        "student": {"num_layers": 1, "hidden_size": 32, "intermediate_size": 64},
        "grid": {"num_heads": [1, 2], "init": ["random"]},
        "methods": {"one_to_one": {"attention": "amad.losses.OneToOne"}, "amad": {"attention": "amad.losses.AMAD"}},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    out = tmp_path / "out"
    assert main(["sweep", "--config", str(tmp_path / "sweep.yaml"), "--out", str(out)]) == 0
    report = json.loads((out / "sweep.json").read_text())
    assert [(r["num_heads"], r["method"]) for r in report["rows"]] == [
        (1, "one_to_one"),
        (1, "amad"),
        (2, "one_to_one"),
        (2, "amad"),
    ]
    assert all(r["val"] and r["test"] for r in report["rows"])
    amad2 = report["rows"][3]
    assert amad2["weight_spread"]["uniform"] == 0.5 and 0.0 <= amad2["head_diversity"] <= 1.0
    assert report["rows"][1]["head_diversity"] is None, "one head: no pair to compare"
    assert "| 2 | random | amad |" in (out / "sweep.md").read_text()
