"""One adapter for any transformers model whose attention runs through transformers' attention interface.

>>> from transformers import BertConfig, BertForSequenceClassification
>>> from amad.models import GenericAdapter
>>> bert = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=8,
...                                                  intermediate_size=64, vocab_size=100))
>>> teacher = GenericAdapter(bert)
>>> teacher.sites, teacher.num_heads("encoder.self"), teacher.num_layers("encoder.self")
(('encoder.self',), 8, 2)

Sites, layers and head counts are found in the model (:mod:`amad.models.generic_sites`); the maps come from
:func:`amad.models.generic_attention.generic_attention`, which the adapter routes the model's attention
through for the duration of each of its forwards only (:func:`~amad.models.generic_attention.routed`). The
contract is the one of BLIP and VL-T5 (:class:`~amad.models.adapter.AttentionAdapter`): ``adapter(batch,
sites=..., qkv_sites=..., layers=..., attention_source="maps" | "qk")`` returns an
:class:`~amad.models.capture.AdapterOutput` with per-layer (B, H, Q, K) maps (or
:class:`~amad.losses.qk.AttentionInputs`) and (B, Q) / (B, K) masks.

**Heads.** Maps are per *query* head (H = Hq). Under grouped-query attention (Llama/Qwen/Mistral with
``num_key_value_heads < num_attention_heads``) query head h reads key/value head ``h // (Hq / Hkv)``
(:meth:`GenericAdapter.kv_head`); the captured keys (``attention_inputs``) are repeated to Hq heads, and the
q/k/v projections of ``qkv_sites`` have their key and value heads repeated likewise, so every head of a
site has the same width.

**Batches** are the model's own keyword arguments (``input_ids``, ``attention_mask``, ``pixel_values``,
``decoder_input_ids``...; keys its ``forward`` does not take are ignored) plus ``labels``:

* a causal LM (a generating decoder-only model, ``LlamaForCausalLM``): ``labels`` (B, T) are the input ids
  with -100 at padding; ``logits`` is (B, T - 1, V), position t predicting ``labels[:, t + 1]``, and
  ``target_mask`` is ``labels[:, 1:] != -100``;
* an encoder-decoder (BART): ``labels`` (B, T), the decoder inputs made from them as VL-T5's;
* any other model with ``logits`` (classification (B,) labels, token classification (B, T) labels):
  cross-entropy of ``logits`` against ``labels`` (-100 ignored);
* a model without a head (``BertModel``, ``ViTModel``, ``CLIPVisionModel``) or a batch without labels: no
  task (``loss`` 0, ``logits`` = the last hidden states): distil the attention alone (``alpha = beta = 0``).

**Masks.** A text stack's query and key mask is ``batch["attention_mask"]`` (``decoder_attention_mask`` for an
encoder-decoder's decoder); vision and audio stacks are never padded (all True: ``unpadded_sites``); a cross
site's key mask is the encoder's. A mask whose length is not the attention's is an error naming the site.
Causal and sliding-window masks need nothing from the adapter: the model builds them (transformers'
``eager_mask``), and both sources see the same additive mask.

**Not served** (an ``UnsupportedModelError``, one line, at construction): models whose attention is
hand-written (BLIP; :mod:`amad.models.blip` serves it), soft-capped attention logits (Gemma 2), attention
sinks (gpt-oss), T5's relative position bias (:mod:`amad.models.vlt5` serves T5); at the first forward: a
module run twice per forward (ALBERT's shared layers) or an attention-function argument the generic
attention does not implement
(:data:`~amad.models.generic_attention.UNSUPPORTED_KWARGS`). Attention modules that bypass the interface
next to served ones (a pooling head's ``nn.MultiheadAttention``) are listed in ``adapter.bypassed`` with a
warning and not distilled.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from amad.models.adapter import AttentionAdapter, decoder_inputs, task_loss
from amad.models.capture import AdapterOutput, AttentionPoint, Capture, check_attention_source
from amad.models.generic_attention import recording, routed
from amad.models.generic_sites import GenericSite, UnsupportedModelError, find_sites, projections

_PIXEL_INPUTS = ("pixel_values", "input_values", "input_features")


def _refuse_config(model: nn.Module) -> None:
    """Setup-time refusals of attention the generic function would compute differently from the model."""
    name = type(model).__name__
    for cfg in _configs(model.config):
        if getattr(cfg, "attn_logit_softcapping", None) is not None:
            raise UnsupportedModelError(
                f"the generic adapter cannot serve {name}: soft-capped attention logits "
                f"(config.attn_logit_softcapping={cfg.attn_logit_softcapping}) are not implemented"
            )
    for path, m in model.named_modules():
        if isinstance(getattr(m, "sinks", None), nn.Parameter):
            raise UnsupportedModelError(f"the generic adapter cannot serve {name}: {path} has attention sinks")
        if getattr(m, "has_relative_attention_bias", None) is not None:
            raise UnsupportedModelError(
                f"the generic adapter cannot serve {name}: {path} adds a T5-style relative position bias to its "
                "scores (amad's family 'vlt5' serves T5)"
            )


def _configs(cfg: Any) -> list[Any]:
    subs = [getattr(cfg, k, None) for k in getattr(cfg, "sub_configs", {})]
    return [cfg, *(c for s in subs if s is not None for c in _configs(s))]


class GenericAdapter(AttentionAdapter):
    """Any transformers model whose attention calls the attention interface (see the module docstring).

    Args:
        model: a transformers ``PreTrainedModel`` (any attention implementation: the adapter routes its
            attention only inside its own forwards, and the model called directly runs as configured).
        tokenizer: optional tokenizer (kept for the caller; the adapter does not need one).

    Attributes:
        sites: the attention sites found, in forward order (an instance attribute here).
        unpadded_sites: sites whose queries and keys are never padded (vision and audio towers).
        bypassed: paths of attention modules that do not call the interface (not distilled).

    Raises:
        UnsupportedModelError: the model cannot be served (one line naming its class and why).
    """

    family = "generic"
    tasks = ()

    def __init__(self, model: nn.Module, tokenizer: Any = None) -> None:
        super().__init__(model, tokenizer)
        _refuse_config(model)
        found, bypassed = find_sites(model)
        self._site_info: dict[str, GenericSite] = {s.name: s for s in found}
        self.sites = tuple(self._site_info)
        self.bypassed = tuple(bypassed)
        if bypassed:
            warnings.warn(
                f"{type(model).__name__}: {len(bypassed)} attention module(s) bypass transformers' attention "
                f"interface and are not distilled (first: {bypassed[0]})",
                stacklevel=2,
            )
        cfg = model.config
        self._seq2seq = bool(getattr(cfg, "is_encoder_decoder", False))
        self._causal_lm = bool(type(model).can_generate()) and not self._seq2seq
        self._accepted = set(inspect.signature(model.forward).parameters)
        pixels_only = getattr(model, "main_input_name", "input_ids") in _PIXEL_INPUTS
        self._roles: dict[str, tuple[str | None, str | None]] = {}
        for s in found:
            self._roles[s.name] = self._mask_roles(s, pixels_only)
        self.unpadded_sites = tuple(n for n, roles in self._roles.items() if roles == (None, None))

    def _mask_roles(self, site: GenericSite, pixels_only: bool) -> tuple[str | None, str | None]:
        """(batch key of the query mask, of the key mask) of a site; None: never padded."""
        if site.tower in ("vision", "audio") or (pixels_only and site.tower != "text"):
            own = None
        elif self._seq2seq and site.tower == "decoder":
            own = "decoder_attention_mask"
        else:
            own = "attention_mask"
        if site.kind == "self":
            return own, own
        return own, "attention_mask" if self._seq2seq else "encoder_attention_mask"

    # ---------------------------------------------------------------- facts
    def site_info(self, site: str) -> GenericSite:
        """What was found for ``site``: stack, module paths, head counts."""
        return self._site_info[self._check_site(site)]

    def num_heads(self, site: str) -> int:
        """Query heads of ``site``: one map per query head."""
        return self.site_info(site).num_heads

    def num_kv_heads(self, site: str) -> int:
        """Key/value heads of ``site`` (fewer than :meth:`num_heads` under grouped-query attention)."""
        return self.site_info(site).num_kv_heads

    def kv_head(self, site: str, head: int) -> int:
        """The key/value head that query head ``head`` (the map's head index) reads."""
        return head // self.site_info(site).groups

    def attention_points(self, site: str) -> list[AttentionPoint]:
        points = []
        for module in self.site_info(site).modules:
            q, k, v, qkv = projections(module)
            points.append(AttentionPoint(probe=module, kind="sink", q=q, k=k, v=v, qkv=qkv, attention=module))
        return points

    def extra_config(self) -> dict[str, Any]:
        return {"model_class": type(self.model).__name__}

    def _vision_config(self) -> Any:
        cfg = self.model.config
        return getattr(cfg, "vision_config", None) or cfg

    @property
    def image_size(self) -> int | None:
        size = getattr(self._vision_config(), "image_size", None)
        return size if isinstance(size, int) else None

    @property
    def patch_size(self) -> int | None:
        size = getattr(self._vision_config(), "patch_size", None)
        return size if isinstance(size, int) else None

    @property
    def pad_token_id(self) -> int:
        return getattr(self.model.config, "pad_token_id", None)

    @property
    def bos_token_id(self) -> int:
        cfg = self.model.config
        start = getattr(cfg, "decoder_start_token_id", None)
        return start if start is not None else getattr(cfg, "bos_token_id", None)

    @property
    def eos_token_id(self) -> int:
        return getattr(self.model.config, "eos_token_id", None)

    # ---------------------------------------------------------------- the contract
    def forward(
        self,
        batch: dict[str, Any],
        sites: Any = None,
        qkv_sites: Any = (),
        layers: Any = None,
        attention_source: str = "maps",
    ) -> AdapterOutput:
        """Forward with attention capture; arguments and errors as :meth:`AttentionAdapter.forward`.

        Raises:
            ValueError: also, a ``qkv_sites`` site without recognisable q/k/v projections, or a batch mask
                whose length is not the attention's (names the site).
            RuntimeError: a module ran twice in one forward, or its head counts differ from the ones found.
        """
        map_sites = self.sites if sites is None else self._check_sites(sites)
        proj_sites = self._check_sites(qkv_sites)
        for s in proj_sites:
            if not s.endswith(".self"):
                raise ValueError(f"qkv_sites must be self-attention sites of {type(self.model).__name__}; got {s!r}")
            p = self.attention_points(s)[0]
            if p.qkv is None and p.q is None:
                raise ValueError(
                    f"site {s!r}: {type(p.probe).__name__} has no q/k/v projections the adapter recognises "
                    "(q_proj/k_proj/v_proj, query/key/value, q/k/v or a fused qkv)"
                )
        source = check_attention_source(attention_source)
        fast = self.sites if source == "qk" else ()
        seen: dict[str, list[tuple[int, int] | None]] = {s: [None] * len(i.modules) for s, i in self._site_info.items()}
        where = {id(m): (s, layer) for s, i in self._site_info.items() for layer, m in enumerate(i.modules)}

        def record(module: nn.Module, query: Tensor, key: Tensor) -> None:
            site, layer = where[id(module)]
            info = self._site_info[site]
            if seen[site][layer] is not None:
                raise RuntimeError(
                    f"{type(self.model).__name__}: {info.paths[layer]} ran twice in one forward (layers sharing "
                    "weights?); the generic adapter captures one map per attention module and forward"
                )
            if (query.shape[1], key.shape[1]) != (info.num_heads, info.num_kv_heads):
                raise RuntimeError(
                    f"site {site!r} layer {layer}: the attention got {query.shape[1]} query / {key.shape[1]} "
                    f"key-value heads, the adapter found {info.num_heads} / {info.num_kv_heads}"
                )
            seen[site][layer] = (query.shape[2], key.shape[2])

        modules = [m for i in self._site_info.values() for m in i.modules]
        with (
            routed(self.model),
            recording(modules, record),
            Capture(self.attention_points, map_sites, proj_sites, layers, source=source, fast_sites=fast) as cap,
        ):
            logits, target_mask, loss, inputs = self._run_model(batch)
        query_masks, key_masks = self._masks(inputs, seen, logits.shape[0], logits.device)
        return AdapterOutput(
            loss=loss,
            logits=logits,
            target_mask=target_mask,
            attentions=cap.attentions(),
            query_masks=query_masks,
            qkv={s: tuple(self._gqa_qkv(s, x) for x in t) for s, t in cap.projections().items()},
            key_masks=key_masks,
            attention_inputs=cap.attention_inputs(),
            attention_source=source,
        )

    def _run_model(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
        """The HF forward: ``(logits, target_mask, task loss, the inputs given to the model)``."""
        labels = batch.get("labels")
        inputs = {k: v for k, v in batch.items() if k in self._accepted and k != "labels"}
        if self._seq2seq and labels is not None and "decoder_input_ids" not in inputs:
            dec, tmask = decoder_inputs(labels, self.bos_token_id, self.pad_token_id)
            inputs["decoder_input_ids"] = dec
            inputs.setdefault("decoder_attention_mask", tmask.long())
        if "use_cache" in self._accepted:
            inputs["use_cache"] = False
        out = self.model(**inputs)
        logits = getattr(out, "logits", None)
        if logits is None or labels is None:  # no head or no labels: no task
            if logits is None:
                logits = out.last_hidden_state if getattr(out, "last_hidden_state", None) is not None else out[0]
            return logits, self._ones_mask(*logits.shape[:2], logits.device), logits.new_zeros(()), inputs
        if self._causal_lm and logits.dim() == 3:
            logits, labels = logits[:, :-1], labels[:, 1:]
        return logits, labels != -100, task_loss(logits, labels), inputs

    def _masks(
        self, inputs: dict[str, Any], seen: dict[str, list], bsz: int, device: torch.device
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Query and key masks of every site that ran (lengths from the attention calls)."""
        query_masks, key_masks = {}, {}
        for site, lengths in seen.items():
            if lengths[0] is None:  # this tower did not run (e.g. CLIPModel's text tower on pixels alone)
                continue
            (q_len, k_len), (q_role, k_role) = lengths[0], self._roles[site]
            query_masks[site] = self._mask(site, q_role, inputs, bsz, q_len, device)
            key_masks[site] = self._mask(site, k_role, inputs, bsz, k_len, device)
        return query_masks, key_masks

    @staticmethod
    def _mask(site: str, role: str | None, inputs: dict[str, Any], bsz: int, n: int, device: torch.device) -> Tensor:
        mask = inputs.get(role) if role is not None else None
        if mask is None:
            return torch.ones(bsz, n, dtype=torch.bool, device=device)
        if tuple(mask.shape) != (bsz, n):
            raise ValueError(
                f"site {site!r}: batch[{role!r}] is {tuple(mask.shape)} but the attention sees (B, L) = ({bsz}, {n})"
            )
        return mask.bool()

    def _gqa_qkv(self, site: str, qkv: tuple[Tensor, Tensor, Tensor] | None) -> Any:
        """Under grouped-query attention, repeat each key/value head's slice of k and v for its query heads."""
        info = self._site_info[site]
        if qkv is None or info.groups == 1:
            return qkv
        q, k, v = qkv

        def widen(x: Tensor) -> Tensor:
            d = x.shape[-1] // info.num_kv_heads
            heads = x.unflatten(-1, (info.num_kv_heads, d))
            return heads.repeat_interleave(info.groups, dim=-2).flatten(-2)

        return q, widen(k), widen(v)
