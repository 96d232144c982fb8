"""Training data on freshly generated scenes (SYNTHETIC): the teachers' pre-training, never the students'.

:class:`~amad.scenes.generator.SceneGenerator` draws unlimited easy-VQA-like scenes, a pure function of
``(seed, index)``; this module turns them into training examples:

* :class:`GeneratedTaskDataset`: the examples of an embedded task (VQA questions and answers with the
  easy-VQA templates, template captions, En→De translations) on generated scenes, items exactly like
  :class:`~amad.data.dataset.VisionTextDataset`'s, so the task's DataModule, tokenizer and collate serve
  them unchanged (``train_scenes=N`` of the embedded DataModules).
* :class:`SceneAttributeDataset`: (image, attribute labels) for the vision stage of a teacher's
  pre-training: shape, colour, size, row and column of the one shape, as drawn (batched by
  :class:`amad.data.collate.AttributeCollator`).

Drawing a scene takes a few milliseconds (PIL at 2× size, then the reader's check that its attributes
are unambiguous): too slow to draw 64 scenes for every training step on two cores. So the datasets
read a :class:`ScenePool`, the first ``size`` scenes of a seed drawn once (in parallel processes),
kept in memory as one uint8 tensor and cached on disk under ``$AMAD_CACHE/scenes/`` (a few MB
compressed); examples cycle over it, each with its own question or template. Test images are never
generated: the generator draws new geometry from its own seed.
"""

from __future__ import annotations

import functools
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from amad.paths import cache_root
from amad.scenes.attributes import COLS, PALETTE, ROWS, SHAPES, SIZES, ShapeAttributes
from amad.scenes.captions import CAPTION_TEMPLATES, TEMPLATES, captions, render
from amad.scenes.generator import SceneGenerator
from amad.scenes.text import vqa_pairs

#: easy-VQA kept about 32 % of an image's open questions and 8 % of its yes/no ones (docs/datasets.md):
#: a generated question is drawn with these weights, so answer kinds come in the package's proportions.
OPEN_WEIGHT, YES_NO_WEIGHT = 0.32, 0.08
#: The attributes the vision stage predicts, and their classes.
ATTRIBUTE_CLASSES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(PALETTE),
    "size": SIZES,
    "row": ROWS,
    "col": COLS,
}


def _draw(seed: int, start: int, stop: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    gen = SceneGenerator(seed)
    scenes = [gen[i] for i in range(start, stop)]
    images = np.stack([im.numpy() for im, _ in scenes])
    return images, [vars(a) for _, a in scenes]


class ScenePool:
    """Scenes ``0 .. size - 1`` of :class:`~amad.scenes.generator.SceneGenerator` ``seed``, drawn once.

    ``pool[i]`` returns ``(uint8 image (3, 64, 64), ShapeAttributes)`` for ``i % size`` (a pool serves
    datasets of any length). Drawn in parallel processes on first use and cached in memory (per process)
    and on disk (``$AMAD_CACHE/scenes/seed<seed>-<size>.npz``).
    """

    def __init__(self, seed: int = 0, size: int = 20_000) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.seed, self.size = seed, size
        self.images, self.attributes = _load_pool(seed, size)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ShapeAttributes]:
        i = int(i) % self.size
        return self.images[i], self.attributes[i]


@functools.lru_cache(maxsize=4)
def _load_pool(seed: int, size: int) -> tuple[torch.Tensor, tuple[ShapeAttributes, ...]]:
    path = cache_root() / "scenes" / f"seed{seed}-{size}.npz"
    loaded = _read_pool(path, size) if path.is_file() else None
    if loaded is not None:
        images, attrs = loaded
    else:
        workers = max(1, min(os.cpu_count() or 1, 8))
        bounds = np.unique(np.linspace(0, size, workers * 4 + 1).astype(int))  # no empty part (tiny pools)
        with ProcessPoolExecutor(workers) as ex:
            parts = list(ex.map(_draw, [seed] * (len(bounds) - 1), bounds[:-1], bounds[1:]))
        images = np.concatenate([p[0] for p in parts])
        attrs = [a for p in parts for a in p[1]]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + f".{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, images=images, attributes=json.dumps(attrs))
        os.replace(tmp, path)  # atomic: a half-written pool is never read
    return torch.from_numpy(images), tuple(ShapeAttributes(**a) for a in attrs)


