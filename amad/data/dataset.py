"""Examples, the dataset over them, and the low-data selection every DataModule applies."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class Example:
    """One (image, source text, target text) example.

    Attributes:
        id: unique within its split (question id, image id, line number); metrics de-duplicate by it.
        image: key of the image in the split's image source (row index or file path).
        source: the source text (question, English sentence, "" for captioning).
        target: the training target (answer, caption, translation).
        references: what predictions are scored against.
        meta: anything a dataset transform needs (e.g. shape attributes for augmentation).
        attributes: the image's :class:`~amad.scenes.attributes.ShapeAttributes` in the synthetic
            tasks (what the shape-and-colour metric scores against), else None.
    """

    id: int | str
    image: int | str
    source: str
    target: str
    references: tuple[str, ...]
    meta: Any = None
    attributes: Any = None


Transform = Callable[[torch.Tensor, Example], tuple[torch.Tensor, Example]]


class VisionTextDataset(Dataset):
    """Examples plus an image source; items are the dicts :class:`VisionTextCollator` consumes.

    Args:
        examples: the split's examples.
        images: callable key → uint8 (3, H, W).
        transform: optional (image, example) → (image, example), e.g. answer-preserving augmentation.
    """

    def __init__(
        self, examples: Sequence[Example], images: Callable[[Any], torch.Tensor], transform: Transform | None = None
    ) -> None:
        self.examples = list(examples)
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.examples[i]
        img = self.images(ex.image)
        if self.transform is not None:
            img, ex = self.transform(img, ex)
        item = {"image": img, "id": ex.id, "source": ex.source, "target": ex.target, "references": list(ex.references)}
        if ex.attributes is not None:
            item["attributes"] = ex.attributes
        return item


def select(items: Sequence[Any], *, fraction: float = 1.0, subset: int | None = None, seed: int = 0) -> list[Any]:
    """Deterministic low-data selection: keep ``fraction`` of ``items`` then at most ``subset``.

    The kept items are a seeded random sample, returned in their original order. Raises on an empty
    result so that a typo in ``fraction`` fails loudly.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n = len(items)
    k = max(1, round(n * fraction)) if n else 0
    if subset is not None:
        if subset < 1:
            raise ValueError(f"subset must be >= 1, got {subset}")
        k = min(k, subset)
    if k >= n:
        return list(items)
    keep = sorted(random.Random(seed).sample(range(n), k))
    return [items[i] for i in keep]
