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
    return torch.clamp(torch.sqrt((v * v).sum()), min=1e-12) if float((v * v).sum().detach()) > 0 else v.new_tensor(1e-12)


def _cos(u, v):
    return (u * v).sum() / (_norm(u) * _norm(v))


def _softmax(values, tau):
    z = torch.stack(values) / tau
    z = z - z.max()
    e = torch.exp(z)
    return e / e.sum()


def amad(teacher, student, mask=None, variant="kl", tau=1.0, eps=1e-8, detach_weights=False):
    """Returns (loss, weights (B, Ht, Hs))."""
    B, Ht, Q, K = teacher.shape
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
    B, Ht, Q, K = teacher.shape
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
    B, Ht, Q, K = teacher.shape
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
        for xt, xs in zip(teacher_qkv, student_qkv):
            dt, ds = xt.shape[-1] // R, xs.shape[-1] // R
            heads = teacher_qkv[0].new_zeros(())
            for r in range(R):
                per_row = []
                for q in keys:
                    def rel(x, d):
                        scores = [(x[b, q, r * d:(r + 1) * d] * x[b, k, r * d:(r + 1) * d]).sum() / math.sqrt(d)
                                  for k in keys]
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
