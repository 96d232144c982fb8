"""Language modelling on generated scene descriptions (SYNTHETIC): describe 2-3 shapes, then recall them.

The data of the embedded language-model example (docs/models.md, "Distil your own transformers model"). Each
text describes a few shapes of :class:`~amad.scenes.generator.SceneGenerator` scenes (attributes as drawn)
and then recalls each one by its colour, in a shuffled order::

    a small red circle in the top left corner . a large blue triangle at the bottom .
    the blue shape is a large triangle at the bottom . the red shape is a small circle in the top left corner .

The description part is random (which shapes, sizes, colours and places were drawn); in the recall part
every word after "the <colour> shape is a" -- the size, the shape and the position phrase, the **copied
words** -- is fixed by the description: to predict it a model has to find the colour earlier in the text
and read the words around it. That is where attention matters, so batches mark those targets
(``copy_mask``) and :class:`~amad.lit.language.LanguageDistillationModule` reports accuracy on them next
to the accuracy and perplexity over every token.

Every split draws its shapes from its own :class:`~amad.scenes.datasets.ScenePool` (``seed +
SPLIT_SEEDS[split]``, as many scenes as the split has texts: the pools of the scenes ViT example, cached
on disk), so no drawn scene is shared between splits; text ``j`` of a split is a pure function of
``(pool seed, j)``. Colours within a text are distinct (the recall cue).

The tokenizer is word-level and built in code (:func:`scene_text_tokenizer`: the 7 special tokens, then
every word the templates can write, sorted), so nothing is downloaded. Batches are the keyword arguments of
a transformers causal LM: ``{"input_ids" (B, T) long, "attention_mask" (B, T) long, "labels" (B, T) long:
the ids with -100 at padding, "copy_mask" (B, T) bool}``, ``[BOS] words [EOS]`` padded on the right with
``[PAD]`` (id 0); ``copy_mask`` is True at the copied words (the model ignores the key), and ``ids`` (B,)
long are the texts' indices in their split (ignored by the model; the teacher cache's key).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from amad.data.generated import GeneratedSplitsDataModule
from amad.models.tokenizers import SPECIAL_TOKENS, word_tokenizer_from_vocab
from amad.scenes.attributes import PALETTE, ShapeAttributes
from amad.scenes.captions import POSITION_EN, all_attributes
from amad.scenes.datasets import ScenePool

PAD_ID = SPECIAL_TOKENS.index("[PAD]")
BOS_ID = SPECIAL_TOKENS.index("[BOS]")
EOS_ID = SPECIAL_TOKENS.index("[EOS]")


def _object_sentence(a: ShapeAttributes) -> list[str]:
    return ["a", a.size, a.colour, a.shape, *POSITION_EN[a.row, a.col].split(), "."]


def _recall_sentence(a: ShapeAttributes) -> tuple[list[str], list[bool]]:
    cue = ["the", a.colour, "shape", "is", "a"]
    copied = [a.size, a.shape, *POSITION_EN[a.row, a.col].split()]
    return [*cue, *copied, "."], [False] * len(cue) + [True] * len(copied) + [False]


def describe(objects: Sequence[ShapeAttributes], recall_order: Sequence[int]) -> tuple[list[str], list[bool]]:
    """The words of one text and, per word, whether it is a copied word of a recall sentence.

    Args:
        objects: the shapes described, in order (distinct colours, so that a colour names one shape).
        recall_order: the order in which they are recalled (a permutation of ``range(len(objects))``).

    Raises:
        ValueError: two objects share a colour, or ``recall_order`` is not a permutation.
    """
    if len({a.colour for a in objects}) != len(objects):
        raise ValueError(f"describe: the colours {[a.colour for a in objects]} must be distinct (the recall cue)")
    if sorted(recall_order) != list(range(len(objects))):
        raise ValueError(f"describe: recall_order {list(recall_order)} is not a permutation of {len(objects)}")
    words: list[str] = [w for a in objects for w in _object_sentence(a)]
    copied = [False] * len(words)
    for i in recall_order:
        w, c = _recall_sentence(objects[i])
        words += w
        copied += c
    return words, copied


@functools.lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """Every token, in id order: :data:`~amad.models.tokenizers.SPECIAL_TOKENS`, then the templates' words
    sorted (whatever attributes are drawn, no text has a word outside it)."""
    words: set[str] = set()
    for a in all_attributes():
        words.update(_object_sentence(a))
        words.update(_recall_sentence(a)[0])
    return (*SPECIAL_TOKENS, *sorted(words))


def scene_text_tokenizer() -> Any:
    """The word-level tokenizer of :func:`vocabulary` (a ``PreTrainedTokenizerFast``; saves with the model)."""
    return word_tokenizer_from_vocab({w: i for i, w in enumerate(vocabulary())})


class SceneTextDataset(Dataset):
    """``size`` texts drawn from the scenes of pool ``seed``: ``(ids (L,) long, copy (L,) bool)``.

    Args:
        size: texts (also the scenes of the pool they are drawn from).
        seed: the pool's generator seed.
        objects: fewest and most shapes per text (each text draws its count uniformly).
    """

    def __init__(self, size: int, seed: int, objects: tuple[int, int] = (2, 3)) -> None:
        lo, hi = objects
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not 1 <= lo <= hi <= len(PALETTE):
            raise ValueError(f"objects must be (lo, hi) with 1 <= lo <= hi <= {len(PALETTE)}, got {objects}")
        pool = ScenePool(seed, size)
        index = {w: i for i, w in enumerate(vocabulary())}
        self.texts: list[str] = []
        self.items: list[tuple[torch.Tensor, torch.Tensor]] = []
        for j in range(size):
            objs, order = self._draw(pool, np.random.default_rng([seed, j, 7]), lo, hi)
            words, copied = describe(objs, order)
            self.texts.append(" ".join(words))
            ids = torch.tensor([BOS_ID, *(index[w] for w in words), EOS_ID], dtype=torch.long)
            self.items.append((ids, torch.tensor([False, *copied, False])))

    @staticmethod
    def _draw(pool: ScenePool, rng: np.random.Generator, lo: int, hi: int) -> tuple[list[ShapeAttributes], list[int]]:
        # shapes of a text: pool scenes drawn at random, skipping a colour already in the text; a pool too
        # small for ``hi`` colours (tests) gives what it has after a bounded number of draws
        want, objs, colours = int(rng.integers(lo, hi + 1)), [], set()
        for _ in range(64 * hi):
            if len(objs) == want:
                break
            attrs = pool[int(rng.integers(len(pool)))][1]
            if attrs.colour not in colours:
                colours.add(attrs.colour)
                objs.append(attrs)
        return objs, [int(i) for i in rng.permutation(len(objs))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.items[i]


def collate_text(items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Right-pad a list of ``(ids, copy)`` into the batch of the module docstring."""
    n = max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), n), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros((len(items), n), dtype=torch.long)
    copy_mask = torch.zeros((len(items), n), dtype=torch.bool)
    for b, (ids, copied) in enumerate(items):
        input_ids[b, : len(ids)] = ids
        attention_mask[b, : len(ids)] = 1
        copy_mask[b, : len(ids)] = copied
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "copy_mask": copy_mask}


