"""Kill anywhere: a comparison killed (as by SIGKILL) during a teacher stage, a student run, an evaluation
or while writing its results resumes to the results of an uninterrupted one, bit for bit (every run
record carries the SHA-256 of its student's final weights). Damaged rebuildable artefacts of a finished
comparison (a torn run record, a damaged cached teacher) are set aside, rebuilt, and give the same results.

The kill is real: a subprocess runs ``amad compare`` with ``AMAD_FAULT=<point>[@n]``, which ends it with
``os._exit(137)`` at that point (no cleanup runs, as under SIGKILL); the resume runs in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from amad.artefacts import file_digest
from amad.cli import main

ROOT = Path(__file__).parents[2]
ARGS = ["--config", "experiments/compare/easyvqa_blip.yaml", "--preset", "smoke", "--methods", "gt,kd"]
ARGS += ["--logger", "none"]
pytestmark = pytest.mark.slow


def comparable(out: Path) -> dict:
    """What must not change: every run's metrics and final weights, the teacher's record, the summary."""
    results = json.loads((out / "results.json").read_text())
    keep = ("method", "seed", "metrics", "weights_sha256", "params", "teacher", "steps", "fingerprint")
    teacher = {k: results["teacher"][k] for k in ("fingerprint", "metrics", "params")}
    return {
        "runs": [{k: r[k] for k in keep} for r in results["runs"]],
        "teacher": teacher,
        "summary": [{k: v for k, v in s.items() if not k.endswith("time_s")} for s in results["summary"]],
    }


def teacher_weights(cache: Path) -> str:
    (entry,) = [p for p in (cache / "teachers").iterdir() if ".corrupt-" not in p.name]
    return file_digest(entry / "model.safetensors")["sha256"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted smoke comparison (gt, kd) and its teacher cache."""
    root = tmp_path_factory.mktemp("reference")
    env = {"AMAD_CACHE": str(root / "cache"), "WANDB_MODE": "offline"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        assert main(["compare", *ARGS, "--out", str(root / "out")]) == 0
    return {"out": root / "out", "cache": root / "cache", "teacher": teacher_weights(root / "cache")}


def killed(out: Path, cache: Path, point: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AMAD_CACHE": str(cache), "AMAD_FAULT": point, "WANDB_MODE": "offline"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "amad.cli", "compare", *ARGS, "--out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 137, f"{point} was not reached:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def resume(out: Path, cache: Path, monkeypatch) -> None:
    monkeypatch.setenv("AMAD_CACHE", str(cache))
    monkeypatch.delenv("AMAD_FAULT", raising=False)
    assert main(["compare", *ARGS, "--out", str(out)]) == 0


def shared_cache(reference, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    shutil.copytree(reference["cache"], cache)
    return cache


def test_killed_while_training_the_teacher_resumes_to_the_same_teacher_and_results(reference, tmp_path, monkeypatch):
    cache, out = tmp_path / "cache", tmp_path / "out"  # nothing cached: the teacher is trained, and killed
    killed(out, cache, "teacher.train_step@10")
    assert not (cache / "teachers").exists() or not any((cache / "teachers").iterdir()), "no half teacher cached"
    resume(out, cache, monkeypatch)
    assert teacher_weights(cache) == reference["teacher"]
    assert comparable(out) == comparable(reference["out"])


@pytest.mark.parametrize(
    "point",
    [
        "student.train_step@8",  # kd's third step (gt: 5 steps): gt's record is written, kd's is not
        "eval_batch@1",  # gt's evaluation
        "write:results.json",  # every run done, results.json written to its temporary name
    ],
)
def test_killed_comparison_resumes_to_the_same_results(reference, tmp_path, monkeypatch, capsys, point):
    cache, out = shared_cache(reference, tmp_path), tmp_path / "out"
    killed(out, cache, point)
    capsys.readouterr()
    resume(out, cache, monkeypatch)
    log = capsys.readouterr().out
    if point.startswith("student"):
        assert "gt seed 0: done already" in log, "a finished run is not redone"
    assert comparable(out) == comparable(reference["out"])


def test_torn_run_record_is_set_aside_and_rerun_to_the_same_record(reference, tmp_path, monkeypatch, capsys):
    cache, out = shared_cache(reference, tmp_path), tmp_path / "out"
    shutil.copytree(reference["out"], out)
    record = out / "runs" / "kd-seed0.json"
    record.write_bytes(record.read_bytes()[:20])  # cut short mid-record
    capsys.readouterr()
    resume(out, cache, monkeypatch)
    err = capsys.readouterr().err
    assert err.count("amad: warning:") == 1 and f"{record} is damaged" in err
    assert list((out / "runs").glob("kd-seed0.json.corrupt-*")), "set aside, not deleted"
    assert comparable(out) == comparable(reference["out"])


def test_damaged_cached_teacher_is_set_aside_retrained_and_gives_the_same_results(
    reference, tmp_path, monkeypatch, capsys
):
    cache, out = shared_cache(reference, tmp_path), tmp_path / "out"
    (entry,) = (cache / "teachers").iterdir()
    weights = entry / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one altered byte inside a tensor: only the recorded SHA-256 sees it
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    resume(out, cache, monkeypatch)
    err = capsys.readouterr().err
    assert err.count("amad: warning:") == 1 and "model.safetensors" in err and "SHA-256" in err
    assert list((cache / "teachers").glob("*.corrupt-*")), "set aside, not deleted"
    assert teacher_weights(cache) == reference["teacher"]
    assert comparable(out) == comparable(reference["out"])
