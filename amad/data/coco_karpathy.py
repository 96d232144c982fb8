"""``COCOKarpathyDataModule``: COCO captioning on the Karpathy splits (``dataset_coco.json``).

Training uses every caption as its own example (id = ``"<image_id>:<k>"``); val/test have one
example per image (id = image id, target = the first caption, references = all captions, usually
5). Source = ``""`` (or the ``text_prefix``). Images: ``<image_root>/<filepath>/<filename>``.
Works for ``dataset_flickr30k.json`` too (no ``filepath``: images directly under ``image_root``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from amad.data.base import FileImagesDataModule
from amad.data.dataset import Example
from amad.data.formats import KARPATHY_HELP, load_karpathy
from amad.metrics import CaptionMetrics


class COCOKarpathyDataModule(FileImagesDataModule):
    """COCO Karpathy captions (real data, not shipped: see docs/datasets.md).

    Args:
        dataset_json: Karpathy's ``dataset_coco.json``.
        image_root: folder holding the ``filepath`` folders (COCO ``train2014/``, ``val2014/``).
        train_splits: Karpathy splits used for training (default train + restval, 113,287 images).
        val_split: Karpathy split for validation (5,000 images).
        test_split: Karpathy split for testing (5,000 images).
        **kwargs: ``skip_corrupt`` (drop and count examples whose image is missing or undecodable,
            instead of raising) and the settings of :class:`~amad.data.base.VisionTextDataModule`
            (``image_size`` defaults to 384 here, BLIP-base's); without ``tokenizer_path`` a word
            tokenizer is built from the training text (pass a checkpoint's tokenizer folder for BLIP /
            VL-T5 weights).
    """

    layout_help = KARPATHY_HELP
    task = "caption"

    def __init__(
        self,
        dataset_json: str,
        image_root: str,
        train_splits: Sequence[str] = ("train", "restval"),
        val_split: str = "val",
        test_split: str = "test",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dataset_json, self.image_root = Path(dataset_json), Path(image_root)
        self.splits = {"train": tuple(train_splits), "val": (val_split,), "test": (test_split,)}
        self._init_tokenizer()

    def _records(self, split: str) -> list[dict]:
        return load_karpathy(self.dataset_json, self.splits[split])

    def _tokenizer_corpus(self) -> Iterable[str]:
        for r in self._records("train"):
            yield from r["captions"]

    def _path(self, r: dict) -> str:
        return str(self.image_root / r["filepath"] / r["filename"])

    def _build_examples(self, split: str) -> list[Example]:
        recs = self._records(split)
        if split == "train":
            return [
                Example(f"{r['image_id']}:{k}", self._path(r), "", c, tuple(r["captions"]))
                for r in recs
                for k, c in enumerate(r["captions"])
            ]
        return [Example(r["image_id"], self._path(r), "", r["captions"][0], tuple(r["captions"])) for r in recs]

    def make_metric(self):
        return CaptionMetrics()
