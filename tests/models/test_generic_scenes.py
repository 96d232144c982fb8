"""The embedded ViT example (experiments/scenes-vit): its data, and every YAML running a few steps through
``amad fit`` on a handful of generated scenes (teacher first, exported, then the students from it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from amad.cli import main
from amad.data.scene_classes import CLASS_NAMES, SceneClassesDataModule, scene_class
from amad.lit.classify import ClassificationDistillationModule
from amad.scenes.attributes import ShapeAttributes

EXP = Path(__file__).parents[2] / "experiments" / "scenes-vit"
STUDENTS = ("gt", "kd", "one_to_one", "amad")
TINY = [
    "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar", "false",
    "--data.init_args.train_size", "48", "--data.init_args.val_size", "16", "--data.init_args.test_size", "16",
    "--data.init_args.batch_size", "8",
]  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("scenes-vit")
    mp.setenv("AMAD_CACHE", str(root / "cache"))  # scene pools of these tiny sizes: drawn here, kept here
    mp.setenv("WANDB_MODE", "offline")
    yield root
    mp.undo()


def test_classes_are_shape_and_colour():
    assert len(CLASS_NAMES) == 24 and CLASS_NAMES[0] == "red circle"
    attrs = ShapeAttributes(shape="triangle", colour="blue", size="small", row=0, col=0)
    assert CLASS_NAMES[scene_class(attrs)] == "blue triangle"


def test_datamodule_batches_and_disjoint_splits(workdir):
    dm = SceneClassesDataModule(train_size=16, val_size=8, test_size=8, image_size=32, batch_size=8)
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (8, 3, 32, 32) and batch["labels"].dtype == torch.long
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1
    val = next(iter(dm.val_dataloader()))
    assert val["labels"].shape == (8,)
    train, held_out = dm.datasets["train"].pool.images, dm.datasets["val"].pool.images
    assert not any(torch.equal(a, b) for a in train for b in held_out)  # splits are different scene streams


def test_every_yaml_runs_teacher_first(workdir):
    teacher = workdir / "teacher"
    logs = ["--trainer.logger.init_args.save_dir", str(workdir / "runs")]
    rc = main(
        ["fit", "--config", str(EXP / "teacher.yaml"), *TINY, *logs, "--model.init_args.export_dir", str(teacher)]
    )
    assert rc in (0, None) and (teacher / "config.json").is_file()
    for name in STUDENTS:
        rc = main(
            ["fit", "--config", str(EXP / f"{name}.yaml"), *TINY, *logs, "--model.init_args.teacher", str(teacher)]
        )
        assert rc in (0, None), name
    system = ClassificationDistillationModule(teacher=str(teacher), student={"num_heads": 2, "init": "random"})
    t = system.distillation.teacher
    assert (t.num_heads("vision.self"), system.student.num_heads("vision.self")) == (8, 2)
    assert system.student.num_layers("vision.self") == t.num_layers("vision.self") == 4


def test_a_missing_teacher_is_one_line(workdir):
    with pytest.raises(FileNotFoundError, match="train the teacher first"):
        ClassificationDistillationModule(teacher=str(workdir / "nothing"))


def test_scene_classes_evaluate_on_a_subset_in_their_own_batches():
    from amad.data.scene_classes import SceneClassesDataModule

    dm = SceneClassesDataModule(train_size=8, val_size=20, test_size=20, batch_size=4, eval_batch_size=5, eval_subset=7)
    val = list(dm.val_dataloader())
    assert [len(b["labels"]) for b in val] == [5, 2]
    assert len(next(iter(dm.train_dataloader()))["labels"]) == 4
    with pytest.raises(ValueError, match="eval_subset"):
        SceneClassesDataModule(eval_subset=0)
