"""The base of the embedded tasks (SYNTHETIC, from the easy-vqa package): one image split, and
optional training on freshly generated scenes.

Every embedded task shows the package's images: ``train`` / ``val`` divide the package's 4,000 train
images by image (``val_fraction`` of them, seeded by ``split_seed``), ``test`` is its 1,000 test images.
With ``train_scenes=N`` the training split is instead N examples on generated scenes
(:class:`~amad.scenes.datasets.GeneratedTaskDataset`): how a teacher is pre-trained; students never
set it. Validation and test stay the package's images.
"""

from __future__ import annotations

import random
from typing import Any

from amad.data.base import STAGE_SPLITS, VisionTextDataModule
from amad.scenes.easyvqa_source import load_images


def split_train_images(num_images: int, val_fraction: float, split_seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train image ids, val image ids), each sorted; disjoint and covering all."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ids = list(range(num_images))
    random.Random(split_seed).shuffle(ids)
    n_val = round(num_images * val_fraction)
    return sorted(ids[n_val:]), sorted(ids[:n_val])


class EmbeddedDataModule(VisionTextDataModule):
    """Base of :class:`~amad.data.EasyVQADataModule`, :class:`~amad.data.ShapesCaptionDataModule` and
    :class:`~amad.data.ShapesTranslationDataModule`.

    Args:
        val_fraction: share of the package's train images held out as validation.
        split_seed: seed of the image-level train/val split (keep it fixed across compared runs).
        train_scenes: train on this many examples on generated scenes instead of the package's training
            split (a teacher's pre-training stage; None: the package's split).
        scene_seed: seed of the generated scenes (and of their questions).
        scene_pool: distinct generated scenes the examples cycle over (drawn once and cached).
        **kwargs: the settings of :class:`~amad.data.base.VisionTextDataModule`.
    """

    synthetic = True
    native_image_size = 64

    def __init__(
        self,
        *,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        train_scenes: int | None = None,
        scene_seed: int = 0,
        scene_pool: int = 20_000,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.train_scenes, self.scene_seed, self.scene_pool = train_scenes, scene_seed, scene_pool

    def image_ids(self, split: str) -> list[int]:
        """The package image ids of ``split`` (ids of the package's train images for train and val)."""
        if split == "test":
            return list(range(len(load_images("test"))))
        train_ids, val_ids = split_train_images(len(load_images("train")), self.val_fraction, self.split_seed)
        return train_ids if split == "train" else val_ids

    def setup(self, stage: str | None = None) -> None:
        if self.train_scenes and "train" not in self.datasets and "train" in STAGE_SPLITS.get(stage or "", ("train",)):
            from amad.scenes.datasets import GeneratedTaskDataset

            self.datasets["train"] = GeneratedTaskDataset(
                self.task, self.train_scenes, self.scene_seed, self.scene_pool
            )
        super().setup(stage)

    @property
    def metadata(self) -> dict[str, Any]:
        meta = super().metadata
        if self.train_scenes:
            meta["train_source"] = f"{self.train_scenes} examples on generated scenes (seed {self.scene_seed})"
        return meta
