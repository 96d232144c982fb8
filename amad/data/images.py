"""Where the pixels come from: images held in memory, image files read on demand, and their checks."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image


class TensorImages:
    """Images held in memory as one uint8 (N, 3, H, W) tensor; keys are row indices."""

    def __init__(self, images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("TensorImages wants a uint8 (N, 3, H, W) tensor")
        self.images = images

    def __call__(self, key: int) -> torch.Tensor:
        return self.images[int(key)]


class CorruptImageError(RuntimeError):
    """An image file exists but cannot be decoded."""


def load_image_file(path: str | Path, image_size: int | None) -> torch.Tensor:
    """Decode an image file to uint8 (3, S, S) RGB, resized (bicubic) to ``image_size`` if given.

    Raises:
        FileNotFoundError / CorruptImageError: naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if image_size is not None and im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.BICUBIC)
            arr = np.asarray(im, dtype=np.uint8).copy()
    except Exception as err:  # PIL raises several types for broken files
        raise CorruptImageError(f"cannot decode image file {path}: {err}") from err
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def check_image_files(paths: Iterable[str | Path], *, skip_corrupt: bool, help_text: str = "") -> set[str]:
    """Return the set of unusable files among ``paths``; raise on the first one unless ``skip_corrupt``.

    Missing files always count as unusable; with ``skip_corrupt`` every file is also decoded
    (``PIL.Image.verify``) so that broken ones are found before training rather than in the middle.
    """
    bad: set[str] = set()
    for p in dict.fromkeys(str(p) for p in paths):
        if not Path(p).is_file():
            if not skip_corrupt:
                raise FileNotFoundError(
                    f"image file {p} does not exist (or pass skip_corrupt=True to skip "
                    f"such examples)" + (f"\n{help_text}" if help_text else "")
                )
            bad.add(p)
            continue
        if skip_corrupt:
            try:
                with Image.open(p) as im:
                    im.verify()
                with Image.open(p) as im:
                    im.load()
            except Exception:
                bad.add(p)
    return bad


class ImageFiles:
    """Images read from disk on demand (COCO, Flickr30k); keys are file paths."""

    def __init__(self, image_size: int | None) -> None:
        self.image_size = image_size

    def __call__(self, key: str) -> torch.Tensor:
        return load_image_file(key, self.image_size)


def warn_skipped(name: str, skipped: set[str]) -> None:
    """One warning naming how many (and the first few) unusable images were skipped."""
    if skipped:
        first = ", ".join(sorted(skipped)[:3])
        warnings.warn(
            f"{name}: skipped {len(skipped)} missing/corrupt image(s) (skip_corrupt=True): {first}"
            + (" ..." if len(skipped) > 3 else ""),
            stacklevel=2,
        )
