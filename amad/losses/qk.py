"""Attention losses from queries and keys: the maps rebuilt in chunks of query rows, never whole.

Returning attention maps forces eager attention and keeps the B·H·Q·K maps of every distilled layer of
teacher and student alive until the backward. Here a model runs its fast attention (SDPA) and the
distiller keeps, per distilled layer, only what the maps are made of -- the capture type
:class:`~amad.models.attention_inputs.AttentionInputs`: the queries, the keys, the scale and the
additive mask / position bias -- and :func:`qk_attention_loss` rebuilds the maps
``softmax(q kᵀ·scale + mask + bias)`` (pre-dropout probabilities, as the map path) chunk by chunk of
query rows, accumulating the loss. Every chunk runs under
``torch.utils.checkpoint.checkpoint(use_reentrant=False)`` (AMAD "kl": the same idea written out, see
below): its forward keeps nothing but its inputs (views of q, k and the bias), and the backward rebuilds
the chunk's maps. So at most O(B·(Ht+Hs)·chunk·K) map elements are alive at a time, forward and backward.

The value and the gradients are those of the map path, ``build_attention_criterion(method, ...)(
teacher_maps, student_maps, query_mask=..., key_mask=...)`` with the maps built from the same q/k
(the tests hold every method and option to 1e-10 in float64): only the summation order differs.

Which losses are sums over query rows (equation numbers: ``docs/method.md`` section 2):

* ``one_to_one``, ``head_mean``, ``attn_distill``, ``a2d``, AMAD ``token`` (Eq. 12), SHD with
  ``merge_granularity="row"``: every term belongs to one query row (head means, the AttnDistill product
  of experts, the A2D 1x1 convolution and the per-row softmaxes all mix heads *within* a row), so one pass:
  per chunk, the masked sum over its rows of the per-row loss; the division by the number of valid rows
  of each example comes after the sum over chunks.
* AMAD ``kl`` (Eq. 2, 3, 9): the weights need cosines of whole flattened maps. Pass 1 accumulates over
  chunks ``D = Σ_c T_c S_cᵀ`` (B, Ht, Hs), ``|t_i|² = Σ_c |T_c,i|²``, ``|s_j|² = Σ_c |S_c,j|²`` and the
  teacher's ``Σ t log t``; then ``w = D / (max(|t|, 1e-12) max(|s|, 1e-12))`` (Eq. 2) and
  ``a = softmax(w / τ)`` (Eq. 3) on these small tensors. Pass 2: per chunk, ``Σ T_c log max(a S_c, eps)``
  (Eq. 9: the mixture of a chunk's rows needs only those rows and ``a``), summed, and -- the loss being
  linear in its upstream gradient -- the whole ``d/da`` of that sum. The backward is then one pass (a
  custom ``autograd.Function``, :class:`_AMADKLChunked`, instead of a checkpoint per pass, which would
  rebuild each chunk twice in the backward): each chunk's gradient through the mixture, the cosines and
  the norms at once (the formulas of :mod:`amad.losses._fused`), then through the chunk's softmax and
  ``q kᵀ`` by autograd on that chunk alone. Each chunk's maps are built three times in all (twice when
  there is one chunk: pass 2 reuses pass 1's).
* AMAD ``l2`` (Eq. 4-5): expanded as the map path, ``Σ_i |t̂_i|² - 2 a_i·w_i + a_i G a_iᵀ`` with
  ``G = ŝ ŝᵀ``: everything is a sum over rows, so pass 1 alone (``D``, ``S Sᵀ`` (B, Hs, Hs), ``|t|²``;
  ``|s|²`` is the diagonal of ``S Sᵀ``) gives the loss; no pass 2.
* SHD, ``merge_granularity="map"``: each merge coefficient ``α = <S_j - y, x - y> / |x - y|²`` is a sum
  over the whole map, and the merged maps of a level depend on the α of the levels below. The merged
  maps are linear in the teacher heads, ``x = c_x T`` with coefficients ``c`` (B, Hs, width, Ht) that
  the tree updates as ``c ← α c_x + (1 - α) c_y``; so one pass per tree level (log2 of the largest group:
  one pass for 12 -> 6 heads) accumulates ``|d|²`` and ``<S - y, d>`` of ``d = (c_x - c_y) T_c`` over chunks
  (no gradient: α is a constant of the target), directly on the differences (no expanded Gram form, so
  no cancellation when two heads are alike). The final pass merges each chunk with the final
  coefficients, ``c T_c``, and sums the softened row KL.

Masks: ``query_mask`` (B, Q) bool as in the map path: padded rows of both maps are zeroed before
anything (so they take no part in cosines, merges or losses) and each example's loss is the mean over
its valid rows (the gradient on padded rows is 0, as in the map path). Additive masks should use the dtype's
min, as transformers' do, not ``-inf``: a row masked to all ``-inf`` is NaN before it is zeroed. ``key_mask``
(B, K) bool as each method uses it (SHD, A2D and AttnDistill exclude padded keys from their own
softmaxes; the AMAD losses, one-to-one and head-mean ignore it: padded keys carry ~0 probability
through the additive mask already).

Chunk size: ``chunk_size=None`` picks the fewest balanced chunks whose maps of both models hold at most
:data:`DEFAULT_CHUNK_ELEMENTS` elements (``B·(Ht+Hs)·rows·K``; :func:`default_chunk_size`); see
``docs/losses.md`` for the measurements behind it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from amad.losses._common import (
    NORM_EPS,
    check_choice,
    check_mask,
    check_positive,
    no_autocast,
    row_entropy_term,
    row_kl,
)
from amad.losses._fused import AMADKLFunction
from amad.losses.a2d import A2DLoss
from amad.losses.attention import AMAD_VARIANTS, ROW_LOSS_KINDS
from amad.losses.attn_distill import aggregate_heads
from amad.losses.shd import ALPHA_GRANULARITY, shd_merge, soften, softened_row_kl
from amad.models.attention_inputs import AttentionInputs, compute_dtype, default_chunk_size

#: Methods :func:`qk_attention_loss` computes (every map-based method but ``amad_proj``).
QK_METHODS: tuple[str, ...] = ("amad", "one_to_one", "head_mean", "shd", "a2d", "attn_distill")

#: The options of each method and their defaults: the fields of the method classes of
#: ``amad.losses.methods`` (``AMAD``, ``OneToOne``, ...), so a method object's ``options()`` passes through.
METHOD_OPTIONS: dict[str, dict[str, object]] = {
    "amad": {"variant": "kl", "weight_temperature": 1.0, "detach_weights": False, "eps": 1e-8},
    "one_to_one": {"row_loss": "kl", "eps": 1e-8},
    "head_mean": {"row_loss": "kl", "eps": 1e-8},
    "shd": {"softening_temperature": 1.0, "merge_granularity": "map", "eps": 1e-8},
    "a2d": {"teacher_as_logits": None},  # None = the module's
    "attn_distill": {"aggregation_temperature": 20.0, "query_index": None, "prob_clamp": (1e-5, 0.996), "eps": 1e-8},
}
_GRID_OPTIONS = ("teacher_grid", "student_grid", "num_prefix_tokens")


# --------------------------------------------------------------------------------------------- helpers


class _Pair:
    """Teacher/student inputs of one layer pair, the masks and the chunking; builds chunk maps."""

    def __init__(
        self,
        teacher: AttentionInputs,
        student: AttentionInputs,
        query_mask: Tensor | None,
        key_mask: Tensor | None,
        chunk_size: int | None,
    ) -> None:
        for name, x in (("teacher", teacher), ("student", student)):
            if not isinstance(x, AttentionInputs):
                raise ValueError(f"{name} must be AttentionInputs, got {type(x).__name__}")
        B, Ht, Q, K = teacher.shape
        Bs, Hs, Qs, Ks = student.shape
        if (B, Q, K) != (Bs, Qs, Ks):
            raise ValueError(
                f"teacher maps (B, Ht, Q, K) = {teacher.shape} and student maps (B, Hs, Q, K) = {student.shape}: "
                "B, Q and K must be equal"
            )
        if teacher.q.device != student.q.device:
            raise ValueError(
                f"teacher q {tuple(teacher.q.shape)} is on {teacher.q.device}, student q {tuple(student.q.shape)} "
                f"on {student.q.device}"
            )
        self.t = teacher.detach()
        self.s = student
        self.B, self.Ht, self.Hs, self.Q, self.K = B, Ht, Hs, Q, K
        self.dtype = compute_dtype(teacher.q, student.q)
        self.device = student.q.device
        self.qmask = check_mask(query_mask, teacher.q, (0, 2), ref_name="teacher q (B, H, Q, d)")
        self.kmask = check_mask(key_mask, teacher.k, (0, 2), name="key_mask", ref_name="teacher k (B, H, K, d)")
        if chunk_size is None:
            chunk_size = default_chunk_size(B, Ht, Hs, Q, K)
        elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        self.chunk_size = min(max(int(chunk_size), 1), max(Q, 1))
        n_valid = self.qmask.sum(-1) if self.qmask is not None else torch.full((B,), Q, device=self.device)
        self.has_valid = n_valid > 0
        self.row_keep = None if self.qmask is None else self.qmask.to(self.dtype)  # (B, Q) 0/1
        self.inv_rows = 1.0 / n_valid.clamp_min(1).to(self.dtype)  # (B,)

    def slices(self) -> list[slice]:
        return [slice(i, min(i + self.chunk_size, self.Q)) for i in range(0, self.Q, self.chunk_size)]

    def row_mask(self, rows: slice) -> Tensor | None:
        return None if self.qmask is None else self.qmask[:, rows]

    def probs(self, x: AttentionInputs, rows: slice, heads: slice = slice(None), sub_rows: bool = False) -> Tensor:
        """(B, h, rows, K) maps of ``x``, padded query rows zeroed (``sub_rows``: ``x`` holds only those rows).

        Zeroed by a product with the 0/1 row mask (a broadcast ``where`` costs 3-4x more on CPU); its
        gradient is 0 on those rows, as the map path's ``where``. (A row whose mask and bias are all
        ``-inf`` would be NaN times 0: masks use the dtype's min, as transformers' do.)
        """
        p = torch.softmax(x.scores(slice(None) if sub_rows else rows, heads, self.dtype), dim=-1)
        if self.row_keep is None:
            return p
        keep = self.row_keep[:, None, rows, None]
        return p * keep if p.requires_grad else p.mul_(keep)  # softmax's backward needs its output

    def masked_row_sum(self, x: Tensor, rows: slice) -> Tensor:
        """(B, H, r) per-row values -> (B, H): the sum over the chunk's valid rows."""
        m = self.row_mask(rows)
        if m is None:
            return x.sum(-1)
        return torch.where(m[:, None, :], x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(-1)

    def needs_grad(self, *extra: Tensor) -> bool:
        s = self.s
        ts = [s.q, s.k, *(x for x in (s.mask, s.bias) if x is not None), *extra]
        return torch.is_grad_enabled() and any(x.requires_grad for x in ts)

    def accumulate(self, fn: Callable[[slice], Sequence[Tensor]], grad: bool, slices: list[slice] | None = None):
        """Σ over chunks of ``fn(rows)`` (a tuple of tensors); with ``grad`` each chunk is checkpointed (its
        forward keeps only its inputs, its backward rebuilds the chunk), else run without autograd."""
        total: list[Tensor] | None = None
        for rows in slices if slices is not None else self.slices():
            if grad:
                out = checkpoint(fn, rows, use_reentrant=False, preserve_rng_state=False)
            else:
                with torch.no_grad():
                    out = fn(rows)
            total = list(out) if total is None else [a + b for a, b in zip(total, out, strict=True)]
        return total


def _sqrt_clamped(sq: Tensor) -> Tensor:
    """``max(sqrt(sq), 1e-12)`` with the gradient of ``clamp_min(vector_norm(x), 1e-12)`` (0 below the
    floor, never inf * 0 at sq = 0)."""
    return sq.clamp_min(NORM_EPS * NORM_EPS).sqrt()


# --------------------------------------------------------------------------------------------- AMAD


def _amad_stats(p: _Pair) -> list[Tensor]:
    """Pass 1 of "l2": ``D = Σ T Sᵀ`` (B, Ht, Hs), ``|t|²`` (B, Ht) and ``S Sᵀ`` (B, Hs, Hs)."""
    B = p.B

    def fn(rows: slice) -> tuple[Tensor, ...]:
        t = p.probs(p.t, rows).reshape(B, p.Ht, -1)
        s = p.probs(p.s, rows).reshape(B, p.Hs, -1)
        d = torch.bmm(t, s.transpose(1, 2))
        sst = torch.bmm(s, s.transpose(1, 2))
        return d, t.square().sum(-1), sst  # |t|² last: the recomputation stops before it

    return p.accumulate(fn, p.needs_grad())


def _mix_grad(t: Tensor, mix: Tensor, eps: float) -> Tensor:
    """``d/dmix Σ t log max(mix, eps)`` = ``t / mix`` where ``mix >= eps``, else 0; in ``mix``'s buffer."""
    below = mix < eps
    return torch.div(t, mix.clamp_min_(eps), out=mix).masked_fill_(below, 0)


class _AMADKLChunked(torch.autograd.Function):
    """AMAD "kl" (Eq. 2, 3, 9) over chunks of query rows, with the chunk loop in forward and backward.

    ``apply(pair, temperature, detach_weights, eps, q, k, mask, bias) -> (per_example (B,), a)``, with q, k,
    mask, bias the student's tensors (mask None unless float with gradient); the maps come from ``pair``.
    Checkpointing each pass separately would build every chunk's maps four times (two passes forward, each
    recomputed backward); here three:

    * forward pass 1: ``D = Σ_c T_c S_cᵀ``, ``|t|²``, ``|s|²``, ``Σ t log t`` -> w (Eq. 2), a (Eq. 3);
    * forward pass 2: ``CE = Σ_c Σ T_c log max(a S_c, eps)`` and, since the loss is linear in its upstream
      gradient, the whole ``dCE/da = Σ_c G_c S_cᵀ`` with ``G = T / mix`` (0 where ``mix < eps``);
    * backward, one pass: per chunk ``dL/dS_c = r aᵀ G_c + (dL/dD)ᵀ T_c + (dL/d|s| / |s|) S_c`` (r = -upstream),
      ``dL/dD``, ``dL/d|s|`` from ``dL/da = r dCE/da`` through the softmax and the cosine, then through the
      chunk's softmax and ``q kᵀ`` by autograd on the chunk alone.

    Saved for the backward: only (B, Ht, Hs)-sized tensors, plus the inputs.
    """

    @staticmethod
    def forward(ctx, p: _Pair, temperature: float, detach: bool, eps: float, q, k, mask, bias):
        B, Ht, Hs, dtype = p.B, p.Ht, p.Hs, p.dtype
        zeros = {"device": p.device, "dtype": dtype}
        D, tt, ss, entropy = (torch.zeros(*shape, **zeros) for shape in ((B, Ht, Hs), (B, Ht), (B, Hs), (B,)))
        slices = p.slices()
        # one chunk (small maps, or a large chunk_size): pass 2 reuses pass 1's maps (two builds, not three;
        # they are freed before the backward either way)
        kept = None
        for rows in slices:
            t = p.probs(p.t, rows).reshape(B, Ht, -1)
            s = p.probs(p.s, rows).reshape(B, Hs, -1)
            if len(slices) == 1:
                kept = t, s
            D.baddbmm_(t, s.transpose(1, 2))
            tt += t.square().sum(-1)
            ss += s.square().sum(-1)
            entropy += row_entropy_term(t).sum(-1)
        nt, c = _sqrt_clamped(tt), _sqrt_clamped(ss)
        w = D / (nt.unsqueeze(-1) * c.unsqueeze(-2))  # Eq. 2
        a = torch.softmax(w / temperature, dim=-1)  # Eq. 3
        cross, dA = torch.zeros(B, **zeros), torch.zeros(B, Ht, Hs, **zeros)
        for rows in slices:
            if kept is not None:
                t, s = kept
            else:
                t = p.probs(p.t, rows).reshape(B, Ht, -1)
                s = p.probs(p.s, rows).reshape(B, Hs, -1)
            mix = torch.bmm(a, s)  # Eq. 9, this chunk's rows
            cross += mix.clamp_min(eps).log_().mul_(t).sum(dim=(1, 2))
            if not detach:
                dA.baddbmm_(_mix_grad(t, mix, eps), s.transpose(1, 2))
        ctx.p, ctx.temperature, ctx.detach, ctx.eps = p, temperature, detach, eps
        ctx.save_for_backward(a, w, nt, c, ss, dA)
        ctx.mark_non_differentiable(a)
        return entropy - cross, a

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor, _grad_a: Tensor | None):
        p: _Pair = ctx.p
        a, w, nt, c, ss, dA = ctx.saved_tensors
        B, Ht, Hs, dtype = p.B, p.Ht, p.Hs, p.dtype
        r = -grad.to(dtype)[:, None, None]  # dL/dCE per example
        a_r = (a * r).transpose(1, 2)  # (B, Hs, Ht): the mixture's share, scaled
        if not ctx.detach:
            ga = r * dA  # dL/da
            gw = a * (ga - (a * ga).sum(-1, keepdim=True)) / ctx.temperature  # softmax over student heads
            gD = (gw / (nt.unsqueeze(-1) * c.unsqueeze(-2))).transpose(1, 2)  # (B, Hs, Ht)
            gc = -(gw * w).sum(1) / c  # dL/dc, c = max(|s|, 1e-12)
            coef = torch.where(ss >= NORM_EPS * NORM_EPS, gc / c, torch.zeros_like(gc))  # dL/ds = coef s
        s_in = p.s
        needs = ctx.needs_input_grad[4:8]
        grads: list[Tensor | None] = [None] * 4
        for rows in p.slices():
            leaves = _chunk_leaves(s_in, rows, needs)
            with torch.enable_grad():
                sub = AttentionInputs(*(x for x in leaves[:2]), s_in.scale, mask=leaves[2], bias=leaves[3])
                s = p.probs(sub, rows, sub_rows=True)
            sd = s.detach().reshape(B, Hs, -1)
            t = p.probs(p.t, rows).reshape(B, Ht, -1)
            G = _mix_grad(t, torch.bmm(a, sd), ctx.eps)
            dS = torch.bmm(a_r, G)
            if not ctx.detach:
                dS.baddbmm_(gD, t).addcmul_(sd, coef.unsqueeze(-1))
            wanted = [x for x, n in zip(leaves, needs, strict=True) if n]
            got = iter(torch.autograd.grad(s, wanted, dS.view_as(s)))
            for i, n in enumerate(needs):
                if n:
                    grads[i] = _place(grads[i], next(got), [s_in.q, s_in.k, s_in.mask, s_in.bias][i], rows, i)
        return (None, None, None, None, *grads)


