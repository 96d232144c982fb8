"""YAML configs with inheritance: ``base:`` lists files (relative to the config) deep-merged first.

LightningCLI/jsonargparse has no "extends"; experiments share their data, trainer and method
settings through base files instead of copy-paste. ``amad fit --config FILE`` resolves the chain
and hands LightningCLI one merged file.

Inside :func:`method_subclasses` jsonargparse accepts the subclasses of
:class:`amad.losses.AttentionMethod` (frozen dataclasses) for an ``attention:`` entry, which it does
not do for dataclasses by default: ``attention: {class_path: AMAD, init_args: {variant: l2}}``.
Importing this module changes no jsonargparse setting.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import _common as jsonargparse_settings
from jsonargparse import set_parsing_settings

from amad.losses.methods import AttentionMethod

BASE_KEY = "base"


@contextmanager
def method_subclasses() -> Iterator[None]:
    """Let jsonargparse parse an ``AttentionMethod`` entry as a choice of subclass, inside the block.

    jsonargparse keeps this setting process-wide and offers no way to undo it, so the context removes
    the type from jsonargparse's set on exit (unless it was already there on entry): a library user's
    own parsers are not changed by amad. :func:`amad.lightning_cli.build_cli` runs inside it.
    """
    enabled = jsonargparse_settings.subclasses_enabled_types
    added = AttentionMethod not in enabled
    set_parsing_settings(subclasses_enabled=[AttentionMethod])
    try:
        yield
    finally:
        if added:
            enabled.discard(AttentionMethod)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``: dicts merge recursively, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load a YAML config, resolving its ``base:`` chain.

    Raises:
        FileNotFoundError: the file (or one of its bases) does not exist; names the referencing file.
        ValueError: a cycle in ``base:``, a file that is not valid UTF-8 YAML or not a mapping.
    """
    path = Path(path).resolve()
    if path in _seen:
        raise ValueError(f"config inheritance cycle: {' -> '.join(map(str, (*_seen, path)))}")
    if not path.is_file():
        ref = f" (referenced from {_seen[-1]})" if _seen else ""
        raise FileNotFoundError(f"config file {path} does not exist{ref}")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:  # name the file: YAML's own message does not
        problem = " ".join(str(err).split())
        raise ValueError(f"config {path} is not valid YAML ({problem})") from err
    if not isinstance(data, dict):
        raise ValueError(f"config {path} must be a YAML mapping, got {type(data).__name__}")
    bases = data.pop(BASE_KEY, []) or []
    merged: dict[str, Any] = {}
    for b in [bases] if isinstance(bases, str) else bases:
        merged = deep_merge(merged, load_config(path.parent / b, (*_seen, path)))
    return deep_merge(merged, data)
