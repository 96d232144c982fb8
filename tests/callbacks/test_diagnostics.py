"""Per-run diagnostics (attention term before γ, head diversity, a_ij spread) and the teacher's head similarity."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "lit"))
from lit_helpers import RandomBatchDataModule, fit_trainer

from amad.callbacks.diagnostics import DiagnosticsCallback, fixed_batch, measure, teacher_head_similarity
from amad.callbacks.head_alignment import head_cosines, student_head_diversity
from amad.lit import DistillationModule
from amad.losses import AMAD, OneToOne
from amad.models import build_model


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_model("blip-vqa", preset="tiny")


@pytest.fixture(scope="module")
def dm(teacher):
    return RandomBatchDataModule("blip-vqa", tokenizer=teacher.tokenizer)


def _module(teacher, attention, seed=0, **kwargs):
    L.seed_everything(seed, verbose=False)
    return DistillationModule(teacher=teacher, student={"num_heads": 2, "num_layers": 1}, attention=attention, **kwargs)


def test_head_cosines_are_one_for_identical_heads_and_zero_for_disjoint_ones():
    maps = torch.softmax(torch.randn(3, 1, 5, 7), -1).expand(3, 4, 5, 7)
    assert float(head_cosines(maps, None)) == pytest.approx(1.0, abs=1e-6)
    disjoint = torch.zeros(2, 2, 3, 4)
    disjoint[:, 0, :, :2], disjoint[:, 1, :, 2:] = 0.5, 0.5
    assert float(head_cosines(disjoint, None)) == pytest.approx(0.0, abs=1e-6)
    # a padded query row where the heads differ does not count
    padded = maps[:1, :2].clone()
    padded[0, 1, -1] = torch.tensor([1.0] + [0.0] * 6)
    mask = torch.ones(1, 5)
    mask[0, -1] = 0
    assert float(head_cosines(padded, mask)) == pytest.approx(1.0, abs=1e-6)
    assert float(head_cosines(padded, None)) < 0.99
    assert head_cosines(maps[:, :1], None) is None, "one head: no pair"


def test_teacher_head_similarity_is_per_site_and_layer(teacher, dm):
    sim = teacher_head_similarity(teacher, fixed_batch(dm))
    assert set(sim) == set(teacher.sites)
    for site, per_layer in sim.items():
        assert len(per_layer) == teacher.num_layers(site)
        assert all(0.0 <= c <= 1.0 + 1e-6 for c in per_layer)


def test_the_attention_term_is_measured_before_gamma(teacher, dm):
    """A gain must not be a stronger attention term in disguise: the measure ignores γ."""
    batch = fixed_batch(dm)
    one = measure(_module(teacher, OneToOne(), gamma=1.0), batch)
    ten = measure(_module(teacher, OneToOne(), gamma=10.0), batch)
    assert one["attn_loss"] > 0 and one["attn_loss"] == pytest.approx(ten["attn_loss"], rel=1e-6)
    module = _module(teacher, OneToOne())
    module.distillation.eval()
    with torch.no_grad():
        want = module.distillation(batch)["loss_attn"]
    assert one["attn_loss"] == pytest.approx(float(want), rel=1e-6)
    assert "weight_spread" not in one, "one-to-one has no head weights"


def test_a_run_records_start_and_end_for_every_method(tmp_path, teacher, dm):
    batch = fixed_batch(dm, examples=3)
    for attention in (AMAD(), None):
        cb = DiagnosticsCallback(batch)
        fit_trainer(tmp_path, max_steps=3, limit_val_batches=0, callbacks=[cb]).fit(
            _module(teacher, attention), datamodule=dm
        )
        r = cb.result
        assert r["examples"] == 3
        assert 0.0 <= r["head_diversity"]["start"] <= 1.0 and 0.0 <= r["head_diversity"]["end"] <= 1.0
        assert r["head_diversity"]["start"] != r["head_diversity"]["end"], "measured after training too"
        if attention is None:  # gt / kd: no attention term, no head weights, but a head diversity
            assert r["attn_loss"] == {"start": None, "end": None} and "weight_spread" not in r
        else:
            assert all(math.isfinite(v) and v > 0 for v in r["attn_loss"].values())
            assert r["weight_spread"]["uniform"] == 0.5 and 0.0 <= r["weight_spread"]["mean_row_range"] <= 1.0


def test_diversity_over_every_site_matches_the_head_alignment_definition(teacher, dm):
    """One definition: the distilled sites of AMAD (all of them by default) give the snapshots' number."""
    module = _module(teacher, AMAD())
    batch = fixed_batch(dm)
    assert measure(module, batch)["head_diversity"] == pytest.approx(student_head_diversity(module, batch))


def test_the_diagnostics_do_not_change_training(tmp_path, teacher, dm):
    """Taken on a batch drawn before the run, without gradients or dropout: the same student bit for bit."""
    states = []
    for callbacks in ([DiagnosticsCallback(fixed_batch(dm))], []):
        module = _module(teacher, AMAD())
        fit_trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=callbacks).fit(module, datamodule=dm)
        states.append(module.student.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_the_teacher_similarity_is_kept_once_per_teacher_and_a_damaged_copy_is_recomputed(tmp_path, teacher, dm):
    from amad.compare.run import teacher_head_similarity_cached

    batch = fixed_batch(dm)
    record = {"fingerprint": "abc"}
    first = teacher_head_similarity_cached(teacher, record, batch, tmp_path)
    kept = tmp_path / "teacher_heads.json"
    assert kept.is_file() and first == teacher_head_similarity(teacher, batch)
    # kept: read back, not recomputed (a marker value proves it)
    text = kept.read_text()
    site = teacher.sites[0]
    kept.write_text(text.replace(f'"{site}": [', f'"{site}": [0.123, ', 1))
    assert teacher_head_similarity_cached(teacher, record, batch, tmp_path)[site][0] == 0.123
    # another teacher (fingerprint): recomputed
    assert teacher_head_similarity_cached(teacher, {"fingerprint": "xyz"}, batch, tmp_path) == first
    kept.write_text(text[: len(text) // 2])  # torn
    assert teacher_head_similarity_cached(teacher, record, batch, tmp_path) == first
    assert list(tmp_path.glob("teacher_heads.json.corrupt-*"))
