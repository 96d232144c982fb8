"""Training data on generated scenes: what the teachers' pre-training reads (and students never do)."""

from __future__ import annotations

import collections

import pytest
import torch

from amad.data import EasyVQADataModule, ShapesCaptionDataModule, ShapesTranslationDataModule
from amad.data.collate import AttributeCollator
from amad.scenes import easyvqa_source as src
from amad.scenes.attributes import read_attributes
from amad.scenes.datasets import (
    ATTRIBUTE_CLASSES,
    GeneratedTaskDataset,
    SceneAttributeDataset,
    ScenePool,
    attribute_labels,
)
from amad.scenes.text import question_kind


def _named(a) -> tuple:
    """What a caption or question names (area and fill are measurements, not attributes)."""
    return a.shape, a.colour, a.size, a.row, a.col


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AMAD_CACHE", str(tmp_path))


def test_pool_is_drawn_once_then_read_from_disk_identically(tmp_path):
    from amad.scenes import datasets as scene_data

    first = ScenePool(seed=3, size=64)
    assert (tmp_path / "scenes" / "seed3-64.npz").is_file()
    scene_data._load_pool.cache_clear()
    again = ScenePool(seed=3, size=64)
    assert torch.equal(first.images, again.images) and first.attributes == again.attributes
    image, attrs = again[64 + 5]  # a pool serves any index: i % size
    assert torch.equal(image, first.images[5]) and attrs == first.attributes[5]
    assert all(_named(read_attributes(first.images[i])) == _named(first.attributes[i]) for i in range(64))


@pytest.mark.parametrize("size", [1, 3, 5])
def test_tiny_pools_smaller_than_the_worker_split(size):
    # the pool is drawn in up to 4 parts per worker: a pool smaller than that must not make empty parts
    pool = ScenePool(seed=11, size=size)
    assert pool.images.shape == (size, 3, 64, 64) and len(pool.attributes) == size
    assert torch.equal(pool.images, ScenePool(seed=11, size=64).images[:size])  # scene i is scene i


@pytest.mark.parametrize("task", ["vqa", "caption", "translate"])
def test_generated_examples_describe_their_scene(task):
    ds = GeneratedTaskDataset(task, size=200, seed=1, pool=100)
    assert len(ds) == 200
    for i in range(0, 200, 7):
        item = ds[i]
        attrs = read_attributes(item["image"])
        assert _named(item["attributes"]) == _named(attrs)
        if task == "vqa":
            assert question_kind(item["source"]) is not None, item["source"]
            assert item["target"] in item["references"]
        else:
            text = item["target"].lower()
            assert attrs.shape in text or task == "translate"
            assert item["references"]


def test_generated_questions_come_in_the_packages_proportions():
    ds = GeneratedTaskDataset("vqa", size=3000, seed=2, pool=200)
    gen = collections.Counter(question_kind(ds[i]["source"]) for i in range(3000))
    pkg = collections.Counter(question_kind(q.question) for q in src.load_questions("train"))
    n_gen, n_pkg = sum(gen.values()), sum(pkg.values())
    for kind in pkg:
        assert abs(gen[kind] / n_gen - pkg[kind] / n_pkg) < 0.03, (kind, gen, pkg)


def test_every_generated_word_is_in_the_task_vocabularies():
    for dm, task in (
        (EasyVQADataModule(), "vqa"),
        (ShapesCaptionDataModule(), "caption"),
        (ShapesTranslationDataModule(), "translate"),
    ):
        ds = GeneratedTaskDataset(task, size=300, seed=4, pool=300)
        unk = dm.tokenizer.unk_token_id
        for i in range(300):
            item = ds[i]
            ids = dm.tokenizer(f"{item['source']} {item['target']}", add_special_tokens=False)["input_ids"]
            assert unk not in ids, (task, item["source"], item["target"])


def test_train_scenes_replace_only_the_training_split():
    dm = EasyVQADataModule(train_scenes=256, scene_pool=128, batch_size=16, image_size=32, eval_subset=32)
    dm.setup("fit")
    assert isinstance(dm.datasets["train"], GeneratedTaskDataset) and len(dm.datasets["train"]) == 256
    assert len(dm.datasets["val"]) == 32 and "train_source" in dm.metadata
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (16, 3, 32, 32) and len(batch["attributes"]) == 16
    assert "train_source" not in EasyVQADataModule().metadata, "students' data cards (and fingerprints) unchanged"


def test_attribute_batches():
    ds = SceneAttributeDataset(size=40, seed=5, pool=20)
    batch = AttributeCollator(image_size=32)([ds[i] for i in range(8)])
    assert batch["pixel_values"].shape == (8, 3, 32, 32) and batch["labels"].shape == (8, 5)
    _, attrs = ds.scenes[3]
    assert torch.equal(ds[3][1], attribute_labels(attrs))
    assert all(int(batch["labels"][:, k].max()) < len(c) for k, c in enumerate(ATTRIBUTE_CLASSES.values()))
