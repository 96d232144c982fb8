"""Lightning systems: they wire the plain models and losses together (Lightning's systems vs models)."""

from amad.distill import AttentionDistiller, DistillationTask, FrozenTeacher
from amad.lit.base import TaskModule
from amad.lit.distill import DistillationModule
from amad.lit.finetune import FineTuneModule

__all__ = [
    "AttentionDistiller",
    "DistillationModule",
    "DistillationTask",
    "FineTuneModule",
    "FrozenTeacher",
    "TaskModule",
]
