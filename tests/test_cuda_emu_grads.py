"""The CUDA kernels of every gradient (fused_loss_grads, fused_loss_grads_sums,
predict_grads) and fit_params's trainer, run on the CPU by the emulator
(tests/cuda_emu/, as tests/test_cuda_emulated.py does for the others).

Their sums must equal the NumPy model of the documented order
(tests/emu_model.py) bit for bit, their per-point gradients the CPU ops' bit
for bit, and their sums the CPU ops' within CPU_GPU's float64 bound. The
emulated trainer must stop at the CPU trainer's epoch with the same status,
its losses and parameters within CPU_GPU (tests/tolerances.py).

Emulated sums of eight values cost about four times fused_loss's (a warp
shuffle per value), so sizes and epoch counts are kept small: each test
below covers its edge with the fewest blocks and epochs that reach it.
"""
import numpy as np
import pytest
import torch

import emu_harness as eh
import emu_model as em
from test_cuda import CPU_GPU64
from tolerances import CPU_GPU

W = eh.TUTORIAL_WEIGHTS
ops = torch.ops.biasfit

pytestmark = pytest.mark.skipif(eh.GXX is None, reason="no g++ to build the CUDA emulation")


def data(n, dtype, seed=0):
    """Doses over [-0.25, 1.25] (both hidden units on and off), labels in [0, 2]."""
    rng = np.random.default_rng(seed)
    return ((rng.random(n) * 1.5 - 0.25).astype(dtype),
            (rng.random(n) * 2).astype(dtype))


def t(v):
    return torch.from_numpy(np.ascontiguousarray(v))


def cpu_args(x, bias, weights=W):
    return t(np.asarray(weights, x.dtype)), torch.tensor(bias, dtype=t(x).dtype)


def scales(x, y, bias):
    """sum over points of |each summed value|: what a sum in another order
    is off by at most CPU_GPU64 of (gradient sums may cancel)."""
    with np.errstate(all="ignore"):
        loss, params, _, _ = em.point_loss_all_grads(x, y, W, bias)
    return np.concatenate([[np.abs(loss).sum()], np.abs(params).sum(axis=1)])


