"""Shared fixtures for the model-adapter tests: one tiny model per family, built once."""

from __future__ import annotations

import pytest
import torch

from amad.bench._batches import random_batch
from amad.models import build_model

FAMILIES = ("blip-vqa", "blip-caption", "vlt5")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest single-threaded on a shared 2-core machine (thread contention)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def tiny(family):
    """(adapter in eval mode, padded batch of 4) for each family."""
    model = build_model(family, "tiny", seed=0).eval()
    return model, random_batch(family, 4, model=model, seed=1)
