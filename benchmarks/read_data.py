"""How fast biasfit.datafile reads data, and how much memory it adds.

    python benchmarks/read_data.py                   # 1e6 and 5e6 rows
    python benchmarks/read_data.py --rows 1e6 --check

Each read runs in a fresh process: its peak memory added is the process's
high-water mark (ru_maxrss) after the read minus its resident size just
before, so it counts every temporary of the read. Targets (issue 14): at
most 2x the returned tensors + 100 MB of added peak, and at least 50 MB/s
of CSV. Not part of the test suite: timings belong to a quiet machine.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from report import cpu_model  # beside this file: benchmarks/report.py

TARGET_MB_S = 50.0
SLACK_MB = 100.0

CHILD = r"""
import json, resource, sys, time
import torch
from biasfit.datafile import load_xy
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20
load_xy(sys.argv[2])  # warm: imports, first-call costs (a tiny file)
def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
before = rss_mb()
start, cpu = time.perf_counter(), cpu_s()
x, y = load_xy(sys.argv[1])
seconds, cpu = time.perf_counter() - start, cpu_s() - cpu
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out = (x.numel() * x.element_size() + y.numel() * y.element_size()) / 2**20
print(json.dumps({"seconds": seconds, "cpu_s": cpu, "added_mb": peak - before, "returned_mb": out,
                  "rows": x.numel()}))
"""


def make_files(folder, rows):
    rng = np.random.default_rng(0)
    data = np.stack([rng.uniform(-0.5, 1.5, rows), rng.uniform(0, 2, rows)], axis=1)
    paths = {"csv": os.path.join(folder, f"d{rows}.csv"),
             "npy": os.path.join(folder, f"d{rows}.npy")}
    with open(paths["csv"], "w") as f:
        f.write("x,y\n")
        np.savetxt(f, data, delimiter=",", fmt="%.9g")
    np.save(paths["npy"], data)
    return paths


def measure(path, tiny):
    out = subprocess.run([sys.executable, "-c", CHILD, path, tiny], capture_output=True,
                         text=True, check=True)
    result = json.loads(out.stdout)
    result["file_mb"] = os.path.getsize(path) / 2**20
    result["mb_s"] = result["file_mb"] / result["seconds"]
    result["cpu_mb_s"] = result["file_mb"] / max(result["cpu_s"], 1e-9)
    result["limit_mb"] = 2 * result["returned_mb"] + SLACK_MB
    return result



def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="1e6,5e6", help="comma-separated row counts")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    print(f"{cpu_model()}, {os.cpu_count()} CPUs, numpy {np.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    # MB/s is over wall time (the target's); CPU MB/s over the read's CPU
    # time, which other jobs on a busy machine do not inflate.
    print(f"{'file':>14} {'rows':>9} {'MB':>7} {'s':>6} {'MB/s':>7} {'CPU MB/s':>9} "
          f"{'added MB':>9} {'limit MB':>9}  met")
    missed = 0
    with tempfile.TemporaryDirectory() as folder:
        tiny = os.path.join(folder, "tiny.csv")
        with open(tiny, "w") as f:
            f.write("x,y\n0,0\n")
        for rows in (int(float(r)) for r in args.rows.split(",")):
            for kind, path in make_files(folder, rows).items():
                r = measure(path, tiny)
                ok = r["added_mb"] <= r["limit_mb"] and (kind != "csv" or r["mb_s"] >= TARGET_MB_S)
                missed += not ok
                print(f"{os.path.basename(path):>14} {r['rows']:>9} {r['file_mb']:>7.1f} "
                      f"{r['seconds']:>6.2f} {r['mb_s']:>7.1f} {r['cpu_mb_s']:>9.1f} "
                      f"{r['added_mb']:>9.1f} "
                      f"{r['limit_mb']:>9.1f}  {'yes' if ok else 'NO'}")
                os.remove(path)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
