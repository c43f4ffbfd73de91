"""fit_fused of two biasfit installs on the peers grid, runs interleaved.

A change that must not slow any cell is measured here: two Python
interpreters (each a venv with one biasfit installed) take turns running
bench_peers.py's grid with only fit_fused and the read pass selected, for 1
and 2 threads, `--repeats` times each, alternating, so that load which comes
and goes falls on both. Per cell, each build's time is the median over the
repeats of its run's fastest round; the read pass of the same runs shows how
loaded the machine was.

    python benchmarks/before_after.py --before /path/venv-a/bin/python \
        --after /path/venv-b/bin/python --out /tmp/before_after
    python benchmarks/before_after.py --from-dir /tmp/before_after   # the table again

Writes the runs' JSON and before_after.md into --out.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOISE = 1.10  # a cell slower by more than this, in the median, is flagged


def run_grid(python, threads, out_json, extra):
    command = [python, "-m", "pytest", str(HERE / "bench_peers.py"), "--benchmark-only",
               "-q", "-p", "no:cacheprovider", "-k", "fused or read",
               "--bench-threads", str(threads), "--bench-dtypes", "float32,float64",
               f"--benchmark-json={out_json}", *extra]
    # From a folder outside the checkout: each interpreter imports its own
    # installed biasfit, never the source folder.
    done = subprocess.run(command, cwd="/", capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"before_after: {' '.join(command)} failed:\n{done.stdout[-3000:]}"
                 f"{done.stderr[-3000:]}")


def cell_times(path):
    """{(dtype, threads, dataset, n, epochs): {kernel: min seconds per epoch}}."""
    out = {}
    for b in json.loads(Path(path).read_text())["benchmarks"]:
        info = b["extra_info"]
        key = (info["dtype"], info["threads"], info["dataset"], info["n"],
               info.get("grid_epochs") or 0)
        out.setdefault(key, {})[info["kernel"]] = b["stats"]["min"] / info["epochs"]
    return out


def table(folder):
    runs = {"before": [], "after": []}
    for path in sorted(Path(folder).glob("*.json")):
        runs[path.name.split("-")[0]].append(cell_times(path))
    keys = sorted(set().union(*(r.keys() for r in runs["after"])),
                  key=lambda k: (k[0], k[1], k[2] != "tutorial", k[2], k[3], k[4]))

    def median(which, key, kernel):
        values = [r[key][kernel] for r in runs[which] if kernel in r.get(key, {})]
        return statistics.median(values) if values else float("nan")

    lines = ["| dtype | threads | data | N | epochs | before | after | after / before "
             "| read pass (before, after) |", "|---|---|---|---|---|---|---|---|---|"]
    slower = []
    for key in keys:
        b, a = median("before", key, "fused"), median("after", key, "fused")
        rb, ra = median("before", key, "read"), median("after", key, "read")
        ratio = a / b
        flag = " **slower**" if ratio > NOISE else ""
        if flag:
            slower.append(key)
        dtype, threads, data, n, epochs = key
        lines.append(f"| {dtype} | {threads} | {data} | {n:g} | {epochs or 'converge'} "
                     f"| {b * 1e9:.3g} ns | {a * 1e9:.3g} ns | {ratio:.3f}{flag} "
                     f"| {rb * 1e9:.3g}, {ra * 1e9:.3g} ns |")
    ratios = [median("after", k, "fused") / median("before", k, "fused") for k in keys]
    head = [f"# fit_fused before and after: {len(runs['before'])} grid runs of each build "
            f"(every thread count), alternating", "",
            f"Time per epoch: each build's median over its runs of the fastest round. "
            f"{len(keys)} cells; after / before: median {statistics.median(ratios):.3f}, "
            f"range {min(ratios):.3f}-{max(ratios):.3f}; {len(slower)} cells slower than "
            f"{NOISE}x.", ""]
    return "\n".join(head + lines) + "\n"


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", help="the first build's Python")
    p.add_argument("--after", help="the second build's Python")
    p.add_argument("--out", default=None, help="folder for the runs and the table")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--from-dir", help="only print the table of a finished run")
    p.add_argument("pytest_args", nargs="*", help="passed on to pytest (after --)")
    args = p.parse_args(argv)
    if args.from_dir:
        print(table(args.from_dir))
        return
    if not (args.before and args.after and args.out):
        p.error("--before, --after and --out are needed (or --from-dir)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for r in range(args.repeats):
        for t in (int(t) for t in args.threads.split(",")):
            # Which build goes first alternates too.
            order = [("before", args.before), ("after", args.after)]
            for which, python in order if r % 2 == 0 else order[::-1]:
                print(f"before_after: repeat {r}, {t} thread(s), {which}", flush=True)
                run_grid(python, t, out / f"{which}-r{r}-t{t}.json", args.pytest_args)
    text = table(out)
    text += f"\nMachine: {cpu_model()}, {os.cpu_count()} cores.\n"
    (out / "before_after.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
