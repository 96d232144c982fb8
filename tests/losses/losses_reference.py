"""Slow, explicit-loop references of every loss, written from the equations (not from the code).

Loops over batch, heads and rows on purpose; differentiable (built from scalar torch ops), meant for
float64 comparisons on small shapes. Conventions from docs/method.md section 3.
"""

from __future__ import annotations

import math

import torch


def _valid_rows(mask, b, Q):
    return [q for q in range(Q) if mask is None or bool(mask[b, q])]


def _masked(x, rows):
    """Copy of one example's (H, Q, K) maps with the rows not in ``rows`` set to 0."""
    out = torch.zeros_like(x)
    for q in rows:
        out[:, q] = x[:, q]
    return out


def _xlogx(v):
    return v * torch.log(v) if float(v.detach()) > 0 else v * 0


def row_kl(t_row, p_row, eps):
    """sum_k t log t - t log max(p, eps), 0 log 0 = 0; loops over keys."""
    total = t_row.new_zeros(())
    for k in range(t_row.shape[0]):
        total = total + _xlogx(t_row[k]) - t_row[k] * torch.log(torch.clamp(p_row[k], min=eps))
    return total


def _norm(v):
    sq = (v * v).sum()
    return torch.clamp(torch.sqrt(sq), min=1e-12) if float(sq.detach()) > 0 else v.new_tensor(1e-12)


def _cos(u, v):
    return (u * v).sum() / (_norm(u) * _norm(v))


def _softmax(values, tau):
    z = torch.stack(values) / tau
    z = z - z.max()
    e = torch.exp(z)
    return e / e.sum()


def amad(teacher, student, mask=None, variant="kl", tau=1.0, eps=1e-8, detach_weights=False):
    """Returns (loss, weights (B, Ht, Hs))."""
    B, Ht, Q, _K = teacher.shape
    Hs = student.shape[1]
    teacher = teacher.detach()
    total = teacher.new_zeros(())
    all_weights = []
    for b in range(B):
        rows = _valid_rows(mask, b, Q)
        T, S = _masked(teacher[b], rows), _masked(student[b], rows)
        if variant == "token":
            loss_b = teacher.new_zeros(())
            wsum = torch.zeros(Ht, Hs, dtype=teacher.dtype)
            for q in rows:
                for i in range(Ht):
                    a = _softmax([_cos(T[i, q], S[j, q]) for j in range(Hs)], tau)
                    wsum[i] = wsum[i] + a.detach()
                    if detach_weights:
                        a = a.detach()
                    mix = sum(a[j] * S[j, q] for j in range(Hs))
                    loss_b = loss_b + row_kl(T[i, q], mix, eps)
            total = total + (loss_b / len(rows) if rows else loss_b)
            all_weights.append(wsum / len(rows) if rows else torch.full((Ht, Hs), 1.0 / Hs, dtype=teacher.dtype))
            continue
        tf = [T[i].reshape(-1) for i in range(Ht)]
        sf = [S[j].reshape(-1) for j in range(Hs)]
        weights = []
        for i in range(Ht):
            a = _softmax([_cos(tf[i], sf[j]) for j in range(Hs)], tau)
            weights.append(a)
            if detach_weights:
                a = a.detach()
            if variant == "kl":
                mix = sum(a[j] * S[j] for j in range(Hs))
                per_row = [row_kl(T[i, q], mix[q], eps) for q in rows]
                total = total + (sum(per_row) / len(rows) if rows else 0)
            else:  # l2
                target = tf[i] / _norm(tf[i])
                mixed = sum(a[j] * sf[j] / _norm(sf[j]) for j in range(Hs))
                total = total + ((target - mixed) ** 2).sum()
        all_weights.append(torch.stack(weights).detach())
    return total / B, torch.stack(all_weights)


def one_to_one(teacher, student, mask=None, kind="kl", eps=1e-8):
    B, _Ht, Q, _K = teacher.shape
    Hs = student.shape[1]
    total = teacher.new_zeros(())
    for b in range(B):
        rows = _valid_rows(mask, b, Q)
        for i in range(Hs):
            per_row = []
            for q in rows:
                t, s = teacher[b, i, q].detach(), student[b, i, q]
                per_row.append(row_kl(t, s, eps) if kind == "kl" else ((t - s) ** 2).sum())
            if rows:
                total = total + sum(per_row) / len(rows)
    return total / B


