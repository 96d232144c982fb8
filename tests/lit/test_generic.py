"""GenericDistillationModule, the base of the any-model systems: what both examples get from it (the
objective's wiring, the non-finite guard, warm-up, the attention method's own learning rate, export),
tested once on a tiny transformers ViT classifier teacher built here."""

from __future__ import annotations

from itertools import pairwise
from types import SimpleNamespace

import pytest
import torch

from amad.lit.classify import ClassificationDistillationModule
from amad.lit.generic import GenericDistillationModule
from amad.lit.language import LanguageDistillationModule
from amad.losses.methods import AMAD, AMADProjection


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16, patch_size=4,
        num_labels=5,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("vit") / "teacher"
    ViTForImageClassification(cfg).save_pretrained(path)
    return str(path)


def _batch(n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"pixel_values": torch.randn(n, 3, 16, 16, generator=g), "labels": torch.randint(0, 5, (n,), generator=g)}


def _with_trainer(system: GenericDistillationModule, steps: int) -> GenericDistillationModule:
    # configure_optimizers reads only the run length; a full Trainer is not needed to test the schedule
    system._trainer = SimpleNamespace(estimated_stepping_batches=steps, global_step=0, is_global_zero=True)
    return system


def test_both_examples_share_the_base():
    assert issubclass(ClassificationDistillationModule, GenericDistillationModule)
    assert issubclass(LanguageDistillationModule, GenericDistillationModule)


def test_distilling_objective_has_every_term(teacher_dir):
    system = ClassificationDistillationModule(teacher=teacher_dir, student={"num_heads": 2}, attention=AMAD())
    system.log_dict = system.log = lambda *a, **k: None  # no Trainer attached
    loss = system.training_step(_batch(), 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    terms = system.distillation(_batch())
    assert {"loss_task", "loss_kd", "loss_attn", "loss"} <= set(terms), sorted(terms)
    assert system.student.num_heads("vision.self") == 2 and system.distillation.teacher.num_heads("vision.self") == 4


def test_non_finite_loss_names_the_terms_or_is_skipped(teacher_dir):
    bad = _batch()
    bad["pixel_values"][0, 0, 0, 0] = float("nan")
    system = ClassificationDistillationModule(teacher=teacher_dir, student={"num_heads": 2}, attention=AMAD())
    system.log_dict = system.log = lambda *a, **k: None
    with pytest.raises(FloatingPointError, match=r"non-finite loss at global step .*'loss'"):
        system.training_step(bad, 3)
    system.skip_nonfinite = True
    assert system.training_step(bad, 3) is None and int(system.skipped_batches) == 1
    assert torch.isfinite(system.training_step(_batch(), 4))  # and training goes on


def test_attention_parameters_get_their_own_learning_rate(teacher_dir):
    system = ClassificationDistillationModule(
        teacher=teacher_dir, student={"num_heads": 2}, attention=AMADProjection(), lr=1e-3, attention_lr_scale=0.01
    )
    system.log_dict = system.log = lambda *a, **k: None
    system.training_step(_batch(), 0)  # the projection is sized by its first batch (a lazy module)
    opt = _with_trainer(system, 10).configure_optimizers()["optimizer"]
    student, extra = opt.param_groups
    assert student["lr"] == pytest.approx(1e-3) and extra["lr"] == pytest.approx(1e-5)
    assert extra["weight_decay"] == 0.0 < student["weight_decay"]
    n_extra = sum(p.numel() for p in extra["params"])
    assert n_extra == sum(p.numel() for p in system.distillation.attn.parameters()) > 0
    assert not {id(p) for p in extra["params"]} & {id(p) for p in system.student.parameters()}


def test_warm_up_then_cosine(teacher_dir):
    system = ClassificationDistillationModule(teacher=teacher_dir, student={"num_heads": 2}, lr=1e-3, warmup_steps=4)
    conf = _with_trainer(system, 20).configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-3 / 5) and lrs[0] < lrs[2] < lrs[4] == pytest.approx(1e-3)
    assert all(a >= b for a, b in pairwise(lrs[4:])) and lrs[-1] < 1e-4
    plain = _with_trainer(ClassificationDistillationModule(teacher=teacher_dir, lr=1e-3), 20).configure_optimizers()
    assert plain["optimizer"].param_groups[0]["lr"] == pytest.approx(1e-3)  # no warm-up: the cosine from lr


def test_bad_settings_are_refused(teacher_dir, tmp_path):
    with pytest.raises(ValueError, match="warmup_steps"):
        ClassificationDistillationModule(teacher=teacher_dir, warmup_steps=-1)
    # checked before the teacher is read: the bad option is named, not the missing checkpoint
    for cls in (ClassificationDistillationModule, LanguageDistillationModule):
        with pytest.raises(ValueError, match=r"attention_lr_scale \(-1\)"):
            cls(teacher=str(tmp_path / "no-such-teacher"), attention_lr_scale=-1)


def test_export_saves_a_loadable_student(teacher_dir, tmp_path):
    from transformers import AutoModelForImageClassification

    out = tmp_path / "student"
    system = ClassificationDistillationModule(teacher=teacher_dir, student={"num_heads": 2}, export_dir=str(out))
    _with_trainer(system, 1).on_fit_end()
    loaded = AutoModelForImageClassification.from_pretrained(out)
    assert loaded.config.num_attention_heads == 2
    x = _batch()["pixel_values"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).logits, system.student.model(pixel_values=x).logits)