def _chunk_leaves(x: AttentionInputs, rows: slice, needs) -> list[Tensor | None]:
    """q, k, mask, bias of a chunk's rows, detached (leaves requiring grad where ``needs``)."""
    out = []
    for i, (v, n) in enumerate(zip((x.q, x.k, x.mask, x.bias), needs, strict=True)):
        if v is not None and i != 1 and (i == 0 or v.shape[2] > 1):
            v = v[:, :, rows]
        out.append(None if v is None else v.detach().requires_grad_(bool(n)))
    return out


def _place(acc: Tensor | None, g: Tensor, like: Tensor, rows: slice, i: int) -> Tensor:
    """Accumulate a chunk's gradient into the full one: q (and mask/bias with a query dim) by rows, k summed."""
    if i == 1 or (i > 1 and like.shape[2] == 1):
        return g.clone() if acc is None else acc.add_(g)
    if acc is None:
        acc = torch.zeros_like(like)
    acc[:, :, rows] = g
    return acc


def _amad_kl(p: _Pair, temperature: float, detach: bool, eps: float) -> tuple[Tensor, Tensor]:
    s = p.s
    mask = s.mask if s.mask is not None and s.mask.is_floating_point() else None
    per_example, a = _AMADKLChunked.apply(p, temperature, detach, eps, s.q, s.k, mask, s.bias)
    return (per_example * p.inv_rows).mean(), a


