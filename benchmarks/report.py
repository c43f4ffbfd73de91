"""The benchmark report: runs benchmarks/ (or reads its saved JSON) and writes
a Markdown table and a log-log plot of time per epoch against N.

    python -m biasfit.bench                      # run the default sizes, report
    python -m biasfit.bench --large              # also N = 1e7 and 1e8
    python -m biasfit.bench --from-json FILE     # report a saved --benchmark-json

A benchmark joins the report through its extra_info: kernel, device, dtype,
n, epochs (epochs timed in one round) and bytes_per_epoch (input + label
bytes), optionally compile_s. The kernel "read" (a plain sum over inputs and
labels) is each size's bandwidth baseline; "eager" and "compiled" are the
baselines for speed-ups.
"""
import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

KERNEL_NAMES = {
    "tutorial": "tutorial loop (per sample)", "eager": "eager PyTorch",
    "compiled": "torch.compile", "autograd": "biasfit fit (autograd)",
    "fused-fit": "biasfit fit(engine=\"fused\")", "fused": "biasfit fit_fused",
    "read": "plain read pass",
}
REQUIRED = ("kernel", "device", "dtype", "n", "epochs", "bytes_per_epoch")
# min by default: on a shared machine interference only ever adds time, so the
# fastest round is the closest to a kernel's own cost.
STATS = ("min", "median", "mean")

# Issue 3's targets, per device, in float32: (description, kernel, baseline,
# sizes, goal). A positive goal is a speed-up, baseline time / kernel time >=
# goal; a negative one a bound on the slowdown, kernel time / baseline time
# <= -goal.
TARGETS = (
    ("fused >= 1000x faster than the tutorial loop, to convergence",
     "fused", "tutorial", (3,), 1000.0),
    ("fused >= 5x faster per epoch than eager PyTorch, 100 epochs",
     "fused", "eager", (10**6, 10**7), 5.0),
    ("fused time per epoch <= 1.25x a plain read pass, 100 epochs",
     "fused", "read", (10**6, 10**7), -1.25),
)


class PlotUnavailable(RuntimeError):
    pass


def size_label(n):
    """3 -> "3", 1000000 -> "1e6"; other sizes as plain integers."""
    exp = round(math.log10(n)) if n > 0 else 0
    return f"1e{exp}" if n >= 1000 and 10**exp == n else str(n)


def load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_summary(load_start=None):
    """What the numbers came from: CPU, cores, vector units, torch, GPU, load."""
    import torch
    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        pass
    vector = [f for f in ("avx512f", "avx2", "neon") if f" {f}" in flags]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "vector": vector,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "gpu": gpu, "python": platform.python_version(),
            "load_start": load_start, "load_end": load_average()}


@dataclass
class Row:
    kernel: str
    device: str
    dtype: str
    n: int
    epochs: int
    seconds: float  # one round, by the chosen statistic
    bytes_per_epoch: int
    compile_s: float = None

    @property
    def per_epoch(self):
        return self.seconds / self.epochs

    @property
    def bandwidth(self):
        """Effective bandwidth, bytes/s: the input bytes an epoch must read."""
        return self.bytes_per_epoch / self.per_epoch

    @property
    def key(self):
        return (self.device, self.dtype, self.n)


def parse_results(data, stat="min"):
    """Rows from pytest-benchmark's JSON (a dict), and the names it skipped
    for lacking the extra_info above."""
    if stat not in STATS:
        raise ValueError(f"stat must be one of {STATS}, got {stat!r}")
    rows, skipped = [], []
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if any(k not in info for k in REQUIRED) or not info["epochs"]:
            skipped.append(bench.get("fullname", bench.get("name", "?")))
            continue
        rows.append(Row(info["kernel"], info["device"], info["dtype"], int(info["n"]),
                        int(info["epochs"]), float(bench["stats"][stat]),
                        int(info["bytes_per_epoch"]), info.get("compile_s")))
    return rows, skipped


def lookup(rows):
    return {(r.kernel,) + r.key: r for r in rows}


def ratio(rows_by, row, baseline):
    """baseline's time per epoch / row's, for the same device, dtype and N."""
    base = rows_by.get((baseline,) + row.key)
    return None if base is None else base.per_epoch / row.per_epoch


def evaluate_targets(rows):
    """[(description, device, n, measured ratio or None, goal, met or None)];
    goal and measured are both speed-ups, or both slowdowns (see TARGETS)."""
    by = lookup(rows)
    devices = sorted({r.device for r in rows if r.dtype == "float32"})
    out = []
    for desc, kernel, baseline, sizes, goal in TARGETS:
        for device in devices:
            for n in sizes:
                row = by.get((kernel, device, "float32", n))
                speedup = None if row is None else ratio(by, row, baseline)
                if speedup is None:
                    out.append((desc, device, n, None, abs(goal), None))
                elif goal > 0:
                    out.append((desc, device, n, speedup, goal, speedup >= goal))
                else:
                    out.append((desc, device, n, 1 / speedup, -goal, 1 / speedup <= -goal))
    return out


