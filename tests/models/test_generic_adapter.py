"""The generic adapter on tiny random transformers models built here (no downloads): BERT, ViT, CLIP vision and
text, a Llama decoder with grouped-query attention (8 query heads, 2 key/value heads) and BART (cross-attention).

Captured maps equal transformers' own eager ``output_attentions``; the ``qk`` path gives the map path's maps,
logits, distillation terms and gradients; 8 -> 2 head students train under every attention method; models
outside the attention interface fail at setup with one line.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as T
from transformers.masking_utils import AttentionMaskInterface
from transformers.modeling_utils import AttentionInterface

from amad.distill import DistillationTask
from amad.losses.methods import A2D, AMAD, SHD, AMADProjection, AttnDistill, HeadMean, MiniLMRelation, OneToOne
from amad.models import GenericAdapter, UnsupportedModelError, build_model, derive_student
from amad.models.attention_inputs import AttentionInputs
from amad.models.capture import FAST_ATTR, QK_SINK_ATTR, SINK_ATTR
from amad.models.generic_attention import GENERIC_ATTN_IMPLEMENTATION, RECORDER_ATTR

F64 = torch.float64
B, L, IMG = 3, 7, 16
SIZES = dict(hidden_size=32, num_attention_heads=8, num_hidden_layers=2, intermediate_size=64)
#: model name -> (expected sites, query heads, key/value heads)
EXPECTED = {
    "bert": (("encoder.self",), 8, 8),
    "vit": (("vision.self",), 8, 8),
    "clip_vision": (("vision.self",), 8, 8),
    "clip_text": (("encoder.self",), 8, 8),
    "llama": (("decoder.self",), 8, 2),
    "bart": (("encoder.self", "decoder.self", "decoder.cross"), 8, 8),
}
MODELS = tuple(EXPECTED)
#: models with a task head (a loss from labels), and so output distillation
HEADED = ("vit", "llama", "bart")


def tiny_model(name: str, **extra) -> torch.nn.Module:
    """A tiny randomly initialised HF model (seeded; sharper attention than the default init, so that
    distillation has something to learn)."""
    torch.manual_seed(0)
    text = dict(SIZES, vocab_size=60, pad_token_id=0, bos_token_id=1, eos_token_id=2, **extra)
    vision = dict(SIZES, image_size=IMG, patch_size=4, **extra)
    if name == "bert":
        return T.BertModel(T.BertConfig(**text))
    if name == "vit":
        return T.ViTForImageClassification(T.ViTConfig(**vision, num_labels=3))
    if name == "clip_vision":
        return T.CLIPVisionModel(T.CLIPVisionConfig(**vision))
    if name == "clip_text":
        return T.CLIPTextModel(T.CLIPTextConfig(**text))
    if name == "llama":
        return T.LlamaForCausalLM(T.LlamaConfig(**text, num_key_value_heads=2))
    if name == "bart":
        cfg = T.BartConfig(
            vocab_size=60, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=8,
            decoder_attention_heads=8, encoder_ffn_dim=64, decoder_ffn_dim=64, pad_token_id=0, bos_token_id=1,
            eos_token_id=2, decoder_start_token_id=1, **extra,
        )  # fmt: skip
        return T.BartForConditionalGeneration(cfg)
    raise AssertionError(name)


def tiny_batch(name: str, dtype=torch.float32) -> dict:
    """A padded batch of 3 for ``name`` (rows 1 and 2 padded, right side)."""
    g = torch.Generator().manual_seed(1)
    if name in ("vit", "clip_vision"):
        batch = {"pixel_values": torch.randn(B, 3, IMG, IMG, generator=g, dtype=dtype)}
        return {**batch, "labels": torch.tensor([0, 1, 2])} if name == "vit" else batch
    ids = torch.randint(3, 60, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    batch = {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}
    if name == "llama":
        batch["labels"] = batch["input_ids"].masked_fill(mask == 0, -100)
    if name == "bart":
        labels = torch.randint(3, 60, (B, 5), generator=g)
        labels[1, 3:] = -100
        batch["labels"] = labels
    return batch


@pytest.fixture(scope="module", params=MODELS)
def name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def adapter(name) -> GenericAdapter:
    return GenericAdapter(tiny_model(name)).eval()


def _reference_maps(adapter: GenericAdapter, name: str, batch: dict) -> dict[str, tuple]:
    """transformers' own eager maps (``output_attentions=True``) of a copy of the model."""
    ref = copy.deepcopy(adapter.model)
    ref.set_attn_implementation("eager")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if name == "bart":
        inputs["decoder_input_ids"] = ref.prepare_decoder_input_ids_from_labels(batch["labels"].clamp_min(0))
        inputs["decoder_attention_mask"] = (batch["labels"] != -100).long()
    with torch.no_grad():
        out = ref(**inputs, output_attentions=True)
    if name == "bart":
        return {"encoder.self": out.encoder_attentions, "decoder.self": out.decoder_attentions,
                "decoder.cross": out.cross_attentions}  # fmt: skip
    return {adapter.sites[0]: out.attentions}


