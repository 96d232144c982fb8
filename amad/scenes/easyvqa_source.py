"""The data that ships inside the ``easy-vqa`` wheel, decoded once and cached in memory.

easy-VQA (https://github.com/vzhou842/easy-VQA, MIT licence) is a **synthetic** VQA set: each
64×64 PNG shows one coloured shape (circle, rectangle or triangle, 8 colours) on a light background;
questions come from 24 templates ("is there a red shape?", "what color is the circle?") with
13 one-word answers. 38,575 train / 9,673 test questions on 4,000 / 1,000 images.

Everything here is read from the installed package: no download.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SPLITS = ("train", "test")


def package_root() -> Path:
    """The ``easy_vqa/data`` folder of the installed wheel.

    Raises:
        ModuleNotFoundError: ``easy-vqa`` is not installed (``pip install easy-vqa``).
    """
    try:
        import easy_vqa
    except ModuleNotFoundError as err:  # pragma: no cover - it is a dependency
        raise ModuleNotFoundError(
            "the embedded tasks need the `easy-vqa` package (it ships the images and questions): pip install easy-vqa"
        ) from err
    return Path(easy_vqa.__file__).resolve().parent / "data"


@dataclass(frozen=True)
class EasyVQAQuestion:
    """One easy-VQA question; ``index`` is its position in the split's ``questions.json``."""

    index: int
    question: str
    answer: str
    image_id: int


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"easy-vqa split must be one of {SPLITS}, got {split!r}")


@functools.cache
def load_questions(split: str) -> tuple[EasyVQAQuestion, ...]:
    """All questions of ``split`` ("train" or "test"), in file order."""
    _check_split(split)
    path = package_root() / split / "questions.json"
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)
    return tuple(EasyVQAQuestion(i, q, a, int(img)) for i, (q, a, img) in enumerate(rows))


@functools.cache
def load_images(split: str) -> torch.Tensor:
    """All images of ``split`` as one uint8 tensor (N, 3, 64, 64); row ``i`` is ``images/i.png``.

    Decoded once per process (about 0.1 ms an image) and shared by every DataModule.
    """
    _check_split(split)
    folder = package_root() / split / "images"
    ids = sorted(int(p.stem) for p in folder.glob("*.png"))
    if ids != list(range(len(ids))) or not ids:
        raise RuntimeError(f"{folder}: expected images 0.png .. N-1.png, found {len(ids)} files")
    arr = np.empty((len(ids), 64, 64, 3), dtype=np.uint8)
    for i in ids:
        with Image.open(folder / f"{i}.png") as im:
            arr[i] = np.asarray(im.convert("RGB"))
    out = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
    out.requires_grad_(False)
    return out


def load_answers() -> tuple[str, ...]:
    """The 13 possible answers, in the package's order."""
    with open(package_root() / "answers.txt", encoding="utf-8") as f:
        return tuple(a.strip() for a in f if a.strip())
