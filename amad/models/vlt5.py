"""VL-T5: ``T5ForConditionalGeneration`` over text tokens plus visual tokens (Cho et al., 2021).

Visual tokens are image patches (a small patch embedding, the default here) or precomputed region
features ``visual_feats`` (B, N, F) with boxes ``visual_boxes`` (B, N, 4) as in the original VL-T5.
As there, features are projected to ``d_model`` (Linear + norm) and summed with a box embedding of
``(x1, y1, x2, y2, area)`` (Linear + norm). Differences from the original, on purpose:

* the visual tokens come **first** in the encoder input (``[visual; text]``): with right-padded text,
  padding is then at the end and T5's relative position bias sees the same distances whatever the
  amount of padding (padded and unpadded inputs give the same outputs);
* T5's relative position bias covers the whole joint sequence (VL-T5 zeroes it between visual tokens).

Attention: T5 defaults to sdpa, which returns **no** maps. The adapter runs T5 with ``amad_eager``,
registered in transformers' ``AttentionInterface`` by :func:`register_attention_functions` when an adapter
is built (never at import): T5's eager attention, plus a hand-off of the
post-softmax, **pre-dropout** probabilities to a sink set by :class:`amad.models.capture.Capture`
(T5's eager path applies attention dropout before returning its weights).

With ``attention_source="qk"`` the same function runs :func:`amad_sdpa_attention` instead (also registered
on its own as ``amad_sdpa``): SDPA, and a hand-off of (query, key, scaling, mask, position bias) to the
module's qk sink (:mod:`amad.models.fast_attention`). What T5 (5.24) passes, read in
``transformers/models/t5/modeling_t5.py``: ``scaling=1.0`` (T5 does not scale ``q kᵀ``); the mask from the
mask function registered with the implementation, here transformers' ``eager_mask`` for both names: additive
float (B, 1, Q, K), 0 / the dtype's min (bidirectional padding in the encoder and cross-attention, causal +
padding in the decoder); ``position_bias`` (1, H, Q, K), computed by the first layer of each stack from its
relative-attention embedding (trainable) and shared by the later layers, added to the scores before the
mask. In cross-attention no layer has a relative bias: T5 passes zeros (1, H, Q, K), which the fast path
leaves out (a no-op that would otherwise turn the (B, 1, Q, K) mask into a (B, H, Q, K) one).

Sites: ``encoder.self`` (joint text + visual tokens; query and key mask = encoder mask), ``decoder.self``
(causal; target), ``decoder.cross`` (target → joint encoder tokens; query mask target, key mask encoder).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import AttentionInterface, T5Config, T5ForConditionalGeneration
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.t5.modeling_t5 import T5LayerNorm

from amad.models.adapter import AttentionAdapter, decoder_inputs
from amad.models.capture import FAST_ATTR, SINK_ATTR, AttentionPoint
from amad.models.fast_attention import hand_off, sdpa_attention

ATTN_IMPLEMENTATION = "amad_eager"
#: T5 attention by SDPA with the qk hand-off; ``amad_eager`` runs it for modules flagged fast
SDPA_IMPLEMENTATION = "amad_sdpa"


def _is_cross_attention(module: nn.Module) -> bool:
    """T5's ``EncDecAttention``: a decoder attention that is not causal (decoder self-attention is)."""
    return bool(getattr(module, "is_decoder", False)) and not getattr(module, "is_causal", True)


def amad_sdpa_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    position_bias: Tensor | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """T5 attention by SDPA, handing (query, key, scaling, mask, position bias) to the module's qk sink.

    Same result as :func:`amad_eager_attention` within float rounding, without a (B, H, Q, K) map
    (:func:`amad.models.fast_attention.sdpa_attention`: T5's trainable position bias gets its gradient
    from a chunked backward).

    Args:
        query, key, value: (B, H, Q, d), (B, H, K, d), (B, H, K, d).
        attention_mask: additive (B, 1, Q, K) mask or None; position_bias: (1|B, H, Q, K) or None
            (dropped in cross-attention, where T5 passes zeros).
    Returns:
        ``(attn_output (B, Q, H, d), None)``.
    """
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    bias = None if _is_cross_attention(module) else position_bias
    hand_off(module, query, key, scaling, attention_mask, bias)
    out = sdpa_attention(query, key, value, scale=scaling, mask=attention_mask, bias=bias, dropout_p=dropout)
    return out.transpose(1, 2).contiguous(), None


