"""VQA accuracy: the official normalisation rules and the 10-answer leave-one-out average, by hand."""

import pytest
import torch

from amad.metrics import VQAAccuracy, metric_dict, normalize_answer, vqa_score
from amad.metrics.vqa import process_digit_article, process_punctuation


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two", "2"),  # number words -> digits, lower-case
        ("a dog", "dog"),  # articles dropped
        ("the  Red   ball", "red ball"),  # whitespace collapsed
        ("dont", "don't"),  # contractions get their apostrophe back
        ("isnt it", "isn't it"),
        ("yes.", "yes"),  # a period not before a digit is removed
        ("3.5", "3.5"),  # ...but kept inside a number
        ("1,000", "1000"),  # digit-comma-digit: punctuation removed, not spaced
        ("black/white", "black white"),  # a mark between words becomes a space
        ("black / white", "black white"),  # ...or is dropped when next to a space
        ("\tnone\n", "0"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_official_helpers_match_script_behaviour():
    # "," touches a space -> dropped; "!" does not -> replaced by a space (kept as the script does).
    assert process_punctuation("hello, world!") == "hello world "
    assert process_punctuation("up-to-date") == "up to date"
    assert process_digit_article("An Apple") == "apple"


def test_ten_answers_leave_one_out_by_hand():
    answers = ["2"] * 4 + ["3"] * 6
    # "2": for each of the 4 "2"-annotators left out, 3 others match -> 1; for the 6 others 4 match -> 1.
    assert vqa_score("2", answers) == 1.0
    answers = ["2"] * 2 + ["3"] * 8
    # "2": 2 subsets drop a "2" (1 match -> 1/3), 8 subsets keep both (2 matches -> 2/3): (2/3 + 16/3)/10
    assert vqa_score("2", answers) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    answers = ["yes"] + ["no"] * 9
    # "yes": leaving out the one "yes" gives 0, the other 9 subsets give 1/3.
    assert vqa_score("yes", answers) == pytest.approx(9 * (1 / 3) / 10)
    assert vqa_score("maybe", answers) == 0.0
    answers = ["3"] * 3 + ["4"] * 7
    # exactly 3 humans: min(2/3, 1) when one of them is left out, 1 otherwise -> 0.3*2/3 + 0.7
    assert vqa_score("3", answers) == pytest.approx(0.3 * 2 / 3 + 0.7)


def test_normalisation_applies_only_when_humans_disagree():
    # All ten agree on "2": the official script does not normalise, so "two" does not match.
    assert vqa_score("two", ["2"] * 10) == 0.0
    assert vqa_score("2", ["2"] * 10) == 1.0
    # Disagreement switches normalisation on for prediction and answers.
    answers = ["two"] * 5 + ["2"] * 3 + ["3"] * 2
    assert vqa_score("Two.", answers) == 1.0
    assert vqa_score("an umbrella", ["umbrella"] * 3 + ["an umbrella"] * 2 + ["parasol"] * 5) == 1.0


def test_single_reference_is_normalised_exact_match():
    assert vqa_score("yes", ["yes"]) == 1.0
    assert vqa_score("Yes.", ["yes"]) == 1.0
    assert vqa_score("no", ["yes"]) == 0.0
    with pytest.raises(ValueError):
        vqa_score("x", [])


def test_metric_mean_and_dedup_by_id():
    m = VQAAccuracy()
    m.update(["red", "blue"], [["red"], ["green"]], ids=[1, 2])
    m.update(["red", "circle"], [["red"], ["circle"]], ids=[1, 3])  # id 1 repeated (sampler padding)
    out = m.compute()
    assert isinstance(out, torch.Tensor) and out.dim() == 0
    assert float(out) == pytest.approx(2 / 3)
    assert metric_dict(m) == {"accuracy": pytest.approx(2 / 3)}
    m.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert float(m.compute()) == 0.0


def test_metric_without_ids_counts_every_row_and_checks_sizes():
    m = VQAAccuracy()
    m.update(["a", "a"], [["a"], ["b"]])
    m.update(["a"], ["a"])  # a bare string is one reference
    assert float(m.compute()) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        m.update(["a"], [["a"], ["b"]])
    with pytest.raises(TypeError):
        m.update("a", [["a"]])
