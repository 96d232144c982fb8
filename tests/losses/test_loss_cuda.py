"""The accelerator path of the AMAD KL loss (the backward rebuilds the mixture) against the float64
loop reference. Skipped without CUDA: run on a GPU machine with
``pytest tests/losses/test_loss_cuda.py``."""

from __future__ import annotations

import losses_reference as ref
import pytest
import torch
from losses_helpers import make_masks, random_maps

from amad.losses import amad_loss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("detach", [False, True])
def test_cuda_kl_matches_loop_reference(dtype, detach):
    qmask, kpad = make_masks()
    teacher = random_maps(H=4, seed=1, key_pad=kpad)
    student = random_maps(H=3, seed=2, key_pad=kpad).requires_grad_(True)
    want, _ = ref.amad(teacher, student, qmask, "kl", 0.7, detach_weights=detach)
    (want_grad,) = torch.autograd.grad(want, student)
    s = student.detach().to("cuda", dtype).requires_grad_(True)
    loss = amad_loss(teacher.to("cuda", dtype), s, query_mask=qmask.cuda(), temperature=0.7, detach_weights=detach)
    (grad,) = torch.autograd.grad(loss, s)
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(loss.double().cpu(), want, **tol)
    torch.testing.assert_close(grad.double().cpu(), want_grad, **tol)


def test_cuda_distillation_step_bf16_is_finite_and_close_to_cpu():
    from amad.bench._batches import random_batch
    from amad.lit import DistillationModule
    from amad.models import build_model

    torch.manual_seed(0)
    teacher = build_model("blip-vqa", preset="tiny")
    module = DistillationModule(teacher=teacher, student={"num_heads": 2}).eval()
    batch = random_batch("blip-vqa", 4, seed=3, model=teacher)
    cpu = module.distillation_losses(batch)
    module.cuda()
    gpu_batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    fp32 = module.distillation_losses(gpu_batch)
    for k in cpu:
        torch.testing.assert_close(fp32[k].cpu(), cpu[k].detach(), rtol=1e-3, atol=1e-4, msg=k)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = module.distillation_losses(gpu_batch)
    assert all(torch.isfinite(v) for v in bf16.values())
    bf16["loss"].backward()
