"""torch.func.vmap of biasfit.fused_loss against plain PyTorch's vmap of the
same network (biasfit/reference.py's module through functional_call), over
a batch of biases (1e3 on 1e5 points: issue 26's case), of weights, and of
data sets, float32.

    pytest benchmarks/bench_vmap.py --benchmark-only

or round-robin (one call of each in turn, so a load that comes and goes on
a shared machine falls on both alike), printing each workload's median
time and the median of the per-round ratios:

    python benchmarks/bench_vmap.py --rounds 15 --json out.json
"""
import argparse
import os
import statistics
import time

import pytest
import torch
from torch.func import functional_call, vmap

import biasfit
from biasfit.model import WEIGHT_NAMES
from biasfit.reference import TutorialNN
from report import cpu_model, write_run

_MODEL = TutorialNN()


def plain_loss(x, y, w, b):
    params = dict(zip(WEIGHT_NAMES, w.unbind())) | {"final_bias": b}
    return ((functional_call(_MODEL, params, (x,)) - y) ** 2).sum()


def workloads():
    """name -> (in_dims, args): each a batch of one argument."""
    g = torch.Generator().manual_seed(0)
    w = torch.tensor(biasfit.TUTORIAL_WEIGHTS)
    b = torch.tensor(-2.0)

    def data(k, n):
        return torch.rand(k, n, generator=g) * 2 - 0.5, torch.rand(k, n, generator=g) * 3

    (x,), (y,) = data(1, 100_000)
    xs, ys = data(100, 10_000)
    return {
        "biases_1e3_points_1e5": ((None, None, None, 0),
                                  (x, y, w, torch.linspace(-20, 1, 1000))),
        "weights_1e2_points_1e5": ((None, None, 0, None),
                                   (x, y, w + 0.1 * torch.randn(100, 6, generator=g), b)),
        "datasets_1e2_points_1e4": ((0, 0, None, None), (xs, ys, w, b)),
    }


IMPLS = {"biasfit": biasfit.fused_loss, "plain": plain_loss}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("workload", ["biases_1e3_points_1e5", "weights_1e2_points_1e5",
                                      "datasets_1e2_points_1e4"])
def test_vmap_fused_loss(benchmark, workload, impl):
    in_dims, args = workloads()[workload]
    f = vmap(IMPLS[impl], in_dims)
    benchmark.extra_info.update(workload=workload, impl=impl, threads=torch.get_num_threads())
    benchmark.group = workload
    benchmark.pedantic(f, args=args, rounds=5, warmup_rounds=1)


def interleaved(rounds):
    """Per workload: every round's time of each impl, and their ratio."""
    out = {}
    for name, (in_dims, args) in workloads().items():
        fs = {impl: vmap(f, in_dims) for impl, f in IMPLS.items()}
        got, expected = fs["biasfit"](*args), fs["plain"](*args)
        assert torch.allclose(got, expected, rtol=1e-4), name
        times = {impl: [] for impl in fs}
        for _ in range(rounds):
            for impl, f in fs.items():
                start = time.perf_counter()
                f(*args)
                times[impl].append(time.perf_counter() - start)
        ratios = [p / b for p, b in zip(times["plain"], times["biasfit"])]
        out[name] = {"seconds": times, "median_s": {i: statistics.median(t)
                                                    for i, t in times.items()},
                     "median_ratio": statistics.median(ratios)}
        print(f"{name:26s} biasfit {out[name]['median_s']['biasfit'] * 1e3:8.2f} ms  "
              f"plain {out[name]['median_s']['plain'] * 1e3:8.2f} ms  "
              f"plain/biasfit {out[name]['median_ratio']:6.1f}x", flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="write every round's times here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"cpu": cpu_model(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "load_start": round(os.getloadavg()[0], 2)}
    out["workloads"] = interleaved(args.rounds)
    write_run(out, args.json)


if __name__ == "__main__":
    main()
