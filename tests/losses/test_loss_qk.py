"""qk_attention_loss: every map method's criterion on its maps rebuilt from queries and keys in chunks.

The reference is the map path itself: the same criterion (``build_attention_criterion(method, ...)``) on
the maps ``softmax(q kᵀ·scale + mask + bias)`` built here from the same q/k. Value, weights and gradients (w.r.t.
the student's q, k, position bias and A2D's aligner) must agree within 1e-10 in float64, for chunk sizes
that do and do not divide Q and one chunk larger than Q. A second part checks the memory bound: no
operator ever returns a tensor larger than one chunk's maps of both models, nothing map-sized is saved
for the backward outside the checkpoints, and the live peak stays a few chunks.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import weakref
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import amad.losses.qk as qk_module
from amad.losses import METHODS, AttentionCriterion, AttentionMethod, build_attention_criterion
from amad.losses.blocks import MapBlocks
from amad.losses.qk import qk_attention_loss
from amad.models.attention_inputs import DEFAULT_CHUNK_ELEMENTS, AttentionInputs, default_chunk_size

F64 = torch.float64
MIN = torch.finfo(F64).min


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small operators in many chunks: with two intra-op threads on a shared 2-core machine, OpenMP
    barriers stall whenever another job holds a core (the file then takes ~50 s instead of ~7 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _case(name: str, seed: int = 0):
    """Teacher/student AttentionInputs, query_mask, key_mask, and the list of student tensors with grad.

    * ``cross``: cross-attention (Q = 7 != K = 9), padded keys through an additive (B, 1, 1, K) mask,
      padded query rows, one example without any valid row.
    * ``t5``: self-attention with T5-like position biases (1, H, Q, K) (the student's trainable), a bool
      (B, 1, Q, K) causal + key-padding mask, Ht = 5 -> Hs = 2 (SHD groups of 3 and 2: two merge levels).
    * ``plain``: no mask at all, more student than teacher heads (for the methods that allow it).
    """
    g = torch.Generator().manual_seed(seed)
    B, Ht, Hs, Q, K, d = {"cross": (3, 4, 3, 7, 9, 5), "t5": (2, 5, 2, 8, 8, 4), "plain": (2, 2, 3, 6, 6, 4)}[name]

    def rnd(*shape, grad=False):
        return (torch.randn(*shape, generator=g, dtype=F64) * 1.5).requires_grad_(grad)

    qt, kt = rnd(B, Ht, Q, d), rnd(B, Ht, K, d)
    qs, ks = rnd(B, Hs, Q, d, grad=True), rnd(B, Hs, K, d, grad=True)
    scale = d**-0.5
    if name == "cross":
        qmask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [0] * 7], dtype=torch.bool)
        kmask = torch.tensor([[1] * 9, [1] * 6 + [0] * 3, [1] + [0] * 8], dtype=torch.bool)
        add = torch.zeros(B, 1, 1, K, dtype=F64).masked_fill(~kmask[:, None, None, :], MIN)
        t, s = AttentionInputs(qt, kt, scale, mask=add), AttentionInputs(qs, ks, scale, mask=add)
        grads = [qs, ks]
    elif name == "t5":
        qmask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3], dtype=torch.bool)
        kmask = qmask.clone()
        causal = torch.ones(Q, K, dtype=torch.bool).tril()
        allowed = causal[None, None] & kmask[:, None, None, :]  # (B, 1, Q, K), True = attend
        bt, bs = rnd(1, Ht, Q, K), rnd(1, Hs, Q, K, grad=True)
        t = AttentionInputs(qt, kt, 1.0, mask=allowed, bias=bt)
        s = AttentionInputs(qs, ks, 1.0, mask=allowed, bias=bs)
        grads = [qs, ks, bs]
    else:
        qmask = kmask = None
        t, s = AttentionInputs(qt, kt, scale), AttentionInputs(qs, ks, scale)
        grads = [qs, ks]
    return t, s, qmask, kmask, grads


def _reference_maps(x: AttentionInputs) -> torch.Tensor:
    """The map path's maps, built independently of AttentionInputs.maps."""
    z = x.q @ x.k.transpose(-1, -2) * x.scale
    if x.mask is not None:
        z = z.masked_fill(~x.mask, MIN) if x.mask.dtype == torch.bool else z + x.mask
    if x.bias is not None:
        z = z + x.bias
    return torch.softmax(z, dim=-1)


CONFIGS = [
    ("amad", {}),
    ("amad", {"weight_temperature": 0.5, "eps": 1e-6}),
    ("amad", {"detach_weights": True}),
    ("amad", {"variant": "l2"}),
    ("amad", {"variant": "l2", "weight_temperature": 0.7, "detach_weights": True}),
    ("amad", {"variant": "token"}),
    ("amad", {"variant": "token", "weight_temperature": 2.0, "detach_weights": True}),
    ("one_to_one", {}),
    ("one_to_one", {"row_loss": "mse", "eps": 1e-6}),
    ("head_mean", {}),
    ("head_mean", {"row_loss": "mse"}),
    ("shd", {}),
    ("shd", {"softening_temperature": 0.5, "eps": 1e-6}),
    ("shd", {"merge_granularity": "row", "softening_temperature": 2.0}),
    ("a2d", {}),
    ("a2d", {"teacher_as_logits": False}),
    ("attn_distill", {}),
    ("attn_distill", {"query_index": 0}),
    ("attn_distill", {"query_index": -1, "prob_clamp": None, "aggregation_temperature": 3.0}),
]


def _id(config):
    method, opts = config
    return method + "".join(f"-{k}={v}" for k, v in opts.items())


def _allowed(method: str, Ht: int, Hs: int) -> bool:
    return not (method in ("one_to_one", "shd") and Hs > Ht)


@pytest.mark.parametrize("case", ["cross", "t5", "plain"])
@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_equals_the_map_path(config, case):
    method, opts = config
    t, s, qmask, kmask, grads = _case(case)
    if not _allowed(method, t.num_heads, s.num_heads):
        pytest.skip("the method needs Hs <= Ht")
    crit = build_attention_criterion(method, teacher_heads=t.num_heads, student_heads=s.num_heads, **opts).double()
    if method == "a2d":
        module = crit.aligners[0]
        with torch.no_grad():  # a non-trivial aligner: random kernel and bias
            module.aligner.weight.normal_(generator=torch.Generator().manual_seed(3))
            module.aligner.bias.normal_(generator=torch.Generator().manual_seed(4))
        grads = grads + list(module.parameters())
    want, want_w = crit(_reference_maps(t), _reference_maps(s), query_mask=qmask, key_mask=kmask)
    want_g = torch.autograd.grad(want, grads)
    Q = t.shape[2]
    for chunk in (3, Q + 5):
        loss, weights = qk_attention_loss(crit, t, s, query_mask=qmask, key_mask=kmask, chunk_size=chunk)
        assert loss.dtype == F64 and loss.dim() == 0
        torch.testing.assert_close(loss, want, atol=1e-10, rtol=0)
        if want_w is None:
            assert weights is None
        else:
            assert not weights.requires_grad
            torch.testing.assert_close(weights, want_w.to(F64), atol=1e-10, rtol=0)
        got_g = torch.autograd.grad(loss, grads)
        for g_got, g_want in zip(got_g, want_g, strict=True):
            torch.testing.assert_close(g_got, g_want, atol=1e-10, rtol=0)


@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_the_block_definition_on_whole_maps_is_the_map_path(config):
    """Each criterion's block definition run on whole maps (one block, ``MapBlocks``) gives what its map path
    gives (for AMAD "kl" the fused whole-map kernel against the two-pass hooks): one definition."""
    method, opts = config
    t, s, qmask, kmask, grads = _case("cross")
    crit = build_attention_criterion(method, teacher_heads=t.num_heads, student_heads=s.num_heads, **opts).double()
    tm, sm = _reference_maps(t), _reference_maps(s)
    want, want_w = crit(tm, sm, query_mask=qmask, key_mask=kmask)
    want_g = torch.autograd.grad(want, grads, retain_graph=True)  # the maps' graph serves both
    loss, weights = crit.loss_from_blocks(MapBlocks(tm, sm, qmask, kmask))
    torch.testing.assert_close(loss, want, atol=1e-10, rtol=0)
    if want_w is not None:
        torch.testing.assert_close(weights, want_w, atol=1e-10, rtol=0)
    for g_got, g_want in zip(torch.autograd.grad(loss, grads), want_g, strict=True):
        torch.testing.assert_close(g_got, g_want, atol=1e-10, rtol=0)


def _amad(t, s):
    return build_attention_criterion("amad", teacher_heads=t.num_heads, student_heads=s.num_heads)


def test_default_chunk_size_and_no_grad():
    t, s, qmask, _, _ = _case("cross")
    crit = _amad(t, s)
    want, _ = crit(_reference_maps(t), _reference_maps(s), query_mask=qmask)
    loss, _ = qk_attention_loss(crit, t, s, query_mask=qmask)  # chunk_size=None
    torch.testing.assert_close(loss, want, atol=1e-10, rtol=0)
    with torch.no_grad():
        loss, _ = qk_attention_loss(crit, t, s, query_mask=qmask, chunk_size=2)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, want.detach(), atol=1e-10, rtol=0)


