"""derive_student: smaller students of every family, teacher initialisation, gradients from maps."""

from __future__ import annotations

import pytest
import torch

from amad.bench._batches import random_batch
from amad.models import build_model, derive_student
from amad.models.student import _LAYER_KEY


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_student_fewer_heads_and_layers_runs_and_matches_teacher_shapes(tiny, family):
    teacher, batch = tiny
    student = derive_student(teacher, num_heads=2, num_layers=1, hidden_size=32, seed=0)
    assert student.family == teacher.family and student.sites == teacher.sites
    assert student.tokenizer is teacher.tokenizer
    assert n_params(student) < n_params(teacher) / 2
    with torch.no_grad():
        t_out, s_out = teacher(batch), student(batch)
    assert s_out.logits.shape == t_out.logits.shape
    for site in teacher.sites:
        assert student.num_heads(site) == 2 and student.num_layers(site) == 1
        t_map, s_map = t_out.attentions[site][0], s_out.attentions[site][0]
        assert s_map.shape[1] == 2 and t_map.shape[1] == teacher.num_heads(site)
        assert s_map.shape[0] == t_map.shape[0]
        assert s_map.shape[2:] == t_map.shape[2:], f"{site}: Q and K must match"
        assert torch.equal(s_out.query_masks[site], t_out.query_masks[site])


def test_attention_loss_reaches_student_not_teacher(tiny, family):
    """An MSE between head-averaged maps of every site back-propagates into the student's attention."""
    teacher, batch = tiny
    student = derive_student(teacher, num_heads=2, num_layers=1, seed=0).train()
    with torch.no_grad():
        t_out = teacher(batch)
    s_out = student(batch)
    loss = sum(
        ((s[0].mean(1) - t[-1].mean(1)) ** 2).sum()
        for s, t in ((s_out.attentions[k], t_out.attentions[k]) for k in student.sites)
    )
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    for site in student.sites:
        point = student.attention_points(site)[0]
        q_proj = point.q if point.q is not None else point.qkv
        assert q_proj.weight.grad is not None and q_proj.weight.grad.abs().sum() > 0, site


def test_teacher_init_copies_mapped_layers(family):
    teacher = build_model(family, "tiny", seed=0, num_layers=4)
    student = derive_student(teacher, num_heads=2, num_layers=2, init="teacher")
    report = student.init_report
    assert report["init"] == "teacher"
    assert report["layer_maps"] and all(m == [1, 3] for m in report["layer_maps"].values())
    assert report["copied_fraction"] > 0.9  # same hidden size: only head-shaped tensors differ
    t_state, s_state = teacher.state_dict(), student.state_dict()
    # student layer 1 <- teacher layer 3, embeddings copied as is
    for key in s_state:
        m = _LAYER_KEY.match(key)
        if m and m.group(2) == "1" and s_state[key].dim() == 2:
            torch.testing.assert_close(s_state[key], t_state[f"{m.group(1)}.3.{m.group(3)}"])
    emb = next(k for k in s_state if "embed" in k and k.endswith("weight") and s_state[k].dim() == 2)
    torch.testing.assert_close(s_state[emb], t_state[emb])


def test_layer_map_last_and_random_init(family):
    teacher = build_model(family, "tiny", seed=0, num_layers=3)
    last = derive_student(teacher, num_layers=1, layer_map="last")
    assert all(m == [2] for m in last.init_report["layer_maps"].values())
    rand = derive_student(teacher, num_layers=1, init="random", seed=1)
    assert rand.init_report == {"init": "random"}
    with pytest.raises(ValueError, match="init must be"):
        derive_student(teacher, init="copy")


def test_smaller_hidden_scales_intermediate_and_reports_skips():
    teacher = build_model("blip-vqa", "tiny", seed=0)  # hidden 64, intermediate 128
    with pytest.warns(UserWarning, match=r"init='teacher' copied only \d+ %"):  # never silently random
        student = derive_student(teacher, hidden_size=32)
    cfg = student.model.config
    assert cfg.vision_config.intermediate_size == 64 and cfg.text_config.intermediate_size == 64
    assert cfg.text_config.encoder_hidden_size == 32
    assert student.init_report["skipped"] and student.init_report["copied_fraction"] < 0.1


def test_blip_heads_do_not_change_parameter_count():
    teacher = build_model("blip-vqa", "tiny", seed=0)
    assert n_params(derive_student(teacher, num_heads=2)) == n_params(teacher)


def test_student_forward_and_step_on_real_batch_sizes(family):
    teacher = build_model(family, "tiny", seed=0)
    student = derive_student(teacher, num_heads=2, num_layers=1, hidden_size=32)
    batch = random_batch(family, 3, model=student, seed=5)
    out = student(batch, sites=())
    out.loss.backward()
    unused = [n for n, p in student.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert unused == []
