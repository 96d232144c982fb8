import pytest

from amad.models import resolve_layer_map


@pytest.mark.parametrize(
    ("lt", "ls", "expected"),
    [
        (12, 6, [1, 3, 5, 7, 9, 11]),
        (12, 4, [2, 5, 8, 11]),
        (4, 2, [1, 3]),
        (3, 2, [1, 2]),
        (4, 4, [0, 1, 2, 3]),
        (5, 1, [4]),
    ],
)
def test_uniform(lt, ls, expected):
    assert resolve_layer_map("uniform", lt, ls) == expected


def test_last_and_first():
    assert resolve_layer_map("last", 12, 4) == [8, 9, 10, 11]
    assert resolve_layer_map("last", 4, 4) == [0, 1, 2, 3]
    assert resolve_layer_map("first", 12, 3) == [0, 1, 2]


def test_explicit_list_with_negative_indices():
    assert resolve_layer_map([0, 5, -1], 12, 3) == [0, 5, 11]
    assert resolve_layer_map((3, 3), 4, 2) == [3, 3]  # repeats are allowed


@pytest.mark.parametrize(
    ("spec", "lt", "ls", "match"),
    [
        ([0, 1], 4, 3, "has 2 entries; the student has 3"),
        ([0, 4], 4, 2, "out of range"),
        ([0, -5], 4, 2, "out of range"),
        ([0, 1.0], 4, 2, "expected an int"),
        ("middle", 4, 2, "unknown layer map 'middle'"),
        ("uniform", 2, 4, "student_layers <= teacher_layers"),
        ("uniform", 0, 1, ">= 1"),
    ],
)
def test_errors(spec, lt, ls, match):
    with pytest.raises(ValueError, match=match):
        resolve_layer_map(spec, lt, ls)
