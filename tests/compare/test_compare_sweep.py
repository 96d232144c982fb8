"""`amad sweep`: a grid of comparisons, every student scored on val (to choose) and test (to report)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from amad.compare.config import method_attention
from amad.compare.sweep import cell_config, cells, load_sweep, parse_cells, parse_grid
from amad.compare.sweep_report import choose, figure_lines, sweep_figure, sweep_table, tau_families

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
    assert amad2["weight_uniform"] == 0.5 and 0.0 <= amad2["weight_row_range"]["mean"] <= 1.0
    assert 0.0 <= amad2["head_diversity"]["end"]["mean"] <= 1.0 and amad2["attn_loss"]["start"]["mean"] > 0
    assert report["rows"][1]["head_diversity"]["end"] == {}, "one head: no pair to compare"
    # the teacher's heads once, per site and layer, from the same fixed batch
    similarity = report["teacher_head_similarity"]
    assert similarity and all(0 <= c <= 1 + 1e-6 for layers in similarity.values() for c in layers if c is not None)
    assert "Teacher heads: mean pairwise cosine" in (out / "sweep.md").read_text()
    assert (out / "sweep.png").stat().st_size > 0
    assert "| 2 | random | amad | 1 |" in (out / "sweep.md").read_text() and "± n/a" in (out / "sweep.md").read_text()


def _row(method, val, test, heads=2, init="random", n=3):
    return {
        "num_heads": heads,
        "init": init,
        "method": method,
        "metric": "vqa_acc",
        "n": n,
        "val": {"mean": val, "std": 0.01 if n > 1 else None},
        "test": {"mean": test, "std": 0.02 if n > 1 else None},
    }


def test_amad_temperature_is_chosen_per_cell_on_val_never_on_test(tmp_path):
    sweep = load_sweep(str(ROOT / "experiments/sweeps/amad_heads.yaml"))
    families = tau_families(sweep["methods"])
    assert families == {"amad": ["amad_t1", "amad_t0.3", "amad_t0.1"]}, "one-to-one, gt... are no family"
    rows = [
        _row("one_to_one", 0.70, 0.71),
        _row("amad_t1", 0.60, 0.90, n=1),  # best on test: must not be chosen
        _row("amad_t0.3", 0.72, 0.65),
        _row("amad_t0.1", 0.65, 0.70, n=1),
        _row("one_to_one", 0.70, 0.71, heads=4),
        _row("amad_t1", 0.80, 0.75, heads=4),
        _row("amad_t0.3", 0.72, 0.80, heads=4),
    ]
    choices = choose(rows, families, ["num_heads", "init"])
    assert [(c["num_heads"], c["chosen"]) for c in choices] == [(2, "amad_t0.3"), (4, "amad_t1")]
    report = {"name": "t", "grid": {"num_heads": [2, 4], "init": ["random"]}, "rows": rows, "families": families}
    lines = figure_lines(report)[(("init", "random"),)]
    assert set(lines) == {"one_to_one", "amad"}, "one line for the family, named after it"
    assert lines["amad"] == [(2, 0.65, 0.02), (4, 0.75, 0.02)]
    assert "| 2 | random | amad_t0.3 * | 3 |" in sweep_table({**report, "choices": choices})
    assert sweep_figure(report, tmp_path / "sweep.png").stat().st_size > 0


def test_the_temperature_is_chosen_on_the_seeds_every_temperature_ran():
    """A τ repeated at 3 seeds is weighed against the others on their common seed, not by its 3-seed mean
    (which could hand the choice to a τ with one lucky seed)."""
    families = {"amad": ["amad_t1", "amad_t0.1"]}
    t01 = {**_row("amad_t0.1", 0.914, 0.92), "val_by_seed": {"0": 0.922, "1": 0.921, "2": 0.899}}
    t1 = {**_row("amad_t1", 0.916, 0.92, n=1), "val_by_seed": {"0": 0.916}}
    (choice,) = choose([t01, t1], families, ["num_heads", "init"])
    assert choice["chosen"] == "amad_t0.1" and choice["on_seeds"] == [0]
    assert t01.get("chosen") == "amad" and "chosen" not in t1
    # rows without per-seed values (older sweep.json): their means, as before
    (old,) = choose([_row("amad_t0.1", 0.914, 0.9), _row("amad_t1", 0.916, 0.9, n=1)], families, ["num_heads"])
    assert old["chosen"] == "amad_t1" and old["on_seeds"] is None


def test_the_figure_has_one_panel_per_init(tmp_path):
    rows = [_row("gt", 0.5, 0.5, heads=h, init=i) for h in (1, 2) for i in ("random", "teacher")]
    panels = figure_lines({"grid": {"num_heads": [1, 2], "init": ["random", "teacher"]}, "rows": rows})
    assert list(panels) == [(("init", "random"),), (("init", "teacher"),)]
    assert [p[0] for p in panels[(("init", "teacher"),)]["gt"]] == [1, 2]
    one_cell = {"grid": {"num_heads": [2], "init": ["random"]}, "rows": [_row("gt", 0.5, 0.5), _row("amad", 0.6, 0.6)]}
    assert sweep_figure(one_cell, tmp_path / "one.png").stat().st_size > 0, "methods side by side"


def test_the_table_shows_the_diagnostics_and_the_teacher_heads_once():
    row = {
        **_row("amad_t1", 0.6, 0.6),
        "attn_loss": {"start": {"mean": 0.5, "std": 0.1}, "end": {"mean": 0.25, "std": 0.05}},
        "head_diversity": {"start": {"mean": 0.1, "std": None}, "end": {"mean": 0.4, "std": None}},
        "weight_row_range": {"mean": 0.3, "std": 0.02},
    }
    report = {
        "grid": {"num_heads": [2], "init": ["random"]},
        "rows": [row, _row("gt", 0.5, 0.5)],
        "teacher_head_similarity": {"vision.self": [0.9, 0.7], "text.cross": [0.5, None]},
    }
    table = sweep_table(report)
    assert (
        "| 2 | random | amad_t1 | 3 | 60.0 ± 1.0 | 60.0 ± 2.0 | 0.5000 → 0.2500 | 0.100 → 0.400 | 0.300 ± 0.020 |"
        in table
    )
    assert "| 2 | random | gt | 3 | 50.0 ± 1.0 | 50.0 ± 2.0 |  |  |  |" in table
    assert "| vision.self | 0.900 | 0.700 |" in table and "| text.cross | 0.500 |  |" in table
    assert "over all layers 0.700" in table and table.count("Teacher heads") == 1


def test_the_variants_study_is_one_cell_given_in_the_file_or_on_the_command_line():
    path = str(ROOT / "experiments/sweeps/amad_variants.yaml")
    sweep = load_sweep(path)
    assert cells(sweep) == [{"num_heads": 8, "init": "teacher"}]  # the cell chosen on val (the file says why)
    methods = sweep["methods"]
    assert {"amad", "amad_l2", "amad_token", "amad_proj", "one_to_one", "one_to_one_g3", "one_to_one_g10"} <= set(
        methods
    )
    assert [methods[m]["gamma"] for m in ("one_to_one", "one_to_one_g3", "one_to_one_g10")] == [1.0, 3.0, 10.0]
    attention = {m: method_attention(e) for m, e in methods.items()}
    assert {attention[m].variant for m in ("amad", "amad_l2", "amad_token")} == {"kl", "l2", "token"}
    taus = {a.weight_temperature for a in attention.values() if a is not None and a.is_amad}
    assert taus == {0.1}, "every AMAD variant at the one temperature chosen on val at that cell"
    assert sweep["seeds"] == 3
    moved = load_sweep(path, parse_grid(["num_heads=2", "init=random"]))
    assert cells(moved) == [{"num_heads": 2, "init": "random"}]
    with pytest.raises(ValueError, match=r"grid\.num_heads\[0\]: expected an integer"):
        load_sweep(path, parse_grid(["num_heads=four"]))
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_grid(["num_heads"])