def test_sites_heads_and_layers_are_found(adapter, name):
    sites, hq, hkv = EXPECTED[name]
    assert adapter.sites == sites
    for site in sites:
        assert adapter.num_layers(site) == 2
        assert (adapter.num_heads(site), adapter.num_kv_heads(site)) == (hq, hkv)
        assert [adapter.kv_head(site, h) for h in range(hq)] == [h * hkv // hq for h in range(hq)]
    assert set(adapter.unpadded_sites) == ({"vision.self"} if name in ("vit", "clip_vision") else set())


def test_maps_equal_transformers_eager_output_attentions(adapter, name):
    batch = tiny_batch(name)
    if name == "bart":  # the decoder inputs the adapter makes from the labels are BART's own
        labels = batch["labels"]
        dec = adapter.model.prepare_decoder_input_ids_from_labels(labels.clamp_min(0))
        batch = {**batch, "decoder_input_ids": dec, "decoder_attention_mask": (labels != -100).long()}
    with torch.no_grad():
        out = adapter(batch)
    ref = _reference_maps(adapter, name, batch)
    assert set(out.attentions) == set(adapter.sites)
    for site in adapter.sites:
        assert len(out.attentions[site]) == len(ref[site]) == 2
        for layer, (got, want) in enumerate(zip(out.attentions[site], ref[site], strict=True)):
            assert got.shape == want.shape and got.shape[1] == adapter.num_heads(site)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=f"{name} {site} layer {layer}")
        qm, km = out.query_masks[site], out.key_masks[site]
        assert qm.shape == out.attentions[site][0].shape[::2] and km.shape[1] == out.attentions[site][0].shape[-1]
        # padded keys take no probability: the masks say where the padding is
        padded_keys = out.attentions[site][0] * ~km[:, None, None, :]
        assert padded_keys.max() < 1e-6
        assert bool(km.all()) == (name in ("vit", "clip_vision"))  # the batches pad every text sequence
    if "attention_mask" in batch and name != "bart":
        assert torch.equal(out.query_masks[adapter.sites[0]], batch["attention_mask"].bool())


def test_qk_inputs_rebuild_the_maps_and_sdpa_gives_the_eager_outputs(name):
    model = GenericAdapter(tiny_model(name).to(F64)).eval()
    batch = tiny_batch(name, F64)
    eager = model(batch)
    model.zero_grad()
    eager.logits.square().mean().backward()
    g_eager = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    fast = model(batch, attention_source="qk")
    model.zero_grad()
    fast.logits.square().mean().backward()
    assert fast.attentions == {} and set(fast.attention_inputs) == set(model.sites)
    torch.testing.assert_close(fast.logits, eager.logits, rtol=0, atol=1e-12)
    for n, g in g_eager.items():
        torch.testing.assert_close(dict(model.named_parameters())[n].grad, g, rtol=0, atol=1e-12, msg=n)
    for site in model.sites:
        for layer, (x, a) in enumerate(zip(fast.attention_inputs[site], eager.attentions[site], strict=True)):
            assert isinstance(x, AttentionInputs) and x.num_heads == model.num_heads(site)
            torch.testing.assert_close(x.maps(), a.detach(), rtol=0, atol=1e-13, msg=f"{site} layer {layer}")


