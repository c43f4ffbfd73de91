"""The native ops against the pure-PyTorch reference."""
import pytest
import torch

import biasfit
from biasfit import reference
from tolerances import REFERENCE, SUM_OF_COPIES, TUTORIAL
from helpers import random_problem, rel_err

CHUNK = 1 << 14  # csrc/cpu/reduce.h's kChunk
SIZES = [1, 2, 3, 7, 1001, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5, 1_000_000]
DTYPES = [torch.float32, torch.float64]


def exact_float64_sums(x, y, weights, bias):
    """Per-point values in the data's dtype (eager PyTorch's rounding), summed
    in float64: what fused_loss promises for float32 data."""
    model = reference.TutorialNN(float(bias), weights.tolist(), dtype=x.dtype).to(x.device)
    with torch.no_grad():
        z = model.forward(x) - y
        pre = (x * model.w00 + model.b00).relu() * model.w01 \
            + (x * model.w10 + model.b10).relu() * model.w11 + model.final_bias
    r = z.double()
    return (r * r).sum(), (2 * r * (pre > 0)).sum()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_fused_loss_matches_reference(n, dtype, device):
    x, y, w, b = random_problem(n, dtype, device, seed=n)
    loss, grad = torch.ops.biasfit.fused_loss(x, y, w, b)
    ref_loss, ref_grad = reference.loss_and_grad(x, y, w, b)
    assert loss.dtype == dtype and loss.shape == () and loss.device == x.device
    assert rel_err(loss, ref_loss) < REFERENCE[dtype]
    assert rel_err(grad, ref_grad) < REFERENCE[dtype]


@pytest.mark.parametrize("n", [3, CHUNK + 1, 100_003])
def test_float32_accumulates_in_float64(n, device):
    # A float32 sum of 1e5 terms loses ~1e-5 relative; the fused op must not.
    x, y, w, b = random_problem(n, torch.float32, device, seed=7)
    loss, grad = torch.ops.biasfit.fused_loss(x, y, w, b)
    exact_loss, exact_grad = exact_float64_sums(x, y, w, b)
    assert rel_err(loss, exact_loss) <= 2 ** -24  # only the final rounding
    assert rel_err(grad, exact_grad) <= 2 ** -24


@pytest.mark.parametrize("dtype", DTYPES)
def test_predict_matches_reference_bitwise(dtype, device):
    x, _, w, b = random_problem(5000, dtype, device)
    model = reference.TutorialNN(float(b), w.tolist(), dtype=dtype).to(device)
    with torch.no_grad():
        expected = model(x)
    # Same per-point operations in the same order: the same bits.
    assert torch.equal(biasfit.predict(x, w, b), expected)


def test_relu_derivative_is_zero_at_zero(device):
    # The tutorial data: x = 0.5 puts the top unit exactly at 0, and with
    # bias 0 the point x = 0 puts the output relu exactly at 0.
    x, y = (t.to(device) for t in biasfit.tutorial_data())
    w = torch.tensor(biasfit.TUTORIAL_WEIGHTS, device=device)
    for bias in (0.0, -16.0):
        b = torch.tensor(bias, device=device)
        loss, grad = torch.ops.biasfit.fused_loss(x, y, w, b)
        ref_loss, ref_grad = reference.loss_and_grad(x, y, w, b)
        assert loss.item() == pytest.approx(ref_loss.item(), rel=TUTORIAL[torch.float32])
        assert grad.item() == pytest.approx(ref_grad.item(), rel=TUTORIAL[torch.float32],
                                            abs=TUTORIAL[torch.float32])
    b = torch.tensor(0.0, device=device)
    _, grad_at_kink = torch.ops.biasfit.fused_loss(x[:1], y[:1] + 1, w, b)
    assert grad_at_kink.item() == 0.0  # z == 0 exactly: relu'(0) = 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(dtype, device):
    x, y, w, b = random_problem(4002, dtype, device)
    xs, ys = x[::2], y[::2]
    assert not xs.is_contiguous()
    got = torch.ops.biasfit.fused_loss(xs, ys, w, b)
    want = torch.ops.biasfit.fused_loss(xs.contiguous(), ys.contiguous(), w, b)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    x2 = x.reshape(2, -1).t()  # 2-D, transposed
    assert torch.equal(biasfit.predict(x2, w, b), biasfit.predict(x2.contiguous(), w, b))
    assert torch.equal(biasfit.predict(x2, w[::1], b), biasfit.predict(x2, w, b))


def test_more_than_2_to_the_31_elements():
    # Expanded views cost no memory and are read in place, so this walks
    # 2^31 + 5 points through the 64-bit index arithmetic of the sum.
    n = 2 ** 31 + 5
    w = torch.tensor(biasfit.TUTORIAL_WEIGHTS, dtype=torch.float64)
    x = torch.tensor([0.75], dtype=torch.float64).expand(n)
    y = torch.tensor([0.25], dtype=torch.float64).expand(n)
    b = torch.tensor(0.5, dtype=torch.float64)
    one_loss, one_grad = torch.ops.biasfit.fused_loss(x[:1], y[:1], w, b)
    loss, grad = torch.ops.biasfit.fused_loss(x, y, w, b)
    assert rel_err(loss, n * one_loss.item()) < SUM_OF_COPIES[torch.float64]
    assert rel_err(grad, n * one_grad.item()) < SUM_OF_COPIES[torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_predict_backward_matches_reference(dtype, device):
    x, y, w, b = random_problem(3001, dtype, device)
    bias = b.clone().requires_grad_()
    upstream = torch.linspace(-1, 1, x.numel(), dtype=dtype, device=device)
    (biasfit.predict(x, w, bias) * upstream).sum().backward()
    model = reference.TutorialNN(float(b), w.tolist(), dtype=dtype).to(device)
    (model(x) * upstream).sum().backward()
    assert rel_err(bias.grad, model.final_bias.grad) < REFERENCE[dtype]


def test_gradcheck_float64(device):
    x, y, w, b = random_problem(64, torch.float64, device)
    bias = b.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda b_: biasfit.fused_loss(x, y, w, b_), (bias,))
    assert torch.autograd.gradcheck(lambda b_: biasfit.predict(x, w, b_), (bias,))


def test_opcheck(device):
    x, y, w, b = random_problem(100, torch.float64, device)
    bias = b.clone().requires_grad_()
    torch.library.opcheck(torch.ops.biasfit.fused_loss.default, (x, y, w, bias))
    torch.library.opcheck(torch.ops.biasfit.predict.default, (x, w, bias))
    torch.library.opcheck(torch.ops.biasfit.predict_bias_grad.default, (y, x, w, b))
    torch.library.opcheck(
        torch.ops.biasfit.fit_sgd.default,
        (x, y, w, b, 0.01, 0.9, 0.0, True, 0.01, False, 10, 1e-4))


def test_torch_compile_fullgraph(device):
    x, y, w, b = random_problem(1000, torch.float32, device)
    model = biasfit.BasicNN().to(device)
    with torch.no_grad():
        model.final_bias.fill_(float(b))

    def step(inputs, labels):
        return model.loss(inputs, labels), model(inputs)

    compiled = torch.compile(step, fullgraph=True)
    loss, pred = compiled(x, y)
    loss.backward()
    compiled_grad = model.final_bias.grad.clone()
    model.final_bias.grad = None
    eager_loss, eager_pred = step(x, y)
    eager_loss.backward()
    assert torch.equal(loss, eager_loss) and torch.equal(pred, eager_pred)
    assert torch.equal(compiled_grad, model.final_bias.grad)
