"""Distillation as plain ``nn.Module``\\ s: the frozen teacher, the attention distiller, and the task
that turns a batch into the named loss terms. No Lightning here (see :mod:`amad.lit`)."""

from amad.distill.attention import AttentionDistiller
from amad.distill.task import DistillationTask
from amad.distill.teacher import FrozenTeacher

__all__ = ["AttentionDistiller", "DistillationTask", "FrozenTeacher"]