def amad_eager_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    position_bias: Tensor | None = None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """T5's ``eager_attention_forward`` (5.24), handing the pre-dropout probabilities to a sink.

    Args:
        query, key, value: (B, H, Q, d), (B, H, K, d), (B, H, K, d).
        attention_mask: additive (B, 1, Q, K) mask or None; position_bias: (1|B, H, Q, K) or None.
    Returns:
        ``(attn_output (B, Q, H, d), probs (B, H, Q, K))`` — probs before dropout. A module flagged fast
        (``attention_source="qk"``) runs :func:`amad_sdpa_attention` instead (no probs: None).
    """
    if getattr(module, FAST_ATTR, False):
        return amad_sdpa_attention(
            module, query, key, value, attention_mask, scaling, dropout, position_bias=position_bias, **kwargs
        )
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = nn.functional.softmax(scores, dim=-1)
    sink = getattr(module, SINK_ATTR, None)
    if sink is not None:
        sink(probs)
    dropped = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(dropped, value).transpose(1, 2).contiguous()
    return out, probs


def register_attention_functions() -> None:
    """Register ``amad_eager`` and ``amad_sdpa`` (and their masks) in transformers' attention interfaces.

    transformers looks a model's attention function up by name in a process-wide registry at every
    forward (``ALL_ATTENTION_FUNCTIONS``), so the registration outlives the adapter; it only **adds**
    these two names (no existing one changes, so no other model behaves differently). Idempotent. Called
    by :class:`VLT5Adapter` whenever it builds, loads or wraps a model; importing this module registers
    nothing.
    """
    AttentionInterface.register(ATTN_IMPLEMENTATION, amad_eager_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, eager_mask)
    # the same additive masks for the SDPA path: both sources see one mask, and SDPA takes it as is
    AttentionInterface.register(SDPA_IMPLEMENTATION, amad_sdpa_attention)
    AttentionMaskInterface.register(SDPA_IMPLEMENTATION, eager_mask)


class VisualEmbedding(nn.Module):
    """Visual tokens for VL-T5: features (patches or regions) + box embedding, each projected and normed.

    Args:
        d_model: T5 hidden size.
        image_size: nominal image size (documentation; the patch grid follows the actual input).
        patch_size: patch size of the patch embedding (None: region features only).
        visual_feat_dim: region feature size F (None: patches only).
        num_channels: image channels.
        eps: norm epsilon.
    """

    def __init__(
        self,
        d_model: int,
        image_size: int = 64,
        patch_size: int | None = 16,
        visual_feat_dim: int | None = None,
        num_channels: int = 3,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.image_size, self.patch_size, self.visual_feat_dim = image_size, patch_size, visual_feat_dim
        self.patch_embed = (
            nn.Conv2d(num_channels, d_model, kernel_size=patch_size, stride=patch_size) if patch_size else None
        )
        self.feat_proj = nn.Linear(visual_feat_dim, d_model) if visual_feat_dim else None
        self.feat_norm = T5LayerNorm(d_model, eps=eps)
        self.box_proj = nn.Linear(5, d_model)
        self.box_norm = T5LayerNorm(d_model, eps=eps)

    @staticmethod
    def grid_boxes(rows: int, cols: int, device=None, dtype=None) -> Tensor:
        """(rows·cols, 4) normalised (x1, y1, x2, y2) boxes of a patch grid, row-major."""
        ys = torch.arange(rows, device=device, dtype=dtype)
        xs = torch.arange(cols, device=device, dtype=dtype)
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([x / cols, y / rows, (x + 1) / cols, (y + 1) / rows], dim=-1).reshape(-1, 4)

    def forward(
        self, pixel_values: Tensor | None = None, visual_feats: Tensor | None = None, visual_boxes: Tensor | None = None
    ) -> Tensor:
        """Region features (B, N, F) + boxes (B, N, 4) when given, else patches of (B, C, H, W) → (B, N, d)."""
        if visual_feats is not None:
            if self.feat_proj is None:
                raise ValueError(
                    "this VL-T5 has no region-feature projection (visual_feat_dim=None); "
                    "build it with visual_feat_dim=F to use visual_feats"
                )
            if visual_boxes is None:
                raise ValueError("visual_feats need visual_boxes (B, N, 4)")
            feats = self.feat_proj(visual_feats.to(self.feat_proj.weight.dtype))
            boxes = visual_boxes.to(feats.dtype)
        else:
            if self.patch_embed is None:
                raise ValueError(
                    "this VL-T5 takes region features only (patch_size=None): the batch "
                    "needs visual_feats and visual_boxes"
                )
            if pixel_values is None:
                raise ValueError("the batch has neither pixel_values nor visual_feats")
            grid = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))  # (B, d, h, w)
            bsz, _, rows, cols = grid.shape
            feats = grid.flatten(2).transpose(1, 2)
            boxes = self.grid_boxes(rows, cols, feats.device, feats.dtype).expand(bsz, -1, -1)
        area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
        pos = self.box_proj(torch.cat([boxes, area[..., None]], dim=-1))
        return self.feat_norm(feats) + self.box_norm(pos)


def _t5_point(attn) -> AttentionPoint:
    return AttentionPoint(probe=attn, kind="sink", q=attn.q, k=attn.k, v=attn.v, attention=attn)


