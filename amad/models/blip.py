"""BLIP adapters (transformers 5.24 classes, no copied model code).

* :class:`BlipVQAAdapter` wraps ``BlipForQuestionAnswering``: ViT → question encoder (question→image
  cross-attention) → answer decoder (answer→question cross-attention). Its own ``forward`` returns no
  logits and crashes on -100 labels, so the adapter calls ``vision_model``, ``text_encoder`` and
  ``text_decoder`` itself and builds the decoder inputs (``[BOS]`` + shifted labels).
* :class:`BlipCaptionAdapter` wraps ``BlipForConditionalGeneration``: ViT → caption decoder
  (caption→image cross-attention). The batch's ``input_ids`` (task prefix / ``[CLS] [SEP]``) are not
  used: the caption is decoded from ``[BOS]`` (BLIP's "a picture of" prompt is not reproduced).

Maps are read at the input of each attention's dropout module (post-softmax, pre-dropout). With
``attention_source="qk"`` the attention modules run SDPA instead and hand their queries and keys over
(:mod:`amad.models.fast_attention`). Both patches of :mod:`amad.models.blip_patch` (the cross-attention
mask fix, the switchable fast attention) are applied to the adapter's model when the adapter is built:
to that model's attention modules, never to transformers' classes.

Sites, query and key masks (method.md §6):

=================  ====================================  ===========  ==================
site               attention                             query mask   key mask
=================  ====================================  ===========  ==================
``vision.self``    ViT self-attention ([CLS] + patches)  all          all
``text.self``      question encoder self-attention       question     question
``text.cross``     question → image                      question     all (image)
``decoder.self``   answer/caption decoder, causal        target       target
``decoder.cross``  answer → question / caption → image   target       question / all
=================  ====================================  ===========  ==================
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from transformers import BlipConfig, BlipForConditionalGeneration, BlipForQuestionAnswering

from amad.models.adapter import AttentionAdapter, decoder_inputs
from amad.models.blip_patch import apply_blip_cross_attention_fix, apply_blip_fast_attention
from amad.models.capture import AttentionPoint


def _vision_point(layer) -> AttentionPoint:
    attn = layer.self_attn  # BlipAttention: fused qkv Linear, dropout on the probabilities
    return AttentionPoint(probe=attn.dropout, kind="dropout", qkv=attn.qkv, attention=attn)


def _text_point(attention) -> AttentionPoint:
    s = attention.self  # BlipTextSelfAttention
    return AttentionPoint(probe=s.dropout, kind="dropout", q=s.query, k=s.key, v=s.value, attention=s)


class _BlipAdapter(AttentionAdapter):
    hf_class: type = BlipForQuestionAnswering
    unpadded_sites = ("vision.self",)  # every image has the same patches

    def __init__(self, model, tokenizer: Any = None) -> None:
        # this model's attention modules only (amad.models.blip_patch): transformers' classes are untouched
        apply_blip_cross_attention_fix(model)
        apply_blip_fast_attention(model)
        super().__init__(model, tokenizer)

    @classmethod
    def from_config(cls, config: BlipConfig, tokenizer: Any = None, **extra: Any) -> _BlipAdapter:
        if extra:
            raise ValueError(f"unexpected settings for {cls.family!r}: {sorted(extra)}")
        return cls(cls.hf_class(config), tokenizer)

    @classmethod
    def load_hf(cls, path: str, **kwargs: Any):
        return cls.hf_class.from_pretrained(path, **kwargs)

    # token ids (BLIP: decoding starts at bos_token_id and ends at sep_token_id)
    @property
    def bos_token_id(self) -> int:
        return self.model.config.text_config.bos_token_id

    @property
    def eos_token_id(self) -> int:
        return self.model.config.text_config.sep_token_id

    @property
    def pad_token_id(self) -> int:
        return self.model.config.text_config.pad_token_id

    @property
    def image_size(self) -> int:
        return self.model.config.vision_config.image_size

    @property
    def patch_size(self) -> int:
        return self.model.config.vision_config.patch_size

    def num_heads(self, site: str) -> int:
        cfg = self.model.config
        sub = cfg.vision_config if self._check_site(site).startswith("vision") else cfg.text_config
        return sub.num_attention_heads

    def _vision(self, batch: dict[str, Any]) -> Tensor:
        return self.encode_image(batch["pixel_values"])

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        pv = pixel_values.to(self.model.vision_model.embeddings.patch_embedding.weight.dtype)
        return self.model.vision_model(pixel_values=pv).last_hidden_state  # (B, 1 + N, Dv)

    def _decode_logits(
        self, dec_ids: Tensor, dec_mask: Tensor | None, memory: Tensor, memory_mask: Tensor | None
    ) -> Tensor:
        return self.model.text_decoder(
            input_ids=dec_ids,
            attention_mask=dec_mask,
            encoder_hidden_states=memory,
            encoder_attention_mask=memory_mask,
            use_cache=False,
        ).logits


class BlipVQAAdapter(_BlipAdapter):
    """BLIP VQA (``BlipForQuestionAnswering``), generative answers."""

    family = "blip-vqa"
    tasks = ("vqa", "translate")  # a question (or English sentence) in, an answer (German) out
    sites = ("vision.self", "text.self", "text.cross", "decoder.self", "decoder.cross")
    hf_class = BlipForQuestionAnswering

    def attention_points(self, site: str) -> list[AttentionPoint]:
        m = self.model
        if site == "vision.self":
            return [_vision_point(layer) for layer in m.vision_model.encoder.layers]
        if site == "text.self":
            return [_text_point(layer.attention) for layer in m.text_encoder.encoder.layer]
        if site == "text.cross":
            return [_text_point(layer.crossattention) for layer in m.text_encoder.encoder.layer]
        if site == "decoder.self":
            return [_text_point(layer.attention) for layer in m.text_decoder.bert.encoder.layer]
        if site == "decoder.cross":
            return [_text_point(layer.crossattention) for layer in m.text_decoder.bert.encoder.layer]
        self._check_site(site)
        raise AssertionError(site)  # pragma: no cover

    def _question(self, batch: dict[str, Any], image: Tensor) -> Tensor:
        # images have no padding: no encoder mask for the question→image cross-attention
        return self.model.text_encoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], encoder_hidden_states=image
        ).last_hidden_state

    def _run(self, batch):
        image = self._vision(batch)
        question = self._question(batch, image)
        q_mask = batch["attention_mask"]
        dec_ids, target_mask = decoder_inputs(batch["labels"], self.bos_token_id, self.pad_token_id)
        logits = self._decode_logits(dec_ids, target_mask.long(), question, q_mask)
        q_bool = q_mask.bool()
        all_image = self._ones_mask(image.shape[0], image.shape[1], image.device)
        query_masks = {
            "vision.self": all_image,
            "text.self": q_bool,
            "text.cross": q_bool,
            "decoder.self": target_mask,
            "decoder.cross": target_mask,
        }
        key_masks = {
            "vision.self": all_image,
            "text.self": q_bool,
            "text.cross": all_image,
            "decoder.self": target_mask,
            "decoder.cross": q_bool,
        }
        return logits, target_mask, query_masks, key_masks

    def _encode(self, batch):
        image = self._vision(batch)
        return self._question(batch, image), batch["attention_mask"]

    def _next_logits(self, state, decoder_ids):
        question, q_mask = state
        return self._decode_logits(decoder_ids, None, question, q_mask)[:, -1]


class BlipCaptionAdapter(_BlipAdapter):
    """BLIP captioning (``BlipForConditionalGeneration``)."""

    family = "blip-caption"
    tasks = ("caption",)
    sites = ("vision.self", "decoder.self", "decoder.cross")
    hf_class = BlipForConditionalGeneration

    def attention_points(self, site: str) -> list[AttentionPoint]:
        m = self.model
        if site == "vision.self":
            return [_vision_point(layer) for layer in m.vision_model.encoder.layers]
        if site == "decoder.self":
            return [_text_point(layer.attention) for layer in m.text_decoder.bert.encoder.layer]
        if site == "decoder.cross":
            return [_text_point(layer.crossattention) for layer in m.text_decoder.bert.encoder.layer]
        self._check_site(site)
        raise AssertionError(site)  # pragma: no cover

    def _run(self, batch):
        image = self._vision(batch)
        dec_ids, target_mask = decoder_inputs(batch["labels"], self.bos_token_id, self.pad_token_id)
        logits = self._decode_logits(dec_ids, target_mask.long(), image, None)
        all_image = self._ones_mask(image.shape[0], image.shape[1], image.device)
        query_masks = {"vision.self": all_image, "decoder.self": target_mask, "decoder.cross": target_mask}
        key_masks = {"vision.self": all_image, "decoder.self": target_mask, "decoder.cross": all_image}
        return logits, target_mask, query_masks, key_masks

    def _encode(self, batch):
        return self._vision(batch)

    def _next_logits(self, state, decoder_ids):
        return self._decode_logits(decoder_ids, None, state, None)[:, -1]