def test_grouped_query_heads_share_their_key_value_head():
    model = GenericAdapter(tiny_model("llama")).eval()
    with torch.no_grad():
        out = model(tiny_batch("llama"), qkv_sites=["decoder.self"], attention_source="qk")
    k = out.attention_inputs["decoder.self"][0].k  # (B, 8, K, d): query head h reads kv head h // 4
    for h in range(8):
        assert torch.equal(k[:, h], k[:, 4 * (h // 4)])
    assert not torch.equal(k[:, 0], k[:, 4])
    q, kp, v = out.qkv["decoder.self"][0]  # projections widened to the query heads, kv head j for heads 4j..4j+3
    assert q.shape == kp.shape == v.shape == (B, L, 32)
    assert torch.equal(kp.unflatten(-1, (8, 4))[:, :, 3], kp.unflatten(-1, (8, 4))[:, :, 0])


def test_layers_and_sites_selection():
    model = GenericAdapter(tiny_model("bart")).eval()
    with torch.no_grad():
        out = model(tiny_batch("bart"), sites=["decoder.cross"], layers={"decoder.cross": [1]})
    assert list(out.attentions) == ["decoder.cross"]
    assert out.attentions["decoder.cross"][0] is None and out.attentions["decoder.cross"][1] is not None
    assert torch.equal(out.key_masks["decoder.cross"], tiny_batch("bart")["attention_mask"].bool())
    assert torch.equal(out.query_masks["decoder.cross"], tiny_batch("bart")["labels"] != -100)
    with pytest.raises(ValueError, match=r"out of range for site 'decoder\.cross'"):
        model(tiny_batch("bart"), sites=["decoder.cross"], layers={"decoder.cross": [2]})
    with pytest.raises(ValueError, match="qkv_sites must be self-attention sites"):
        model(tiny_batch("bart"), qkv_sites=["decoder.cross"])


def test_routing_leaves_nothing_behind():
    """The model runs its own attention outside the adapter's forwards; no registration survives a forward."""
    model = GenericAdapter(tiny_model("llama")).eval()
    batch = tiny_batch("llama")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        before = model.model(**inputs).logits
        model(batch, qkv_sites=["decoder.self"])
        model(batch, attention_source="qk")
        after = model.model(**inputs).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert model.model.config._attn_implementation == "sdpa"
    assert GENERIC_ATTN_IMPLEMENTATION not in AttentionInterface._global_mapping
    assert GENERIC_ATTN_IMPLEMENTATION not in AttentionMaskInterface._global_mapping
    for m in model.modules():
        assert not any(hasattr(m, a) for a in (SINK_ATTR, QK_SINK_ATTR, FAST_ATTR, RECORDER_ATTR))
    with pytest.raises(RuntimeError):  # a mask of the wrong length fails inside the forward
        model({**batch, "attention_mask": batch["attention_mask"][:, :4]})
    assert GENERIC_ATTN_IMPLEMENTATION not in AttentionInterface._global_mapping  # also after an error
    assert model.model.config._attn_implementation == "sdpa"


def test_models_outside_the_interface_fail_at_setup_with_one_line():
    blip = build_model("blip-vqa", "tiny").model
    with pytest.raises(UnsupportedModelError) as err:
        GenericAdapter(blip)
    msg = str(err.value)
    assert "\n" not in msg and "BlipForQuestionAnswering" in msg and "attention interface" in msg
    t5 = T.T5ForConditionalGeneration(T.T5Config(vocab_size=60, d_model=32, d_kv=4, d_ff=64, num_layers=1, num_heads=8))
    with pytest.raises(UnsupportedModelError, match=r"cannot serve T5ForConditionalGeneration: .* relative position"):
        GenericAdapter(t5)
    cfg = T.Gemma2Config(**SIZES, vocab_size=60, num_key_value_heads=2, head_dim=4)
    with pytest.raises(UnsupportedModelError, match="cannot serve Gemma2ForCausalLM: soft-capped attention logits"):
        GenericAdapter(T.Gemma2ForCausalLM(cfg))


def test_a_module_run_twice_per_forward_is_refused():
    """ALBERT shares one layer across its depth: one map per module and forward cannot hold it."""
    albert = GenericAdapter(T.AlbertModel(T.AlbertConfig(**SIZES, embedding_size=16, vocab_size=60)))
    assert albert.num_layers(albert.sites[0]) == 1
    with pytest.raises(RuntimeError, match=r"ran twice in one forward"):
        albert(tiny_batch("bert"))
    assert GENERIC_ATTN_IMPLEMENTATION not in AttentionInterface._global_mapping


def test_derive_student_from_the_teacher_config():
    teacher = GenericAdapter(tiny_model("llama"))
    student = derive_student(teacher, num_heads=2, num_layers=1, seed=0)
    cfg = student.model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.num_hidden_layers) == (2, 1, 16, 1)
    assert (student.num_heads("decoder.self"), student.num_kv_heads("decoder.self")) == (2, 1)
    assert teacher.model.config.num_attention_heads == 8  # the teacher's config is untouched
    report = student.init_report
    assert report["layer_maps"] == {"model.model.layers": [1]}
    assert (
        "model.model.layers.0.self_attn.q_proj.weight <- model.model.layers.1.self_attn.q_proj.weight"
        in report["copied"]
    )
    assert "model.model.layers.0.self_attn.k_proj.weight" in report["skipped"]  # 2 kv heads of 4 vs 1 of 16
    assert 0.5 < report["copied_fraction"] < 1
    narrow = derive_student(teacher, num_heads=4, num_key_value_heads=4, hidden_size=16, init="random", seed=0)
    c = narrow.model.config
    assert (c.num_key_value_heads, c.head_dim, c.intermediate_size) == (4, 4, 32) and narrow.init_report == {
        "init": "random"
    }
    vit = derive_student(GenericAdapter(tiny_model("vit")), num_heads=2)
    assert vit.num_heads("vision.self") == 2 and vit.init_report["copied_fraction"] == 1.0  # same shapes at width 32
    with pytest.raises(ValueError, match="LlamaForCausalLM's config has no field 'num_experts_per_tok'"):
        derive_student(teacher, num_heads=2, num_experts_per_tok=2)


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


def _task_pair(name, method, teacher, student):
    kw = {} if name in HEADED else {"alpha": 0.0, "beta": 0.0}  # a model without a head has no task
    maps = DistillationTask(teacher, student, method, **kw).to(F64).eval()
    qk = DistillationTask(teacher, student, method, attention_source="qk", **kw).to(F64).eval()
    qk.attn.load_state_dict(maps.attn.state_dict())
    return maps, qk


def _terms_and_grads(task, batch):
    task.zero_grad(set_to_none=True)
    terms = task(batch)
    terms["loss"].backward()
    params = [*task.student.named_parameters(), *(("attn." + n, p) for n, p in task.attn.named_parameters())]
    return {k: v.detach() for k, v in terms.items()}, {n: p.grad.clone() for n, p in params if p.grad is not None}


@pytest.mark.parametrize("model_name", ["bert", "llama", "bart"])
def test_qk_path_gives_the_map_path_loss_and_gradients(model_name):
    """Per method, float64: the qk distillation terms and student gradients are the map path's."""
    teacher = GenericAdapter(tiny_model(model_name, initializer_range=0.5).to(F64))
    student = derive_student(teacher, num_heads=2, init="random", seed=1)
    batch = tiny_batch(model_name, F64)
    for label, method in METHODS.items():
        maps, qk = _task_pair(model_name, method, teacher, student)
        t_maps, g_maps = _terms_and_grads(maps, batch)
        t_qk, g_qk = _terms_and_grads(qk, batch)
        assert t_maps.keys() == t_qk.keys() and "loss_attn" in t_qk
        for k in t_maps:
            torch.testing.assert_close(t_qk[k], t_maps[k], rtol=0, atol=1e-12, msg=f"{label} {k}")
        assert g_maps.keys() == g_qk.keys()
        for n, g in g_maps.items():
            torch.testing.assert_close(g_qk[n], g, rtol=0, atol=1e-10, msg=f"{label} {n}")


ALL_METHODS = {**METHODS, "minilm_relation": MiniLMRelation(), "amad_proj": AMADProjection()}


@pytest.mark.parametrize("model_name", ["llama", "vit", "clip_text"])
def test_eight_head_teacher_trains_two_head_students_under_every_method(model_name):
    teacher = GenericAdapter(tiny_model(model_name, initializer_range=0.5))
    batch = tiny_batch(model_name)
    for label, method in ALL_METHODS.items():
        student = derive_student(teacher, num_heads=2, init="random", seed=1)
        task = DistillationTask(teacher, student, method, alpha=0.0, beta=0.0)
        opt = torch.optim.Adam([p for p in task.parameters() if p.requires_grad], lr=3e-3)
        losses = []
        for _ in range(5):
            loss = task(batch)["loss_attn"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert all(torch.isfinite(torch.tensor(losses))), (label, losses)
        assert losses[-1] < losses[0], (label, losses)
