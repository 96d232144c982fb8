"""The capture contract: what every model adapter returns, and how maps are taken out of a forward.

Maps are captured **inside the one forward pass** that computes the loss (no second pass, no copy):

* BLIP (eager-only, attention written by hand): a forward hook on the attention-dropout module of each
  requested layer reads its *input*, i.e. the post-softmax probabilities before dropout.
* T5 (attention through the ``AttentionInterface``): the model runs the ``amad_eager`` attention
  function (:mod:`amad.models.vlt5`), identical to T5's eager path, which hands the pre-dropout
  probabilities to a sink set on the attention module for the duration of the forward.

With ``source="qk"`` (``attention_source: qk`` of a run) the models run their fast attention instead
(``torch.nn.functional.scaled_dot_product_attention``, :mod:`amad.models.fast_attention`) and no map
exists: the capture keeps, per requested layer, what the maps are made of -- an
:class:`~amad.models.attention_inputs.AttentionInputs` (queries and keys after the head split, the scale, the model's
additive mask and, for T5, the position bias) -- handed over by the fast attention to a second sink
(``_amad_qk_sink``) on the attention module. The fast path is switched on per forward by a flag
(``_amad_fast``) on every attention module of the model, so a model runs eager attention (and its maps
can be captured) in one forward and SDPA in the next; the map path is untouched by it.

Hooks, sinks and flags exist only for the requested sites and only inside :class:`Capture` (so they
never leak into generation, ``deepcopy`` or pickling); unrequested layers cost nothing. A requested
site that produced no map (or no queries and keys) for some layer is an error naming the site — never
an empty tuple, never a silent fallback to the other source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor, nn

from amad.models.attention_inputs import AttentionInputs

QKV = tuple[Tensor, Tensor, Tensor]

#: Where a run's attention losses take the maps from: ``maps`` (eager attention, maps captured) or
#: ``qk`` (fast attention, queries and keys captured, maps rebuilt by :mod:`amad.losses.qk`).
AttentionSource = Literal["maps", "qk"]
ATTENTION_SOURCES: tuple[str, ...] = ("maps", "qk")


def check_attention_source(source: str) -> str:
    """``source`` if it is one of :data:`ATTENTION_SOURCES`, else a ``ValueError`` listing them."""
    if source not in ATTENTION_SOURCES:
        raise ValueError(f"attention_source must be one of {list(ATTENTION_SOURCES)}, got {source!r}")
    return source


@dataclass
class AdapterOutput:
    """What ``adapter(batch, sites=..., qkv_sites=...)`` returns (docs/architecture.md).

    Attributes:
        loss: scalar task cross-entropy under teacher forcing, mean over real target tokens.
        logits: (B, T, V), position t predicts ``labels[:, t]``.
        target_mask: (B, T) bool, ``labels != -100``.
        attentions: site -> tuple over layers of (B, H, Q, K) post-softmax, pre-dropout maps, only
            for the requested sites; ``None`` at the layers left out by ``layers=`` (never kept).
        query_masks: site -> (B, Q) bool, True for real query rows (every site of the family).
        qkv: site -> tuple over layers of ``(q, k, v)``, each (B, L, d): the self-attention query /
            key / value projection outputs (before the head split), only for ``qkv_sites``. For BLIP's
            fused ViT projection they are views of one (B, L, 3d) tensor. ``None`` at the layers
            left out by ``layers=``.
        key_masks: site -> (B, K) bool, True for real keys: for a self-attention site its own tokens,
            for a cross-attention site the memory's (image, question or encoder tokens).
        attention_inputs: site -> tuple over layers of :class:`~amad.models.attention_inputs.AttentionInputs` (q
            (B, H, Q, d), k (B, H, K, d), scale, mask, bias), only for the requested sites of a forward
            with ``attention_source="qk"``; ``None`` at the layers left out by ``layers=``.
        attention_source: the source of that forward (``"maps"``: ``attentions`` is filled; ``"qk"``:
            ``attention_inputs`` is, and the models ran SDPA).
    """

    loss: Tensor
    logits: Tensor
    target_mask: Tensor
    attentions: dict[str, tuple[Tensor, ...]] = field(default_factory=dict)
    query_masks: dict[str, Tensor] = field(default_factory=dict)
    qkv: dict[str, tuple[QKV, ...]] = field(default_factory=dict)
    key_masks: dict[str, Tensor] = field(default_factory=dict)
    attention_inputs: dict[str, tuple[AttentionInputs | None, ...]] = field(default_factory=dict)
    attention_source: str = "maps"


@dataclass
class AttentionPoint:
    """Where one attention layer's maps and projections can be read.

    Attributes:
        probe: module whose forward sees the maps: an ``nn.Dropout`` (``kind="dropout"``: its input is
            the pre-dropout map) or an attention module (``kind="sink"``: the attention function calls
            ``probe._amad_sink(map)``).
        kind: ``"dropout"`` or ``"sink"``.
        q, k, v: the projection ``nn.Linear`` layers (self-attention), or None.
        qkv: a fused projection producing ``[q | k | v]`` along the last dim (BLIP ViT), or None.
        attention: the attention module whose fast path (``attention_source="qk"``) runs SDPA and hands
            its queries and keys to ``attention._amad_qk_sink``; None: the layer has no fast path.
    """

    probe: nn.Module
    kind: str
    q: nn.Module | None = None
    k: nn.Module | None = None
    v: nn.Module | None = None
    qkv: nn.Module | None = None
    attention: nn.Module | None = None


SINK_ATTR = "_amad_sink"
#: set on an attention module: its forward runs SDPA (``amad.models.fast_attention``) instead of eager
FAST_ATTR = "_amad_fast"
#: set on an attention module by a ``qk`` capture: ``sink(AttentionInputs)`` receives its q, k, scale...
QK_SINK_ATTR = "_amad_qk_sink"


class Capture:
    """Context manager collecting maps (or queries and keys) / projections of the requested sites
    during one forward.

    Args:
        points: site -> list over layers of :class:`AttentionPoint`.
        sites: sites whose maps (``source="maps"``) or :class:`~amad.models.attention_inputs.AttentionInputs`
            (``source="qk"``) are wanted.
        qkv_sites: self-attention sites whose q/k/v projections are wanted (either source).
        layers: site -> the layer indices to capture (default: every layer of the site). Only these
            layers get a hook, so the maps of the others are freed as the forward goes on.
        source: ``"maps"`` (eager attention, maps captured) or ``"qk"`` (every attention module of
            ``fast_sites`` runs SDPA; queries and keys captured).
        fast_sites: with ``source="qk"``, the sites whose attention modules run SDPA: every site of the
            model, so that no layer computes a map (the requested ``sites`` are always included).

    Raises:
        ValueError: a layer index out of range (names the site and the valid range), an unknown source,
            or ``source="qk"`` at a layer without a fast path.
    """

    def __init__(
        self,
        points: Callable[[str], Sequence[AttentionPoint]],
        sites: Iterable[str],
        qkv_sites: Iterable[str],
        layers: Mapping[str, Iterable[int]] | None = None,
        source: str = "maps",
        fast_sites: Iterable[str] = (),
    ) -> None:
        self._points = points
        self._layers = {site: tuple(ls) for site, ls in (layers or {}).items()}
        self._wanted: dict[str, set[int]] = {}
        self.source = check_attention_source(source)
        self.maps: dict[str, list[Tensor | None]] = {}
        self.inputs: dict[str, list[AttentionInputs | None]] = {}
        self.qkv: dict[str, list[list[Tensor | None]]] = {}
        self._sites, self._qkv_sites = tuple(sites), tuple(qkv_sites)
        self._fast_sites = tuple(dict.fromkeys((*fast_sites, *self._sites))) if source == "qk" else ()
        self._handles: list = []
        self._sinks: list[nn.Module] = []
        self._fast: list[nn.Module] = []

    def __enter__(self) -> Capture:
        try:
            for site in self._fast_sites:
                for layer, p in enumerate(self._points(site)):
                    if p.attention is None:
                        raise ValueError(f"site {site!r} layer {layer} has no fast attention path (source 'qk')")
                    setattr(p.attention, FAST_ATTR, True)
                    self._fast.append(p.attention)
            for site in self._sites:
                pts = self._points(site)
                if self.source == "qk":
                    istore: list[AttentionInputs | None] = [None] * len(pts)
                    self.inputs[site] = istore
                    for layer in self._wanted_layers(site, len(pts)):
                        self._attach_inputs(pts[layer], istore, layer)
                    continue
                store: list[Tensor | None] = [None] * len(pts)
                self.maps[site] = store
                for layer in self._wanted_layers(site, len(pts)):
                    self._attach_map(pts[layer], store, layer)
            for site in self._qkv_sites:
                pts = self._points(site)
                qstore: list[list[Tensor | None]] = [[None, None, None] for _ in pts]
                self.qkv[site] = qstore
                for layer in self._wanted_layers(site, len(pts)):
                    self._attach_qkv(pts[layer], qstore[layer])
        except BaseException:
            self._detach()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._detach()

    # -- attaching -----------------------------------------------------------------------------
    def _wanted_layers(self, site: str, n: int) -> list[int]:
        wanted = self._layers.get(site, range(n))
        bad = [i for i in wanted if not 0 <= i < n]
        if bad:
            raise ValueError(f"layers {bad} out of range for site {site!r}, which has {n} layers (0..{n - 1})")
        self._wanted[site] = set(wanted)
        return sorted(self._wanted[site])

    def _attach_map(self, p: AttentionPoint, store: list, layer: int) -> None:
        if p.kind == "dropout":

            def hook(_mod, args, _out, store=store, layer=layer):
                store[layer] = args[0]

            self._handles.append(p.probe.register_forward_hook(hook))
        elif p.kind == "sink":

            def sink(probs, store=store, layer=layer):
                store[layer] = probs

            setattr(p.probe, SINK_ATTR, sink)
            self._sinks.append(p.probe)
        else:  # pragma: no cover - programming error in an adapter
            raise ValueError(f"unknown probe kind {p.kind!r}")

    def _attach_inputs(self, p: AttentionPoint, store: list, layer: int) -> None:
        def sink(inputs: AttentionInputs, store=store, layer=layer) -> None:
            store[layer] = inputs

        setattr(p.attention, QK_SINK_ATTR, sink)
        self._sinks.append(p.attention)

    def _attach_qkv(self, p: AttentionPoint, slot: list) -> None:
        if p.qkv is not None:

            def fused(_mod, _args, out, slot=slot):
                slot[0], slot[1], slot[2] = out.chunk(3, dim=-1)

            self._handles.append(p.qkv.register_forward_hook(fused))
            return
        for i, lin in enumerate((p.q, p.k, p.v)):
            if lin is None:  # pragma: no cover - programming error in an adapter
                raise ValueError("attention point without q/k/v projections")

            def one(_mod, _args, out, slot=slot, i=i):
                slot[i] = out

            self._handles.append(lin.register_forward_hook(one))

    def _detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for m in self._sinks:
            for attr in (SINK_ATTR, QK_SINK_ATTR):
                if hasattr(m, attr):
                    delattr(m, attr)
        self._sinks.clear()
        for m in self._fast:
            if hasattr(m, FAST_ATTR):
                delattr(m, FAST_ATTR)
        self._fast.clear()

    # -- results -------------------------------------------------------------------------------
    def attentions(self) -> dict[str, tuple[Tensor | None, ...]]:
        """site -> tuple over layers of maps (None where not requested); raises if a requested layer
        saw no map."""
        out = {}
        for site, store in self.maps.items():
            missing = [i for i, m in enumerate(store) if m is None and i in self._wanted[site]]
            if missing or not store:
                raise RuntimeError(
                    f"attention site {site!r} produced no maps for layers {missing or 'all'}: the layers "
                    "did not run or their attention path bypassed the probe (e.g. an sdpa/flash attention "
                    "implementation, which returns no probabilities). Use the eager implementation."
                )
            out[site] = tuple(store)  # type: ignore[arg-type]
        return out

    def attention_inputs(self) -> dict[str, tuple[AttentionInputs | None, ...]]:
        """site -> tuple over layers of :class:`~amad.models.attention_inputs.AttentionInputs` (None where not
        requested); raises if a requested layer handed over nothing."""
        out = {}
        for site, store in self.inputs.items():
            missing = [i for i, x in enumerate(store) if x is None and i in self._wanted[site]]
            if missing or not store:
                raise RuntimeError(
                    f"attention site {site!r} produced no queries and keys for layers {missing or 'all'}: the "
                    "layers did not run or their attention bypassed amad's fast path (attention_source 'qk' "
                    "needs amad's BLIP attention patch or its T5 attention function, amad_eager / amad_sdpa)"
                )
            out[site] = tuple(store)
        return out

    def projections(self) -> dict[str, tuple[QKV | None, ...]]:
        """site -> tuple over layers of (q, k, v) (None where not requested); raises if a requested
        layer saw no projection."""
        out = {}
        for site, store in self.qkv.items():
            wanted = self._wanted[site]
            missing = [i for i, s in enumerate(store) if i in wanted and any(t is None for t in s)]
            if missing or not store:
                raise RuntimeError(f"qkv site {site!r} produced no q/k/v projections for layers {missing or 'all'}")
            out[site] = tuple(
                (s[0], s[1], s[2]) if i in wanted else None  # type: ignore[misc]
                for i, s in enumerate(store)
            )
        return out
