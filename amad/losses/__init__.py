"""Distillation losses: AMAD (Eq. 2-12 of "No Head Left Behind"), its baselines, and output KD.

Plain functions and ``nn.Module``s; nothing here imports Lightning. The contract is
``docs/method.md`` section 3; the reductions of every loss are listed in ``docs/losses.md``.
"""

from amad.losses.attention import AMAD_VARIANTS, amad_loss, amad_mixture, amad_weights, head_mean_loss, one_to_one_loss
from amad.losses.output import output_kd_loss
from amad.losses.projection import AMADProjectionLoss
from amad.losses.registry import (
    ATTENTION_METHODS,
    AttentionCriterion,
    build_attention_criterion,
    criterion_options,
)
from amad.losses.relation import minilm_relation_loss, relation_log_probs
from amad.losses.resize import resize_teacher_attention

__all__ = [
    "AMAD_VARIANTS",
    "ATTENTION_METHODS",
    "AMADProjectionLoss",
    "AttentionCriterion",
    "amad_loss",
    "amad_mixture",
    "amad_weights",
    "build_attention_criterion",
    "criterion_options",
    "head_mean_loss",
    "minilm_relation_loss",
    "one_to_one_loss",
    "output_kd_loss",
    "relation_log_probs",
    "resize_teacher_attention",
]
