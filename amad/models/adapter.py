"""The adapter base class: one contract over every model family (docs/architecture.md).

A family adapter wraps a Hugging Face model (``self.model``) plus any modules of its own and
implements four things: :meth:`attention_points` (where each site's maps live), :meth:`_run` (the
teacher-forced forward), :meth:`_encode` / :meth:`_next_logits` (greedy decoding). Everything else —
site validation, capture, the loss and generation — lives here; saving and loading live in
:mod:`amad.models.io`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amad.models.capture import AdapterOutput, AttentionPoint, Capture, check_attention_source

IGNORE_INDEX = -100


def decoder_inputs(labels: Tensor, bos_token_id: int, pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Teacher-forcing decoder inputs from labels: ``[BOS] + labels[:, :-1]``, -100 → pad.

    Args:
        labels: (B, T) long, ``w1 .. wm [EOS]`` right-padded with -100.
    Returns:
        ``(decoder_input_ids, target_mask)``, (B, T) long and (B, T) bool (``labels != -100``).
        The target mask doubles as the decoder key mask: position t is a real decoder input exactly
        when its prediction ``labels[:, t]`` is real (right padding).
    """
    target_mask = labels != IGNORE_INDEX
    dec = labels.new_full(labels.shape, pad_token_id)
    dec[:, 0] = bos_token_id
    if labels.shape[1] > 1:
        dec[:, 1:] = labels[:, :-1].masked_fill(~target_mask[:, :-1], pad_token_id)
    return dec, target_mask


