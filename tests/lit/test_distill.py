"""DistillationModule on tiny models: every family and method trains, the teacher never moves."""

from __future__ import annotations

import copy

import pytest
import torch
from lit_helpers import TASK_OF, RandomBatchDataModule, fit_trainer
from lit_helpers import method as attention

from amad.lit import DistillationModule, FineTuneModule, FrozenTeacher
from amad.losses.methods import checkpoint_safe_globals

STUDENT = {"num_heads": 2, "num_layers": 1, "init": "random"}


def _module(teacher, family, method="amad", **kw):
    return DistillationModule(
        teacher=copy.deepcopy(teacher), student=STUDENT, task=TASK_OF[family], attention=attention(method), **kw
    )


@pytest.mark.parametrize("family", ["blip-vqa", "blip-caption", "vlt5"])
@pytest.mark.parametrize(
    "method", ["amad", "one_to_one", "head_mean", "minilm_relation", "shd", "a2d", "attn_distill", "none"]
)
def test_every_family_and_method_trains_with_finite_logged_terms(tmp_path, tiny_teacher_factory, family, method):
    teacher = tiny_teacher_factory(family)
    module = _module(teacher, family, method)
    dm = RandomBatchDataModule(family, tokenizer=teacher.tokenizer, task=TASK_OF[family])
    terms = module.distillation_losses(dm.batches[0])
    assert all(torch.isfinite(v) for v in terms.values()), terms
    expected = {"loss", "loss_task", "loss_kd"} | ({"loss_attn"} if method != "none" else set())
    assert expected <= set(terms)
    if method != "none":
        sites = [k for k in terms if k.startswith("loss_attn/")]
        assert sites, "per-site attention terms are logged"
    trainer = fit_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=dm)
    logged = trainer.callback_metrics
    assert "train/loss_task" in logged and "train/loss_kd" in logged
    if method != "none":
        assert "train/loss_attn" in logged


def test_student_changes_teacher_bitwise_unchanged_and_stays_eval(tmp_path, tiny_teacher_factory):
    teacher = tiny_teacher_factory("blip-vqa")
    module = _module(teacher, "blip-vqa")
    t_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    s_before = {k: v.clone() for k, v in module.student.state_dict().items()}
    dm = RandomBatchDataModule("blip-vqa", tokenizer=teacher.tokenizer)
    trainer = fit_trainer(tmp_path, max_steps=3)
    trainer.fit(module, datamodule=dm)
    assert not module.teacher.training and not any(m.training for m in module.teacher.modules())
    trainer.validate(module, datamodule=dm, verbose=False)
    trainer.test(module, datamodule=dm, verbose=False)
    module.train()
    assert not any(m.training for m in module.teacher.modules())
    assert module.student.training
    for k, v in module.teacher.state_dict().items():
        assert torch.equal(v, t_before[k]), k
    assert all(p.grad is None and not p.requires_grad for p in module.teacher.parameters())
    assert any(not torch.equal(v, s_before[k]) for k, v in module.student.state_dict().items())


def test_optimizer_holds_no_teacher_parameter(tmp_path, tiny_teacher_factory):
    teacher = tiny_teacher_factory("blip-vqa")
    module = _module(teacher, "blip-vqa")
    dm = RandomBatchDataModule("blip-vqa", tokenizer=teacher.tokenizer)
    trainer = fit_trainer(tmp_path, max_steps=1)
    trainer.fit(module, datamodule=dm)
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in module.teacher.parameters()}
    assert {id(p) for p in module.student.parameters()} <= opt_params


def test_frozen_teacher_ignores_train_and_requires_grad(tiny_teacher_factory):
    ft = FrozenTeacher(copy.deepcopy(tiny_teacher_factory("vlt5")))
    ft.train()
    ft.requires_grad_(True)
    assert not ft.training and not any(m.training for m in ft.modules())
    assert not any(p.requires_grad for p in ft.parameters())


