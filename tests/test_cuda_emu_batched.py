"""The batched CUDA kernels (vmap's: csrc/cuda/kernels_batched.cuh, launched
by cuda/launch_batched.h) run on the CPU under the emulation, as
tests/test_cuda_emulated.py runs the unbatched ones: every fit of a batch
must give the unbatched CUDA kernels' bits on its rows, and the CPU's
batched op within tests/tolerances.py's CPU_GPU.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

import biasfit  # noqa: F401  (loads torch.ops.biasfit)

import emu_harness as eh
from tolerances import CPU_GPU

W = np.array(eh.TUTORIAL_WEIGHTS)
K = 3
pytestmark = pytest.mark.skipif(eh.GXX is None, reason="no g++ to build the CUDA emulation")
# A partial 16-byte group; one block's 1024 groups and one more; several
# blocks. Odd sizes leave rows after the first unaligned: the scalar loads.
SIZES = {np.float32: [5, 4097, 20_001], np.float64: [3, 2049, 10_001]}


def problem(n, dtype, seed=0):
    """K data sets, labels, weights near the tutorial's and biases."""
    rng = np.random.default_rng(seed)
    xs = (rng.random((K, n)) * 1.5 - 0.25).astype(dtype)
    ys = (rng.random((K, n)) * 2).astype(dtype)
    ws = (W + 0.2 * rng.standard_normal((K, 6))).astype(dtype)
    bs = np.array([-2.0, 0.5, 1.25][:K], dtype)
    return xs, ys, ws, bs


def run_batched(emu, workdir, op, a, b, w, bias, needs=15):
    """The harness's batched op on rows a [*, n], b [*, n], w [*, 6], bias
    [*] (a row count of 1: shared). Returns out.bin, out_dy.bin, out_dx.bin
    (None where absent), as arrays."""
    d = Path(workdir)
    d.mkdir(parents=True, exist_ok=True)
    dtype = a.dtype
    fits = max(len(a), len(b), len(w), len(bias))
    n = a.shape[1]
    for name, arr in (("a", a), ("b", b), ("w", w), ("bias", bias)):
        np.ascontiguousarray(arr).tofile(d / f"{name}.bin")
        (d / f"out_{name}.bin").unlink(missing_ok=True)
    for name in ("out.bin", "out_dy.bin", "out_dx.bin"):
        (d / name).unlink(missing_ok=True)
    row = lambda arr, width: 0 if len(arr) == 1 else width
    emu.run(op, d, dtype="f64" if dtype == np.float64 else "f32", n=n, fits=fits,
            a_row=row(a, n), b_row=row(b, n), w_row=row(w, 6), bias_row=row(bias, 1),
            needs=needs)
    sums = op in ("batched_loss_sums", "batched_loss_grads_sums")
    out = np.fromfile(d / "out.bin", np.float64 if sums else dtype)
    extra = [np.fromfile(d / f, dtype).reshape(fits, n) if (d / f).exists() else None
             for f in ("out_dy.bin", "out_dx.bin")]
    return (out.reshape(fits, -1), *extra)


def rows(arr, k):
    return arr[0] if len(arr) == 1 else arr[k]


# Which of the four arguments are batched: a batch of biases over shared
# data, of weights, of data sets, and all at once.
SHAPES = {"biases": (1, 1, 1, K), "weights": (1, 1, K, 1), "data": (K, K, 1, 1),
          "all": (K, K, K, K)}