def test_default_chunks_are_balanced_and_bounded():
    assert default_chunk_size(8, 12, 6, 577, 577) == 97  # 6 chunks of <= 2**23 map elements
    assert default_chunk_size(8, 12, 6, 256, 256) == 128
    assert default_chunk_size(2, 4, 3, 7, 9) == 7  # small maps: one chunk
    assert default_chunk_size(64, 12, 6, 4, 10**6) == 1  # at least one row
    assert 8 * 18 * 97 * 577 <= DEFAULT_CHUNK_ELEMENTS


QK_CRITERIA = [name for name, cls in METHODS.items() if cls.criterion.supports_qk]


def test_the_methods_that_support_qk_say_so_and_define_their_blocks():
    """Behaviour is asked of the method's criterion: every map method but amad_proj serves qk, and each one
    that says so defines its loss on blocks (row_loss or its own block_loss) -- nothing else does."""
    assert sorted(QK_CRITERIA) == sorted(set(METHODS) - {"amad_proj", "minilm_relation"})
    for name, cls in METHODS.items():
        crit = cls.criterion
        defines = (
            crit.row_loss is not AttentionCriterion.row_loss or crit.block_loss is not AttentionCriterion.block_loss
        )
        assert defines == crit.supports_qk, name


def test_the_qk_engine_names_no_method():
    """qk.py only rebuilds blocks and runs passes: no method name, method or criterion class, or method
    option appears in its code (docstrings aside), so adding a method never touches it."""
    tree = ast.parse(inspect.getsource(qk_module))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node) is not None
    }
    words = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    words |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    words |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and id(n) not in docstrings}
    words |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    options = {f.name for cls in METHODS.values() for f in dataclasses.fields(cls)} - {
        "teacher_grid",
        "student_grid",
        "num_prefix_tokens",
    }
    banned = set(METHODS) | {c.__name__ for c in METHODS.values()} | {c.criterion.__name__ for c in METHODS.values()}
    assert not words & (banned | options), words & (banned | options)


