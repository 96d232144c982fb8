"""``amad export CKPT DIR``: the deployable student as a Hugging Face ``save_pretrained`` directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from amad.models.io import load_checkpoint_model, save_pretrained


def export_checkpoint(ckpt: str | Path, out_dir: str | Path) -> Path:
    """Rebuild the trainable model of an amad checkpoint and ``save_pretrained`` it (with tokenizer).

    The teacher is not in the checkpoint and never exported; extra trainable parts of a method (an
    A2D aligner) are not part of the student and are not exported either.
    """
    return save_pretrained(load_checkpoint_model(ckpt), Path(out_dir))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="amad export", description=export_checkpoint.__doc__)
    parser.add_argument("ckpt", help="a .ckpt written by `amad fit` (FineTuneModule or DistillationModule)")
    parser.add_argument("out_dir", help="directory to write (save_pretrained layout + tokenizer)")
    ns = parser.parse_args(argv)
    out = export_checkpoint(ns.ckpt, ns.out_dir)
    print(f"exported {ns.ckpt} -> {out}")
    return 0