def head_mean(teacher, student, mask=None, kind="kl", eps=1e-8):
    B, Ht, Q, _K = teacher.shape
    Hs = student.shape[1]
    total = teacher.new_zeros(())
    for b in range(B):
        rows = _valid_rows(mask, b, Q)
        per_row = []
        for q in rows:
            t = sum(teacher[b, i, q].detach() for i in range(Ht)) / Ht
            s = sum(student[b, j, q] for j in range(Hs)) / Hs
            per_row.append(row_kl(t, s, eps) if kind == "kl" else ((t - s) ** 2).sum())
        if rows:
            total = total + sum(per_row) / len(rows)
    return total / B


def amad_proj(teacher, student, weight, bias, mask=None, tau=1.0, eps=1e-8, normalize_rows=True):
    """Eq. 10-11 with explicit loops; returns the loss."""
    B, Ht, Q, K = teacher.shape
    Hs = student.shape[1]
    total = teacher.new_zeros(())
    for b in range(B):
        rows = _valid_rows(mask, b, Q)
        T, S = _masked(teacher[b].detach(), rows), _masked(student[b], rows)
        proj = []
        for j in range(Hs):
            flat = S[j].reshape(-1)
            out = torch.relu(torch.stack([(weight[r] * flat).sum() + bias[r] for r in range(Q * K)])).reshape(Q, K)
            out = _masked(out[None], rows)[0]
            if normalize_rows:
                out = torch.stack([out[q] / torch.clamp(out[q].sum(), min=eps) for q in range(Q)])
            proj.append(out)
        for i in range(Ht):
            a = _softmax([_cos(T[i].reshape(-1), proj[j].reshape(-1)) for j in range(Hs)], tau)
            mix = sum(a[j] * proj[j] for j in range(Hs))
            if rows:
                total = total + sum(row_kl(T[i, q], mix[q], eps) for q in rows) / len(rows)
    return total / B


def minilm_relation(teacher_qkv, student_qkv, key_mask=None, num_relation_heads=1):
    B, L, _ = teacher_qkv[0].shape
    R = num_relation_heads
    total = teacher_qkv[0].new_zeros(())
    for b in range(B):
        keys = _valid_rows(key_mask, b, L)
        for xt, xs in zip(teacher_qkv, student_qkv, strict=False):
            dt, ds = xt.shape[-1] // R, xs.shape[-1] // R
            heads = teacher_qkv[0].new_zeros(())
            for r in range(R):
                per_row = []
                for q in keys:

                    def rel(x, d):
                        scores = [
                            (x[b, q, r * d : (r + 1) * d] * x[b, k, r * d : (r + 1) * d]).sum() / math.sqrt(d)
                            for k in keys
                        ]
                        return _softmax(scores, 1.0)

                    pt, ps = rel(xt.detach(), dt), rel(xs, ds)
                    per_row.append(sum(pt[k] * (torch.log(pt[k]) - torch.log(ps[k])) for k in range(len(keys))))
                if per_row:
                    heads = heads + sum(per_row) / len(per_row)
            total = total + heads / R / 3
    return total / B


def output_kd(student_logits, teacher_logits, mask=None, tau=1.0):
    B, T, V = student_logits.shape
    total, count = student_logits.new_zeros(()), 0
    for b in range(B):
        for t in range(T):
            if mask is not None and not bool(mask[b, t]):
                continue
            pt = _softmax(list(teacher_logits[b, t].detach()), tau)
            ps = _softmax(list(student_logits[b, t]), tau)
            total = total + sum(pt[v] * (torch.log(pt[v]) - torch.log(ps[v])) for v in range(V))
            count += 1
    return total / max(count, 1) * tau**2


def _log_softmax_over(values, keys, tau=1.0):
    """log softmax of ``values[k] / tau`` over the key indices ``keys`` (a python list)."""
    z = torch.stack([values[k] for k in keys]) / tau
    return z - torch.logsumexp(z, 0)