def _read_pool(path: Path, size: int) -> tuple[np.ndarray, list[dict[str, Any]]] | None:
    """A cached pool, or None when it is damaged (set aside with one warning line: it is drawn again)."""
    from amad.artefacts import DamagedFile, check_zip, set_aside

    try:
        check_zip(path, "scene pool (.npz)")
        with np.load(path) as f:
            images, attrs = f["images"], json.loads(str(f["attributes"]))
        if len(images) != size or len(attrs) != size:
            raise DamagedFile(path, f"holds {len(images)} scenes, expected {size}")
    except DamagedFile as err:
        set_aside(path, err.problem)
        return None
    except (OSError, ValueError, KeyError) as err:
        set_aside(path, f"{type(err).__name__}: {err}")
        return None
    return images, attrs


def attribute_labels(attrs: ShapeAttributes) -> torch.Tensor:
    """(5,) long: the class index of shape, colour, size, row and column."""
    return torch.tensor(
        [
            SHAPES.index(attrs.shape),
            ATTRIBUTE_CLASSES["colour"].index(attrs.colour),
            SIZES.index(attrs.size),
            attrs.row,
            attrs.col,
        ]
    )


class GeneratedTaskDataset(Dataset):
    """``size`` training examples of ``task`` on generated scenes; example ``i`` shows pool scene ``i % pool``.

    Args:
        task: ``vqa`` (one easy-VQA question per example, drawn with the package's weights of open and
            yes/no questions), ``caption`` (template ``i % 5`` of the caption task; the references are all
            five) or ``translate`` (English source, German target, template ``i % 7``).
        size: number of examples.
        seed: the scene stream's seed (and the question draw's).
        pool: number of distinct scenes (:class:`ScenePool`).
    """

    def __init__(self, task: str, size: int, seed: int = 0, pool: int = 20_000) -> None:
        if task not in ("vqa", "caption", "translate"):
            raise ValueError(f"generated scenes serve the tasks vqa, caption and translate, not {task!r}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.task, self.size, self.seed = task, size, seed
        self.scenes = ScenePool(seed, min(pool, size))

    def __len__(self) -> int:
        return self.size

    def text(self, i: int, attrs: ShapeAttributes) -> tuple[str, str, tuple[str, ...]]:
        """(source, target, references) of example ``i`` for a scene with ``attrs``."""
        if self.task == "vqa":
            pairs = vqa_pairs(attrs)
            weights = np.array([OPEN_WEIGHT if a not in ("yes", "no") else YES_NO_WEIGHT for _, a in pairs])
            k = np.random.default_rng([self.seed, i, 1]).choice(len(pairs), p=weights / weights.sum())
            question, answer = pairs[int(k)]
            return question, answer, (answer,)
        if self.task == "caption":
            return "", render(attrs, CAPTION_TEMPLATES[i % len(CAPTION_TEMPLATES)])[0], tuple(captions(attrs))
        en, de = render(attrs, i % len(TEMPLATES))
        return en, de, (de,)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, attrs = self.scenes[i]
        source, target, refs = self.text(i, attrs)
        return {
            "image": image,
            "id": f"scene{i}",
            "source": source,
            "target": target,
            "references": list(refs),
            "attributes": attrs,
        }


class SceneAttributeDataset(Dataset):
    """``size`` examples of generated scenes with their attribute labels, for the vision stage of pre-training.

    Items: ``(uint8 image (3, 64, 64), long labels (5,))`` in the order of :data:`ATTRIBUTE_CLASSES`;
    example ``i`` shows pool scene ``i % pool``.
    """

    def __init__(self, size: int, seed: int = 0, pool: int = 20_000) -> None:
        self.size = size
        self.scenes = ScenePool(seed, min(pool, size))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, attrs = self.scenes[i]
        return image, attribute_labels(attrs)
