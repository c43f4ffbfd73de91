"""The CUDA emulation bites: it refuses misuse of barriers and shuffles, it
runs the kernels under ThreadSanitizer clean, and a kernel with a barrier
removed fails there. Runs in every test run where g++ is (CI included)."""
import re
import shutil
import subprocess

import numpy as np
import pytest

import emu_harness as eh
import emu_model as em

W = eh.TUTORIAL_WEIGHTS

pytestmark = pytest.mark.skipif(eh.GXX is None, reason="no g++ to build the CUDA emulation")

TSAN_ENV = {"TSAN_OPTIONS": "halt_on_error=1 exitcode=66 second_deadlock_stack=1"}


def tsan_works():
    if eh.GXX is None:
        return False
    done = subprocess.run([eh.GXX, "-fsanitize=thread", "-x", "c++", "-", "-o", "/dev/null"],
                          input="int main(){}", capture_output=True, text=True)
    return done.returncode == 0


@pytest.fixture(scope="session")
def emu_tsan(tmp_path_factory):
    if not tsan_works():
        pytest.fail("g++ cannot build with -fsanitize=thread (libtsan missing?)")
    binary = eh.build(tmp_path_factory.mktemp("emu_tsan") / "harness", eh.TSAN_FLAGS)
    return eh.Harness(binary, env=TSAN_ENV)


MISUSE = {
    "divergent_barrier": r"divergent __syncthreads\(\) in block \d+: thread \d+ waits at "
                         r".*misuse_kernels.h:\d+ while other threads wait at .*misuse_kernels.h:\d+",
    "divergent_shuffle": r"deadlock in block 0: every live thread waits and none can go on:"
                         r"\s+threads 0-15: waiting at __shfl_down_sync .*\s+threads 16-31: "
                         r"waiting at __syncthreads\(\)",
    "shuffle_exited": r"(exits while its warp waits for it at __shfl_down_sync|which has exited)",
    "shuffle_outside_mask": r"lane 8 reads lane 16, outside the mask 0x0000ffff",
    "block_too_big": r"kernel launch failed: error 9 \(grid 1, block 2048\)",
    "spin": r"watchdog: block 0 made no progress for 1\.0 s",
}


@pytest.mark.parametrize("misuse", MISUSE)
def test_misuse_is_refused_with_a_message(emu, tmp_path, misuse):
    h = eh.Harness(emu.binary, env={"CUDA_EMU_WATCHDOG_S": "1"})
    with pytest.raises(eh.Failed) as failed:
        h.run(f"misuse_{misuse}", tmp_path, timeout=60)
    assert re.search(MISUSE[misuse], failed.value.output), failed.value.output
    assert "ran to the end" not in failed.value.output


def quick_set(h, tmp_path):
    """A few launches of every kernel, small enough for ThreadSanitizer:
    returns whether each equals the NumPy model bit for bit."""
    results = {}
    x, y = (np.random.default_rng(3).random(5000) * 1.5 - 0.25), None
    y = em.predict(x, W, -5.0)
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    results["sums f32 (2 blocks)"] = (h.fused_loss(tmp_path, x32, y32, W, -4.0, sums=True)
                                      == em.fused_loss_sums(x32, y32, W, -4.0))
    results["sums f64 unaligned (3 blocks)"] = (
        h.fused_loss(tmp_path, x[1:], y[1:], W, -4.0, sums=True)
        == em.fused_loss_sums(x[1:], y[1:], W, -4.0))
    results["predict"] = np.array_equal(h.predict(tmp_path, x32[:3000], W, -4.0),
                                        em.predict(x32[:3000], W, -4.0))
    for name, (fx, fy, kw) in {
            "one-block fit": (x32[:3], y32[:3], dict(epochs=5, tol=0.0, momentum=0.9)),
            "multi-block fit": (x, y, dict(lr=0.5 / 5000, epochs=3, tol=0.0)),
    }.items():
        got = h.fit(tmp_path, fx, fy, W, 0.0, **kw)
        expected = em.fit(fx, fy, W, 0.0, **kw)
        results[name] = (list(got[3]) == list(expected[3]) and got[0] == expected[0]
                         and np.array_equal(got[1], expected[1]))
    # Every gradient (sums of eight values) and fit_params's kernels.
    results["grads sums f32 (2 blocks)"] = (list(h.loss_grads_sums(tmp_path, x32, y32, W, -4.0))
                                            == em.loss_grads_sums(x32, y32, W, -4.0))
    got = h.loss_grads(tmp_path, x[:2100], y[:2100], W, -4.0, needs=15)
    _, _, dy, dx = em.point_loss_all_grads(x[:2100], y[:2100], W, -4.0)
    results["grads per point f64 (2 blocks)"] = (np.array_equal(got[3], dy)
                                                 and np.array_equal(got[4], dx))
    got = h.predict_grads(tmp_path, y32[:3000], x32[:3000], W, -4.0, needs=11)
    results["predict_grads"] = np.array_equal(
        got[2], em.point_predict_all_grads(x32[:3000], y32[:3000], W, -4.0)[1])
    for name, (fx, fy) in {"one-block fit_params": (x32[:3], y32[:3]),
                           "multi-block fit_params": (x, y)}.items():
        kw = dict(lr=0.5 / fx.size, epochs=2, tol=0.0, momentum=0.9)
        got = h.fit_params(tmp_path, fx, fy, list(W) + [0.0], trained=64, **kw)
        expected = em.fit(fx, fy, W, 0.0, **kw)
        results[name] = (list(got[3][:2]) == list(expected[3]) and got[0][6] == expected[0]
                         and np.array_equal(got[1], expected[1]))
    return results


def test_threadsanitizer_finds_no_race_in_the_kernels(emu_tsan, tmp_path):
    results = quick_set(emu_tsan, tmp_path)
    assert all(results.values()), results


def test_a_removed_barrier_is_caught(tmp_path):
    # A mutant of cuda/reduce.cuh without block_sum's __syncthreads(): warp 0
    # then reads the other warps' sums before they are written. Under TSan
    # the harness must report the race or give wrong sums.
    if not tsan_works():
        pytest.fail("g++ cannot build with -fsanitize=thread (libtsan missing?)")
    mutant = tmp_path / "csrc"
    shutil.copytree(eh.CSRC, mutant)
    source = (mutant / "cuda/reduce.cuh").read_text()
    start = source.index("S block_sum(S v")  # the template for every kind of sum
    barrier = source[start:].index("__syncthreads();")
    cut = start + barrier
    (mutant / "cuda/reduce.cuh").write_text(source[:cut] + source[cut + len("__syncthreads();"):])
    h = eh.Harness(eh.build(tmp_path / "mutant", eh.TSAN_FLAGS, csrc=mutant), env=TSAN_ENV)
    try:
        results = quick_set(h, tmp_path)
    except eh.Failed as failed:
        assert "ThreadSanitizer: data race" in failed.output, failed.output
        assert "cuda/reduce.cuh" in failed.output
    else:
        assert not all(results.values()), "the mutant gave the model's sums"
