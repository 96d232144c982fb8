"""DistillationModule: a frozen teacher teaches a smaller student (task + output KD + attention).

The objective (docs/method.md section 4), per training batch::

    L = α·L_task + β·τ²·KL(softmax(z_T/τ) ‖ softmax(z_S/τ)) + γ·L_attn

``L_attn`` is AMAD (Eq. 9 by default) or a baseline in its place, averaged over the distilled
(site, teacher layer, student layer) pairs. Teacher and student see the same batch, so the maps of a
site have the same Q and K.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from torch import Tensor, nn

from amad.lit.base import TaskModule
from amad.lit.finetune import resolve_model
from amad.lit.teacher import FrozenTeacher

# Lightning >= 2.5.5 warns "Found N module(s) in eval mode" at every fit: the frozen teacher is in
# eval mode by design. Only that warning is silenced.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


class DistillationModule(TaskModule):
    """Distil a frozen teacher into a trainable student.

    Args:
        teacher: the fine-tuned teacher: a path (``save_pretrained`` dir or amad ``.ckpt``) or an
            adapter / :class:`FrozenTeacher` instance. It is wrapped in :class:`FrozenTeacher`.
        student: a dict of :func:`amad.models.derive_student` arguments (``num_heads``,
            ``num_layers``, ``hidden_size``, ``intermediate_size``, ``init``: ``teacher``|``random``),
            a path to a model, or an adapter instance. ``None`` copies the teacher's architecture.
        task: ``vqa``, ``caption`` or ``translate`` (linked from the DataModule by the CLI).
        alpha: weight α of the task cross-entropy.
        beta: weight β of the output distillation (0 turns it off and skips computing it).
        kd_temperature: τ of the output distillation (the loss is multiplied by τ²).
        attn_method: ``amad``, ``one_to_one``, ``head_mean``, ``minilm_relation``, ``shd``,
            ``a2d``, ``attn_distill``, ``amad_proj`` or ``none``.
        attn_options: keyword options of the attention method, e.g. ``{"variant": "kl",
            "temperature": 1.0, "detach_weights": false}`` for AMAD, ``{"kind": "mse"}`` for
            one-to-one / head-mean, ``{"num_relation_heads": 8}`` for MiniLMv2.
        gamma: weight γ of the attention loss.
        sites: the attention sites to distil (default: every site of the family; self-attention
            sites only for ``minilm_relation``).
        layer_map: ``uniform``, ``last``, an explicit list (student layer l ↔ teacher layer
            ``layer_map[l]``), or a dict site → one of those.
        skip_nonfinite: on a non-finite loss, skip the batch (counted in ``train/skipped_batches``)
            instead of stopping with an error naming the step and the term.
        vocab_size: the data's vocabulary size (linked from the DataModule by the CLI); a teacher
            with another vocabulary is rejected here rather than producing garbage.
        lr, weight_decay, warmup_ratio, schedule, max_new_tokens, lr_scale: see :class:`TaskModule`.
    """

    trainable_prefix = "student."

    def __init__(
        self,
        teacher: str | nn.Module,
        student: dict[str, Any] | str | nn.Module | None = None,
        task: Literal["vqa", "caption", "translate"] = "vqa",
        alpha: float = 1.0,
        beta: float = 1.0,
        kd_temperature: float = 2.0,
        attn_method: str = "amad",
        attn_options: dict[str, Any] | None = None,
        gamma: float = 1.0,
        sites: list[str] | None = None,
        layer_map: str | list[int] | dict[str, str | list[int]] = "uniform",
        skip_nonfinite: bool = False,
        vocab_size: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.05,
        schedule: Literal["linear", "cosine", "constant"] = "linear",
        max_new_tokens: int = 8,
        lr_scale: dict[str, float] | None = None,
    ) -> None:
        super().__init__(task, lr, weight_decay, warmup_ratio, schedule, max_new_tokens, lr_scale)
        modules = [n for n, v in (("teacher", teacher), ("student", student)) if isinstance(v, nn.Module)]
        self.save_hyperparameters(ignore=modules or None)
        self.teacher = teacher if isinstance(teacher, FrozenTeacher) else FrozenTeacher(resolve_model(teacher))
        self.student = self._resolve_student(student)
        self.alpha, self.beta, self.gamma, self.kd_temperature = alpha, beta, gamma, kd_temperature
        self.skip_nonfinite = skip_nonfinite
        self.attn = AttentionDistiller(
            self.teacher.model, self.student, attn_method, attn_options or {}, sites, layer_map
        )
        teacher_vocab = len(self.teacher.model.tokenizer) if self.teacher.model.tokenizer is not None else None
        if vocab_size is not None and teacher_vocab is not None and vocab_size != teacher_vocab:
            raise ValueError(
                f"the teacher's vocabulary has {teacher_vocab} tokens but the data's has "
                f"{vocab_size}: the teacher was trained on other data or another tokenizer"
            )
        self.register_buffer("skipped_batches", torch.zeros((), dtype=torch.long), persistent=True)

    def _resolve_student(self, spec: dict[str, Any] | str | nn.Module | None) -> nn.Module:
        from amad.models import derive_student

        if isinstance(spec, (str, nn.Module)):
            return resolve_model(spec)
        return derive_student(self.teacher.model, **(spec or {}))

    # -- the frozen teacher stays frozen ---------------------------------------------------------
    def train(self, mode: bool = True) -> DistillationModule:
        """Put the student (and criteria) in ``mode``; the teacher stays in eval (FrozenTeacher)."""
        super().train(mode)
        self.teacher.train(False)
        return self

    @property
    def trainable(self) -> nn.Module:
        return self.student

    def setup(self, stage: str) -> None:
        """Also check that teacher and data tokenise alike (same vocabulary, same ids)."""
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None)
        data_tok, teacher_tok = getattr(dm, "tokenizer", None), self.teacher.model.tokenizer
        if data_tok is not None and teacher_tok is not None and data_tok.get_vocab() != teacher_tok.get_vocab():
            raise ValueError(
                "the teacher's tokenizer differs from the DataModule's (different vocabulary or "
                "ids): distil with the data the teacher was trained on, or pass the teacher's "
                "tokenizer to the DataModule (tokenizer_path)"
            )

    def extra_trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.attn.parameters())

    # -- training --------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any], **kwargs: Any) -> Any:
        return self.student(batch, **kwargs)

    def distillation_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Every term of the objective for one batch (unweighted), plus ``loss`` (the weighted sum).

        Returns:
            ``loss_task``, ``loss_kd`` (if β > 0), ``loss_attn`` and ``loss_attn/<site>``
            (if γ > 0 and a method is set), and ``loss``.
        """
        from amad.losses import output_kd_loss

        use_kd = self.beta > 0
        use_attn = self.gamma > 0 and self.attn.enabled
        map_sites, qkv_sites = self.attn.capture_sites() if use_attn else ((), ())
        s_out = self.student(batch, sites=map_sites, qkv_sites=qkv_sites)
        terms: dict[str, Tensor] = {"loss_task": s_out.loss}
        loss = self.alpha * s_out.loss
        if use_kd or use_attn:
            # only the teacher layers the layer map uses are captured (a deeper teacher's other maps
            # are freed as its forward goes on)
            t_out = self.teacher(
                batch, sites=map_sites, qkv_sites=qkv_sites, layers=self.attn.teacher_layers() if use_attn else None
            )
            if use_kd:
                terms["loss_kd"] = output_kd_loss(s_out.logits, t_out.logits, s_out.target_mask, self.kd_temperature)
                loss = loss + self.beta * terms["loss_kd"]
            if use_attn:
                attn, per_site = self.attn(t_out, s_out)
                terms["loss_attn"] = attn
                terms.update({f"loss_attn/{site}": v for site, v in per_site.items()})
                loss = loss + self.gamma * attn
        terms["loss"] = loss
        return terms

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        terms = self.distillation_losses(batch)
        bs = len(batch["ids"])
        if not torch.isfinite(terms["loss"]):
            bad = sorted(k for k, v in terms.items() if not torch.isfinite(v))
            if not self.skip_nonfinite:
                raise FloatingPointError(
                    f"non-finite loss at global step {self.global_step} (batch {batch_idx}): "
                    f"terms {bad} are not finite. Set skip_nonfinite=True to skip such batches."
                )
            self.skipped_batches += 1
            self.log("train/skipped_batches", self.skipped_batches.float(), batch_size=bs)
            return None
        for name, value in terms.items():
            self.log(f"train/{name}", value, batch_size=bs, prog_bar=name == "loss")
        return terms["loss"]

    # -- checkpoints: the student only ---------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop ``teacher.*``: a student checkpoint never carries (or could restore) a teacher."""
        super().on_save_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        for k in [k for k in state if k.startswith("teacher.")]:
            del state[k]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Re-inject the live teacher so that loading stays strict for everything else."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        stale = [k for k in state if k.startswith("teacher.")]
        if stale:  # a foreign checkpoint: never let it overwrite the frozen teacher
            for k in stale:
                del state[k]
        state.update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})

    @torch.no_grad()
    def head_alignment(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Teacher→student head weights on ``batch`` for every distilled (site, layer) pair.

        Returns:
            ``"<site>/s<l>-t<m>"`` → (Ht, Hs) weights averaged over the batch (rows sum to 1), for
            methods that have weights (AMAD: a_ij of Eq. 3; one-to-one: its fixed assignment).
        """
        was_training = self.student.training
        self.student.eval()
        try:
            map_sites, qkv_sites = self.attn.capture_sites()
            s_out = self.student(batch, sites=map_sites, qkv_sites=qkv_sites)
            t_out = self.teacher(batch, sites=map_sites, qkv_sites=qkv_sites, layers=self.attn.teacher_layers())
            return self.attn.weights(t_out, s_out)
        finally:
            self.student.train(was_training)


class AttentionDistiller(nn.Module):
    """One attention criterion per distilled (site, student layer), and their mean.

    Args:
        teacher, student: model adapters (``sites``, ``num_layers(site)``, ``num_heads(site)``).
        method: attention method name (see :data:`amad.losses.ATTENTION_METHODS`) or ``none``.
        options: keyword options of the method.
        sites: sites to distil (None: all; self-attention sites only for QKV methods).
        layer_map: see :class:`DistillationModule`.
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        method: str,
        options: dict[str, Any],
        sites: list[str] | None,
        layer_map: str | list[int] | dict[str, str | list[int]],
    ) -> None:
        super().__init__()
        from amad.losses import ATTENTION_METHODS, build_attention_criterion, criterion_input_kind
        from amad.models import resolve_layer_map

        if method != "none" and method not in ATTENTION_METHODS:
            raise ValueError(
                f"unknown attention method {method!r}; expected 'none' or one of {sorted(ATTENTION_METHODS)}"
            )
        self.method = method
        self.enabled = method != "none"
        self.criteria = nn.ModuleDict()
        self.layer_maps: dict[str, list[int]] = {}
        # sites never padded in either model: no mask, so no masked copies of their (largest) maps
        self._unpadded = set(getattr(teacher, "unpadded_sites", ())) & set(getattr(student, "unpadded_sites", ()))
        if not self.enabled:
            return
        self.input_kind = criterion_input_kind(method)
        all_sites = tuple(teacher.sites)
        if sites is None:
            sites = [s for s in all_sites if self.input_kind == "maps" or s.endswith(".self")]
        for site in sites:
            if site not in all_sites or site not in tuple(student.sites):
                raise ValueError(f"unknown site {site!r} for family {teacher.family!r}; valid sites: {list(all_sites)}")
            if self.input_kind == "qkv" and not site.endswith(".self"):
                raise ValueError(
                    f"{method} distils self-attention relations; site {site!r} is not a self-attention site"
                )
            spec = layer_map.get(site, "uniform") if isinstance(layer_map, dict) else layer_map
            lt, ls = teacher.num_layers(site), student.num_layers(site)
            try:
                self.layer_maps[site] = resolve_layer_map(spec, lt, ls)
            except ValueError as err:
                raise ValueError(f"layer map for site {site!r}: {err}") from err
            for l_s in range(ls):
                self.criteria[self.key(site, l_s)] = build_attention_criterion(
                    method,
                    teacher_heads=teacher.num_heads(site),
                    student_heads=student.num_heads(site),
                    num_layers=1,
                    **options,
                )
        self._stack_ok = self.input_kind == "maps" and all(type(c).stackable for c in self.criteria.values())

    #: The layer pairs of a site are stacked along the batch into one criterion call only while a
    #: pair's two maps hold at most this many elements (CPU; 16x more on accelerators, where a call's
    #: ~40 kernel launches cost more and copies less): a call on small maps costs mostly its fixed
    #: overhead, while for large maps the stacking copy costs about what it saves, and doubles the
    #: maps' memory for a moment (docs/performance.md).
    STACK_MAX_NUMEL = 1 << 20

    @staticmethod
    def key(site: str, student_layer: int) -> str:
        return f"{site.replace('.', '_')}__{student_layer}"

    def capture_sites(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(sites whose maps are needed, sites whose Q/K/V are needed)."""
        sites = tuple(self.layer_maps)
        return (sites, ()) if self.input_kind == "maps" else ((), sites)

    def teacher_layers(self) -> dict[str, tuple[int, ...]]:
        """site -> the teacher layers the layer map uses: the only teacher maps worth capturing."""
        return {site: tuple(sorted(set(lmap))) for site, lmap in self.layer_maps.items()}

    def _site_inputs(self, site: str, t_out: Any, s_out: Any) -> tuple[Any, Any, dict]:
        """(teacher per-layer inputs, student per-layer inputs, mask keyword arguments) of one site."""
        unpadded = site in self._unpadded  # no mask: no masked copies of the (largest) maps
        if self.input_kind == "maps":
            qm = None if unpadded else s_out.query_masks[site]
            # keys of a self-attention site are its queries; cross-attention keys carry ~0 probability
            # where padded, which the map methods that re-normalise (SHD, A2D, AttnDistill) tolerate
            return (
                t_out.attentions[site],
                s_out.attentions[site],
                {"query_mask": qm, "key_mask": qm if site.endswith(".self") else None},
            )
        return t_out.qkv[site], s_out.qkv[site], {"key_mask": None if unpadded else s_out.key_masks[site]}

    def _pairs(self, t_out: Any, s_out: Any):
        for site, lmap in self.layer_maps.items():
            t_all, s_all, kwargs = self._site_inputs(site, t_out, s_out)
            for l_s, l_t in enumerate(lmap):
                yield site, l_s, l_t, t_all[l_t], s_all[l_s], kwargs

    def _call(self, site: str, l_s: Any, l_t: Any, t: Any, s: Any, kwargs: dict) -> tuple[Tensor, Any]:
        key = self.key(site, l_s if isinstance(l_s, int) else 0)
        try:
            return self.criteria[key](t, s, **kwargs)
        except ValueError as err:
            raise ValueError(f"site {site!r}, teacher layer {l_t} -> student layer {l_s}: {err}") from err

    def _stackable(self, t_maps: list[Tensor], s_maps: list[Tensor]) -> bool:
        """Whether one call on the batch-stacked pairs gives the mean of the per-pair losses."""
        if not self._stack_ok or len(s_maps) < 2:
            return False
        t0, s0 = t_maps[0], s_maps[0]
        if t0.dim() != 4 or s0.dim() != 4 or (t0.shape[0], *t0.shape[2:]) != (s0.shape[0], *s0.shape[2:]):
            return False  # let the per-pair call raise its error naming both shapes and the layer
        limit = self.STACK_MAX_NUMEL * (1 if s0.device.type == "cpu" else 16)
        return t0.numel() + s0.numel() <= limit

    def forward(self, t_out: Any, s_out: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean attention loss over all distilled pairs, and the mean per site."""
        means: dict[str, Tensor] = {}
        weighted, n_pairs = [], 0
        for site, lmap in self.layer_maps.items():
            t_all, s_all, kwargs = self._site_inputs(site, t_out, s_out)
            t_maps, s_maps = [t_all[l_t] for l_t in lmap], list(s_all[: len(lmap)])
            if self._stackable(t_maps, s_maps):
                # pairs stacked along the batch: (L*B, H, Q, K); masks repeated to match
                rep = {k: None if v is None else v.repeat(len(lmap), 1) for k, v in kwargs.items()}
                means[site], _ = self._call(
                    site, list(range(len(lmap))), list(lmap), torch.cat(t_maps), torch.cat(s_maps), rep
                )
            else:
                losses = [
                    self._call(site, l_s, l_t, t, s, kwargs)[0]
                    for l_s, (l_t, t, s) in enumerate(zip(lmap, t_maps, s_maps, strict=False))
                ]
                means[site] = torch.stack(losses).mean()
            weighted.append(means[site] * len(lmap))
            n_pairs += len(lmap)
        return torch.stack(weighted).sum() / n_pairs, means

    def weights(self, t_out: Any, s_out: Any) -> dict[str, Tensor]:
        """Batch-mean head weights (Ht, Hs) per pair, for methods that have them."""
        result = {}
        for site, l_s, l_t, t, s, kwargs in self._pairs(t_out, s_out):
            _, w = self._call(site, l_s, l_t, t, s, kwargs)
            if w is not None:
                result[f"{site}/s{l_s}-t{l_t}"] = w.float().mean(0).cpu()
        return result