def same(a, b):
    """Bit for bit, NaN equal to NaN."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))


# A partial 16-byte group; one block (1024 groups) and one more; several
# blocks with a partial last one; past 1e5 points once (float32: 25 blocks).
SIZES = {np.float32: [1, 5, 4095, 4097, 20_001, 100_003], np.float64: [1, 3, 2049, 6145]}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grads_sums_equal_the_model_and_the_cpu(emu, tmp_path, dtype):
    for n in SIZES[dtype]:
        x, y = data(n, dtype, seed=n)
        bias = 0.5 if n % 2 else -16.0
        got = emu.loss_grads_sums(tmp_path, x, y, W, bias)
        assert list(got) == em.loss_grads_sums(x, y, W, bias), f"n={n}"
        cpu = ops.fused_loss_grads_sums(t(x), t(y), *cpu_args(x, bias)).numpy()
        assert np.all(np.abs(got - cpu) <= CPU_GPU64 * scales(x, y, bias)), f"n={n}"


NEEDS = range(16)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_needs_combination(emu, tmp_path, dtype):
    # Two blocks: 4097 float32 points, 2049 float64 ones.
    x, y = data(4097 if dtype == np.float32 else 2049, dtype, seed=2)
    sums = em.loss_grads_sums(x, y, W, 0.5)
    with np.errstate(all="ignore"):
        _, _, dy_model, dx_model = em.point_loss_all_grads(x, y, W, 0.5)
    scale = scales(x, y, 0.5)
    for needs in NEEDS if dtype == np.float32 else (0, 6, 9, 15):
        loss, wg, bg, dy, dx = emu.loss_grads(tmp_path, x, y, W, 0.5, needs=needs)
        assert loss == dtype(sums[0]) and bg == dtype(sums[7]), needs
        if needs & 1:
            assert np.array_equal(wg, np.array(sums[1:7]).astype(dtype)), needs
        if needs & 4:
            assert np.array_equal(dy, dy_model), needs
        if needs & 8:
            assert np.array_equal(dx, dx_model), needs
        c_loss, c_wg, c_bg, c_dy, c_dx = (v.numpy() for v in ops.fused_loss_grads(
            t(x), t(y), *cpu_args(x, 0.5), needs))
        # Another order of float64 additions, then a rounding to the dtype.
        tol = max(np.finfo(dtype).eps, CPU_GPU64)
        assert abs(loss - c_loss) <= tol * scale[0] and abs(bg - c_bg) <= tol * scale[7]
        assert c_wg.size == (6 if needs & 1 else 0)
        if needs & 1:
            assert np.all(np.abs(wg - c_wg) <= tol * scale[1:7]), needs
        assert same(dy if needs & 4 else np.zeros(0, dtype), c_dy), needs
        assert same(dx if needs & 8 else np.zeros(0, dtype), c_dx), needs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_kinks_give_zero_derivatives(emu, tmp_path, dtype):
    # x = 0.5 puts the top unit exactly at 0 (1.7 * 0.5 - 0.85), x = 0 the
    # bottom one; at bias -h(1) the output unit of x = 1 is at 0. relu'(0) = 0.
    x = np.array([0.5, 0.0, 1.0, 0.25, 0.75], dtype)
    y = np.array([1.0, 0.0, 0.0, 0.5, 2.0], dtype)
    h1 = float(em.hidden(x[2:3], W)[0])
    for bias in (-16.0, -h1, 3.0):
        got = emu.loss_grads(tmp_path, x, y, W, bias, needs=15)
        with np.errstate(all="ignore"):
            _, params, dy, dx = em.point_loss_all_grads(x, y, W, bias)
        assert np.array_equal(got[3], dy) and np.array_equal(got[4], dx)
        cpu = ops.fused_loss_grads(t(x), t(y), *cpu_args(x, bias), 15)
        assert np.array_equal(got[3], cpu[3].numpy()) and np.array_equal(got[4], cpu[4].numpy())
        sums = em.loss_grads_sums(x, y, W, bias)
        assert got[0] == dtype(sums[0]) and np.array_equal(got[1], np.array(sums[1:7], dtype))
    one = emu.loss_grads_sums(tmp_path, x[:1], y[:1], W, 3.0)
    assert one[1] == 0 and one[2] == 0  # w00, b00 at the top unit's kink
    assert one[7] != 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_propagate_as_in_the_model(emu, tmp_path, dtype):
    x, y = data(1000, dtype)
    for name, (i, xv, yv) in {"nan input": (0, np.nan, None), "inf label": (999, None, np.inf),
                              "-inf input": (500, -np.inf, None)}.items():
        cx, cy = x.copy(), y.copy()
        if xv is not None:
            cx[i] = xv
        if yv is not None:
            cy[i] = yv
        got = emu.loss_grads_sums(tmp_path, cx, cy, W, 0.5)
        with np.errstate(all="ignore"):
            assert same(got, em.loss_grads_sums(cx, cy, W, 0.5)), name
            per_point = emu.loss_grads(tmp_path, cx, cy, W, 0.5, needs=12)
            cpu = ops.fused_loss_grads(t(cx), t(cy), *cpu_args(cx, 0.5), 12)
        assert same(per_point[3], cpu[3].numpy()) and same(per_point[4], cpu[4].numpy()), name
        assert same(np.isnan(got), np.isnan(ops.fused_loss_grads_sums(
            t(cx), t(cy), *cpu_args(cx, 0.5)).numpy())), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_views_are_read_in_place_with_the_same_bits(emu, tmp_path, dtype):
    x, y = data(4501, dtype)  # 2 float64 blocks
    for name, (vx, vy) in {"unaligned": (x[1:], y[1:]),
                           "strided": (x[::2], y[1::2])}.items():
        got = emu.loss_grads(tmp_path, vx, vy, W, -2.0, needs=15)
        dense = emu.loss_grads(tmp_path, np.ascontiguousarray(vx), np.ascontiguousarray(vy),
                               W, -2.0, needs=15)
        assert all(same(a, b) for a, b in zip(got, dense)), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_predict_grads_equal_the_model_and_the_cpu(emu, tmp_path, dtype):
    for n in (3, 4097):
        x, g = data(n, dtype, seed=n)
        x[0] = 0.5  # the top unit's kink
        g = g - dtype(1)
        sums = em.predict_grads_sums(x, g, W, -16.0)
        _, dx_model = em.point_predict_all_grads(x, g, W, -16.0)
        for needs in (3, 10) if n == 3 else (2, 11):
            wg, bg, dx = emu.predict_grads(tmp_path, g, x, W, -16.0, needs=needs)
            assert bg == dtype(sums[6]), (n, needs)
            if needs & 1:
                assert np.array_equal(wg, np.array(sums[:6]).astype(dtype)), (n, needs)
            if needs & 8:
                assert np.array_equal(dx, dx_model), (n, needs)
            c_wg, c_bg, c_dx = (v.numpy() for v in ops.predict_grads(
                t(g), t(x), *cpu_args(x, -16.0), needs))
            assert same(dx if needs & 8 else np.zeros(0, dtype), c_dx), (n, needs)
            assert c_wg.size == (6 if needs & 1 else 0)
            if needs & 1:
                params, _ = em.point_predict_all_grads(x, g, W, -16.0)
                bound = max(np.finfo(dtype).eps, CPU_GPU64) * np.abs(params).sum(axis=1)[:6]
                assert np.all(np.abs(wg - c_wg) <= bound), (n, needs)


# -- fit_params ------------------------------------------------------------------------

TUTORIAL_PARAMS = list(W) + [0.0]
ALL, BIAS, WEIGHTS, HIDDEN = 127, 64, 63, 0b11011  # HIDDEN: w00, b00, w10, b10
FITS = {
    "sgd": dict(kind=0, lr=0.01),
    "sgd momentum": dict(kind=0, lr=0.01, momentum=0.9),
    "sgd nesterov wd": dict(kind=0, lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.01),
    "sgd dampened maximize": dict(kind=0, lr=0.001, momentum=0.5, dampening=0.3,
                                  maximize=True, weight_decay=0.001),
    "adam": dict(kind=1, lr=0.05),
    "adam amsgrad wd": dict(kind=1, lr=0.05, amsgrad=True, weight_decay=0.01),
    "adamw": dict(kind=2, lr=0.05, weight_decay=0.1),
    "adamw amsgrad maximize": dict(kind=2, lr=0.01, amsgrad=True, maximize=True,
                                   weight_decay=0.01, beta1=0.5, beta2=0.9, eps=1e-6),
    "weights only, adam": dict(kind=1, lr=0.05, trained=WEIGHTS),
    "hidden layer only, sgd": dict(kind=0, lr=0.01, momentum=0.9, trained=HIDDEN),
}


def cpu_fit_params(x, y, params, trained=ALL, kind=0, lr=0.1, momentum=0.0, dampening=0.0,
                   nesterov=False, weight_decay=0.0, maximize=False, beta1=0.9, beta2=0.999,
                   eps=1e-8, amsgrad=False, epochs=100, tol=1e-4):
    out = ops.fit_params(t(x), t(y), t(np.asarray(params, x.dtype)), trained, kind, lr,
                         momentum, dampening, nesterov, weight_decay, maximize, beta1,
                         beta2, eps, amsgrad, epochs, tol)
    return [o.numpy() for o in out]


def check_fit_params(emu, tmp_path, x, y, params=TUTORIAL_PARAMS, **kw):
    """The emulated fit against the CPU's: returns the emulated one."""
    got = emu.fit_params(tmp_path, x, y, params, **kw)
    with np.errstate(all="ignore"):
        cpu = cpu_fit_params(x, y, params, **kw)
    assert list(got[3]) == list(cpu[3])
    epoch, status, _ = cpu[3]
    seen = epoch if status == 2 else epoch + 1
    rtol = CPU_GPU[x.dtype.type]
    for a, b in ((got[1][:seen], cpu[1][:seen]), (got[2][:seen], cpu[2][:seen]),
                 (got[0], cpu[0])):
        if status in (3, 4):  # compare what is finite; the rest must match in kind
            assert same(np.isfinite(a), np.isfinite(b))
            a, b = a[np.isfinite(b)], b[np.isfinite(b)]
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(np.abs(b).max(initial=0)))
    return got


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_block_fit_params_agrees_with_the_cpu(emu, tmp_path, fit, dtype):
    x, y = np.array([0.0, 0.5, 1.0], dtype), np.array([0.0, 1.0, 0.0], dtype)
    start = list(W[:6]) + [-10.0]  # output unit on: every gradient moves
    got = check_fit_params(emu, tmp_path, x, y, start, **dict(FITS[fit], epochs=4, tol=0.0))
    assert list(got[3]) == [4, 2, -1] and int(got[4]["launches"]) == 1


