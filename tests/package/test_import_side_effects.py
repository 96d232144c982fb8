"""Importing ``amad`` (and every one of its modules) changes nothing outside it.

The process-wide settings amad needs are made where they are needed, on purpose (docs/architecture.md,
"Global state"): the ``amad`` command sets the environment defaults, the Lightning CLI enters the
jsonargparse and checkpoint contexts, an adapter registers or patches what its model runs. A bare
import must not: a library user's transformers, warnings, torch serialization, jsonargparse and
environment stay as they were.

The check runs in a fresh interpreter. It first imports every third-party module amad's files import
(their own import-time effects are theirs, not amad's), snapshots the global state, imports every amad
module, and snapshots again.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
PACKAGE = ROOT / "amad"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _third_party(paths: list[Path]) -> list[tuple[str, tuple[str, ...]]]:
    """(module, names) of every non-amad ``import`` / ``from ... import`` in amad's files."""
    found: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.setdefault(alias.name, set())
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.setdefault(node.module, set()).update(a.name for a in node.names)
    return sorted((m, tuple(sorted(n))) for m, n in found.items() if m.split(".")[0] not in ("amad", "__future__"))


SCRIPT = r"""
import importlib, json, os, sys, warnings

PRELOAD, MODULES = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for module, names in PRELOAD:
    try:
        mod = importlib.import_module(module)
        for name in names:
            getattr(mod, name, None)  # resolves lazy attributes (transformers) the way `from m import n` does
    except Exception:  # optional dependencies; a module that fails here fails below too
        pass

import torch
from jsonargparse import _common as jsonargparse_settings
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface
from transformers.models.blip import modeling_blip, modeling_blip_text
from transformers.models.t5 import modeling_t5


def qualname(obj):
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def snapshot():
    return {
        "os.environ": dict(os.environ),
        "warnings.filters": [repr(f) for f in warnings.filters],
        "torch safe globals": sorted(qualname(g) for g in torch.serialization.get_safe_globals()),
        "transformers AttentionInterface": {k: qualname(v) for k, v in AttentionInterface._global_mapping.items()},
        "transformers AttentionMaskInterface": {
            k: qualname(v) for k, v in AttentionMaskInterface._global_mapping.items()
        },
        "transformers BLIP / T5 attention classes": [
            qualname(cls.forward)
            for cls in (
                modeling_blip.BlipAttention,
                modeling_blip_text.BlipTextAttention,
                modeling_blip_text.BlipTextSelfAttention,
                modeling_t5.T5Attention,
            )
        ],
        "jsonargparse settings": {
            "parsing_settings": repr(sorted(jsonargparse_settings.parsing_settings.items())),
            "subclasses_enabled_types": sorted(map(qualname, jsonargparse_settings.subclasses_enabled_types)),
            "subclasses_disabled_types": sorted(map(qualname, jsonargparse_settings.subclasses_disabled_types)),
            "subclasses_disabled_selectors": sorted(jsonargparse_settings.subclasses_disabled_selectors),
        },
        "torch defaults": [str(torch.get_default_dtype()), torch.get_float32_matmul_precision()],
    }


before = snapshot()
for name in MODULES:
    importlib.import_module(name)
after = snapshot()
print("AMAD-MODULES", sum(name in sys.modules for name in MODULES))


def changes(old, new):
    if isinstance(old, dict):
        keys = [k for k in old.keys() | new.keys() if old.get(k) != new.get(k)]
        return {k: [old.get(k, "<unset>"), new.get(k, "<unset>")] for k in keys}
    return {"added": [x for x in new if x not in old], "removed": [x for x in old if x not in new]}


print("AMAD-DIFF", json.dumps({k: changes(before[k], after[k]) for k in before if before[k] != after[k]}))
"""


def test_importing_every_amad_module_changes_no_global_state():
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = [_module(p) for p in paths]
    # without the defaults the `amad` command sets, so that setting them at import would show
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "WANDB_MODE", "TOKENIZERS_PARALLELISM")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(_third_party(paths)), json.dumps(modules)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith("AMAD-"))
    assert int(lines["AMAD-MODULES"]) == len(modules)  # every module was imported
    diff = json.loads(lines["AMAD-DIFF"])
    assert not diff, "importing amad changed global state:\n" + json.dumps(diff, indent=1)[:4000]


def test_the_snapshot_sees_a_change():
    """The check is not blind: a module that registers an attention function is caught."""
    probe = (
        "from transformers import AttentionInterface\n"
        "AttentionInterface.register('amad_probe', lambda *a, **k: None)\n"
        "import os, warnings\n"
        "os.environ['AMAD_PROBE'] = '1'\n"
        "warnings.filterwarnings('ignore', message='amad probe')\n"
    )
    script = SCRIPT.replace("for name in MODULES:", f"exec({probe!r})\nfor name in MODULES:")
    proc = subprocess.run(
        [sys.executable, "-c", script, "[]", "[]"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    diff = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("AMAD-DIFF")).split(" ", 1)[1])
    assert set(diff) == {"os.environ", "warnings.filters", "transformers AttentionInterface"}
