"""``Multi30KDataModule``: multimodal En→De translation (Multi30K task 1) with Flickr30k images.

Examples: id = line number in the split, source = English sentence, target = German sentence,
references = ``[target]`` (one reference, as Multi30K), image = ``<image_root>/<name from
image_splits/<split>.txt>``. Scored with sacreBLEU (:class:`~amad.metrics.TranslationBLEU`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from amad.data.base import Example, FileImagesDataModule
from amad.data.formats import MULTI30K_HELP, load_multi30k


class Multi30KDataModule(FileImagesDataModule):
    """Multi30K (real data, not shipped: see docs/datasets.md).

    Args:
        root: the Multi30K ``data/task1`` folder (``raw/`` and ``image_splits/``).
        image_root: folder with the Flickr30k images (``flickr30k-images/``).
        train_split, val_split, test_split: Multi30K split names.
        src_lang, tgt_lang: file suffixes of source and target (``en``, ``de``; ``fr``/``cs`` exist too).
        lowercase_bleu: make :meth:`make_metric` score case-insensitively (VL-T5 does).
        skip_corrupt: drop (and count) examples whose image is missing or undecodable.
        batch_size, eval_batch_size, num_workers, image_size, normalize, text_prefix, max_source_len,
        max_target_len, tokenizer_path, fraction, subset, eval_subset, seed: as in
            :class:`~amad.data.shapes.ShapesTranslationDataModule`.
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
        skip_corrupt: bool = False,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        image_size: int = 384,
        normalize: tuple[float | Sequence[float], float | Sequence[float]] = (0.5, 0.5),
        text_prefix: str = "",
        max_source_len: int = 64,
        max_target_len: int = 64,
        tokenizer_path: str | None = None,
        fraction: float = 1.0,
        subset: int | None = None,
        eval_subset: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            image_size=image_size,
            normalize=normalize,
            text_prefix=text_prefix,
            max_source_len=max_source_len,
            max_target_len=max_target_len,
            tokenizer_path=tokenizer_path,
            augment=False,
            fraction=fraction,
            subset=subset,
            eval_subset=eval_subset,
            seed=seed,
            skip_corrupt=skip_corrupt,
        )
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
        from amad.metrics import TranslationBLEU

        return TranslationBLEU(lowercase=self.lowercase_bleu)
