"""Every gradient from the fused pass (issue 13) against eager autograd over
the pure-PyTorch reference module: the six weights, final_bias, the labels
and the inputs, for fused_loss and for predict's backward."""
import pytest
import torch

import biasfit
from biasfit import ops, reference
from biasfit.model import PARAM_NAMES, WEIGHT_NAMES
from helpers import random_problem
from tolerances import GRAD_POINTS, GRAD_SUMS

CHUNK = 1 << 14  # csrc/cpu/reduce.h's kChunk
SIZES = [1, 2, 3, 7, 1001, CHUNK - 1, CHUNK + 1, 3 * CHUNK + 5, 1_000_000]
DTYPES = [torch.float32, torch.float64]
PARAMS = PARAM_NAMES
# Sums (GRAD_SUMS): float64 accumulation on both sides, so 1e-10 as REFERENCE.
# float32: the reference rounds every per-point derivative and sums in
# float32, the fused pass forms them in float64; measured worst 1.1e-7 over
# these sizes and seeds (relative to the largest parameter gradient).
# Per point (GRAD_POINTS): eager autograd rounds each step of d/dx (w01 relu' w00 ...) in
# float32, the fused pass once at the end; measured worst 2.9e-7.


def kinked(n, dtype, seed):
    """random_problem, with the tutorial's kinks in the first points: x = 0.5
    (top unit exactly at 0), x = 0 (bottom unit at 0) and a point whose
    output unit sits exactly at 0."""
    x, y, w, b = random_problem(n, dtype, "cpu", seed=seed)
    kinks = torch.tensor([0.5, 0.0, 1.0], dtype=dtype)[:n]
    x[:len(kinks)] = kinks
    if n >= 3:
        # hidden(1.0) + bias == 0: the output unit at its kink.
        w_ = w.tolist()
        h = (torch.tensor(1.0, dtype=dtype) * w_[0] + w_[1]).relu() * w_[2] \
            + (torch.tensor(1.0, dtype=dtype) * w_[3] + w_[4]).relu() * w_[5]
        b = -h
    return x, y, w, b


def reference_grads(x, y, w, b, upstream=None):
    """(loss, {name: grad}, d/dy, d/dx) by eager autograd on TutorialNN."""
    model = reference.TutorialNN(float(b), w.tolist(), dtype=x.dtype)
    for p in model.parameters():
        p.requires_grad_(True)
    xr = x.clone().requires_grad_()
    yr = y.clone().requires_grad_() if y is not None else None
    if upstream is None:
        out = ((model(xr) - yr) ** 2).sum()
    else:
        out = (model(xr) * upstream).sum()
    out.backward()
    grads = {n: getattr(model, n).grad for n in PARAMS}
    return out.detach(), grads, yr.grad if yr is not None else None, xr.grad


def close(got, want, rtol):
    scale = want.abs().max().clamp_min(1e-30)
    return float((got - want).abs().max() / scale) <= rtol


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_fused_loss_grads_match_eager_autograd(n, dtype):
    x, y, w, b = kinked(n, dtype, seed=n)
    loss, wg, bg, yg, xg = torch.ops.biasfit.fused_loss_grads(x, y, w, b, ops.NEED_ALL)
    ref_loss, grads, ref_y, ref_x = reference_grads(x, y, w, b)
    assert close(loss, ref_loss, GRAD_SUMS[dtype])
    for i, name in enumerate(WEIGHT_NAMES):
        # Each weight's gradient relative to the largest parameter gradient:
        # a sum that cancels to ~0 has no relative accuracy on either side.
        scale = max(float(g.abs()) for g in grads.values())
        assert abs(float(wg[i] - grads[name])) <= GRAD_SUMS[dtype] * scale, name
    assert close(bg, grads["final_bias"], GRAD_SUMS[dtype])
    assert close(yg, ref_y, GRAD_POINTS[dtype])
    assert close(xg, ref_x, GRAD_POINTS[dtype])
    # The loss and the bias gradient are fused_loss's, bit for bit.
    old_loss, old_bg = torch.ops.biasfit.fused_loss(x, y, w, b)
    assert torch.equal(loss, old_loss) and torch.equal(bg, old_bg)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 3, 1001, 3 * CHUNK + 5])
