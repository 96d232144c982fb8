"""`amad bench --quick` writes the JSON keys docs cite (numbers are measured by `make bench`, not here)."""

from __future__ import annotations

import json

import pytest

from amad.cli import main


@pytest.mark.parametrize("part,keys", [
    ("step", {"model", "batch_size", "teacher_s", "student_s", "distill_s", "overhead"}),
    ("memory", {"model", "batch_size", "peak_ratio"}),
    ("scaling", {"axis", "tokens", "student_heads", "seconds"}),
])
def test_bench_parts_write_their_records(tmp_path, part, keys):
    out = tmp_path / "bench.json"
    assert main(["bench", part, "--quick", "--out", str(out)]) == 0
    records = json.loads(out.read_text())[part]
    assert records and all(keys <= set(r) for r in records)
    if part == "step":
        assert all(r["overhead"] > 0 for r in records)


@pytest.mark.slow
def test_bench_losses_and_throughput_quick(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "losses", "--quick", "--out", str(out)]) == 0
    assert main(["bench", "throughput", "--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert {"losses", "throughput"} <= set(data)
    assert all({"speedup_vs_loop"} <= set(r) for r in data["losses"] if r.get("speedup_vs_loop") is not None)
    assert 0.0 <= data["throughput"][0]["data_wait_fraction"] <= 1.0
