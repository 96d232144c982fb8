"""A comparison teacher's files: checked when read, written atomically, set aside when damaged.

* A shipped or user-given teacher (``teacher.path``) cannot be rebuilt by amad: a damaged one is an
  error naming the file (:func:`check_teacher_path`).
* A cached teacher (``$AMAD_CACHE/teachers/<name>-<fingerprint>/``) can: a damaged one is set aside
  (renamed ``*.corrupt-<time>``) with one warning line and trained again (:func:`cached_teacher`).
* A kept pre-training stage (``$AMAD_CACHE/teacher_stages/<key>/stage<i>.pt``) likewise: a damaged one
  is set aside and the recipe resumes from the stage before it (:func:`load_last_stage`).

``teacher.json`` records the size and SHA-256 of every other file of the folder (``files``); a record
without them (written before they were) is checked for structure only.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch

from amad.artefacts import (
    DamagedFile,
    atomic_write_json,
    check_zip,
    fault_point,
    folder_digests,
    fsync_dir,
    read_json,
    set_aside,
)

RECORD = "teacher.json"


def check_teacher_path(path: Path) -> dict[str, Any]:
    """Check a shipped or user-given teacher (folder or ``.ckpt``); returns its ``teacher.json`` (or {}).

    Raises:
        DamagedFile: naming the damaged file and what is wrong with it.
    """
    from amad.models.io import check_pretrained_dir

    if not path.is_dir():
        check_zip(path, "checkpoint (torch.save archive)")
        return {}
    record = read_json(path / RECORD) if (path / RECORD).is_file() else {}
    check_pretrained_dir(path)  # with the digests that teacher.json records
    return record


def cached_teacher(out: Path, log=print) -> dict[str, Any] | None:
    """The record of the cached teacher in ``out``, or None (not cached, or damaged and set aside)."""
    if not out.exists():
        return None
    try:
        if not (out / RECORD).is_file():
            raise DamagedFile(out / RECORD, "missing")
        return public_record(check_teacher_path(out))
    except DamagedFile as err:
        set_aside(out, str(err))
        return None


def public_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record without its file digests (they describe the folder, not the teacher's results)."""
    return {k: v for k, v in record.items() if k != "files"}


def publish_teacher(model: Any, out: Path, record: dict[str, Any], save: Any = None) -> None:
    """Write ``model`` and ``record`` as the cached teacher ``out``: built under a temporary name, the
    files' digests recorded in ``teacher.json``, then renamed (a half-written teacher is never cached).

    Args:
        save: ``save(model, folder)`` (default :func:`amad.models.io.save_pretrained`; a system
            comparison's teacher is saved as a plain transformers checkpoint).
    """
    from amad.models.io import save_pretrained

    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (save or save_pretrained)(model, tmp)
    atomic_write_json(tmp / RECORD, {**record, "files": folder_digests(tmp, skip=(RECORD,))})
    fault_point("teacher.publish")
    if out.exists():  # only a damaged entry (cached_teacher set it aside) or another process's: keep it
        set_aside(out, "replaced by a freshly trained teacher")
    os.replace(tmp, out)  # atomic: a half-trained or half-written teacher is never "cached"
    fsync_dir(out.parent)


def save_stage(resume_dir: Path, index: int, payload: dict[str, Any]) -> Path:
    """Keep the weights and records after pre-training stage ``index`` (1-based) as ``stage<index>.pt``."""
    resume_dir.mkdir(parents=True, exist_ok=True)
    path = resume_dir / f"stage{index}.pt"
    tmp = resume_dir / f".stage{index}.pt.{os.getpid()}.tmp"
    torch.save(payload, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(resume_dir)
    fault_point("teacher.stage_kept")
    return path


def load_last_stage(resume_dir: Path | None, model: Any) -> tuple[dict[str, Any], Path] | None:
    """Load the last undamaged stage kept in ``resume_dir`` into ``model``; (its payload, its file) or None.

    A damaged stage file (cut short, altered bytes, weights of another shape) is set aside with one
    warning line and the one before it is tried: the recipe retrains only what was lost.
    """
    if resume_dir is None or not resume_dir.is_dir():
        return None
    kept = sorted(resume_dir.glob("stage*.pt"), key=lambda p: int(p.stem[5:]) if p.stem[5:].isdigit() else -1)
    # a failed load_state_dict may have copied some tensors: with no stage left, the recipe must start
    # from the weights it was seeded with
    initial = {k: v.clone() for k, v in model.state_dict().items()} if kept else {}
    for path in reversed(kept):
        try:
            check_zip(path)
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state["state_dict"])
        except DamagedFile as err:
            set_aside(path, err.problem)
            continue
        except (RuntimeError, KeyError, TypeError, OSError, EOFError, ValueError) as err:
            set_aside(path, f"{type(err).__name__}: {err}".splitlines()[0][:200])
            continue
        return state, path
    if kept:
        model.load_state_dict(initial)
    return None


def fault_callbacks() -> list[Any]:
    """A callback reaching :func:`~amad.artefacts.fault_point` ``teacher.train_step`` /
    ``student.train_step`` after each training step and ``eval_batch`` after each evaluation batch,
    when ``$AMAD_FAULT`` is set (the kill-anywhere tests); none otherwise."""
    if not os.environ.get("AMAD_FAULT"):
        return []
    from lightning.pytorch.callbacks import Callback

    class FaultPoints(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args: Any) -> None:
            role = "student" if hasattr(pl_module, "distillation") else "teacher"
            fault_point(f"{role}.train_step")

        def on_test_batch_end(self, *args: Any) -> None:
            fault_point("eval_batch")

        def on_validation_batch_end(self, *args: Any) -> None:
            fault_point("eval_batch")

    return [FaultPoints()]


def quiet_trainer(max_steps: int = -1, precision: str = "32-true", callbacks=(), logger: Any = False) -> L.Trainer:
    """A Trainer for the jobs of a comparison: one device, no validation loop, no checkpoints, no bar."""
    return L.Trainer(
        max_steps=max_steps,
        logger=logger,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        accelerator="auto",
        devices=1,
        precision=precision,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
        callbacks=list(callbacks) + fault_callbacks(),
    )
