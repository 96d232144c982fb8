"""Train a comparison's teacher once, and reuse it: cached by a fingerprint of its config and data.

Lookup order: ``teacher.path`` (a shipped or user-given ``save_pretrained`` dir / ``.ckpt``; a shipped
one carries ``teacher.json`` and is used only while its fingerprint matches the config's recipe and
data), then ``<cache>/teachers/<name>-<fingerprint>/``; otherwise the teacher is fine-tuned with
:class:`~amad.lit.FineTuneModule` and written there (``save_pretrained`` layout plus
``teacher.json`` with its config, metrics and training time). The cache root is ``$AMAD_CACHE`` or
``~/.cache/amad``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from amad.compare.config import fingerprint

TEACHER_KEYS = (
    "model",
    "max_steps",
    "lr",
    "lr_scale",
    "weight_decay",
    "warmup_ratio",
    "schedule",
    "seed",
    "precision",
    "max_new_tokens",
    "data",
)


def cache_root() -> Path:
    return Path(os.environ.get("AMAD_CACHE", Path.home() / ".cache" / "amad"))


def teacher_fingerprint(cfg: dict[str, Any], data_facts: dict[str, Any]) -> str:
    """Hash of the teacher's recipe, its data config and the data's own facts (source, sizes, version)."""
    t = cfg["teacher"]
    return fingerprint(
        {
            "teacher": {k: t.get(k) for k in TEACHER_KEYS if k != "data"},
            "data": teacher_datamodule_config(cfg),
            "data_facts": data_facts,
        }
    )


def teacher_datamodule_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The teacher trains on the full data unless its own ``teacher.data`` overrides (e.g. fraction)."""
    from amad.config import deep_merge

    return deep_merge(cfg["data"], cfg["teacher"].get("data", {}) or {})


def ensure_teacher(cfg: dict[str, Any], make_datamodule, log=print) -> tuple[Path, dict[str, Any]]:
    """Return (teacher dir or file, teacher record with ``metrics``, ``train_time_s``, ``fingerprint``).

    Args:
        cfg: the loaded comparison config.
        make_datamodule: callable(data_config) -> LightningDataModule.
        log: progress printer.
    """
    from amad.lit import FineTuneModule

    t = cfg["teacher"]
    dm_cfg = teacher_datamodule_config(cfg)
    dm = make_datamodule(dm_cfg)
    facts = getattr(dm, "metadata", {})
    fp = teacher_fingerprint(cfg, facts)
    if t.get("path"):
        path = Path(t["path"])
        if not path.exists():
            raise FileNotFoundError(
                f"teacher.path {path} does not exist (expected a save_pretrained dir "
                "or .ckpt); remove teacher.path to train the teacher instead"
            )
        meta = path / "teacher.json" if path.is_dir() else None
        record = json.loads(meta.read_text()) if meta and meta.is_file() else {}
        if record.get("fingerprint", fp) == fp:  # a user's teacher has no record: trust the path
            log(f"teacher: using {path}")
            return path, {**record, "source": str(path)}
        log(
            f"teacher: {path} was trained with another recipe or data (fingerprint "
            f"{record['fingerprint']} != {fp}); training a fresh one"
        )
    out = cache_root() / "teachers" / f"{cfg['name']}-{fp}"
    meta = out / "teacher.json"
    if meta.is_file():
        log(f"teacher: reusing {out}")
        return out, {**json.loads(meta.read_text()), "source": str(out)}
    log(f"teacher: training {t['model']} for {t['max_steps']} steps (cached as {out})")
    L.seed_everything(int(t.get("seed", 0)), workers=True, verbose=False)
    module = FineTuneModule(
        model=dict(t["model"]),
        vocab_size=dm.vocab_size,
        task=dm.task,
        lr=float(t.get("lr", 1e-3)),
        weight_decay=float(t.get("weight_decay", 0.01)),
        warmup_ratio=float(t.get("warmup_ratio", 0.05)),
        schedule=t.get("schedule", "linear"),
        max_new_tokens=int(t.get("max_new_tokens", 8)),
        lr_scale=t.get("lr_scale"),
    )
    module.model.tokenizer = dm.tokenizer
    trainer = L.Trainer(
        max_steps=int(t["max_steps"]),
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        accelerator="auto",
        devices=1,
        precision=t.get("precision", "32-true"),
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=False,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    train_time = time.perf_counter() - start
    metrics = {
        k.removeprefix("test/"): float(v) for k, v in trainer.test(module, datamodule=dm, verbose=False)[0].items()
    }
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    module.model.save_pretrained(tmp)
    record = {
        "fingerprint": fp,
        "config": {k: t.get(k) for k in TEACHER_KEYS},
        "metrics": metrics,
        "train_time_s": round(train_time, 1),
        "steps": int(t["max_steps"]),
        "command": " ".join(["amad", *sys.argv[1:]]) if sys.argv[0].endswith("amad") else None,
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d"),
    }
    (tmp / "teacher.json").write_text(json.dumps(record, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # atomic: a half-trained or half-written teacher is never "cached"
    log(f"teacher: {metrics} in {train_time:.0f}s")
    return out, {**record, "source": str(out)}
