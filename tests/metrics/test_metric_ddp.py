"""Metrics under DDP: states gathered across ranks, sampler padding counted once.

The fast tests drive torchmetrics' sync with a fake all-gather; the slow one runs two real
processes on gloo (a subprocess, so pytest itself is never re-launched)."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from amad.metrics import CaptionMetrics, TranslationBLEU, VQAAccuracy, metric_dict
from amad.metrics.records import decode_records, encode_records

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from metrics_ddp_run import IDS, PREDS, REFS, make_metrics, shards  # noqa: E402


def test_records_roundtrip_unicode_and_concatenation():
    a = encode_records([{"id": 1, "p": "Größe \n ü", "r": ["x|||y"]}])
    b = encode_records([{"id": "z", "p": "", "r": []}, {"id": None, "p": "q", "r": ["q"]}])
    recs = decode_records([a, b])
    assert recs == [
        {"id": 1, "p": "Größe \n ü", "r": ["x|||y"]},
        {"id": "z", "p": "", "r": []},
        {"id": None, "p": "q", "r": ["q"]},
    ]
    assert decode_records(torch.cat([a, torch.zeros(0), b])) == recs  # an empty rank's padding
    assert decode_records([]) == []


def _single_process_reference():
    out = {}
    for name, m in make_metrics().items():
        m.update(PREDS, REFS, ids=IDS)
        out[name] = metric_dict(m)
    return out


def test_sync_path_with_fake_gather_dedups_sampler_padding():
    """torchmetrics' own sync with an all-gather stand-in: rank states are concatenated, the
    sampler's duplicate of example 0 is counted once, every rank gets the single-process value."""
    want = _single_process_reference()
    world = shards(2, len(PREDS))
    for name in ("vqa", "bleu", "caption"):
        local: list[torch.Tensor] = []

        def gather(tensor, group=None):
            return [t.to(tensor.dtype) for t in local]

        ranks = [make_metrics(dist_sync_fn=gather, distributed_available_fn=lambda: True)[name] for _ in world]
        for m, mine in zip(ranks, world, strict=False):
            m.update([PREDS[i] for i in mine], [REFS[i] for i in mine], ids=[IDS[i] for i in mine])
        local.extend(torch.cat(m.records) for m in ranks)
        for m in ranks:
            assert metric_dict(m) == pytest.approx(want[name]), name
            assert len(m.records) == 1 and len(decode_records(m.records)) == len(world[0])  # unsynced again


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_real_ddp_gloo_two_processes(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(HERE / "metrics_ddp_run.py"), str(tmp_path), str(_free_port())],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = _single_process_reference()
    vqa_all = VQAAccuracy()
    vqa_all.update(PREDS, REFS, ids=IDS)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for name in ("vqa", "caption", "bleu"):
            assert got[name] == pytest.approx(want[name]), (rank, name)
        assert got["vqa_one_rank"] == pytest.approx(metric_dict(vqa_all))
        vqa_all2 = VQAAccuracy()
        vqa_all2.update([*PREDS, "red"], [*REFS, ["red"]], ids=[*IDS, 99])
        assert got["vqa_again"] == pytest.approx(metric_dict(vqa_all2))


def test_ids_from_tensors_and_numpy_are_plain():
    import numpy as np

    m = TranslationBLEU()
    m.update(["a b c d"], [["a b c d"]], ids=torch.tensor([5]))
    m.update(["a b c d"], [["a b c d"]], ids=[np.int64(5)])
    assert len(m.gathered()) == 1
    c = CaptionMetrics(tokenizer="simple")
    c.update(["x"], [["x"]], ids=[(1, 2)])
    assert c.gathered()[0]["id"] == [1, 2]
