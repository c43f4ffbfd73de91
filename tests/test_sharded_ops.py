"""The two native ops a sharded fit adds: fused_loss_sums and sgd_step."""
import pytest
import torch

import biasfit
from biasfit.distributed import NativeSGD
from helpers import random_problem

SGD_SETTINGS = [
    {"momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0},
    {"momentum": 0.9, "dampening": 0.0, "nesterov": True, "weight_decay": 0.0},
    {"momentum": 0.7, "dampening": 0.2, "nesterov": False, "weight_decay": 1e-2},
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [3, 2**14 + 5])
def test_fused_loss_sums_are_fused_loss_before_rounding(n, dtype, device):
    x, y, w, b = random_problem(n, dtype, device)
    sums = torch.ops.biasfit.fused_loss_sums(x, y, w, b)
    loss, grad = torch.ops.biasfit.fused_loss(x, y, w, b)
    assert sums.dtype == torch.float64 and sums.shape == (2,) and sums.device == x.device
    assert sums.to(dtype).tolist() == [loss.item(), grad.item()]


def test_fused_loss_sums_keep_what_float32_rounds_away():
    x, y, w, b = random_problem(1000, torch.float32, "cpu")
    sums = torch.ops.biasfit.fused_loss_sums(x, y, w, b)
    assert sums[0].item() != sums[0].float().item()


def test_fused_loss_sums_checks_its_inputs():
    x, y, w, b = random_problem(10, torch.float64, "cpu")
    with pytest.raises(ValueError, match="labels has shape"):
        torch.ops.biasfit.fused_loss_sums(x, y[:-1], w, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("settings", SGD_SETTINGS, ids=["plain", "nesterov", "damped"])
def test_native_sgd_steps_as_fit_sgd(dtype, settings):
    # The Python loop with NativeSGD, over the whole data, must reproduce the
    # native trainer's every bit: what a sharded fused fit relies on.
    x, y, w, b = random_problem(500, dtype, "cpu")
    lr = 1e-4
    try:
        want = biasfit.fit_fused(x, y, weights=w, bias=b, lr=lr, epochs=30, tol=0.0,
                                 **settings)
    except biasfit.StalledError as stall:  # nesterov: every unit off from epoch 27
        want = stall.result  # its epochs, and the bias after the last one's step
    param = b.clone()
    sgd = NativeSGD(param, lr=lr, maximize=False, **settings)
    losses = []
    for _ in range(len(want.losses)):
        loss, param.grad = torch.ops.biasfit.fused_loss(x, y, w, param)
        losses.append(loss.item())
        sgd.step()
    assert losses == want.losses
    assert param.item() == want.final_bias


def test_sgd_step_rejects_bad_arguments():
    p = torch.tensor(1.0, dtype=torch.float64)
    with pytest.raises(ValueError, match="nesterov requires momentum"):
        torch.ops.biasfit.sgd_step(p, p, None, 0.1, 0.0, 0.0, True, 0.0, False)
    with pytest.raises(ValueError, match="param must hold one value"):
        torch.ops.biasfit.sgd_step(torch.ones(2, dtype=torch.float64), p, None,
                                   0.1, 0.0, 0.0, False, 0.0, False)
    with pytest.raises(ValueError, match="grad has dtype"):
        torch.ops.biasfit.sgd_step(p, p.float(), None, 0.1, 0.0, 0.0, False, 0.0, False)


def test_opcheck(device):
    x, y, w, b = random_problem(50, torch.float64, device)
    torch.library.opcheck(torch.ops.biasfit.fused_loss_sums.default, (x, y, w, b))
    x, y, w, b = random_problem(50, torch.float64, "cpu")  # sgd_step: CPU only
    torch.library.opcheck(torch.ops.biasfit.sgd_step.default,
                          (b, b * 0.5, b * 0.1, 0.1, 0.9, 0.0, False, 0.0, False))