def arguments(n, dtype, shape):
    xs, ys, ws, bs = problem(n, dtype, seed=n)
    return [arr[:count] for arr, count in zip((xs, ys, ws, bs), shape)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_loss_and_its_sums_are_the_unbatched_kernels(emu, tmp_path, dtype, shape):
    for n in SIZES[dtype]:
        x, y, w, b = arguments(n, dtype, SHAPES[shape])
        loss = run_batched(emu, tmp_path / "b", "batched_loss", x, y, w, b)[0]
        sums = run_batched(emu, tmp_path / "b", "batched_loss_sums", x, y, w, b)[0]
        for k in range(K):
            args = (rows(x, k), rows(y, k), rows(w, k), rows(b, k))
            assert tuple(loss[k]) == emu.fused_loss(tmp_path / "u", *args), (n, k)
            assert tuple(sums[k]) == emu.fused_loss(tmp_path / "u", *args, sums=True), (n, k)
        # And the CPU's batched op, within the CUDA-against-CPU bound.
        cpu = torch.ops.biasfit.fused_loss_sums_batched(
            *(torch.from_numpy(np.ascontiguousarray(v)) for v in (x, y, w, b)))
        assert np.allclose(sums[:, 0], cpu[:, 0].numpy(), rtol=CPU_GPU[np.float64], atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_gradient_is_the_unbatched_kernels(emu, tmp_path, dtype):
    n = SIZES[dtype][1]
    for shape in ("weights", "all"):
        x, y, w, b = arguments(n, dtype, SHAPES[shape])
        for needs in (2, 3, 15):
            out, dy, dx = run_batched(emu, tmp_path / "b", "batched_loss_grads", x, y, w, b,
                                      needs)
            for k in range(K):
                args = (rows(x, k), rows(y, k), rows(w, k), rows(b, k))
                loss, wg, bg, ydy, xdx = emu.loss_grads(tmp_path / "u", *args, needs=needs)
                assert out[k, 0] == loss and out[k, 7] == bg, (shape, needs, k)
                if needs & 1:
                    assert np.array_equal(out[k, 1:7], wg)
                if needs & 4:
                    assert np.array_equal(dy[k], ydy)
                if needs & 8:
                    assert np.array_equal(dx[k], xdx)
        sums = run_batched(emu, tmp_path / "b", "batched_loss_grads_sums", x, y, w, b)[0]
        for k in range(K):
            args = (rows(x, k), rows(y, k), rows(w, k), rows(b, k))
            assert np.array_equal(sums[k], emu.loss_grads_sums(tmp_path / "u", *args))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_predict_and_its_backward_are_the_unbatched_kernels(emu, tmp_path, dtype):
    n = SIZES[dtype][2]
    x, g, w, b = arguments(n, dtype, SHAPES["all"])
    x1, _, w1, b1 = arguments(n, dtype, SHAPES["biases"])
    out = run_batched(emu, tmp_path / "b", "batched_predict", x, x, w, b)[0]
    shared = run_batched(emu, tmp_path / "b", "batched_predict", x1, x1, w1, b1)[0]
    for k in range(K):
        assert np.array_equal(out[k], emu.predict(tmp_path / "u", x[k], w[k], b[k]))
        assert np.array_equal(shared[k], emu.predict(tmp_path / "u", x1[0], w1[0], b1[k]))
    # predict's backward over (inputs, grad_out).
    bias_grad = run_batched(emu, tmp_path / "b", "batched_predict_bias_grad", x, g, w, b)[0]
    for needs in (2, 11):
        grads, _, dx = run_batched(emu, tmp_path / "b", "batched_predict_grads", x, g, w, b,
                                   needs)
        for k in range(K):
            wg, bg, xdx = emu.predict_grads(tmp_path / "u", g[k], x[k], w[k], b[k], needs)
            assert grads[k, 6] == bg
            if needs & 1:
                assert np.array_equal(grads[k, :6], wg)
            if needs & 8:
                assert np.array_equal(dx[k], xdx)
    for k in range(K):
        assert bias_grad[k, 1] == emu.predict_bias_grad(tmp_path / "u", g[k], x[k], w[k], b[k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_points_sum_to_zero(emu, tmp_path, dtype):
    x, y, w, b = (arr[:, :0] if arr.ndim == 2 and arr.shape[1] != 6 else arr
                  for arr in arguments(8, dtype, SHAPES["biases"]))
    out = run_batched(emu, tmp_path, "batched_loss", x, y, w, b)[0]
    assert out.shape == (K, 2) and not out.any() and not np.signbit(out).any()
