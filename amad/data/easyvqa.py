"""``EasyVQADataModule``: the embedded default VQA task (synthetic easy-VQA, no download).

Splits:
    * ``train`` / ``val``: the package's train split (4,000 images, 38,575 questions), divided **by
      image** with ``split_seed`` (``val_fraction`` of the images, default 10 % = 400 images,
      ~3.9 k questions, go to val); no image is in both.
    * ``test``: the package's test split (1,000 images, 9,673 questions).

Each example: source = the question, target = the one-word answer, references = ``[answer]``
(VQAAccuracy then scores exact match after the official answer normalisation), id = the
question's index in its ``questions.json`` (unique within a split).

Augmentation (``augment=True``, training only): a random quarter turn and a random horizontal
flip. Every easy-VQA question asks about colour, shape or presence (24 templates, none about
position or orientation; tests/data checks this), so answers stay valid.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from amad.data.dataset import Example, VisionTextDataset
from amad.data.embedded import EmbeddedDataModule
from amad.data.images import TensorImages
from amad.metrics import EasyVQAAccuracy
from amad.scenes import easyvqa_source as src


def random_flip_rot90(image: torch.Tensor) -> tuple[torch.Tensor, int, bool]:
    """Random quarter turn (k in 0..3, counter-clockwise) then a random horizontal flip."""
    k = int(torch.randint(4, ()).item())
    flip = bool(torch.randint(2, ()).item())
    out = torch.rot90(image, k, dims=(-2, -1))
    if flip:
        out = out.flip(-1)
    return out.contiguous(), k, flip


def _augment_vqa(image: torch.Tensor, ex: Example) -> tuple[torch.Tensor, Example]:
    return random_flip_rot90(image)[0], ex


class EasyVQADataModule(EmbeddedDataModule):
    """Synthetic easy-VQA questions on 64×64 single-shape images, decoded once and kept in memory.

    Args:
        **kwargs: the image split and generated scenes of :class:`~amad.data.embedded.EmbeddedDataModule`
            (``val_fraction``, ``split_seed``, ``train_scenes``...) and the loader, image and text settings
            of :class:`~amad.data.base.VisionTextDataModule` (``batch_size``, ``image_size``,
            ``fraction``...); ``augment`` here is a random rot90 / horizontal flip of training images
            (answers are invariant).
    """

    task = "vqa"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_tokenizer()

    def _tokenizer_corpus(self) -> Iterable[str]:
        # All of the package's train text (val carve included), so the vocabulary does not depend
        # on val_fraction / fraction / seed: teacher and student runs share ids.
        for q in src.load_questions("train"):
            yield q.question
            yield q.answer

    def _build_examples(self, split: str) -> list[Example]:
        questions = src.load_questions("test" if split == "test" else "train")
        if split != "test":
            keep = set(self.image_ids(split))
            questions = tuple(q for q in questions if q.image_id in keep)
        return [Example(q.index, q.image_id, q.question, q.answer, (q.answer,)) for q in questions]

    def _make_dataset(self, split: str, examples: list[Example]) -> VisionTextDataset:
        images = src.load_images("test" if split == "test" else "train")
        transform = _augment_vqa if (self.augment and split == "train") else None
        return VisionTextDataset(examples, TensorImages(images), transform)

    def make_metric(self):
        return EasyVQAAccuracy()

    @property
    def metadata(self) -> dict:
        meta = super().metadata
        meta.update(
            source="easy-vqa (PyPI wheel), synthetic: one coloured shape per 64x64 image",
            answers=list(src.load_answers()),
        )
        return meta
