"""Every shipped YAML instantiates (model, data, trainer) and the embedded ones train a few steps.

An embedded config (``teacher: compare:<comparison>``) whose comparison ships its teacher (found offline,
fingerprint matching) runs ``fast_dev_run`` with that **real** teacher, whatever its method. Where a
comparison ships none (it would train one on first use), and for the real-data configs (data not shipped:
they point at the official-format fixtures in tests/fixtures), a tiny stand-in teacher is saved with the
data's tokenizer and input size; embedded ones still run ``fast_dev_run`` for their teacher and AMAD.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from amad.compare.config import load_compare_config
from amad.config import load_config

ROOT = Path(__file__).parents[2]
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
STAND_IN_FAST_DEV_RUN = {"amad.yaml", "teacher.yaml"}


def shipped_teacher(compare_yaml: Path) -> Path | None:
    """The comparison's shipped teacher if it matches the comparison's recipe (no training), else None."""
    from amad.compare.config import make_datamodule
    from amad.compare.teacher import teacher_datamodule_config, teacher_fingerprint

    cfg = load_compare_config(str(compare_yaml))
    path = cfg["teacher"].get("path")
    if not path or not (ROOT / path / "teacher.json").is_file():
        return None
    record = json.loads((ROOT / path / "teacher.json").read_text())
    dm = make_datamodule(teacher_datamodule_config(cfg))
    return ROOT / path if record.get("fingerprint") == teacher_fingerprint(cfg, getattr(dm, "metadata", {})) else None


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
    """(family, data config) -> a tiny teacher dir saved with that data's tokenizer and image size."""
    from amad.compare.config import make_datamodule
    from amad.models import build_model, save_pretrained

    cache: dict = {}

    def get(family: str, data_cfg: dict) -> Path:
        key = (family, data_cfg["class_path"], str(sorted(data_cfg.get("init_args", {}).items())))
        if key not in cache:
            dm = make_datamodule(data_cfg)
            size = dm.pixel_size or 64
            torch.manual_seed(0)
            model = build_model(family, preset="tiny", tokenizer=dm.tokenizer, image_size=size, patch_size=size // 4)
            out = tmp_path_factory.mktemp("teacher")
            save_pretrained(model, out)
            cache[key] = out
        return cache[key]

    return get


@pytest.fixture(scope="module")
def real_teachers():
    cache: dict = {}

    def get(compare_yaml: Path) -> Path | None:
        if compare_yaml not in cache:
            cache[compare_yaml] = shipped_teacher(compare_yaml)
        return cache[compare_yaml]

    return get


def _family(path: Path) -> str:
    task, model = path.parent.parent.name, path.parent.name
    return _generator().TASKS[task][1] if model == "blip" else "vlt5"


@pytest.mark.parametrize("path", LEAVES, ids=lambda p: str(p.relative_to(EXP)))
def test_config_instantiates(path, tmp_path, tiny_teachers, real_teachers, monkeypatch):
    from amad.lightning_cli import build_cli

    monkeypatch.setenv("AMAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(ROOT)
    task = path.parent.parent.name
    cfg = load_config(path)
    data_cfg = cfg["data"]
    args = [
        "--config",
        str(path),
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--data.init_args.eval_subset=8",
    ]
    if task in REAL_DATA:
        data_cfg = {
            **data_cfg,
            "init_args": {
                **data_cfg["init_args"],
                **{k: v if isinstance(v, int) else str(v) for k, v in REAL_DATA[task].items()},
            },
        }
        args += [f"--data.init_args.{k}={v}" for k, v in REAL_DATA[task].items()]
    ref = cfg["model"]["init_args"].get("teacher", "")
    real = real_teachers(ROOT / ref.removeprefix("compare:")) if ref.startswith("compare:") else None
    if real is None or path.name == "teacher.yaml":
        key = "model" if path.name == "teacher.yaml" else "teacher"
        args.append(f"--model.init_args.{key}={tiny_teachers(_family(path), data_cfg)}")
    run_it = task not in REAL_DATA and (real is not None or path.name in STAND_IN_FAST_DEV_RUN)
    if run_it:
        args.append("--trainer.fast_dev_run=true")
    cli = build_cli(args, run=False)
    assert cli.model.task == cli.datamodule.task
    if real is not None and path.name != "teacher.yaml":
        assert Path(cli.model.hparams.teacher).resolve() == real.resolve(), "the shipped teacher is the one used"
    if run_it:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        assert torch.isfinite(cli.trainer.callback_metrics["train/loss_task"])


def _is_system_comparison(path: Path) -> bool:
    """Any-model comparisons (``system:``) have their own tests: tests/compare/test_compare_system.py."""
    return "system" in (yaml.safe_load(path.read_text()) or {})


@pytest.mark.parametrize(
    "path", [p for p in COMPARES if p.name != "base.yaml" and not _is_system_comparison(p)], ids=lambda p: p.stem
)
@pytest.mark.parametrize("preset", ["smoke", "default", "full"])
def test_compare_config_loads_and_its_data_and_student_build(path, preset):
    from amad.compare.config import make_datamodule

    cfg = load_compare_config(str(path), preset)
    # every preset compares AMAD with ground truth and one-to-one (the demo's default runs just those three)
    assert {"gt", "one_to_one", "amad"} <= set(cfg["methods"])
    if preset != "default":  # smoke runs every default path end to end, full every method
        assert {"gt", "kd", "one_to_one", "head_mean", "minilm_relation", "amad"} <= set(cfg["methods"])
    if preset == "smoke":  # building the data is the expensive part: once per comparison
        dm = make_datamodule(cfg["data"])
        from amad.models import build_model, derive_student

        teacher = build_model(**{**cfg["teacher"]["model"]}, tokenizer=dm.tokenizer)
        student = derive_student(teacher, **cfg["student"])
        assert student.num_heads(student.sites[0]) < teacher.num_heads(teacher.sites[0])


@pytest.mark.parametrize("path", sorted((EXP / "compare" / "probes").glob("*.yaml")), ids=lambda p: p.stem)
def test_probe_configs_load_with_their_methods_and_the_shipped_teachers_recipe(path):
    """Probe YAMLs change the students' budget or methods, never the teacher (its fingerprint)."""
    from amad.compare.config import fingerprint

    cfg = load_compare_config(str(path))
    base = path
    while base.parent.name == "probes":  # the comparison the probe varies, through its `base:` chain
        base = (base.parent / yaml.safe_load(base.read_text())["base"]).resolve()
    parent = load_compare_config(str(base))
    assert cfg["methods"] and all("attention" in m for m in cfg["methods"].values())
    assert fingerprint(cfg["teacher"]) == fingerprint(parent["teacher"])


SWEEPS = sorted((EXP / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_methods_build_and_take_a_real_batch(path):
    """Every method of a shipped sweep builds on its first cell's student with the comparison's shipped
    teacher, and its objective is finite on one batch of the real data (e.g. the projection variant's
    fixed map size matches the vision tower's maps)."""
    from amad.compare.config import make_datamodule, method_kwargs, optimization_kwargs
    from amad.compare.sweep import cell_config, cells, load_sweep
    from amad.compare.system import build_student_system, system_path
    from amad.lit import DistillationModule
    from amad.models.io import load_model

    sweep = load_sweep(str(path))
    cfg = cell_config(sweep, cells(sweep)[0], str(path))
    teacher = shipped_teacher(ROOT / "experiments/compare" / f"{cfg['name']}.yaml")
    if teacher is None:
        pytest.skip(f"{cfg['name']} ships no teacher matching its recipe")
    dm = make_datamodule({**cfg["data"], "init_args": {**cfg["data"]["init_args"], "eval_subset": 8}})
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    batch = {k: v[:4] for k, v in batch.items()}
    system = system_path(cfg)
    if system:  # an any-model comparison: the students are its system's (amad.compare.system)
        for name, entry in cfg["methods"].items():
            module = build_student_system(cfg, method_kwargs(entry, f"methods.{name}", system), 0, teacher, dm)
            loss = module.training_step(batch, 0) if module.distillation is None else module.distillation(batch)
            loss = loss if isinstance(loss, torch.Tensor) else loss["loss"]
            assert torch.isfinite(loss), f"{path.name}: method {name}"
        return
    teacher = load_model(teacher)  # once: every module wraps it frozen, none changes it
    for name, entry in cfg["methods"].items():
        torch.manual_seed(0)
        module = DistillationModule(
            teacher=teacher,
            student=dict(cfg["student"]),
            task=dm.task,
            **optimization_kwargs(cfg["train"]),
            **method_kwargs(entry, f"methods.{name}"),
        )
        terms = module.distillation(batch)
        assert torch.isfinite(terms["loss"]), f"{path.name}: method {name}"
