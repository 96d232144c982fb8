"""The files amad writes and reads back: atomic writes, checksums, checks on read, setting aside, locks.

Every artefact amad reads (docs/reliability.md lists them) goes through these helpers:

* written atomically: to a temporary name in the same folder, flushed to disk, then renamed
  (:func:`atomic_write_bytes`, :func:`atomic_write_json`); a folder is built under a temporary name and
  renamed last. A crash leaves the old file or the new one, never half of one.
* checked when read: JSON parses (:func:`read_json`), a ``torch.save`` archive passes its CRC checks
  (:func:`check_zip`), a safetensors header is complete (:func:`check_safetensors`), and where a size
  and SHA-256 were recorded (:func:`file_digest`) they match (:func:`check_digests`). A failure raises
  :class:`DamagedFile`, which names the file and what is wrong with it.
* what amad can rebuild is set aside (:func:`set_aside`: renamed ``<name>.corrupt-<time>``, never
  deleted) with one warning line, then rebuilt; what it cannot rebuild ends in one ``amad: error:`` line
  (:class:`DamagedFile` is a ``ValueError``, which the ``amad`` command prints that way).
* written by one process at a time (:class:`FileLock`: a POSIX lock the kernel drops when its owner
  dies, so a killed run never leaves a stale lock).

Fault injection for the tests: ``AMAD_FAULT=<point>[@<n>]`` ends the process (``os._exit(137)``, as a
SIGKILL would) the n-th time (default: first) it reaches :func:`fault_point` ``<point>``.

This module imports nothing heavy: a lock holder in a test subprocess starts in well under a second.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

FAULT_ENV = "AMAD_FAULT"
_fault_counts: dict[str, int] = {}


class DamagedFile(ValueError):
    """A file amad reads is damaged (cut short, altered, unreadable, missing from its folder).

    Args:
        path: the file (or folder).
        problem: what is wrong with it, e.g. ``not valid JSON (line 3 column 2)``.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class Locked(OSError):
    """Another process holds the lock: the message names it (pid) and the lock file."""


def warn(message: str) -> None:
    """One ``amad: warning:`` line on stderr."""
    print(f"amad: warning: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- fault injection
def fault_point(name: str) -> None:
    """End the process here, as a SIGKILL would, when ``$AMAD_FAULT`` names this point (tests only)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point != name:
        return
    _fault_counts[name] = _fault_counts.get(name, 0) + 1
    if _fault_counts[name] == int(nth or 1):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(137)


# ----------------------------------------------------------------------------- writing
def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync'd, then renamed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        fault_point(f"write:{path.name}")  # the process dies with the new file written, not yet renamed
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, value: Any) -> Path:
    """:func:`atomic_write_bytes` for a JSON document (indented, as every amad record is)."""
    return atomic_write_text(path, json.dumps(value, indent=1))


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every filesystem lets a folder be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- checking
def file_digest(path: str | Path) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of a file (about 1 s per GB)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": h.hexdigest()}


def folder_digests(folder: str | Path, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """:func:`file_digest` of every file directly in ``folder`` (sorted by name) but ``skip``."""
    folder = Path(folder)
    return {p.name: file_digest(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name not in skip}


def check_digests(folder: str | Path, digests: dict[str, dict[str, Any]], where: str) -> None:
    """Raise :class:`DamagedFile` on the first file of ``digests`` missing from ``folder`` or differing.

    Args:
        where: the record the digests come from, for the message (e.g. ``teacher.json``).
    """
    folder = Path(folder)
    for name, want in sorted(digests.items()):
        path = folder / name
        if not path.is_file():
            raise DamagedFile(path, f"missing (listed in {where})")
        size = path.stat().st_size
        if size != want.get("size", size):
            raise DamagedFile(path, f"{size} bytes, {want['size']} recorded in {where} (cut short or replaced)")
        if "sha256" in want and file_digest(path)["sha256"] != want["sha256"]:
            raise DamagedFile(path, f"its SHA-256 differs from the one recorded in {where} (bytes altered)")


def read_json(path: str | Path, kind: type = dict) -> Any:
    """Parse a JSON file amad wrote; :class:`DamagedFile` (naming it) if it is not valid JSON of ``kind``.

    Raises:
        FileNotFoundError: no file at ``path`` (callers decide whether that is damage).
    """
    path = Path(path)
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise
    except UnicodeDecodeError as err:
        raise DamagedFile(path, f"not UTF-8 text (byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise DamagedFile(path, f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from err
    except OSError as err:
        raise DamagedFile(path, f"cannot be read ({err.strerror or err})") from err
    if not isinstance(value, kind):
        raise DamagedFile(path, f"holds a JSON {type(value).__name__}, expected a {kind.__name__}")
    return value


def check_zip(path: str | Path, what: str = "torch.save archive") -> None:
    """Check a zip archive (``torch.save``, ``.npz``) end to end: complete, and every member's CRC matches.

    ``torch.load`` itself does not check CRCs: an altered byte in a tensor loads as a wrong weight.
    """
    path = Path(path)
    try:
        if not zipfile.is_zipfile(path):
            raise DamagedFile(path, f"not a readable {what}: incomplete (cut short) or not such a file")
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except DamagedFile:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as err:
        raise DamagedFile(path, f"not a readable {what} ({type(err).__name__}: {err})") from err
    if bad is not None:
        raise DamagedFile(path, f"member {bad} fails its CRC check (bytes altered)")


def check_safetensors(path: str | Path) -> None:
    """Check a safetensors file's header and that the file covers every tensor it declares.

    Altered bytes inside tensor data pass this check; a recorded SHA-256 (:func:`check_digests`) catches them.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            f.keys()
    except Exception as err:  # SafetensorError, OSError: the format has no other exception types
        raise DamagedFile(path, f"not a readable safetensors file ({err})") from err


# ----------------------------------------------------------------------------- damage
def set_aside(path: str | Path, problem: str, log: Callable[[str], None] | None = None) -> Path:
    """Rename a damaged, rebuildable artefact to ``<name>.corrupt-<time>`` (kept for a post-mortem, never
    deleted) and say so in one warning line; returns the new path."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    k = 1
    while target.exists():
        k += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{k}")
    os.replace(path, target)
    (log or warn)(f"{path} is damaged ({problem}); set aside as {target.name}, rebuilding it")
    return target


# ----------------------------------------------------------------------------- locks
class FileLock:
    """An exclusive lock on ``path`` (created if needed) holding the owner's pid.

    A POSIX record lock: the kernel releases it when the owner exits or is killed, so there are no stale
    locks to clean up; it is per process (a child process does not inherit it).

    Args:
        path: the lock file.
        what: what the lock protects, for messages (e.g. ``the comparison output runs/demo``).
        wait: when another process holds it: True waits (one line says for whom), False raises :class:`Locked`.
    """

    def __init__(self, path: str | Path, what: str, wait: bool = False) -> None:
        self.path, self.what, self.wait = Path(path), what, wait
        self._fd: int | None = None

    def __enter__(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                if not self.wait:
                    raise Locked(
                        f"{self.what} is in use by another amad process (pid {owner}; lock {self.path}): "
                        "wait for it to finish, or write elsewhere"
                    ) from None
                warn(f"waiting for amad process {owner}, which holds {self.path} ({self.what})")
                fcntl.lockf(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock; the file stays (removing it would race a waiter)
            self._fd = None