def _amad_l2(p: _Pair, temperature: float, detach: bool) -> tuple[Tensor, Tensor]:
    d, tt, sst = _amad_stats(p)
    nt = _sqrt_clamped(tt)
    ns = _sqrt_clamped(torch.diagonal(sst, dim1=1, dim2=2))
    w = d / (nt.unsqueeze(-1) * ns.unsqueeze(-2))  # cosines, Eq. 2
    gram = sst / (ns.unsqueeze(-1) * ns.unsqueeze(-2))
    a = torch.softmax(w / temperature, dim=-1)
    aw = a.detach() if detach else a
    per_head = tt / nt.square() - 2 * (aw * w).sum(-1) + (torch.bmm(aw, gram) * aw).sum(-1)  # Eq. 4-5, expanded
    return per_head.sum(-1).clamp_min(0).mean(), a.detach()


def _amad_token(p: _Pair, temperature: float, detach: bool, eps: float) -> tuple[Tensor, Tensor]:
    B, Ht, Hs, K = p.B, p.Ht, p.Hs, p.K

    def fn(rows: slice) -> tuple[Tensor, Tensor, Tensor]:
        t = p.probs(p.t, rows)
        s = p.probs(p.s, rows)
        r = t.shape[2]
        tq = t.transpose(1, 2).reshape(B * r, Ht, K)
        sq = s.transpose(1, 2).reshape(B * r, Hs, K)
        ones = torch.ones(B * r, dtype=p.dtype, device=t.device)
        per_row, a = AMADKLFunction.apply(tq, sq, ones, temperature, detach, eps, None, False)  # Eq. 12 per row
        a = a.view(B, r, Ht, Hs)
        m = p.row_mask(rows)
        a_valid = a if m is None else torch.where(m[:, :, None, None], a, a.new_zeros(()))
        return p.masked_row_sum(per_row.view(B, 1, r), rows).squeeze(1), a_valid.sum(1), a.sum(1)

    per_example, a_valid, a_all = p.accumulate(fn, p.needs_grad())
    n_valid = 1.0 / p.inv_rows
    weights = torch.where(p.has_valid[:, None, None], a_valid / n_valid[:, None, None], a_all / p.Q)
    return (per_example * p.inv_rows).mean(), weights.detach()


