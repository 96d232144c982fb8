"""``amad bench``: benchmarks that report ratios measured side by side in one run, as JSON.

Parts: ``losses`` (vectorised losses vs loop references), ``step`` (distillation step overhead over
teacher forward + student step), ``memory`` (peak memory ratio), ``scaling`` (tokens and heads),
``throughput`` (samples/s of the demo's training and data-wait fraction), ``replay`` (a comparison's own
step with the teacher's outputs replayed from its cache: ground truth vs one-to-one vs AMAD, interleaved;
the demo and the BLIP captioning comparison), or ``all`` (these six); and
``qk`` (attention distillation from queries and keys against maps, at base shapes: about an hour on CPU,
so only when named).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PARTS = ("losses", "step", "memory", "scaling", "throughput", "replay")
#: parts run only when named (not by ``all``)
EXTRA_PARTS = ("qk",)


def _part(name: str):
    if name == "losses":
        from amad.bench.losses import run
    elif name == "step":
        from amad.bench.step import run_step as run
    elif name == "memory":
        from amad.bench.memory import run_memory as run
    elif name == "scaling":
        from amad.bench.scaling import run_scaling as run
    elif name == "throughput":
        from amad.bench.throughput import run
    elif name == "replay":
        from amad.bench.replay import run
    elif name == "qk":
        from amad.bench.qk import run
    else:
        raise ValueError(f"unknown bench part {name!r}; expected one of {PARTS + EXTRA_PARTS} or 'all'")
    return run


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="amad bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part", nargs="?", default="all", choices=(*PARTS, *EXTRA_PARTS, "all"))
    parser.add_argument("--out", default="runs/bench.json", help="JSON file to write (merged by part)")
    parser.add_argument("--quick", action="store_true", help="small shapes only (seconds; for tests)")
    parser.add_argument(
        "--models",
        default=None,
        help="step/memory/qk only: comma-separated family/preset cases, e.g. blip-vqa/base "
        "(default: tiny and small of both families, plus base on CUDA; qk: base)",
    )
    ns = parser.parse_args(argv)
    parts = PARTS if ns.part == "all" else (ns.part,)
    out = Path(ns.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    models = None if ns.models is None else [tuple(m.split("/", 1)) for m in ns.models.split(",")]
    for part in parts:
        kwargs = {"models": models} if part in ("step", "memory", "qk") else {}
        results[part] = _part(part)(out=None, quick=ns.quick, **kwargs)[part]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")
    return 0
