"""A comparison's teacher: ``compare:`` references resolve before anything is built, and training a
teacher on first use changes nothing about what is built after it."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from amad.compare.teacher import ensure_teacher, resolve_teacher_reference

ROOT = Path(__file__).parents[2]
AMAD_YAML = ROOT / "experiments/easyvqa/blip/amad.yaml"


def _tiny_comparison(tmp_path: Path) -> Path:
    """The demo comparison with a tiny teacher trained for 2 steps on 1 % of the data."""
    cfg = {
        "base": str(ROOT / "experiments/compare/easyvqa_blip.yaml"),
        "name": "tiny_teacher_probe",
        "data": {"init_args": {"eval_subset": 16}},
        "teacher": {
            "path": None,
            "model": {"preset": "tiny"},
            "pretrain": None,  # the comparison's own staged recipe is not what these tests are about
            "freeze": None,
            "max_steps": 2,
            "data": {"init_args": {"fraction": 0.01, "eval_subset": 16}},
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_student_init_is_the_same_whether_the_teacher_was_trained_now_or_cached(tmp_path, monkeypatch):
    from amad.lightning_cli import build_cli

    monkeypatch.setenv("AMAD_CACHE", str(tmp_path / "cache"))
    ref = f"compare:{_tiny_comparison(tmp_path)}"
    args = ["--config", str(AMAD_YAML), f"--model.init_args.teacher={ref}", "--trainer.logger=false"]
    first = build_cli(args, run=False)  # the cache is empty: the teacher is trained here, first
    assert len(list((tmp_path / "cache" / "teachers").iterdir())) == 1
    second = build_cli(args, run=False)  # now it is read from the cache
    a, b = first.model.student.state_dict(), second.model.student.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    t1, t2 = first.model.teacher.state_dict(), second.model.teacher.state_dict()
    assert all(torch.equal(t1[k], t2[k]) for k in t1), "the cached teacher is the one just trained"


def test_resolving_a_reference_leaves_every_global_rng_as_it_was(tmp_path, monkeypatch):
    monkeypatch.setenv("AMAD_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    path = resolve_teacher_reference(f"compare:{_tiny_comparison(tmp_path)}")  # trains: draws random numbers
    assert (Path(path) / "teacher.json").is_file()
    after = torch.rand(3), random.random(), np.random.rand()
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    untouched = torch.rand(3), random.random(), np.random.rand()
    assert torch.equal(after[0], untouched[0]) and after[1:] == untouched[1:]


def test_constructors_never_resolve_references():
    from amad.lit import DistillationModule

    with pytest.raises(ValueError, match="resolve_teacher_reference"):
        DistillationModule(teacher="compare:experiments/compare/easyvqa_blip.yaml")


def test_a_reference_must_name_a_comparison(tmp_path):
    with pytest.raises(ValueError, match="compare:"):
        resolve_teacher_reference(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        resolve_teacher_reference(f"compare:{tmp_path / 'nope.yaml'}")


def _staged_comparison(tmp_path: Path, base: str, name: str) -> Path:
    cfg = {
        "base": str(ROOT / "experiments/compare" / base),
        "name": name,
        "data": {"init_args": {"eval_subset": 16}},
        "teacher": {
            "path": None,
            "model": {"preset": "tiny"},
            "data": {"init_args": {"fraction": 0.01, "batch_size": 8, "eval_subset": 16}},
            "pretrain": {
                "attributes": {"max_steps": 3, "batch_size": 8, "scenes": 24},
                "task": {"max_steps": 2, "scenes": 16, "freeze": ["model.vision_model."]},
            },
            "freeze": ["model.vision_model."],
            "max_steps": 2,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    ("base", "metric"), [("easyvqa_blip.yaml", "vqa_acc_shape"), ("shapes-caption_blip.yaml", "attr_acc")]
)
def test_a_staged_recipe_records_every_stage_and_the_breakdown(tmp_path, monkeypatch, base, metric):
    import json

    from amad.compare.config import load_compare_config
    from amad.compare.teacher import ensure_teacher

    monkeypatch.setenv("AMAD_CACHE", str(tmp_path / "cache"))
    cfg = load_compare_config(str(_staged_comparison(tmp_path, base, "staged")))
    lines: list[str] = []
    path, record = ensure_teacher(cfg, log=lines.append)
    assert [s["stage"] for s in record["stages"]] == ["pretrain.attributes", "pretrain.task", "finetune"]
    assert set(record["stages"][0]["held_out"]) == {"shape", "colour", "size", "row", "col"}
    assert metric in record["metrics"] and record["config"]["pretrain"]["task"]["max_steps"] == 2
    assert ("oracle" in record) == (metric == "attr_acc")
    assert json.loads((path / "teacher.json").read_text())["fingerprint"] == record["fingerprint"]
    assert any("step 3/3" in line for line in lines), "progress is shown as it runs"
    # another pre-training budget is another teacher
    cfg["teacher"]["pretrain"]["task"]["max_steps"] = 3
    from amad.compare.config import make_datamodule
    from amad.compare.teacher import teacher_datamodule_config, teacher_fingerprint

    facts = make_datamodule(teacher_datamodule_config(cfg)).metadata
    assert teacher_fingerprint(cfg, facts) != record["fingerprint"]


def test_an_interrupted_recipe_resumes_after_its_last_stage_and_trains_the_same_teacher(tmp_path, monkeypatch, capsys):
    from amad.compare import teacher as teacher_mod
    from amad.compare.config import load_compare_config, make_datamodule
    from amad.compare.teacher import teacher_datamodule_config, train_teacher

    cfg = load_compare_config(str(_staged_comparison(tmp_path, "easyvqa_blip.yaml", "resumed")))
    dm = make_datamodule(teacher_datamodule_config(cfg))
    whole, _ = train_teacher(cfg, dm, log=lambda line: None)

    real_fit = teacher_mod._fit

    def crash_in_finetune(name, *args, **kwargs):
        if name == "finetune":
            raise KeyboardInterrupt("the session ended")
        return real_fit(name, *args, **kwargs)

    keep = tmp_path / "partial"
    monkeypatch.setattr(teacher_mod, "_fit", crash_in_finetune)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(cfg, dm, log=lambda line: None, resume_dir=keep)
    assert sorted(p.name for p in keep.iterdir()) == ["stage1.pt", "stage2.pt"]
    monkeypatch.setattr(teacher_mod, "_fit", real_fit)
    lines: list[str] = []
    resumed, stages = train_teacher(cfg, dm, log=lines.append, resume_dir=keep)
    assert any("resuming after pretrain.attributes, pretrain.task" in line for line in lines)
    assert not any("pretrain.attributes:" in line for line in lines), "a kept stage is not trained again"
    assert [s["stage"] for s in stages] == ["pretrain.attributes", "pretrain.task", "finetune"]
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), "resuming trains what one run trains"

    (keep / "stage3.pt").write_bytes(b"cut short")  # a damaged stage never fails the run: set aside
    lines.clear()
    capsys.readouterr()
    train_teacher(cfg, dm, log=lines.append, resume_dir=keep)
    assert "stage3.pt is damaged" in capsys.readouterr().err and list(keep.glob("stage3.pt.corrupt-*"))
    assert any("resuming after pretrain.attributes, pretrain.task" in line for line in lines)


def test_a_recipe_that_changes_only_its_finetuning_starts_from_the_kept_pretraining(tmp_path, monkeypatch):
    from amad.compare.config import load_compare_config
    from amad.compare.teacher import ensure_teacher

    monkeypatch.setenv("AMAD_CACHE", str(tmp_path / "cache"))
    cfg = load_compare_config(str(_staged_comparison(tmp_path, "easyvqa_blip.yaml", "refit")))
    first, _ = ensure_teacher(cfg, log=lambda line: None)
    cfg["teacher"]["max_steps"] = 3
    lines: list[str] = []
    second, record = ensure_teacher(cfg, log=lines.append)
    assert second != first, "another fine-tuning is another teacher"
    assert any("resuming after pretrain.attributes, pretrain.task" in line for line in lines)
    assert [s.get("resumed", False) for s in record["stages"]] == [True, True, False]
    cfg["teacher"]["pretrain"]["task"]["max_steps"] = 3  # another pre-training: nothing to start from
    lines.clear()
    ensure_teacher(cfg, log=lines.append)
    assert not any("resuming" in line for line in lines)


def _shared(tmp_path: Path, base: str, name: str, family: str) -> Path:
    path = _staged_comparison(tmp_path, base, name)
    cfg = yaml.safe_load(path.read_text())
    cfg["data"]["init_args"]["image_size"] = 32
    cfg["teacher"]["model"] = {"family": family, "preset": "tiny", "image_size": 32, "patch_size": 8}
    # the same stage settings whatever the base file's recipe says
    cfg["teacher"]["pretrain"]["attributes"].update(shared=True, lr=1e-3, warmup_ratio=0.05, schedule="cosine")
    prefix = "visual." if family == "vlt5" else "model.vision_model."
    cfg["teacher"]["pretrain"]["task"]["freeze"] = cfg["teacher"]["freeze"] = [prefix]
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("easyvqa_blip.yaml", "blip-vqa"), ("shapes-caption_blip.yaml", "blip-caption")),
        (("shapes-caption_vlt5.yaml", "vlt5"), ("easyvqa_vlt5.yaml", "vlt5")),
    ],
)
def test_teachers_of_one_family_share_one_trained_tower_whoever_asks_first(tmp_path, monkeypatch, first, second):
    from amad.compare.config import load_compare_config
    from amad.compare.tower_stage import TOWER_PREFIXES, family_group
    from amad.models.io import load_pretrained

    def teacher(cache: str, spec: tuple[str, str], lines: list[str]):
        monkeypatch.setenv("AMAD_CACHE", str(tmp_path / cache))
        cfg = load_compare_config(str(_shared(tmp_path, spec[0], f"{cache}-{spec[1]}", spec[1])))
        path, record = ensure_teacher(cfg, log=lines.append)
        return load_pretrained(path), record

    lines: list[str] = []
    _, rec_a = teacher("one", first, lines)
    b, rec_b = teacher("one", second, lines)
    assert sum("pretrain.attributes: 3 steps" in line for line in lines) == 1, "the tower is trained once"
    assert rec_b["stages"][0].get("shared_from_cache") and rec_b["stages"][0]["tower"] == rec_a["stages"][0]["tower"]
    # the other order, in another cache: the same tower (it is trained on a canonical model, not the asker)
    c, _ = teacher("two", second, [])
    group = family_group(second[1])
    tb, tc = b.state_dict(), c.state_dict()
    tower = [k for k in tb if k.startswith(TOWER_PREFIXES[group])]
    assert tower
    # after the shared stage the tower may still be fine-tuned by a later stage that does not freeze all of
    # it (VL-T5's encoder); the frozen part is the shared one, bit for bit
    frozen = [k for k in tower if k.startswith(("visual.", "model.vision_model."))]
    assert frozen and all(torch.equal(tb[k], tc[k]) for k in frozen)


def test_a_torn_shared_tower_is_set_aside_and_trained_again(tmp_path, monkeypatch):
    from amad.compare.config import load_compare_config

    monkeypatch.setenv("AMAD_CACHE", str(tmp_path / "cache"))
    cfg = load_compare_config(str(_shared(tmp_path, "easyvqa_blip.yaml", "torn", "blip-vqa")))
    _, record = ensure_teacher(cfg, log=lambda line: None)
    stages = tmp_path / "cache" / "teacher_stages"
    (stages / record["stages"][0]["tower"] / "tower.pt").write_bytes(b"cut")
    cfg["teacher"]["max_steps"] = 3  # another teacher, same tower
    for d in stages.iterdir():
        if not d.name.startswith("tower-"):
            shutil.rmtree(d)
    lines: list[str] = []
    ensure_teacher(cfg, log=lines.append)
    assert any("unreadable" in line and "set aside" in line for line in lines)
    assert any(d.name.startswith(record["stages"][0]["tower"] + ".corrupt-") for d in stages.iterdir())


def test_teacher_only_fails_loudly_below_the_teachers_target(tmp_path, monkeypatch, capsys):
    from amad.compare.run import main

    monkeypatch.setenv("AMAD_CACHE", str(tmp_path / "cache"))
    path = _tiny_comparison(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["teacher"]["target"] = {"metric": "vqa_acc", "min": 0.99, "kinds_min": 0.9}  # a 2-step teacher misses it
    path.write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(path), "--out", str(tmp_path / "out"), "--teacher-only"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and err[0].startswith("amad: error: teacher ") and "vqa_acc 0." in err[0] and "< 0.99" in err[0]
    )
    assert "vqa_acc_shape" in err[0], "every question kind below kinds_min is named"
    cfg["teacher"]["target"] = {"metric": "vqa_acc", "min": 0.0, "kinds_min": None}
    path.write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(path), "--out", str(tmp_path / "out"), "--teacher-only"]) == 0  # cached: no retraining


def test_evaluation_generates_up_to_the_recipes_length_not_a_default(monkeypatch):
    """A caption cut at a default 8 tokens loses its shape word: the length is the caller's, always."""
    from amad.compare.teacher import evaluate_model
    from amad.data import ShapesCaptionDataModule
    from amad.models import build_model

    dm = ShapesCaptionDataModule(batch_size=4, eval_batch_size=4, eval_subset=4)
    model = build_model("blip-caption", "tiny", tokenizer=dm.tokenizer)
    seen: list[int] = []
    real = model.generate

    def generate(batch, max_new_tokens=10):
        seen.append(max_new_tokens)
        return real(batch, max_new_tokens=max_new_tokens)

    monkeypatch.setattr(model, "generate", generate)
    evaluate_model(model, dm, "val", 16)
    assert seen and set(seen) == {16}
