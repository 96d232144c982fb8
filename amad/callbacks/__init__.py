"""Callbacks: everything that logs or plots lives here, never in the models."""

from amad.callbacks.head_alignment import HeadAlignmentCallback, plot_head_alignment
from amad.callbacks.predictions import PredictionSamplesCallback
from amad.callbacks.progress import ProgressLine
from amad.callbacks.timing import StepTimer

__all__ = ["HeadAlignmentCallback", "PredictionSamplesCallback", "ProgressLine", "StepTimer", "plot_head_alignment"]
