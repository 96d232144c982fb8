"""The distillation task: frozen teacher + trainable student + attention distiller → the named loss terms.

The objective (docs/method.md §4), per training batch::

    L = α·L_task + β·τ²·KL(softmax(z_T/τ) ‖ softmax(z_S/τ)) + γ·L_attn

A plain ``nn.Module`` (timm / open_clip style): :class:`~amad.lit.DistillationModule` is the Lightning
glue around it (optimizer, logging, metrics, checkpoints), and ``amad bench`` times this very object,
so the step that is benchmarked is the step that trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from amad.distill.attention import AttentionDistiller, LayerMapSpec
from amad.distill.cache import TeacherCache
from amad.distill.teacher import FrozenTeacher
from amad.losses.methods import AttentionMethod
from amad.losses.output import output_kd_loss


class DistillationTask(nn.Module):
    """Every term of the distillation objective for one batch.

    Args:
        teacher: the teacher adapter (wrapped in :class:`FrozenTeacher` unless it is one).
        student: the student adapter (trainable).
        attention: the attention method and its options (:mod:`amad.losses.methods`); None for none.
        alpha: weight α of the task cross-entropy.
        beta: weight β of the output distillation (0 turns it off and skips computing it).
        kd_temperature: τ of the output distillation (the loss is multiplied by τ²).
        gamma: weight γ of the attention loss (0 turns it off).
        sites: the attention sites to distil (default: every site of the family; self-attention sites
            only for methods on query/key/value relations).
        layer_map: student layer → teacher layer per site (see :class:`AttentionDistiller`).
        attention_source: where the attention losses take the maps from. ``maps`` (default): both models
            run eager attention and return the maps of the distilled layers. ``qk``: both models run
            their fast attention (SDPA) and return only the queries, keys, scale, mask and position bias
            of the distilled layers; :func:`amad.losses.qk.qk_attention_loss` rebuilds the maps in chunks
            of query rows (same loss and gradients; no whole map kept or built). ``qk`` serves every map
            method but ``amad_proj`` on equal grids (``ValueError`` otherwise); ``minilm_relation`` takes
            its Q/K/V projections under either.
        teacher_cache: the teacher's outputs on the training examples, computed once
            (:class:`~amad.distill.cache.TeacherCache`): when set, :meth:`forward` replays them for the
            batch's examples instead of running the teacher (the caller checks that the cache serves
            this objective: :meth:`TeacherCache.serves`). Settable later as :attr:`teacher_cache`.
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        attention: AttentionMethod | None,
        *,
        alpha: float = 1.0,
        beta: float = 1.0,
        kd_temperature: float = 2.0,
        gamma: float = 1.0,
        sites: Sequence[str] | None = None,
        layer_map: LayerMapSpec = "uniform",
        attention_source: Literal["maps", "qk"] = "maps",
        teacher_cache: TeacherCache | None = None,
    ) -> None:
        super().__init__()
        self.teacher = teacher if isinstance(teacher, FrozenTeacher) else FrozenTeacher(teacher)
        self.student = student
        self.attention_source = attention_source
        self.attn = AttentionDistiller(self.teacher.model, student, attention, sites, layer_map, attention_source)
        self.alpha, self.beta, self.gamma, self.kd_temperature = alpha, beta, gamma, kd_temperature
        self.teacher_cache = teacher_cache

    def train(self, mode: bool = True) -> DistillationTask:
        """Put the student (and the attention criteria) in ``mode``; the teacher stays in eval."""
        super().train(mode)
        self.teacher.train(False)
        return self

    @property
    def uses_teacher(self) -> bool:
        """Whether the objective needs the teacher at all (output KD or an attention loss)."""
        return self.beta > 0 or self.uses_attention

    @property
    def uses_attention(self) -> bool:
        return self.gamma > 0 and self.attn.enabled

    def capture(self) -> dict[str, Any]:
        """What both models must capture for this objective: ``sites``, ``qkv_sites`` (and, for the
        teacher, ``layers``: only the teacher layers the layer map uses), and under ``qk`` the
        ``attention_source`` (the models then run SDPA even when nothing is captured)."""
        if not self.uses_attention:
            return {"sites": (), "qkv_sites": (), **self._source()}
        map_sites, qkv_sites = self.attn.capture_sites()
        return {"sites": map_sites, "qkv_sites": qkv_sites, **self._source()}

    def _source(self) -> dict[str, str]:
        # "maps" is the adapters' default: passed only when it is "qk"
        return {"attention_source": "qk"} if self.attention_source == "qk" else {}

    def teacher_outputs(self, batch: dict[str, Any]) -> Any:
        """The frozen teacher's forward with exactly the captures this objective needs (no graph)."""
        layers = self.attn.teacher_layers() if self.uses_attention else None
        return self.teacher(batch, **self.capture(), layers=layers)

    def forward(self, batch: dict[str, Any], teacher_out: Any = None) -> dict[str, Tensor]:
        """Every term of the objective (unweighted), plus ``loss`` (the weighted sum).

        Args:
            batch: the batch dict (docs/architecture.md).
            teacher_out: the teacher's :class:`~amad.models.AdapterOutput` for this very batch if it was
                computed already; else replayed from :attr:`teacher_cache` when one is set, else computed
                here.

        Returns:
            ``loss_task``, ``loss_kd`` (if β > 0), ``loss_attn`` and ``loss_attn/<site>`` (if γ > 0 and
            a method is set), and ``loss``.
        """
        s_out = self.student(batch, **self.capture())
        terms: dict[str, Tensor] = {"loss_task": s_out.loss}
        loss = self.alpha * s_out.loss
        if self.uses_teacher:
            if teacher_out is not None:
                t_out = teacher_out
            elif self.teacher_cache is not None:  # cached once per example, shaped like this batch's outputs
                heads = self.attn.teacher_heads() if self.uses_attention else None  # only the heads read
                t_out = self.teacher_cache.replay(batch, s_out, heads)
            else:
                t_out = self.teacher_outputs(batch)
            if self.beta > 0:
                terms["loss_kd"] = output_kd_loss(s_out.logits, t_out.logits, s_out.target_mask, self.kd_temperature)
                loss = loss + self.beta * terms["loss_kd"]
            if self.uses_attention:
                attn, per_site = self.attn(t_out, s_out)
                terms["loss_attn"] = attn
                terms.update({f"loss_attn/{site}": v for site, v in per_site.items()})
                loss = loss + self.gamma * attn
        terms["loss"] = loss
        return terms

    @torch.no_grad()
    def head_alignment(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Teacher→student head weights on ``batch`` for every distilled (site, layer) pair.

        Returns:
            ``"<site>/s<l>-t<m>"`` → (Ht, Hs) weights averaged over the batch (rows sum to 1), for
            methods that have weights (AMAD: a_ij of Eq. 3; one-to-one: its fixed assignment).
        """
        if not self.attn.enabled:
            return {}
        was_training = self.student.training
        self.student.eval()
        try:
            map_sites, qkv_sites = self.attn.capture_sites()
            s_out = self.student(batch, sites=map_sites, qkv_sites=qkv_sites, **self._source())
            t_out = self.teacher(
                batch, sites=map_sites, qkv_sites=qkv_sites, layers=self.attn.teacher_layers(), **self._source()
            )
            return self.attn.weights(t_out, s_out)
        finally:
            self.student.train(was_training)
