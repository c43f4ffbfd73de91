"""The native ops a sharded fit adds: fused_loss_sums, sgd_step and
params_step."""
import pytest
import torch

import biasfit
from biasfit.engine import NativeSGD, params_parts
from biasfit.model import PARAM_NAMES
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


PARAMS = PARAM_NAMES
# fit_params's options (kind 0 SGD, 1 Adam, 2 AdamW) and their defaults.
FIT_OPTIONS = {"kind": 0, "lr": 1e-4, "momentum": 0.0, "dampening": 0.0, "nesterov": False,
               "weight_decay": 0.0, "maximize": False, "beta1": 0.9, "beta2": 0.999,
               "eps": 1e-8, "amsgrad": False}
STEP_SETTINGS = {
    "sgd-nesterov": {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
    "sgd-damped-maximize": {"lr": 1e-8, "momentum": 0.7, "dampening": 0.2, "maximize": True},
    "adam": {"kind": 1, "lr": 0.01},
    "adam-amsgrad-wd": {"kind": 1, "lr": 0.01, "weight_decay": 0.1, "amsgrad": True},
    "adamw-maximize": {"kind": 2, "lr": 1e-3, "weight_decay": 0.1, "beta1": 0.8,
                       "beta2": 0.99, "amsgrad": True, "maximize": True},
}
TRAINED = {"all": 127, "weights": 63, "bias": 64, "hidden": 0b1011}


def fit_params(x, y, params, trained, o, epochs):
    return torch.ops.biasfit.fit_params(
        x, y, params, trained, o["kind"], o["lr"], o["momentum"], o["dampening"],
        o["nesterov"], o["weight_decay"], o["maximize"], o["beta1"], o["beta2"], o["eps"],
        o["amsgrad"], epochs, 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("trained", TRAINED)
@pytest.mark.parametrize("settings", STEP_SETTINGS)
def test_native_params_step_as_fit_params(dtype, trained, settings):
    # A sharded fused fit's epoch in Python over the whole data (its sums
    # rounded to the data's dtype, then params_step) must reproduce the
    # native trainer's every bit, as NativeSGD does fit_sgd's.
    x, y, w, b = random_problem(3000, dtype, "cpu", seed=5)
    params = torch.cat([w, b.reshape(1) - 2])
    bits, options, epochs = TRAINED[trained], dict(FIT_OPTIONS, **STEP_SETTINGS[settings]), 40
    final, want_losses, _, info = fit_params(x, y, params, bits, options, epochs)
    assert info.tolist() == [epochs, 2, -1]  # ran out its epochs (csrc/core/fit.h)
    local_sums, native = params_parts(x, y, params, bits, options)
    index = [i for i in range(7) if bits >> i & 1]
    losses = []
    for _ in range(epochs):
        loss, grads = local_sums()
        losses.append(loss.to(dtype).item())
        native.grads[index] = grads.to(dtype)
        native.step()
    assert losses == want_losses.tolist()
    assert native.params.tolist() == final.tolist()


def test_params_step_rejects_bad_arguments():
    p = torch.zeros(7, dtype=torch.float64)
    state = torch.zeros(7, 4, dtype=torch.float64)
    args = (0.1, 0.0, 0.0, False, 0.0, False, 0.9, 0.999, 1e-8, False)
    step = torch.ops.biasfit.params_step
    for bad, message in [((p[:6], p, state, 1, 0), "params must be 1-D with 7 values"),
                         ((p, p.float(), state, 1, 0), "grads has dtype"),
                         ((p, p, state.float(), 1, 0), "state must be float64"),
                         ((p, p, state[:, :3], 1, 0), r"state must have shape \[7, 4\]"),
                         ((p, p, state, 128, 0), "trained must be"),
                         ((p, p, state, 1, 3), "optimizer must be 0"),
                         ((p, p, state, 1, 1, 0.1, 0.0, 0.0, False, 0.0, False, 1.0),
                          "beta1 must be in")]:
        with pytest.raises(ValueError, match=message):
            step(*bad, *args[len(bad) - 5:])
    with pytest.raises(ValueError, match="nesterov requires momentum"):
        step(p, p, state, 1, 0, 0.1, 0.0, 0.0, True, 0.0, False, 0.9, 0.999, 1e-8, False)


def test_params_step_opcheck():
    p = torch.tensor(biasfit.TUTORIAL_WEIGHTS + (-2.0,), dtype=torch.float64)
    state = torch.rand(7, 4, dtype=torch.float64)
    state[:, 3] = 3.0  # steps taken
    torch.library.opcheck(torch.ops.biasfit.params_step.default,
                          (p, p * 0.5, state, 127, 1, 0.01, 0.0, 0.0, False, 0.0, False,
                           0.9, 0.999, 1e-8, True))


def test_params_step_cuda_slot_errors_clearly():
    # No CUDA kernel: whatever the build, the CUDA slot says so in one line
    # rather than the dispatcher's generic "could not run".
    cuda_key = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    p = torch.zeros(7, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="biasfit::params_step (got a CUDA tensor, but this "
                                           "biasfit was built without CUDA|has no CUDA kernel)"):
        torch.ops.biasfit.params_step.default.redispatch(
            cuda_key, p, p, torch.zeros(7, 4, dtype=torch.float64), 1, 0, 0.1, 0.0, 0.0,
            False, 0.0, False, 0.9, 0.999, 1e-8, False)
