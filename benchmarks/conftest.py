"""Options and shared state for the benchmark suite.

    pytest benchmarks --benchmark-only                 # N = 3, 1e3, 1e5, 1e6
    pytest benchmarks --benchmark-only --bench-large   # also 1e7 and 1e8
    BIASFIT_BENCH_LARGE=1 pytest benchmarks ...        # the same
    pytest benchmarks/bench_peers.py --benchmark-only  # biasfit against its peers

bench_peers.py's grid (N by epochs, per data set) is bounded by its work,
N * epochs: at most 1e8 by default, 1e10 with --bench-large, or
--bench-max-work (1e11 runs every cell, for hours).

Only tests that ask for the fixtures below get them, so a self-contained
bench_*.py file in this folder runs unchanged beside this one.
"""
import importlib.util
import os

import pytest

import report

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
                    help="CPU threads for the run, torch's, Numba's and XLA's "
                         "(default: each library's own choice)")
    group.addoption("--bench-epochs", default="10,100,1000",
                    help="bench_peers.py: comma-separated epoch counts (default 10,100,1000)")
    group.addoption("--bench-datasets", default="tutorial,dense",
                    help="bench_peers.py: comma-separated data sets (tutorial, dense)")
    group.addoption("--bench-max-work", type=float, default=None,
                    help="bench_peers.py: run only cells with N * epochs at most this "
                         "(default 1e8, 1e10 with --bench-large)")


def parse_sizes(text):
    sizes = []
    for item in text.split(","):
        value = float(item)
        if value != int(value) or value < 1:
            raise pytest.UsageError(f"--bench-sizes: {item!r} is not a whole size >= 1")
        sizes.append(int(value))
    return tuple(sizes)


def _large(config):
    return config.getoption("--bench-large") or os.environ.get(
        "BIASFIT_BENCH_LARGE", "") not in ("", "0")


def bench_sizes(config):
    text = config.getoption("--bench-sizes")
    if text:
        return parse_sizes(text)
    return DEFAULT_SIZES + (LARGE_SIZES if _large(config) else ())


def bench_epochs(config):
    return parse_sizes(config.getoption("--bench-epochs"))


def bench_datasets(config):
    from workloads import DATASETS
    names = [n.strip() for n in config.getoption("--bench-datasets").split(",")]
    bad = [n for n in names if n not in DATASETS]
    if bad:
        raise pytest.UsageError(f"--bench-datasets: unknown data set(s) {bad}; "
                                f"use {', '.join(DATASETS)}")
    return tuple(names)


def bench_max_work(config):
    work = config.getoption("--bench-max-work")
    if work is None:
        return 1e10 if _large(config) else 1e8
    return work


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
        set_peer_threads(threads)
    config._biasfit_load_start = report.load_average()


def set_peer_threads(threads):
    """Numba's threads now; XLA's through its flags, read when jax is first
    imported (the peers import it lazily)."""
    if importlib.util.find_spec("numba") is not None:
        import numba
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    flags = os.environ.get("XLA_FLAGS", "")
    if threads == 1 and "intra_op_parallelism_threads" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1").strip()


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["biasfit"] = report.machine_summary(
        load_start=getattr(config, "_biasfit_load_start", None))


@pytest.fixture(scope="session")
def reference_results():
    """Reference fits by (n, dtype, epochs), computed once per session."""
    return {}
