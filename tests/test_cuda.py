"""CUDA-specific checks: CPU and GPU agree, the GPU gives the same bits every
run, inputs past 2^31 elements, the trainer's device-side loss history, and
the errors for CUDA tensors a build cannot take.

Every kernel test elsewhere also runs on CUDA through the `device` fixture;
these need a GPU and a CUDA build of biasfit, and say so when skipped.
"""
import numpy as np
import pytest
import torch

import biasfit
import emu_model as em
from biasfit.reference import TutorialNN
from biasfit.train import tutorial_weights
from helpers import cpu_trainer_order
from tolerances import CPU_GPU, SUM_OF_COPIES

ops = torch.ops.biasfit
# The device under test; the CPU is the reference.
GPU = torch.device("cuda")

needs_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and biasfit.WITH_CUDA),
    reason="needs a CUDA GPU and biasfit built with CUDA "
           f"(GPU: {torch.cuda.is_available()}, CUDA build: {biasfit.WITH_CUDA})")

# CPU and CUDA sum in different orders; in float64 they must agree this well.
CPU_GPU64 = CPU_GPU["float64"]

# Sizes around the kernels' edges: a partial last group (16 bytes of points),
# one block (1024 groups), several blocks, a partial last block.
SIZES = [1, 2, 3, 5, 1023, 1024, 1025, 2048, 2049, 4095, 4096, 4097,
         70_001, 1_000_003]

SGD_SETTINGS = {
    "plain": {},
    "momentum": {"momentum": 0.9},
    "nesterov": {"momentum": 0.9, "nesterov": True},
    "weight_decay": {"weight_decay": 0.01},
    "dampened": {"momentum": 0.5, "dampening": 0.3, "weight_decay": 0.001},
}


