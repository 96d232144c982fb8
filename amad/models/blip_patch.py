"""Fix for the BLIP text cross-attention mask bug of transformers 5.24 (explicit, idempotent).

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
"""

from __future__ import annotations

import inspect

from transformers.models.blip import modeling_blip_text as _mbt
from transformers.utils.deprecation import deprecate_kwarg

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
