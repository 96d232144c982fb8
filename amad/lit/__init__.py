"""Lightning systems: they wire the plain models and losses together (Lightning's systems vs models)."""

from amad.lit.base import TaskModule
from amad.lit.distill import AttentionDistiller, DistillationModule
from amad.lit.finetune import FineTuneModule
from amad.lit.teacher import FrozenTeacher

__all__ = ["AttentionDistiller", "DistillationModule", "FineTuneModule", "FrozenTeacher", "TaskModule"]
