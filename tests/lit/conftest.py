"""Fixtures of the Lightning integration tests (helpers live in lit_helpers.py)."""

from __future__ import annotations

import pytest
import torch

from amad.models import build_model


@pytest.fixture(scope="module")
def tiny_teacher_factory():
    cache = {}

    def make(family: str):
        if family not in cache:
            torch.manual_seed(0)
            cache[family] = build_model(family, preset="tiny")
        return cache[family]

    return make
