"""HeadAlignmentCallback: how the teacher's heads map onto the student's, as heatmaps and numbers.

On one fixed validation batch (the first one seen, kept for the whole run so epochs compare), it asks
the system for the teacher→student weights of every distilled (site, layer) pair — AMAD's a_ij
(Eq. 3, rows sum to 1 over student heads), or the one-to-one baseline's fixed diagonal assignment
for contrast — and writes:

* ``<run dir>/head_alignment/epoch<E>/<site>.png``: one heatmap panel per distilled layer;
* ``<run dir>/head_alignment/epoch<E>/weights.json``: the raw matrices;
* to W&B (when the logger is a ``WandbLogger``): the images and a table of the matrices.

It is rank-zero only and never changes module modes (the system's ``head_alignment`` restores them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from amad.artefacts import atomic_write_json


def plot_head_alignment(weights: dict[str, Tensor], out_dir: str | Path, title: str = "") -> list[Path]:
    """Write one PNG per site (panels = layers) of (Ht, Hs) weight matrices.

    Args:
        weights: ``"<site>/s<l>-t<m>"`` → (Ht, Hs) tensor (rows sum to 1).
        out_dir: folder to write ``<site>.png`` into.
        title: figure title prefix (e.g. the method and epoch).

    Returns:
        The written PNG paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_site: dict[str, list[tuple[str, Tensor]]] = {}
    for key, w in weights.items():
        site, layer = key.split("/", 1)
        by_site.setdefault(site, []).append((layer, w))
    paths = []
    for site, panels in by_site.items():
        fig, axes = plt.subplots(
            1, len(panels), figsize=(2.8 * len(panels) + 0.8, 3.4), squeeze=False, layout="constrained"
        )
        # AMAD's weights are a softmax of cosines in [0, 1]: near-uniform rows are common, so the
        # colour scale spans the data (not [0, 1]) and small matrices get their values printed.
        vmax = max(float(w.max()) for _, w in panels)
        vmin = min(float(w.min()) for _, w in panels)
        for k, (ax, (layer, w)) in enumerate(zip(axes[0], panels, strict=True)):
            im = ax.imshow(
                w.numpy(), vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1e-6, cmap="viridis", aspect="auto"
            )
            ax.set_title(layer, fontsize=9)
            ax.set_xlabel("student head j")
            if k == 0:
                ax.set_ylabel("teacher head i")
            ax.set_xticks(range(w.shape[1]))
            ax.set_yticks(range(w.shape[0]))
            if w.numel() <= 64:
                for i, row in enumerate(w.tolist()):
                    for j, v in enumerate(row):
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w")
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="a_ij (rows sum to 1)")
        fig.suptitle(f"{title} {site}".strip(), fontsize=10)
        path = out_dir / f"{site}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


class HeadAlignmentCallback(L.Callback):
    """Log the teacher→student head weight matrices on a fixed validation batch.

    Args:
        every_n_epochs: write on validation ends of every n-th epoch (and always after the last).
        out_dir: where to write; default ``<trainer.log_dir or default_root_dir>/head_alignment``.
    """

    def __init__(self, every_n_epochs: int = 1, out_dir: str | None = None) -> None:
        super().__init__()
        self.every_n_epochs = every_n_epochs
        self.out_dir = out_dir
        self._batch: dict[str, Any] | None = None
        self.last_weights: dict[str, Tensor] = {}
        self.last_dir: Path | None = None

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._batch is None and batch_idx == 0:
            self._batch = batch  # fixed for the whole run (same examples at every epoch)

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._batch is None or trainer.sanity_checking or not hasattr(pl_module, "head_alignment"):
            return
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if epoch % self.every_n_epochs and not last:
            return
        weights = pl_module.head_alignment(self._batch)
        if not weights:
            return
        root = Path(self.out_dir or trainer.log_dir or trainer.default_root_dir)
        if self.out_dir is None:
            root = root / "head_alignment"
        out = root / f"epoch{epoch}"
        method = getattr(getattr(pl_module, "attn", None), "method", "")
        paths = plot_head_alignment(weights, out, title=f"{method} epoch {epoch}")
        (out / "weights.json").write_text(json.dumps({k: v.tolist() for k, v in weights.items()}))
        self.last_weights, self.last_dir = weights, out
        self._log_wandb(trainer, weights, paths)

    @staticmethod
    def _log_wandb(trainer: L.Trainer, weights: dict[str, Tensor], paths: list[Path]) -> None:
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(
                    "head_alignment/maps",
                    [str(p) for p in paths],
                    caption=[p.stem for p in paths],
                    step=trainer.global_step,
                )
                rows = [
                    [k, i, j, float(w[i, j])]
                    for k, w in weights.items()
                    for i in range(w.shape[0])
                    for j in range(w.shape[1])
                ]
                logger.log_table(
                    "head_alignment/weights",
                    columns=["pair", "teacher_head", "student_head", "a_ij"],
                    data=rows,
                    step=trainer.global_step,
                )


