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

import random
from collections.abc import Iterable, Sequence

import torch

from amad.data import easyvqa_source as src
from amad.data.base import Example, TensorImages, VisionTextDataModule, VisionTextDataset


def split_train_images(num_images: int, val_fraction: float, split_seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train image ids, val image ids), each sorted; disjoint and covering all."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ids = list(range(num_images))
    random.Random(split_seed).shuffle(ids)
    n_val = round(num_images * val_fraction)
    return sorted(ids[n_val:]), sorted(ids[:n_val])


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


class EasyVQADataModule(VisionTextDataModule):
    """Synthetic easy-VQA questions on 64×64 single-shape images, decoded once and kept in memory.

    Args:
        batch_size: training batch size.
        eval_batch_size: val/test batch size (default: ``batch_size``).
        num_workers: DataLoader workers (0 is fine: images are in memory).
        image_size: side of ``pixel_values``; images are 64×64 and resized (bilinear) if different.
        normalize: (mean, std) per channel, each a float or 3 floats.
        text_prefix: prepended to each question (``"vqa:"`` for VL-T5); its words join the vocabulary.
        max_source_len: longest ``input_ids`` row (easy-vqa questions are at most 10 words).
        max_target_len: longest ``labels`` row (answers are one word + EOS).
        tokenizer_path: load this saved tokenizer instead of building one from the train questions.
        augment: random rot90 / horizontal flip of training images (answers are invariant).
        fraction: keep this fraction of the training questions (seeded sample) for low-data runs.
        subset: keep at most this many training questions.
        eval_subset: keep at most this many val and test questions (smoke runs).
        seed: seed of the ``fraction`` / ``subset`` samples.
        val_fraction: share of the package's train images held out as validation.
        split_seed: seed of the image-level train/val split (keep it fixed across compared runs).
    """

    task = "vqa"
    synthetic = True

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        image_size: int = 64,
        normalize: tuple[float | Sequence[float], float | Sequence[float]] = (0.5, 0.5),
        text_prefix: str = "",
        max_source_len: int = 24,
        max_target_len: int = 8,
        tokenizer_path: str | None = None,
        augment: bool = False,
        fraction: float = 1.0,
        subset: int | None = None,
        eval_subset: int | None = None,
        seed: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
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
        )
        self.val_fraction = val_fraction
        self.split_seed = split_seed
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
            train_ids, val_ids = split_train_images(len(src.load_images("train")), self.val_fraction, self.split_seed)
            keep = set(train_ids if split == "train" else val_ids)
            questions = tuple(q for q in questions if q.image_id in keep)
        return [Example(q.index, q.image_id, q.question, q.answer, (q.answer,)) for q in questions]

    def _make_dataset(self, split: str, examples: list[Example]) -> VisionTextDataset:
        images = src.load_images("test" if split == "test" else "train")
        transform = _augment_vqa if (self.augment and split == "train") else None
        return VisionTextDataset(examples, TensorImages(images), transform)

    def make_metric(self):
        from amad.metrics import VQAAccuracy

        return VQAAccuracy()

    @property
    def metadata(self) -> dict:
        meta = super().metadata
        meta.update(
            source="easy-vqa (PyPI wheel), synthetic: one coloured shape per 64x64 image",
            answers=list(src.load_answers()),
        )
        return meta