@pytest.mark.parametrize("fit, dtype", [("sgd nesterov wd", np.float64),
                                        ("adam amsgrad wd", np.float64),
                                        ("hidden layer only, sgd", np.float64),
                                        ("adamw amsgrad maximize", np.float32)])
def test_multi_block_fit_params_agrees_with_the_cpu(emu, tmp_path, fit, dtype):
    # 4097 points: 3 float64 blocks (2 float32 ones), one launch an epoch
    # between start and publish.
    x, _ = data(4097, dtype, seed=1)
    y = em.predict(x, W, -5.0)
    kw = dict(FITS[fit], epochs=3, tol=0.0)
    kw["lr"] = kw["lr"] / 4097 if kw["kind"] == 0 else kw["lr"]
    got = check_fit_params(emu, tmp_path, x, y, list(W[:6]) + [-3.0], **kw)
    assert list(got[3]) == [3, 2, -1] and int(got[4]["launches"]) == 3 + 2


@pytest.mark.parametrize("n", [3, 4097])
def test_bias_only_sgd_equals_the_model_fit_bit_for_bit(emu, tmp_path, n):
    # fit_params on final_bias alone with SGD is fit_sgd's fit: the same sums
    # (hidden(x) evaluated each epoch or once, the same bits) and step.
    if n == 3:  # the tutorial's points, float32
        x, y = np.array([0.0, 0.5, 1.0], np.float32), np.array([0.0, 1.0, 0.0], np.float32)
    else:
        x = data(n, np.float64, seed=1)[0]
        y = em.predict(x, W, -5.0)
    kw = dict(lr=0.1 if n == 3 else 0.5 / n, momentum=0.5, epochs=5, tol=0.0)
    got = emu.fit_params(tmp_path, x, y, TUTORIAL_PARAMS, trained=BIAS, kind=0, **kw)
    bias, losses, biases, info = em.fit(x, y, W, 0.0, **kw)
    assert list(got[3][:2]) == list(info) and got[0][6] == bias
    assert np.array_equal(got[1], losses) and np.array_equal(got[2], biases)
    assert np.array_equal(got[0][:6], np.asarray(W, x.dtype))  # frozen