def random_data(n, dtype, device, seed=0):
    """Doses over [-0.25, 1.25] (both hidden units on and off), labels in [0, 2]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, generator=g, dtype=torch.float64) * 1.5 - 0.25
    y = torch.rand(n, generator=g, dtype=torch.float64) * 2
    return x.to(dtype).to(device), y.to(dtype).to(device)


def weights_and_bias(x, bias):
    return tutorial_weights(x), torch.tensor(bias, dtype=x.dtype, device=x.device)


def grad_scale(x, y, bias):
    """sum |d loss_i / d bias|: the size of what the gradient sum adds up.

    The gradient sum may cancel, so its error bound for a different order of
    additions is relative to this, not to the sum itself.
    """
    y_hat = TutorialNN(bias, dtype=x.dtype)(x.cpu()).detach()
    return float((2 * (y_hat - y.cpu()) * (y_hat > 0)).abs().sum())


def to_cpu(*tensors):
    return [t.cpu() for t in tensors]


# -- CPU and CUDA agree -------------------------------------------------------------

@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_predict_same_bits_as_cpu(dtype):
    # Each point is rounded the same way on both (no FMA contraction), so the
    # elementwise op agrees exactly, not just closely.
    for n in SIZES:
        x, _ = random_data(n, dtype, "cpu", seed=n)
        w, b = weights_and_bias(x, -16.0)
        expected = ops.predict(x, w, b)
        got = ops.predict(x.to(GPU), w.to(GPU), b.to(GPU))
        assert got.device.type == GPU.type
        assert torch.equal(got.cpu(), expected), f"n={n}"


@needs_gpu
@pytest.mark.parametrize("bias", [-16.0, 0.5])
def test_fused_loss_matches_cpu_float64(bias):
    for n in SIZES:
        x, y = random_data(n, torch.float64, "cpu", seed=n)
        w, b = weights_and_bias(x, bias)
        loss, grad = ops.fused_loss(x, y, w, b)
        loss_gpu, grad_gpu = to_cpu(*ops.fused_loss(x.to(GPU), y.to(GPU), w.to(GPU), b.to(GPU)))
        torch.testing.assert_close(loss_gpu, loss, rtol=CPU_GPU64, atol=0, msg=f"n={n}")
        torch.testing.assert_close(grad_gpu, grad, rtol=0,
                                   atol=CPU_GPU64 * grad_scale(x, y, bias), msg=f"n={n}")


@needs_gpu
def test_fused_loss_float32_accumulates_in_float64():
    # Both devices sum float32 points in double and round once at the end, so
    # they agree to float32's last bit or one step of it.
    for n in SIZES:
        x, y = random_data(n, torch.float32, "cpu", seed=n)
        w, b = weights_and_bias(x, -16.0)
        loss, _ = ops.fused_loss(x, y, w, b)
        (loss_gpu, _) = to_cpu(*ops.fused_loss(x.to(GPU), y.to(GPU), w.to(GPU), b.to(GPU)))
        assert abs(float(loss_gpu) - float(loss)) <= abs(float(loss)) * 2 ** -23, f"n={n}"


@needs_gpu
def test_predict_bias_grad_matches_cpu_float64():
    for n in SIZES:
        x, g = random_data(n, torch.float64, "cpu", seed=n)
        g = g - 1  # gradients of both signs
        w, b = weights_and_bias(x, -16.0)
        expected = ops.predict_bias_grad(g, x, w, b)
        got = ops.predict_bias_grad(g.to(GPU), x.to(GPU), w.to(GPU), b.to(GPU)).cpu()
        mask = TutorialNN(-16.0, dtype=torch.float64)(x).detach() > 0
        scale = float((g * mask).abs().sum())
        torch.testing.assert_close(got, expected, rtol=0, atol=CPU_GPU64 * scale, msg=f"n={n}")


@needs_gpu
def test_predict_backward_on_gpu_matches_cpu():
    x, _ = random_data(10_000, torch.float64, "cpu")
    grads = []
    for device in ("cpu", GPU):
        model = biasfit.BasicNN(-16.0, dtype=torch.float64).to(device)
        (model(x.to(device)) * 3).sum().backward()
        grads.append(model.final_bias.grad.cpu())
    torch.testing.assert_close(grads[1], grads[0], rtol=CPU_GPU64, atol=0)


def generated_labels(n, dtype, bias_true=-5.0, seed=1):
    """Labels the network itself gives at bias_true: the fit can reach loss 0.

    At -5 about half the doses keep the output unit on, so with lr = 0.5 / n
    plain SGD closes about half the distance an epoch.
    """
    x, _ = random_data(n, dtype, "cpu", seed=seed)
    w, b = weights_and_bias(x, bias_true)
    return x, ops.predict(x, w, b)


def fit_on(device, x, y, **kwargs):
    x, y = x.to(device), y.to(device)
    w, b = weights_and_bias(x, 0.0)
    settings = {"lr": 0.1, "momentum": 0.0, "dampening": 0.0, "nesterov": False,
                "weight_decay": 0.0, "maximize": False, "epochs": 100, "tol": 1e-4}
    settings.update(kwargs)
    return to_cpu(*ops.fit_sgd(x, y, w, b, *settings.values()))


def assert_same_fit(got, expected):
    (bias, losses, biases, info), (bias_e, losses_e, biases_e, info_e) = got, expected
    assert info.tolist() == info_e.tolist()
    epoch, status = info.tolist()
    seen = epoch if status == 2 else epoch + 1
    # Relative, with the trajectory's size as the floor for entries near 0.
    atol = CPU_GPU64 * float(biases_e[:seen].abs().max())
    torch.testing.assert_close(biases[:seen], biases_e[:seen], rtol=CPU_GPU64, atol=atol)
    torch.testing.assert_close(bias, bias_e, rtol=CPU_GPU64, atol=atol)


@needs_gpu
@pytest.mark.parametrize("setting", SGD_SETTINGS)
def test_fit_sgd_matches_cpu_on_the_tutorial(setting):
    x, y = (t.double() for t in biasfit.tutorial_data())
    got = fit_on(GPU, x, y, **SGD_SETTINGS[setting])
    expected = fit_on("cpu", x, y, **SGD_SETTINGS[setting])
    assert_same_fit(got, expected)
    check_history_on_cpu(x, y, got)


@needs_gpu
@pytest.mark.parametrize("setting", SGD_SETTINGS)
def test_fit_sgd_matches_cpu_across_blocks(setting):
    # 50k float64 points span 25 blocks: the per-epoch two-kernel path.
    n = 50_000
    x, y = generated_labels(n, torch.float64)
    kwargs = dict(SGD_SETTINGS[setting], lr=0.5 / n, tol=1e-6, epochs=200)
    got = fit_on(GPU, x, y, **kwargs)
    expected = fit_on("cpu", x, y, **kwargs)
    assert_same_fit(got, expected)
    check_history_on_cpu(x, y, got)


def check_history_on_cpu(x, y, fit):
    """The GPU's loss at each recorded bias, re-evaluated on the CPU.

    Near its minimum the loss magnifies the last bits of the bias, so losses
    are compared where both devices evaluate the same bias.
    """
    _, losses, biases, info = fit
    epoch, status = info.tolist()
    seen = epoch if status == 2 else epoch + 1
    w, _ = weights_and_bias(x, 0.0)
    for e in range(seen):
        loss, _ = ops.fused_loss(x, y, w, biases[e])
        torch.testing.assert_close(losses[e], loss, rtol=CPU_GPU64, atol=0, msg=f"epoch {e}")


@needs_gpu
def test_fit_sgd_float32_tutorial_on_gpu():
    x, y = biasfit.tutorial_data()
    result = biasfit.fit_fused(x.to(GPU), y.to(GPU))
    expected = biasfit.fit_fused(x, y)
    assert result.epochs_run == expected.epochs_run == 34
    assert result.converged
    # float32 gradients may round apart by an ulp in some epoch: float32's bound.
    assert result.final_bias == pytest.approx(expected.final_bias, rel=CPU_GPU["float32"])


# -- the trainer's loss history stays the op's, on every device -----------------------

@pytest.mark.parametrize("data", ["tutorial", "50k points"])
def test_loss_history_is_fused_loss_at_each_bias(device, data):
    # Each epoch's loss is fused_loss at that epoch's bias, bit for bit: the
    # trainer sums in exactly the op's order (one block or two passes alike),
    # over the points in the order the trainer keeps them.
    if data == "tutorial":
        x, y = (t.double() for t in biasfit.tutorial_data())
        kwargs = {}
    else:
        x, y = generated_labels(50_000, torch.float64)
        kwargs = {"lr": 0.5 / 50_000, "tol": 1e-6}
    x, y = x.to(device), y.to(device)
    _, losses, biases, info = fit_on(device, x, y, **kwargs)
    epoch, status = info.tolist()
    seen = epoch if status == 2 else epoch + 1
    assert seen > 5
    w, _ = weights_and_bias(x, 0.0)
    order = cpu_trainer_order(x, w, epochs=100)
    if order is not None:
        x, y = x[order], y[order]
    for e in range(seen):
        loss, _ = ops.fused_loss(x, y, w, biases[e].to(device))
        assert torch.equal(losses[e], loss.cpu()), f"epoch {e}"


@needs_gpu
def test_fit_sgd_big_epoch_budget_gives_the_same_fit():
    # Epochs after the stop are no-ops, and the host stops queueing them once
    # it sees the stop: neither may change any result.
    n = 50_000
    x, y = generated_labels(n, torch.float64)
    short = fit_on(GPU, x, y, lr=0.5 / n, tol=1e-6, epochs=200)
    long = fit_on(GPU, x, y, lr=0.5 / n, tol=1e-6, epochs=100_000)
    assert short[3].tolist() == long[3].tolist()
    assert short[3][1] == 1  # converged
    seen = int(short[3][0]) + 1
    assert torch.equal(short[0], long[0])
    assert torch.equal(short[1][:seen], long[1][:seen])
    assert torch.equal(short[2][:seen], long[2][:seen])


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fit_sgd_zero_epochs_and_exhausted(dtype):
    x, y = random_data(10_000, dtype, GPU)
    for epochs in (0, 1, 7):
        got = fit_on(GPU, x, y, lr=1e-6, tol=0.0, epochs=epochs)
        assert got[3].tolist() == [epochs, 2]
        assert got[1].shape == (epochs,)


# -- the same bits every run ----------------------------------------------------------

@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_bits_run_to_run(dtype):
    x, y = random_data(3_000_017, dtype, GPU)
    w, b = weights_and_bias(x, -16.0)
    first = ops.fused_loss(x, y, w, b)
    first_grad = ops.predict_bias_grad(y, x, w, b)
    for _ in range(3):
        again = ops.fused_loss(x, y, w, b)
        assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])
        assert torch.equal(ops.predict_bias_grad(y, x, w, b), first_grad)
    fits = [fit_on(GPU, x, y, lr=1e-7, tol=0.0, epochs=5) for _ in range(2)]
    for a, b_ in zip(*fits):
        assert torch.equal(a, b_)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_misaligned_and_strided_inputs_give_the_same_bits(dtype):
    # A view one element into its storage cannot take 16-byte loads; it must
    # still add the same points in the same order as an aligned copy.
    n = 1_000_003
    x, y = random_data(n + 1, dtype, GPU)
    w, b = weights_and_bias(x, -16.0)
    aligned = ops.fused_loss(x[1:].clone(), y[1:].clone(), w, b)
    shifted = ops.fused_loss(x[1:], y[1:], w, b)
    assert x[1:].data_ptr() % 16 != 0
    assert torch.equal(aligned[0], shifted[0]) and torch.equal(aligned[1], shifted[1])
    strided = ops.fused_loss(x[::2], y[::2], w, b)
    dense = ops.fused_loss(x[::2].contiguous(), y[::2].contiguous(), w, b)
    assert torch.equal(strided[0], dense[0]) and torch.equal(strided[1], dense[1])
    fit_shifted = fit_on(GPU, x[1:], y[1:], lr=1e-7, tol=0.0, epochs=3)
    fit_aligned = fit_on(GPU, x[1:].clone(), y[1:].clone(), lr=1e-7, tol=0.0, epochs=3)
    for a, b_ in zip(fit_shifted, fit_aligned):
        assert torch.equal(a, b_)


@needs_gpu
def test_uses_the_current_stream():
    x, y = random_data(2_000_000, torch.float32, GPU)
    w, b = weights_and_bias(x, -16.0)
    expected = ops.fused_loss(x, y, w, b)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = ops.fused_loss(x, y, w, b)
        fit = ops.fit_sgd(x, y, w, b, 1e-7, 0.0, 0.0, False, 0.0, False, 3, 0.0)
    side.synchronize()
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert fit[3].tolist() == [3, 2]


# -- more than 2^31 elements -------------------------------------------------------------

BIG = 2 ** 31 + 2 ** 20 + 3  # past int32 indexing, with a partial last group


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_expanded_view_past_2_to_the_31(dtype):
    # Expanded 1-D views are read in place (no memory), as on the CPU: every
    # point is the same, so the sum is n times one point's, to 1e-12 in double.
    one_x = torch.tensor([0.75], dtype=dtype, device=GPU)
    one_y = torch.tensor([0.25], dtype=dtype, device=GPU)
    x, y = one_x.expand(BIG), one_y.expand(BIG)
    w, b = weights_and_bias(x, 0.5)
    one_loss, one_grad = ops.fused_loss(one_x, one_y, w, b)
    loss, grad = ops.fused_loss(x, y, w, b)
    assert one_grad.item() != 0
    # float32: the per-point value and the total are each rounded once.
    tol = SUM_OF_COPIES[dtype]
    assert abs(loss.item() - BIG * one_loss.item()) <= tol * BIG * one_loss.item()
    assert abs(grad.item() - BIG * one_grad.item()) <= tol * BIG * abs(one_grad.item())


def free_gpu_bytes():
    return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 0


@needs_gpu
@pytest.mark.skipif(torch.cuda.is_available() and free_gpu_bytes() < 3.2 * 4 * BIG,
                    reason="needs ~28 GB free GPU memory for 3 float32 tensors of 2^31+ elements")
def test_more_than_2_to_the_31_elements():
    # Every point is x = 0, so y_hat = relu(0 + 1) = 1; labels are 0 below 2^31
    # and 3 from there. Each term is a small integer and every partial sum is
    # exact in double, so the totals are exact whatever the order, and they
    # count the points past 2^31 separately.
    head, tail = 2 ** 31, BIG - 2 ** 31
    x = torch.zeros(BIG, device=GPU)
    y = torch.zeros(BIG, device=GPU)
    y[head:] = 3.0
    w, b = weights_and_bias(x, 1.0)
    exact_loss = head * 1 + tail * 4
    exact_grad = head * 2 + tail * -4
    loss, grad = ops.fused_loss(x, y, w, b)
    assert float(loss) == float(torch.tensor(float(exact_loss), dtype=torch.float32))
    assert float(grad) == float(torch.tensor(float(exact_grad), dtype=torch.float32))
    _, losses, _, info = ops.fit_sgd(x, y, w, b, 0.0, 0.0, 0.0, False, 0.0, False, 1, 0.0)
    assert info.tolist() == [1, 2] and torch.equal(losses[0], loss)
    del y
    x[head:] = 1.0
    out = ops.predict(x, w, b)
    tail_value = ops.predict(torch.ones(1), w.cpu(), b.cpu()).item()
    assert bool((out[:head] == 1.0).all())
    assert bool((out[head:] == tail_value).all())


# -- every gradient and fit_params ------------------------------------------------------

GRAD_SIZES = [1, 3, 2049, 4097, 70_001, 1_000_003]


def param_scales(x, y, w, b):
    """[sum |loss_i|, sum |d loss_i / d p| for the 7 parameters]: what a sum
    in another order of float64 additions is off by at most CPU_GPU64 of."""
    with np.errstate(all="ignore"):
        loss, params, _, _ = em.point_loss_all_grads(x.numpy(), y.numpy(), w.tolist(), float(b))
    return torch.tensor([np.abs(loss).sum(), *np.abs(params).sum(axis=1)])


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_loss_grads_sums_match_cpu(dtype):
    for n in GRAD_SIZES:
        x, y = random_data(n, dtype, "cpu", seed=n)
        w, b = weights_and_bias(x, 0.5)
        cpu = ops.fused_loss_grads_sums(x, y, w, b)
        gpu = ops.fused_loss_grads_sums(x.to(GPU), y.to(GPU), w.to(GPU), b.to(GPU)).cpu()
        bound = CPU_GPU64 * param_scales(x, y, w, b)
        assert bool(((gpu - cpu).abs() <= bound).all()), f"n={n}"


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_loss_grads_every_needs_matches_cpu(dtype):
    # Per-point gradients are each point's own math: the same bits as the
    # CPU's. Sums: another order of float64 additions, then the dtype.
    x, y = random_data(70_001, dtype, "cpu", seed=5)
    x[:3] = torch.tensor([0.5, 0.0, 1.0], dtype=dtype)  # the hidden units' kinks
    w, b = weights_and_bias(x, -16.0)
    bound = max(torch.finfo(dtype).eps, CPU_GPU64) * param_scales(x, y, w, b).to(dtype)
    bounds = {"loss": bound[0], "weights": bound[1:7], "bias": bound[7]}
    for needs in range(16):
        cpu = ops.fused_loss_grads(x, y, w, b, needs)
        gpu = to_cpu(*ops.fused_loss_grads(x.to(GPU), y.to(GPU), w.to(GPU), b.to(GPU), needs))
        for name, c, g in zip(("loss", "weights", "bias", "labels", "inputs"), cpu, gpu):
            assert c.shape == g.shape, (needs, name)
            if name in ("labels", "inputs"):
                assert torch.equal(c, g), (needs, name)
            elif c.numel():
                assert bool(((g - c).abs() <= bounds[name]).all()), (needs, name)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_predict_grads_match_cpu(dtype):
    x, g = random_data(70_001, dtype, "cpu", seed=6)
    g = g - 1
    w, b = weights_and_bias(x, -16.0)
    params, _ = em.point_predict_all_grads(x.numpy(), g.numpy(), w.tolist(), float(b))
    bound = max(torch.finfo(dtype).eps, CPU_GPU64) * torch.tensor(np.abs(params).sum(axis=1))
    for needs in (2, 3, 10, 11):
        cpu = ops.predict_grads(g, x, w, b, needs)
        gpu = to_cpu(*ops.predict_grads(g.to(GPU), x.to(GPU), w.to(GPU), b.to(GPU), needs))
        assert torch.equal(cpu[2], gpu[2]), needs  # d/dx per point: the same bits
        assert cpu[0].shape == gpu[0].shape and cpu[1].shape == gpu[1].shape
        if needs & 1:
            assert bool(((gpu[0] - cpu[0]).abs() <= bound[:6].to(dtype)).all()), needs
        assert abs(float(gpu[1] - cpu[1])) <= float(bound[6]), needs


@needs_gpu
def test_autograd_every_gradient_on_gpu_matches_cpu():
    x, y = random_data(10_000, torch.float64, "cpu")
    grads = []
    for device in ("cpu", GPU):
        model = biasfit.BasicNN(-16.0, dtype=torch.float64).to(device)
        for p in model.parameters():
            p.requires_grad_(True)
        xs, ys = x.to(device).requires_grad_(), y.to(device).requires_grad_()
        loss = model.loss(xs, ys)
        grads.append([t.cpu() for t in torch.autograd.grad(
            loss, [xs, ys, *model.parameters()])])
        # predict's backward too: every parameter's and the inputs' gradients
        out = (model(xs) * ys.detach()).sum()
        grads[-1] += [t.cpu() for t in torch.autograd.grad(out, [xs, *model.parameters()])]
    for c, g in zip(*grads):
        torch.testing.assert_close(g, c, rtol=CPU_GPU64, atol=CPU_GPU64 * float(c.abs().max()))


PARAM_FITS = {
    "sgd nesterov": dict(kind=0, lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.01),
    "sgd dampened maximize": dict(kind=0, lr=0.001, momentum=0.5, dampening=0.3, maximize=True),
    "adam": dict(kind=1, lr=0.05),
    "adam amsgrad": dict(kind=1, lr=0.05, amsgrad=True, weight_decay=0.01),
    "adamw": dict(kind=2, lr=0.05, weight_decay=0.1),
    "adamw hidden layer": dict(kind=2, lr=0.05, trained=0b11011),
    "bias only sgd": dict(kind=0, lr=0.1, trained=64),
}


def fit_params_on(device, x, y, start, trained=127, kind=0, lr=0.1, momentum=0.0,
                  dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False,
                  beta1=0.9, beta2=0.999, eps=1e-8, amsgrad=False, epochs=100, tol=1e-4):
    p = torch.tensor(start, dtype=x.dtype, device=device)
    return to_cpu(*ops.fit_params(x.to(device), y.to(device), p, trained, kind, lr, momentum,
                                  dampening, nesterov, weight_decay, maximize, beta1, beta2,
                                  eps, amsgrad, epochs, tol))


@needs_gpu
@pytest.mark.parametrize("fit", PARAM_FITS)
@pytest.mark.parametrize("data", ["tutorial", "50k points"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fit_params_matches_cpu(fit, data, dtype):
    # One launch for the tutorial's 3 points; one an epoch for 50k (25 blocks).
    if data == "tutorial":
        x, y = (t.to(dtype) for t in biasfit.tutorial_data())
        kw = dict(PARAM_FITS[fit], epochs=200)
    else:
        x, y = generated_labels(50_000, dtype)
        kw = dict(PARAM_FITS[fit], epochs=60)
        if kw["kind"] == 0:
            kw["lr"] /= 50_000
    start = list(biasfit.TUTORIAL_WEIGHTS) + [-10.0]
    got, expected = fit_params_on(GPU, x, y, start, **kw), fit_params_on("cpu", x, y, start, **kw)
    assert got[3].tolist() == expected[3].tolist()
    epoch, status, _ = expected[3].tolist()
    seen = epoch if status == 2 else epoch + 1
    rtol = CPU_GPU[dtype]
    for g, e in ((got[0], expected[0]), (got[1][:seen], expected[1][:seen]),
                 (got[2][:seen], expected[2][:seen])):
        torch.testing.assert_close(g, e, rtol=rtol, atol=rtol * float(e.abs().max()))


@needs_gpu
def test_fit_params_same_bits_run_to_run_and_divergence():
    x, y = generated_labels(50_000, torch.float64)
    start = list(biasfit.TUTORIAL_WEIGHTS) + [-3.0]
    runs = [fit_params_on(GPU, x, y, start, kind=1, lr=0.01, amsgrad=True, epochs=20, tol=0.0)
            for _ in range(2)]
    for a, b_ in zip(*runs):
        assert torch.equal(a, b_)
    for data in (biasfit.tutorial_data(), (x, y)):
        kw = dict(kind=0, lr=1e300, maximize=True, epochs=10, tol=0.0)
        got = fit_params_on(GPU, *data, start, **kw)
        assert got[3].tolist() == fit_params_on("cpu", *data, start, **kw)[3].tolist()
        assert got[3][1] in (3, 4)


@needs_gpu
def test_fit_fused_engine_trains_all_seven_on_gpu():
    x, y = biasfit.tutorial_data()
    results = []
    for device in ("cpu", GPU):
        model = biasfit.BasicNN().to(device)
        for p in model.parameters():
            p.requires_grad_(True)
        results.append(biasfit.fit(model, x.to(device), y.to(device), engine="fused",
                                   optimizer=torch.optim.Adam(model.parameters(), lr=0.05),
                                   epochs=500))
    assert results[0].epochs_run == results[1].epochs_run
    for name, value in results[0].params.items():
        assert results[1].params[name] == pytest.approx(value, rel=CPU_GPU[torch.float32],
                                                    abs=CPU_GPU[torch.float32]), name


# -- CUDA tensors a build cannot take ----------------------------------------------------

@needs_gpu
def test_tensors_on_two_devices_are_refused():
    x, y = random_data(100, torch.float32, GPU)
    w, b = weights_and_bias(x, 0.0)
    with pytest.raises(ValueError, match="weights is on cpu but inputs is on cuda"):
        ops.fused_loss(x, y, w.cpu(), b)
    with pytest.raises(ValueError, match="labels is on cpu but inputs is on cuda"):
        ops.fit_sgd(x, y.cpu(), w, b, 0.1, 0.0, 0.0, False, 0.0, False, 10, 1e-4)
    with pytest.raises(ValueError, match="grad_out is on cpu but inputs is on cuda"):
        ops.predict_bias_grad(y.cpu(), x, w, b)
    with pytest.raises(ValueError, match="bias is on cuda:0 but inputs is on cpu"):
        ops.predict(x.cpu(), w.cpu(), b)


ALL_OPS = ["predict", "fused_loss", "predict_bias_grad", "fit_sgd", "fused_loss_grads",
           "fused_loss_grads_sums", "predict_grads", "fit_params"]


def cpu_args(name):
    x, y = biasfit.tutorial_data()
    w, b = weights_and_bias(x, 0.0)
    params = torch.cat([w, b.reshape(1)])
    return {"predict": (x, w, b), "fused_loss": (x, y, w, b),
            "predict_bias_grad": (y, x, w, b),
            "fit_sgd": (x, y, w, b, 0.1, 0.0, 0.0, False, 0.0, False, 10, 1e-4),
            "fused_loss_grads": (x, y, w, b, 15), "fused_loss_grads_sums": (x, y, w, b),
            "predict_grads": (y, x, w, b, 11),
            "fit_params": (x, y, params, 127, 1, 0.1, 0.0, 0.0, False, 0.0, False, 0.9,
                           0.999, 1e-8, False, 10, 1e-4)}[name]


@pytest.mark.parametrize("name", ALL_OPS)
def test_cuda_kernel_slot_errors_clearly(name):
    # Sends CPU tensors to whatever is registered for the CUDA backend, which
    # runs without a GPU: a CPU-only build must name the missing CUDA build,
    # a CUDA build must refuse CPU tensors rather than read them on the GPU.
    cuda_key = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    op = getattr(ops, name).default
    if biasfit.WITH_CUDA:
        with pytest.raises(ValueError, match="the CUDA kernel got inputs on cpu"):
            op.redispatch(cuda_key, *cpu_args(name))
    else:
        with pytest.raises(RuntimeError, match=f"biasfit::{name} got a CUDA tensor, but "
                                               "this biasfit was built without CUDA"):
            op.redispatch(cuda_key, *cpu_args(name))


@pytest.mark.skipif(not torch.cuda.is_available() or biasfit.WITH_CUDA,
                    reason="needs a CUDA GPU with a CPU-only biasfit build; a CPU "
                           "torch cannot make CUDA tensors")
def test_cuda_tensor_on_cpu_only_build_errors_clearly():
    x, y = biasfit.tutorial_data()
    with pytest.raises(RuntimeError, match="built without CUDA"):
        biasfit.fused_loss(x.to(GPU), y.to(GPU), tutorial_weights(x.to(GPU)),
                           torch.tensor(0.0, device=GPU))
