"""`amad sweep`: a grid of comparisons, every student scored on val (to choose) and test (to report)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from amad.compare.config import method_attention
from amad.compare.sweep import cell_config, cells, load_sweep, parse_cells, sweep_table

ROOT = Path(__file__).parents[2]


def test_the_shipped_sweep_expands_to_its_grid():
    """Issue 24's grid: Hs in {1, 2, 4, 8} x init, the references gt and kd, one-to-one, head-mean and AMAD
    at three weight temperatures."""
    path = ROOT / "experiments/sweeps/amad_heads.yaml"
    sweep = load_sweep(str(path))
    grid = cells(sweep)
    assert len(grid) == 8 and {c["num_heads"] for c in grid} == {1, 2, 4, 8}
    assert {c["init"] for c in grid} == {"random", "teacher"}
    cfg = cell_config(sweep, grid[0], str(path))
    assert cfg["student"]["num_heads"] == 1 and cfg["student"]["hidden_size"] == 128
    assert list(cfg["methods"]) == ["gt", "kd", "one_to_one", "head_mean", "amad_t1", "amad_t0.3", "amad_t0.1"]
    attention = [method_attention(m) for m in cfg["methods"].values()]
    assert [a.weight_temperature for a in attention if a is not None and a.is_amad] == [1.0, 0.3, 0.1]
    assert cfg["teacher"]["path"] == "experiments/teachers/easyvqa_blip", "the comparison's own teacher"
    assert cfg["name"] == "easyvqa_blip", "every cell shares the comparison's teacher cache"


def test_a_grid_key_that_is_not_a_student_setting_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    comparison = str(ROOT / "experiments/compare/easyvqa_blip.yaml")
    bad.write_text(yaml.safe_dump({"comparison": comparison, "grid": {"heads": [1]}, "methods": {}}))
    with pytest.raises(ValueError, match=r"grid\.heads: unknown key; did you mean 'num_heads'"):
        load_sweep(str(bad))


def test_cells_from_the_command_line_pick_part_of_the_grid():
    grid = {"num_heads": [1, 2, 4, 8], "init": ["random", "teacher"]}
    only = parse_cells(["num_heads=4,8", "init=teacher"], grid)
    assert only == {"num_heads": [4, 8], "init": ["teacher"]}
    assert cells({"grid": grid}, only) == [{"num_heads": 4, "init": "teacher"}, {"num_heads": 8, "init": "teacher"}]
    assert len(cells({"grid": grid}, parse_cells(["num_heads=1", "num_heads=2"], grid))) == 4
    for spec, match in [("heads=4", "did you mean 'num_heads'"), ("num_heads=3", "'3' is not a value"), ("x", "KEY")]:
        with pytest.raises(ValueError, match=match):
            parse_cells([spec], grid)


def test_one_seed_prints_its_spread_as_unknown_not_zero():
    row = {"num_heads": 2, "method": "amad", "n": 1, "val": {"mean": 0.5, "std": None}}
    report = {
        "grid": {"num_heads": [2, 4]},
        "rows": [{**row, "test": {"mean": 0.25, "std": None}}, {**row, "n": 2, "test": {"mean": 0.5, "std": 0.1}}],
        "missing": [{"num_heads": 4, "method": "amad"}],
    }
    table = sweep_table(report)
    assert "| 2 | amad | 1 | 50.0 ± n/a | 25.0 ± n/a |" in table
    assert "| 2 | amad | 2 | 50.0 ± n/a | 50.0 ± 10.0 |" in table
    assert "Not run yet (1 cell methods): num_heads4 (all)." in table


@pytest.mark.slow
def test_a_tiny_sweep_runs_in_sittings_and_scores_val_and_test(tmp_path, monkeypatch, capsys):
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
    # a first sitting: one cell; the sweep's tables already gather it and say what is left
    argv = ["sweep", "--config", str(tmp_path / "sweep.yaml"), "--out", str(out)]
    assert main([*argv, "--cells", "num_heads=2"]) == 0
    log = capsys.readouterr().out
    assert "[cell 1/1 num_heads2-initrandom] [2/2] amad seed 0: vqa_acc" in log, log
    report = json.loads((out / "sweep.json").read_text())
    assert [(r["num_heads"], r["method"]) for r in report["rows"]] == [(2, "one_to_one"), (2, "amad")]
    assert len(report["missing"]) == 2 and "Not run yet (2 cell methods)" in (out / "sweep.md").read_text()
    # the next sitting: the rest (the finished cell is not redone); one teacher for every cell
    assert main(argv) == 0
    log = capsys.readouterr().out
    assert log.count("done already") == 2 and "[cell 1/2 num_heads1-initrandom] [2/2] amad seed 0" in log
    assert len(list((tmp_path / "cache" / "teachers").iterdir())) == 1
    report = json.loads((out / "sweep.json").read_text())
    assert [(r["num_heads"], r["method"]) for r in report["rows"]] == [
        (1, "one_to_one"),
        (1, "amad"),
        (2, "one_to_one"),
        (2, "amad"),
    ]
    assert not report["missing"]
    assert all(r["val"]["mean"] is not None and r["test"] and r["val"]["std"] is None for r in report["rows"])
    amad2 = report["rows"][3]
    assert amad2["weight_spread"]["uniform"] == 0.5 and 0.0 <= amad2["head_diversity"] <= 1.0
    assert report["rows"][1]["head_diversity"] is None, "one head: no pair to compare"
    assert "| 2 | random | amad | 1 |" in (out / "sweep.md").read_text() and "± n/a" in (out / "sweep.md").read_text()
