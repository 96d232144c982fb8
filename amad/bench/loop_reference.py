"""Explicit-loop references of the attention losses, for ``amad bench losses``.

Python loops over batch, heads and query rows; only the keys of one row are a vector. Rows are taken
with ``unbind`` (one backward node per split, not one full-size gradient per indexed row), so the
loops are slow only because they are loops. They follow the same conventions as the vectorised
losses (masked rows zeroed, clamps, reductions) and are what the
benchmark's ``speedup_vs_loop`` is measured against; the tests check them against the vectorised
losses (the tests' own references, in ``tests/losses``, go further and loop over keys too).
"""

from __future__ import annotations

import torch
from torch import Tensor

from amad.losses.shd import shd_groups


def _valid(mask: Tensor | None, b: int, n: int) -> list[int]:
    return [q for q in range(n) if mask is None or bool(mask[b, q])]


def _keep(rows: list[int], n: int, dtype: torch.dtype) -> Tensor:
    keep = torch.zeros(n, 1, dtype=dtype)
    keep[rows] = 1
    return keep


def _split(x: Tensor) -> list[list[Tensor]]:
    """(H, Q, K) -> rows[h][q], each (K,), by unbind (cheap backward)."""
    return [list(m.unbind(0)) for m in x.unbind(0)]


def _row_kl(t_row: Tensor, p_row: Tensor, eps: float) -> Tensor:
    return (torch.xlogy(t_row, t_row) - t_row * torch.log(p_row.clamp_min(eps))).sum()


def _cos(u: Tensor, v: Tensor) -> Tensor:
    return (u * v).sum() / (torch.linalg.vector_norm(u).clamp_min(1e-12) * torch.linalg.vector_norm(v).clamp_min(1e-12))


def loop_amad(teacher, student, query_mask=None, variant="kl", temperature=1.0, eps=1e-8, projection=None):
    """AMAD (Eq. 2-5, 9, 12; "proj" = Eq. 10-11 with an :class:`AMADProjectionLoss` ``projection``)."""
    B, Ht, Q, K = teacher.shape
    Hs = student.shape[1]
    total = teacher.new_zeros(())
    for b in range(B):
        rows = _valid(query_mask, b, Q)
        keep = _keep(rows, Q, teacher.dtype)
        T, S = teacher[b].detach() * keep, student[b] * keep
        loss_b = teacher.new_zeros(())
        if variant == "token":
            Tr, Sr = _split(T), _split(S)
            for q in rows:
                for i in range(Ht):
                    a = torch.softmax(torch.stack([_cos(Tr[i][q], Sr[j][q]) for j in range(Hs)]) / temperature, 0)
                    mix = sum(a[j] * Sr[j][q] for j in range(Hs))
                    loss_b = loss_b + _row_kl(Tr[i][q], mix, eps)
            total = total + (loss_b / len(rows) if rows else loss_b)
            continue
        if variant == "proj":
            S = [
                torch.relu(projection.weight @ s.reshape(-1) + projection.bias).reshape(Q, K) * keep
                for s in S.unbind(0)
            ]
            S = torch.stack([torch.stack([r / r.sum().clamp_min(eps) for r in s.unbind(0)]) for s in S])
        tf = [x.reshape(-1) for x in T.unbind(0)]
        sf = [x.reshape(-1) for x in S.unbind(0)]
        Tr = _split(T)
        for i in range(Ht):
            a = torch.softmax(torch.stack([_cos(tf[i], sf[j]) for j in range(Hs)]) / temperature, 0)
            if variant == "l2":
                target = tf[i] / torch.linalg.vector_norm(tf[i]).clamp_min(1e-12)
                mixed = sum(a[j] * sf[j] / torch.linalg.vector_norm(sf[j]).clamp_min(1e-12) for j in range(Hs))
                loss_b = loss_b + (target - mixed).pow(2).sum()
            else:
                mix = sum(a[j] * sf[j] for j in range(Hs)).view(Q, K).unbind(0)
                if rows:
                    loss_b = loss_b + sum(_row_kl(Tr[i][q], mix[q], eps) for q in rows) / len(rows)
        total = total + loss_b
    return total / B


def loop_one_to_one(teacher, student, query_mask=None, eps=1e-8):
    B, _Ht, Q, _K = teacher.shape
    total = teacher.new_zeros(())
    for b in range(B):
        rows = _valid(query_mask, b, Q)
        Tr, Sr = _split(teacher[b].detach()), _split(student[b])
        for i in range(student.shape[1]):
            if rows:
                total = total + sum(_row_kl(Tr[i][q], Sr[i][q], eps) for q in rows) / len(rows)
    return total / B


