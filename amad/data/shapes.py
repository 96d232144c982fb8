"""Synthetic captioning and En→De translation tasks derived from the easy-VQA images.

**Synthetic.** Nothing offline ships COCO or Multi30K, so these two tasks stand in for them. The
shape, colour, size and position of each image are read from its pixels
(:mod:`amad.data.shape_attributes`, checked against every easy-VQA answer) and written out by
:mod:`amad.data.shapes_text` templates.

Splits are the easy-VQA image splits (train/val carved from the package's train images by
:func:`~amad.data.easyvqa.split_train_images`, same ``split_seed`` → same images as
:class:`~amad.data.easyvqa.EasyVQADataModule`; test = the package's 1,000 test images).

``ShapesCaptionDataModule`` (task "caption", COCO-Karpathy style): source = ``""`` (so
``input_ids`` is ``[CLS] [SEP]`` or just the prefix), 5 reference captions per image. Training
uses **every reference as its own example** (as COCO caption fine-tuning does): 5 × 3,600 =
18,000 train examples; val/test have one example per image (target = the first reference,
references = all 5).

``ShapesTranslationDataModule`` (task "translate", Multi30K style): source = an English caption,
target = its German translation, one reference. Training uses ``pairs_per_image`` templates per
image (default all 7 → 25,200 pairs); val/test use one pair per image, template ``image_id % 7``.

Augmentation (``augment=True``, training only): random rot90 / horizontal flip of the image, with
the position words of the texts re-rendered for the transformed image (so they stay true).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from amad.data import easyvqa_source as src
from amad.data.base import Example, TensorImages, VisionTextDataModule, VisionTextDataset
from amad.data.easyvqa import random_flip_rot90, split_train_images
from amad.data.shape_attributes import ShapeAttributes, read_all
from amad.data.shapes_text import CAPTION_TEMPLATES, TEMPLATES, all_sentences, captions, render


@functools.cache
def image_attributes(split: str) -> tuple[ShapeAttributes, ...]:
    """Attributes of every image of the easy-vqa ``split`` ("train" | "test"), index = image id."""
    return read_all(src.load_images(split))


def _image_ids(split: str, val_fraction: float, split_seed: int) -> list[int]:
    if split == "test":
        return list(range(len(src.load_images("test"))))
    train_ids, val_ids = split_train_images(len(src.load_images("train")), val_fraction, split_seed)
    return train_ids if split == "train" else val_ids


def _caption_example(image_id: int, attrs: ShapeAttributes, template: int, example_id: int) -> Example:
    refs = tuple(captions(attrs))
    return Example(example_id, image_id, "", render(attrs, template)[0], refs, meta=(attrs, template))


def _augment_caption(image, ex: Example):
    image, k, flip = random_flip_rot90(image)
    attrs, template = ex.meta
    return image, _caption_example(ex.image, attrs.transformed(k, flip), template, ex.id)


def _translation_example(image_id: int, attrs: ShapeAttributes, template: int, example_id: int) -> Example:
    en, de = render(attrs, template)
    return Example(example_id, image_id, en, de, (de,), meta=(attrs, template))


def _augment_translation(image, ex: Example):
    image, k, flip = random_flip_rot90(image)
    attrs, template = ex.meta
    return image, _translation_example(ex.image, attrs.transformed(k, flip), template, ex.id)


class _ShapesDataModule(VisionTextDataModule):
    synthetic = True

    def __init__(self, *, val_fraction: float, split_seed: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.val_fraction = val_fraction
        self.split_seed = split_seed

    def _split_images(self, split: str) -> tuple[list[int], tuple[ShapeAttributes, ...]]:
        pkg = "test" if split == "test" else "train"
        return _image_ids(split, self.val_fraction, self.split_seed), image_attributes(pkg)

    def _make_dataset(self, split: str, examples: list[Example]) -> VisionTextDataset:
        images = src.load_images("test" if split == "test" else "train")
        transform = self._augment if (self.augment and split == "train") else None
        return VisionTextDataset(examples, TensorImages(images), transform)

    @property
    def metadata(self) -> dict:
        meta = super().metadata
        meta.update(
            source="derived from the easy-vqa images (synthetic): attributes read from pixels, sentences from templates"
        )
        return meta


class ShapesCaptionDataModule(_ShapesDataModule):
    """Synthetic captioning of the easy-VQA images (5 template captions per image).

    Args:
        batch_size, eval_batch_size, num_workers, image_size, normalize, tokenizer_path, fraction,
        subset, eval_subset, seed, val_fraction, split_seed: as in
            :class:`~amad.data.easyvqa.EasyVQADataModule` (``fraction``/``subset`` count training
            examples, i.e. (image, caption) pairs).
        text_prefix: the whole source (e.g. ``"caption:"`` for VL-T5); empty gives ``[CLS] [SEP]``.
        max_source_len: longest ``input_ids`` row.
        max_target_len: longest ``labels`` row (captions are at most 13 tokens + EOS).
        augment: random rot90 / flip, position words re-rendered to match.
        captions_per_image: training examples per image (the first n of the 5 references).
    """

    task = "caption"
    _augment = staticmethod(_augment_caption)

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        image_size: int = 64,
        normalize: tuple[float | Sequence[float], float | Sequence[float]] = (0.5, 0.5),
        text_prefix: str = "",
        max_source_len: int = 8,
        max_target_len: int = 24,
        tokenizer_path: str | None = None,
        augment: bool = False,
        fraction: float = 1.0,
        subset: int | None = None,
        eval_subset: int | None = None,
        seed: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        captions_per_image: int = 5,
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
            augment=augment,
            fraction=fraction,
            subset=subset,
            eval_subset=eval_subset,
            seed=seed,
            val_fraction=val_fraction,
            split_seed=split_seed,
        )
        if not 1 <= captions_per_image <= len(CAPTION_TEMPLATES):
            raise ValueError(f"captions_per_image must be in 1..{len(CAPTION_TEMPLATES)}")
        self.captions_per_image = captions_per_image
        self._init_tokenizer()

    def _tokenizer_corpus(self) -> Iterable[str]:
        # Every caption the templates can write (independent of pixels, splits and seeds).
        return (en for en, _ in all_sentences(CAPTION_TEMPLATES))

    def _build_examples(self, split: str) -> list[Example]:
        ids, attrs = self._split_images(split)
        if split == "train":
            return [
                _caption_example(i, attrs[i], t, i * 10 + t)
                for i in ids
                for t in CAPTION_TEMPLATES[: self.captions_per_image]
            ]
        return [_caption_example(i, attrs[i], CAPTION_TEMPLATES[0], i) for i in ids]

    def make_metric(self):
        from amad.metrics import CaptionMetrics

        return CaptionMetrics()


class ShapesTranslationDataModule(_ShapesDataModule):
    """Synthetic multimodal En→De translation (Multi30K style) on the easy-VQA images.

    Args:
        batch_size, eval_batch_size, num_workers, image_size, normalize, tokenizer_path, fraction,
        subset, eval_subset, seed, val_fraction, split_seed, augment: as in
            :class:`ShapesCaptionDataModule`.
        text_prefix: prepended to the English source (``"translate English to German:"`` for VL-T5).
        max_source_len: longest ``input_ids`` row.
        max_target_len: longest ``labels`` row.
        pairs_per_image: training sentence pairs per image (templates ``(image_id + j) % 7``).
    """

    task = "translate"
    _augment = staticmethod(_augment_translation)

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        image_size: int = 64,
        normalize: tuple[float | Sequence[float], float | Sequence[float]] = (0.5, 0.5),
        text_prefix: str = "",
        max_source_len: int = 32,
        max_target_len: int = 24,
        tokenizer_path: str | None = None,
        augment: bool = False,
        fraction: float = 1.0,
        subset: int | None = None,
        eval_subset: int | None = None,
        seed: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        pairs_per_image: int = len(TEMPLATES),
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
            augment=augment,
            fraction=fraction,
            subset=subset,
            eval_subset=eval_subset,
            seed=seed,
            val_fraction=val_fraction,
            split_seed=split_seed,
        )
        if not 1 <= pairs_per_image <= len(TEMPLATES):
            raise ValueError(f"pairs_per_image must be in 1..{len(TEMPLATES)}")
        self.pairs_per_image = pairs_per_image
        self._init_tokenizer()

    def _tokenizer_corpus(self) -> Iterable[str]:
        # One shared English + German vocabulary (as T5's), from every sentence the templates write.
        for en, de in all_sentences():
            yield en
            yield de

    def _build_examples(self, split: str) -> list[Example]:
        ids, attrs = self._split_images(split)
        n = len(TEMPLATES)
        if split == "train":
            pairs = [(i, (i + j) % n) for i in ids for j in range(self.pairs_per_image)]
        else:
            pairs = [(i, i % n) for i in ids]
        return [_translation_example(i, attrs[i], t, i * 10 + t) for i, t in pairs]

    def make_metric(self):
        from amad.metrics import TranslationBLEU

        # The word tokenizer lower-cases, so generated German is lower-case: score case-insensitively.
        return TranslationBLEU(lowercase=self.tokenizer_path is None)
