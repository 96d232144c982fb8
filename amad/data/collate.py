"""The shared collate: examples → the batch dict of ``docs/architecture.md``.

Each dataset item is a dict ``{"image": uint8 (3, H, W), "id", "source": str, "target": str,
"references": list[str]}``. :class:`VisionTextCollator` turns a list of them into

* ``pixel_values`` float (B, 3, H, W): resized to ``image_size`` (bilinear, antialiased when
  shrinking), scaled to [0, 1], then ``(x - mean) / std``;
* ``input_ids`` long (B, S): ``[CLS] prefix source [SEP]`` right-padded with the pad id (0 for the
  word tokenizer); ``attention_mask`` long (B, S), 1 on real tokens;
* ``labels`` long (B, T): ``target [EOS]`` right-padded with -100;
* ``ids``, ``references`` (list[list[str]]), ``source_text`` (the raw source, without prefix);
* ``attributes`` (list of dicts of :class:`~amad.scenes.attributes.ShapeAttributes`) when the
  items carry them (the synthetic caption and translation tasks, generated scenes).

Images that are already floating point are taken as prepared (resized and normalised, e.g. by
:class:`PreparedImages`, which does it once for a DataModule's in-memory images) and only stacked.
Token ids of each distinct text are computed once per collator and remembered (up to
:attr:`VisionTextCollator.MEMO_SIZE` texts): the training loop sees the same questions and answers every
epoch.

Tokenizers without ``[CLS]`` (T5) get no start token; without ``[SEP]`` the source ends with the EOS
token (``</s>`` for T5). Targets end with EOS, or ``[SEP]`` when the tokenizer has no EOS (BERT, as
BLIP uses it). Over-long texts are cut so that the special tokens stay.

:class:`AttributeCollator` batches (image, attribute labels) pairs of generated scenes for the vision
stage of a teacher's pre-training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


def _as_triple(x: float | Sequence[float]) -> tuple[float, float, float]:
    if isinstance(x, (int, float)):
        return (float(x),) * 3
    t = tuple(float(v) for v in x)
    if len(t) == 1:
        return t * 3
    if len(t) != 3:
        raise ValueError(f"normalisation needs 1 or 3 values, got {list(x)}")
    return t  # type: ignore[return-value]


def prepare_images(
    images: torch.Tensor,
    image_size: int | None,
    mean: float | Sequence[float] = 0.5,
    std: float | Sequence[float] = 0.5,
) -> torch.Tensor:
    """uint8 (B, 3, H, W) → normalised float (B, 3, image_size, image_size)."""
    x = images.float().div_(255.0)
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        shrink = image_size < max(x.shape[-2:])
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=shrink
        ).clamp_(0.0, 1.0)
    m = torch.tensor(_as_triple(mean), dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(_as_triple(std), dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


class PreparedImages:
    """In-memory uint8 images (a :class:`~amad.data.images.TensorImages`) resized and normalised once.

    A callable key → float (3, S, S), the same values :func:`prepare_images` gives a batch of them, so
    that the collate function only stacks them (the demo's loader spent half its collate time resizing
    the same images again every epoch).

    Args:
        images: uint8 (N, 3, H, W).
        image_size, mean, std: as in :func:`prepare_images`.
        chunk: images prepared per call (bounds the temporary memory).
    """

    def __init__(
        self,
        images: torch.Tensor,
        image_size: int | None,
        mean: float | Sequence[float] = 0.5,
        std: float | Sequence[float] = 0.5,
        chunk: int = 1024,
    ) -> None:
        parts = [prepare_images(images[i : i + chunk], image_size, mean, std) for i in range(0, len(images), chunk)]
        self.images = torch.cat(parts) if parts else images.float()

    @staticmethod
    def nbytes(images: torch.Tensor, image_size: int | None) -> int:
        """Memory the prepared float32 images of ``images`` (N, 3, H, W) would take."""
        side = images.shape[-2:] if image_size is None else (image_size, image_size)
        return images.shape[0] * images.shape[1] * side[0] * side[1] * 4

    def __call__(self, key: int) -> torch.Tensor:
        return self.images[int(key)]


def _as_dict(attributes: Any) -> dict[str, Any] | None:
    return None if attributes is None else dict(vars(attributes))


class VisionTextCollator:
    """Callable collate function (picklable, so it works with ``num_workers > 0``).

    Args:
        tokenizer: any Hugging Face tokenizer (the word tokenizer of the embedded tasks, BERT, T5).
        image_size: output side length; ``None`` keeps the stored size.
        normalize: (mean, std), each a float or 3 floats.
        text_prefix: prepended to every source (VL-T5 style, e.g. ``"vqa:"``); not in ``source_text``.
        max_source_len: longest ``input_ids`` row, special tokens included.
        max_target_len: longest ``labels`` row, EOS included.
    """

    #: distinct texts whose token ids a collator remembers
    MEMO_SIZE = 1 << 17

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        image_size: int | None = None,
        normalize: tuple[float | Sequence[float], float | Sequence[float]] = (0.5, 0.5),
        text_prefix: str = "",
        max_source_len: int = 40,
        max_target_len: int = 40,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.mean, self.std = _as_triple(normalize[0]), _as_triple(normalize[1])
        self.text_prefix = text_prefix.strip()
        self.max_source_len = max_source_len
        self.max_target_len = max_target_len
        tok = tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.start = [tok.cls_token_id] if tok.cls_token_id is not None else []
        end = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        self.end = [end] if end is not None else []
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        if eos is None:
            raise ValueError("tokenizer has neither an EOS nor a SEP token to end targets with")
        self.eos = eos
        if max_source_len < len(self.start) + len(self.end) or max_target_len < 1:
            raise ValueError("max_source_len / max_target_len too small for the special tokens")
        self._memo: dict[str, list[int]] = {}

    def _encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of ``texts`` (no special tokens), each distinct text tokenized once."""
        new = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if new:
            ids = self.tokenizer(new, add_special_tokens=False)["input_ids"]
            if len(self._memo) + len(new) <= self.MEMO_SIZE:
                self._memo.update(zip(new, ids, strict=True))
            else:  # past the memo's size: tokenize without remembering
                fresh = dict(zip(new, ids, strict=True))
                return [fresh[t] if t in fresh else self._memo[t] for t in texts]
        return [self._memo[t] for t in texts]

    def remember(self, sources: Sequence[str], targets: Sequence[str]) -> None:
        """Tokenize a split's texts now, in one call each, so that its batches only look them up (skipped
        when they would not fit in the memo)."""
        full = [self._full(t) for t in sources]
        if len(set(full)) + len(set(targets)) + len(self._memo) <= self.MEMO_SIZE:
            self._encode(full)
            self._encode(list(targets))

    def _full(self, text: str) -> str:
        return f"{self.text_prefix} {text}".strip()

    def source_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of sources: ``[CLS] prefix text [SEP]``, cut to ``max_source_len``."""
        full = [self._full(t) for t in texts]
        room = self.max_source_len - len(self.start) - len(self.end)
        return [self.start + ids[:room] + self.end for ids in self._encode(full)]

    def target_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of targets: ``text [EOS]``, cut to ``max_target_len``."""
        return [[*ids[: self.max_target_len - 1], self.eos] for ids in self._encode(list(texts))]

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        if not items:
            raise ValueError("cannot collate an empty batch")
        images = torch.stack([it["image"] for it in items])
        src = self.source_ids([it["source"] for it in items])
        tgt = self.target_ids([it["target"] for it in items])
        s, t = max(map(len, src)), max(map(len, tgt))
        # padded as Python lists, one tensor each: a copy per row into the tensors cost ~2 ms per batch of 64
        input_ids = torch.tensor([a + [self.pad_id] * (s - len(a)) for a in src], dtype=torch.long)
        attention_mask = torch.tensor([[1] * len(a) + [0] * (s - len(a)) for a in src], dtype=torch.long)
        labels = torch.tensor([y + [IGNORE_INDEX] * (t - len(y)) for y in tgt], dtype=torch.long)
        prepared = images.is_floating_point()  # resized and normalised already (PreparedImages)
        batch = {
            "pixel_values": images if prepared else prepare_images(images, self.image_size, self.mean, self.std),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "ids": [it["id"] for it in items],
            "references": [list(it["references"]) for it in items],
            "source_text": [it["source"] for it in items],
        }
        if any("attributes" in it for it in items):  # synthetic tasks: what the attribute metric reads
            # plain dicts: Lightning's batch transfer cannot rebuild frozen dataclasses
            batch["attributes"] = [_as_dict(it.get("attributes")) for it in items]
        return batch


class AttributeCollator:
    """Batches of :class:`~amad.scenes.datasets.SceneAttributeDataset`: ``{"pixel_values" (B, 3, S, S),
    "labels" (B, 5)}``.

    Args:
        image_size: side of ``pixel_values`` (the teacher's input); None keeps 64.
        normalize: (mean, std), as the task's DataModule normalises.
    """

    def __init__(self, image_size: int | None = None, normalize: Any = (0.5, 0.5)) -> None:
        self.image_size = image_size
        self.mean, self.std = normalize

    def __call__(self, items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        images = torch.stack([im for im, _ in items])
        return {
            "pixel_values": prepare_images(images, self.image_size, self.mean, self.std),
            "labels": torch.stack([lab for _, lab in items]),
        }
