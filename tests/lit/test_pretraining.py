"""The pieces of a teacher's pre-training: the attribute stage reads scenes, `freeze` keeps a tower fixed."""

from __future__ import annotations

import torch
from lit_helpers import fit_trainer
from torch.utils.data import DataLoader

from amad.data.collate import AttributeCollator
from amad.lit import FineTuneModule
from amad.lit.attributes import SceneAttributeModule
from amad.models import build_model
from amad.scenes.datasets import SceneAttributeDataset


def test_attribute_stage_trains_the_image_encoder_only(tmp_path, monkeypatch):
    monkeypatch.setenv("AMAD_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model = build_model("blip-vqa", preset="tiny", image_size=32, patch_size=8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    module = SceneAttributeModule(model, lr=3e-3)
    loader = DataLoader(
        SceneAttributeDataset(16 * 12, seed=0, pool=96), batch_size=16, collate_fn=AttributeCollator(32)
    )
    start = module.accuracy(loader)
    fit_trainer(tmp_path, max_steps=12).fit(module, train_dataloaders=loader)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(n.startswith("model.vision_model.") for n in moved), "only the ViT learns here"
    end = module.accuracy(loader)
    assert end["colour"] > start["colour"], (start, end)


def test_vlt5_image_encoder_is_its_encoder_over_visual_tokens():
    model = build_model("vlt5", preset="tiny")
    feats = model.encode_image(torch.randn(2, 3, 64, 64))
    assert feats.shape == (2, (64 // 16) ** 2, model.model.config.d_model)


def test_freeze_keeps_the_named_parameters_fixed_and_out_of_the_optimizer(tmp_path):
    from amad.data import EasyVQADataModule

    dm = EasyVQADataModule(batch_size=8, subset=32, eval_subset=8)
    module = FineTuneModule(
        model={"family": "blip-vqa", "preset": "tiny"}, vocab_size=dm.vocab_size, freeze=["model.vision_model."]
    )
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    fit_trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(module, datamodule=dm)
    for n, p in module.model.named_parameters():
        assert torch.equal(p, before[n]) == n.startswith("model.vision_model."), n
    in_optimizer = {id(p) for g in module.optimizers().optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_optimizer for n, p in module.model.named_parameters() if "vision_model" in n)


def test_a_freeze_prefix_that_names_nothing_is_an_error(tmp_path):
    import pytest

    module = FineTuneModule(model={"family": "blip-vqa", "preset": "tiny"}, freeze=["model.vison_model."])
    with pytest.raises(ValueError, match="vison_model"):
        module.freeze_parameters()
