"""Every ``amad ...`` command that README.md and docs/*.md show runs as written.

Each command is read from the files (code blocks and inline code), run through ``amad`` on the embedded
data with a shortened budget appended (2 training steps, one evaluation batch, one seed, ``--quick``
benchmarks) and with its outputs redirected to a temporary folder, against the real shipped teachers.
``runs/.../checkpoints/last.ckpt`` stands for the checkpoint that the docs' first ``amad fit`` writes.
A command on real data that is not shipped (VQA v2, COCO, Multi30K) must stop with one ``amad: error:``
line that names what is missing.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from amad.cli import main

ROOT = Path(__file__).parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CKPT_PLACEHOLDER = "runs/.../checkpoints/last.ckpt"
REAL_DATA = ("vqav2", "coco-karpathy", "multi30k")
VERBS = ("fit", "validate", "test", "predict", "compare", "sweep", "bench", "export", "--help")


def _commands_in(text: str) -> list[str]:
    found: list[str] = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("amad "):
                found.append(line)
    for span in re.findall(r"`(amad [^`]+)`", text):
        if " --" in span:  # a command line; `amad compare` alone names the command in prose
            found.append(span.strip())
    return [" ".join(c.split()) for c in found if c.split()[1] in VERBS]


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) for every amad command of the docs, first occurrence only, in reading order."""
    seen: dict[str, str] = {}
    for path in DOCS:
        for cmd in _commands_in(path.read_text()):
            seen.setdefault(cmd, path.name)
    return [(f, c) for c, f in seen.items()]


COMMANDS = documented_commands()


def test_the_docs_show_commands_and_only_runnable_ones():
    assert len(COMMANDS) >= 8, COMMANDS
    verbs = {c.split()[1] for _, c in COMMANDS}
    assert {"fit", "test", "export", "compare", "bench"} <= verbs
    for where, cmd in COMMANDS:
        rest = cmd.replace(CKPT_PLACEHOLDER, "")
        assert "<" not in rest and "..." not in rest, f"{where}: `{cmd}` cannot run as written"


def shortened(argv: list[str], tmp: Path) -> list[str]:
    """``argv`` with its outputs under ``tmp`` and a budget of seconds appended."""
    verb = argv[0]
    argv = [a.replace(CKPT_PLACEHOLDER, str(tmp / "ckpt.ckpt")) for a in argv]
    if verb in ("fit", "validate", "test", "predict") and "--print_config" not in argv:
        argv += [
            f"--trainer.default_root_dir={tmp}",
            f"--trainer.logger.init_args.save_dir={tmp}",
            "--data.init_args.eval_subset=8",
            "--data.init_args.eval_batch_size=8",
        ]
        if verb == "fit":
            argv += ["--trainer.max_steps=2", "--trainer.val_check_interval=1", "--trainer.limit_val_batches=1"]
    elif verb in ("compare", "sweep"):
        if "--out" in argv:
            i = argv.index("--out") + 1
            argv[i] = str(tmp / argv[i])
        argv += ["--max-steps", "2", "--seeds", "1", "--eval-subset", "16", "--logger", "none"]
    elif verb == "bench":
        if "--models" in argv:  # the documented (base-size) models: --quick's own small case instead
            i = argv.index("--models")
            del argv[i : i + 2]
        if "--out" in argv:
            i = argv.index("--out") + 1
            argv[i] = str(tmp / Path(argv[i]).name)
        argv += ["--quick"]
    elif verb == "export":
        argv[2] = str(tmp / argv[2])
    return argv


@pytest.mark.slow
def test_every_documented_command_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("AMAD_DEBUG", raising=False)
    failures = []
    ran: set[tuple[str, ...]] = set()
    for where, cmd in COMMANDS:
        argv = shlex.split(cmd)[1:]
        real = any(f"experiments/{d}/" in cmd for d in REAL_DATA)
        short = shortened(argv, tmp_path)
        key = tuple(a for i, a in enumerate(short) if i == 0 or short[i - 1] != "--out")
        if key in ran:  # e.g. `bench step` documented with two output files: the same run once
            continue
        ran.add(key)
        code = main(short)
        err = capsys.readouterr().err
        if real:
            last = err.strip().splitlines()[-1] if err.strip() else ""
            names_missing = "not found" in last or "does not exist" in last
            if code != 2 or "amad: error:" not in last or not names_missing:
                failures.append(f"{where}: `{cmd}` on data that is not shipped: {last or code}")
        elif code not in (0, None):
            failures.append(f"{where}: `{cmd}` exited {code}: {err.strip().splitlines()[-1:]}")
        if argv[0] == "fit" and not (tmp_path / "ckpt.ckpt").exists():
            ckpts = sorted(tmp_path.glob("**/checkpoints/last.ckpt"))
            if ckpts:
                (tmp_path / "ckpt.ckpt").symlink_to(ckpts[0])
    assert not failures, "\n".join(failures)
