"""Every artefact amad reads, damaged (cut short, one byte altered, deleted, its folder read-only).

What amad can rebuild (a cached teacher, a kept teacher stage, a run record, a scene pool) is set aside
(renamed ``*.corrupt-<time>``, never deleted) with one warning line naming the file, and rebuilt; what
it cannot (a shipped or user-given teacher, a checkpoint, an export, a config) is one error naming the
file and what is wrong with it, and nothing else is touched. docs/reliability.md counts the cases.
The whole-comparison versions (the results equal an undamaged run's) are in test_kill_anywhere.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fault_injection import FAULTS, damage, read_only

from amad.artefacts import DamagedFile, FileLock, Locked, atomic_write_json, file_digest
from amad.cli import main
from amad.compare.teacher_files import cached_teacher, check_teacher_path, load_last_stage, publish_teacher, save_stage
from amad.models import build_model, load_checkpoint_model, load_model

ROOT = Path(__file__).parents[2]
SHIPPED = ROOT / "experiments/teachers/easyvqa_blip"
TEACHER_FILES = ("model.safetensors", "teacher.json", "config.json", "tokenizer.json", "amad_adapter.json")
EXPORT_FILES = ("model.safetensors", "config.json", "tokenizer.json", "amad_adapter.json")


def listing(folder: Path) -> dict[str, str]:
    return {p.name: file_digest(p)["sha256"] for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    """A cached-teacher folder as ensure_teacher writes it (tiny BLIP, a record with file digests)."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("teacher") / "tiny-0123456789ab"
    publish_teacher(build_model("blip-vqa", preset="tiny"), out, {"fingerprint": "0123456789ab", "metrics": {}})
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An amad .ckpt written by Lightning (a 1-step distillation of the tiny model)."""
    import lightning as L
    from torch.utils.data import DataLoader

    from amad.bench._batches import random_batch
    from amad.lit import DistillationModule

    folder = tmp_path_factory.mktemp("ckpt")
    teacher = build_model("blip-vqa", preset="tiny")
    module = DistillationModule(teacher=teacher, student={"num_heads": 2, "num_layers": 1})
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=folder,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader([random_batch("blip-vqa", 2, tokenizer=teacher.tokenizer)], batch_size=None))
    trainer.save_checkpoint(folder / "last.ckpt")
    return folder / "last.ckpt"


# ----------------------------------------------------------------------------- cached teacher: rebuilt
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("name", TEACHER_FILES)
def test_damaged_cached_teacher_is_set_aside_with_one_warning(tiny_teacher, tmp_path, capsys, name, fault):
    entry = tmp_path / tiny_teacher.name
    shutil.copytree(tiny_teacher, entry)
    assert cached_teacher(entry) is not None  # intact: reused
    damage(entry / name, fault)
    capsys.readouterr()
    assert cached_teacher(entry) is None  # ensure_teacher trains it again (test_kill_anywhere: same results)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("amad: warning:") and name in err[0], err
    (aside,) = tmp_path.glob(f"{entry.name}.corrupt-*")
    assert not entry.exists() and sorted(p.name for p in aside.iterdir()), "set aside whole, nothing deleted"


def test_a_record_without_digests_written_before_them_still_loads(tiny_teacher, tmp_path):
    entry = tmp_path / tiny_teacher.name
    shutil.copytree(tiny_teacher, entry)
    for name in ("teacher.json", "amad_adapter.json"):
        record = json.loads((entry / name).read_text())
        del record["files"]
        (entry / name).write_text(json.dumps(record))
    assert cached_teacher(entry)["fingerprint"] == "0123456789ab"  # structure checked only
    damage(entry / "tokenizer.json", "truncate")  # structure is still checked
    assert cached_teacher(entry) is None


def test_damaged_cached_teacher_in_a_read_only_cache_is_a_named_error(tiny_teacher, tmp_path, monkeypatch):
    entry = tmp_path / tiny_teacher.name
    shutil.copytree(tiny_teacher, entry)
    damage(entry / "model.safetensors", "flip")
    read_only(monkeypatch, tmp_path)
    with pytest.raises(PermissionError, match=str(entry)):
        cached_teacher(entry)
    monkeypatch.undo()
    assert entry.is_dir() and not list(tmp_path.glob("*.corrupt-*"))


def test_publishing_a_teacher_into_a_read_only_cache_is_a_named_error_and_caches_nothing(tmp_path, monkeypatch):
    read_only(monkeypatch, tmp_path)
    with pytest.raises(PermissionError, match=str(tmp_path)):
        publish_teacher(build_model("blip-vqa", preset="tiny"), tmp_path / "t-1", {"fingerprint": "1"})
    monkeypatch.undo()
    assert not (tmp_path / "t-1").exists()


# ----------------------------------------------------------------------------- shipped / user teacher: refused
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("name", TEACHER_FILES)
def test_damaged_teacher_folder_is_one_error_naming_the_file_and_nothing_is_touched(
    tiny_teacher, tmp_path, name, fault
):
    folder = tmp_path / "my_teacher"
    shutil.copytree(tiny_teacher, folder)
    damage(folder / name, fault)
    before = listing(folder)
    if (name, fault) == ("teacher.json", "delete"):  # a user's folder needs no record: the rest is intact
        assert check_teacher_path(folder) == {}
        load_model(folder)
    else:
        with pytest.raises(DamagedFile, match=name) as err:
            check_teacher_path(folder)
        assert "\n" not in str(err.value)
        with pytest.raises(DamagedFile, match=name):
            load_model(folder)  # what DistillationModule(teacher=<folder>) calls
    assert listing(folder) == before and not list(tmp_path.glob("*.corrupt-*"))


@pytest.mark.parametrize("fault", FAULTS)
def test_damaged_shipped_teacher_weights_are_named(tmp_path, fault):
    """The shipped teacher.json predates amad_adapter.json digests: its own recorded digests catch it."""
    folder = tmp_path / "easyvqa_blip"
    shutil.copytree(SHIPPED, folder)
    assert check_teacher_path(folder)["fingerprint"]  # intact: as shipped
    damage(folder / "model.safetensors", fault)
    with pytest.raises(DamagedFile, match=r"model\.safetensors"):
        check_teacher_path(folder)


def test_amad_fit_with_a_damaged_teacher_folder_is_one_error_line(tmp_path, monkeypatch, capsys):
    """jsonargparse reports a constructor's error as its Union report with the whole namespace; amad
    prints the damaged file behind it."""
    folder = tmp_path / "teacher"
    shutil.copytree(SHIPPED, folder)
    damage(folder / "model.safetensors", "flip")
    monkeypatch.chdir(ROOT)
    args = ["fit", "--config", "experiments/easyvqa/blip/amad.yaml", f"--model.init_args.teacher={folder}"]
    assert main([*args, "--trainer.max_steps=1", "--trainer.logger=false"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "Seed set to" not in line]  # Lightning's
    assert len(err) == 1 and err[0].startswith("amad: error:"), err
    assert f"{folder}/model.safetensors" in err[0] and "SHA-256" in err[0] and "Union" not in err[0]


# ----------------------------------------------------------------------------- stages: rebuilt from the one before
@pytest.mark.parametrize("fault", (*FAULTS, "other shape"))
def test_damaged_last_stage_is_set_aside_and_the_one_before_used(tmp_path, capsys, fault):
    model = torch.nn.Linear(256, 64)  # big enough that the middle byte is tensor data, not zip padding
    torch.nn.init.constant_(model.weight, 1.0)
    save_stage(tmp_path, 1, {"state_dict": model.state_dict(), "stages": [{"stage": "a"}]})
    torch.nn.init.constant_(model.weight, 2.0)
    save_stage(tmp_path, 2, {"state_dict": model.state_dict(), "stages": [{"stage": "a"}, {"stage": "b"}]})
    if fault == "other shape":
        torch.save({"state_dict": torch.nn.Linear(5, 64).state_dict(), "stages": []}, tmp_path / "stage2.pt")
    else:
        damage(tmp_path / "stage2.pt", fault)
    capsys.readouterr()
    fresh = torch.nn.Linear(256, 64)
    state, path = load_last_stage(tmp_path, fresh)
    assert path.name == "stage1.pt" and [s["stage"] for s in state["stages"]] == ["a"]
    assert torch.equal(fresh.weight, torch.ones(64, 256))
    err = capsys.readouterr().err
    if fault == "delete":
        assert err == ""
    else:
        assert err.count("amad: warning:") == 1 and "stage2.pt is damaged" in err
        assert list(tmp_path.glob("stage2.pt.corrupt-*"))


def test_every_stage_damaged_starts_from_the_seeded_weights(tmp_path):
    model = torch.nn.Linear(4, 3)
    save_stage(tmp_path, 1, {"state_dict": torch.nn.Linear(5, 3).state_dict(), "stages": []})  # wrong shape
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert load_last_stage(tmp_path, model) is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------- run records: rebuilt
@pytest.mark.parametrize("fault", (*FAULTS, "not an object", "no metrics"))
def test_damaged_run_record_is_set_aside_and_the_run_redone(tmp_path, capsys, fault):
    from amad.compare.run import read_run_record

    path = tmp_path / "kd-seed0.json"
    atomic_write_json(path, {"method": "kd", "seed": 0, "metrics": {"vqa_acc": 0.5}, "fingerprint": "f"})
    assert read_run_record(path)["metrics"] == {"vqa_acc": 0.5}
    if fault in FAULTS:
        damage(path, fault)
    else:
        path.write_text("[1, 2]" if fault == "not an object" else '{"method": "kd"}')
    capsys.readouterr()
    assert read_run_record(path) is None  # run_comparison trains it again
    err = capsys.readouterr().err
    assert err == "" if fault == "delete" else (err.count("amad: warning:") == 1 and str(path) in err)


def test_writing_a_run_record_or_results_into_a_read_only_folder_is_a_named_error(tmp_path, monkeypatch):
    (tmp_path / "results.json").write_text("{}")
    read_only(monkeypatch, tmp_path)
    for name in ("kd-seed0.json", "results.json"):
        with pytest.raises(PermissionError, match=str(tmp_path)):
            atomic_write_json(tmp_path / name, {"metrics": {}})
    monkeypatch.undo()
    assert (tmp_path / "results.json").read_text() == "{}" and not (tmp_path / "kd-seed0.json").exists()


# ----------------------------------------------------------------------------- checkpoints: refused
@pytest.mark.parametrize("fault", FAULTS)
def test_damaged_checkpoint_is_one_error_naming_it(checkpoint, tmp_path, fault):
    from amad.lightning_cli import check_checkpoint_arg

    ckpt = tmp_path / "last.ckpt"
    shutil.copy(checkpoint, ckpt)
    damage(ckpt, fault)
    kind = FileNotFoundError if fault == "delete" else DamagedFile
    with pytest.raises(kind, match=r"last\.ckpt"):
        load_checkpoint_model(ckpt)  # amad export, a student or teacher given as a .ckpt
    with pytest.raises(kind, match=r"last\.ckpt"):
        check_checkpoint_arg(["--ckpt_path", str(ckpt)])  # amad fit --ckpt_path (resume)


# ----------------------------------------------------------------------------- exports: refused; written whole
@pytest.fixture(scope="module")
def export(checkpoint, tmp_path_factory) -> Path:
    from amad.export import export_checkpoint

    return export_checkpoint(checkpoint, tmp_path_factory.mktemp("export") / "student")


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("name", EXPORT_FILES)
def test_damaged_export_is_one_error_naming_the_file(export, tmp_path, name, fault):
    folder = tmp_path / "student"
    shutil.copytree(export, folder)
    good = load_model(folder).state_dict()
    damage(folder / name, fault)
    before = listing(folder)
    if (name, fault) == ("amad_adapter.json", "delete"):  # then it is a plain HF folder: the same model
        again = load_model(folder).state_dict()
        assert all(torch.equal(good[k], again[k]) for k in good)
    else:
        with pytest.raises(DamagedFile, match=name):
            load_model(folder)
    assert listing(folder) == before


@pytest.mark.parametrize("how", ["crash", "read-only"])
def test_an_export_that_fails_halfway_leaves_the_previous_one_whole(checkpoint, export, tmp_path, monkeypatch, how):
    import amad.export as export_mod

    out = tmp_path / "student"
    shutil.copytree(export, out)
    before = listing(out)
    if how == "crash":

        def die_halfway(model, path):
            (Path(path) / "config.json").parent.mkdir(parents=True)
            (Path(path) / "config.json").write_text("{")
            raise OSError("disk full (simulated)")

        monkeypatch.setattr(export_mod, "save_pretrained", die_halfway)
    else:
        read_only(monkeypatch, tmp_path)
    with pytest.raises(OSError, match="disk full" if how == "crash" else str(tmp_path)):
        export_mod.export_checkpoint(checkpoint, out)
    monkeypatch.undo()
    assert listing(out) == before
    load_model(out)


def test_export_into_an_existing_folder_keeps_the_users_files(checkpoint, export, tmp_path):
    from amad.export import export_checkpoint

    out = tmp_path / "student"
    shutil.copytree(export, out)
    (out / "NOTES.md").write_text("mine")
    damage(out / "model.safetensors", "flip")  # an earlier export gone bad: exporting again repairs it
    export_checkpoint(checkpoint, out)
    assert (out / "NOTES.md").read_text() == "mine" and not list(tmp_path.glob(".student.*"))
    assert listing(out) == {**listing(export), "NOTES.md": file_digest(out / "NOTES.md")["sha256"]}
    load_model(out)


# ----------------------------------------------------------------------------- configs: refused
@pytest.mark.parametrize("fault", FAULTS)
def test_damaged_comparison_config_is_one_error_line(tmp_path, monkeypatch, capsys, fault):
    config = tmp_path / "easyvqa_blip.yaml"
    text = (ROOT / "experiments/compare/easyvqa_blip.yaml").read_text()
    config.write_text(text.replace("base: base.yaml", f"base: {ROOT}/experiments/compare/base.yaml"))
    damage(config, fault)
    monkeypatch.setenv("AMAD_CACHE", str(tmp_path / "cache"))
    assert main(["compare", "--config", str(config), "--out", str(tmp_path / "out"), "--teacher-only"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("amad: error:") and str(config) in err[0], err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- scene pools: rebuilt
@pytest.mark.parametrize("fault", ("truncate", "flip"))
def test_damaged_scene_pool_is_set_aside_and_drawn_again(tmp_path, monkeypatch, capsys, fault):
    from amad.scenes import datasets as scene_data

    monkeypatch.setenv("AMAD_CACHE", str(tmp_path))
    scene_data._load_pool.cache_clear()
    first = scene_data.ScenePool(seed=3, size=64).images.clone()
    (pool,) = (tmp_path / "scenes").glob("*.npz")
    damage(pool, fault)
    scene_data._load_pool.cache_clear()
    capsys.readouterr()
    again = scene_data.ScenePool(seed=3, size=64).images
    scene_data._load_pool.cache_clear()
    assert torch.equal(first, again)
    assert capsys.readouterr().err.count("amad: warning:") == 1 and list(pool.parent.glob("*.corrupt-*"))


# ----------------------------------------------------------------------------- sweep's head snapshots
@pytest.mark.parametrize("fault", ("truncate", "flip"))
def test_damaged_head_snapshot_leaves_a_sweep_row_without_it(tmp_path, capsys, fault):
    from amad.compare.sweep_report import _last_snapshot

    folder = tmp_path / "heatmaps" / "amad"
    folder.mkdir(parents=True)
    atomic_write_json(folder / "snapshots.json", {"5": {"spread": 0.1, "head_diversity": 0.2}})
    runs = [{"method": "amad", "seed": 0, "head_alignment": str(folder)}]
    assert _last_snapshot(tmp_path, "amad", runs) == {"spread": 0.1, "head_diversity": 0.2}
    damage(folder / "snapshots.json", fault)
    assert _last_snapshot(tmp_path, "amad", runs) is None
    assert "snapshots.json" in capsys.readouterr().err


# ----------------------------------------------------------------------------- two writers
HOLD = """
import sys, time
from amad.artefacts import FileLock
with FileLock(sys.argv[1], "test"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, env=env)
    assert proc.stdout.readline().strip() == b"held"
    return proc


