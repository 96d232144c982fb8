"""Official-format readers on small fixtures, and the errors bad data gives."""

import gzip
import json
import shutil

import pytest

from amad.data.formats import (
    DataFormatError,
    coco_image_path,
    load_karpathy,
    load_multi30k,
    load_question_ids,
    load_vqav2,
    most_common_answer,
    vqav2_paths,
)


def test_load_vqav2(fixtures):
    q, a = vqav2_paths(fixtures / "vqav2", "train2014")
    recs = load_vqav2(q, a)
    assert [r["question_id"] for r in recs] == [9000, 9001, 25002, 30003]
    r = recs[1]
    assert set(r) == {"question_id", "image_id", "question", "answers", "subset"}
    assert (r["image_id"], r["question"], r["subset"]) == (9, "How many forks are there?", "train2014")
    assert len(r["answers"]) == 10 and all(isinstance(x, str) for x in r["answers"])
    assert most_common_answer(r["answers"]) == "2"
    assert most_common_answer(["a", "b", "b", "a"]) == "a"  # tie: first listed
    no_answers = load_vqav2(q)  # test2015-style: questions only
    assert all(x["answers"] == [] for x in no_answers)
    assert coco_image_path("/coco", "val2014", 42).as_posix() == "/coco/val2014/COCO_val2014_000000000042.jpg"


def test_vqav2_errors(fixtures, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)v2_OpenEnded_mscoco_test9_questions\.json.*visualqa\.org"):
        load_vqav2(*vqav2_paths(tmp_path, "test9"))
    bad = tmp_path / "q.json"
    bad.write_text("{not json")
    with pytest.raises(DataFormatError, match=r"q\.json"):
        load_vqav2(bad)
    bad.write_text(json.dumps({"data_subtype": "x", "questions": []}))
    with pytest.raises(DataFormatError, match="no questions"):
        load_vqav2(bad)
    q, _ = vqav2_paths(fixtures / "vqav2", "train2014")
    _, a_val = vqav2_paths(fixtures / "vqav2", "val2014")
    with pytest.raises(DataFormatError, match="no annotation for question 9000"):
        load_vqav2(q, a_val)


def test_question_id_split_files(fixtures, tmp_path):
    assert load_question_ids(fixtures / "vqav2" / "karpathy_val.json") == {73002}
    assert load_question_ids(fixtures / "vqav2" / "karpathy_test.json") == {74003, 74004}
    txt = tmp_path / "ids.txt"
    txt.write_text("1\n2\n")
    assert load_question_ids(txt) == {1, 2}


def test_load_karpathy(fixtures):
    path = fixtures / "karpathy" / "dataset_coco.json"
    test = load_karpathy(path, "test")
    assert [r["image_id"] for r in test] == [73, 74]
    r = test[0]
    assert set(r) == {"image_id", "filepath", "filename", "captions"}
    assert (r["filepath"], r["filename"]) == ("val2014", "COCO_val2014_000000000073.jpg")
    assert len(r["captions"]) == 5 and r["captions"][0] == "A photo number 4 showing thing 0."
    assert len(load_karpathy(path, ("train", "restval"))) == 3
    with pytest.raises(DataFormatError, match=r"split \['nope'\] is empty"):
        load_karpathy(path, "nope")
    with pytest.raises(FileNotFoundError, match="caption_datasets"):
        load_karpathy(fixtures / "karpathy" / "missing.json", "test")


def test_load_multi30k_plain_and_gz(fixtures):
    train = load_multi30k(fixtures / "multi30k", "train")  # .gz files
    assert len(train) == 4
    assert train[0] == {
        "index": 0,
        "image": "1000092795.jpg",
        "source": "Two young guys are outside.",
        "target": "Zwei junge Männer sind im Freien.",
    }
    test = load_multi30k(fixtures / "multi30k", "test_2016_flickr")  # plain files
    assert [r["image"] for r in test] == ["1007129816.jpg", "1009434119.jpg"]


def test_multi30k_errors(fixtures, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)Multi30K root folder not found.*image_splits"):
        load_multi30k(tmp_path / "nothing", "train")
    root = tmp_path / "m30k"
    shutil.copytree(fixtures / "multi30k", root)
    with pytest.raises(FileNotFoundError, match=r"raw/val2\.en"):
        load_multi30k(root, "val2")
    (root / "raw" / "val.de").write_text("Nur eine Zeile.\n")
    with pytest.raises(DataFormatError, match=r"(?s)val\.en has 2 lines.*val\.de has 1"):
        load_multi30k(root, "val")
    (root / "raw" / "val.de").write_text("a\nb\n")
    (root / "image_splits" / "val.txt").write_text("x.jpg\n")
    with pytest.raises(DataFormatError, match=r"image_splits/val\.txt has 1 lines"):
        load_multi30k(root, "val")
    for name in ("raw/empty.en", "raw/empty.de", "image_splits/empty.txt"):
        (root / name).write_text("")
    with pytest.raises(DataFormatError, match="empty"):
        load_multi30k(root, "empty")
    (root / "image_splits" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"image_splits/val\.txt"):
        load_multi30k(root, "val")
    with gzip.open(root / "raw" / "train.en.gz", "rb") as f:
        assert f.read().decode().count("\n") == 4
