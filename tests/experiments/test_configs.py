"""Every shipped YAML instantiates (model, data, trainer); the embedded ones also run fast_dev_run.

Real-data configs point at data that is not shipped: the test points them at the official-format
fixtures in tests/fixtures, and replaces every teacher by a tiny one saved with the data's tokenizer
(the embedded configs would otherwise train their comparison's teacher on first use).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from amad.compare.config import load_compare_config
from amad.config import load_config

ROOT = Path(__file__).parents[1]
EXP = ROOT / "experiments"
FIX = ROOT / "tests" / "fixtures"
LEAVES = sorted(p for p in EXP.glob("*/*/*.yaml") if p.parts[-3] not in ("base", "compare"))
COMPARES = sorted((EXP / "compare").glob("*.yaml"))
REAL_DATA = {
    "vqav2": {"root": FIX / "vqav2", "image_root": FIX / "coco", "image_size": 64},
    "coco-karpathy": {
        "dataset_json": FIX / "karpathy" / "dataset_coco.json",
        "image_root": FIX / "coco",
        "image_size": 64,
    },
    "multi30k": {"root": FIX / "multi30k", "image_root": FIX / "flickr30k-images", "image_size": 64},
}
FAST_DEV_RUN = {"amad.yaml", "teacher.yaml"}


def _generator():
    spec = importlib.util.spec_from_file_location("make_configs", EXP / "make_configs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_leaves_are_what_the_generator_writes():
    expected = dict(_generator().all_leaves())
    assert set(expected) == set(LEAVES), "run `python experiments/make_configs.py`"
    for path, text in expected.items():
        assert path.read_text() == text, f"{path} drifted from experiments/make_configs.py"


@pytest.fixture(scope="module")
def tiny_teachers(tmp_path_factory):
    """(family, data class, data init_args) -> a tiny teacher dir saved with that data's tokenizer."""
    from amad.compare.run import import_object
    from amad.models import build_model

    cache: dict = {}

    def get(family: str, data_cfg: dict) -> Path:
        key = (family, data_cfg["class_path"], str(sorted(data_cfg.get("init_args", {}).items())))
        if key not in cache:
            dm = import_object(data_cfg["class_path"])(**data_cfg.get("init_args", {}))
            torch.manual_seed(0)
            model = build_model(family, preset="tiny", tokenizer=dm.tokenizer)
            out = tmp_path_factory.mktemp("teacher")
            model.save_pretrained(out)
            cache[key] = out
        return cache[key]

    return get


def _family(cfg: dict, path: Path) -> str:
    task, model = path.parent.parent.name, path.parent.name
    gen = _generator()
    return gen.TASKS[task][1] if model == "blip" else "vlt5"


@pytest.mark.parametrize("path", LEAVES, ids=lambda p: str(p.relative_to(EXP)))
def test_config_instantiates(path, tmp_path, tiny_teachers, monkeypatch):
    from amad.lightning_cli import build_cli

    monkeypatch.setenv("AMAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    task = path.parent.parent.name
    cfg = load_config(path)
    data_cfg = cfg["data"]
    args = [
        "--config",
        str(path),
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    if task in REAL_DATA:
        data_cfg = {
            **data_cfg,
            "init_args": {**data_cfg["init_args"], **{k: str(v) for k, v in REAL_DATA[task].items()}},
        }
        args += [f"--data.init_args.{k}={v}" for k, v in REAL_DATA[task].items()]
    teacher_dir = tiny_teachers(_family(cfg, path), data_cfg)
    key = "model" if path.name == "teacher.yaml" else "teacher"
    args.append(f"--model.init_args.{key}={teacher_dir}")
    run_it = task not in REAL_DATA and path.name in FAST_DEV_RUN
    if run_it:
        args.append("--trainer.fast_dev_run=true")
    cli = build_cli(args, run=False)
    assert cli.model.task == cli.datamodule.task
    if run_it:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        assert torch.isfinite(cli.trainer.callback_metrics["train/loss_task"])


@pytest.mark.parametrize("path", [p for p in COMPARES if p.name != "base.yaml"], ids=lambda p: p.stem)
@pytest.mark.parametrize("preset", ["smoke", "default", "full"])
def test_compare_config_loads_and_its_data_and_student_build(path, preset):
    from amad.compare.run import import_object

    cfg = load_compare_config(str(path), preset)
    assert {"gt", "kd", "one_to_one", "head_mean", "minilm_relation", "amad"} <= set(cfg["methods"])
    if preset == "smoke":  # building the data is the expensive part: once per comparison
        dm = import_object(cfg["data"]["class_path"])(**cfg["data"]["init_args"])
        from amad.models import build_model, derive_student

        teacher = build_model(**{**cfg["teacher"]["model"]}, tokenizer=dm.tokenizer)
        student = derive_student(teacher, **cfg["student"])
        assert student.num_heads(student.sites[0]) < teacher.num_heads(teacher.sites[0])


@pytest.mark.parametrize("path", sorted((EXP / "compare" / "probes").glob("*.yaml")), ids=lambda p: p.stem)
def test_probe_configs_load_with_their_methods_and_the_shipped_teachers_recipe(path):
    """Probe YAMLs change the students' budget or methods, never the teacher (its fingerprint)."""
    from amad.compare.config import fingerprint

    cfg = load_compare_config(str(path))
    parent = load_compare_config(str(path.parent.parent / "easyvqa_blip.yaml"))
    assert cfg["methods"] and all("attn_method" in m for m in cfg["methods"].values())
    assert fingerprint(cfg["teacher"]) == fingerprint(parent["teacher"])
