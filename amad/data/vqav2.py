"""``VQAv2DataModule``: VQA v2 from the official question / annotation JSON files and COCO images.

Examples: id = ``question_id``, source = the question, target = the most common of the 10 human
answers (ties: the first listed), references = all 10 answers (scored by the official VQA
accuracy). Images: ``<image_root>/<subset>/COCO_<subset>_<12-digit id>.jpg``.

Splits: by default train = ``train_subsets`` (train2014), val = test = ``val_subset`` (val2014;
test-dev/test-std need the evaluation server). With ``split_files`` (e.g. the Karpathy VQA splits
VL-T5 uses: ``karpathy_train.json`` / ``karpathy_val.json`` / ``karpathy_test.json``, lists of records
with ``question_id``), every split is drawn from the union of all the subsets named, keeping the
question ids the file lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from amad.data.base import FileImagesDataModule
from amad.data.dataset import Example
from amad.data.formats import (
    VQAV2_HELP,
    coco_image_path,
    load_question_ids,
    load_vqav2,
    most_common_answer,
    vqav2_paths,
)
from amad.metrics import VQAAccuracy


class VQAv2DataModule(FileImagesDataModule):
    """VQA v2 (real data, not shipped: see docs/datasets.md for the layout and where to get it).

    Args:
        root: folder with ``v2_OpenEnded_mscoco_<subset>_questions.json`` and
            ``v2_mscoco_<subset>_annotations.json``.
        image_root: folder with the COCO image folders (``train2014/``, ``val2014/``).
        train_subsets: subsets whose questions train the model (default ``["train2014"]``).
        val_subset: subset used for validation.
        test_subset: subset used for testing (needs annotations).
        split_files: optional ``{"train"|"val"|"test": path}``; a split listed here keeps only the
            question ids in its file, drawn from all named subsets.
        **kwargs: ``skip_corrupt`` (drop and count examples whose image is missing or undecodable,
            instead of raising) and the settings of :class:`~amad.data.base.VisionTextDataModule`
            (``image_size`` defaults to 384 here, BLIP-base's); without ``tokenizer_path`` a word
            tokenizer is built from the training text (pass a checkpoint's tokenizer folder for BLIP /
            VL-T5 weights).
    """

    layout_help = VQAV2_HELP
    task = "vqa"

    def __init__(
        self,
        root: str,
        image_root: str,
        train_subsets: Sequence[str] = ("train2014",),
        val_subset: str = "val2014",
        test_subset: str = "val2014",
        split_files: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root, self.image_root = Path(root), Path(image_root)
        self.subsets = {"train": tuple(train_subsets), "val": (val_subset,), "test": (test_subset,)}
        self.split_files = dict(split_files or {})
        unknown = set(self.split_files) - set(self.subsets)
        if unknown:
            raise ValueError(f"split_files keys must be train/val/test, got {sorted(unknown)}")
        self._records: dict[str, list[dict]] = {}
        self._init_tokenizer()

    def _subset_records(self, subset: str) -> list[dict]:
        if subset not in self._records:
            q, a = vqav2_paths(self.root, subset)
            self._records[subset] = load_vqav2(q, a)
        return self._records[subset]

    def _split_records(self, split: str) -> list[dict]:
        if split in self.split_files:
            pool = dict.fromkeys(s for subs in self.subsets.values() for s in subs)
            wanted = load_question_ids(self.split_files[split])
            return [r for s in pool for r in self._subset_records(s) if r["question_id"] in wanted]
        return [r for s in self.subsets[split] for r in self._subset_records(s)]

    def _tokenizer_corpus(self) -> Iterable[str]:
        for r in self._split_records("train"):
            yield r["question"]
            yield from r["answers"]

    def _build_examples(self, split: str) -> list[Example]:
        out = []
        for r in self._split_records(split):
            if not r["answers"]:
                raise ValueError(
                    f"VQA v2 question {r['question_id']} ({r['subset']}) has no answers: "
                    "the test2015 subset cannot be used for training or evaluation here"
                )
            out.append(
                Example(
                    r["question_id"],
                    str(coco_image_path(self.image_root, r["subset"], r["image_id"])),
                    r["question"],
                    most_common_answer(r["answers"]),
                    tuple(r["answers"]),
                )
            )
        return out

    def make_metric(self):
        return VQAAccuracy()