# --------------------------------------------------------------------------------------------- baselines


def _row_loss(t: Tensor, s: Tensor, kind: str, eps: float) -> Tensor:
    return row_kl(t, s, eps) if kind == "kl" else (t - s).pow(2).sum(-1)


def _one_to_one(p: _Pair, kind: str, eps: float) -> tuple[Tensor, Tensor]:
    if p.Hs > p.Ht:
        raise ValueError(
            f"one_to_one needs Hs <= Ht, but the student maps {p.s.shape} have {p.Hs} heads and the teacher maps "
            f"{p.t.shape} {p.Ht}: one-to-one pairing cannot teach the extra student heads"
        )

    def fn(rows: slice) -> tuple[Tensor]:
        t = p.probs(p.t, rows, heads=slice(0, p.Hs))  # only the paired teacher heads are ever built
        s = p.probs(p.s, rows)
        return (_row_loss(t, s, kind, eps).sum(dim=(1, 2)),)  # padded rows: both zero, loss 0

    (per_example,) = p.accumulate(fn, p.needs_grad())
    eye = torch.eye(p.Ht, p.Hs, dtype=p.dtype, device=p.device).expand(p.B, -1, -1)
    return (per_example * p.inv_rows).mean(), eye


def _head_mean(p: _Pair, kind: str, eps: float) -> tuple[Tensor, None]:
    def fn(rows: slice) -> tuple[Tensor]:
        t = p.probs(p.t, rows).mean(1, keepdim=True)
        s = p.probs(p.s, rows).mean(1, keepdim=True)
        return (_row_loss(t, s, kind, eps).sum(dim=(1, 2)),)

    (per_example,) = p.accumulate(fn, p.needs_grad())
    return (per_example * p.inv_rows).mean(), None