class _RowL1Criterion(AttentionCriterion):
    """A new method written once, as a row loss: the L1 distance of the head-mean rows."""

    supports_qk: ClassVar[bool] = True

    def row_loss(self, t, s, *, key_mask, layer):
        return (t.mean(1) - s.mean(1)).abs().sum(-1) * self.method.scale, None


@dataclass(frozen=True, kw_only=True)
class _RowL1(AttentionMethod):
    name: ClassVar[str] = "row_l1"
    criterion: ClassVar[type[AttentionCriterion]] = _RowL1Criterion

    scale: float = 2.0


@pytest.mark.parametrize("case", ["cross", "t5"])
def test_a_new_method_is_one_class_and_gets_both_paths(case):
    """One class with a row loss: the map path (the base compute, one block of all rows) and the qk path (its
    maps rebuilt in chunks) give the same loss and gradients."""
    t, s, qmask, kmask, grads = _case(case)
    crit = _RowL1(scale=0.5).build(t.num_heads, s.num_heads)
    want, w = crit(_reference_maps(t), _reference_maps(s), query_mask=qmask, key_mask=kmask)
    assert w is None and want > 0
    want_g = torch.autograd.grad(want, grads)
    loss, _ = qk_attention_loss(crit, t, s, query_mask=qmask, key_mask=kmask, chunk_size=3)
    torch.testing.assert_close(loss, want, atol=1e-10, rtol=0)
    for g_got, g_want in zip(torch.autograd.grad(loss, grads), want_g, strict=True):
        torch.testing.assert_close(g_got, g_want, atol=1e-10, rtol=0)


def test_maps_equal_the_softmax_and_rows_slice():
    t, *_ = _case("t5")
    torch.testing.assert_close(t.maps(), _reference_maps(t), atol=1e-12, rtol=0)
    torch.testing.assert_close(t.maps(slice(2, 5)), _reference_maps(t)[:, :, 2:5], atol=1e-12, rtol=0)
    assert t.num_heads == 5 and t.shape == (2, 5, 8, 8)


