"""Random but valid batches in the docs/architecture.md format, for the benchmarks and the tests.

Private (not part of the library's API): the benchmarks measure models on them, the tests import them
from here. A user's batches come from a DataModule (:mod:`amad.data`).
"""

from __future__ import annotations

from typing import Any

import torch

CLS_ID, SEP_ID, EOS_ID, FIRST_WORD_ID = 2, 3, 6, 7


def random_batch(
    family: str,
    batch_size: int = 4,
    *,
    model: Any = None,
    tokenizer: Any = None,
    image_size: int = 64,
    vocab_size: int = 100,
    source_len: int = 8,
    target_len: int = 4,
    num_regions: int = 8,
    visual_feat_dim: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """A padded batch with random images and token ids.

    Lengths vary over the batch: example 0 has the longest source and target (no padding), the last
    example the shortest (1 source word, an empty target of just ``[EOS]``), so padding is always
    exercised when ``batch_size > 1``.

    Args:
        family: ``blip-vqa``, ``blip-caption`` (source is ``[CLS] [SEP]``) or ``vlt5``.
        model: an adapter; when given, image size, vocabulary, special ids and region-feature size
            are read from it (and the keyword values below ignored).
        tokenizer: when given (and no model), vocabulary size and ``[CLS]`` / ``[SEP]`` / ``[EOS]`` ids
            come from it (EOS falls back to SEP for tokenizers without one).
        source_len: padded source length S (``[CLS]`` + up to S-2 words + ``[SEP]``).
        target_len: padded target length T (up to T-1 words + ``[EOS]``, padding -100).
        num_regions, visual_feat_dim: add ``visual_feats`` (B, N, F) / ``visual_boxes`` (B, N, 4)
            when ``visual_feat_dim`` is set (or the VL-T5 model takes region features only).
        seed: the batch is a function of the arguments and the seed.
    """
    cls_id, sep_id, eos_id = CLS_ID, SEP_ID, EOS_ID
    tok = getattr(model, "tokenizer", None) if model is not None else tokenizer
    if tok is not None:
        cls_id = tok.cls_token_id if tok.cls_token_id is not None else cls_id
        sep_id = tok.sep_token_id if tok.sep_token_id is not None else sep_id
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        eos_id = eos if eos is not None else eos_id
        vocab_size = len(tok)
    if model is not None:
        eos_id = model.eos_token_id
        if family == "vlt5":
            vis = model.extra_config()
            image_size = vis["image_size"]
            vocab_size = model.model.config.vocab_size
            if not vis["patch_size"]:
                visual_feat_dim = vis["visual_feat_dim"]
        else:
            image_size = model.model.config.vision_config.image_size
            vocab_size = model.model.config.text_config.vocab_size
    if source_len < 3 or target_len < 1:
        raise ValueError("source_len must be >= 3 and target_len >= 1")
    g = torch.Generator().manual_seed(seed)
    bsz = batch_size
    src_words = _lengths(bsz, 1, source_len - 2, g)
    tgt_words = _lengths(bsz, 0, target_len - 1, g)
    word = lambda n: torch.randint(FIRST_WORD_ID, vocab_size, (n,), generator=g)  # noqa: E731

    if family == "blip-caption":
        input_ids = torch.tensor([[cls_id, sep_id]] * bsz)
        attention_mask = torch.ones_like(input_ids)
        sources = [[] for _ in range(bsz)]
    else:
        input_ids = torch.zeros(bsz, source_len, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        sources = []
        for i, n in enumerate(src_words):
            w = word(n)
            sources.append(w.tolist())
            input_ids[i, : n + 2] = torch.cat([torch.tensor([cls_id]), w, torch.tensor([sep_id])])
            attention_mask[i, : n + 2] = 1
    labels = torch.full((bsz, target_len), -100, dtype=torch.long)
    targets = []
    for i, m in enumerate(tgt_words):
        w = word(m)
        targets.append(w.tolist())
        labels[i, : m + 1] = torch.cat([w, torch.tensor([eos_id])])

    batch: dict[str, Any] = {
        "pixel_values": torch.randn(bsz, 3, image_size, image_size, generator=g),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "ids": list(range(bsz)),
        "references": [[_text(t, tok)] for t in targets],
        "source_text": [_text(s, tok) for s in sources],
    }
    if visual_feat_dim:
        batch["visual_feats"] = torch.randn(bsz, num_regions, visual_feat_dim, generator=g)
        xy = torch.rand(bsz, num_regions, 2, generator=g) * 0.5
        wh = torch.rand(bsz, num_regions, 2, generator=g) * 0.5 + 0.01
        batch["visual_boxes"] = torch.cat([xy, xy + wh], dim=-1)
    if device is not None:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    return batch


def _lengths(bsz: int, low: int, high: int, g: torch.Generator) -> list[int]:
    """Random lengths in [low, high], first = high, last = low (when bsz > 1)."""
    out = torch.randint(low, high + 1, (bsz,), generator=g).tolist()
    out[0] = high
    if bsz > 1:
        out[-1] = low
    return out


def _text(ids: list[int], tok: Any) -> str:
    if tok is not None:
        return tok.decode(ids, skip_special_tokens=True)
    return " ".join(f"tok{i}" for i in ids)
