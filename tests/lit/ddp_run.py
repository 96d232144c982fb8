"""DDP check script (run as a subprocess by tests/lit/test_ddp.py; pytest must not launch DDP itself).

Usage: python ddp_run.py OUT.json DEVICES
Distils a tiny BLIP-VQA student for a few steps on a fixed example-level dataset with a fixed global
batch of 8 (per-device batch 8 / DEVICES), then tests it, and writes the final training loss, a
checksum of the student weights, the test accuracy and how many test examples the metric counted.
"""

from __future__ import annotations

import json
import sys

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from amad.bench._batches import random_batch
from amad.lit import DistillationModule
from amad.losses import AMAD
from amad.models import build_model

N_TRAIN, N_TEST, GLOBAL_BATCH, STEPS = 32, 10, 8, 3


class Examples(Dataset):
    def __init__(self, batch):
        self.batch, self.n = batch, len(batch["ids"])

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.batch.items()}


def collate(items):
    out = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        out[k] = torch.stack(vals) if torch.is_tensor(vals[0]) else vals
    return out


class DM(L.LightningDataModule):
    def __init__(self, teacher, per_device):
        super().__init__()
        self.task, self.tokenizer, self.per_device = "vqa", teacher.tokenizer, per_device
        train = random_batch("blip-vqa", N_TRAIN, seed=1, tokenizer=self.tokenizer)
        test = random_batch("blip-vqa", N_TEST, seed=2, tokenizer=self.tokenizer)
        test["ids"] = [f"q{i}" for i in range(N_TEST)]
        # References: the (frozen) teacher's own answer for the first half, a wrong one for the rest,
        # so the teacher scores exactly 0.5 -- and 7/12 if the sampler's padded duplicates counted.
        with torch.no_grad():
            answers = teacher.eval().generate(test, max_new_tokens=4)
        test["references"] = [[a] if i < N_TEST // 2 else ["zzz-wrong"] for i, a in enumerate(answers)]
        self.train_ds, self.test_ds = Examples(train), Examples(test)

    def train_dataloader(self):
        return DataLoader(self.train_ds, batch_size=self.per_device, shuffle=False, collate_fn=collate)

    def test_dataloader(self):
        # 10 examples over 2 ranks with batch 4: the sampler pads with duplicates; metrics must dedupe.
        return DataLoader(self.test_ds, batch_size=4, shuffle=False, collate_fn=collate)


def main(out: str, devices: int) -> None:
    torch.manual_seed(0)
    teacher = build_model("blip-vqa", preset="tiny", dropout=0.0, attention_dropout=0.0)
    module = DistillationModule(
        teacher=teacher,
        student={"num_heads": 2, "num_layers": 1, "init": "teacher"},
        task="vqa",
        attention=AMAD(),
        lr=1e-3,
        warmup_ratio=0.0,
        schedule="constant",
    )
    dm = DM(teacher, GLOBAL_BATCH // devices)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm)
    module.eval()
    with torch.no_grad():  # the objective on the whole training set, with the final weights
        loss = float(module.distillation_losses(dm.train_ds.batch)["loss"])
    from amad.lit import FineTuneModule

    res = trainer.test(
        FineTuneModule(model=module.teacher.model, task="vqa", max_new_tokens=4), datamodule=dm, verbose=False
    )[0]
    checksum = float(sum(p.double().sum() for p in module.student.parameters()))
    if trainer.global_rank == 0:
        with open(out, "w") as fh:
            json.dump(
                {
                    "loss": loss,
                    "checksum": checksum,
                    "test": {k: float(v) for k, v in res.items()},
                    "world_size": trainer.world_size,
                },
                fh,
            )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
