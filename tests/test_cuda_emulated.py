"""The CUDA kernels and their host launch sequences, run on the CPU.

tests/cuda_emu/harness.cpp compiles csrc/cuda/kernels.cuh, cuda/reduce.cuh
and cuda/launch.h, the text torch_ops/cuda_ops.cu compiles with nvcc, with g++ over an
emulation of CUDA (tests/cuda_emu/cuda_emu.h): real threads per block,
barriers and warp shuffles that refuse misuse. Here its results must equal
a sequential NumPy model of the documented summing order bit for bit
(tests/emu_model.py), and the CPU ops within the tolerances docs/numerics.md
documents (bit for bit where it promises that). What this cannot show (races
between blocks, fences, the GPU's float units, speed): docs/cuda.md.
"""
import numpy as np
import pytest
import torch

import emu_harness as eh
import emu_model as em
from test_cuda import CPU_GPU64, SGD_SETTINGS
from tolerances import CPU_GPU

W = eh.TUTORIAL_WEIGHTS
ops = torch.ops.biasfit

pytestmark = pytest.mark.skipif(eh.GXX is None, reason="no g++ to build the CUDA emulation")


def data(n, dtype, seed=0):
    """Doses over [-0.25, 1.25] (both hidden units on and off), labels in [0, 2]."""
    rng = np.random.default_rng(seed)
    return ((rng.random(n) * 1.5 - 0.25).astype(dtype),
            (rng.random(n) * 2).astype(dtype))


