"""The attention function of the generic adapter, and the routing that plugs it into a model per forward.

transformers 5.x models look their attention function up at every forward:
``ALL_ATTENTION_FUNCTIONS.get_interface(module.config._attn_implementation, eager_attention_forward)``, and
their masks likewise (``ALL_MASK_ATTENTION_FUNCTIONS[config._attn_implementation]``). The generic adapter
(:mod:`amad.models.generic`) uses that lookup and nothing else:

* :func:`generic_attention` is the eager attention of transformers' own eager functions (``q kᵀ·scaling``
  plus the additive mask, a softmax in at least float32 cast back to the queries' dtype, dropout, ``·v``), with
  grouped-query attention (key/value heads repeated to the query heads, as ``repeat_kv``), and two
  hand-offs: the pre-dropout probabilities to the module's map sink (``attention_source="maps"``), or,
  on a module flagged fast (``attention_source="qk"``), SDPA and the queries and keys to its qk sink
  (:func:`amad.models.fast_attention.hand_off`), exactly as VL-T5's ``amad_eager`` does for T5.
* :func:`routed` registers it under :data:`GENERIC_ATTN_IMPLEMENTATION` (with transformers' ``eager_mask``,
  additive 0 / dtype-min masks) in transformers' two registries and points every config of the model at it,
  **only for the duration of one adapter forward**; on exit it restores each config's own implementation
  (``sdpa`` by default) and removes both registrations (reference-counted, so nested forwards are safe).
  Nothing is registered at import or build time, and the wrapped model, called directly, runs as before.

Maps are per **query** head: with grouped-query attention (Hkv key/value heads, Hq = g·Hkv query heads) the
map of query head h is ``softmax(q_h k_{h // g}ᵀ ...)``: key/value head ``h // g`` (transformers' layout).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.modeling_utils import AttentionInterface

from amad.models.capture import FAST_ATTR, SINK_ATTR
from amad.models.fast_attention import hand_off, sdpa_attention

#: the name under which :func:`routed` registers :func:`generic_attention` while an adapter forward runs
GENERIC_ATTN_IMPLEMENTATION = "amad_generic"
#: set on an attention module by the generic adapter's forward: ``recorder(module, query, key)`` sees every call
RECORDER_ATTR = "_amad_generic_recorder"
#: attention-function arguments whose effect :func:`generic_attention` does not implement (it refuses them
#: rather than compute other maps than the model's): soft-capping (Gemma 2), attention sinks (gpt-oss), a
#: position bias (T5: amad's VL-T5 adapter serves it), a head mask
UNSUPPORTED_KWARGS = ("softcap", "s_aux", "sinks", "position_bias", "head_mask")


def repeat_kv(x: Tensor, groups: int) -> Tensor:
    """(B, Hkv, L, d) -> (B, Hkv·groups, L, d): key/value head j serves query heads j·groups .. j·groups + g-1."""
    if groups == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, groups, n, d).reshape(b, h * groups, n, d)


def generic_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """transformers' eager attention with grouped-query heads, handing maps (or q and k) to amad's sinks.

    Args:
        module: the calling attention module (it carries the sinks and the fast flag of a capture).
        query: (B, Hq, Q, d); key, value: (B, Hkv, K, d) with Hq a multiple of Hkv.
        attention_mask: additive float (B, 1, Q, K) (0 / the dtype's min), bool (True = attend) or None.
        scaling: the factor of ``q kᵀ`` (None: ``d ** -0.5``).
        dropout: attention dropout probability (the models pass 0 in eval).

    Returns:
        ``(attn_output (B, Q, Hq, d), probs (B, Hq, Q, K) or None)``: probs before dropout on the eager path,
        None on the fast path (no map exists).

    Raises:
        RuntimeError: Hq not a multiple of Hkv, or an argument in :data:`UNSUPPORTED_KWARGS` (names the module).
    """
    for name in UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            raise RuntimeError(
                f"{type(module).__name__} passes {name!r} to its attention function, which amad's generic "
                "attention does not implement: the generic adapter cannot serve this model"
            )
    hq, hkv = query.shape[1], key.shape[1]
    if hq % hkv:
        raise RuntimeError(f"{type(module).__name__}: {hq} query heads are not a multiple of {hkv} key/value heads")
    recorder = getattr(module, RECORDER_ATTR, None)
    if recorder is not None:
        recorder(module, query, key)
    key, value = repeat_kv(key, hq // hkv), repeat_kv(value, hq // hkv)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    mask = attention_mask
    if mask is not None and mask.shape[-1] != key.shape[-2]:  # as transformers' eager functions slice it
        mask = mask[..., : key.shape[-2]]
    p = dropout if module.training else 0.0
    if getattr(module, FAST_ATTR, False):
        hand_off(module, query, key, scaling, mask)
        out = sdpa_attention(query, key, value, scale=scaling, mask=mask, dropout_p=p)
        return out.transpose(1, 2).contiguous(), None
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    # at least float32, as transformers' eager functions (float64 stays float64: the qk path rebuilds it so)
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
    probs = probs.to(query.dtype)
    sink = getattr(module, SINK_ATTR, None)
    if sink is not None:
        sink(probs)
    dropped = nn.functional.dropout(probs, p=p, training=module.training)
    return torch.matmul(dropped, value).transpose(1, 2).contiguous(), probs


def model_configs(model: nn.Module) -> list[PretrainedConfig]:
    """Every config object a module of ``model`` reads (sub-configs included), each once."""
    found: dict[int, PretrainedConfig] = {}
    todo = [m.config for m in model.modules() if isinstance(getattr(m, "config", None), PretrainedConfig)]
    while todo:
        cfg = todo.pop()
        if id(cfg) in found:
            continue
        found[id(cfg)] = cfg
        todo.extend(
            sub
            for key in getattr(cfg, "sub_configs", {})
            if isinstance(sub := getattr(cfg, key, None), PretrainedConfig)
        )
    return list(found.values())


_registrations = 0


@contextmanager
def routed(model: nn.Module) -> Iterator[None]:
    """Run ``model``'s attention through :func:`generic_attention` inside the block (see the module docstring)."""
    global _registrations
    if _registrations == 0:
        AttentionInterface._global_mapping[GENERIC_ATTN_IMPLEMENTATION] = generic_attention
        # the masks: transformers checks this *class-level* mapping for a custom implementation's masks
        AttentionMaskInterface._global_mapping[GENERIC_ATTN_IMPLEMENTATION] = eager_mask
    _registrations += 1
    saved = [(cfg, cfg._attn_implementation_internal) for cfg in model_configs(model)]
    try:
        for cfg, _ in saved:
            # the internal field: the public setter would also rewrite sub-configs we restore one by one
            cfg._attn_implementation_internal = GENERIC_ATTN_IMPLEMENTATION
        yield
    finally:
        for cfg, old in saved:
            cfg._attn_implementation_internal = old
        _registrations -= 1
        if _registrations == 0:
            AttentionInterface._global_mapping.pop(GENERIC_ATTN_IMPLEMENTATION, None)
            AttentionMaskInterface._global_mapping.pop(GENERIC_ATTN_IMPLEMENTATION, None)


@contextmanager
def recording(modules: list[nn.Module], recorder: Callable[[nn.Module, Tensor, Tensor], None]) -> Iterator[None]:
    """Set ``recorder`` on each module for the block (it sees every call of :func:`generic_attention`)."""
    try:
        for m in modules:
            setattr(m, RECORDER_ATTR, recorder)
        yield
    finally:
        for m in modules:
            if hasattr(m, RECORDER_ATTR):
                delattr(m, RECORDER_ATTR)