def _attn_distill(
    p: _Pair, temperature: float, query_index: int | None, prob_clamp: tuple[float, float] | None, eps: float
) -> tuple[Tensor, None]:
    check_positive("aggregation_temperature", temperature)
    slices = None
    if query_index is not None:
        if not -p.Q <= query_index < p.Q:
            raise ValueError(f"query_index {query_index} out of range for maps (B, H, Q, K) = {p.t.shape}")
        i = query_index % p.Q
        rows = torch.zeros(p.B, p.Q, dtype=torch.bool, device=p.device)
        rows[:, i] = True
        p.qmask = rows if p.qmask is None else rows & p.qmask
        p.row_keep = p.qmask.to(p.dtype)
        n_valid = p.qmask.sum(-1)
        p.has_valid, p.inv_rows = n_valid > 0, 1.0 / n_valid.clamp_min(1).to(p.dtype)
        slices = [slice(i, i + 1)]  # every other row is masked out: only this one is built
    kmask = p.kmask

    def fn(rows: slice) -> tuple[Tensor]:
        pt = aggregate_heads(p.probs(p.t, rows), temperature, kmask, eps)  # (B, r, K)
        ps = aggregate_heads(p.probs(p.s, rows), temperature, kmask, eps)
        if prob_clamp is not None:
            lo, hi = prob_clamp
            pt, ps = pt.clamp(lo, hi), ps.clamp(lo, hi)
            if kmask is not None:
                zero = torch.zeros((), dtype=pt.dtype, device=pt.device)
                pt = torch.where(kmask[:, None, :], pt, zero)
                ps = torch.where(kmask[:, None, :], ps, zero)
            pt = pt / pt.sum(-1, keepdim=True).clamp_min(eps)
            ps = ps / ps.sum(-1, keepdim=True).clamp_min(eps)
        kl = (torch.xlogy(pt, pt) - pt * torch.log(ps.clamp_min(eps))).sum(-1)  # (B, r)
        return (p.masked_row_sum(kl[:, None], rows).squeeze(1),)

    (per_example,) = p.accumulate(fn, p.needs_grad(), slices)
    return (per_example * p.inv_rows).mean(), None


