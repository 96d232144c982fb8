"""BLIP patches for transformers 5.24 (explicit, idempotent): the cross-attention mask fix, and fast attention.

**1. The cross-attention mask fix.**

The bug (read in ``transformers/models/blip/modeling_blip_text.py``, 5.24.0):

* ``BlipTextLayer.forward`` calls ``self.crossattention(attention_output,
  attention_mask=encoder_attention_mask, encoder_hidden_states=...)``;
* ``BlipTextAttention.forward`` passes that mask on as ``attention_mask=attention_mask`` and never as
  ``encoder_attention_mask``;
* ``BlipTextSelfAttention.forward`` does ``attention_mask = encoder_attention_mask if
  is_cross_attention else attention_mask`` — ``encoder_attention_mask`` is None, so the cross-attention
  runs **unmasked**.

Effect: BLIP VQA's answer decoder attends to the padded question tokens (``decoder.cross`` puts
probability on padding; loss and logits change with the amount of padding). The text encoder's
question→image cross-attention is unaffected (images have no padding).

The fix replaces ``BlipTextAttention.forward`` with a version that routes the mask to
``encoder_attention_mask`` when ``encoder_hidden_states`` is given — nothing else changes (same
outputs when there is no padding). :func:`apply_blip_cross_attention_fix` is called by the BLIP
adapters' constructors; it is a class-level patch (so it affects every BLIP text model of the
process, which is the point: the unpatched behaviour is a bug). :func:`remove_blip_cross_attention_fix`
restores the original (tests use it to show the bug).

**2. Fast attention** (``attention_source: qk``, :mod:`amad.models.fast_attention`). BLIP's attention is
hand-written eager code (``BlipAttention`` for the ViT, with a fused qkv ``Linear``; ``BlipTextSelfAttention``
for the text encoder and decoder, self and cross), so it cannot be switched through transformers'
``AttentionInterface``. :func:`apply_blip_fast_attention` replaces both ``forward`` methods with versions
that run the **original** eager code unless the module carries the ``_amad_fast`` flag (set only inside a
``qk`` capture); with it, they compute the same projections, call SDPA with the same scale, mask (the
model's additive mask: cross-attention takes ``encoder_attention_mask``, as the original) and dropout
probability (``dropout.p`` in training, 0 in eval), hand q, k, the scale and the mask to the module's qk
sink, and return no attention weights (every caller in BLIP discards them). The KV-cache handling of
``BlipTextSelfAttention`` is kept line for line, so generation works on either path. The map path (the
dropout-module hooks of the capture) is untouched: without the flag the eager code runs as before.
:func:`remove_blip_fast_attention` restores the originals.
"""

from __future__ import annotations

import inspect
import math

from transformers.cache_utils import EncoderDecoderCache
from transformers.models.blip import modeling_blip as _mb
from transformers.models.blip import modeling_blip_text as _mbt
from transformers.utils.deprecation import deprecate_kwarg

from amad.models.capture import FAST_ATTR
from amad.models.fast_attention import hand_off, sdpa_attention

_ORIGINAL_FORWARD = _mbt.BlipTextAttention.forward
_PATCH_FLAG = "_amad_cross_attention_mask_fix"


@deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
def _fixed_forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, cache=None, **kwargs):
    """``BlipTextAttention.forward`` with the cross-attention mask routed to ``encoder_attention_mask``."""
    is_cross = encoder_hidden_states is not None
    context_layer, attention_probs = self.self(
        hidden_states,
        attention_mask=None if is_cross else attention_mask,
        encoder_hidden_states=encoder_hidden_states,
        encoder_attention_mask=attention_mask if is_cross else None,
        cache=cache,
    )
    attention_output = self.output(context_layer, hidden_states)
    return attention_output, attention_probs


setattr(_fixed_forward, _PATCH_FLAG, True)


def blip_cross_attention_fix_applied() -> bool:
    """True when ``BlipTextAttention.forward`` is the fixed version."""
    return getattr(_mbt.BlipTextAttention.forward, _PATCH_FLAG, False)


def apply_blip_cross_attention_fix() -> bool:
    """Patch ``BlipTextAttention.forward`` (idempotent).

    Returns:
        True if this call applied the patch, False if it was already applied.

    Raises:
        RuntimeError: the installed ``BlipTextSelfAttention.forward`` has no ``encoder_attention_mask``
            argument (a transformers version this fix was not written for).
    """
    if blip_cross_attention_fix_applied():
        return False
    params = inspect.signature(_mbt.BlipTextSelfAttention.forward).parameters
    if "encoder_attention_mask" not in params:
        raise RuntimeError(
            "BlipTextSelfAttention.forward has no encoder_attention_mask argument in this "
            "transformers version; amad's BLIP cross-attention fix targets 5.24"
        )
    _mbt.BlipTextAttention.forward = _fixed_forward
    return True


def remove_blip_cross_attention_fix() -> None:
    """Restore the original (buggy) ``BlipTextAttention.forward`` (for tests and comparisons)."""
    _mbt.BlipTextAttention.forward = _ORIGINAL_FORWARD


# ------------------------------------------------------------------------------------ fast attention
_ORIGINAL_VISION_FORWARD = _mb.BlipAttention.forward
_ORIGINAL_TEXT_SELF_FORWARD = _mbt.BlipTextSelfAttention.forward
_FAST_FLAG = "_amad_fast_attention_patch"


