"""Fixtures of the loss tests."""

from __future__ import annotations

import pytest
from losses_helpers import make_masks, random_maps


@pytest.fixture
def maps():
    """teacher (3, 4, 5, 6), student (3, 3, 5, 6) requiring grad, query_mask (3, 5)."""
    qmask, kpad = make_masks()
    teacher = random_maps(H=4, seed=1, key_pad=kpad)
    student = random_maps(H=3, seed=2, key_pad=kpad).requires_grad_(True)
    return teacher, student, qmask
