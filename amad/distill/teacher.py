"""The frozen teacher: one named component that cannot drift.

Distillation silently goes wrong when the teacher trains along (its dropout runs, a resume restores
an optimizer state for it, DDP averages its "gradients"). ``FrozenTeacher`` makes each of those
impossible by construction:

* ``requires_grad_(False)`` on every parameter, so it can never enter an optimizer (the systems build
  their optimizers from the student only, and a test checks it);
* ``train()`` is overridden: whatever calls ``.train()`` (Lightning, a callback, the user), the teacher
  stays in eval mode, so its dropout never runs;
* ``forward`` runs under ``torch.no_grad()`` (not ``inference_mode``: its outputs feed losses whose
  graphs reach the student, and inference tensors cannot be saved for backward);
* :class:`~amad.lit.DistillationModule` drops the teacher from checkpoints and re-injects the live
  teacher on load; DDP wraps the LightningModule, but a module with no trainable parameter takes no
  part in gradient reduction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


class FrozenTeacher(nn.Module):
    """Wrap a model adapter so that it is, and stays, frozen and in eval mode.

    Args:
        model: a model adapter from :func:`amad.models.build_model` (any ``nn.Module`` whose
            ``forward(batch, sites=..., qkv_sites=...)`` follows docs/architecture.md).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.model.requires_grad_(False)
        super().train(False)

    @classmethod
    def load(cls, path: str | Path) -> FrozenTeacher:
        """Load a teacher from a ``save_pretrained`` directory or a Lightning checkpoint.

        Args:
            path: a directory written by ``amad export`` / ``adapter.save_pretrained`` (or a real
                Hugging Face checkpoint directory), or a ``.ckpt`` of a :class:`FineTuneModule` run.

        Raises:
            FileNotFoundError: ``path`` does not exist (the message says what is expected).
        """
        from amad.models.io import load_model

        return cls(load_model(path))

    # -- frozen by construction -------------------------------------------------------------------
    def train(self, mode: bool = True) -> FrozenTeacher:
        """Ignore ``mode``: the teacher is always in eval mode (its dropout never runs)."""
        return super().train(False)

    def requires_grad_(self, requires_grad: bool = True) -> FrozenTeacher:
        """Ignore ``requires_grad``: no parameter of the teacher ever needs a gradient."""
        return super().requires_grad_(False)

    @torch.no_grad()
    def forward(self, batch: dict[str, Any], **kwargs: Any) -> Any:
        """Run the wrapped adapter without building a graph (see the module docstring)."""
        if self.model.training:  # someone reached past the wrapper (e.g. teacher.model.train())
            self.model.eval()
        return self.model(batch, **kwargs)

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], **kwargs: Any) -> list[str]:
        """Greedy generation with the teacher (for sample tables and the teacher's own metrics)."""
        return self.model.generate(batch, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Delegate adapter facts (sites, num_heads, tokenizer, family...) to the wrapped model.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)