def shd(teacher, student, qmask=None, kmask=None, tau=1.0, granularity="map", eps=1e-8):
    """Returns (loss, coefficients (B, Ht, Hs)); groups and tree merge written out with lists."""
    B, Ht, Q, K = teacher.shape
    Hs = student.shape[1]
    base, extra = divmod(Ht, Hs)
    groups, start = [], 0
    for j in range(Hs):
        size = base + (1 if j < extra else 0)
        groups.append(list(range(start, start + size)))
        start += size
    total = teacher.new_zeros(())
    coefs = torch.zeros(B, Ht, Hs, dtype=teacher.dtype)
    for b in range(B):
        rows = _valid_rows(qmask, b, Q)
        keys = [k for k in range(K) if kmask is None or bool(kmask[b, k])]
        T, S = _masked(teacher[b].detach(), rows), _masked(student[b], rows)
        for j, g in enumerate(groups):
            target = S[j].detach()
            # level items: (map (Q, K), coefficient dict per row or per map)
            items = [(T[i], {i: torch.ones(Q, dtype=teacher.dtype)}) for i in g]
            while len(items) > 1:
                merged = []
                for p in range(0, len(items), 2):
                    if p + 1 == len(items):
                        merged.append(items[p])
                        continue
                    (x, cx), (y, cy) = items[p], items[p + 1]
                    if granularity == "map":
                        den = ((x - y) ** 2).sum()
                        alpha = ((target - y) * (x - y)).sum() / den if float(den) > 1e-12 else x.new_tensor(0.5)
                        alpha = torch.clamp(alpha, 0, 1) * torch.ones(Q, dtype=x.dtype)
                    else:
                        alpha = []
                        for q in range(Q):
                            den = ((x[q] - y[q]) ** 2).sum()
                            num = ((target[q] - y[q]) * (x[q] - y[q])).sum()
                            a = num / den if float(den) > 1e-12 else x.new_tensor(0.5)
                            alpha.append(torch.clamp(a, 0, 1))
                        alpha = torch.stack(alpha)
                    m = alpha[:, None] * x + (1 - alpha[:, None]) * y
                    c = {i: alpha * v for i, v in cx.items()}
                    c.update({i: (1 - alpha) * v for i, v in cy.items()})
                    merged.append((m, c))
                items = merged
            m, c = items[0]
            for i, v in c.items():
                coefs[b, i, j] = v.mean() if granularity == "map" or not rows else v[rows].mean()
            per_row = []
            for q in rows:
                lt = _log_softmax_over(torch.log(torch.clamp(m[q], min=eps)), keys, tau)
                ls = _log_softmax_over(torch.log(torch.clamp(S[j, q], min=eps)), keys, tau)
                per_row.append((torch.exp(lt) * (lt - ls)).sum())
            if rows:
                total = total + sum(per_row) / len(rows)
    return total / B, coefs


def a2d(teacher, student, weight, bias, qmask=None, kmask=None, teacher_as_logits=True):
    B, Ht, Q, K = teacher.shape
    Hs = student.shape[1]
    total = teacher.new_zeros(())
    for b in range(B):
        rows = _valid_rows(qmask, b, Q)
        keys = [k for k in range(K) if kmask is None or bool(kmask[b, k])]
        for i in range(Ht):
            per_row = []
            for q in rows:
                aligned = sum(weight[i, j] * student[b, j, q] for j in range(Hs)) + bias[i]
                ls = _log_softmax_over(aligned, keys)
                t = teacher[b, i, q].detach()
                if teacher_as_logits:
                    lt = _log_softmax_over(t, keys)
                    per_row.append((torch.exp(lt) * (lt - ls)).sum())
                else:
                    tk = torch.stack([t[k] for k in keys])
                    per_row.append(sum(_xlogx(tk[n]) - tk[n] * ls[n] for n in range(len(keys))))
            if rows:
                total = total + sum(per_row) / len(rows)
    return total / B


def attn_distill(
    teacher, student, qmask=None, kmask=None, tau=20.0, query_index=None, prob_clamp=(1e-5, 0.996), eps=1e-8
):
    B, Ht, Q, K = teacher.shape
    Hs = student.shape[1]
    total = teacher.new_zeros(())
    for b in range(B):
        rows = [q for q in _valid_rows(qmask, b, Q) if query_index is None or q == query_index % Q]
        keys = [k for k in range(K) if kmask is None or bool(kmask[b, k])]

        def aggregate(maps, H, q):
            z = [sum(torch.log(torch.clamp(maps[h, q, k], min=eps)) for h in range(H)) for k in keys]
            p = torch.softmax(torch.stack(z) / tau, 0)
            if prob_clamp is not None:
                p = torch.clamp(p, *prob_clamp)
                p = p / p.sum()
            return p

        per_row = []
        for q in rows:
            pt, ps = aggregate(teacher[b].detach(), Ht, q), aggregate(student[b], Hs, q)
            per_row.append(sum(_xlogx(pt[n]) - pt[n] * torch.log(ps[n]) for n in range(len(keys))))
        if rows:
            total = total + sum(per_row) / len(rows)
    return total / B
