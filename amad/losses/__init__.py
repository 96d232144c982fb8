"""Distillation losses: AMAD (Eq. 2-12 of "No Head Left Behind"), its baselines, and output KD.

Baselines: one-to-one and head-mean attention KD, MiniLMv2 relations, SHD, A2D and AttnDistill.
Plain functions and ``nn.Module``s; nothing here imports Lightning. The contract is
``docs/method.md`` section 3; every loss's reduction is listed in ``docs/losses.md``.
"""

from amad.losses.a2d import A2DLoss
from amad.losses.attention import (
    AMAD_VARIANTS,
    amad_loss,
    amad_mixture,
    amad_weights,
    head_mean_loss,
    one_to_one_loss,
)
from amad.losses.attn_distill import aggregate_heads, attn_distill_loss
from amad.losses.criteria import AttentionCriterion
from amad.losses.methods import (
    A2D,
    AMAD,
    ATTENTION_METHODS,
    METHODS,
    SHD,
    AMADProjection,
    AttentionMethod,
    AttnDistill,
    HeadMean,
    MiniLMRelation,
    OneToOne,
    attention_method,
    build_attention_criterion,
    criterion_input_kind,
    method_class,
)
from amad.losses.output import output_kd_loss
from amad.losses.projection import AMADProjectionLoss
from amad.losses.relation import minilm_relation_loss, relation_log_probs
from amad.losses.resize import resize_teacher_attention
from amad.losses.shd import shd_groups, shd_loss, shd_merge

__all__ = [
    "A2D",
    "AMAD",
    "AMAD_VARIANTS",
    "ATTENTION_METHODS",
    "METHODS",
    "SHD",
    "A2DLoss",
    "AMADProjection",
    "AMADProjectionLoss",
    "AttentionCriterion",
    "AttentionMethod",
    "AttnDistill",
    "HeadMean",
    "MiniLMRelation",
    "OneToOne",
    "aggregate_heads",
    "amad_loss",
    "amad_mixture",
    "amad_weights",
    "attention_method",
    "attn_distill_loss",
    "build_attention_criterion",
    "criterion_input_kind",
    "head_mean_loss",
    "method_class",
    "minilm_relation_loss",
    "one_to_one_loss",
    "output_kd_loss",
    "relation_log_probs",
    "resize_teacher_attention",
    "shd_groups",
    "shd_loss",
    "shd_merge",
]