class SceneTextDataModule(GeneratedSplitsDataModule):
    """Generated scene descriptions (SYNTHETIC) for a causal language model.

    Args:
        train_size, val_size, test_size: texts per split (each split its own pool of as many scenes).
        objects: fewest and most shapes a text describes (and recalls).
        batch_size: texts per training batch.
        eval_batch_size: texts per validation / test batch (default: ``batch_size``).
        eval_subset: evaluate on the first this many val and test texts only (quick checks; every text is an
            independent draw, so the first N are a fair sample). None: all.
        seed: base seed of the scene pools (split seeds: ``seed + SPLIT_SEEDS[split]``).
        num_workers: DataLoader workers.

    Attributes:
        task: ``"lm"``; vocab_size: the tokenizer's size: what the CLI links into the system.
        tokenizer: :func:`scene_text_tokenizer`.
    """

    task = "lm"

    def __init__(
        self,
        train_size: int = 20_000,
        val_size: int = 1_000,
        test_size: int = 2_000,
        objects: tuple[int, int] = (2, 3),
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        eval_subset: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(train_size, val_size, test_size, batch_size, eval_batch_size, eval_subset, seed, num_workers)
        self.objects = tuple(objects)
        self.tokenizer = scene_text_tokenizer()
        self.vocab_size = len(vocabulary())

    def make_dataset(self, split: str, size: int, seed: int) -> SceneTextDataset:
        return SceneTextDataset(size, seed, self.objects)

    def collate(self, items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return collate_text(items)