def test_a_second_comparison_writing_to_the_same_out_is_refused_naming_the_first(tmp_path):
    from amad.compare.run import run_comparison

    out = tmp_path / "out"
    holder = hold_lock(out / ".lock", 60)
    try:
        with pytest.raises(Locked, match=f"pid {holder.pid}") as err:
            run_comparison({"name": "x"}, out, "none")  # refused before anything is read or written
        assert str(out) in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    with FileLock(out / ".lock", "x"):  # the kernel dropped the killed holder's lock: none is stale
        pass


def test_a_second_process_waits_for_the_teacher_cache_entry_then_proceeds(tmp_path, capsys):
    lock = tmp_path / "locks" / "teacher-x.lock"
    holder = hold_lock(lock, 1.5)
    start = time.perf_counter()
    with FileLock(lock, "the teacher cache of x", wait=True):
        waited = time.perf_counter() - start
    holder.wait()
    assert waited > 0.5 and f"amad process {holder.pid}" in capsys.readouterr().err


def test_two_writers_of_one_record_leave_one_whole_record(tmp_path):
    """Atomic writes: whichever rename comes last wins, and the file is always one writer's whole JSON."""
    path = tmp_path / "r.json"
    code = (
        "import sys; from amad.artefacts import atomic_write_json\n"
        "for i in range(100): atomic_write_json(sys.argv[1], {'writer': sys.argv[2], 'pad': 'x' * 50000})"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), w], env=env) for w in "ab"]
    seen = set()
    while any(p.poll() is None for p in procs):
        if path.exists():
            seen.add(json.loads(path.read_text())["writer"])  # never a torn or mixed file
    assert all(p.wait() == 0 for p in procs)
    assert json.loads(path.read_text())["writer"] in "ab" and seen <= {"a", "b"}


# ----------------------------------------------------------------------------- W&B folders: never read by amad
def test_a_damaged_earlier_wandb_run_does_not_stop_the_next_run(tmp_path):
    """amad never reads W&B's files; a new offline run starts beside a damaged one, which stays as it was."""
    old = tmp_path / "wandb" / "offline-run-20260101_000000-abcdefgh"
    (old / "files").mkdir(parents=True)
    (old / "run-abcdefgh.wandb").write_bytes(b"\xff" * 10)  # cut short and altered
    (old / "files" / "config.yaml").write_bytes(b"\xff: [")
    before = {p: p.read_bytes() for p in old.rglob("*") if p.is_file()}
    env = {**os.environ, "WANDB_MODE": "offline", "OUT": str(tmp_path)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    script = (
        "import amad, os\nfrom amad.compare.run import make_logger\n"
        "lg = make_logger('wandb', __import__('pathlib').Path(os.environ['OUT']), 'g', 'gt-seed0',"
        " {'name': 'x', 'preset': 'smoke'})\n"
        "lg.log_metrics({'x': 1.0}); lg.experiment.finish()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 2
    assert {p: p.read_bytes() for p in old.rglob("*") if p.is_file()} == before