class VLT5Adapter(AttentionAdapter):
    """VL-T5 over ``T5ForConditionalGeneration`` (eager-with-capture attention) + :class:`VisualEmbedding`."""

    family = "vlt5"
    tasks = ("vqa", "caption", "translate")
    sites = ("encoder.self", "decoder.self", "decoder.cross")
    hf_class = T5ForConditionalGeneration

    def __init__(
        self,
        model: T5ForConditionalGeneration,
        tokenizer: Any = None,
        *,
        image_size: int = 64,
        patch_size: int | None = 16,
        visual_feat_dim: int | None = None,
        num_channels: int = 3,
    ) -> None:
        super().__init__(model, tokenizer)
        register_attention_functions()  # the model's forward looks ``amad_eager`` up by name
        if model.config._attn_implementation != ATTN_IMPLEMENTATION:
            model.set_attn_implementation(ATTN_IMPLEMENTATION)
        self.visual = VisualEmbedding(
            model.config.d_model,
            image_size=image_size,
            patch_size=patch_size,
            visual_feat_dim=visual_feat_dim,
            num_channels=num_channels,
            eps=model.config.layer_norm_epsilon,
        )
        self._visual_cfg = dict(
            image_size=image_size, patch_size=patch_size, visual_feat_dim=visual_feat_dim, num_channels=num_channels
        )

    @classmethod
    def from_config(cls, config: T5Config, tokenizer: Any = None, **visual: Any) -> VLT5Adapter:
        register_attention_functions()
        model = T5ForConditionalGeneration._from_config(config, attn_implementation=ATTN_IMPLEMENTATION)
        return cls(model, tokenizer, **visual)

    @classmethod
    def load_hf(cls, path: str, **kwargs: Any):
        register_attention_functions()
        return T5ForConditionalGeneration.from_pretrained(path, attn_implementation=ATTN_IMPLEMENTATION, **kwargs)

    def extra_config(self) -> dict[str, Any]:
        return dict(self._visual_cfg)

    @property
    def image_size(self) -> int | None:
        # region features (no patch embedding) do not depend on the pixels' size
        return self._visual_cfg["image_size"] if self._visual_cfg["patch_size"] else None

    @property
    def patch_size(self) -> int | None:
        return self._visual_cfg["patch_size"]

    @property
    def bos_token_id(self) -> int:
        return self.model.config.decoder_start_token_id

    @property
    def eos_token_id(self) -> int:
        return self.model.config.eos_token_id

    @property
    def pad_token_id(self) -> int:
        return self.model.config.pad_token_id

    def attention_points(self, site: str) -> list[AttentionPoint]:
        if site == "encoder.self":
            return [_t5_point(b.layer[0].SelfAttention) for b in self.model.encoder.block]
        if site == "decoder.self":
            return [_t5_point(b.layer[0].SelfAttention) for b in self.model.decoder.block]
        if site == "decoder.cross":
            return [_t5_point(b.layer[1].EncDecAttention) for b in self.model.decoder.block]
        self._check_site(site)
        raise AssertionError(site)  # pragma: no cover

    def num_heads(self, site: str) -> int:
        self._check_site(site)
        return self.model.config.num_heads

    def _encoder_inputs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """``([visual; text] embeddings (B, N + S, d), joint mask (B, N + S) long)``."""
        vis = self.visual(batch.get("pixel_values"), batch.get("visual_feats"), batch.get("visual_boxes"))
        txt = self.model.get_input_embeddings()(batch["input_ids"])
        mask = torch.cat([batch["attention_mask"].new_ones(vis.shape[:2]), batch["attention_mask"]], dim=1)
        return torch.cat([vis.to(txt.dtype), txt], dim=1), mask

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        vis = self.visual(pixel_values)  # (B, N, d): no text, no padding
        return self.model.encoder(inputs_embeds=vis).last_hidden_state

    def _run(self, batch):
        embeds, enc_mask = self._encoder_inputs(batch)
        dec_ids, target_mask = decoder_inputs(batch["labels"], self.bos_token_id, self.pad_token_id)
        logits = self.model(
            inputs_embeds=embeds,
            attention_mask=enc_mask,
            decoder_input_ids=dec_ids,
            decoder_attention_mask=target_mask.long(),
            use_cache=False,
        ).logits
        enc_bool = enc_mask.bool()
        query_masks = {"encoder.self": enc_bool, "decoder.self": target_mask, "decoder.cross": target_mask}
        key_masks = {"encoder.self": enc_bool, "decoder.self": target_mask, "decoder.cross": enc_bool}
        return logits, target_mask, query_masks, key_masks

    def _encode(self, batch):
        embeds, enc_mask = self._encoder_inputs(batch)
        hidden = self.model.encoder(inputs_embeds=embeds, attention_mask=enc_mask).last_hidden_state
        return BaseModelOutput(last_hidden_state=hidden), enc_mask

    def _next_logits(self, state, decoder_ids):
        enc, enc_mask = state
        return self.model(
            encoder_outputs=enc, attention_mask=enc_mask, decoder_input_ids=decoder_ids, use_cache=False
        ).logits[:, -1]
