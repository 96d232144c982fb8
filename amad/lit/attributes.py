"""SceneAttributeModule: the vision stage of a teacher's pre-training on generated scenes (SYNTHETIC).

A ViT learns the colour of easy-VQA shapes within ~150 steps of VQA but their *shape* only slowly: most
questions ask about colour or presence, so the shape signal is thin (docs/design notes in
docs/datasets.md and docs/results.md). Here the model's image encoder (:meth:`encode_image`: BLIP's ViT,
VL-T5's encoder over its visual tokens) is trained to read the attributes of generated scenes
directly — shape, colour, size, row and column, one linear head each on the mean of its output tokens.
The heads are thrown away afterwards; the encoder goes on to the task stages.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amad.lit.base import lr_schedule
from amad.scenes.datasets import ATTRIBUTE_CLASSES


class SceneAttributeModule(L.LightningModule):
    """Train ``model.encode_image`` to read scene attributes (batches of
    :class:`~amad.data.collate.AttributeCollator`: ``pixel_values``, ``labels`` (B, 5)).

    Args:
        model: a model adapter (its image encoder is trained; its other parameters get no gradient).
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay (not on biases and norms).
        warmup_ratio: share of the steps spent warming up linearly.
        schedule: ``linear``, ``cosine`` or ``constant`` after warm-up.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.05,
        schedule: Literal["linear", "cosine", "constant"] = "cosine",
    ) -> None:
        super().__init__()
        self.model = model
        width = self._width()
        self.norm = nn.LayerNorm(width)
        self.heads = nn.ModuleDict({name: nn.Linear(width, len(c)) for name, c in ATTRIBUTE_CLASSES.items()})
        self.lr, self.weight_decay, self.warmup_ratio, self.schedule = lr, weight_decay, warmup_ratio, schedule

    def _width(self) -> int:
        cfg = self.model.model.config
        return cfg.vision_config.hidden_size if hasattr(cfg, "vision_config") else cfg.d_model

    def forward(self, pixel_values: Tensor) -> dict[str, Tensor]:
        """Logits per attribute, each (B, classes)."""
        pooled = self.norm(self.model.encode_image(pixel_values).mean(1))
        return {name: head(pooled) for name, head in self.heads.items()}

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self(batch["pixel_values"])
        losses = [F.cross_entropy(lg, batch["labels"][:, k]) for k, lg in enumerate(logits.values())]
        loss = torch.stack(losses).sum()
        bs = batch["labels"].shape[0]
        self.log("train/loss", loss, batch_size=bs, prog_bar=True)
        for (name, lg), k in zip(logits.items(), range(len(logits)), strict=True):
            acc = (lg.argmax(-1) == batch["labels"][:, k]).float().mean()
            self.log(f"train/{name}_acc", acc, batch_size=bs)
        return loss

    @torch.no_grad()
    def accuracy(self, batches: Any) -> dict[str, float]:
        """Accuracy per attribute over ``batches`` (eval mode)."""
        was = self.training
        self.eval()
        hits: dict[str, int] = dict.fromkeys(ATTRIBUTE_CLASSES, 0)
        total = 0
        for batch in batches:
            logits = self(batch["pixel_values"])
            for k, (name, lg) in enumerate(logits.items()):
                hits[name] += int((lg.argmax(-1) == batch["labels"][:, k]).sum())
            total += batch["labels"].shape[0]
        self.train(was)
        return {name: h / max(total, 1) for name, h in hits.items()}

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for n, p in self.named_parameters() if p.requires_grad and p.ndim >= 2 and "norm" not in n.lower()]
        ids = {id(p) for p in decay}
        groups = [
            {"params": decay, "weight_decay": self.weight_decay},
            {"params": [p for p in params if id(p) not in ids], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=self.lr)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(total, self.warmup_ratio, self.schedule))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
