"""``DistillationTask(..., attention_source="qk")``: the same loss terms and student gradients as the map
path, without a map-sized tensor kept for the backward or built by the attention loss.

Float64 tiny BLIP-VQA, BLIP-caption and VL-T5 teachers, half-head students derived from them
(``init="teacher"``), padded batches (:func:`amad.models.random_batch`), eval mode (no dropout: both
sources see the same maps).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import amad.distill.attention as attention_module
import amad.models.attention_inputs as chunk_policy
from amad.bench._batches import random_batch
from amad.distill import AttentionDistiller, DistillationTask
from amad.lit import DistillationModule
from amad.losses.methods import A2D, AMAD, SHD, AMADProjection, AttnDistill, HeadMean, MiniLMRelation, OneToOne
from amad.models import build_model, derive_student
from amad.models import fast_attention as fa

F64 = torch.float64
FAMILIES = ("blip-vqa", "blip-caption", "vlt5")
METHODS = {
    "amad-kl": AMAD(),
    "amad-l2": AMAD(variant="l2"),
    "amad-token": AMAD(variant="token"),
    "one_to_one": OneToOne(),
    "head_mean": HeadMean(),
    "shd": SHD(),
    "a2d": A2D(),
    "attn_distill": AttnDistill(),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def f64(batch):
    return {k: v.to(F64) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}


_MODELS: dict[str, tuple] = {}


def models(family: str):
    """(float64 teacher, its half-head student, a padded float64 batch), built once per family."""
    if family not in _MODELS:
        teacher = build_model(family, "tiny", seed=0).to(F64)
        student = derive_student(teacher, num_heads=2, init="teacher").to(F64)
        _MODELS[family] = teacher, student, f64(random_batch(family, 4, model=teacher, seed=1))
    return _MODELS[family]


def _run(task, batch):
    """Unweighted terms and the gradients of the student and of the distiller's parameters."""
    task.zero_grad(set_to_none=True)
    terms = task(batch)
    terms["loss"].backward()
    params = [*task.student.named_parameters(), *(("attn." + n, p) for n, p in task.attn.named_parameters())]
    return {k: v.detach() for k, v in terms.items()}, {n: p.grad.clone() for n, p in params if p.grad is not None}