def test_predict_grads_match_eager_autograd(n, dtype):
    x, _, w, b = kinked(n, dtype, seed=n)
    g = torch.linspace(-1, 1, n, dtype=dtype) + 0.25
    wg, bg, xg = torch.ops.biasfit.predict_grads(g, x, w, b, ops.NEED_ALL)
    _, grads, _, ref_x = reference_grads(x, None, w, b, upstream=g)
    scale = max(float(v.abs()) for v in grads.values())
    for i, name in enumerate(WEIGHT_NAMES):
        assert abs(float(wg[i] - grads[name])) <= GRAD_SUMS[dtype] * scale, name
    assert abs(float(bg - grads["final_bias"])) <= GRAD_SUMS[dtype] * scale
    assert close(xg, ref_x, GRAD_POINTS[dtype])


def test_relu_derivative_is_zero_at_every_kink():
    # x = 0.5: top unit at 0; x = 0: bottom unit at 0 (b10 = 0); bias -h:
    # the output unit at 0. relu'(0) = 0 at each, as PyTorch.
    x, y, w, b = kinked(3, torch.float64, seed=0)
    _, wg, bg, yg, xg = torch.ops.biasfit.fused_loss_grads(x[2:], y[2:], w, b, ops.NEED_ALL)
    assert wg.eq(0).all() and bg == 0 and xg.eq(0).all()  # output unit off: no gradient
    _, grads, _, ref_x = reference_grads(x, y, w, b)
    _, wg, bg, _, xg = torch.ops.biasfit.fused_loss_grads(x, y, w, b, ops.NEED_ALL)
    assert torch.equal(xg, ref_x)
    assert torch.equal(wg, torch.stack([grads[n] for n in WEIGHT_NAMES]))


def test_only_what_is_asked_is_computed():
    x, y, w, b = random_problem(100, torch.float64, "cpu")
    for needs in range(16):
        _, wg, bg, yg, xg = torch.ops.biasfit.fused_loss_grads(x, y, w, b, needs)
        assert wg.shape == ((6,) if needs & ops.NEED_WEIGHTS else (0,))
        assert bg.shape == ()
        assert yg.shape == ((100,) if needs & ops.NEED_LABELS else (0,))
        assert xg.shape == ((100,) if needs & ops.NEED_INPUTS else (0,))
    with pytest.raises(ValueError, match="needs must be"):
        torch.ops.biasfit.fused_loss_grads(x, y, w, b, 16)


def test_bias_grad_is_computed_whatever_needs_says():
    # The schema promises bias_grad always; with the labels' or inputs'
    # bit but not the weights' it once came back 0, and autograd then gave
    # final_bias a zero gradient when the labels also required grad.
    x, y, w, b = random_problem(100, torch.float64, "cpu")
    loss, want = torch.ops.biasfit.fused_loss(x, y, w, b)
    for needs in range(16):
        got = torch.ops.biasfit.fused_loss_grads(x, y, w, b, needs)
        assert torch.equal(got[0], loss) and torch.equal(got[2], want), needs
    yr, br = y.clone().requires_grad_(), b.clone().requires_grad_()
    assert torch.equal(torch.autograd.grad(biasfit.fused_loss(x, yr, w, br), [yr, br])[1], want)


@pytest.mark.parametrize("which", ["bias", "weights", "all", "labels", "inputs"])
def test_autograd_gives_every_gradient(which):
    x, y, w, b = kinked(4001, torch.float64, seed=3)
    req = {"bias": (3,), "weights": (2,), "all": (2, 3), "labels": (1,), "inputs": (0,)}[which]
    args = [t.clone().requires_grad_(i in req) for i, t in enumerate((x, y, w, b))]
    loss = biasfit.fused_loss(*args)
    got = torch.autograd.grad(loss, [args[i] for i in req])
    _, grads, ref_y, ref_x = reference_grads(x, y, w, b)
    want = {0: ref_x, 1: ref_y, 2: torch.stack([grads[n] for n in WEIGHT_NAMES]),
            3: grads["final_bias"]}
    for i, g in zip(req, got):
        assert close(g, want[i], 1e-10), i


def test_gradcheck_every_input_float64():
    x, y, w, b = random_problem(64, torch.float64, "cpu")
    args = [t.clone().requires_grad_() for t in (x, y, w, b)]
    assert torch.autograd.gradcheck(biasfit.fused_loss, args)
    assert torch.autograd.gradcheck(lambda *a: torch.ops.biasfit.fused_loss(*a)[0], args)
    assert torch.autograd.gradcheck(biasfit.predict, (args[0], args[2], args[3]))