def task_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy averaged over real target tokens (0, not NaN, when there are none).

    Args:
        logits: (B, T, V); labels: (B, T) with -100 for padding.
    """
    n = (labels != IGNORE_INDEX).sum()
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return total / n.clamp(min=1)


_VOLATILE_KEYS = ("transformers_version", "architectures", "dtype", "torch_dtype")


def _clean_config(d: dict[str, Any]) -> dict[str, Any]:
    """Drop bookkeeping fields (version, architectures, dtype) at every level of an HF config dict."""
    return {k: _clean_config(v) if isinstance(v, dict) else v for k, v in d.items() if k not in _VOLATILE_KEYS}


class AttentionAdapter(nn.Module):
    """Base of the family adapters; a plain ``nn.Module`` (no Lightning, no logging).

    Attributes:
        family: family name (``blip-vqa``, ``blip-caption``, ``vlt5``).
        tasks: the tasks whose batches the family reads.
        sites: the attention sites of the family, in forward order.
        unpadded_sites: sites whose query rows and keys are never padded by construction (BLIP's
            image patches): their masks are all True, and losses may skip masking them.
        model: the wrapped Hugging Face model.
        tokenizer: the tokenizer (a placeholder vocabulary when built without one; None possible for
            checkpoints loaded without tokenizer files).
        init_report: set by :func:`amad.models.derive_student` (what was copied from the teacher).
    """

    family: ClassVar[str] = ""
    #: the tasks whose batches the family reads ("vqa", "caption", "translate")
    tasks: ClassVar[tuple[str, ...]] = ()
    sites: ClassVar[tuple[str, ...]] = ()
    unpadded_sites: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module, tokenizer: Any = None) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.init_report: dict[str, Any] | None = None

    # ---------------------------------------------------------------- to implement per family
    def attention_points(self, site: str) -> list[AttentionPoint]:
        """Per layer, where the maps (and q/k/v projections) of ``site`` are read."""
        raise NotImplementedError

    def num_layers(self, site: str) -> int:
        """Number of layers of ``site``."""
        return len(self.attention_points(self._check_site(site)))

    def num_heads(self, site: str) -> int:
        """Number of attention heads at ``site``."""
        raise NotImplementedError

    def _run(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """Teacher-forced forward: ``(logits (B,T,V), target_mask (B,T), query_masks, key_masks)``."""
        raise NotImplementedError

    def _encode(self, batch: dict[str, Any]) -> Any:
        """Everything the decoder needs, computed once per generation."""
        raise NotImplementedError

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        """(B, N, d) features of the image alone (no text): BLIP's ViT, VL-T5's encoder over its visual
        tokens. What a teacher's vision pre-training stage trains."""
        raise NotImplementedError

    def _next_logits(self, state: Any, decoder_ids: Tensor) -> Tensor:
        """(B, V) logits of the next token after ``decoder_ids`` (B, t)."""
        raise NotImplementedError

    @property
    def bos_token_id(self) -> int:
        raise NotImplementedError

    @property
    def eos_token_id(self) -> int:
        raise NotImplementedError

    @property
    def pad_token_id(self) -> int:
        raise NotImplementedError

    @property
    def image_size(self) -> int | None:
        """Side of the ``pixel_values`` the model was built for (None: it takes no pixels)."""
        raise NotImplementedError

    @property
    def patch_size(self) -> int | None:
        """Side of an image patch (None: no patch embedding)."""
        raise NotImplementedError

    def extra_config(self) -> dict[str, Any]:
        """Adapter-level settings beyond the HF config (flat ``build_model`` overrides)."""
        return {}

    # ---------------------------------------------------------------- the contract
    def forward(
        self,
        batch: dict[str, Any],
        sites: Iterable[str] | None = None,
        qkv_sites: Iterable[str] = (),
        layers: Mapping[str, Iterable[int]] | None = None,
        attention_source: str = "maps",
    ) -> AdapterOutput:
        """Teacher-forced forward with attention capture.

        Args:
            batch: the batch dict of docs/architecture.md.
            sites: sites whose maps (or, with ``attention_source="qk"``, queries and keys) to return
                (None = all, () = none).
            qkv_sites: self-attention sites whose q/k/v projections to return.
            layers: site -> layer indices to capture (default: all layers of each requested site);
                the others are returned as None and their maps are never kept.
            attention_source: ``"maps"`` (eager attention everywhere; ``attentions`` holds the maps) or
                ``"qk"`` (every attention layer of the model runs SDPA, this forward only; no map exists
                and ``attention_inputs`` holds each requested layer's
                :class:`~amad.models.attention_inputs.AttentionInputs`).

        Returns:
            :class:`AdapterOutput`.

        Raises:
            ValueError: an unknown site or source, a cross-attention site in ``qkv_sites``, or a layer
                index out of range.
            RuntimeError: a requested site produced no maps / no queries and keys (names the site).
        """
        map_sites = self.sites if sites is None else self._check_sites(sites)
        proj_sites = self._check_sites(qkv_sites)
        bad = [s for s in proj_sites if not s.endswith(".self")]
        if bad:
            raise ValueError(
                f"qkv_sites must be self-attention sites of {self.family!r} "
                f"({[s for s in self.sites if s.endswith('.self')]}); got {bad}"
            )
        source = check_attention_source(attention_source)
        fast = self.sites if source == "qk" else ()
        with Capture(self.attention_points, map_sites, proj_sites, layers, source=source, fast_sites=fast) as cap:
            logits, target_mask, query_masks, key_masks = self._run(batch)
        return AdapterOutput(
            loss=task_loss(logits, batch["labels"]),
            logits=logits,
            target_mask=target_mask,
            attentions=cap.attentions(),
            query_masks=query_masks,
            qkv=cap.projections(),
            key_masks=key_masks,
            attention_inputs=cap.attention_inputs(),
            attention_source=source,
        )

    @torch.no_grad()
    def generate_ids(self, batch: dict[str, Any], max_new_tokens: int = 10) -> Tensor:
        """Greedy decoding: (B, t ≤ max_new_tokens) token ids (pad after EOS; no BOS).

        Runs in eval mode (dropout off) and restores the previous mode. Encoders run once; the
        decoder re-reads its prefix each step (answers and captions are short).
        """
        was_training = self.training
        self.eval()
        try:
            state = self._encode(batch)
            bsz, device = batch["input_ids"].shape[0], batch["input_ids"].device
            cur = torch.full((bsz, 1), self.bos_token_id, dtype=torch.long, device=device)
            done = torch.zeros(bsz, dtype=torch.bool, device=device)
            for _ in range(max_new_tokens):
                nxt = self._next_logits(state, cur).argmax(-1)
                nxt = nxt.masked_fill(done, self.pad_token_id)
                cur = torch.cat([cur, nxt[:, None]], dim=1)
                done |= nxt == self.eos_token_id
                if bool(done.all()):
                    break
            return cur[:, 1:]
        finally:
            self.train(was_training)

    def generate(self, batch: dict[str, Any], max_new_tokens: int = 10) -> list[str]:
        """Greedy decoding, decoded to strings (special tokens dropped, cut at EOS)."""
        if self.tokenizer is None:
            raise RuntimeError(f"{type(self).__name__} has no tokenizer; pass tokenizer= when building or loading it")
        ids = self.generate_ids(batch, max_new_tokens).tolist()
        out = []
        for seq in ids:
            if self.eos_token_id in seq:
                seq = seq[: seq.index(self.eos_token_id)]
            out.append(self.tokenizer.decode(seq, skip_special_tokens=True).strip())
        return out

    # ---------------------------------------------------------------- configs and files
    def config_dict(self) -> dict[str, Any]:
        """A plain dict that rebuilds this architecture: ``build_model(**adapter.config_dict())``."""
        return {
            "family": self.family,
            "hf_config": _clean_config(self.model.config.to_diff_dict()),
            **self.extra_config(),
        }

    def extra_state_dict(self) -> dict[str, Tensor]:
        """The adapter's own tensors, outside the wrapped HF model (e.g. VL-T5's visual embedding)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("model.")}

    # ---------------------------------------------------------------- helpers
    def _check_site(self, site: str) -> str:
        if site not in self.sites:
            raise ValueError(f"site {site!r} is not a site of family {self.family!r}; its sites are {list(self.sites)}")
        return site

    def _check_sites(self, sites: Iterable[str] | str) -> tuple[str, ...]:
        if isinstance(sites, str):
            sites = (sites,)
        out = tuple(sites)
        for s in out:
            self._check_site(s)
        return out

    @staticmethod
    def _ones_mask(batch_size: int, length: int, device: torch.device) -> Tensor:
        return torch.ones(batch_size, length, dtype=torch.bool, device=device)

    def extra_repr(self) -> str:
        return f"family={self.family!r}, sites={self.sites}"
