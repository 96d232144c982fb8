"""The ``amad`` command: a table from verb to function (litgpt style). The work lives elsewhere.

amad fit|validate|test|predict --config experiments/<task>/<model>/<method>.yaml
amad compare --config experiments/compare/easyvqa_blip.yaml --out runs/demo [--preset smoke] [--print_config]
amad sweep --config experiments/sweeps/amad_heads.yaml --out runs/sweep [--cells num_heads=4] [--print_config]
amad bench [losses|step|memory|scaling|throughput|all] --out bench.json
amad export CKPT DIR
"""

from __future__ import annotations

import os
import sys
import warnings

import yaml
from jsonargparse import ArgumentError

#: What a user's mistake raises: bad values and options, missing or unreadable files, bad YAML, a
#: non-finite loss. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, yaml.YAMLError, ArgumentError, FloatingPointError)


def named_cause(err: BaseException) -> BaseException:
    """The damaged file behind ``err``, if any: jsonargparse reports a constructor's error as "Does not
    validate against any of the Union subtypes" plus the whole namespace, and keeps the real cause (e.g.
    :class:`~amad.artefacts.DamagedFile` naming a teacher's file) only in the exception chain."""
    from amad.artefacts import DamagedFile

    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, DamagedFile):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return err


def one_line(err: BaseException) -> str:
    """The error's message on one line (a jsonargparse report reduced to its key and complaint)."""
    err = named_cause(err)
    if isinstance(err, ArgumentError):
        from amad.compare.config import summarize_parse_error

        return summarize_parse_error(str(err))
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


#: Set by the ``amad`` command (and the Makefile) *only where the user has not chosen*, never by
#: ``import amad``: a hub id fails in seconds instead of retrying, W&B runs land under the save dir
#: (``wandb sync`` uploads them later) and tokenizers do not warn about forked workers. A run never
#: hangs on the network.
ENVIRONMENT_DEFAULTS = {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}


def set_environment_defaults() -> None:
    """Set each of :data:`ENVIRONMENT_DEFAULTS` that the environment does not already set."""
    for key, value in ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(key, value)


#: Warnings the ``amad`` command silences while it runs (a library user who calls the same code sees
#: them). Neither says anything a user can act on:
#: * Lightning's own use of torch's pytree warns once per process; it would be the first line of every
#:   console (run logs keep everything else);
#: * Lightning >= 2.5.5 warns "Found N module(s) in eval mode" at every fit of a
#:   :class:`~amad.lit.DistillationModule`: the frozen teacher is in eval mode by design.
QUIET_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"Found \d+ module\(s\) in eval mode")


LIGHTNING_VERBS = ("fit", "validate", "test", "predict")

USAGE = """usage: amad <command> [options]

commands:
  fit        train a model (FineTuneModule) or distil a student (DistillationModule) from YAML
  validate   evaluate a checkpoint on the validation split
  test       evaluate a checkpoint on the test split
  predict    write predictions of a checkpoint
  compare    the main job: AMAD against every baseline, same budget, several seeds, one table
  sweep      one comparison over a grid of student settings (heads, init), val to choose, test to report
  bench      benchmarks (losses, step overhead, memory, scaling, throughput) -> JSON
  export     write a student checkpoint as a Hugging Face save_pretrained directory

`amad <command> --help` describes each command's options.
A mistake in the command (an unknown option, method or preset, a missing file) ends with one
`amad: error: ...` line; `amad --debug <command>` (or AMAD_DEBUG=1) shows the full traceback.
"""


def main(argv: list[str] | None = None) -> int | None:
    set_environment_defaults()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("AMAD_DEBUG", "") not in ("", "0")
    if argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    try:
        with warnings.catch_warnings():  # the command's filters end with the command
            for message in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            return _run(argv[0], argv[1:])
    except SystemExit as done:  # --help, --print_config and argparse errors exit by themselves
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"amad: error: {one_line(err)} (traceback: amad --debug {argv[0]} ...)", file=sys.stderr)
        return 2


def _run(verb: str, rest: list[str]) -> int | None:
    if verb in LIGHTNING_VERBS:
        from amad.lightning_cli import run_lightning_cli

        run_lightning_cli([verb, *rest])
        return 0
    if verb == "compare":
        from amad.compare.run import main as compare_main

        return compare_main(rest)
    if verb == "sweep":
        from amad.compare.sweep import main as sweep_main

        return sweep_main(rest)
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
