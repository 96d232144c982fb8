"""Replaying cached teacher outputs trains the student exactly as the live teacher does."""

from __future__ import annotations

import copy

import pytest
import torch

from amad.data import EasyVQADataModule, ShapesCaptionDataModule
from amad.distill import DistillationTask
from amad.distill.cache import TeacherCache
from amad.losses import AMAD, HeadMean, MiniLMRelation, OneToOne, attention_method
from amad.models import build_model, derive_student


def _setup(dm, family):
    torch.manual_seed(0)
    teacher = build_model(family, preset="tiny", tokenizer=dm.tokenizer).eval()
    dm.setup("fit")
    return teacher


def _terms_and_grads(task, batch, cache=None):
    task.student.zero_grad(set_to_none=True)
    task.teacher_cache = cache  # an explicit input of the task: replayed instead of the teacher's forward
    terms = task(batch)
    terms["loss"].backward()
    grads = {n: p.grad.clone() for n, p in task.student.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in terms.items()}, grads


@pytest.mark.parametrize(
    ("dm_cls", "family", "method", "budget"),
    [
        (EasyVQADataModule, "blip-vqa", "amad", None),
        (EasyVQADataModule, "blip-vqa", "amad", 1),  # a 1-byte budget: memory-mapped files
        (EasyVQADataModule, "blip-vqa", "one_to_one", None),
        (EasyVQADataModule, "vlt5", "amad", None),
        (ShapesCaptionDataModule, "blip-caption", "shd", None),
        (EasyVQADataModule, "blip-vqa", None, None),  # output KD only
    ],
)
def test_replayed_outputs_give_the_live_losses_and_gradients(dm_cls, family, method, budget, tmp_path):
    dm = dm_cls(subset=24, batch_size=8, text_prefix="vqa:" if family == "vlt5" else "")
    teacher = _setup(dm, family)
    student = derive_student(teacher, num_heads=2, num_layers=1, init="random", seed=1)
    task = DistillationTask(teacher, student, None if method is None else attention_method(method))
    task.student.eval()  # no dropout: both passes see the same student
    layers = task.attn.teacher_layers() if method else {}
    # the cache is filled in other batches (another order, size and padding) than the training batches
    fill = torch.utils.data.DataLoader(dm.datasets["train"], batch_size=5, collate_fn=dm.collator())
    cache = TeacherCache(task.teacher, layers, memory_budget=budget, folder=tmp_path).fill(fill)
    assert len(cache) == 24 and cache.nbytes > 0
    assert cache.memory_mapped == (budget is not None)
    files = list(tmp_path.glob("cache-*/*.bin"))
    assert len(files) == (len(cache.arrays) if budget else 0), "one file per array, older sizes removed"
    for batch in dm.train_dataloader():
        live_terms, live_grads = _terms_and_grads(task, batch)
        terms, grads = _terms_and_grads(task, batch, cache)
        assert terms.keys() == live_terms.keys()
        for k in terms:
            torch.testing.assert_close(terms[k], live_terms[k], rtol=1e-5, atol=1e-6)
        for n in live_grads:
            torch.testing.assert_close(grads[n], live_grads[n], rtol=1e-4, atol=1e-6)


def test_what_a_cache_serves():
    dm = EasyVQADataModule(subset=8, batch_size=8)
    teacher = _setup(dm, "blip-vqa")
    student = derive_student(teacher, num_heads=2, num_layers=1, init="random")
    amad = DistillationTask(teacher, student, AMAD()).attn
    cache = TeacherCache(teacher, amad.teacher_layers())
    assert cache.serves(*amad.capture_sites(), amad.teacher_layers())
    head_mean = DistillationTask(teacher, copy.deepcopy(student), HeadMean(), sites=["text.self"]).attn
    assert cache.serves(*head_mean.capture_sites(), head_mean.teacher_layers())
    minilm = DistillationTask(teacher, copy.deepcopy(student), MiniLMRelation()).attn
    assert not cache.serves(*minilm.capture_sites(), minilm.teacher_layers()), "relations need q/k/v: live teacher"
    kd_only = TeacherCache(teacher, {})
    one = DistillationTask(teacher, copy.deepcopy(student), OneToOne()).attn
    assert not kd_only.serves(*one.capture_sites(), one.teacher_layers())
    with pytest.raises(KeyError, match="not in the teacher cache"):
        kd_only.replay({"ids": [12345]}, None)


