"""Time per whole tutorial fit (3 points, to convergence) through
biasfit.fit_fused, Python call included: the small-data fast path.

    python benchmarks/direct_call.py [--repeat 2000]

Prints one line: the median and min over `--rounds` rounds of the mean time
of `--repeat` fits. Run it under two builds in alternation to compare them
(the same process cannot load two builds of torch.ops.biasfit).
"""
import argparse
import statistics
import time

import torch

import biasfit


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    x, y = biasfit.tutorial_data()
    result = biasfit.fit_fused(x, y)
    assert result.epochs_run == 34 and abs(result.final_bias + 16.0019) < 1e-4
    times = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for _ in range(args.repeat):
            biasfit.fit_fused(x, y)
        times.append((time.perf_counter() - start) / args.repeat)
    print(f"torch {torch.__version__} {biasfit.__file__}: fit_fused, tutorial fit: "
          f"median {statistics.median(times) * 1e6:.2f} us, min {min(times) * 1e6:.2f} us")


if __name__ == "__main__":
    main()