def _a2d(p: _Pair, module: A2DLoss | None, teacher_as_logits: bool | None) -> tuple[Tensor, Tensor]:
    if not isinstance(module, A2DLoss):
        raise ValueError(
            "method 'a2d' needs its learned aligner: pass module=<the A2DLoss of this layer pair> "
            f"(e.g. criterion.aligners[layer]), got {type(module).__name__}"
        )
    if teacher_as_logits is not None and teacher_as_logits != module.teacher_as_logits:
        raise ValueError(
            f"teacher_as_logits={teacher_as_logits!r} disagrees with the module's {module.teacher_as_logits!r}"
        )
    Ht, Hs = module.aligner.out_channels, module.aligner.in_channels
    if (p.Ht, p.Hs) != (Ht, Hs):
        raise ValueError(
            f"A2DLoss aligns {Hs} student heads to {Ht} teacher heads, got teacher maps {p.t.shape} and "
            f"student maps {p.s.shape}"
        )
    kmask, fill = p.kmask, torch.finfo(p.dtype).min

    def fn(rows: slice) -> tuple[Tensor]:
        t = p.probs(p.t, rows)
        aligned = module.align(p.probs(p.s, rows))  # 1x1 convolution over heads, within each row
        keys = None if kmask is None else kmask[:, None, None, :]
        if keys is not None:
            aligned = aligned.masked_fill(~keys, fill)
        ls = torch.log_softmax(aligned, dim=-1)
        if module.teacher_as_logits:
            lt = torch.log_softmax(t if keys is None else t.masked_fill(~keys, fill), dim=-1)
            kl = lt.exp() * (lt - ls)
        else:
            kl = torch.xlogy(t, t) - t * ls
        if keys is not None:
            kl = torch.where(keys, kl, torch.zeros((), dtype=kl.dtype, device=kl.device))
        return (p.masked_row_sum(kl.sum(-1), rows).sum(1),)

    params = [x for x in module.parameters() if x.requires_grad]
    (per_example,) = p.accumulate(fn, p.needs_grad(*params))
    weights = module.aligner.weight[:, :, 0, 0].detach().to(p.dtype).expand(p.B, Ht, Hs)
    return (per_example * p.inv_rows).mean(), weights


