"""Readers of the official file formats of VQA v2, COCO Karpathy captions and Multi30K.

Each reader returns plain records (dicts) and fails with a message that names the missing or bad
path, the layout it expected and where the data comes from. None of these data sets can be
downloaded on an offline machine; tests use small fixtures written in exactly these formats.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

VQAV2_HELP = (
    "VQA v2 layout: <root>/v2_OpenEnded_mscoco_<subset>_questions.json and "
    "<root>/v2_mscoco_<subset>_annotations.json (subset = train2014 | val2014; test2015 has no "
    "annotations), images in <image_root>/<subset>/COCO_<subset>_<12-digit image id>.jpg. "
    "Get them from https://visualqa.org/download.html and https://cocodataset.org/#download."
)
KARPATHY_HELP = (
    'Karpathy caption splits: dataset_coco.json (or dataset_flickr30k.json) = {"images": [{"filepath", '
    '"filename", "split": train|restval|val|test, "cocoid" or "imgid", "sentences": [{"raw"}]}]}, '
    "from the Karpathy 'caption_datasets.zip' (https://cs.stanford.edu/people/karpathy/deepimagesent/); "
    "images in <image_root>/<filepath>/<filename> (COCO train2014/ and val2014/)."
)
MULTI30K_HELP = (
    "Multi30K layout (https://github.com/multi30k/dataset, data/task1): <root>/raw/<split>.<lang> "
    "(plain or .gz, one sentence a line) and <root>/image_splits/<split>.txt (one image file name a "
    "line, aligned with the sentences); splits train, val, test_2016_flickr, test_2017_flickr, "
    "test_2017_mscoco, test_2018_flickr; images from Flickr30k (flickr30k-images/)."
)


class DataFormatError(ValueError):
    """A data file exists but does not have the expected content."""


def _require(path: Path, what: str, help_text: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}\n{help_text}")
    return path


def _load_json(path: Path, what: str, help_text: str) -> Any:
    _require(path, what, help_text)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{what} {path} is not valid JSON ({err}).\n{help_text}") from err


def most_common_answer(answers: Sequence[str]) -> str:
    """The answer given most often (ties: the one listed first)."""
    return Counter(answers).most_common(1)[0][0]


# ---- VQA v2 --------------------------------------------------------------------------------------
def vqav2_paths(root: str | Path, subset: str) -> tuple[Path, Path]:
    """(questions json, annotations json) of a VQA v2 subset under ``root`` (official file names)."""
    root = Path(root)
    return (root / f"v2_OpenEnded_mscoco_{subset}_questions.json", root / f"v2_mscoco_{subset}_annotations.json")


def coco_image_path(image_root: str | Path, subset: str, image_id: int) -> Path:
    """``<image_root>/<subset>/COCO_<subset>_<12-digit id>.jpg``."""
    return Path(image_root) / subset / f"COCO_{subset}_{int(image_id):012d}.jpg"


def load_vqav2(questions_json: str | Path, annotations_json: str | Path | None = None) -> list[dict]:
    """Read one VQA v2 subset.

    Args:
        questions_json: ``v2_OpenEnded_mscoco_<subset>_questions.json``.
        annotations_json: ``v2_mscoco_<subset>_annotations.json``; ``None`` for test2015 (no answers).

    Returns:
        Records ``{question_id, image_id, question, answers, subset}`` in file order; ``answers`` is
        the list of (10) human answer strings (``[]`` without annotations), ``subset`` the
        ``data_subtype`` of the questions file (e.g. "train2014", used for COCO file names).
    """
    qpath = Path(questions_json)
    qdata = _load_json(qpath, "VQA v2 questions file", VQAV2_HELP)
    if not isinstance(qdata, dict) or "questions" not in qdata:
        raise DataFormatError(f"{qpath}: expected a JSON object with a 'questions' list.\n{VQAV2_HELP}")
    subset = qdata.get("data_subtype") or qpath.stem.split("_")[-2]
    answers: dict[int, list[str]] = {}
    if annotations_json is not None:
        apath = Path(annotations_json)
        adata = _load_json(apath, "VQA v2 annotations file", VQAV2_HELP)
        if not isinstance(adata, dict) or "annotations" not in adata:
            raise DataFormatError(f"{apath}: expected a JSON object with an 'annotations' list.\n{VQAV2_HELP}")
        for ann in adata["annotations"]:
            answers[int(ann["question_id"])] = [str(a["answer"]) for a in ann["answers"]]
    records = []
    for q in qdata["questions"]:
        qid = int(q["question_id"])
        if annotations_json is not None and qid not in answers:
            raise DataFormatError(f"{annotations_json}: no annotation for question {qid} of {qpath}")
        records.append(
            {
                "question_id": qid,
                "image_id": int(q["image_id"]),
                "question": str(q["question"]),
                "answers": answers.get(qid, []),
                "subset": subset,
            }
        )
    if not records:
        raise DataFormatError(f"{qpath}: no questions")
    return records


def load_question_ids(path: str | Path) -> set[int]:
    """Question ids of a split file: a JSON list of ids, or of records with ``question_id`` (the
    VL-T5 ``karpathy_{train,val,test}.json`` files), or a text file with one id a line."""
    path = _require(Path(path), "VQA split file", "a JSON list of question ids or of {'question_id': ...}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise DataFormatError(f"{path}: expected a JSON list")
        return {int(d["question_id"]) if isinstance(d, dict) else int(d) for d in data}
    return {int(line) for line in text.split() if line.strip()}


# ---- COCO Karpathy -------------------------------------------------------------------------------
def load_karpathy(dataset_json: str | Path, split: str | Sequence[str]) -> list[dict]:
    """Images of a Karpathy split with their raw captions.

    Args:
        dataset_json: ``dataset_coco.json`` (or the Flickr8k/30k equivalents).
        split: "train", "restval", "val", "test", or several (e.g. ``("train", "restval")``, the
            usual 113 k-image training set).

    Returns:
        Records ``{image_id, filepath, filename, captions}`` (``image_id`` = ``cocoid`` when present,
        else ``imgid``; ``filepath`` "" when absent, as in Flickr30k; ``captions`` the raw strings).
    """
    path = Path(dataset_json)
    data = _load_json(path, "Karpathy split file", KARPATHY_HELP)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataFormatError(f"{path}: expected a JSON object with an 'images' list.\n{KARPATHY_HELP}")
    wanted = {split} if isinstance(split, str) else set(split)
    records = []
    for img in data["images"]:
        if img.get("split") not in wanted:
            continue
        caps = [str(s["raw"]).strip() for s in img.get("sentences", [])]
        if not caps:
            raise DataFormatError(f"{path}: image {img.get('filename')} has no sentences")
        records.append(
            {
                "image_id": int(img["cocoid"] if "cocoid" in img else img["imgid"]),
                "filepath": str(img.get("filepath", "")),
                "filename": str(img["filename"]),
                "captions": caps,
            }
        )
    if not records:
        present = sorted(Counter(i.get("split") for i in data["images"]).items(), key=str)
        raise DataFormatError(f"{path}: split {sorted(wanted)} is empty (splits present: {present})")
    return records


# ---- Multi30K ------------------------------------------------------------------------------------
def _read_lines(path_base: Path, help_text: str) -> tuple[list[str], Path]:
    for p in (path_base, path_base.with_name(path_base.name + ".gz")):
        if p.is_file():
            opener = gzip.open if p.suffix == ".gz" else open
            with opener(p, "rt", encoding="utf-8") as f:
                return f.read().splitlines(), p
    raise FileNotFoundError(f"{path_base} (or {path_base.name}.gz) not found\n{help_text}")


def load_multi30k(root: str | Path, split: str, src_lang: str = "en", tgt_lang: str = "de") -> list[dict]:
    """One Multi30K split.

    Args:
        root: folder holding ``raw/`` and ``image_splits/`` (the repo's ``data/task1``).
        split: e.g. "train", "val", "test_2016_flickr".

    Returns:
        Records ``{index, image, source, target}`` (``index`` = line number, ``image`` = the image
        file name).

    Raises:
        FileNotFoundError: a missing folder or file (named, with the layout).
        DataFormatError: the three files have different line counts (naming the files) or are empty.
    """
    root = Path(root)
    _require(root, "Multi30K root folder", MULTI30K_HELP)
    src, src_path = _read_lines(root / "raw" / f"{split}.{src_lang}", MULTI30K_HELP)
    tgt, tgt_path = _read_lines(root / "raw" / f"{split}.{tgt_lang}", MULTI30K_HELP)
    img_path = _require(root / "image_splits" / f"{split}.txt", "Multi30K image list", MULTI30K_HELP)
    images = img_path.read_text(encoding="utf-8").splitlines()
    if len(src) != len(tgt):
        raise DataFormatError(
            f"Multi30K line counts differ: {src_path} has {len(src)} lines, {tgt_path} has {len(tgt)}"
        )
    if len(images) != len(src):
        raise DataFormatError(
            f"Multi30K line counts differ: {img_path} has {len(images)} lines, {src_path} has {len(src)}"
        )
    if not src:
        raise DataFormatError(f"Multi30K split {split!r} is empty: {src_path}")
    # test_2017_mscoco lists "<file>#<caption index>": keep the file name.
    return [
        {"index": i, "image": im.strip().split("#")[0], "source": s.strip(), "target": t.strip()}
        for i, (im, s, t) in enumerate(zip(images, src, tgt, strict=False))
    ]
