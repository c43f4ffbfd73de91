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
    for _ in range(rounds):
        for name, run in ROUTES.items():
            models = [biasfit.BasicNN(dtype=x.dtype) for _ in range(repeat)]
            # As timeit does: the garbage collector's passes over the fresh
            # models would fall on whichever route allocates when they come.
            gc.collect()
            gc.disable()
            start = time.perf_counter()
            for model in models:
                run(x, y, model)
            times[name].append((time.perf_counter() - start) / repeat)
            gc.enable()
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--json", help="write every round's times here")
    args = parser.parse_args()
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
    out["load_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
