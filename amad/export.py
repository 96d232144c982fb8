"""``amad export CKPT DIR``: the deployable student as a Hugging Face ``save_pretrained`` directory."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from amad.artefacts import fault_point, fsync_dir
from amad.models.io import ADAPTER_FILE, load_checkpoint_model, save_pretrained


def export_checkpoint(ckpt: str | Path, out_dir: str | Path) -> Path:
    """Rebuild the trainable model of an amad checkpoint and ``save_pretrained`` it (with tokenizer).

    The teacher is not in the checkpoint and never exported; extra trainable parts of a method (an
    A2D aligner) are not part of the student and are not exported either. The files are written under a
    temporary folder and moved in when complete (``amad_adapter.json``, which records the others' digests,
    last): an export that dies halfway leaves no half-written file, and a folder whose files disagree
    with ``amad_adapter.json`` is refused when loaded, naming the file. Other files in ``out_dir`` stay.
    """
    model = load_checkpoint_model(ckpt)  # checked (CRCs) before anything is written
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained(model, tmp)
    fault_point("export.move")
    if not out.exists():
        os.replace(tmp, out)
    else:  # the user's folder: replace our files one by one, never the folder (it may hold theirs)
        names = sorted(p.name for p in tmp.iterdir())
        for name in sorted(names, key=lambda n: n == ADAPTER_FILE):
            os.replace(tmp / name, out / name)
        tmp.rmdir()
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
