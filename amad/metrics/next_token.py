"""Next-token accuracy and perplexity of a causal language model, token-weighted and correct under DDP.

Counted tokens: every target that is not padding (``labels != -100``), i.e. each real token after the first
(``[BOS]`` is never a target; ``[EOS]`` is). Position t of the logits predicts token t + 1 -- the shifted
logits :class:`~amad.models.GenericAdapter` returns for a causal LM, (B, T - 1, V) against labels (B, T).
An optional ``copy_mask`` (B, T) picks a subset of targets (the scene texts' copied words,
:mod:`amad.data.scene_text`) for a second accuracy.

All results are over the tokens of the whole evaluation, not means of per-batch means: ``acc`` = correct
argmax predictions / tokens; ``loss`` = summed cross-entropy (nats) / tokens; ``ppl`` = exp(loss);
``copy_acc`` = correct / tokens among the ``copy_mask`` targets (NaN when there were none).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

#: The entries of :func:`next_token_counts`, in order.
COUNTS = ("nll", "correct", "tokens", "copy_correct", "copy_tokens")


def next_token_counts(logits: Tensor, labels: Tensor, copy_mask: Tensor | None = None) -> Tensor:
    """Sums over one batch: summed NLL, correct predictions and targets, the same two among ``copy_mask``.

    Args:
        logits: (B, T - 1, V) shifted logits: ``logits[:, t]`` predicts ``labels[:, t + 1]``.
        labels: (B, T) token ids, -100 at padding.
        copy_mask: (B, T) bool over the label positions, or None.

    Returns:
        float64 (5,) tensor, in the order of :data:`COUNTS`.

    Raises:
        ValueError: shapes that do not line up (named).
    """
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != (labels.shape[0], labels.shape[1] - 1):
        raise ValueError(
            f"next_token_counts: logits {tuple(logits.shape)} must be (B, T - 1, V) for labels (B, T) = "
            f"{tuple(labels.shape)}"
        )
    if copy_mask is not None and copy_mask.shape != labels.shape:
        raise ValueError(f"next_token_counts: copy_mask {tuple(copy_mask.shape)} must be labels' {tuple(labels.shape)}")
    targets = labels[:, 1:]
    real = targets != -100
    logp = torch.log_softmax(logits.detach().float(), dim=-1)
    safe = targets.clamp_min(0)
    nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    right = (logits.detach().argmax(-1) == targets) & real
    copied = real & copy_mask[:, 1:].bool() if copy_mask is not None else torch.zeros_like(real)
    return torch.stack(
        [
            nll[real].double().sum(),
            right.sum().double(),
            real.sum().double(),
            (right & copied).sum().double(),
            copied.sum().double(),
        ]
    )


class NextTokenMetrics(Metric):
    """Accumulates :func:`next_token_counts` over an evaluation; ``compute()`` → ``{acc, loss, ppl, copy_acc}``."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("counts", default=torch.zeros(len(COUNTS), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, labels: Tensor, copy_mask: Tensor | None = None) -> None:
        self.counts += next_token_counts(logits, labels, copy_mask).to(self.counts.device)

    def compute(self) -> dict[str, Tensor]:
        nll, right, tokens, copy_right, copy_tokens = self.counts
        loss = nll / tokens.clamp_min(1)
        copy_acc = copy_right / copy_tokens if copy_tokens > 0 else torch.tensor(float("nan"), dtype=torch.float64)
        return {
            "acc": (right / tokens.clamp_min(1)).float(),
            "loss": loss.float(),
            "ppl": loss.exp().float(),
            "copy_acc": copy_acc.float(),
        }
