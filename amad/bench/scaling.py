"""Scaling benchmark: AMAD loss time against tokens and student heads, and the step against tokens.

AMAD loss forward+backward time against tokens (65, 197, 577 query/key tokens, the ViT-B/16 patch
counts at 128/224/384 px) and against student heads (Ht 12 → Hs 2, 4, 6, 8, 12); and the step of
:mod:`amad.bench.step` against tokens (a BLIP-VQA model with ViT-B/16 patches at 128/224/384 px).
"""

from __future__ import annotations

import statistics

import torch

from amad.bench.common import device_under_test, precision_under_test, print_table, timed, write_json
from amad.bench.step import measure_step

#: image sizes whose ViT-B/16 token counts (with the CLS token) are 65, 197 and 577
TOKEN_IMAGE_SIZES = {65: 128, 197: 224, 577: 384}


def run_scaling(out: str | None = None, quick: bool = False) -> dict:
    from amad.losses import amad_loss

    device = device_under_test()
    tokens = (65, 197) if quick else (65, 197, 577)
    heads = (2, 8) if quick else (2, 4, 6, 8, 12)
    bs, reps = (2, 2) if quick else (8, 5)
    records = []

    def loss_time(ht: int, hs: int, n: int) -> float:
        g = torch.Generator().manual_seed(0)
        t = torch.rand(bs, ht, n, n, generator=g).softmax(-1).to(device)
        s = torch.rand(bs, hs, n, n, generator=g).softmax(-1).to(device).requires_grad_()

        def fn():
            amad_loss(t, s).backward()

        fn()
        return statistics.median(timed(fn, reps))

    base = None
    for n in tokens:
        sec = loss_time(12, 6, n)
        base = base or sec / (n * n)
        records.append(
            {
                "axis": "tokens",
                "tokens": n,
                "teacher_heads": 12,
                "student_heads": 6,
                "seconds": sec,
                "seconds_per_qk_rel": sec / (n * n) / base,
            }
        )
    ref = None
    for hs in heads:
        sec = loss_time(12, hs, tokens[1])
        ref = ref or sec
        records.append(
            {
                "axis": "student_heads",
                "tokens": tokens[1],
                "teacher_heads": 12,
                "student_heads": hs,
                "seconds": sec,
                "relative": sec / ref,
            }
        )
    records += _step_vs_tokens(tokens, quick)
    print_table("scaling", records, ("axis", "tokens", "student_heads", "seconds", "overhead"))
    return write_json({"scaling": records}, out)


def _step_vs_tokens(tokens: tuple[int, ...], quick: bool) -> list[dict]:
    """The ``step`` measurement of a BLIP-VQA model at ViT-B/16 patches, 65 / 197 / 577 image tokens."""
    preset, bs, reps = ("tiny", 2, 2) if quick else (("base", 32, 7) if torch.cuda.is_available() else ("small", 8, 5))
    records = []
    for n in tokens:
        rec = measure_step(
            "blip-vqa", preset, bs, reps, precision_under_test(), image_size=TOKEN_IMAGE_SIZES[n], patch_size=16
        )
        records.append(
            {
                "axis": "step_tokens",
                "tokens": n,
                "student_heads": None,
                "seconds": rec["distill_s"],
                **{
                    k: rec[k]
                    for k in (
                        "model",
                        "batch_size",
                        "precision",
                        "teacher_s",
                        "student_s",
                        "distill_s",
                        "overhead",
                        "overhead_iqr",
                    )
                },
            }
        )
    return records