@pytest.mark.parametrize("n", [3, 4097])
def test_divergence_stops_both_trainers_at_the_same_epoch(emu, tmp_path, n):
    x, _ = data(n, np.float64, seed=1)
    y = em.predict(x, W, -5.0)
    start = list(W[:6]) + [-3.0]
    # Maximizing with a huge step sends final_bias, then the loss, to inf.
    got = check_fit_params(emu, tmp_path, x, y, start, kind=0, lr=1e300, maximize=True,
                           epochs=6, tol=0.0)
    assert got[3][1] in (3, 4) and got[3][0] < 6
    x[-1] = np.nan
    got = check_fit_params(emu, tmp_path, x, y, start, kind=1, lr=0.1, epochs=6)
    assert list(got[3]) == [0, 3, -1]


def test_zero_epochs_and_the_poll(emu, tmp_path):
    x, y = data(2049, np.float64)  # 2 blocks
    for epochs in (0, 1):
        got = check_fit_params(emu, tmp_path, x, y, kind=1, lr=1e-9, tol=0.0, epochs=epochs)
        assert list(got[3]) == [epochs, 2, -1]
    # Converged at epoch 0 of 1000: the poll every 64 epochs (cuda/launch.h's
    # queue_epochs, fit_sgd's too) stops the queueing of no-op epochs.
    got = check_fit_params(emu, tmp_path, x, y, kind=2, tol=1e30, epochs=1000)
    assert list(got[3]) == [0, 1, -1] and int(got[4]["launches"]) <= 2 * 64 + 2
    assert int(got[4]["polls"]) >= 1


def test_block_order_changes_no_bit(emu, tmp_path):
    x, y = data(6001, np.float64)  # 3 blocks
    results = set()
    for order, seed in (("forward", 1), ("reverse", 1), ("shuffle", 7)):
        h = eh.Harness(emu.binary, env={"CUDA_EMU_BLOCK_ORDER": order, "CUDA_EMU_SEED": str(seed)})
        results.add(tuple(h.loss_grads_sums(tmp_path, x, y, W, 0.5)))
        fit = h.fit_params(tmp_path, x, y, TUTORIAL_PARAMS[:6] + [-3.0], kind=1, lr=0.01,
                           epochs=2, tol=0.0)
        results.add((*fit[0], *fit[1]))
    assert len(results) == 2
