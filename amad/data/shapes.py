"""Synthetic captioning and En→De translation tasks derived from the easy-VQA images.

**Synthetic.** Nothing offline ships COCO or Multi30K, so these two tasks stand in for them. The
shape, colour, size and position of each image are read from its pixels
(:mod:`amad.scenes.attributes`, checked against every easy-VQA answer) and written out by
:mod:`amad.scenes.captions` templates.

Splits are the easy-VQA image splits (train/val carved from the package's train images by
:func:`~amad.data.embedded.split_train_images`, same ``split_seed`` → same images as
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
from collections.abc import Iterable
from typing import Any

from amad.data.dataset import Example, VisionTextDataset
from amad.data.easyvqa import random_flip_rot90
from amad.data.embedded import EmbeddedDataModule
from amad.data.images import TensorImages
from amad.metrics import ShapesCaptionMetrics, ShapesTranslationBLEU
from amad.scenes import easyvqa_source as src
from amad.scenes.attributes import ShapeAttributes, read_all
from amad.scenes.captions import CAPTION_TEMPLATES, TEMPLATES, all_sentences, captions, render


@functools.cache
def image_attributes(split: str) -> tuple[ShapeAttributes, ...]:
    """Attributes of every image of the easy-vqa ``split`` ("train" | "test"), index = image id."""
    return read_all(src.load_images(split))


def _caption_example(image_id: int, attrs: ShapeAttributes, template: int, example_id: int) -> Example:
    refs = tuple(captions(attrs))
    return Example(example_id, image_id, "", render(attrs, template)[0], refs, meta=(attrs, template), attributes=attrs)


def _augment_caption(image, ex: Example):
    image, k, flip = random_flip_rot90(image)
    attrs, template = ex.meta
    return image, _caption_example(ex.image, attrs.transformed(k, flip), template, ex.id)


def _translation_example(image_id: int, attrs: ShapeAttributes, template: int, example_id: int) -> Example:
    en, de = render(attrs, template)
    return Example(example_id, image_id, en, de, (de,), meta=(attrs, template), attributes=attrs)


def _augment_translation(image, ex: Example):
    image, k, flip = random_flip_rot90(image)
    attrs, template = ex.meta
    return image, _translation_example(ex.image, attrs.transformed(k, flip), template, ex.id)


class _ShapesDataModule(EmbeddedDataModule):
    def _split_images(self, split: str) -> tuple[list[int], tuple[ShapeAttributes, ...]]:
        return self.image_ids(split), image_attributes("test" if split == "test" else "train")

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
        captions_per_image: training examples per image (the first n of the 5 references).
        **kwargs: the settings of :class:`~amad.data.embedded.EmbeddedDataModule` (image split, generated
            scenes) and :class:`~amad.data.base.VisionTextDataModule`; ``fraction`` /
            ``subset`` count training examples, i.e. (image, caption) pairs; ``text_prefix`` is the
            whole source (e.g. ``"caption:"`` for VL-T5; empty gives ``[CLS] [SEP]``); ``augment`` is a
            random rot90 / flip with the position words re-rendered to match.
    """

    task = "caption"
    _augment = staticmethod(_augment_caption)

    def __init__(
        self,
        captions_per_image: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
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
        return ShapesCaptionMetrics()


class ShapesTranslationDataModule(_ShapesDataModule):
    """Synthetic multimodal En→De translation (Multi30K style) on the easy-VQA images.

    Args:
        pairs_per_image: training sentence pairs per image (templates ``(image_id + j) % 7``).
        **kwargs: the settings of :class:`~amad.data.embedded.EmbeddedDataModule` (image split, generated
            scenes) and :class:`~amad.data.base.VisionTextDataModule`; ``text_prefix`` is
            prepended to the English source (``"translate English to German:"`` for VL-T5);
            ``augment`` as in :class:`ShapesCaptionDataModule`.
    """

    task = "translate"
    _augment = staticmethod(_augment_translation)

    def __init__(
        self,
        pairs_per_image: int = len(TEMPLATES),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
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
        # The word tokenizer lower-cases, so generated German is lower-case: score case-insensitively.
        # bleu4 beside sacreBLEU: the captioning comparisons' pycocoevalcap BLEU-4, for one column across tasks
        return ShapesTranslationBLEU(lowercase=self.tokenizer_path is None, bleu4=True)
