"""Finding the attention sites of any transformers model: which modules call the attention interface.

An attention module of transformers 5.x that runs through the attention interface has a ``forward`` that
looks its function up in ``ALL_ATTENTION_FUNCTIONS`` (BERT, ViT, CLIP, Llama, Qwen, Mistral, BART...). Such
modules are found by reading their class's source once; hand-written attention (BLIP, nn.MultiheadAttention)
never calls the interface and is not found.

Grouping: a module's path ``<stack>.<i>.<rel>`` (``bert.encoder.layer.3.attention.self``) puts it in layer
``i`` of the stack ``<stack>``; the modules of one (stack, rel) are one **site**. Its name is
``<tower>.<kind>``:

* ``kind`` is ``cross`` when the module attends to another stack's states (its path or class says
  ``cross`` / ``encoder_attn`` / ``EncDec``, or ``module.is_cross_attention``), else ``self``;
* ``tower`` is ``vision``, ``text`` or ``audio`` when the stack's path says so; else ``vision`` (``audio``)
  for a model whose main input is ``pixel_values`` (audio features); else ``decoder`` or ``encoder`` when
  the path says so; else ``decoder`` for a causal module (``module.is_causal``, Llama), ``encoder`` otherwise.

So: BERT and ``CLIPTextModel`` ``encoder.self``; ViT and ``CLIPVisionModel`` ``vision.self``; ``CLIPModel``
``text.self`` and ``vision.self``; Llama, Qwen, Mistral
``decoder.self``; BART ``encoder.self``, ``decoder.self``, ``decoder.cross``. Two sites with one name get
the stack's path instead (``model_layers.self``).

Head counts come from the module (``num_heads``, ``num_attention_heads``, ...) or its config, the key/value
heads from ``num_key_value_groups`` / ``config.num_key_value_heads`` (grouped-query attention); the adapter
checks them against the tensors of the first forward.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from functools import cache

from torch import nn

#: what the forward of a module served by the generic adapter contains (transformers 5.x)
INTERFACE_MARKER = "ALL_ATTENTION_FUNCTIONS"
_TOWERS = ("vision", "text", "audio", "decoder", "encoder")
_CROSS = re.compile(r"cross|encoder_attn|encdec", re.IGNORECASE)
_QKV_NAMES = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"), ("q", "k", "v"), ("q_lin", "k_lin", "v_lin"))
_FUSED_NAMES = ("qkv", "qkv_proj", "query_key_value", "Wqkv")
_HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "attention_heads")


class UnsupportedModelError(ValueError):
    """The generic adapter cannot serve this model (the message is one line naming the class and why)."""


@dataclass
class GenericSite:
    """One attention site: the same attention module of every layer of a stack.

    Attributes:
        name: ``<tower>.<kind>`` (``encoder.self``, ``decoder.cross``...).
        kind: ``self`` or ``cross``.
        tower: the tower part of the name.
        stack: the path of the stack's layer list (``bert.encoder.layer``).
        paths: per layer, the attention module's path.
        modules: per layer, the attention module.
        num_heads: query heads (one map per query head).
        num_kv_heads: key/value heads (< num_heads under grouped-query attention).
    """

    name: str
    kind: str
    tower: str
    stack: str
    paths: tuple[str, ...]
    modules: tuple[nn.Module, ...]
    num_heads: int
    num_kv_heads: int

    @property
    def groups(self) -> int:
        """Query heads per key/value head: the map of query head h uses key/value head ``h // groups``."""
        return self.num_heads // self.num_kv_heads


@cache
def uses_attention_interface(cls: type) -> bool:
    """Whether ``cls.forward`` looks its attention function up in transformers' attention interface."""
    forward = getattr(cls, "forward", None)
    if forward is None or cls.__module__.startswith("torch."):
        return False
    try:
        return INTERFACE_MARKER in inspect.getsource(forward)  # getsource follows __wrapped__ (decorators)
    except (OSError, TypeError):
        return False


def _heads(module: nn.Module) -> tuple[int | None, int | None]:
    cfg = getattr(module, "config", None)
    hq = next((getattr(module, a) for a in _HEAD_ATTRS if isinstance(getattr(module, a, None), int)), None)
    if hq is None:
        hq = getattr(cfg, "num_attention_heads", None)
    groups = getattr(module, "num_key_value_groups", None)
    if isinstance(hq, int) and isinstance(groups, int) and groups > 0:
        return hq, hq // groups
    hkv = getattr(module, "num_key_value_heads", None) or getattr(cfg, "num_key_value_heads", None)
    return hq, hkv if isinstance(hkv, int) else hq


