"""The ``amad`` command: a table from verb to function (litgpt style). The work lives elsewhere.

amad fit|validate|test|predict --config experiments/<task>/<model>/<method>.yaml
amad compare --config experiments/compare/easyvqa_blip.yaml --out runs/demo [--preset smoke]
amad bench [losses|step|memory|scaling|throughput|all] --out bench.json
amad export CKPT DIR
"""

from __future__ import annotations

import sys

LIGHTNING_VERBS = ("fit", "validate", "test", "predict")

USAGE = """usage: amad <command> [options]

commands:
  fit        train a model (FineTuneModule) or distil a student (DistillationModule) from YAML
  validate   evaluate a checkpoint on the validation split
  test       evaluate a checkpoint on the test split
  predict    write predictions of a checkpoint
  compare    the main job: AMAD against every baseline, same budget, several seeds, one table
  bench      benchmarks (losses, step overhead, memory, scaling, throughput) -> JSON
  export     write a student checkpoint as a Hugging Face save_pretrained directory

`amad <command> --help` describes each command's options.
"""


def main(argv: list[str] | None = None) -> int | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    verb, rest = argv[0], argv[1:]
    if verb in LIGHTNING_VERBS:
        from amad.lightning_cli import run_lightning_cli

        run_lightning_cli([verb, *rest])
        return 0
    if verb == "compare":
        from amad.compare.run import main as compare_main

        return compare_main(rest)
    if verb == "bench":
        from amad.bench import main as bench_main

        return bench_main(rest)
    if verb == "export":
        from amad.export import main as export_main

        return export_main(rest)
    print(f"amad: unknown command {verb!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
