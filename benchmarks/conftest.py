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

pytest-benchmark's habits, kept here for every suite:
- machine_info holds only what stays put between two runs on one machine
  (so --benchmark-compare warns about nothing there): the load average goes
  to each benchmark's extra_info ("load"), the CPU's current clock nowhere;
- groups are named "N=... dtype ..." (report.group_name) and the tables list
  them by N; a group whose benchmarks all time the same number of epochs per
  round shows times per epoch (the JSON keeps them per round, with
  extra_info["epochs"]); the default columns fit a terminal;
- --benchmark-histogram (pygal, in the bench extra) draws on a log scale:
  biasfit's nanoseconds and the eager loop's milliseconds side by side.
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


# The table's columns unless --benchmark-columns names others (pytest-benchmark's
# ten made rows of 200-240 characters).
COLUMNS = ["min", "median", "iqr", "rounds"]


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's own reads the options
def pytest_configure(config):
    option = config.option
    if hasattr(option, "benchmark_columns") and option.benchmark_columns is None:
        option.benchmark_columns = list(COLUMNS)  # None: not given
    if getattr(option, "benchmark_name", None) == "normal":
        option.benchmark_name = "short"
    if getattr(option, "benchmark_histogram", None):
        log_scale_histograms()
    # A DeprecationWarning from this suite's code or biasfit's is an error;
    # torch 2.13's own import of inductor (torch.compile's first call) warns
    # about its torch.jit.script_method 14 times, which is torch's to fix.
    for module in ("biasfit", "bench_", "workloads", "peers", "report", "conftest"):
        config.addinivalue_line("filterwarnings", f"error::DeprecationWarning:{module}")
    config.addinivalue_line(
        "filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
    threads = config.getoption("--bench-threads", None)
    if threads is not None:
        if threads < 1:
            raise pytest.UsageError(f"--bench-threads must be >= 1, got {threads}")
        import torch
        torch.set_num_threads(threads)
        set_peer_threads(threads)


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
    machine_info["biasfit"] = report.machine_summary()
    cpu = machine_info.get("cpu")
    if isinstance(cpu, dict):  # py-cpuinfo's current clock changes from run to run
        for key in [k for k in cpu if k.startswith("hz_actual")]:
            del cpu[key]


@pytest.fixture(autouse=True)
def _load_in_extra_info(request):
    """Each benchmark's load average as it started, in its extra_info."""
    if "benchmark" in request.fixturenames:
        request.getfixturevalue("benchmark").extra_info.setdefault(
            "load", report.load_average())
    yield


# The statistics of a round's time that the tables and histograms show.
_TIMES = ("min", "max", "mean", "stddev", "median", "iqr", "q1", "q3", "ld15iqr", "hd15iqr")


@pytest.hookimpl(hookwrapper=True)
def pytest_benchmark_group_stats(config, benchmarks, group_by):
    """The groups by N; and each benchmark's times per epoch (a round's over
    its extra_info["epochs"]), as the docs quote them. The JSON, saved
    before, keeps them per round."""
    for bench in benchmarks:
        epochs = (bench.get("extra_info") or {}).get("epochs")
        if isinstance(epochs, int) and epochs > 1 and not bench.get("_per_epoch"):
            bench["_per_epoch"] = True
            for key in _TIMES:
                if isinstance(bench.get(key), (int, float)):
                    bench[key] = bench[key] / epochs
            if isinstance(bench.get("ops"), (int, float)):
                bench["ops"] = bench["ops"] * epochs
    outcome = yield
    outcome.force_result(sorted(outcome.get_result(),
                                key=lambda pair: report.group_key(pair[0])))


def pytest_terminal_summary(terminalreporter, config):
    if getattr(config, "_benchmarksession", None) and config._benchmarksession.benchmarks:
        terminalreporter.write_line(
            "biasfit: times are per epoch (a round's time over its extra_info['epochs']; "
            "OPS: epochs per second); --benchmark-json keeps them per round.")


def log_scale_histograms():
    """pytest-benchmark's histograms (pygal) on a log scale, or a UsageError
    before the run where pygal is missing."""
    try:
        from pytest_benchmark import histogram
    except ImportError:
        raise pytest.UsageError("--benchmark-histogram needs pygal: pip install "
                                "'biasfit[bench]' (or: pip install pygal pygaljs)") from None
    if getattr(histogram.make_plot, "_biasfit_log", False):
        return
    linear = histogram.make_plot

    def make_plot(benchmarks, title, adjustment):
        plot = linear(benchmarks=benchmarks, title=title, adjustment=adjustment)
        low = min(row["min"] for row in benchmarks) * adjustment
        high = max(row["max"] for row in benchmarks) * adjustment
        plot.logarithmic = True
        plot.range = (low / 1.5, high * 1.5)
        plot.zero = low / 1.5
        plot.y_title = "Duration (log scale)"
        return plot

    make_plot._biasfit_log = True
    histogram.make_plot = make_plot


@pytest.fixture(scope="session")
def reference_results():
    """Reference fits by (n, dtype, epochs), computed once per session."""
    return {}
