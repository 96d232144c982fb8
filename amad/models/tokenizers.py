"""Tokenizers that build offline.

The embedded tasks use a word-level vocabulary built from the training text (a few hundred
words), wrapped in a ``PreTrainedTokenizerFast`` so that it saves and loads like any Hugging Face
tokenizer and travels with the run / exported student. Real checkpoints bring their own
WordPiece / SentencePiece files, loaded from a local directory.

Why not ``BertTokenizer(vocab_file=...)``: in transformers 5.24 that argument is silently ignored
and every word becomes ``[UNK]``. We never use it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

#: Special tokens of every word-level tokenizer, in id order (``[PAD]`` is id 0).
SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[BOS]", "[EOS]")

_WORD_RE = re.compile(r"[\w']+|[^\w\s]", re.UNICODE)


def split_words(text: str) -> list[str]:
    """Lower-case ``text`` and split it into words and punctuation marks (the pre-tokenizer rule)."""
    return _WORD_RE.findall(text.lower())


def build_word_tokenizer(
    texts: Iterable[str], *, min_freq: int = 1, max_size: int | None = None
) -> PreTrainedTokenizerFast:
    """Build a lower-casing word-level tokenizer from a corpus.

    Args:
        texts: training sentences (questions, answers, captions, translations).
        min_freq: drop words seen fewer times (they become ``[UNK]``).
        max_size: keep at most this many words (most frequent first, ties alphabetical).

    Returns:
        A ``PreTrainedTokenizerFast`` with ``pad/unk/cls/sep/mask/bos/eos`` tokens set; ``[PAD]`` is 0.
        Word ids are sorted by frequency then alphabetically, so the same corpus gives the same ids.
    """
    counts = Counter(w for t in texts for w in split_words(t))
    words = sorted(
        (w for w, c in counts.items() if c >= min_freq and w not in SPECIAL_TOKENS), key=lambda w: (-counts[w], w)
    )
    if max_size is not None:
        words = words[:max_size]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        vocab[w] = len(vocab)
    return word_tokenizer_from_vocab(vocab)


def word_tokenizer_from_vocab(vocab: dict[str, int]) -> PreTrainedTokenizerFast:
    """Wrap a ``word -> id`` mapping (which must contain :data:`SPECIAL_TOKENS`) as a fast tokenizer."""
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"vocabulary lacks the special tokens {missing}")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    # Same rule as split_words: runs of word characters/apostrophes, or single punctuation marks.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(tokenizers_regex(), behavior="isolated")]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins with spaces, tidies punctuation
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=512,
    )


def tokenizers_regex():
    """The ``tokenizers`` Regex object equivalent to :func:`split_words`' pattern."""
    from tokenizers import Regex

    return Regex(r"[\w']+|[^\w\s]")


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer saved with ``save_pretrained`` (ours, WordPiece or SentencePiece) from a local dir.

    Raises:
        FileNotFoundError: ``path`` is not a directory; the message says what it should contain.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"tokenizer directory {path} does not exist; expected a folder written by "
            "`tokenizer.save_pretrained(...)` (tokenizer.json or vocab.txt / spiece.model). "
            "Hub ids cannot be downloaded here: pass a local path."
        )
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def placeholder_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer of ``vocab_size`` tokens: :data:`SPECIAL_TOKENS`, then ``tok7``, ``tok8``...

    Used when a model is built without a tokenizer (tests, benchmarks, shapes): ids map to readable
    placeholder words, so ``generate`` still returns strings and saving still writes a tokenizer.
    """
    if vocab_size < len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be >= {len(SPECIAL_TOKENS)} (the special tokens), got {vocab_size}")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"tok{i}": i for i in range(len(SPECIAL_TOKENS), vocab_size)})
    return word_tokenizer_from_vocab(vocab)


def is_placeholder_tokenizer(tokenizer: Any) -> bool:
    """True for a tokenizer made by :func:`placeholder_tokenizer` (ids 7.. named ``tok7``, ``tok8``...)."""
    if tokenizer is None:
        return False
    vocab = tokenizer.get_vocab()
    return len(vocab) > len(SPECIAL_TOKENS) and all(
        vocab.get(f"tok{i}") == i for i in (len(SPECIAL_TOKENS), len(vocab) - 1)
    )
