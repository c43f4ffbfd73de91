"""The Python routes into the native trainer at the tutorial's size: one
whole 3-point fit (34 epochs, to convergence) through fit_fused and through
fit(model, x, y, engine="fused"), the model built outside the timed call.

    pytest benchmarks/bench_routes.py --benchmark-only --bench-threads 2

or, round-robin (one round of each route in turn, so a load that comes and
goes on a shared machine falls on both alike), also under another build:

    python benchmarks/bench_routes.py --threads 1,2 --json out.json

Only public API is used, so the script runs unchanged under an older
biasfit: run it under two installs in alternation to compare them (one
process cannot load two builds of torch.ops.biasfit).
"""
import argparse
import gc
import json
import os
import statistics
import time

import pytest
import torch

import biasfit
from report import write_run


def _data(dtype=torch.float32):
    x, y = biasfit.tutorial_data()
    return x.to(dtype), y.to(dtype)


def _check(result):
    assert result.epochs_run == 34 and abs(result.final_bias + 16.0019) < 1e-4


ROUTES = {
    "fit_fused": lambda x, y, model: biasfit.fit_fused(x, y),
    "fit_engine_fused": lambda x, y, model: biasfit.fit(model, x, y, engine="fused"),
}


@pytest.mark.parametrize("route", ROUTES)
def test_tutorial_fit(benchmark, route):
    x, y = _data()
    run = ROUTES[route]
    _check(run(x, y, biasfit.BasicNN(dtype=x.dtype)))
    benchmark.extra_info.update(route=route, n=3, dtype="float32",
                                threads=torch.get_num_threads())
    result = benchmark.pedantic(
        run, setup=lambda: ((x, y, biasfit.BasicNN(dtype=x.dtype)), {}),
        rounds=20000, warmup_rounds=200)
    _check(result)


def interleaved(threads: int, rounds: int, repeat: int) -> dict:
    """Every round's mean time per fit (seconds) of each route, round-robin."""
    torch.set_num_threads(threads)
    x, y = _data()
    for run in ROUTES.values():
        _check(run(x, y, biasfit.BasicNN(dtype=x.dtype)))
    times = {name: [] for name in ROUTES}
    clock = time.perf_counter
    for _ in range(rounds):
        for name, run in ROUTES.items():
            # Each fit timed alone, its model built just before, untimed (a
            # thousand models built ahead would leave each one's parameters
            # out of cache, a cost no real fit pays). The garbage collector
            # is off while timing, as timeit has it.
            total = 0.0
            gc.collect()
            gc.disable()
            for _ in range(repeat):
                model = biasfit.BasicNN(dtype=x.dtype)
                start = clock()
                run(x, y, model)
                total += clock() - start
            gc.enable()
            times[name].append(total / repeat)
    return times


def summary(paths):
    """The median over runs of each run's median, per build (the biasfit
    folder a run imported), threads and route, from --json files."""
    runs = {}
    for path in paths:
        with open(path) as f:
            run = json.load(f)
        for key, us in run["medians_us"].items():
            runs.setdefault(run["biasfit"], {}).setdefault(key, []).append(us)
    for build, keys in runs.items():
        print(build)
        for key, values in sorted(keys.items()):
            print(f"  {key:30s} median {statistics.median(values):8.2f} us  runs {values}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary", nargs="+", metavar="JSON",
                        help="print the medians over these runs instead of running")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--json", help="write every round's times here")
    args = parser.parse_args()
    if args.summary:
        summary(args.summary)
        return
    out = {"biasfit": biasfit.__file__, "torch": torch.__version__,
           "load_start": round(os.getloadavg()[0], 2), "medians_us": {}, "rounds_s": {}}
    for threads in (int(t) for t in args.threads.split(",")):
        times = interleaved(threads, args.rounds, args.repeat)
        for name, ts in times.items():
            key = f"threads{threads}/{name}"
            out["rounds_s"][key] = ts
            out["medians_us"][key] = round(statistics.median(ts) * 1e6, 3)
        a, b = (out["medians_us"][f"threads{threads}/{n}"] for n in ROUTES)
        print(f"threads {threads}: fit_fused {a:.2f} us, fit(engine='fused') {b:.2f} us "
              f"({b / a:.2f}x)", flush=True)
    write_run(out, args.json)


if __name__ == "__main__":
    main()
