"""Every kernel on the same data, side by side per size (benchmark group).

N = 3 is the tutorial itself, fitted to convergence (35 epochs); larger N run
a fixed number of epochs, so time per epoch = round time / epochs. Each
benchmark checks its result against the reference before its time counts.
`python benchmarks/report.py --suite kernels` turns the saved JSON into a table and a plot.
"""
import time

import pytest
import torch

import biasfit
import workloads
from report import group_name, size_label
from conftest import bench_dtypes, bench_sizes

# Kernel order within a size: eager first, so its result becomes the size's
# reference without a second run.
KERNEL_ORDER = ("eager", "tutorial", "compiled", "autograd", "fused-fit", "fused", "read")
TUTORIAL_MAX_N = 10**3  # the per-sample loop takes ~0.3 s an epoch at 1e3
TUTORIAL_EPOCHS_LARGE_N = 3
EPOCHS = 100
EPOCHS_BY_SIZE = {10**8: 10}  # 100 epochs of eager PyTorch at 1e8 take hours

# Rounds: sizes up to WARMUP_MAX_N get an untimed warm-up round, which also
# sizes the rounds to about ROUND_BUDGET_S; larger sizes run fixed rounds.
WARMUP_MAX_N = 10**6
ROUND_BUDGET_S = 2.0
MIN_ROUNDS, MAX_ROUNDS = 3, 1000
LARGE_ROUNDS = {10**7: 2, 10**8: 1}



def epochs_for(kernel, n):
    if kernel == "tutorial" and n != workloads.TUTORIAL_N:
        return TUTORIAL_EPOCHS_LARGE_N
    return EPOCHS_BY_SIZE.get(n, EPOCHS)


def _cuda_skip(kernel):
    if not torch.cuda.is_available():
        return pytest.mark.skip(reason="no CUDA GPU on this machine")
    if kernel in ("autograd", "fused-fit", "fused") and not biasfit.WITH_CUDA:
        return pytest.mark.skip(reason="biasfit was built without CUDA")
    return None


def cases(config):
    for n in bench_sizes(config):
        for dtype in bench_dtypes(config):
            for device in ("cpu", "cuda"):
                for kernel in KERNEL_ORDER:
                    if kernel == "tutorial" and (n > TUTORIAL_MAX_N or device == "cuda"):
                        continue
                    marks = [m for m in [_cuda_skip(kernel)] if m] if device == "cuda" else []
                    yield pytest.param((kernel, n, dtype, device), marks=marks,
                                       id=f"{kernel}-{device}-{dtype}-N{size_label(n)}")


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", list(cases(metafunc.config)))


def _rounds(n, runner):
    """Warm up (untimed) and choose the round count."""
    if n > WARMUP_MAX_N:
        return LARGE_ROUNDS.get(n, 1)
    runner.setup()
    start = time.perf_counter()
    runner.run()
    took = time.perf_counter() - start
    return max(MIN_ROUNDS, min(MAX_ROUNDS, int(ROUND_BUDGET_S / max(took, 1e-9))))


def test_fit(benchmark, case, reference_results):
    kernel, n, dtype_name, device = case
    dtype = getattr(torch, dtype_name)
    x, y = workloads.make_data(n, dtype, device)
    epochs = epochs_for(kernel, n)
    lr, epochs, tol = workloads.fit_settings(n, epochs)
    runner = workloads.KERNELS[kernel](x, y, lr, epochs, tol)
    extra = runner.prepare()
    rounds = _rounds(n, runner)
    benchmark.group = group_name(n, dtype_name)  # read when the timing is stored

    result = benchmark.pedantic(runner.run, setup=runner.setup, rounds=rounds, iterations=1)

    if kernel == "read":
        workloads.check_read(result, x, y, dtype)
        evaluated = epochs
    else:
        key = (n, dtype_name, epochs)
        if kernel == "eager" and device == "cpu" and n != workloads.TUTORIAL_N:
            reference_results.setdefault(key, result)  # eager is the reference for N > 3
        if key not in reference_results:
            reference_results[key] = workloads.reference_fit(x, y, lr, epochs, tol)
        workloads.check_fit(result, reference_results[key], dtype)
        evaluated = len(result[2])

    benchmark.extra_info.update(
        kernel=kernel, device=device, dtype=dtype_name, n=n, epochs=evaluated,
        bytes_per_epoch=workloads.bytes_per_epoch(x, y),
        converge=n == workloads.TUTORIAL_N, **extra)