def rows_sum_to_one(weights: dict[str, Tensor], atol: float = 1e-4) -> bool:
    """True when every row of every matrix sums to 1 (a check used by tests and the compare job)."""
    return all(torch.allclose(w.sum(-1), torch.ones(w.shape[0]), atol=atol) for w in weights.values())


def weight_spread(weights: dict[str, Tensor]) -> dict[str, float]:
    """How far the a_ij are from uniform, over every (site, layer) matrix: the smallest and largest
    weight, and the mean of each row's max minus min (0 for uniform rows; 1 for one-hot rows)."""
    rows = torch.cat([w.reshape(-1, w.shape[-1]) for w in weights.values()])
    return {
        "min": float(rows.min()),
        "max": float(rows.max()),
        "mean_row_range": float((rows.max(-1).values - rows.min(-1).values).mean()),
        "uniform": 1.0 / rows.shape[-1],
    }


def head_cosines(maps: Tensor, query_mask: Tensor | None) -> Tensor | None:
    """The mean cosine between the flattened maps of two different heads of one layer, over every head
    pair and example (padded query rows zeroed first): 1 when every head attends alike. None for one head.

    Args:
        maps: (B, H, Q, K) attention maps of one layer.
        query_mask: (B, Q), 1 on valid query rows; None when nothing is padded.
    """
    if maps.shape[1] < 2:
        return None
    if query_mask is not None:
        maps = maps * query_mask[:, None, :, None]
    flat = torch.nn.functional.normalize(maps.flatten(2).float(), dim=-1)  # (B, H, Q*K)
    cos = flat @ flat.transpose(1, 2)  # (B, H, H)
    h = cos.shape[-1]
    return cos[:, ~torch.eye(h, dtype=torch.bool, device=cos.device)].mean()


def layer_head_cosines(out: Any, sites: tuple[str, ...] | list[str]) -> dict[str, list[float | None]]:
    """site -> per layer :func:`head_cosines` of a model's output (None for a layer not captured or of one
    head)."""
    masks = getattr(out, "query_masks", None) or {}
    result = {}
    for site in sites:
        cos = [None if m is None else head_cosines(m, masks.get(site)) for m in out.attentions[site]]
        result[site] = [None if c is None else float(c) for c in cos]
    return result


def head_diversity(out: Any, sites: tuple[str, ...] | list[str]) -> float | None:
    """1 - the mean of :func:`head_cosines` over every given site and layer: 0 when every head attends
    alike. None for one-head models (no pair to compare)."""
    cosines = [c for per_layer in layer_head_cosines(out, sites).values() for c in per_layer if c is not None]
    return None if not cosines else 1.0 - sum(cosines) / len(cosines)


@torch.no_grad()
def student_head_diversity(
    pl_module: L.LightningModule, batch: dict[str, Any], sites: tuple[str, ...] | None = None
) -> float | None:
    """The student's :func:`head_diversity` on ``batch`` over ``sites`` (default: the distilled ones): 1 -
    the mean cosine between the flattened maps of two heads, over every site, layer, head pair and
    example (valid query rows only). None for one-head students or when there is no site."""
    student = pl_module.student
    if sites is None:
        sites = pl_module.attn.capture_sites()[0]
    if not sites:
        return None
    was = student.training
    student.eval()
    try:
        out = student(batch, sites=sites)
    finally:
        student.train(was)
    return head_diversity(out, sites)


class AlignmentSnapshots(L.Callback):
    """The head weights at the first, middle and last training step of one run, on a fixed test batch.

    Writes ``<out_dir>/step<k>/<site>.png`` and ``<out_dir>/snapshots.json`` (every matrix and its
    :func:`weight_spread` per step): how AMAD's a_ij move during training.

    Args:
        datamodule: the run's DataModule (its first test batch is the fixed batch).
        out_dir: where to write.
        batch_size: examples of the fixed batch.
    """

    def __init__(self, datamodule: Any, out_dir: str | Path, batch_size: int = 64) -> None:
        super().__init__()
        self.datamodule, self.out_dir, self.batch_size = datamodule, Path(out_dir), batch_size
        self.snapshots: dict[int, dict[str, Any]] = {}
        self._batch: dict[str, Any] | None = None

    def _take(self, pl_module: L.LightningModule, step: int) -> None:
        if self._batch is None:
            self.datamodule.setup("test")
            batch = next(iter(self.datamodule.test_dataloader()))
            self._batch = {k: v[: self.batch_size] for k, v in batch.items()}
        batch = {k: v.to(pl_module.device) if isinstance(v, Tensor) else v for k, v in self._batch.items()}
        weights = pl_module.head_alignment(batch)
        if not weights:
            return
        plot_head_alignment(weights, self.out_dir / f"step{step}", title=f"step {step}")
        self.snapshots[step] = {
            "spread": weight_spread(weights),
            "head_diversity": student_head_diversity(pl_module, batch),
            "weights": {k: v.tolist() for k, v in weights.items()},
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out_dir / "snapshots.json", self.snapshots)  # read back by `amad sweep`

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take(pl_module, 0)

    @rank_zero_only
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step, total = trainer.global_step, trainer.max_steps
        if step in (total // 2, total):
            self._take(pl_module, step)
