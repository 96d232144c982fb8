"""Callbacks: everything that logs or plots lives here, never in the models."""

from amad.callbacks.head_alignment import HeadAlignmentCallback, plot_head_alignment
from amad.callbacks.predictions import PredictionSamplesCallback

__all__ = ["HeadAlignmentCallback", "PredictionSamplesCallback", "plot_head_alignment"]
