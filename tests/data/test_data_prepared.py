"""Collating once: in-memory images prepared once per split and token ids remembered give the very
batches of the per-batch path."""

from __future__ import annotations

import pytest
import torch

from amad.data import EasyVQADataModule, ShapesCaptionDataModule
from amad.data.collate import PreparedImages


@pytest.mark.parametrize(
    ("dm_cls", "kwargs"),
    [(EasyVQADataModule, {"image_size": 32}), (ShapesCaptionDataModule, {}), (EasyVQADataModule, {"image_size": 48})],
)
def test_prepared_images_and_remembered_ids_give_the_same_batches(dm_cls, kwargs):
    dm = dm_cls(subset=40, batch_size=8, **kwargs)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.dataset.images, PreparedImages), "in-memory images are prepared once"
    assert dm.train_dataloader().dataset is loader.dataset, "once per split, not per loader"
    assert len(loader.collate_fn._memo) > 0, "the split's texts are tokenized when the loader is made"
    plain = dm.collator()  # the per-batch path: uint8 images resized and normalised in the collate
    for batch in loader:
        items = [dm.datasets["train"][i] for i in range(len(dm.datasets["train"]))]
        by_id = {it["id"]: it for it in items}
        want = plain([by_id[i] for i in batch["ids"]])
        for key in ("pixel_values", "input_ids", "attention_mask", "labels"):
            assert torch.equal(batch[key], want[key]), key


def test_augmented_images_stay_per_batch():
    dm = EasyVQADataModule(subset=16, batch_size=8, augment=True)
    dm.setup("fit")
    assert not isinstance(dm.train_dataloader().dataset.images, PreparedImages)
    assert dm.train_dataloader().dataset is dm.datasets["train"]
