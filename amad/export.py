"""``amad export CKPT DIR``: the deployable student as a Hugging Face ``save_pretrained`` directory."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from amad.artefacts import fault_point, fsync_dir
from amad.models.io import load_checkpoint_model, save_pretrained


def export_checkpoint(ckpt: str | Path, out_dir: str | Path) -> Path:
    """Rebuild the trainable model of an amad checkpoint and ``save_pretrained`` it (with tokenizer).

    The teacher is not in the checkpoint and never exported; extra trainable parts of a method (an
    A2D aligner) are not part of the student and are not exported either. The folder is written under a
    temporary name and renamed when complete: an export that dies halfway leaves no half folder (and an
    existing ``out_dir`` is replaced only by a complete one).
    """
    model = load_checkpoint_model(ckpt)  # checked (CRCs) before anything is written
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained(model, tmp)
    fault_point("export.rename")
    if out.exists():  # rename the old one away first: a crash in between leaves both, never neither
        old = out.with_name(f".{out.name}.{os.getpid()}.old")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    fsync_dir(out.parent)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="amad export", description=export_checkpoint.__doc__)
    parser.add_argument("ckpt", help="a .ckpt written by `amad fit` (FineTuneModule or DistillationModule)")
    parser.add_argument("out_dir", help="directory to write (save_pretrained layout + tokenizer)")
    ns = parser.parse_args(argv)
    out = export_checkpoint(ns.ckpt, ns.out_dir)
    print(f"exported {ns.ckpt} -> {out}")
    return 0
