"""BLIP patches for transformers 5.24 (explicit, idempotent, per model): the cross-attention mask fix, and
fast attention.

**Scope.** Each patch changes the attention modules **of one model**, never transformers' classes: it
gives each ``BlipTextAttention`` / ``BlipAttention`` / ``BlipTextSelfAttention`` instance of that model
amad's subclass (same parameters and buffers, ``isinstance`` still holds, ``state_dict`` unchanged;
``deepcopy`` and pickling keep it). A BLIP model the user builds without an amad adapter behaves as
transformers wrote it; importing this module changes nothing. The BLIP adapters apply both patches to
their model when they are built (:class:`amad.models.blip._BlipAdapter`), so every BLIP model amad runs
has the fix.

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
adapters' constructors on their model. :func:`remove_blip_cross_attention_fix` restores a model's
original (buggy) modules (tests use it to show the bug).

**2. Fast attention** (``attention_source: qk``, :mod:`amad.models.fast_attention`). BLIP's attention is
hand-written eager code (``BlipAttention`` for the ViT, with a fused qkv ``Linear``; ``BlipTextSelfAttention``
for the text encoder and decoder, self and cross), so it cannot be switched through transformers'
``AttentionInterface``. :func:`apply_blip_fast_attention` gives the model's modules both ``forward`` methods in versions
that run the **original** eager code unless the module carries the ``_amad_fast`` flag (set only inside a
``qk`` capture); with it, they compute the same projections, call SDPA with the same scale, mask (the
model's additive mask: cross-attention takes ``encoder_attention_mask``, as the original) and dropout
probability (``dropout.p`` in training, 0 in eval), hand q, k, the scale and the mask to the module's qk
sink, and return no attention weights (every caller in BLIP discards them). The KV-cache handling of
``BlipTextSelfAttention`` is kept line for line, so generation works on either path. The map path (the
dropout-module hooks of the capture) is untouched: without the flag the eager code runs as before.
:func:`remove_blip_fast_attention` restores a model's originals.
"""

from __future__ import annotations

import inspect
import math

from torch import nn
from transformers.cache_utils import EncoderDecoderCache
from transformers.models.blip import modeling_blip as _mb
from transformers.models.blip import modeling_blip_text as _mbt
from transformers.utils.deprecation import deprecate_kwarg

from amad.models.capture import FAST_ATTR
from amad.models.fast_attention import hand_off, sdpa_attention

_ORIGINAL_FORWARD = _mbt.BlipTextAttention.forward


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


class _FixedBlipTextAttention(_mbt.BlipTextAttention):
    """``BlipTextAttention`` whose cross-attention is masked (see the module doc)."""

    forward = _fixed_forward


def _check_cross_attention_fix_target() -> None:
    if "encoder_attention_mask" not in inspect.signature(_mbt.BlipTextSelfAttention.forward).parameters:
        raise RuntimeError(
            "BlipTextSelfAttention.forward has no encoder_attention_mask argument in this "
            "transformers version; amad's BLIP cross-attention fix targets 5.24"
        )


def _swap(model: nn.Module, swaps: dict[type, type]) -> int:
    """Give each module of ``model`` whose exact class is a key of ``swaps`` the class it maps to."""
    n = 0
    for module in model.modules():
        new = swaps.get(type(module))
        if new is not None:
            module.__class__ = new
            n += 1
    return n


def _all_are(model: nn.Module, base: type, patched: type) -> bool:
    found = [m for m in model.modules() if isinstance(m, base)]
    return bool(found) and all(isinstance(m, patched) for m in found)


def blip_cross_attention_fix_applied(model: nn.Module) -> bool:
    """True when every ``BlipTextAttention`` of ``model`` is the fixed version (False: none in it)."""
    return _all_are(model, _mbt.BlipTextAttention, _FixedBlipTextAttention)


def apply_blip_cross_attention_fix(model: nn.Module) -> int:
    """Fix the cross-attention mask of ``model``'s ``BlipTextAttention`` modules, in place (idempotent).

    Returns:
        How many modules this call patched (0: already applied, or no BLIP text model in ``model``).

    Raises:
        RuntimeError: the installed ``BlipTextSelfAttention.forward`` has no ``encoder_attention_mask``
            argument (a transformers version this fix was not written for).
    """
    _check_cross_attention_fix_target()
    return _swap(model, {_mbt.BlipTextAttention: _FixedBlipTextAttention})


def remove_blip_cross_attention_fix(model: nn.Module) -> int:
    """Restore ``model``'s original (buggy) ``BlipTextAttention`` modules (for tests and comparisons)."""
    return _swap(model, {_FixedBlipTextAttention: _mbt.BlipTextAttention})


# ------------------------------------------------------------------------------------ fast attention
_ORIGINAL_VISION_FORWARD = _mb.BlipAttention.forward
_ORIGINAL_TEXT_SELF_FORWARD = _mbt.BlipTextSelfAttention.forward


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


class _SwitchableBlipAttention(_mb.BlipAttention):
    """``BlipAttention`` (ViT) that runs SDPA when flagged fast (see the module doc)."""

    forward = _vision_forward


class _SwitchableBlipTextSelfAttention(_mbt.BlipTextSelfAttention):
    """``BlipTextSelfAttention`` that runs SDPA when flagged fast (see the module doc)."""

    forward = _text_self_forward


_FAST = {_mb.BlipAttention: _SwitchableBlipAttention, _mbt.BlipTextSelfAttention: _SwitchableBlipTextSelfAttention}


def blip_fast_attention_applied(model: nn.Module) -> bool:
    """True when every BLIP attention module of ``model`` is amad's switchable version."""
    return all(_all_are(model, base, patched) for base, patched in _FAST.items())


def apply_blip_fast_attention(model: nn.Module) -> int:
    """Make ``model``'s ``BlipAttention`` and ``BlipTextSelfAttention`` switchable, in place (idempotent).

    Returns:
        How many modules this call patched (0: already applied, or no BLIP attention in ``model``).

    Raises:
        RuntimeError: the installed classes lack what the patch reads (a transformers version it was not
            written for).
    """
    params = inspect.signature(_ORIGINAL_TEXT_SELF_FORWARD).parameters
    if not all(hasattr(_mb.BlipAttention, a) for a in ("_shape", "forward")) or "encoder_attention_mask" not in params:
        raise RuntimeError(
            "BlipAttention / BlipTextSelfAttention do not look like transformers 5.24's; amad's BLIP fast "
            "attention patch targets 5.24"
        )
    return _swap(model, _FAST)


def remove_blip_fast_attention(model: nn.Module) -> int:
    """Restore ``model``'s original ``BlipAttention`` and ``BlipTextSelfAttention`` modules."""
    return _swap(model, {patched: base for base, patched in _FAST.items()})