def test_fully_masked_padded_rows_give_no_nan():
    """A padded query row whose keys are all masked (to the dtype's min, as transformers' masks): finite
    loss and gradients, and no gradient on that row."""
    t, s, qmask, kmask, grads = _case("cross")
    qmask = qmask.clone()
    qmask[0, 6] = False
    m = torch.zeros(3, 1, 7, 9, dtype=F64)
    m[0, :, 6] = MIN
    t2 = AttentionInputs(t.q, t.k, t.scale, mask=torch.maximum(t.mask + m, torch.tensor(MIN, dtype=F64)))
    s2 = AttentionInputs(s.q, s.k, s.scale, mask=torch.maximum(s.mask + m, torch.tensor(MIN, dtype=F64)))
    for method in QK_CRITERIA:
        crit = build_attention_criterion(method, teacher_heads=4, student_heads=3).double()
        loss, _ = qk_attention_loss(crit, t2, s2, query_mask=qmask, key_mask=kmask, chunk_size=4)
        g = torch.autograd.grad(loss, grads)
        assert torch.isfinite(loss) and all(torch.isfinite(x).all() for x in g), method
        assert (g[0][0, :, 6] == 0).all()


def test_bf16_inputs_under_autocast_give_float32():
    t, s, qmask, *_ = _case("cross")
    tb = AttentionInputs(t.q.to(torch.bfloat16), t.k.to(torch.bfloat16), t.scale, mask=t.mask.float())
    qs = s.q.detach().to(torch.bfloat16).requires_grad_(True)
    sb = AttentionInputs(qs, s.k.detach().to(torch.bfloat16), s.scale, mask=s.mask.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, w = qk_attention_loss(_amad(t, s), tb, sb, query_mask=qmask, chunk_size=3)
    assert loss.dtype == torch.float32 and w.dtype == torch.float32
    loss.backward()
    assert qs.grad.dtype == torch.bfloat16 and torch.isfinite(qs.grad.float()).all()


def test_errors_name_shapes_and_choices():
    t, s, qmask, _, _ = _case("cross")
    with pytest.raises(ValueError, match=r"q \(3, 4, 7, 5\) and k \(3, 4, 9, 4\)"):
        AttentionInputs(t.q, t.k[..., :4], 1.0)
    with pytest.raises(ValueError, match=r"bias \(1, 2, 7, 9\) does not broadcast .* \(3, 4, 7, 9\)"):
        AttentionInputs(t.q, t.k, 1.0, bias=torch.zeros(1, 2, 7, 9, dtype=F64))
    with pytest.raises(ValueError, match=r"mask .* must be bool"):
        AttentionInputs(t.q, t.k, 1.0, mask=torch.zeros(3, 1, 1, 9, dtype=torch.int64))
    short = AttentionInputs(s.q[:, :, :5], s.k, s.scale)
    crit = _amad(t, s)
    with pytest.raises(ValueError, match=r"\(3, 4, 7, 9\) and student maps .* \(3, 3, 5, 9\)"):
        qk_attention_loss(crit, t, short)
    with pytest.raises(ValueError, match=r"query_mask \(3, 6\) does not match"):
        qk_attention_loss(crit, t, s, query_mask=qmask[:, :6])
    with pytest.raises(ValueError, match="must be an AttentionCriterion"):
        qk_attention_loss("amad", t, s)
    with pytest.raises(ValueError, match="'amad_proj' cannot be computed from queries and keys"):
        qk_attention_loss(build_attention_criterion("amad_proj", teacher_heads=4, student_heads=3), t, s)
    with pytest.raises(ValueError, match="'minilm_relation' cannot be computed from queries and keys"):
        qk_attention_loss(build_attention_criterion("minilm_relation", teacher_heads=4, student_heads=3), t, s)
    with pytest.raises(ValueError, match="chunk_size"):
        qk_attention_loss(crit, t, s, chunk_size=0)
    grids = build_attention_criterion(
        "amad", teacher_heads=4, student_heads=3, teacher_grid=(4, 4), student_grid=(2, 2)
    )
    with pytest.raises(ValueError, match="resizing"):
        qk_attention_loss(grids, t, s)
    with pytest.raises(ValueError, match=r"built for 4 teacher / 3 student heads, got teacher maps with 3"):
        qk_attention_loss(crit, s, t)
    with pytest.raises(ValueError, match=r"layer 1 out of range"):
        qk_attention_loss(crit, t, s, layer=1)
    one = build_attention_criterion("attn_distill", teacher_heads=4, student_heads=3, query_index=7)
    with pytest.raises(ValueError, match=r"query_index 7 out of range .* Q = 7"):
        qk_attention_loss(one, t, s)


# ------------------------------------------------------------------------------------------- memory


class _Tracker(TorchDispatchMode):
    """Largest tensor any operator returns, and the peak of live bytes of the storages operators create
    (storages that existed before, e.g. the inputs seen through views, are not counted)."""

    def __init__(self, existing: set[int]) -> None:
        super().__init__()
        self.existing, self.live = existing, {}
        self.current = self.peak = self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in tree_flatten(out)[0]:
            if isinstance(x, torch.Tensor) and x.layout == torch.strided:
                storage = x.untyped_storage()
                key = storage.data_ptr()
                if not key or key in self.existing or key in self.live:
                    continue
                self.max_numel = max(self.max_numel, x.numel())
                self.live[key] = storage.nbytes()
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
                weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)


