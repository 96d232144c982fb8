"""The console of a long ``amad compare``: our progress lines on the terminal, the libraries' output in
a log file per run.

Each run of a comparison starts W&B (a banner and a summary of ~30 lines), Lightning and transformers,
which print warnings and tips. :meth:`Console.quiet` sends the process's file descriptors 1 and 2 to a
log file for the duration of a run — everything lands there, C-level and subprocess output included —
while :meth:`Console.say` still writes to the terminal.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Console:
    """Progress lines on the terminal, library output in per-run log files.

    Args:
        enabled: False leaves every output where it is (``--verbose``, tests); lines are still prefixed.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        #: written before every line (``amad sweep``: which cell the run belongs to)
        self.prefix = ""
        self._terminal: int | None = None

    def say(self, line: str) -> None:
        """Write one line to the terminal, also while a run's output goes to its log file."""
        line = self.prefix + line
        if self._terminal is None:
            print(line, flush=True)
        else:
            os.write(self._terminal, (line + "\n").encode())

    @contextmanager
    def quiet(self, log_path: Path) -> Iterator[None]:
        """Send stdout and stderr (file descriptors 1 and 2) to ``log_path`` (appended) meanwhile."""
        if not self.enabled:
            yield
            return
        log_path.parent.mkdir(parents=True, exist_ok=True)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        saved_out, saved_err = os.dup(1), os.dup(2)
        with open(log_path, "ab") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            self._terminal = saved_out
            try:
                yield
            finally:
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
                os.dup2(saved_out, 1)
                os.dup2(saved_err, 2)
                os.close(saved_out)
                os.close(saved_err)
                self._terminal = None
