"""Real-format DataModules on the official-format fixtures: batches, split files, bad images."""

import shutil

import pytest
from data_helpers import assert_batch_contract

from amad.data import COCOKarpathyDataModule, Multi30KDataModule, VQAv2DataModule
from amad.data.images import CorruptImageError
from amad.metrics import CaptionMetrics, TranslationBLEU, VQAAccuracy


def _vqa(fixtures, **kw):
    return VQAv2DataModule(
        root=str(fixtures / "vqav2"),
        image_root=str(fixtures / "coco"),
        batch_size=4,
        num_workers=0,
        image_size=32,
        **kw,
    )


def test_vqav2_datamodule(fixtures):
    dm = _vqa(fixtures)
    assert dm.vocab_size > 7 and dm.task == "vqa" and isinstance(dm.make_metric(), VQAAccuracy)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 4 and len(dm.datasets["val"]) == 5
    batch = next(iter(dm.val_dataloader()))
    assert_batch_contract(batch, dm.tokenizer, image_size=32)
    assert batch["ids"] == [42000, 42001, 73002, 74003]
    assert len(batch["references"][0]) == 10 and batch["source_text"][0] == "What is the man holding?"
    ex = dm.datasets["val"].examples[0]
    assert ex.target == "parasol" and ex.image.endswith("val2014/COCO_val2014_000000000042.jpg")


def test_vqav2_karpathy_split_files(fixtures):
    files = {s: str(fixtures / "vqav2" / f"karpathy_{s}.json") for s in ("train", "val", "test")}
    dm = _vqa(fixtures, split_files=files)
    dm.setup("fit")
    dm.setup("test")
    ids = {k: [ex.id for ex in v.examples] for k, v in dm.datasets.items()}
    assert ids == {"train": [9000, 9001, 25002, 30003, 42000, 42001], "val": [73002], "test": [74003, 74004]}
    with pytest.raises(ValueError, match="train/val/test"):
        _vqa(fixtures, split_files={"dev": files["val"]})


def test_missing_image_folder_and_files(fixtures, tmp_path):
    dm = VQAv2DataModule(root=str(fixtures / "vqav2"), image_root=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"(?s)image folder .*nope not found.*cocodataset"):
        dm.setup("fit")
    coco = tmp_path / "coco"
    shutil.copytree(fixtures / "coco", coco)
    (coco / "val2014" / "COCO_val2014_000000000073.jpg").unlink()
    dm = VQAv2DataModule(root=str(fixtures / "vqav2"), image_root=str(coco))
    with pytest.raises(FileNotFoundError, match=r"COCO_val2014_000000000073\.jpg does not exist"):
        dm.setup("validate")
    with pytest.raises(FileNotFoundError, match=r"(?s)v2_OpenEnded_mscoco_train2014_questions\.json.*visualqa"):
        VQAv2DataModule(root=str(tmp_path), image_root=str(coco))


def test_corrupt_image_error_names_file_or_is_skipped(fixtures, tmp_path):
    coco = tmp_path / "coco"
    shutil.copytree(fixtures / "coco", coco)
    bad = coco / "val2014" / "COCO_val2014_000000000042.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    dm = VQAv2DataModule(root=str(fixtures / "vqav2"), image_root=str(coco), image_size=16, num_workers=0)
    dm.setup("validate")
    with pytest.raises(CorruptImageError, match=r"COCO_val2014_000000000042\.jpg"):
        dm.datasets["val"][0]
    dm = VQAv2DataModule(
        root=str(fixtures / "vqav2"), image_root=str(coco), image_size=16, num_workers=0, skip_corrupt=True
    )
    with pytest.warns(UserWarning, match=r"skipped 1 missing/corrupt"):
        dm.setup("validate")
    assert dm.skipped == {"val": 1} and len(dm.datasets["val"]) == 3  # both questions on image 42 dropped
    assert next(iter(dm.val_dataloader()))["pixel_values"].shape[-1] == 16


def test_coco_karpathy_datamodule(fixtures):
    dm = COCOKarpathyDataModule(
        dataset_json=str(fixtures / "karpathy" / "dataset_coco.json"),
        image_root=str(fixtures / "coco"),
        batch_size=4,
        num_workers=0,
        image_size=24,
        text_prefix="caption:",
    )
    dm.setup("fit")
    dm.setup("test")
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 15, "val": 1, "test": 2}
    assert dm.datasets["train"].examples[0].id == "9:0"
    batch = next(iter(dm.test_dataloader()))
    assert_batch_contract(batch, dm.tokenizer, image_size=24)
    assert batch["ids"] == [73, 74] and len(batch["references"][0]) == 5
    assert isinstance(dm.make_metric(), CaptionMetrics)
    train = next(iter(dm.train_dataloader()))
    assert_batch_contract(train, dm.tokenizer, image_size=24)


def test_multi30k_datamodule(fixtures):
    dm = Multi30KDataModule(
        root=str(fixtures / "multi30k"),
        image_root=str(fixtures / "flickr30k-images"),
        batch_size=2,
        num_workers=0,
        image_size=16,
        lowercase_bleu=True,
    )
    dm.setup("fit")
    dm.setup("test")
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 4, "val": 2, "test": 2}
    batch = next(iter(dm.test_dataloader()))
    assert_batch_contract(batch, dm.tokenizer, image_size=16)
    assert batch["source_text"] == ["The man with the hat.", "A black dog."]
    assert batch["references"] == [["Der Mann mit dem Hut."], ["Ein schwarzer Hund."]]
    m = dm.make_metric()
    assert isinstance(m, TranslationBLEU) and m.lowercase and dm.metric_names == ("bleu", "bleu4")
    with pytest.raises(FileNotFoundError, match="flickr30k-images"):
        Multi30KDataModule(root=str(fixtures / "multi30k"), image_root=str(fixtures / "nothing")).setup("fit")


def test_empty_split_is_a_clear_error(fixtures, tmp_path):
    ids = tmp_path / "none.json"
    ids.write_text("[]")
    dm = _vqa(fixtures, split_files={"val": str(ids)})
    with pytest.raises(ValueError, match="'val' split is empty"):
        dm.setup("validate")
