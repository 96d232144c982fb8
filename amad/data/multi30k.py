"""``Multi30KDataModule``: multimodal En→De translation (Multi30K task 1) with Flickr30k images.

Examples: id = line number in the split, source = English sentence, target = German sentence,
references = ``[target]`` (one reference, as Multi30K), image = ``<image_root>/<name from
image_splits/<split>.txt>``. Scored with sacreBLEU (:class:`~amad.metrics.TranslationBLEU`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from amad.data.base import FileImagesDataModule
from amad.data.dataset import Example
from amad.data.formats import MULTI30K_HELP, load_multi30k
from amad.metrics import TranslationBLEU


class Multi30KDataModule(FileImagesDataModule):
    """Multi30K (real data, not shipped: see docs/datasets.md).

    Args:
        root: the Multi30K ``data/task1`` folder (``raw/`` and ``image_splits/``).
        image_root: folder with the Flickr30k images (``flickr30k-images/``).
        train_split, val_split, test_split: Multi30K split names.
        src_lang, tgt_lang: file suffixes of source and target (``en``, ``de``; ``fr``/``cs`` exist too).
        lowercase_bleu: make :meth:`make_metric` score case-insensitively (VL-T5 does).
        **kwargs: ``skip_corrupt`` (drop and count examples whose image is missing or undecodable,
            instead of raising) and the settings of :class:`~amad.data.base.VisionTextDataModule`
            (``image_size`` defaults to 384 here, BLIP-base's).
    """

    layout_help = MULTI30K_HELP
    task = "translate"

    def __init__(
        self,
        root: str,
        image_root: str,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test_2016_flickr",
        src_lang: str = "en",
        tgt_lang: str = "de",
        lowercase_bleu: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root, self.image_root = Path(root), Path(image_root)
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        self.lowercase_bleu = lowercase_bleu
        self._init_tokenizer()

    def _records(self, split: str) -> list[dict]:
        return load_multi30k(self.root, self.splits[split], self.src_lang, self.tgt_lang)

    def _tokenizer_corpus(self) -> Iterable[str]:
        for r in self._records("train"):
            yield r["source"]
            yield r["target"]

    def _build_examples(self, split: str) -> list[Example]:
        return [
            Example(r["index"], str(self.image_root / r["image"]), r["source"], r["target"], (r["target"],))
            for r in self._records(split)
        ]

    def make_metric(self):
        return TranslationBLEU(lowercase=self.lowercase_bleu, bleu4=True)