def test_checkpoint_holds_student_only_resumes_and_exports(tmp_path, tiny_teacher_factory):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from amad.export import export_checkpoint
    from amad.models import load_pretrained

    teacher = tiny_teacher_factory("blip-vqa")
    module = _module(teacher, "blip-vqa")
    dm = RandomBatchDataModule("blip-vqa", tokenizer=teacher.tokenizer)
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = fit_trainer(tmp_path, max_steps=2, enable_checkpointing=True, callbacks=[ckpt_cb])
    trainer.fit(module, datamodule=dm)
    last = tmp_path / "ckpt" / "last.ckpt"
    ckpt = torch.load(last, weights_only=False)
    assert not [k for k in ckpt["state_dict"] if k.startswith("distillation.teacher.")]
    assert [k for k in ckpt["state_dict"] if k.startswith("distillation.student.")]

    resumed = _module(teacher, "blip-vqa")
    trainer2 = fit_trainer(
        tmp_path,
        max_steps=4,
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt2", save_last=True)],
    )
    with checkpoint_safe_globals():  # the checkpoint's hyperparameters hold the method object
        trainer2.fit(resumed, datamodule=dm, ckpt_path=str(last))
    assert trainer2.global_step == 4

    out = export_checkpoint(last, tmp_path / "export")
    student = load_pretrained(out)
    batch = dm.batches[0]
    module.student.eval()
    student.eval()
    with torch.no_grad():
        assert torch.allclose(student(batch, sites=()).logits, module.student(batch, sites=()).logits, atol=1e-5)


def test_finetune_module_trains_and_bf16_is_finite(tmp_path):
    from amad.models import build_model

    model = build_model("blip-vqa", preset="tiny")
    dm = RandomBatchDataModule("blip-vqa", tokenizer=model.tokenizer)
    module = FineTuneModule(model=model, task="vqa")
    trainer = fit_trainer(tmp_path, max_steps=2, precision="bf16-mixed")
    trainer.fit(module, datamodule=dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss_task"])


def test_unknown_method_site_and_layer_map_fail_clearly(tiny_teacher_factory):
    teacher = tiny_teacher_factory("blip-vqa")
    with pytest.raises(ValueError, match="unknown attention method"):
        _module(teacher, "blip-vqa", method="nope")
    with pytest.raises(ValueError, match="unknown site"):
        _module(teacher, "blip-vqa", sites=["encoder.self"])
    with pytest.raises(ValueError, match="layer map"):
        _module(teacher, "blip-vqa", layer_map=[99])


def test_finetune_from_preset_decodes_with_the_datas_tokenizer(tmp_path):
    """A model built from a preset + vocab_size (as `amad fit` does) must not decode placeholder words."""
    from amad.data import EasyVQADataModule

    dm = EasyVQADataModule(batch_size=4, subset=8, eval_subset=4)
    module = FineTuneModule(model={"family": "blip-vqa", "preset": "tiny"}, vocab_size=dm.vocab_size)
    trainer = fit_trainer(tmp_path, max_steps=1)
    trainer.fit(module, datamodule=dm)
    dm.setup("validate")
    preds = module.model.generate(next(iter(dm.val_dataloader())), max_new_tokens=2)
    vocab = set(dm.tokenizer.get_vocab())
    assert all(w in vocab for p in preds for w in p.split()), preds


def test_attention_lr_scale_reaches_the_attention_methods_own_parameters(tmp_path, tiny_teacher_factory):
    """A2D's aligners train with the student, at ``attention_lr_scale`` x lr and without decay."""
    teacher = tiny_teacher_factory("blip-vqa")
    module = _module(teacher, "blip-vqa", "a2d", lr=1e-3, attention_lr_scale=0.01)
    dm = RandomBatchDataModule("blip-vqa", tokenizer=teacher.tokenizer)
    trainer = fit_trainer(tmp_path, max_steps=1)
    trainer.fit(module, datamodule=dm)
    aligners = {id(p) for p in module.attn.parameters()}
    assert aligners
    groups = trainer.optimizers[0].param_groups
    mine = [g for g in groups if {id(p) for p in g["params"]} & aligners]
    assert len(mine) == 1 and {id(p) for p in mine[0]["params"]} == aligners
    assert mine[0]["initial_lr"] == pytest.approx(1e-5) and mine[0]["weight_decay"] == 0.0
    assert all(g["initial_lr"] == pytest.approx(1e-3) for g in groups if g is not mine[0])
    assert {id(p) for p in module.student.parameters()} <= {id(p) for g in groups for p in g["params"]}
