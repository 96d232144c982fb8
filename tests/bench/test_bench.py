"""`amad bench --quick` writes the JSON keys docs cite (numbers are measured by `make bench`, not here)."""

from __future__ import annotations

import json

import pytest

from amad.cli import main


@pytest.mark.parametrize(
    "part,keys",
    [
        ("step", {"model", "batch_size", "teacher_s", "student_s", "distill_s", "overhead"}),
        ("memory", {"model", "batch_size", "peak_ratio"}),
        ("scaling", {"axis", "tokens", "student_heads", "seconds"}),
    ],
)
def test_bench_parts_write_their_records(tmp_path, part, keys):
    out = tmp_path / "bench.json"
    assert main(["bench", part, "--quick", "--out", str(out)]) == 0
    records = json.loads(out.read_text())[part]
    assert records and all(keys <= set(r) for r in records)
    if part == "step":
        assert all(r["overhead"] > 0 for r in records)


@pytest.mark.slow
def test_bench_all_quick_writes_every_part(tmp_path):
    """``amad bench all --quick`` (about 25 s on the 2-core VM): one top-level key per part, with the
    record keys docs/performance.md cites."""
    out = tmp_path / "bench.json"
    assert main(["bench", "all", "--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data) == {"losses", "step", "memory", "scaling", "throughput", "replay"}
    assert all("speedup_vs_loop" in r for r in data["losses"])
    assert all("amad_over_one_to_one" in r for r in data["losses"] if r["method"] == "amad")
    assert all(
        {"model", "batch_size", "teacher_s", "student_s", "distill_s", "overhead"} <= set(r) for r in data["step"]
    )
    assert all("peak_ratio" in r for r in data["memory"])
    assert {r["axis"] for r in data["scaling"]} == {"tokens", "student_heads", "step_tokens"}
    assert 0.0 <= data["throughput"][0]["data_wait_fraction"] <= 1.0


def test_bench_replay_quick_times_the_three_methods_of_the_demo(tmp_path):
    """``amad bench replay --quick`` (the demo's smoke preset, a few seconds): ground truth, one-to-one and
    AMAD steps with the teacher replayed from the comparison's cache, as ratios to ground truth."""
    out = tmp_path / "bench.json"
    assert main(["bench", "replay", "--quick", "--out", str(out)]) == 0
    (rec,) = json.loads(out.read_text())["replay"]
    assert rec["config"].endswith("easyvqa_blip.yaml") and rec["cache_mb"] > 0 and rec["train_examples"] > 0
    assert set(rec["methods"]) == {"gt", "one_to_one", "amad"}
    for m in rec["methods"].values():
        assert m["step_s"] > 0 and m["steps_per_s"] > 0 and 0.0 <= m["data_wait_fraction"] < 1.0
    assert rec["methods"]["gt"]["ratio_to_gt"] == 1.0


def test_bench_qk_quick_writes_its_records(tmp_path):
    """``amad bench qk --quick`` (tiny BLIP-VQA and a small loss case; about 12 s on the 2-core VM):
    the keys docs/performance.md cites ("Attention from queries and keys")."""
    out = tmp_path / "bench.json"
    assert main(["bench", "qk", "--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())["qk"]
    (step,) = data["steps"]
    keys = {"distill_maps_s", "distill_qk_s", "time_qk_over_maps", "overhead_qk", "overhead_maps", "loss_abs_diff"}
    assert keys <= set(step) and step["model"] == "blip-vqa/tiny"
    assert step["loss_abs_diff"] < 1e-4  # the two paths' loss on the same weights
    (mem,) = data["memory"]
    assert {"peak_ratio_qk", "peak_ratio_maps", "teacher_maps_mb", "teacher_qk_inputs_mb"} <= set(mem)
    (fit,) = data["batch_fit"]
    assert {"budget_gib", "batches", "per_sample_mb", "max_batch", "max_batch_qk_over_maps"} <= set(fit)
    (loss,) = data["records"]
    assert {"map_ms", "qk_ms", "time_ratio", "mem_ratio"} <= set(loss)


def test_bench_models_option_picks_the_cases(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "step", "--quick", "--models", "vlt5/tiny", "--out", str(out)]) == 0
    assert [r["model"] for r in json.loads(out.read_text())["step"]] == ["vlt5/tiny"]
