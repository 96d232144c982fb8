"""Where amad keeps what it makes once and reuses: trained teachers, generated scene pools."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$AMAD_CACHE``, else ``~/.cache/amad``."""
    return Path(os.environ.get("AMAD_CACHE", Path.home() / ".cache" / "amad"))
