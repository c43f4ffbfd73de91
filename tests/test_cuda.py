"""CUDA-specific checks: CPU and GPU agree, the GPU gives the same bits every
run, inputs past 2^31 elements, the trainer's device-side loss history, and
the errors for CUDA tensors a build cannot take.

Every kernel test elsewhere also runs on CUDA through the `device` fixture;
these need a GPU and a CUDA build of biasfit, and say so when skipped.
"""
import pytest
import torch

import biasfit
from biasfit.reference import TutorialNN
from biasfit.train import tutorial_weights
from helpers import cpu_trainer_order

ops = torch.ops.biasfit
# The device under test; the CPU is the reference.
GPU = torch.device("cuda")

needs_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and biasfit.WITH_CUDA),
    reason="needs a CUDA GPU and biasfit built with CUDA "
           f"(GPU: {torch.cuda.is_available()}, CUDA build: {biasfit.WITH_CUDA})")

# CPU and CUDA sum in different orders; in float64 they must agree this well.
RTOL64 = 1e-12

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
        torch.testing.assert_close(loss_gpu, loss, rtol=RTOL64, atol=0, msg=f"n={n}")
        torch.testing.assert_close(grad_gpu, grad, rtol=0,
                                   atol=RTOL64 * grad_scale(x, y, bias), msg=f"n={n}")


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
        torch.testing.assert_close(got, expected, rtol=0, atol=RTOL64 * scale, msg=f"n={n}")


@needs_gpu
def test_predict_backward_on_gpu_matches_cpu():
    x, _ = random_data(10_000, torch.float64, "cpu")
    grads = []
    for device in ("cpu", GPU):
        model = biasfit.BasicNN(-16.0, dtype=torch.float64).to(device)
        (model(x.to(device)) * 3).sum().backward()
        grads.append(model.final_bias.grad.cpu())
    torch.testing.assert_close(grads[1], grads[0], rtol=RTOL64, atol=0)


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
    atol = RTOL64 * float(biases_e[:seen].abs().max())
    torch.testing.assert_close(biases[:seen], biases_e[:seen], rtol=RTOL64, atol=atol)
    torch.testing.assert_close(bias, bias_e, rtol=RTOL64, atol=atol)


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
        torch.testing.assert_close(losses[e], loss, rtol=RTOL64, atol=0, msg=f"epoch {e}")


@needs_gpu
def test_fit_sgd_float32_tutorial_on_gpu():
    x, y = biasfit.tutorial_data()
    result = biasfit.fit_fused(x.to(GPU), y.to(GPU))
    expected = biasfit.fit_fused(x, y)
    assert result.epochs_run == expected.epochs_run == 34
    assert result.converged
    # float32 gradients may round apart by an ulp in some epoch: float32's RTOL.
    assert result.final_bias == pytest.approx(expected.final_bias, rel=1e-5)


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
    tol = RTOL64 if dtype == torch.float64 else 2 ** -22
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


ALL_OPS = ["predict", "fused_loss", "predict_bias_grad", "fit_sgd"]


def cpu_args(name):
    x, y = biasfit.tutorial_data()
    w, b = weights_and_bias(x, 0.0)
    return {"predict": (x, w, b), "fused_loss": (x, y, w, b),
            "predict_bias_grad": (y, x, w, b),
            "fit_sgd": (x, y, w, b, 0.1, 0.0, 0.0, False, 0.0, False, 10, 1e-4)}[name]


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
