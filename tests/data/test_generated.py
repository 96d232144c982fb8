"""GeneratedSplitsDataModule, the base of the any-model examples' DataModules, on a toy subclass."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from amad.data.generated import SPLIT_SEEDS, GeneratedSplitsDataModule
from amad.data.scene_classes import SceneClassesDataModule
from amad.data.scene_text import SceneTextDataModule


class Toy(GeneratedSplitsDataModule):
    def __init__(self, **kw):
        base = {"train_size": 10, "val_size": 7, "test_size": 5, "batch_size": 4, "eval_batch_size": None,
                "eval_subset": None, "seed": 100, "num_workers": 0}  # fmt: skip
        super().__init__(**(base | kw))
        self.built: list[tuple[str, int, int]] = []

    def make_dataset(self, split, size, seed):
        self.built.append((split, size, seed))
        return TensorDataset(torch.full((size,), seed), torch.arange(size))

    def collate(self, items):
        return {"seed": torch.stack([s for s, _ in items]), "index": torch.stack([i for _, i in items])}


def test_each_split_its_own_seed_built_once_when_a_stage_needs_it():
    dm = Toy()
    list(dm.test_dataloader())
    assert dm.built == [("test", 5, 100 + SPLIT_SEEDS["test"])]
    dm.setup("fit")
    dm.setup("fit")
    assert sorted(s for s, _, _ in dm.built) == ["test", "train", "val"] and len(dm.built) == 3
    assert len({seed for _, _, seed in dm.built}) == 3


def test_training_batches_are_full_and_shuffled_eval_in_order_and_own_size():
    dm = Toy(eval_batch_size=3, eval_subset=5)
    train = list(dm.train_dataloader())
    assert [len(b["index"]) for b in train] == [4, 4]  # drop_last: no short batch in training
    val = list(dm.val_dataloader())
    assert [b["index"].tolist() for b in val] == [[0, 1, 2], [3, 4]]  # the first eval_subset, in order


@pytest.mark.parametrize("kw", [{"eval_subset": 0}, {"batch_size": 0}, {"eval_batch_size": 0}])
def test_bad_sizes_are_refused(kw):
    with pytest.raises(ValueError, match="must be >= 1"):
        Toy(**kw)


def test_both_examples_use_it():
    assert issubclass(SceneClassesDataModule, GeneratedSplitsDataModule)
    assert issubclass(SceneTextDataModule, GeneratedSplitsDataModule)