def fmt_time(seconds):
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_bandwidth(bytes_per_s):
    gb = bytes_per_s / 1e9
    return f"{gb:.3g}" if gb >= 0.01 else "<0.01"


def fmt_ratio(value):
    return "–" if value is None else f"{value:.3g}×"


def _kernel_order(rows):
    known = [k for k in KERNEL_NAMES if any(r.kernel == k for r in rows)]
    return known + sorted({r.kernel for r in rows} - set(known))


def _sections(rows):
    return sorted({(r.device, r.dtype) for r in rows})


def _time_table(rows, device, dtype, by):
    sizes = sorted({r.n for r in rows if (r.device, r.dtype) == (device, dtype)})
    lines = ["| kernel | " + " | ".join(f"N={size_label(n)}" for n in sizes) + " |",
             "|---" * (len(sizes) + 1) + "|"]
    for kernel in _kernel_order(rows):
        cells = [by.get((kernel, device, dtype, n)) for n in sizes]
        if any(cells):
            lines.append(f"| {KERNEL_NAMES.get(kernel, kernel)} | " + " | ".join(
                "–" if c is None else fmt_time(c.per_epoch) for c in cells) + " |")
    return lines


def _detail_table(rows, device, dtype, by):
    lines = ["| N | kernel | epochs | time/epoch | vs eager | vs compile | GB/s "
             "| of read pass | compile |", "|---" * 9 + "|"]
    mine = [r for r in rows if (r.device, r.dtype) == (device, dtype)]
    order = {k: i for i, k in enumerate(_kernel_order(rows))}
    for r in sorted(mine, key=lambda r: (r.n, order[r.kernel])):
        read = ratio(by, r, "read")
        lines.append(" | ".join([
            f"| {size_label(r.n)}", KERNEL_NAMES.get(r.kernel, r.kernel), str(r.epochs),
            fmt_time(r.per_epoch), fmt_ratio(ratio(by, r, "eager")),
            fmt_ratio(ratio(by, r, "compiled")), fmt_bandwidth(r.bandwidth),
            "–" if read is None else f"{read:.0%}",
            "–" if r.compile_s is None else f"{r.compile_s:.1f} s"]) + " |")
    return lines


def _target_table(targets):
    lines = ["| target | device | N | measured | goal | met |", "|---" * 6 + "|"]
    for desc, device, n, measured, goal, met in targets:
        verdict = "not measured" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {desc} | {device} | {size_label(n)} | {fmt_ratio(measured)} "
                     f"| {goal:g}× | {verdict} |")
    return lines


def describe_machine(m):
    if not m:
        return "unknown machine"
    gpu = m.get("gpu") or "no GPU"
    vector = ", ".join(m.get("vector") or []) or "no AVX2"
    return (f"{m.get('cpu')}, {m.get('cores')} cores ({vector}), torch {m.get('torch')} "
            f"with {m.get('threads')} thread{'' if m.get('threads') == 1 else 's'}, {gpu}; load average "
            f"{m.get('load_start')} at start, {m.get('load_end')} at end")


def render_markdown(rows, machine, stat, command, plot_path=None, when=None, *,
                    level=2, detail=True):
    """The report in Markdown, its headings at `level` (2: "##")."""
    by = lookup(rows)
    h = "#" * level
    out = [f"Machine: {describe_machine(machine)}.", "",
           f"Made by `{command}`" + (f" on {when}" if when else "") +
           f"; a round's time is the {stat} of its rounds, divided by the epochs it ran. "
           "Speed-ups are eager's (or torch.compile's) time per epoch over the kernel's; "
           "GB/s is input and label bytes per epoch over time per epoch; \"of read pass\" "
           "is that bandwidth over a plain sum's over the same bytes, in the same run.", ""]
    if plot_path:
        out += [f"![time per epoch against N]({plot_path})", ""]
    targets = evaluate_targets(rows)
    if targets:
        out += [f"{h} Targets (float32)", ""] + _target_table(targets) + [""]
    for device, dtype in _sections(rows):
        out += [f"{h} Time per epoch ({device}, {dtype})", ""]
        out += _time_table(rows, device, dtype, by) + [""]
        if detail:
            out += [f"{h}# Detail ({device}, {dtype})", ""]
            out += _detail_table(rows, device, dtype, by) + [""]
    return "\n".join(out)


README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


def replace_readme_block(text, block):
    """`text` with what lies between the README markers replaced by `block`."""
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no {README_START} ... {README_END} block to update")
    return text[:start + len(README_START)] + "\n" + block.strip() + "\n" + text[end:]