def test_a_one_to_one_run_replays_only_the_heads_it_reads():
    dm = EasyVQADataModule(subset=8, batch_size=8)
    teacher = _setup(dm, "blip-vqa")
    student = derive_student(teacher, num_heads=2, num_layers=1, init="random")
    one = DistillationTask(teacher, student, OneToOne())
    heads = one.attn.teacher_heads()
    assert heads and set(heads.values()) == {2}
    amad = DistillationTask(teacher, copy.deepcopy(student), AMAD()).attn
    assert amad.teacher_heads() == {site: teacher.num_heads(site) for site in heads}
    loader = torch.utils.data.DataLoader(dm.datasets["train"], batch_size=3, collate_fn=dm.collator())
    cache = TeacherCache(one.teacher, one.attn.teacher_layers()).fill(loader)
    batch = next(iter(dm.train_dataloader()))
    s_out = one.student(batch, **one.capture())
    full, part = cache.replay(batch, s_out), cache.replay(batch, s_out, heads)
    for site, maps in full.attentions.items():
        for m, p in zip(maps, part.attentions[site], strict=True):
            if m is not None:
                assert p.shape == (m.shape[0], 2, *m.shape[2:])
                torch.testing.assert_close(p, m[:, :2], rtol=0, atol=0)


def test_a_memory_mapped_cache_deletes_its_files(tmp_path):
    dm = EasyVQADataModule(subset=8, batch_size=4)
    teacher = _setup(dm, "blip-vqa")
    loader = torch.utils.data.DataLoader(dm.datasets["train"], batch_size=3, collate_fn=dm.collator())
    cache = TeacherCache(teacher, {"text.self": [0]}, memory_budget=1, folder=tmp_path).fill(loader)
    assert cache.memory_mapped and list(tmp_path.glob("cache-*/*.bin"))
    cache.close()
    assert not list(tmp_path.iterdir())


def _vit_teacher():
    from transformers import ViTConfig, ViTForImageClassification

    from amad.models import GenericAdapter

    cfg = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8,
        num_labels=24,
    )  # fmt: skip
    return GenericAdapter(ViTForImageClassification(cfg)).eval()


def _llama_teacher(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    from amad.models import GenericAdapter

    cfg = LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vocab_size=vocab_size, max_position_embeddings=128, pad_token_id=0, bos_token_id=5, eos_token_id=6,
    )  # fmt: skip
    return GenericAdapter(LlamaForCausalLM(cfg)).eval()


@pytest.mark.parametrize("kind", ["vit", "llama"])
@pytest.mark.parametrize("method", ["amad", "one_to_one", None])
def test_any_model_systems_replay_the_live_losses_and_gradients(kind, method, tmp_path, monkeypatch):
    """The any-model examples' DataModules give ids, so `amad compare` caches their teachers too: a
    classifier's (B, C) logits and a causal LM's variable-length texts replay as the live teacher."""
    from amad.data.scene_classes import SceneClassesDataModule
    from amad.data.scene_text import SceneTextDataModule

    monkeypatch.setenv("AMAD_CACHE", str(tmp_path / "pools"))
    torch.manual_seed(0)
    if kind == "vit":
        dm = SceneClassesDataModule(train_size=20, val_size=4, test_size=4, batch_size=6)
        teacher = _vit_teacher()
    else:
        dm = SceneTextDataModule(train_size=20, val_size=4, test_size=4, batch_size=6)
        teacher = _llama_teacher(dm.vocab_size)
    student = derive_student(teacher, num_heads=2, init="random", seed=1)
    task = DistillationTask(teacher, student, None if method is None else attention_method(method))
    task.student.eval()
    layers = task.attn.teacher_layers() if method else {}
    cache = TeacherCache(task.teacher, layers).fill(dm.loader("train", batch_size=7))  # other batches than training's
    assert len(cache) == 20
    for batch in dm.train_dataloader():
        assert batch["ids"].shape == (6,)
        live_terms, live_grads = _terms_and_grads(task, batch)
        terms, grads = _terms_and_grads(task, batch, cache)
        assert terms.keys() == live_terms.keys()
        for k in terms:
            torch.testing.assert_close(terms[k], live_terms[k], rtol=1e-5, atol=1e-6)
        for n in grads:
            torch.testing.assert_close(grads[n], live_grads[n], rtol=1e-4, atol=1e-6)
