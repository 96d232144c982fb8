"""Image classification on generated scenes (SYNTHETIC): which shape in which colour, 3 × 8 = 24 classes.

The data of the embedded ViT example (docs/models.md, "Distil your own transformers model"): each image is
one scene of :class:`~amad.scenes.generator.SceneGenerator` (a circle, rectangle or triangle in one of 8 colours
on a light background, at any size and position), its label ``shape_index · 8 + colour_index``
(:func:`scene_class`). Train, validation and test scenes come from three different seeds of the generator,
so no image is shared between splits; each split is a :class:`~amad.scenes.datasets.ScenePool`, drawn once
and cached on disk.

Batches are the keyword arguments of a transformers image classifier: ``{"pixel_values" (B, 3, S, S)
normalised to [-1, 1], "labels" (B,) long}``, what :class:`~amad.models.GenericAdapter` reads, plus
``"ids"`` (B,) long, the scenes' indices in their split (ignored by the model; the teacher cache's key).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from amad.data.collate import prepare_images
from amad.data.generated import GeneratedSplitsDataModule
from amad.scenes.attributes import PALETTE, SHAPES, ShapeAttributes
from amad.scenes.datasets import ScenePool

#: the class names, ``"<colour> <shape>"``, in label order
CLASS_NAMES: tuple[str, ...] = tuple(f"{c} {s}" for s in SHAPES for c in PALETTE)


def scene_class(attrs: ShapeAttributes) -> int:
    """The class of a scene: ``shape_index · 8 + colour_index`` (see :data:`CLASS_NAMES`)."""
    return SHAPES.index(attrs.shape) * len(PALETTE) + tuple(PALETTE).index(attrs.colour)


class SceneClassDataset(Dataset):
    """``size`` generated scenes of stream ``seed`` with their class: ``(uint8 image (3, 64, 64), int)``."""

    def __init__(self, size: int, seed: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.pool = ScenePool(seed, size)

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, attrs = self.pool[i]
        return image, scene_class(attrs)


class SceneClassesDataModule(GeneratedSplitsDataModule):
    """Shape-and-colour classification of generated scenes (24 classes).

    Args:
        train_size, val_size, test_size: scenes per split (each split its own generator seed).
        image_size: side of ``pixel_values`` (scenes are drawn at 64 and resized).
        batch_size: examples per training batch.
        eval_batch_size: examples per validation / test batch (default: ``batch_size``).
        eval_subset: evaluate on the first this many val and test scenes only (quick checks).
        seed: base seed of the scene streams (split seeds: ``seed + SPLIT_SEEDS[split]``).
        num_workers: DataLoader workers.

    Attributes:
        task: ``"classify"``; vocab_size: None (no text): what the CLI links into the system.
        num_classes: 24.
    """

    task = "classify"
    vocab_size = None
    num_classes = len(CLASS_NAMES)

    def __init__(
        self,
        train_size: int = 20_000,
        val_size: int = 1_000,
        test_size: int = 2_000,
        image_size: int = 32,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        eval_subset: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(train_size, val_size, test_size, batch_size, eval_batch_size, eval_subset, seed, num_workers)
        self.image_size = image_size

    def make_dataset(self, split: str, size: int, seed: int) -> SceneClassDataset:
        return SceneClassDataset(size, seed)

    def collate(self, items: list[tuple[torch.Tensor, int]]) -> dict[str, Any]:
        images = torch.stack([im for im, _ in items])
        return {
            "pixel_values": prepare_images(images, self.image_size),
            "labels": torch.tensor([c for _, c in items], dtype=torch.long),
        }