def _shd_layout(Ht: int, Hs: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The merge tree's leaves as in :func:`amad.losses.shd_merge`: teacher-head index (Hs, width) and
    validity; contiguous groups, sizes differing by <= 1, larger first, width a power of 2."""
    base, extra = divmod(Ht, Hs)
    width = 1 << (base + (extra > 0) - 1).bit_length()
    j = torch.arange(Hs, device=device)[:, None]
    pos = torch.arange(width, device=device)[None, :]
    start = j * base + torch.clamp(j, max=extra)
    valid = pos < base + (j < extra).long()
    return torch.where(valid, start + pos, -1), valid


def _shd(p: _Pair, temperature: float, granularity: str, eps: float) -> tuple[Tensor, Tensor]:
    check_positive("softening_temperature", temperature)
    check_choice("merge_granularity", granularity, ALPHA_GRANULARITY)
    if p.Hs > p.Ht:
        raise ValueError(
            f"shd needs Hs <= Ht: the student maps {p.s.shape} have more heads than the teacher maps {p.t.shape}"
        )
    B, Ht, Hs, K, kmask = p.B, p.Ht, p.Hs, p.K, p.kmask
    if granularity == "map":
        coef = _shd_map_coefficients(p)  # (B, Hs, Ht), the first passes

    def fn(rows: slice) -> tuple[Tensor, ...]:
        t = p.probs(p.t, rows)
        s = p.probs(p.s, rows)
        r = t.shape[2]
        if granularity == "map":
            merged = torch.bmm(coef, t.reshape(B, Ht, -1)).view(B, Hs, r, K)
            out: tuple[Tensor, ...] = ()
        else:
            merged, c = shd_merge(t, s, granularity="row")  # alpha per row: local to the chunk
            m = p.row_mask(rows)
            c_valid = c if m is None else torch.where(m[:, None, :, None], c, c.new_zeros(()))
            out = (c_valid.sum(2).detach(), c.sum(2).detach())
        row = softened_row_kl(soften(merged, temperature, kmask, eps), soften(s, temperature, kmask, eps), kmask)
        return (p.masked_row_sum(row, rows).sum(1), *out)

    per_example, *sums = p.accumulate(fn, p.needs_grad())
    if granularity == "row":
        c_valid, c_all = sums
        n_valid = 1.0 / p.inv_rows
        coef = (
            c_all / p.Q
            if p.qmask is None
            else torch.where(p.has_valid[:, None, None], c_valid / n_valid[:, None, None], c_all / p.Q)
        )
    return (per_example * p.inv_rows).mean(), coef.transpose(1, 2).detach()


def _shd_map_coefficients(p: _Pair, den_eps: float = 1e-12) -> Tensor:
    """The per-map merge coefficients (B, Hs, Ht) of SHD, one pass over the chunks per tree level.

    Level by level, as :func:`amad.losses.shd_merge`: the maps of the current level are ``c T`` with
    ``c`` (B, Hs, width, Ht); for the pairs (x, y) = (even, odd) slots, ``d = (c_x - c_y) T`` and
    ``den = Σ |d|²``, ``num = Σ <S_j - y, d>`` over all rows (chunks), ``α = clamp(num / den, 0, 1)``
    (0.5 where ``den <= 1e-12``, 1 where y is an empty slot), ``c ← α c_x + (1 - α) c_y``. No gradient
    (α is a constant of the target, the student detached there as in the map path).
    """
    B, Ht, Hs, device = p.B, p.Ht, p.Hs, p.device
    index, valid = _shd_layout(Ht, Hs, device)
    coef = torch.nn.functional.one_hot(index.clamp_min(0), Ht).to(p.dtype) * valid[..., None]
    coef = coef.expand(B, Hs, -1, Ht).contiguous()  # (B, Hs, width, Ht)
    while coef.shape[2] > 1:
        cx, cy = coef[:, :, 0::2], coef[:, :, 1::2]
        half = cx.shape[2]
        cd, cyf = (cx - cy).reshape(B, Hs * half, Ht), cy.reshape(B, Hs * half, Ht)

        def fn(rows: slice, cd=cd, cyf=cyf, half=half) -> tuple[Tensor, Tensor]:
            t = p.probs(p.t, rows).reshape(B, Ht, -1)
            s = p.probs(p.s, rows).reshape(B, Hs, 1, -1)
            d = torch.bmm(cd, t)
            y = torch.bmm(cyf, t).view(B, Hs, half, -1)
            return d.square().sum(-1), ((s - y) * d.view(B, Hs, half, -1)).sum(-1).view(B, -1)

        den, num = (x.view(B, Hs, half) for x in p.accumulate(fn, grad=False))
        alpha = torch.where(den > den_eps, num / den.clamp_min(den_eps), torch.full_like(den, 0.5)).clamp(0, 1)
        alpha = torch.where(valid[None, :, 1::2], alpha, torch.ones_like(alpha))
        a = alpha[..., None]
        coef = a * cx + (1 - a) * cy
        valid = valid[:, 0::2]
    return coef[:, :, 0]


# --------------------------------------------------------------------------------------------- entry point


def qk_attention_loss(
    method: str | object,
    teacher: AttentionInputs,
    student: AttentionInputs,
    *,
    query_mask: Tensor | None = None,
    key_mask: Tensor | None = None,
    chunk_size: int | None = None,
    module: A2DLoss | None = None,
    **options,
) -> tuple[Tensor, Tensor | None]:
    """The attention loss of ``method`` for one layer pair, from queries and keys, in chunks of query rows.

    Equals the map path, ``build_attention_criterion(name, teacher_heads=Ht, student_heads=Hs, **options)(
    teacher.maps(), student.maps(), query_mask=query_mask, key_mask=key_mask)`` (value, weights and
    gradients; for ``a2d`` the criterion's aligner is ``module``), without ever holding a whole
    (B, H, Q, K) map: see the module docstring for the passes of each method.

    Args:
        method: a name of :data:`QK_METHODS`, or a method object of ``amad.losses.methods`` (``AMAD(...)``,
            ``SHD(...)``, ...: anything with ``name`` and ``options()``), whose options are used (then
            ``**options`` must be empty).
        teacher: the teacher layer's :class:`AttentionInputs` (detached here: a constant target).
        student: the student layer's :class:`AttentionInputs`; same B, Q, K; any number of heads the method
            allows.
        query_mask: (B, Q) bool, True = real query row (the adapter's ``query_masks[site]``); None = all real.
        key_mask: (B, K) bool, True = real key (``key_masks[site]``); used by ``shd``, ``a2d`` and
            ``attn_distill`` as in the map path.
        chunk_size: query rows per chunk; None = about :data:`DEFAULT_CHUNK_ELEMENTS` map elements of
            both models per chunk. Values >= Q mean one chunk (still checkpointed).
        module: for ``a2d``, the :class:`~amad.losses.A2DLoss` of this layer pair (the criterion's
            ``aligners[layer]``; its parameters get their gradient); ignored otherwise.
        **options: the method's options, by the names of :data:`METHOD_OPTIONS` (the fields of the
            method classes): ``amad``: ``variant`` ("kl", "l2", "token"), ``weight_temperature``,
            ``detach_weights``, ``eps``; ``one_to_one``, ``head_mean``: ``row_loss`` ("kl", "mse"), ``eps``;
            ``shd``: ``softening_temperature``, ``merge_granularity`` ("map", "row"), ``eps``; ``a2d``:
            ``teacher_as_logits`` (must agree with ``module``); ``attn_distill``: ``aggregation_temperature``,
            ``query_index``, ``prob_clamp``, ``eps``. ``teacher_grid``/``student_grid``/``num_prefix_tokens``
            are accepted, the grids only when equal or None (resizing needs the maps).

    Returns:
        ``(loss, weights)``: the scalar loss (float32; float64 for float64 inputs) and the detached weights
        the criterion returns: AMAD's a (B, Ht, Hs), one-to-one's identity, SHD's merge coefficients, A2D's
        kernel, None for ``head_mean`` and ``attn_distill``.

    Raises:
        ValueError: unknown method or option, a method that needs whole maps (``amad_proj``) or is not
            map-based (``minilm_relation``), bad option values, or mismatched shapes/masks (naming both).
    """
    if not isinstance(method, str):
        if options:
            raise ValueError(
                f"pass the options in the method object {method!r}, not also as keywords {sorted(options)}"
            )
        name = getattr(method, "name", None)
        if not isinstance(name, str) or not callable(getattr(method, "options", None)):
            raise ValueError(f"method must be a name or a method object with name and options(), got {method!r}")
        method, options = name, dict(method.options())
    if method == "amad_proj":
        raise ValueError(
            "method 'amad_proj' projects whole flattened maps with an n x n matrix: it needs the maps "
            "(attention_source maps), not queries and keys"
        )
    if method == "minilm_relation":
        raise ValueError("method 'minilm_relation' distils Q/K/V relations, not attention maps: it takes (q, k, v)")
    check_choice("attention method", method, QK_METHODS)
    valid = METHOD_OPTIONS[method]
    unknown = sorted(set(options) - set(valid) - set(_GRID_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for attention method {method!r}; valid: {', '.join([*valid, *_GRID_OPTIONS])}"
        )
    tg, sg = options.get("teacher_grid"), options.get("student_grid")
    if tg is not None and sg is not None and tuple(tg) != tuple(sg):
        raise ValueError(
            f"teacher_grid {tuple(tg)} != student_grid {tuple(sg)}: resizing the teacher's maps needs the maps "
            "(attention_source maps)"
        )
    o = {**valid, **{k: v for k, v in options.items() if k in valid}}
    p = _Pair(teacher, student, query_mask, key_mask, chunk_size)
    with no_autocast(p.device.type):
        if method == "amad":
            check_choice("variant", o["variant"], AMAD_VARIANTS)
            check_positive("weight_temperature", o["weight_temperature"])
            tau, detach, eps = o["weight_temperature"], bool(o["detach_weights"]), o["eps"]
            if o["variant"] == "kl":
                return _amad_kl(p, tau, detach, eps)
            if o["variant"] == "l2":
                return _amad_l2(p, tau, detach)
            return _amad_token(p, tau, detach, eps)
        if method in ("one_to_one", "head_mean"):
            check_choice("row_loss", o["row_loss"], ROW_LOSS_KINDS)
            fn = _one_to_one if method == "one_to_one" else _head_mean
            return fn(p, o["row_loss"], o["eps"])
        if method == "shd":
            return _shd(p, o["softening_temperature"], o["merge_granularity"], o["eps"])
        if method == "a2d":
            return _a2d(p, module, o["teacher_as_logits"])
        return _attn_distill(p, o["aggregation_temperature"], o["query_index"], o["prob_clamp"], o["eps"])