MEMORY_CONFIGS = [
    ("amad", {}),
    ("amad", {"detach_weights": True}),
    ("amad", {"variant": "l2"}),
    ("amad", {"variant": "token"}),
    ("one_to_one", {}),
    ("head_mean", {}),
    ("shd", {}),
    ("shd", {"merge_granularity": "row"}),
    ("a2d", {}),
    ("attn_distill", {}),
]


@pytest.mark.parametrize("config", MEMORY_CONFIGS, ids=_id)
def test_no_map_sized_tensor_is_ever_alive(config):
    method, opts = config
    B, Ht, Hs, Q, K, d, chunk = 2, 4, 2, 128, 128, 4, 4
    g = torch.Generator().manual_seed(0)
    qt, kt = torch.randn(B, Ht, Q, d, generator=g, dtype=F64), torch.randn(B, Ht, K, d, generator=g, dtype=F64)
    qs = torch.randn(B, Hs, Q, d, generator=g, dtype=F64, requires_grad=True)
    ks = torch.randn(B, Hs, K, d, generator=g, dtype=F64, requires_grad=True)
    qmask = torch.ones(B, Q, dtype=torch.bool)
    qmask[1, 100:] = False
    add = torch.zeros(B, 1, 1, K, dtype=F64).masked_fill(~qmask[:, None, None, :], MIN)
    t, s = AttentionInputs(qt, kt, d**-0.5, mask=add), AttentionInputs(qs, ks, d**-0.5, mask=add)
    crit = build_attention_criterion(method, teacher_heads=Ht, student_heads=Hs, **opts).double()
    module = crit.aligners[0] if method == "a2d" else None
    chunk_numel = B * (Ht + Hs) * chunk * K  # one chunk's maps of both models
    maps_bytes = B * (Ht + Hs) * Q * K * 8  # the whole maps of both models: 32 chunks

    saved: list[int] = []

    def pack(x):
        saved.append(x.numel())
        return x

    existing = {x.untyped_storage().data_ptr() for x in (qt, kt, qs, ks, add)}
    if module is not None:
        existing |= {x.untyped_storage().data_ptr() for x in module.parameters()}
    with _Tracker(existing) as tracker:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):  # what the forward keeps
            loss, _ = qk_attention_loss(crit, t, s, query_mask=qmask, key_mask=qmask, chunk_size=chunk)
        loss.backward()
    assert torch.isfinite(loss)
    # no operator output is larger than one chunk's maps (q/k-sized gradients are B*H*Q*d, smaller)
    assert tracker.max_numel <= chunk_numel, (tracker.max_numel, chunk_numel)
    # for the backward, autograd keeps only small tensors outside the chunks (weights, norms, sums)
    assert max(saved, default=0) <= B * max(Ht, Hs) ** 2, saved
    # live bytes at their peak (forward and backward): a few chunks, far below one whole student map
    # (measured 2-6 chunks, the q/k gradients and per-chunk slice gradients included)
    assert tracker.peak <= 8 * chunk_numel * 8 <= maps_bytes / 4, tracker.peak / (chunk_numel * 8)


@pytest.mark.slow
def test_bench_quick_writes_its_json(tmp_path):
    from amad.bench.qk import run

    out = tmp_path / "qk.json"
    result = run(out=str(out), quick=True)
    (record,) = result["qk"]["records"]
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    for key in ("map_ms", "qk_ms", "time_ratio", "map_step_extra_mb", "qk_step_extra_mb", "chunk_size"):
        assert record[key] is not None, key
    assert record["loss_abs_diff"] < 1e-4
