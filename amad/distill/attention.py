"""The attention term of the objective: one criterion per distilled (site, student layer), and their mean.

``L_attn`` (docs/method.md §3, multi-layer reduction): the mean over the distilled (site, teacher layer,
student layer) pairs of the method's loss. Teacher and student see the same batch, so the maps of a
site have the same Q and K.

Two sources of the maps (``attention_source``): ``maps``, the post-softmax maps the adapters capture from
eager attention, fed to the method's criterion; or ``qk``, the queries and keys the adapters capture from
their SDPA attention (:class:`~amad.models.attention_inputs.AttentionInputs`), fed to the same criterion
through :func:`amad.losses.qk.qk_attention_loss`, which rebuilds the maps in chunks of query rows: the same
loss, weights and gradients, without a whole map. Methods on Q/K/V relations (``minilm_relation``) take the
projections under either source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from amad.losses.methods import AttentionMethod
from amad.losses.qk import qk_attention_loss
from amad.models.attention_inputs import AttentionInputs
from amad.models.capture import check_attention_source
from amad.models.layer_map import resolve_layer_map

#: a layer map: ``uniform`` / ``last`` / explicit list, or per site
LayerMapSpec = str | list[int] | dict[str, str | list[int]]


class AttentionDistiller(nn.Module):
    """One attention criterion per distilled (site, student layer), and their mean.

    Args:
        teacher, student: model adapters (``sites``, ``num_layers(site)``, ``num_heads(site)``).
        method: the attention method and its options (:mod:`amad.losses.methods`), or None for none.
        sites: sites to distil (None: all; self-attention sites only for QKV methods).
        layer_map: ``uniform``, ``last``, an explicit list (student layer l ↔ teacher layer
            ``layer_map[l]``), or a dict site → one of those (docs/method.md §6).
        attention_source: ``maps`` (the captured maps, the method's criterion) or ``qk`` (the captured
            queries and keys, :func:`amad.losses.qk.qk_attention_loss`). Under ``qk`` the map methods are
            those whose criterion ``supports_qk``, on equal grids; ``minilm_relation`` keeps its own (q, k, v)
            path.

    Raises:
        ValueError: an unknown site or source, a bad layer map, or ``attention_source="qk"`` with a
            method that needs whole maps (``amad_proj``, or a teacher grid resized to the student's).
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        method: AttentionMethod | None,
        sites: Sequence[str] | None = None,
        layer_map: LayerMapSpec = "uniform",
        attention_source: str = "maps",
    ) -> None:
        super().__init__()
        self.method = method
        self.attention_source = check_attention_source(attention_source)
        self.enabled = method is not None
        self.criteria = nn.ModuleDict()
        self.layer_maps: dict[str, list[int]] = {}
        # sites never padded in either model: no mask, so no masked copies of their (largest) maps
        self._unpadded = set(getattr(teacher, "unpadded_sites", ())) & set(getattr(student, "unpadded_sites", ()))
        self._stack_ok = False
        self._heads_read: dict[str, int] = {}
        if method is None:
            return
        self.input_kind = method.input_kind
        if attention_source == "qk" and self.input_kind == "maps":
            if not method.criterion.supports_qk:
                raise ValueError(
                    f"attention_source 'qk' cannot serve method {method.name!r}: it needs whole maps (its "
                    f"criterion {method.criterion.__name__} has no computation on blocks of query rows); use "
                    "attention_source 'maps'"
                )
            grids = method.teacher_grid, method.student_grid
            if grids[0] is not None and tuple(grids[0]) != tuple(grids[1]):
                raise ValueError(
                    f"attention_source 'qk' cannot resize the teacher's maps (teacher_grid {tuple(grids[0])} != "
                    f"student_grid {tuple(grids[1])}): the resize needs the maps; use attention_source 'maps'"
                )
        all_sites = tuple(teacher.sites)
        if sites is None:
            sites = [s for s in all_sites if self.input_kind == "maps" or s.endswith(".self")]
        for site in sites:
            if site not in all_sites or site not in tuple(student.sites):
                raise ValueError(f"unknown site {site!r} for family {teacher.family!r}; valid sites: {list(all_sites)}")
            if self.input_kind == "qkv" and not site.endswith(".self"):
                raise ValueError(
                    f"{method.name} distils self-attention relations; site {site!r} is not a self-attention site"
                )
            spec = layer_map.get(site, "uniform") if isinstance(layer_map, dict) else layer_map
            lt, ls = teacher.num_layers(site), student.num_layers(site)
            try:
                self.layer_maps[site] = resolve_layer_map(spec, lt, ls)
            except ValueError as err:
                raise ValueError(f"layer map for site {site!r}: {err}") from err
            for l_s in range(ls):
                self.criteria[self.key(site, l_s)] = method.build(teacher.num_heads(site), student.num_heads(site))
        self._stack_ok = self.input_kind == "maps" and all(type(c).stackable for c in self.criteria.values())
        self._heads_read = self.teacher_heads()

    @property
    def from_qk(self) -> bool:
        """Whether the map losses are computed from captured queries and keys (``attention_source="qk"``)."""
        return self.attention_source == "qk" and getattr(self, "input_kind", None) == "maps"

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

    def teacher_heads(self) -> dict[str, int]:
        """site -> how many leading teacher heads its criteria read (one-to-one: the student's; AMAD: all).

        The teacher cache replays only these, and stacked layer pairs copy only these; the criteria accept
        maps of just these heads (:meth:`~amad.losses.criteria.AttentionCriterion.teacher_heads_read`).
        """
        heads: dict[str, int] = {}
        for site, lmap in self.layer_maps.items():
            heads[site] = max(self.criteria[self.key(site, l_s)].teacher_heads_read() for l_s in range(len(lmap)))
        return heads

    def teacher_layers(self) -> dict[str, tuple[int, ...]]:
        """site -> the teacher layers the layer map uses: the only teacher maps worth capturing."""
        return {site: tuple(sorted(set(lmap))) for site, lmap in self.layer_maps.items()}

    def _site_inputs(self, site: str, t_out: Any, s_out: Any) -> tuple[Any, Any, dict]:
        """(teacher per-layer inputs, student per-layer inputs, mask keyword arguments) of one site."""
        unpadded = site in self._unpadded  # no mask: no masked copies of the (largest) maps
        if self.input_kind == "maps":
            qm = None if unpadded else s_out.query_masks[site]
            # the key mask of the site: its own tokens (self), the memory's (cross: padded question or
            # encoder tokens), which SHD, A2D and AttnDistill exclude from their own softmaxes
            km = None if unpadded else s_out.key_masks[site]
            kwargs = {"query_mask": qm, "key_mask": km}
            if self.from_qk:
                return (
                    self._outputs_inputs(t_out, site, "teacher"),
                    self._outputs_inputs(s_out, site, "student"),
                    kwargs,
                )
            return t_out.attentions[site], s_out.attentions[site], kwargs
        return t_out.qkv[site], s_out.qkv[site], {"key_mask": None if unpadded else s_out.key_masks[site]}

    @staticmethod
    def _outputs_inputs(out: Any, site: str, who: str) -> tuple:
        """The captured :class:`~amad.models.attention_inputs.AttentionInputs` of ``site``, or an error naming
        what is missing."""
        inputs = getattr(out, "attention_inputs", None) or {}
        if site not in inputs:
            raise ValueError(
                f"attention_source 'qk': the {who}'s output has no queries and keys for site {site!r} (its "
                f"attention_source is {getattr(out, 'attention_source', 'maps')!r}); run the adapter with "
                "attention_source='qk' and this site in sites=..."
            )
        return inputs[site]

    def _pairs(self, t_out: Any, s_out: Any):
        for site, lmap in self.layer_maps.items():
            t_all, s_all, kwargs = self._site_inputs(site, t_out, s_out)
            for l_s, l_t in enumerate(lmap):
                yield site, l_s, l_t, t_all[l_t], s_all[l_s], kwargs

    def _call(self, site: str, l_s: Any, l_t: Any, t: Any, s: Any, kwargs: dict) -> tuple[Tensor, Any]:
        key = self.key(site, l_s if isinstance(l_s, int) else 0)
        try:
            if self.from_qk:  # criteria are built per pair: parameter set 0
                return qk_attention_loss(self.criteria[key], t, s, **kwargs)
            return self.criteria[key](t, s, **kwargs)
        except ValueError as err:
            raise ValueError(f"site {site!r}, teacher layer {l_t} -> student layer {l_s}: {err}") from err

    def _stackable(self, t_maps: list, s_maps: list) -> bool:
        """Whether one call on the batch-stacked pairs gives the mean of the per-pair losses."""
        if not self._stack_ok or len(s_maps) < 2:
            return False
        if self.from_qk:
            return self._stackable_inputs(t_maps, s_maps)
        t0, s0 = t_maps[0], s_maps[0]
        if t0.dim() != 4 or s0.dim() != 4 or (t0.shape[0], *t0.shape[2:]) != (s0.shape[0], *s0.shape[2:]):
            return False  # let the per-pair call raise its error naming both shapes and the layer
        limit = self.STACK_MAX_NUMEL * (1 if s0.device.type == "cpu" else 16)
        return t0.numel() + s0.numel() <= limit

    def _stackable_inputs(self, t_in: list[AttentionInputs], s_in: list[AttentionInputs]) -> bool:
        """The qk version: small maps (the same bound), and per model one scale, mask and bias shared by
        every layer of the site (as BLIP's and T5's stacks pass them), so that stacking copies only the
        queries and keys (and repeats a (B, 1, Q, K) mask) -- never a (B, H, Q, K) bias."""
        for ins in (t_in, s_in):
            x0 = ins[0]
            if not all(isinstance(x, AttentionInputs) for x in ins):
                return False
            if any(x.scale != x0.scale or x.mask is not x0.mask or x.bias is not x0.bias for x in ins):
                return False
            if any(x.shape != x0.shape for x in ins) or (x0.bias is not None and x0.bias.shape[0] != 1):
                return False
        (B, Ht, Q, K), Hs = t_in[0].shape, s_in[0].num_heads
        if (B, Q, K) != (s_in[0].shape[0], *s_in[0].shape[2:]):
            return False  # let the per-pair call raise its error naming both shapes and the layer
        limit = self.STACK_MAX_NUMEL * (1 if s_in[0].q.device.type == "cpu" else 16)
        return B * (Ht + Hs) * Q * K <= limit

    @staticmethod
    def _stack(items: list) -> Any:
        """Maps, or :class:`AttentionInputs`, of several layers stacked along the batch (the pairs of a site)."""
        if not isinstance(items[0], AttentionInputs):
            return torch.cat(items)
        x0, n = items[0], len(items)
        mask = x0.mask if x0.mask is None or x0.mask.shape[0] == 1 else x0.mask.repeat(n, 1, 1, 1)
        return AttentionInputs(
            torch.cat([x.q for x in items]), torch.cat([x.k for x in items]), x0.scale, mask=mask, bias=x0.bias
        )

    def forward(self, t_out: Any, s_out: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean attention loss over all distilled pairs, and the mean per site."""
        means: dict[str, Tensor] = {}
        weighted, n_pairs = [], 0
        for site, lmap in self.layer_maps.items():
            t_all, s_all, kwargs = self._site_inputs(site, t_out, s_out)
            t_maps, s_maps = [t_all[l_t] for l_t in lmap], list(s_all[: len(lmap)])
            if self._stackable(t_maps, s_maps):
                # pairs stacked along the batch: (L*B, H, Q, K) maps or (L*B, H, Q|K, d) queries and keys;
                # masks repeated to match; of the teacher maps only the heads the criteria read are copied
                if not self.from_qk:
                    t_maps = [t[:, : self._heads_read[site]] for t in t_maps]
                rep = {k: None if v is None else v.repeat(len(lmap), 1) for k, v in kwargs.items()}
                means[site], _ = self._call(
                    site, list(range(len(lmap))), list(lmap), self._stack(t_maps), self._stack(s_maps), rep
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