def _pair(family, method, **kwargs):
    """The same task under both sources (A2D aligners shared by value)."""
    teacher, student, batch = models(family)
    maps = DistillationTask(teacher, student, method, **kwargs).to(F64).eval()
    qk = DistillationTask(teacher, student, method, attention_source="qk", **kwargs).to(F64).eval()
    qk.attn.load_state_dict(maps.attn.state_dict())
    return maps, qk, batch


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("family", FAMILIES)
def test_qk_gives_the_loss_terms_and_gradients_of_maps(monkeypatch, family, name):
    """Per pair, and with the pairs of a site stacked along the batch (the small-map speed path, as the map
    path's): both give the map path's terms and gradients."""
    maps, qk, batch = _pair(family, METHODS[name])
    t_maps, g_maps = _run(maps, batch)
    calls = []
    real = attention_module.qk_attention_loss
    monkeypatch.setattr(attention_module, "qk_attention_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    t_stacked, g_stacked = _run(qk, batch)
    n_stacked = len(calls)
    monkeypatch.setattr(AttentionDistiller, "STACK_MAX_NUMEL", 0)
    t_qk, g_qk = _run(qk, batch)
    n_pairs = sum(len(v) for v in qk.attn.layer_maps.values())
    assert len(calls) - n_stacked == n_pairs
    assert n_stacked == (n_pairs if name == "a2d" else len(qk.attn.layer_maps))  # A2D: an aligner per pair
    assert t_maps.keys() == t_qk.keys() and "loss_attn" in t_qk
    assert {k for k in t_qk if k.startswith("loss_attn/")} == {f"loss_attn/{s}" for s in qk.student.sites}
    for terms, grads in ((t_qk, g_qk), (t_stacked, g_stacked)):
        for k in t_maps:
            torch.testing.assert_close(terms[k], t_maps[k], rtol=0, atol=1e-12, msg=k)
        assert g_maps.keys() == grads.keys()
        assert any(n.startswith("attn.") for n in grads) == (name == "a2d")  # the aligners learn under qk too
        for n, g in g_maps.items():
            torch.testing.assert_close(grads[n], g, rtol=0, atol=1e-10, msg=n)


@pytest.mark.parametrize("family", ["blip-vqa", "vlt5"])
def test_head_alignment_is_the_same_under_qk(family):
    maps, qk, batch = _pair(family, AMAD())
    w_maps, w_qk = maps.head_alignment(batch), qk.head_alignment(batch)
    assert w_maps.keys() == w_qk.keys() and w_qk
    for k in w_maps:
        torch.testing.assert_close(w_qk[k], w_maps[k], rtol=0, atol=1e-12, msg=k)


def test_minilm_relation_keeps_its_qkv_path_under_qk():
    maps, qk, batch = _pair("blip-vqa", MiniLMRelation())
    assert qk.capture()["attention_source"] == "qk" and qk.capture()["sites"] == ()
    t_maps, g_maps = _run(maps, batch)
    t_qk, g_qk = _run(qk, batch)
    for k in t_maps:
        torch.testing.assert_close(t_qk[k], t_maps[k], rtol=0, atol=1e-12, msg=k)
    for n, g in g_maps.items():
        torch.testing.assert_close(g_qk[n], g, rtol=0, atol=1e-10, msg=n)


def test_methods_qk_cannot_serve_are_refused_at_construction():
    teacher, student, _ = models("blip-vqa")
    with pytest.raises(ValueError, match="cannot serve method 'amad_proj'"):
        DistillationTask(teacher, student, AMADProjection(), attention_source="qk")
    grids = AMAD(teacher_grid=(4, 4), student_grid=(2, 2))
    with pytest.raises(ValueError, match="cannot resize the teacher's maps"):
        DistillationTask(teacher, student, grids, sites=["vision.self"], attention_source="qk")
    with pytest.raises(ValueError, match=r"attention_source must be one of \['maps', 'qk'\]"):
        DistillationTask(teacher, student, AMAD(), attention_source="sdpa")
    DistillationTask(teacher, student, AMADProjection())  # fine under maps


def test_a_teacher_output_without_queries_and_keys_is_an_error_naming_the_site():
    maps, qk, batch = _pair("blip-vqa", AMAD())
    with torch.no_grad():
        t_out = maps.teacher_outputs(batch)  # captured from maps, e.g. replayed from an old cache
    with pytest.raises(ValueError, match=r"teacher's output has no queries and keys for site 'vision\.self'"):
        qk(batch, t_out)


def test_no_attention_still_runs_sdpa():
    teacher, student, batch = models("vlt5")
    task = DistillationTask(teacher, student, None, attention_source="qk")
    assert task.capture() == {"sites": (), "qkv_sites": (), "attention_source": "qk"}
    assert set(task(batch)) == {"loss", "loss_task", "loss_kd"}


def test_distillation_module_takes_the_option():
    teacher = build_model("blip-vqa", "tiny", seed=0)
    batch = random_batch("blip-vqa", 2, model=teacher, seed=1)
    module = DistillationModule(teacher=teacher, student={"num_heads": 2}, attention_source="qk")
    assert module.distillation.attention_source == "qk" and module.hparams.attention_source == "qk"
    assert torch.isfinite(module.distillation_losses(batch)["loss"])


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))],
)
@pytest.mark.parametrize("family", ["blip-vqa", "vlt5"])
def test_bf16_autocast_step_under_qk(family, device):
    """The benches' precision on accelerators: bf16 autocast (fp32 weights). SDPA takes the model's fp32
    additive mask cast to bf16, T5's biased attention runs in bf16 and rebuilds in fp32; the qk terms stay
    within bf16 rounding of the map path's, and the gradients are finite."""
    teacher = build_model(family, "tiny", seed=0).to(device)
    student = derive_student(teacher, num_heads=2, init="teacher")
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in random_batch(family, 4, model=teacher).items()}
    terms = {}
    for source in ("maps", "qk"):
        task = DistillationTask(teacher, student, AMAD(), attention_source=source).eval()
        task.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16):
            terms[source] = task(batch)
        terms[source]["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)
    assert terms["qk"]["loss_attn"].dtype == torch.float32
    for k in terms["maps"]:
        torch.testing.assert_close(terms["qk"][k], terms["maps"][k], rtol=3e-2, atol=3e-3, msg=k)


# ------------------------------------------------------------------------------------------- memory


class _Sizes(TorchDispatchMode):
    """Every tensor an operator returns: its shape (what the forward and backward build)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.shapes += [tuple(x.shape) for x in tree_flatten(out)[0] if isinstance(x, torch.Tensor)]
        return out


def _map_sized(shapes, task, batch):
    """The shapes among ``shapes`` as large as a distilled layer's map: rank >= 3, ending in (Q, K) of a
    distilled site, and at least B·min(Ht, Hs)·Q·K elements."""
    with torch.no_grad():
        out = task.student(batch, sites=task.attn.capture_sites()[0])
    B = batch["labels"].shape[0]
    grids = {}
    for site in task.attn.layer_maps:
        q, k = out.query_masks[site].shape[1], out.key_masks[site].shape[1]
        grids[q, k] = min(grids.get((q, k), 1 << 30), B * task.student.num_heads(site) * q * k)
    return [s for s in shapes if len(s) >= 3 and s[-2:] in grids and torch.Size(s).numel() >= grids[s[-2:]]]


@pytest.mark.parametrize("method", ["amad-kl", "one_to_one"])
@pytest.mark.parametrize("family", ["blip-vqa", "vlt5"])
def test_qk_step_keeps_and_builds_no_map_sized_tensor(monkeypatch, family, method):
    """A whole training step (teacher forward, student forward, every loss term, backward) under qk: no
    tensor the size of a distilled layer's B·H·Q·K map is saved for the backward or returned by any
    operator, with chunks of one query row (losses and T5's position-bias attention) and no stacking of
    layer pairs: the regime of large maps (small maps are stacked, and then one site's (B, 1, Q, K) mask is
    repeated for its layers). The same step under maps has such tensors (the check sees them). Training
    mode, attention dropout 0: SDPA's fused CPU kernel (with dropout PyTorch runs its math backend)."""
    kw = {"dropout": 0.0} if family == "vlt5" else {}
    teacher = build_model(family, "tiny", seed=0, image_size=96, **kw)
    student = derive_student(teacher, num_heads=2, init="teacher")
    # 36 patches + [CLS], 12 source tokens, 5 targets: no (Q, K) of a site is the 6 x 6 patch grid
    batch = random_batch(family, 4, model=teacher, seed=1, source_len=12, target_len=5)
    found = {}
    for source in ("maps", "qk"):
        task = DistillationTask(teacher, student, METHODS[method], attention_source=source).train()
        monkeypatch.setattr(chunk_policy, "DEFAULT_CHUNK_ELEMENTS", 1)  # one query row per chunk
        monkeypatch.setattr(fa, "ROW_CHUNK_ELEMENTS", 1)
        monkeypatch.setattr(AttentionDistiller, "STACK_MAX_NUMEL", 0)
        saved: list[tuple[int, ...]] = []

        def pack(x, saved=saved):
            saved.append(tuple(x.shape))
            return x

        with _Sizes() as built:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
                loss = task(batch)["loss"]
            loss.backward()
        assert torch.isfinite(loss)
        found[source] = (_map_sized(saved, task, batch), _map_sized(built.shapes, task, batch))
    assert found["maps"][0] and found["maps"][1], "the check must see the map path's maps"
    assert found["qk"] == ([], []), found["qk"]
