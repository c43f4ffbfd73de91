"""bench_all_params.py's kernels timed round-robin: one round of each kernel
in turn, repeated, so a load that comes and goes on a shared machine falls on
every kernel alike and the medians' ratios stay meaningful (pytest-benchmark
runs each kernel's rounds back to back).

    python benchmarks/all7_interleaved.py --threads 2 --sizes 1e6,1e7 \
        --rounds 5 --json results/all7/interleaved_threads2.json

Prints and saves per (dtype, N, kernel) every round's time per epoch.
"""
import argparse
import json
import os
import statistics
import time

import torch

import workloads
from bench_all_params import DEFAULT_EPOCHS, EPOCHS, KERNELS, make_runner
from report import machine_summary


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--sizes", default="1e6,1e7")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = round(os.getloadavg()[0], 2)
    out = {"rounds": {}, "load": []}
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for n in (int(float(s)) for s in args.sizes.split(",")):
            x, y = workloads.make_data(n, dtype, "cpu")
            epochs = EPOCHS.get(n, DEFAULT_EPOCHS)
            runners = {k: make_runner(k, x, y, dtype, epochs) for k in KERNELS}
            for setup, run in runners.values():  # warm-up (compiles)
                setup()
                run()
            times = {k: [] for k in KERNELS}
            for _ in range(args.rounds):
                out["load"].append(round(os.getloadavg()[0], 2))
                for k, (setup, run) in runners.items():
                    setup()
                    start = time.perf_counter()
                    run()
                    times[k].append((time.perf_counter() - start) / epochs)
            for k, ts in times.items():
                out["rounds"][f"{dtype_name}/{n}/{k}"] = ts
                print(f"{dtype_name} N={n:.0e} {k:14s} median {statistics.median(ts) * 1e3:9.3f} ms"
                      f"  ({statistics.median(ts) / n * 1e9:.3f} ns/point)", flush=True)
    out["machine"] = machine_summary(load_start=load_start)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
