"""Fault injection for the artefact tests: damage a file, or make a folder read-only.

We run as root, and chmod does not stop root: a read-only folder is simulated by making ``open`` (for
writing), ``os.open``, ``os.replace``, ``os.rename`` and ``os.mkdir`` raise ``PermissionError`` for paths
inside it — what a read-only mount or a non-root user would see.
"""

from __future__ import annotations

import builtins
import os
from pathlib import Path

FAULTS = ("truncate", "flip", "delete")


def damage(path: Path, fault: str) -> None:
    """``truncate``: cut to half its size; ``flip``: invert one byte in the middle; ``delete``."""
    if fault == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif fault == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif fault == "delete":
        path.unlink()
    else:
        raise ValueError(fault)


def read_only(monkeypatch, folder: Path) -> None:
    """Simulate a read-only ``folder`` for the rest of the test (see the module docstring)."""
    root = os.path.abspath(folder)

    def inside(p) -> bool:
        return isinstance(p, (str, os.PathLike)) and os.path.abspath(os.fspath(p)).startswith(root)

    def refuse(p):
        raise PermissionError(13, "Permission denied (read-only folder, simulated)", os.fspath(p))

    real_open, real_os_open, real_replace, real_rename, real_mkdir = (
        builtins.open,
        os.open,
        os.replace,
        os.rename,
        os.mkdir,
    )

    def fake_open(file, mode="r", *args, **kwargs):
        if inside(file) and any(c in mode for c in "wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_move(real):
        def move(src, dst, *args, **kwargs):
            if inside(src) or inside(dst):
                refuse(src)
            return real(src, dst, *args, **kwargs)

        return move

    def fake_mkdir(path, *args, **kwargs):
        if inside(path):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "replace", fake_move(real_replace))
    monkeypatch.setattr(os, "rename", fake_move(real_rename))
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
