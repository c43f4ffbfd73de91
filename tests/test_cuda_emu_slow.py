"""Emulated CUDA runs too slow for every test run (minutes each: the largest
grid is 4096 emulated blocks). Opt in with BIASFIT_SLOW_TESTS=1."""
import os

import numpy as np
import pytest

import emu_harness as eh
import emu_model as em

W = eh.TUTORIAL_WEIGHTS

pytestmark = pytest.mark.skipif(os.environ.get("BIASFIT_SLOW_TESTS") != "1",
                                reason="slow (minutes): set BIASFIT_SLOW_TESTS=1")


def test_grid_stride_loop_past_the_largest_grid(emu, tmp_path):
    # 4096 blocks of 256 threads take 4 float64 groups (2 points) each before
    # thread_sum's outer loop goes round again.
    n = 4096 * 256 * 4 * 2 + 2 * 256 + 1
    x = np.random.default_rng(0).random(n) * 1.5 - 0.25
    y = em.predict(x, W, -5.0)
    assert emu.fused_loss(tmp_path, x, y, W, -4.0, sums=True) == em.fused_loss_sums(x, y, W, -4.0)


def test_more_than_2_to_the_31_points_at_distinct_addresses(emu, tmp_path):
    # harness.cpp's run_big: float32 arrays of 2^31 + 2^20 + 3 points mapped
    # as zero pages, labels 1 on the first 4096, 3 from 2^31 on; y_hat is 1
    # everywhere, so the exact sums count both ends.
    n = 2 ** 31 + 2 ** 20 + 3
    front, tail = 4096, n - 2 ** 31
    emu.run("big", tmp_path, timeout=3600, n=n)
    out = dict(kv.split("=") for kv in emu.last_output.split()[:4])
    loss = (n - front - tail) * 1 + tail * 4          # (1 - y)^2
    grad = (n - front - tail) * 2 + tail * -4         # 2 (1 - y)
    assert float(out["loss"]) == loss and float(out["grad"]) == grad
    assert float(out["fit_loss"]) == float(np.float32(loss))
    assert out["info"] == "1,2"
