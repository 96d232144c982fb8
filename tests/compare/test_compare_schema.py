"""The comparison and sweep YAMLs are typed: a misspelt key fails at load in one line, `--print_config`
prints a config that loads back as the same one, every shipped YAML fits, and methods are told apart by
their attention method, never by their name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from amad.cli import main
from amad.compare.config import comparison_settings, load_compare_config, method_attention, ordered_methods
from amad.compare.sweep import load_sweep, sweep_settings
from amad.compare.teacher import teacher_fingerprint
from amad.losses import AMAD, METHODS, AMADProjection, OneToOne

ROOT = Path(__file__).parents[2]
BLIP = ROOT / "experiments/compare/easyvqa_blip.yaml"
COMPARES = [p for p in sorted((ROOT / "experiments/compare").rglob("*.yaml")) if p.name != "base.yaml"]
SWEEPS = sorted((ROOT / "experiments/sweeps").glob("*.yaml"))

# (override of the comparison, the misspelt key's path, the key it should have been)
MISSPELT = [
    ({"seed": 2}, "seed", "seeds"),
    ({"data": {"init_args": {"fracton": 0.1}}}, "data.init_args.fracton", "fraction"),
    ({"teacher": {"max_step": 5}}, "teacher.max_step", "max_steps"),
    ({"teacher": {"model": {"imag_size": 32}}}, "teacher.model.imag_size", "image_size"),
    ({"teacher": {"data": {"init_args": {"eval_subst": 8}}}}, "teacher.data.init_args.eval_subst", "eval_subset"),
    (
        {"teacher": {"pretrain": {"attributes": {"bach_size": 8}}}},
        "teacher.pretrain.attributes.bach_size",
        "batch_size",
    ),
    ({"student": {"num_head": 2}}, "student.num_head", "num_heads"),
    ({"train": {"max_step": 5}}, "train.max_step", "max_steps"),
    ({"methods": {"amad": {"gama": 2.0}}}, "methods.amad.gama", "gamma"),
    (
        {"methods": {"amad": {"attention": {"class_path": "amad.losses.AMAD", "init_args": {"weight_temp": 0.3}}}}},
        "methods.amad.attention.init_args.weight_temp",
        "weight_temperature",
    ),
    ({"methods": {"amad": {"attention": "amad.losses.AMADD"}}}, "methods.amad.attention", "amad.losses.AMAD"),
    ({"run_methods": ["gt", "amda"]}, "run_methods[1]", "amad"),
    ({"presets": {"smoke": {"train": {"max_step": 5}}}}, "presets.smoke: train.max_step", "max_steps"),
]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("amad: error: "), err
    return lines[0]


@pytest.mark.parametrize(("override", "key", "valid"), MISSPELT, ids=[m[1] for m in MISSPELT])
def test_a_misspelt_comparison_key_fails_at_load_in_one_line(override, key, valid, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({"base": str(BLIP), **override}))
    assert main(["compare", "--config", str(path), "--out", str(tmp_path / "never")]) == 2
    line = _one_error_line(capsys)
    assert f"{path}: {key}: " in line and repr(valid) in line, line
    assert not (tmp_path / "never").exists(), "nothing ran"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"train": {"max_steps": "many"}}, "train.max_steps: expected an integer, got 'many'"),
        ({"train": {"schedule": "cosin"}}, "train.schedule: expected one of 'linear', 'cosine', 'constant'"),
        ({"methods": {"amad": {"gamma": "much"}}}, "methods.amad.gamma: Expected a <class 'float'>"),
        ({"teacher": {"model": {"family": "blip"}}}, "teacher.model.family: unknown model family 'blip'"),
        ({"methods": {"amad": {"lr": 0.1}}}, "methods.amad: ['lr'] are set by the comparison"),
        ({"teacher": {"path": None, "max_steps": None}}, "teacher.max_steps: required key missing"),
    ],
)
def test_a_mistyped_comparison_value_fails_in_one_line(override, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({"base": str(BLIP), **override}))
    assert main(["compare", "--config", str(path), "--out", str(tmp_path / "never")]) == 2
    assert expected in _one_error_line(capsys)


def _sweep(tmp_path: Path, **override) -> Path:
    sweep = yaml.safe_load((ROOT / "experiments/sweeps/amad_heads.yaml").read_text())
    sweep["comparison"] = str(BLIP)
    for key, value in override.items():
        sweep[key] = {**sweep.get(key, {}), **value} if isinstance(value, dict) and key != "grid" else value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("override", "key", "valid"),
    [
        ({"seed": 2}, "seed", "seeds"),
        ({"student": {"hiden_size": 64}}, "student.hiden_size", "hidden_size"),
        ({"train": {"max_step": 5}}, "train.max_step", "max_steps"),
        ({"grid": {"num_head": [1, 2]}}, "grid.num_head", "num_heads"),
        ({"methods": {"kd": {"kd_temprature": 2.0}}}, "methods.kd.kd_temprature", "kd_temperature"),
    ],
    ids=["top", "student", "train", "grid", "methods"],
)
def test_a_misspelt_sweep_key_fails_at_load_in_one_line(override, key, valid, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = _sweep(tmp_path, **override)
    assert main(["sweep", "--config", str(path), "--out", str(tmp_path / "never")]) == 2
    line = _one_error_line(capsys)
    assert f"{path}: {key}: " in line and repr(valid) in line, line


def test_a_sweep_grid_value_of_the_wrong_type_and_a_cell_outside_the_grid_fail(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = _sweep(tmp_path, grid={"num_heads": [1, "two"], "init": ["random"]})
    assert main(["sweep", "--config", str(path), "--out", str(tmp_path / "never")]) == 2
    assert "grid.num_heads[1]: expected an integer, got 'two'" in _one_error_line(capsys)
    shipped = str(ROOT / "experiments/sweeps/amad_heads.yaml")
    assert main(["sweep", "--config", shipped, "--out", str(tmp_path / "never"), "--cells", "num_heads=3"]) == 2
    assert "'3' is not a value of num_heads" in _one_error_line(capsys)
    assert main(["sweep", "--config", shipped, "--out", str(tmp_path / "never"), "--methods", "amad"]) == 2
    assert "['amad'] are not in the sweep" in _one_error_line(capsys)


@pytest.mark.parametrize("path", COMPARES, ids=lambda p: p.stem)
def test_every_shipped_comparison_and_preset_fits_the_schema(path):
    # load_compare_config checks the file and every preset against the schema
    cfg = load_compare_config(str(path))
    assert cfg["methods"] and cfg["preset"] == "default"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_shipped_sweep_fits_the_schema(path):
    sweep = load_sweep(str(path))  # every cell's comparison is checked too
    assert Path(sweep["comparison"]).is_file()


def _printed(argv: list[str], capsys) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("preset", ["default", "smoke"])
def test_compare_print_config_round_trips(preset, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    printed = _printed(["compare", "--config", str(BLIP), "--preset", preset, "--print_config"], capsys)
    settings = yaml.safe_load(printed)
    # defaults filled in: every DistillationModule option and the attention method's own
    amad = settings["methods"]["amad"]
    assert amad["kd_temperature"] == 2.0 and amad["attention"]["init_args"]["weight_temperature"] == 1.0
    assert settings["train"]["weight_decay"] == 0.01 and settings["student"]["layer_map"] == "uniform"
    copy = tmp_path / "printed.yaml"
    copy.write_text(printed)
    assert _printed(["compare", "--config", str(copy), "--print_config"], capsys) == printed
    original, reread = load_compare_config(str(BLIP), preset), load_compare_config(str(copy))
    assert comparison_settings(reread) == comparison_settings(original)
    facts = {"source": "stand-in"}
    assert teacher_fingerprint(reread, facts) == teacher_fingerprint(original, facts), "the same teacher recipe"


def test_sweep_print_config_round_trips_and_shows_the_part_asked_for(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    shipped = "experiments/sweeps/amad_heads.yaml"
    argv = ["sweep", "--config", shipped, "--print_config", "--cells", "num_heads=4,8", "--methods", "gt,amad_t0.3"]
    printed = _printed(argv, capsys)
    settings = yaml.safe_load(printed)
    assert settings["grid"] == {"num_heads": [4, 8], "init": ["random", "teacher"]}
    assert list(settings["methods"]) == ["gt", "amad_t0.3"] and settings["seeds"] == 3
    copy = tmp_path / "printed.yaml"
    copy.write_text(printed)
    assert _printed(["sweep", "--config", str(copy), "--print_config"], capsys) == printed
    assert sweep_settings(load_sweep(str(copy)), str(copy)) == settings


def test_methods_are_told_apart_by_their_attention_method_not_their_name():
    assert AMAD.is_amad and AMADProjection.is_amad and AMAD.has_head_weights and AMADProjection.has_head_weights
    assert not any(cls.is_amad or cls.has_head_weights for cls in METHODS.values() if cls not in (AMAD, AMADProjection))
    methods = {
        "amad_like": {"attention": "amad.losses.OneToOne"},  # named like AMAD, is one-to-one
        "mine": {},  # DistillationModule's default attention: AMAD
        "gt": {"beta": 0.0, "attention": None},
        "one_to_one": {"attention": "amad.losses.OneToOne"},
        "head_mean": {"attention": "amad.losses.HeadMean"},
        "proj": {"attention": "amad.losses.AMADProjection"},
    }
    assert isinstance(method_attention(methods["amad_like"]), OneToOne)
    assert method_attention(methods["gt"]) is None and method_attention(methods["mine"]).is_amad
    assert ordered_methods(methods) == ["gt", "amad_like", "one_to_one", "head_mean", "mine", "proj"]