def test_opcheck_every_needs():
    x, y, w, b = random_problem(100, torch.float64, "cpu")
    args = [t.clone().requires_grad_() for t in (x, y, w, b)]
    for needs in (0, ops.NEED_BIAS, ops.NEED_WEIGHTS, ops.NEED_LABELS | ops.NEED_INPUTS,
                  ops.NEED_ALL):
        torch.library.opcheck(torch.ops.biasfit.fused_loss_grads.default, (*args, needs))
    torch.library.opcheck(torch.ops.biasfit.fused_loss.default, tuple(args))
    torch.library.opcheck(torch.ops.biasfit.predict.default, (args[0], args[2], args[3]))
    torch.library.opcheck(torch.ops.biasfit.predict_grads.default, (y, x, w, b, ops.NEED_ALL))
    torch.library.opcheck(torch.ops.biasfit.fused_loss_grads_sums.default, (x, y, w, b))


def test_torch_func_grad_over_the_functional_form():
    x, y, w, b = random_problem(500, torch.float64, "cpu")
    got = torch.func.grad(biasfit.fused_loss, argnums=(0, 1, 2, 3))(x, y, w, b)
    _, grads, ref_y, ref_x = reference_grads(x, y, w, b)
    want = (ref_x, ref_y, torch.stack([grads[n] for n in WEIGHT_NAMES]), grads["final_bias"])
    for g, r in zip(got, want):
        assert close(g, r, 1e-10)
    up = torch.rand(500, dtype=torch.float64)
    got = torch.func.grad(lambda w_: (biasfit.predict(x, w_, b) * up).sum())(w)
    _, grads, _, _ = reference_grads(x, None, w, b, upstream=up)
    assert close(got, torch.stack([grads[n] for n in WEIGHT_NAMES]), 1e-10)


def test_torch_compile_fullgraph_all_seven():
    x, y, _, _ = random_problem(1000, torch.float64, "cpu")
    model = biasfit.BasicNN(final_bias=-2.0, dtype=torch.float64)
    for p in model.parameters():
        p.requires_grad_(True)
    compiled = torch.compile(lambda a, c: (model.loss(a, c), model(a).sum()), fullgraph=True)
    loss, s = compiled(x, y)
    (loss + s).backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss_e, s_e = model.loss(x, y), model(x).sum()
    (loss_e + s_e).backward()
    assert torch.equal(loss, loss_e)
    for g, p in zip(got, model.parameters()):
        assert torch.equal(g, p.grad)


@pytest.mark.parametrize("subset", [("final_bias",), ("w00", "w01", "b10"), PARAMS])
def test_basicnn_trains_the_parameters_that_require_grad(subset):
    model = biasfit.BasicNN(final_bias=-2.0, dtype=torch.float64)
    for name in PARAMS:
        getattr(model, name).requires_grad_(name in subset)
    assert model.trainable_names() == subset
    x, y, _, _ = random_problem(300, torch.float64, "cpu")
    model.loss(x, y).backward()
    ref = reference.TutorialNN(-2.0, [getattr(model, n).item() for n in WEIGHT_NAMES],
                               dtype=torch.float64)
    for name in PARAMS:
        getattr(ref, name).requires_grad_(name in subset)
    ((ref(x) - y) ** 2).sum().backward()
    for name in PARAMS:
        got, want = getattr(model, name).grad, getattr(ref, name).grad
        assert (got is None) == (name not in subset) == (want is None), name
        if got is not None:
            assert abs(float(got - want)) <= 1e-10 * max(1.0, abs(float(want))), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("subset", [("w00", "b00", "w10"), PARAMS])
@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw"])
def test_fit_autograd_trains_what_requires_grad(subset, opt, dtype):
    x, y, _, _ = random_problem(2000, dtype, "cpu", seed=5)
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=1e-4, momentum=0.9),
            "adam": lambda p: torch.optim.Adam(p, lr=0.01),
            "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)}[opt]
    model = biasfit.BasicNN(final_bias=-2.0, dtype=dtype)
    ref = reference.TutorialNN(-2.0, dtype=dtype)
    for m in (model, ref):
        for name in PARAMS:
            getattr(m, name).requires_grad_(name in subset)
    result = biasfit.fit(model, x, y, optimizer=make(model.parameters()), epochs=30, tol=0)
    epochs, _, losses = reference.vectorized_fit(ref, x, y, make(ref.parameters()),
                                                 epochs=30, tol=0)
    assert result.epochs_run == epochs == 30
    rtol = 1e-10 if dtype is torch.float64 else 1e-3  # eager sums in float32
    for a, b in zip(result.losses, losses):
        assert a == pytest.approx(b, rel=rtol)
    assert set(result.params) == set(subset)
    for name in subset:
        assert result.params[name] == pytest.approx(getattr(ref, name).item(), rel=rtol,
                                                     abs=rtol)
