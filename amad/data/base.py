"""Pieces every DataModule shares: examples, image sources, the dataset and the base DataModule.

A DataModule subclass says what its splits contain (:meth:`VisionTextDataModule._build_examples`,
:meth:`VisionTextDataModule._make_dataset`) and
which text trains the tokenizer (:meth:`VisionTextDataModule._tokenizer_corpus`); the base class
does the rest: tokenizer (built in ``__init__`` so ``vocab_size`` is known before ``setup``),
low-data selection, dataloaders and the shared collate.

DataModules do not call ``save_hyperparameters``: Lightning refuses to log hyperparameters when a
DataModule and the LightningModule both have one of the same name (``seed``, ``image_size``) with
different values. LightningCLI's saved ``config.yaml`` records them instead.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase

from amad.data.collate import VisionTextCollator
from amad.data.resumable import ResumableDataLoader
from amad.models.tokenizers import build_word_tokenizer, load_tokenizer

STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


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
    """

    id: int | str
    image: int | str
    source: str
    target: str
    references: tuple[str, ...]
    meta: Any = None


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
        return {"image": img, "id": ex.id, "source": ex.source, "target": ex.target, "references": list(ex.references)}


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


class VisionTextDataModule(L.LightningDataModule):
    """Base of every amad DataModule (see the subclasses for the arguments).

    Subclasses set :attr:`task` ("vqa" | "caption" | "translate") and implement
    :meth:`_tokenizer_corpus`, :meth:`_build_examples` and :meth:`_make_dataset`.
    """

    task: str = ""
    #: True for the tasks derived from easy-vqa (shown in logs and data cards).
    synthetic: bool = False

    def __init__(
        self,
        *,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        image_size: int | None = None,
        normalize: tuple[float | Sequence[float], float | Sequence[float]] = (0.5, 0.5),
        text_prefix: str = "",
        max_source_len: int = 40,
        max_target_len: int = 40,
        tokenizer_path: str | None = None,
        augment: bool = False,
        fraction: float = 1.0,
        subset: int | None = None,
        eval_subset: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.normalize = normalize
        self.text_prefix = text_prefix
        self.max_source_len = max_source_len
        self.max_target_len = max_target_len
        self.tokenizer_path = tokenizer_path
        self.augment = augment
        self.fraction = fraction
        self.subset = subset
        self.eval_subset = eval_subset
        self.seed = seed
        self.datasets: dict[str, VisionTextDataset] = {}
        self._tokenizer: PreTrainedTokenizerBase | None = None

    # ---- tokenizer -------------------------------------------------------------------------
    def _tokenizer_corpus(self) -> Iterable[str]:
        """Training text the word tokenizer is built from (when no ``tokenizer_path`` is given)."""
        raise NotImplementedError

    def _init_tokenizer(self) -> None:
        """Build or load the tokenizer; subclasses call this at the end of ``__init__``."""
        if self.tokenizer_path:
            self._tokenizer = load_tokenizer(self.tokenizer_path)
        else:
            corpus = list(self._tokenizer_corpus())
            if self.text_prefix:
                corpus.append(self.text_prefix)
            self._tokenizer = build_word_tokenizer(corpus)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer the batches are encoded with (ready right after ``__init__``)."""
        assert self._tokenizer is not None, "subclass forgot to call _init_tokenizer()"
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of token ids (``len(tokenizer)``), for building a model before ``setup``."""
        return len(self.tokenizer)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Keys of :func:`amad.metrics.metric_dict` for this task's metric."""
        return self.make_metric().names

    def make_metric(self):
        """A fresh metric for this task (VQAAccuracy, CaptionMetrics or TranslationBLEU)."""
        raise NotImplementedError

    @property
    def metadata(self) -> dict[str, Any]:
        """A short data card: name, task, whether synthetic, sizes of the splits built so far."""
        return {
            "name": type(self).__name__,
            "task": self.task,
            "synthetic": self.synthetic,
            "sizes": {k: len(v) for k, v in self.datasets.items()},
        }

    # ---- splits ----------------------------------------------------------------------------
    def _build_examples(self, split: str) -> list[Example]:
        """All examples of ``split`` ("train" | "val" | "test"), before low-data selection."""
        raise NotImplementedError

    def _make_dataset(self, split: str, examples: list[Example]) -> VisionTextDataset:
        """The dataset of the selected ``examples`` of ``split``."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        splits = STAGE_SPLITS.get(stage or "", ("train", "val", "test"))
        for split in splits:
            if split in self.datasets:
                continue
            examples = self._build_examples(split)
            if not examples:
                raise ValueError(f"{type(self).__name__}: the {split!r} split is empty")
            if split == "train":
                examples = select(examples, fraction=self.fraction, subset=self.subset, seed=self.seed)
            elif self.eval_subset is not None:
                examples = select(examples, subset=self.eval_subset, seed=self.seed)
            self.datasets[split] = self._make_dataset(split, examples)

    def collator(self) -> VisionTextCollator:
        """The collate function of this DataModule's batches."""
        return VisionTextCollator(
            self.tokenizer,
            image_size=self.image_size,
            normalize=self.normalize,
            text_prefix=self.text_prefix,
            max_source_len=self.max_source_len,
            max_target_len=self.max_target_len,
        )

    def _loader(self, split: str, *, train: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        kwargs = dict(
            num_workers=self.num_workers,
            collate_fn=self.collator(),
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )
        if train and self._resumable():
            # exact mid-epoch resume (amad/data/resumable.py); DDP needs Lightning's distributed sampler
            # the order depends on the data seed and the run's seed_everything seed (so that seeds of
            # a comparison differ in order as well as in initialisation)
            run_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
            return ResumableDataLoader(
                self.datasets[split], self.batch_size, shuffle=True, seed=self.seed * 1_000_003 + run_seed, **kwargs
            )
        return DataLoader(
            self.datasets[split], batch_size=self.batch_size if train else self.eval_batch_size, shuffle=train, **kwargs
        )

    def _resumable(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return trainer is None or trainer.world_size == 1

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)


class FileImagesDataModule(VisionTextDataModule):
    """Base of the real-data DataModules: images are files, checked in ``setup``.

    Missing or (with ``skip_corrupt``) undecodable image files are found before training starts:
    without ``skip_corrupt`` the first one raises, naming the file; with it, examples whose image
    is unusable are dropped, counted in :attr:`skipped` (split → number of images) and warned about.
    """

    #: Expected layout and origin of the data (appended to file-not-found errors).
    layout_help: str = ""
    image_root: Path

    def __init__(self, *, skip_corrupt: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.skip_corrupt = skip_corrupt
        self.skipped: dict[str, int] = {}

    def _make_dataset(self, split: str, examples: list[Example]) -> VisionTextDataset:
        if not Path(self.image_root).is_dir():
            raise FileNotFoundError(f"image folder {self.image_root} not found\n{self.layout_help}")
        bad = check_image_files(
            (ex.image for ex in examples), skip_corrupt=self.skip_corrupt, help_text=self.layout_help
        )
        self.skipped[split] = len(bad)
        warn_skipped(f"{type(self).__name__} {split}", bad)
        kept = [ex for ex in examples if str(ex.image) not in bad]
        if not kept:
            raise ValueError(f"{type(self).__name__}: no usable example left in the {split!r} split")
        return VisionTextDataset(kept, ImageFiles(self.image_size))


def warn_skipped(name: str, skipped: set[str]) -> None:
    """One warning naming how many (and the first few) unusable images were skipped."""
    if skipped:
        first = ", ".join(sorted(skipped)[:3])
        warnings.warn(
            f"{name}: skipped {len(skipped)} missing/corrupt image(s) (skip_corrupt=True): {first}"
            + (" ..." if len(skipped) > 3 else ""),
            stacklevel=2,
        )
