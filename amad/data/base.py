"""The base DataModule: splits, tokenizer, low-data selection and loaders, shared by every task.

A DataModule subclass says what its splits contain (:meth:`VisionTextDataModule._build_examples`,
:meth:`VisionTextDataModule._make_dataset`) and which text trains the tokenizer
(:meth:`VisionTextDataModule._tokenizer_corpus`); the base class does the rest: tokenizer (built in
``__init__`` so ``vocab_size`` is known before ``setup``), low-data selection, dataloaders and the shared
collate. Examples and datasets are in :mod:`amad.data.dataset`, image sources in :mod:`amad.data.images`.

DataModules do not call ``save_hyperparameters``: Lightning refuses to log hyperparameters when a
DataModule and the LightningModule both have one of the same name (``seed``, ``image_size``) with
different values. LightningCLI's saved ``config.yaml`` records them instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from amad.data.collate import PreparedImages, VisionTextCollator
from amad.data.dataset import Example, VisionTextDataset, select
from amad.data.images import ImageFiles, TensorImages, check_image_files, warn_skipped
from amad.data.resumable import ResumableDataLoader
from amad.models.tokenizers import build_word_tokenizer, load_tokenizer

#: in-memory images are resized and normalised once per split while they take at most this many bytes
PREPARED_IMAGES_MAX_BYTES = 1 << 30

STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


class VisionTextDataModule(L.LightningDataModule):
    """Base of every amad DataModule: the loader, image and text settings all of them share.

    Subclasses set :attr:`task` ("vqa" | "caption" | "translate") and implement
    :meth:`_tokenizer_corpus`, :meth:`_build_examples` and :meth:`_make_dataset`; they take their own
    arguments and forward these with ``**kwargs`` (LightningCLI reads and checks them all).

    Args:
        batch_size: training batch size.
        eval_batch_size: val/test batch size (default: ``batch_size``).
        num_workers: DataLoader workers (0 is fine for the embedded tasks: images are in memory).
        image_size: side of ``pixel_values`` (images are resized, bilinear); None keeps the images' own
            size (64 for the embedded tasks; real data needs a value, e.g. 384 for BLIP-base).
        normalize: (mean, std) per channel, each a float or 3 floats.
        text_prefix: prepended to each source text (``"vqa:"`` for VL-T5); its words join the vocabulary.
        max_source_len: longest ``input_ids`` row (batches are padded to their longest row).
        max_target_len: longest ``labels`` row.
        tokenizer_path: load this saved tokenizer instead of building a word tokenizer from the training text.
        augment: answer-preserving augmentation of training images (embedded tasks only).
        fraction: keep this fraction of the training examples (seeded sample) for low-data runs.
        subset: keep at most this many training examples.
        eval_subset: keep at most this many val and test examples (a fixed seeded sample).
        seed: seed of the ``fraction`` / ``subset`` / ``eval_subset`` samples.
    """

    task: str = ""
    #: True for the tasks derived from easy-vqa (shown in logs and data cards).
    synthetic: bool = False
    #: side of the stored images when they all have one (easy-vqa: 64), else None
    native_image_size: int | None = None

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
        # split -> (its dataset, the same with images prepared once)
        self._prepared: dict[str, tuple[VisionTextDataset, VisionTextDataset]] = {}
        self._tokenizer: PreTrainedTokenizerBase | None = None

    @property
    def pixel_size(self) -> int | None:
        """Side of the ``pixel_values`` this DataModule makes: ``image_size``, else the images' own size
        (None where images differ in size and none was set)."""
        return self.image_size if self.image_size is not None else self.native_image_size

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
        dataset = self._with_prepared_images(split)
        collate = self.collator()
        if isinstance(dataset, VisionTextDataset):  # tokenize the split's texts once, not per batch
            collate.remember([ex.source for ex in dataset.examples], [ex.target for ex in dataset.examples])
        kwargs = dict(
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )
        if train and self._resumable():
            # exact mid-epoch resume (amad/data/resumable.py); DDP needs Lightning's distributed sampler
            # the order depends on the data seed and the run's seed_everything seed (so that seeds of
            # a comparison differ in order as well as in initialisation)
            run_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
            return ResumableDataLoader(
                dataset, self.batch_size, shuffle=True, seed=self.seed * 1_000_003 + run_seed, **kwargs
            )
        return DataLoader(
            dataset, batch_size=self.batch_size if train else self.eval_batch_size, shuffle=train, **kwargs
        )

    def _with_prepared_images(self, split: str) -> VisionTextDataset:
        """The split's dataset, with its in-memory images resized and normalised once
        (:class:`~amad.data.collate.PreparedImages`) rather than in every batch: same batches, less work
        per batch. Kept as is for image files, augmented images (the transform reads uint8 images) and
        images that would take more than :data:`PREPARED_IMAGES_MAX_BYTES` prepared."""
        ds = self.datasets[split]
        if split in self._prepared and self._prepared[split][0] is ds:
            return self._prepared[split][1]
        images = getattr(ds, "images", None)
        if not isinstance(ds, VisionTextDataset) or not isinstance(images, TensorImages) or ds.transform is not None:
            return ds
        if PreparedImages.nbytes(images.images, self.image_size) > PREPARED_IMAGES_MAX_BYTES:
            return ds
        mean, std = self.normalize
        prepared = PreparedImages(images.images, self.image_size, mean, std)
        self._prepared[split] = (ds, VisionTextDataset(ds.examples, prepared))
        return self._prepared[split][1]

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
    """Base of the real-data DataModules: images are files, checked in ``setup``, resized to ``image_size``
    (default 384, BLIP-base's input).

    Missing or (with ``skip_corrupt``) undecodable image files are found before training starts:
    without ``skip_corrupt`` the first one raises, naming the file; with it, examples whose image
    is unusable are dropped, counted in :attr:`skipped` (split → number of images) and warned about.
    """

    #: Expected layout and origin of the data (appended to file-not-found errors).
    layout_help: str = ""
    image_root: Path

    def __init__(self, *, skip_corrupt: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.image_size is None:  # files differ in size: resize to BLIP-base's input
            self.image_size = 384
        if self.augment:
            raise ValueError(f"{type(self).__name__}: augment is implemented for the embedded tasks only")
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