def loop_head_mean(teacher, student, query_mask=None, eps=1e-8):
    """Head-mean KL: heads averaged by a loop, then row KL over valid rows."""
    B, Ht, Q, _K = teacher.shape
    Hs = student.shape[1]
    total = teacher.new_zeros(())
    for b in range(B):
        rows = _valid(query_mask, b, Q)
        Tr, Sr = _split(teacher[b].detach()), _split(student[b])
        per_row = []
        for q in rows:
            t = sum(Tr[i][q] for i in range(Ht)) / Ht
            s = sum(Sr[j][q] for j in range(Hs)) / Hs
            per_row.append(_row_kl(t, s, eps))
        if rows:
            total = total + sum(per_row) / len(rows)
    return total / B


def _soft_log(row: Tensor, temperature: float, eps: float) -> Tensor:
    return torch.log_softmax(torch.log(row.clamp_min(eps)) / temperature, dim=0)


def loop_shd(teacher, student, query_mask=None, temperature=1.0, eps=1e-8):
    """SHD (map-level alpha), tree merge over Python lists; no key mask."""
    B, Ht, Q, _K = teacher.shape
    Hs = student.shape[1]
    total = teacher.new_zeros(())
    for b in range(B):
        rows = _valid(query_mask, b, Q)
        keep = _keep(rows, Q, teacher.dtype)
        T, S = teacher[b].detach() * keep, student[b] * keep
        Tm, Sm = T.unbind(0), S.unbind(0)
        for j, group in enumerate(shd_groups(Ht, Hs)):
            target = Sm[j].detach()
            items = [Tm[i] for i in group]
            while len(items) > 1:
                merged = []
                for p in range(0, len(items), 2):
                    if p + 1 == len(items):
                        merged.append(items[p])
                        continue
                    x, y = items[p], items[p + 1]
                    den = ((x - y) ** 2).sum()
                    alpha = ((target - y) * (x - y)).sum() / den if float(den) > 1e-12 else x.new_tensor(0.5)
                    alpha = alpha.clamp(0, 1)
                    merged.append(alpha * x + (1 - alpha) * y)
                items = merged
            m, s_rows = items[0].unbind(0), Sm[j].unbind(0)
            per_row = []
            for q in rows:
                lt, ls = _soft_log(m[q], temperature, eps), _soft_log(s_rows[q], temperature, eps)
                per_row.append((lt.exp() * (lt - ls)).sum())
            if rows:
                total = total + sum(per_row) / len(rows)
    return total / B


def loop_a2d(teacher, student, a2d, query_mask=None):
    """A2D with an :class:`amad.losses.A2DLoss` ``a2d`` (teacher as logits); no key mask."""
    B, Ht, Q, _K = teacher.shape
    Hs = student.shape[1]
    W, bias = a2d.aligner.weight[:, :, 0, 0], a2d.aligner.bias
    total = teacher.new_zeros(())
    Wl, bl = [w.unbind(0) for w in W.unbind(0)], bias.unbind(0)
    for b in range(B):
        rows = _valid(query_mask, b, Q)
        Tr, Sr = _split(teacher[b].detach()), _split(student[b])
        for i in range(Ht):
            per_row = []
            for q in rows:
                ls = torch.log_softmax(sum(Wl[i][j] * Sr[j][q] for j in range(Hs)) + bl[i], dim=0)
                lt = torch.log_softmax(Tr[i][q], dim=0) if a2d.teacher_as_logits else None
                if lt is None:
                    t = Tr[i][q]
                    per_row.append((torch.xlogy(t, t) - t * ls).sum())
                else:
                    per_row.append((lt.exp() * (lt - ls)).sum())
            if rows:
                total = total + sum(per_row) / len(rows)
    return total / B


def loop_attn_distill(teacher, student, query_mask=None, temperature=20.0, prob_clamp=(1e-5, 0.996), eps=1e-8):
    """AttnDistill over every valid row; no key mask."""
    B, Ht, Q, _K = teacher.shape
    Hs = student.shape[1]
    total = teacher.new_zeros(())

    def aggregate(rows_of, H, q):
        z = sum(torch.log(rows_of[h][q].clamp_min(eps)) for h in range(H))
        p = torch.softmax(z / temperature, dim=0)
        if prob_clamp is not None:
            p = p.clamp(*prob_clamp)
            p = p / p.sum().clamp_min(eps)
        return p

    for b in range(B):
        rows = _valid(query_mask, b, Q)
        Tr, Sr = _split(teacher[b].detach()), _split(student[b])
        per_row = []
        for q in rows:
            pt, ps = aggregate(Tr, Ht, q), aggregate(Sr, Hs, q)
            per_row.append((torch.xlogy(pt, pt) - pt * torch.log(ps.clamp_min(eps))).sum())
        if rows:
            total = total + sum(per_row) / len(rows)
    return total / B