def plot(rows, path):
    """time per epoch against N, log-log, a line per kernel and section, with
    the read pass (measured) and the peak read bandwidth's line drawn in."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable(
            "the plot needs matplotlib, which is not installed: "
            "pip install 'biasfit[plot]' (or pass --no-plot)") from None
    fig, ax = plt.subplots(figsize=(8, 5.5))
    sections = _sections(rows)
    for device, dtype in sections:
        suffix = "" if len(sections) == 1 else f" ({device}, {dtype})"
        for kernel in _kernel_order(rows):
            pts = sorted((r.n, r.per_epoch) for r in rows
                         if (r.kernel, r.device, r.dtype) == (kernel, device, dtype))
            if not pts:
                continue
            style = dict(color="0.4", linestyle="--", linewidth=2) if kernel == "read" else {}
            ax.plot(*zip(*pts), marker="o", label=KERNEL_NAMES.get(kernel, kernel) + suffix,
                    **style)
    reads = [r for r in rows if r.kernel == "read"]
    if reads:
        peak = max(reads, key=lambda r: r.bandwidth)
        ns = sorted({r.n for r in rows})
        per_point = peak.bytes_per_epoch / peak.n
        ax.plot(ns, [n * per_point / peak.bandwidth for n in ns], color="0.6", linestyle=":",
                label=f"bandwidth limit ({peak.bandwidth / 1e9:.3g} GB/s, peak read)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N (points)")
    ax.set_ylabel("time per epoch (s)")
    ax.set_title("biasfit: time per epoch against N")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def suite_dir():
    here = Path(__file__).resolve().parent.parent / "benchmarks"
    for candidate in (here, Path.cwd() / "benchmarks"):
        if (candidate / "bench_kernels.py").exists():
            return candidate
    raise SystemExit("biasfit.bench: the benchmark suite (benchmarks/ in the source "
                     "checkout) was not found; run from the checkout, or report saved "
                     "results with --from-json FILE")


def run_suite(json_path, large, pytest_args):
    cmd = [sys.executable, "-m", "pytest", str(suite_dir()), "--benchmark-only", "-q",
           f"--benchmark-json={json_path}", *(["--bench-large"] if large else []),
           *pytest_args]
    print("running:", " ".join(cmd), flush=True)
    code = subprocess.call(cmd)
    if code != 0:
        raise SystemExit(f"biasfit.bench: the benchmarks failed (pytest exit {code})")


def write_readme_summary(readme, out, rows, machine, stat, command, plot_name, when):
    rel = Path(os.path.relpath(out.resolve(), readme.resolve().parent)).as_posix()
    block = render_markdown(rows, machine, stat, command,
                            plot_name and f"{rel}/{plot_name}", when, level=3, detail=False)
    block += f"\nEvery figure, with speed-ups and bandwidths: [{rel}/results.md]({rel}/results.md).\n"
    try:
        readme.write_text(replace_readme_block(readme.read_text(), block))
    except (OSError, ValueError) as e:
        raise SystemExit(f"biasfit.bench: cannot update {readme}: {e}")
    print(f"updated {readme}")


def build_parser():
    p = argparse.ArgumentParser(prog="python -m biasfit.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from-json", metavar="FILE", help="report this saved JSON; run nothing")
    p.add_argument("--large", action="store_true", help="also run N = 1e7 and 1e8")
    p.add_argument("--out", default="benchmarks/results", help="output folder")
    p.add_argument("--stat", choices=STATS, default="min",
                   help="which round statistic is the time (default min)")
    p.add_argument("--no-plot", action="store_true", help="write the table only")
    p.add_argument("--readme", metavar="FILE",
                   help="also refresh the summary between FILE's bench markers")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when a measured target is not met")
    p.add_argument("pytest_args", nargs="*", help="passed on to pytest (after --)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m biasfit.bench", *(sys.argv[1:] if argv is None else argv)])
    if args.from_json:
        json_path = Path(args.from_json)
    else:
        json_path = out / "benchmark.json"
        run_suite(json_path, args.large, args.pytest_args)
    try:
        data = json.loads(json_path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"biasfit.bench: cannot read benchmark JSON {json_path}: {e}")
    rows, skipped = parse_results(data, args.stat)
    if not rows:
        raise SystemExit(f"biasfit.bench: no benchmark in {json_path} has the extra_info "
                         f"the report needs ({', '.join(REQUIRED)})")
    for name in skipped:
        print(f"biasfit.bench: skipped {name} (no report extra_info)", file=sys.stderr)
    machine = data.get("machine_info", {}).get("biasfit")
    when = data.get("datetime", datetime.datetime.now(datetime.timezone.utc).isoformat())
    plot_name = None if args.no_plot else "time_per_epoch.png"
    stamp = when[:16]
    (out / "results.md").write_text("# biasfit benchmarks\n\n" + render_markdown(
        rows, machine, args.stat, command, plot_name, stamp) + "\n")
    print(f"wrote {out / 'results.md'}")
    if plot_name:
        try:
            plot(rows, out / plot_name)
        except PlotUnavailable as e:
            raise SystemExit(f"biasfit.bench: {e}")
        print(f"wrote {out / plot_name}")
    if args.readme:
        write_readme_summary(Path(args.readme), out, rows, machine, args.stat, command,
                             plot_name, stamp)
    missed = [t for t in evaluate_targets(rows) if t[5] is False]
    if args.check and missed:
        for desc, device, n, measured, goal, _ in missed:
            print(f"target missed: {desc} ({device}, N={size_label(n)}): "
                  f"{measured:.3g}x, goal {goal:.3g}x", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