def _vision_forward(self, hidden_states, **kwargs):
    """``BlipAttention.forward`` (ViT): SDPA when the module is flagged fast, the original eager code otherwise."""
    if not getattr(self, FAST_ATTR, False):
        return _ORIGINAL_VISION_FORWARD(self, hidden_states, **kwargs)
    bsz, tgt_len, embed_dim = hidden_states.size()
    mixed_qkv = (
        self.qkv(hidden_states)
        .reshape(bsz, tgt_len, 3, self.num_heads, embed_dim // self.num_heads)
        .permute(2, 0, 3, 1, 4)
    )
    query, key, value = mixed_qkv[0], mixed_qkv[1], mixed_qkv[2]  # (B, H, L, d) each, views of one buffer
    hand_off(self, query, key, self.scale, None)
    dropout = self.dropout.p if self.training else 0.0
    context = sdpa_attention(query, key, value, scale=self.scale, dropout_p=dropout)  # (B, H, L, d)
    context = context.permute(0, 2, 1, 3).reshape(bsz, tgt_len, embed_dim)
    return self.projection(context), None


@deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
def _text_self_forward(
    self,
    hidden_states,
    attention_mask=None,
    encoder_hidden_states=None,
    encoder_attention_mask=None,
    cache=None,
    **kwargs,
):
    """``BlipTextSelfAttention.forward``: SDPA when flagged fast (same projections, cache handling, scale,
    mask and dropout probability as the eager code), the original otherwise."""
    if not getattr(self, FAST_ATTR, False):
        return _ORIGINAL_TEXT_SELF_FORWARD(
            self,
            hidden_states,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            cache=cache,
            **kwargs,
        )
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.attention_head_size)
    query_layer = self.query(hidden_states).view(hidden_shape).transpose(1, 2)

    is_cross_attention = encoder_hidden_states is not None
    attention_mask = encoder_attention_mask if is_cross_attention else attention_mask

    is_updated = False
    if cache is not None:
        if isinstance(cache, EncoderDecoderCache):
            is_updated = cache.is_updated.get(self.layer_idx)
            curr_cache = cache.cross_attention_cache if is_cross_attention else cache.self_attention_cache
        else:
            curr_cache = cache

    current_states = encoder_hidden_states if is_cross_attention else hidden_states
    if is_cross_attention and cache is not None and is_updated:
        key_layer = curr_cache.layers[self.layer_idx].keys
        value_layer = curr_cache.layers[self.layer_idx].values
    else:
        kv_shape = (*current_states.shape[:-1], -1, self.attention_head_size)
        key_layer = self.key(current_states).view(kv_shape).transpose(1, 2)
        value_layer = self.value(current_states).view(kv_shape).transpose(1, 2)
        if cache is not None:
            key_layer, value_layer = curr_cache.update(key_layer, value_layer, self.layer_idx, kwargs=kwargs)
            if is_cross_attention and isinstance(cache, EncoderDecoderCache):
                cache.is_updated[self.layer_idx] = True

    if attention_mask is not None:
        attention_mask = attention_mask.to(query_layer.device)
    scale = 1.0 / math.sqrt(self.attention_head_size)  # eager divides the scores by sqrt(d)
    hand_off(self, query_layer, key_layer, scale, attention_mask)
    dropout = self.dropout.p if self.training else 0.0
    context = sdpa_attention(query_layer, key_layer, value_layer, scale=scale, mask=attention_mask, dropout_p=dropout)
    context = context.permute(0, 2, 1, 3).reshape(*input_shape, self.all_head_size)
    return context, None


setattr(_vision_forward, _FAST_FLAG, True)
setattr(_text_self_forward, _FAST_FLAG, True)


def blip_fast_attention_applied() -> bool:
    """True when both BLIP attention forwards are amad's switchable versions."""
    return all(getattr(f, _FAST_FLAG, False) for f in (_mb.BlipAttention.forward, _mbt.BlipTextSelfAttention.forward))


def apply_blip_fast_attention() -> bool:
    """Patch ``BlipAttention.forward`` and ``BlipTextSelfAttention.forward`` (idempotent; see the module doc).

    Returns:
        True if this call applied the patch, False if it was already applied.

    Raises:
        RuntimeError: the installed classes lack what the patch reads (a transformers version it was not
            written for).
    """
    if blip_fast_attention_applied():
        return False
    vis = _mb.BlipAttention
    params = inspect.signature(_ORIGINAL_TEXT_SELF_FORWARD).parameters
    if not all(hasattr(vis, a) for a in ("_shape", "forward")) or "encoder_attention_mask" not in params:
        raise RuntimeError(
            "BlipAttention / BlipTextSelfAttention do not look like transformers 5.24's; amad's BLIP fast "
            "attention patch targets 5.24"
        )
    _mb.BlipAttention.forward = _vision_forward
    _mbt.BlipTextSelfAttention.forward = _text_self_forward
    return True


def remove_blip_fast_attention() -> None:
    """Restore the original ``BlipAttention.forward`` and ``BlipTextSelfAttention.forward``."""
    _mb.BlipAttention.forward = _ORIGINAL_VISION_FORWARD
    _mbt.BlipTextSelfAttention.forward = _ORIGINAL_TEXT_SELF_FORWARD
