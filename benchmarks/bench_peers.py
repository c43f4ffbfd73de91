"""biasfit.fit_fused against the strongest peers (peers.py), cell by cell.

A cell is (dtype, data set, N, epochs); N = 3 is the tutorial fit to
convergence (35 epochs), timed whole, Python call included. Each cell is
measured once, by its first test, with every kernel interleaved round by
round (the order rotating each round), so load that comes and goes falls on
all of them alike; each kernel's test then reports its own rounds.

Before any time counts, each kernel's first call (which also compiles the
JIT peers, reported apart as compile_s) is checked against the reference
within workloads' tolerances per dtype: a kernel that fails the check fails
its test and posts no time. A peer whose library is missing is skipped with
the reason.

    pytest benchmarks/bench_peers.py --benchmark-only --bench-sizes 3,1e3
    python benchmarks/report.py          # 1 and 2 threads, float32 and float64
"""
import time

import pytest
import torch

import peers
import workloads
from conftest import (bench_datasets, bench_dtypes, bench_epochs, bench_max_work,
                      bench_sizes)
from report import group_name, load_average, size_label

KERNELS = ("fused", "read", *peers.PEERS)
ROUND_BUDGET_S = 1.0     # the time a cell's timed rounds aim at, all kernels together
MIN_ROUNDS, MAX_ROUNDS = 5, 25
MIN_ROUND_S = 2e-3       # shorter calls are repeated within a round and averaged
SPREAD_FLAG = 2.0        # a kernel's slowest round over its fastest


def runner_class(kernel):
    if kernel == "fused":
        return workloads.Fused
    if kernel == "read":
        return workloads.Read
    return peers.PEERS[kernel]


def cells(config):
    """(dtype, data set, n, epochs) in run order; epochs None for the tutorial."""
    max_work = bench_max_work(config)
    for dtype in bench_dtypes(config):
        for n in bench_sizes(config):
            if n == workloads.TUTORIAL_N:
                yield dtype, "tutorial", n, None
                continue
            for dataset in bench_datasets(config):
                for epochs in bench_epochs(config):
                    if n * epochs <= max_work:
                        yield dtype, dataset, n, epochs


def cell_id(cell):
    dtype, dataset, n, epochs = cell
    return (f"{dtype}-{dataset}-N{size_label(n)}"
            + ("-converge" if epochs is None else f"-E{epochs}"))


def pytest_generate_tests(metafunc):
    if "peer_case" in metafunc.fixturenames:
        metafunc.parametrize("peer_case", [
            pytest.param((cell, kernel), id=f"{cell_id(cell)}-{kernel}")
            for cell in cells(metafunc.config) for kernel in KERNELS])


class Measured:
    """One cell's outcome: per kernel, its rounds (seconds per call), or why
    it has none."""

    def __init__(self):
        self.times, self.why, self.extra = {}, {}, {}


def _call_time(run, iterations):
    start = time.perf_counter()
    for _ in range(iterations):
        run()
    return (time.perf_counter() - start) / iterations


def measure(cell, kernels=KERNELS):
    dtype_name, dataset, n, grid_epochs = cell
    dtype = getattr(torch, dtype_name)
    x, y = workloads.make_data(n, dtype, dataset=dataset)
    lr, epochs, tol = workloads.fit_settings(n, grid_epochs)
    bias = workloads.DATASETS[dataset][2] if n != workloads.TUTORIAL_N else 0.0
    expected = workloads.reference_fit(x, y, lr, epochs, tol, bias)
    evaluated = len(expected[2])
    out = Measured()
    out.load = load_average()  # the 1-minute load as the cell starts
    runners = {}
    for kernel in kernels:
        cls = runner_class(kernel)
        why = getattr(cls, "unavailable", lambda: None)()
        if why:
            out.why[kernel] = ("skip", why)
            continue
        # The read pass reads the data as often as the fit evaluates epochs.
        runner = cls(x, y, lr, evaluated if kernel == "read" else epochs, tol, bias)
        start = time.perf_counter()
        try:
            result = runner.run()  # the JIT peers compile here
            first = time.perf_counter() - start
            if kernel == "read":
                workloads.check_read(result, x, y, dtype)
            else:
                workloads.check_fit(result, expected, dtype)
        except AssertionError as e:
            out.why[kernel] = ("fail", f"{kernel} does not reproduce the reference: {e}")
            continue
        second = _call_time(runner.run, 1)
        iterations = max(1, int(MIN_ROUND_S / max(second, 1e-9)))
        runners[kernel] = (runner, iterations, second)
        out.extra[kernel] = {"compile_s": max(0.0, first - second), "iterations": iterations}
    per_round = sum(second * it for _, it, second in runners.values()) or 1e-9
    rounds = max(MIN_ROUNDS, min(MAX_ROUNDS, int(ROUND_BUDGET_S / per_round)))
    order = list(runners)
    for k in order:
        out.times[k] = []
    for r in range(rounds):
        shift = r % len(order)
        for kernel in order[shift:] + order[:shift]:
            runner, iterations, _ = runners[kernel]
            out.times[kernel].append(_call_time(runner.run, iterations))
    for kernel, times in out.times.items():
        out.extra[kernel].update(rounds=rounds, spread=max(times) / min(times))
    out.evaluated = evaluated
    out.bytes_per_epoch = workloads.bytes_per_epoch(x, y)
    return out


@pytest.fixture(scope="session")
def measured_cells():
    """The cell being reported: (cell, Measured); one at a time, to free memory."""
    return {}


def _selected(session, cell):
    """The cell's kernels this session runs (-k may deselect some)."""
    return [item.callspec.params["peer_case"][1] for item in session.items
            if getattr(item, "callspec", None) is not None
            and item.callspec.params.get("peer_case", (None,))[0] == cell]


def test_peer(benchmark, peer_case, measured_cells, request):
    cell, kernel = peer_case
    if measured_cells.get("cell") != cell:
        measured_cells.clear()  # the previous cell's runners and buffers go
        measured_cells.update(cell=cell, result=measure(cell, _selected(request.session, cell)))
    m = measured_cells["result"]
    if kernel in m.why:
        what, why = m.why[kernel]
        (pytest.skip if what == "skip" else pytest.fail)(why)
    dtype, dataset, n, grid_epochs = cell
    dtype, dataset, n, epochs = cell
    benchmark.group = group_name(n, dtype, dataset,
                                 "to convergence" if epochs is None else f"E{epochs}")
    benchmark.extra_info.update(
        kernel=kernel, device="cpu", dtype=dtype, n=n, epochs=m.evaluated,
        bytes_per_epoch=m.bytes_per_epoch, dataset=dataset, grid=True,
        grid_epochs=grid_epochs, converge=grid_epochs is None,
        threads=torch.get_num_threads(), load=m.load, **m.extra[kernel])
    if benchmark.disabled:
        return
    # The rounds were timed above, interleaved with the other kernels';
    # pytest-benchmark's public API times only its own calls, so they are
    # handed to its statistics directly (private API of pytest-benchmark 4 and 5).
    benchmark._mode = "bench_peers.measure"
    stats = benchmark._make_stats(1)
    for seconds in m.times[kernel]:
        stats.update(seconds)