def same(a, b):
    """Bit for bit, NaN equal to NaN (its payload is the CPU's business)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b)))
                                       and np.array_equal(np.signbit(a) & ~np.isnan(a),
                                                          np.signbit(b) & ~np.isnan(b)))


def cpu_loss(x, y, bias, sums=False):
    t = [torch.from_numpy(np.ascontiguousarray(v)) for v in (x, y)]
    w = torch.tensor(W, dtype=t[0].dtype)
    b = torch.tensor(bias, dtype=t[0].dtype)
    if sums:
        return tuple(ops.fused_loss_sums(*t, w, b).tolist())
    return tuple(float(v) for v in ops.fused_loss(*t, w, b))


# Sizes at the edges: a partial 16-byte group; one block's 1024 groups (4096
# float32 / 2048 float64 points) and one more; several blocks with a partial
# last one; a million points. (Past the largest grid, where threads loop:
# tests/test_cuda_emu_slow.py, opt-in, as 4096 emulated blocks take minutes.)
SIZES = {np.float32: [1, 2, 3, 5, 1023, 4095, 4096, 4097, 8193, 70_001, 1_000_000],
         np.float64: [1, 3, 2047, 2048, 2049, 6145, 70_001]}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_point_sums_equal_the_model_and_the_cpu(emu, tmp_path, dtype):
    for n in SIZES[dtype]:
        x, y = data(n, dtype, seed=n)
        for bias in (-16.0, 0.5) if n < 1_000_000 else (0.5,):
            got = emu.fused_loss(tmp_path, x, y, W, bias, sums=True)
            expected = em.fused_loss_sums(x, y, W, bias)
            assert got == expected, f"n={n} bias={bias}"
            # The CPU sums in another order: float64 sums agree to 1e-12, the
            # gradient relative to the size of what it adds up.
            cpu = cpu_loss(x, y, bias, sums=True)
            scale = float(np.abs(em.point_loss_grad(x, y, W, bias)[1]).sum())
            assert abs(got[0] - cpu[0]) <= CPU_GPU64 * abs(cpu[0]), f"n={n}"
            assert abs(got[1] - cpu[1]) <= CPU_GPU64 * scale, f"n={n}"
        if n >= 1_000_000:
            continue
        # fused_loss rounds the same sums to the data's dtype.
        loss, grad = emu.fused_loss(tmp_path, x, y, W, -16.0)
        expected = em.fused_loss_sums(x, y, W, -16.0)
        assert loss == dtype(expected[0]) and grad == dtype(expected[1])
        cpu = cpu_loss(x, y, -16.0)
        assert abs(float(loss) - cpu[0]) <= abs(cpu[0]) * np.finfo(dtype).eps


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_views_are_read_in_place_with_the_same_bits(emu, tmp_path, dtype):
    # Unaligned (no 16-byte loads), strided and expanded views must add the
    # same points in the same order as a contiguous copy.
    x, y = data(20_003, dtype)
    views = {"unaligned": (x[1:], y[1:]), "strided": (x[::3], y[::2][: x[::3].size]),
             "expanded": (np.broadcast_to(x[5:6], (9000,)), y[:9000])}
    for name, (vx, vy) in views.items():
        got = emu.fused_loss(tmp_path, vx, vy, W, -2.0)
        dense = emu.fused_loss(tmp_path, np.ascontiguousarray(vx), np.ascontiguousarray(vy), W, -2.0)
        assert got == dense, name
        assert got[0] == dtype(em.fused_loss_sums(np.ascontiguousarray(vx),
                                                  np.ascontiguousarray(vy), W, -2.0)[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_propagate_as_in_the_model(emu, tmp_path, dtype):
    x, y = data(5000, dtype)
    cases = {"nan input": (0, np.nan, None), "inf label": (4999, None, np.inf),
             "-inf input": (2500, -np.inf, None)}
    for name, (i, xv, yv) in cases.items():
        cx, cy = x.copy(), y.copy()
        if xv is not None:
            cx[i] = xv
        if yv is not None:
            cy[i] = yv
        got = emu.fused_loss(tmp_path, cx, cy, W, 0.5, sums=True)
        with np.errstate(all="ignore"):
            expected = em.fused_loss_sums(cx, cy, W, 0.5)
        assert same(got, expected), name
        cpu = cpu_loss(cx, cy, 0.5, sums=True)
        if np.isfinite(got).all():  # relu(-inf) = 0: finite, as on the CPU
            np.testing.assert_allclose(got, cpu, rtol=CPU_GPU64, err_msg=name)
        else:
            assert same(np.isnan(got), np.isnan(cpu)), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_predict_same_bits_as_the_model_and_the_cpu(emu, tmp_path, dtype):
    for n in (1, 5, 4097, 1_000_000 if dtype == np.float32 else 70_001):
        x, _ = data(n, dtype, seed=n)
        x[:3] = [0.0, 0.5, np.nan][: min(3, n)] if n >= 3 else x[:3]
        got = emu.predict(tmp_path, x, W, -16.0)
        with np.errstate(all="ignore"):
            assert same(got, em.predict(x, W, -16.0)), f"n={n}"
        cpu = ops.predict(torch.from_numpy(x), torch.tensor(W, dtype=torch.from_numpy(x).dtype),
                          torch.tensor(-16.0, dtype=torch.from_numpy(x).dtype)).numpy()
        assert same(got, cpu), f"n={n}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_predict_bias_grad_equals_the_model(emu, tmp_path, dtype):
    for n in (3, 4097, 70_001):
        x, g = data(n, dtype, seed=n)
        g = g - dtype(1)
        got = emu.predict_bias_grad(tmp_path, g, x, W, -16.0)
        assert got == dtype(em.grid_sum(em.point_bias_grad(x, g, W, -16.0), dtype)), f"n={n}"


def generated(n, dtype, bias_true=-5.0):
    """Labels the network gives at bias_true: a fit can reach loss 0."""
    x, _ = data(n, dtype, seed=1)
    return x, em.predict(x, W, bias_true)


def cpu_fit(x, y, **kw):
    t = [torch.from_numpy(np.ascontiguousarray(v)) for v in (x, y)]
    s = dict(lr=0.1, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
             maximize=False, epochs=100, tol=1e-4)
    s.update(kw)
    out = ops.fit_sgd(*t, torch.tensor(W, dtype=t[0].dtype), torch.tensor(0.0, dtype=t[0].dtype),
                      *s.values())
    return [o.numpy() for o in out]


def check_fit(emu, tmp_path, x, y, **kw):
    got = emu.fit(tmp_path, x, y, W, 0.0, **kw)
    with np.errstate(all="ignore"):
        expected = em.fit(x, y, W, 0.0, **kw)
    epoch, status = expected[3]
    seen = epoch if status == 2 else epoch + 1
    assert list(got[3]) == list(expected[3])
    assert same(got[0], expected[0])
    assert same(got[1][:seen], expected[1][:seen]) and same(got[2][:seen], expected[2][:seen])
    return got, seen


@pytest.mark.parametrize("setting", SGD_SETTINGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_block_fit_equals_the_model_and_the_cpu(emu, tmp_path, setting, dtype):
    x = np.array([0.0, 0.5, 1.0], dtype)
    y = np.array([0.0, 1.0, 0.0], dtype)
    kw = dict(SGD_SETTINGS[setting], epochs=100 if setting == "plain" else 40)
    got, seen = check_fit(emu, tmp_path, x, y, **kw)
    assert int(got[4]["launches"]) == 1
    cpu = cpu_fit(x, y, **kw)
    assert list(got[3]) == list(cpu[3])
    rtol = CPU_GPU[dtype]
    np.testing.assert_allclose(got[2][:seen], cpu[2][:seen], rtol=rtol,
                               atol=rtol * float(np.abs(cpu[2][:seen]).max()))
    if setting == "plain" and dtype == np.float32:
        assert list(got[3]) == [34, 1]  # the tutorial's fit, converged at epoch 34


@pytest.mark.parametrize("setting", SGD_SETTINGS)
def test_multi_block_fit_equals_the_model_and_the_cpu(emu, tmp_path, setting):
    n = 4097  # 3 float64 blocks: one launch an epoch, the last block ends it
    x, y = generated(n, np.float64)
    kw = dict(SGD_SETTINGS[setting], lr=0.5 / n, tol=1e-6, epochs=30)
    got, seen = check_fit(emu, tmp_path, x, y, **kw)
    cpu = cpu_fit(x, y, **kw)
    assert list(got[3]) == list(cpu[3])
    np.testing.assert_allclose(got[2][:seen], cpu[2][:seen], rtol=CPU_GPU64,
                               atol=CPU_GPU64 * float(np.abs(cpu[2][:seen]).max()))
    # Each epoch's loss is fused_loss's at that epoch's bias, bit for bit.
    for e in (0, seen - 1):
        assert got[1][e] == emu.fused_loss(tmp_path, x, y, W, got[2][e])[0]


def test_multi_block_float32_fit(emu, tmp_path):
    x, y = generated(9000, np.float32)
    got, _ = check_fit(emu, tmp_path, x, y, lr=0.5 / 9000, tol=1e-4, epochs=40)
    # A budget below the poll's period: every epoch is queued (no-ops after
    # the stop), between the start and publish kernels.
    assert got[3][1] == 1 and int(got[4]["launches"]) == 40 + 2


@pytest.mark.parametrize("n", [3, 4097])
def test_divergence_and_nan_stop_the_fit(emu, tmp_path, n):
    x, y = generated(n, np.float64)
    got, _ = check_fit(emu, tmp_path, x, y, lr=1e308, epochs=20, tol=0.0)
    assert got[3][1] in (3, 4)  # the loss or the bias became inf/NaN
    x[-1] = np.nan
    got, _ = check_fit(emu, tmp_path, x, y, epochs=20)
    assert list(got[3]) == [0, 3]


def test_zero_and_exhausted_epochs(emu, tmp_path):
    x, y = data(4097, np.float64)
    for epochs in (0, 1, 7):
        got, _ = check_fit(emu, tmp_path, x, y, lr=1e-9, tol=0.0, epochs=epochs)
        assert list(got[3]) == [epochs, 2]


def test_status_poll_stops_queueing_and_changes_no_result(emu, tmp_path):
    # Converges at epoch ~20 of a budget of 1000: the poll every 64 epochs
    # stops the queueing; late events and graph capture (no poll) give the
    # same bits.
    x, y = generated(2049, np.float64)  # 2 blocks
    kw = dict(lr=0.5 / 2049, tol=1e-6, epochs=1000)
    base, seen = check_fit(emu, tmp_path, x, y, **kw)
    assert base[3][1] == 1 and int(base[4]["launches"]) <= 2 * 64 + 2
    for variant in ({"event_delay": 2}, {"capturing": True}):
        got = emu.fit(tmp_path, x, y, W, 0.0, **kw, **variant)
        assert list(got[3]) == list(base[3]) and got[0] == base[0]
        assert same(got[1][:seen], base[1][:seen])
    assert int(got[4]["polls"]) == 0 and int(got[4]["launches"]) == 1000 + 2


def test_block_order_changes_no_bit(emu, tmp_path):
    x, y = data(9000, np.float64)
    results = set()
    for order, seed in (("forward", 1), ("reverse", 1), ("shuffle", 1), ("shuffle", 7)):
        h = eh.Harness(emu.binary, env={"CUDA_EMU_BLOCK_ORDER": order, "CUDA_EMU_SEED": str(seed)})
        results.add(h.fused_loss(tmp_path, x, y, W, 0.5, sums=True))
        fit = h.fit(tmp_path, x, y, W, 0.0, lr=1e-6, epochs=3, tol=0.0)
        results.add((fit[0], *fit[1]))
    assert len(results) == 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_mean_loss_and_the_plateau_stop_on_the_gpu_are_the_cpus(emu, tmp_path, dtype):
    # core/fit.h's divide_by and Plateau, one copy for both trainers (issue 27):
    # the emulated CUDA fit stops at the CPU op's epoch, with its status.
    n = 4097
    x, y = generated(n, dtype)
    y = y + np.asarray(data(n, dtype, seed=3)[1], dtype) * dtype(0.01)  # a loss floor
    kw = dict(lr=0.5, epochs=3000, tol=0.0)
    got = emu.fit(tmp_path, x, y, W, 0.0, rtol=1e-5, patience=3, divide_by=float(n), **kw)
    cpu = cpu_fit(x, y, **kw, rtol=1e-5, patience=3, divide_by=float(n))
    assert list(got[3]) == list(cpu[3]) and cpu[3][1] == 6  # kPlateau
    seen = int(cpu[3][0]) + 1
    rtol = CPU_GPU[dtype]
    np.testing.assert_allclose(got[1][:seen], cpu[1][:seen], rtol=rtol, atol=0)
    np.testing.assert_allclose(got[2][:seen], cpu[2][:seen], rtol=rtol,
                               atol=rtol * float(np.abs(cpu[2][:seen]).max()))