def _split(path: str) -> tuple[str, int, str]:
    """``a.b.3.c.d`` -> (``a.b``, 3, ``c.d``): the last numbered component; (path, 0, "") if none."""
    parts = path.split(".")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].isdigit():
            return ".".join(parts[:i]), int(parts[i]), ".".join(parts[i + 1 :])
    return path, 0, ""


def _tower(stack: str, module: nn.Module, model: nn.Module) -> str:
    low = stack.lower()
    named = [t for t in _TOWERS if t in low]
    if named and named[0] in ("vision", "text", "audio"):
        return named[0]
    main = getattr(model, "main_input_name", "input_ids")  # a single-tower model says what it reads
    if main == "pixel_values":
        return "vision"
    if main in ("input_values", "input_features"):
        return "audio"
    if named:
        return named[0]
    return "decoder" if getattr(module, "is_causal", False) else "encoder"


def _is_cross(rel: str, module: nn.Module) -> bool:
    return bool(
        getattr(module, "is_cross_attention", False) or _CROSS.search(rel) or _CROSS.search(type(module).__name__)
    )


def find_sites(model: nn.Module) -> tuple[list[GenericSite], list[str]]:
    """The attention sites of ``model`` in forward order, and the paths of attention modules that bypass the
    interface (hand-written attention, ``nn.MultiheadAttention``: not served).

    Raises:
        UnsupportedModelError: no module calls the interface, a stack's layers are not numbered 0..n-1, or a
            module's head counts cannot be read (each a one-line message naming the model class).
    """
    name = type(model).__name__
    found = [(p, m) for p, m in model.named_modules() if uses_attention_interface(type(m))]
    if not found:
        raise UnsupportedModelError(
            f"the generic adapter cannot serve {name}: none of its modules calls transformers' attention "
            f"interface ({INTERFACE_MARKER}); its attention is hand-written (write a family adapter, docs/models.md)"
        )
    served = [p for p, _ in found]
    bypass = [
        p
        for p, m in model.named_modules()
        if "Attention" in type(m).__name__
        and not uses_attention_interface(type(m))
        and not any(s.startswith(p + ".") or p.startswith(s + ".") for s in served)
        and any(isinstance(c, nn.Linear) for c in m.modules())
    ]
    groups: dict[tuple[str, str], dict[int, tuple[str, nn.Module]]] = {}
    for path, module in found:
        stack, idx, rel = _split(path)
        layer = groups.setdefault((stack, rel), {})
        layer[idx] = (path, module)
    sites: list[GenericSite] = []
    for (stack, rel), layers in groups.items():
        if sorted(layers) != list(range(len(layers))):
            raise UnsupportedModelError(
                f"the generic adapter cannot serve {name}: the attention modules of {stack}.*.{rel} are layers "
                f"{sorted(layers)}, not 0..{len(layers) - 1}"
            )
        paths, modules = zip(*(layers[i] for i in range(len(layers))), strict=True)
        hq, hkv = _heads(modules[0])
        if not isinstance(hq, int) or not isinstance(hkv, int) or hq < 1 or hkv < 1 or hq % hkv:
            raise UnsupportedModelError(
                f"the generic adapter cannot serve {name}: cannot read the head counts of {paths[0]} "
                f"({type(modules[0]).__name__}: query heads {hq}, key/value heads {hkv})"
            )
        kind = "cross" if _is_cross(rel, modules[0]) else "self"
        tower = _tower(stack, modules[0], model)
        sites.append(GenericSite(f"{tower}.{kind}", kind, tower, stack, paths, modules, hq, hkv))
    names = [s.name for s in sites]
    for s in sites:
        if names.count(s.name) > 1:  # e.g. two stacks with no tower word in their paths: name by path
            s.tower = "_".join(x for x in (s.stack, _split(s.paths[0])[2]) if x).replace(".", "_")
            s.name = f"{s.tower}.{s.kind}"
    if len({s.name for s in sites}) != len(sites):
        raise UnsupportedModelError(f"the generic adapter cannot serve {name}: attention sites {names} collide")
    return sites, bypass


def projections(module: nn.Module) -> tuple[nn.Module | None, nn.Module | None, nn.Module | None, nn.Module | None]:
    """``(q, k, v, fused_qkv)`` projection modules of an attention module (None where absent)."""
    for names in _QKV_NAMES:
        mods = [getattr(module, n, None) for n in names]
        if all(isinstance(m, nn.Module) for m in mods):
            return mods[0], mods[1], mods[2], None
    for n in _FUSED_NAMES:
        if isinstance(getattr(module, n, None), nn.Module):
            return None, None, None, getattr(module, n)
    return None, None, None, None
