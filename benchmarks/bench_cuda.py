"""GPU benchmarks: the fused op against the memory bandwidth, and the tutorial
fit in one native call against the autograd engine and the tutorial's loop.

    pytest benchmarks/bench_cuda.py --benchmark-columns=mean,stddev,rounds

Skipped without a CUDA GPU and a CUDA build of biasfit. Self-contained: no
conftest needed.

Bandwidth: fused_loss reads 8 bytes a point (float32 inputs and labels) and
writes nothing worth counting, so its effective bandwidth is 8 N / time. The
yardstick is a device-to-device copy measured in the same run, counted as
bytes read plus bytes written (as CUDA's bandwidthTest does). Both are timed
with CUDA events around back-to-back launches, after a warm-up, and reported
in extra_info; the target is a ratio of at least 0.8 at N = 1e8.
"""
import pytest
import torch

import biasfit
from biasfit.reference import TutorialNN, tutorial_fit
from biasfit.train import tutorial_weights
from report import group_name, size_label

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and biasfit.WITH_CUDA),
    reason="needs a CUDA GPU and biasfit built with CUDA")

GPU = torch.device("cuda")
TARGET_RATIO = 0.8
REPEATS = 20


def event_seconds(fn, repeats=REPEATS):
    """Mean seconds per call of fn, by CUDA events around `repeats` calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / repeats


def copy_bandwidth(n):
    """Bytes per second of a float32 device-to-device copy of n elements."""
    src = torch.rand(n, device=GPU)
    dst = torch.empty_like(src)
    return 2 * 4 * n / event_seconds(lambda: dst.copy_(src))


@pytest.mark.parametrize("n", [pytest.param(
    n, id=size_label(n), marks=pytest.mark.benchmark(
        group=group_name(n, "float32", "cuda fused_loss bandwidth")))
    for n in (10**6, 10**7, 10**8)])
def test_fused_loss_bandwidth(benchmark, n):
    x = torch.rand(n, device=GPU) * 1.5 - 0.25
    y = torch.rand(n, device=GPU)
    w = tutorial_weights(x)
    b = torch.tensor(-16.0, device=GPU)
    op = torch.ops.biasfit.fused_loss

    fused = 2 * 4 * n / event_seconds(lambda: op(x, y, w, b))
    copy = copy_bandwidth(n)
    benchmark.extra_info.update({
        "n": n,
        "bytes_read": 8 * n,
        "fused_GBps": round(fused / 1e9, 1),
        "copy_GBps": round(copy / 1e9, 1),
        "ratio_to_copy": round(fused / copy, 3),
        "target_ratio_at_1e8": TARGET_RATIO,
        "device": torch.cuda.get_device_name(),
    })

    def run():
        op(x, y, w, b)
        torch.cuda.synchronize()

    benchmark(run)


# -- the tutorial's fit, on the GPU -----------------------------------------------------

def tutorial_on(device):
    x, y = biasfit.tutorial_data()
    return x.to(device), y.to(device)


def record(benchmark, epochs_run, final_bias):
    benchmark.extra_info.update({"epochs_run": epochs_run,
                                 "final_bias": round(final_bias, 4)})
    assert epochs_run == 34
    assert final_bias == pytest.approx(-16.0019, abs=1e-4)


@pytest.mark.benchmark(group=group_name(3, "float32", "cuda tutorial fit"))
def test_fit_fused_gpu_one_call(benchmark):
    x, y = tutorial_on(GPU)
    # One native call for all epochs; FitResult's .tolist() is the only sync.
    result = benchmark(lambda: biasfit.fit_fused(x, y))
    record(benchmark, result.epochs_run, result.final_bias)


@pytest.mark.benchmark(group=group_name(3, "float32", "cuda tutorial fit"))
def test_fit_autograd_engine_gpu(benchmark):
    x, y = tutorial_on(GPU)
    result = benchmark(lambda: biasfit.fit(biasfit.BasicNN().to(GPU), x, y))
    record(benchmark, result.epochs_run, result.final_bias)


@pytest.mark.benchmark(group=group_name(3, "float32", "cuda tutorial fit"))
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_tutorial_loop(benchmark, device):
    # The tutorial's own per-sample loop, where it runs (CPU) and on the GPU.
    x, y = tutorial_on(device)

    def run():
        model = TutorialNN().to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        return tutorial_fit(model, x, y, optimizer)

    epochs_run, final_bias, _ = benchmark(run)
    record(benchmark, epochs_run, final_bias)
