"""Options and shared state for the benchmark suite.

    pytest benchmarks --benchmark-only                 # N = 3, 1e3, 1e5, 1e6
    pytest benchmarks --benchmark-only --bench-large   # also 1e7 and 1e8
    BIASFIT_BENCH_LARGE=1 pytest benchmarks ...        # the same

Only tests that ask for the fixtures below get them, so a self-contained
bench_*.py file in this folder runs unchanged beside this one.
"""
import os

import pytest

from biasfit import bench

DEFAULT_SIZES = (3, 10**3, 10**5, 10**6)
LARGE_SIZES = (10**7, 10**8)


def pytest_addoption(parser):
    group = parser.getgroup("biasfit benchmarks")
    group.addoption("--bench-large", action="store_true", default=False,
                    help="also run N = 1e7 and 1e8 (or set BIASFIT_BENCH_LARGE=1)")
    group.addoption("--bench-sizes", default=None,
                    help="comma-separated sizes instead of the defaults, e.g. 3,1e5")
    group.addoption("--bench-dtypes", default="float32",
                    help="comma-separated dtypes (float32, float64); default float32")
    group.addoption("--bench-threads", type=int, default=None,
                    help="torch's CPU threads for the run (default: torch's own choice)")


def parse_sizes(text):
    sizes = []
    for item in text.split(","):
        value = float(item)
        if value != int(value) or value < 1:
            raise pytest.UsageError(f"--bench-sizes: {item!r} is not a whole size >= 1")
        sizes.append(int(value))
    return tuple(sizes)


def bench_sizes(config):
    text = config.getoption("--bench-sizes")
    if text:
        return parse_sizes(text)
    large = config.getoption("--bench-large") or os.environ.get(
        "BIASFIT_BENCH_LARGE", "") not in ("", "0")
    return DEFAULT_SIZES + (LARGE_SIZES if large else ())


def bench_dtypes(config):
    names = [n.strip() for n in config.getoption("--bench-dtypes").split(",")]
    bad = [n for n in names if n not in ("float32", "float64")]
    if bad:
        raise pytest.UsageError(f"--bench-dtypes: unknown dtype(s) {bad}; use float32, float64")
    return tuple(names)


def pytest_configure(config):
    threads = config.getoption("--bench-threads", None)
    if threads is not None:
        if threads < 1:
            raise pytest.UsageError(f"--bench-threads must be >= 1, got {threads}")
        import torch
        torch.set_num_threads(threads)
    config._biasfit_load_start = bench.load_average()


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["biasfit"] = bench.machine_summary(
        load_start=getattr(config, "_biasfit_load_start", None))


@pytest.fixture(scope="session")
def reference_results():
    """Reference fits by (n, dtype, epochs), computed once per session."""
    return {}
