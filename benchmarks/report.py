"""The benchmark report: runs the suite beside it (or reads its saved JSON) and
writes Markdown tables and a log-log plot of time per epoch against N.

    python benchmarks/report.py                   # biasfit against its peers: the grid,
                                                  # 1 and 2 threads, float32 and float64
    python benchmarks/report.py --large           # also N = 1e7 and 1e8 (N * epochs <= 1e10)
    python benchmarks/report.py --suite kernels   # bench_kernels.py: every biasfit engine
    python benchmarks/report.py --from-json FILE  # report a saved --benchmark-json

A benchmark joins the report through its extra_info: kernel, device, dtype,
n, epochs (epochs timed in one round) and bytes_per_epoch (input + label
bytes), optionally compile_s. The kernel "read" (a plain sum over inputs and
labels) is each size's bandwidth baseline; "eager" and "compiled" are the
baselines for speed-ups. bench_peers.py's benchmarks also carry grid=True,
dataset, grid_epochs, threads and spread, and form the grid: per cell,
biasfit.fit_fused against the fastest peer and the read pass.

It lives in benchmarks/, not in the biasfit package, because it runs the
suite that only a source checkout has.
"""
import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import dataclasses
from dataclasses import dataclass
from pathlib import Path

KERNEL_NAMES = {
    "tutorial": "tutorial loop (per sample)", "eager": "eager PyTorch",
    "compiled": "torch.compile", "autograd": "biasfit fit (autograd)",
    "fused-fit": "biasfit fit(engine=\"fused\")", "fused": "biasfit fit_fused",
    "read": "plain read pass",
    # bench_peers.py's peers (peers.PEER_NAMES; copied so that reading a saved
    # JSON needs neither torch nor the peers' libraries)
    "eager-analytic": "eager PyTorch, analytic gradient",
    "compile-epoch": "torch.compile epoch", "compile-loop": "torch.compile loop",
    "numba-epoch-par-fm": "Numba epoch fn, parallel, fastmath",
    "numba-epoch-par": "Numba epoch fn, parallel",
    "numba-epoch-ser-fm": "Numba epoch fn, serial, fastmath",
    "numba-epoch-ser": "Numba epoch fn, serial",
    "numba-fit-par-fm": "Numba whole fit, parallel, fastmath",
    "numba-fit-par": "Numba whole fit, parallel",
    "numba-fit-ser-fm": "Numba whole fit, serial, fastmath",
    "numba-fit-ser": "Numba whole fit, serial",
    "jax-fit": "JAX jit fit (while_loop)",
}
KERNEL_NAMES["best-peer"] = "fastest peer (each N's own)"
GRID_OWN = ("fused", "read")  # in the grid, every other kernel is a peer
SPREAD_FLAG = 2.0  # a kernel's slowest round over its fastest that flags its cell
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


def group_name(n, dtype, *more):
    """The one naming scheme of every suite's benchmark groups: "N=1e3
    float32 ..." (conftest.py sorts the groups by N, then by the rest)."""
    return " ".join([f"N={size_label(n)}", str(dtype), *map(str, more)])


def group_key(name):
    """A group's place in the tables: by N, then by name; groups named
    otherwise last."""
    head, _, rest = (name or "").partition(" ")
    if head.startswith("N="):
        try:
            return (0, float(head[2:]), rest)
        except ValueError:
            pass
    return (1, 0.0, name or "")


def load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def cpu_model():
    try:  # lscpu's name first: /proc/cpuinfo lacks it on some machines (ARM)
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_run(out, path):
    """A round-robin script's results (out), with the load average at its
    end, as JSON to path (if one is given)."""
    out["load_end"] = round(os.getloadavg()[0], 2)
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=1)


def machine_summary(load_start=None):
    """What the numbers came from: CPU, cores, vector units, torch, GPU, and
    with load_start, the load average (volatile: conftest.py keeps it out of
    pytest-benchmark's machine_info, which --benchmark-compare compares)."""
    import torch
    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        pass
    vector = [f for f in ("avx512f", "avx2", "neon") if f" {f}" in flags]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    versions = {}
    for name in ("numba", "jax"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    summary = {"cpu": cpu_model(), "cores": os.cpu_count(), "vector": vector,
               "torch": torch.__version__, "threads": torch.get_num_threads(),
               "gpu": gpu, "python": platform.python_version(), **versions}
    if load_start is not None:
        summary.update(load_start=load_start, load_end=load_average())
    return summary


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
    median: float = None  # one round's median, whatever `seconds` is
    grid: bool = False    # from bench_peers.py; then also:
    dataset: str = None
    grid_epochs: int = None  # None: fitted to convergence
    threads: int = None
    spread: float = None  # slowest round over fastest
    load: float = None    # the load average as its cell started

    @property
    def median_per_epoch(self):
        return None if self.median is None else self.median / self.epochs

    @property
    def cell(self):
        return (self.dtype, self.threads, self.dataset, self.n, self.grid_epochs)

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
        stats = bench["stats"]
        rows.append(Row(info["kernel"], info["device"], info["dtype"], int(info["n"]),
                        int(info["epochs"]), float(stats[stat]),
                        int(info["bytes_per_epoch"]), info.get("compile_s"),
                        stats.get("median"), bool(info.get("grid")), info.get("dataset"),
                        info.get("grid_epochs"), info.get("threads"), info.get("spread"),
                        info.get("load")))
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


# -- the grid: biasfit against its peers (bench_peers.py) ---------------------------

@dataclass
class Cell:
    key: tuple       # Row.cell: (dtype, threads, dataset, n, grid_epochs)
    fused: Row
    best: Row        # the fastest peer, by the report's statistic
    read: Row
    flagged: list    # (kernel, spread) of the cell's shown kernels (fit_fused, the
                     # best peer, the read pass) whose rounds spread more than SPREAD_FLAG
    rows: list

    @property
    def lead(self):
        """The best peer's time over biasfit's: above 1, biasfit is ahead."""
        if self.fused is None or self.best is None:
            return None
        return self.best.per_epoch / self.fused.per_epoch

    @property
    def of_read(self):
        if self.fused is None or self.read is None:
            return None
        return self.fused.per_epoch / self.read.per_epoch


def _cell_order(key):
    dtype, threads, dataset, n, epochs = key
    return (dtype, threads or 0, dataset != "tutorial", dataset or "", n, epochs or 0)


def grid_cells(rows):
    """The grid's cells, in order, from bench_peers.py's rows."""
    by_cell = {}
    for r in rows:
        if r.grid:
            by_cell.setdefault(r.cell, []).append(r)
    cells = []
    for key in sorted(by_cell, key=_cell_order):
        rs = by_cell[key]
        get = {r.kernel: r for r in rs}
        peers = [r for r in rs if r.kernel not in GRID_OWN]
        best = min(peers, key=lambda r: r.per_epoch) if peers else None
        shown = [r for r in (get.get("fused"), best, get.get("read")) if r is not None]
        flagged = [(r.kernel, r.spread) for r in shown if r.spread and r.spread > SPREAD_FLAG]
        cells.append(Cell(key, get.get("fused"), best, get.get("read"), flagged, rs))
    return cells


# Issue 15's targets, as (description, which cells, measure, goal): measure(cell)
# is a ratio that meets the goal when at most `goal`.
def _vs_numba_serial_fit(cell):
    peer = next((r for r in cell.rows if r.kernel == "numba-fit-ser"), None)
    return None if peer is None or cell.fused is None else cell.fused.seconds / peer.seconds


GRID_TARGETS = (
    ("biasfit fastest in every cell (best peer's time over biasfit's, at least 1)",
     lambda c: True, lambda c: None if c.lead is None else 1 / c.lead, 1.0),
    ("the tutorial fit whole at most the serial Numba whole fit's time",
     lambda c: c.key[3] == 3, _vs_numba_serial_fit, 1.0),
    ("dense epochs (units on) at most 1.1x the read pass, N >= 1e6",
     lambda c: c.key[2] == "dense" and c.key[3] >= 10**6, lambda c: c.of_read, 1.1),
    ("N = 1e8, 10 epochs: at most 1.2x the read pass per epoch",
     lambda c: c.key[3] == 10**8 and c.key[4] == 10, lambda c: c.of_read, 1.2),
)


def evaluate_grid_targets(cells):
    """[(description, cells measured, cells met, worst ratio or None, goal)]."""
    out = []
    for desc, applies, measure, goal in GRID_TARGETS:
        values = [v for v in (measure(c) for c in cells if applies(c)) if v is not None]
        out.append((desc, len(values), sum(v <= goal for v in values),
                    max(values) if values else None, goal))
    return out


def _cell_label(cell):
    dtype, threads, dataset, n, epochs = cell.key
    runs = cell.fused or cell.best or cell.read
    epochs_text = f"to convergence ({runs.epochs})" if epochs is None else str(epochs)
    return f"| {dataset} | {size_label(n)} | {epochs_text}"


def _min_median(row):
    if row is None:
        return "–"
    if row.median_per_epoch is None:
        return fmt_time(row.per_epoch)
    return f"{fmt_time(row.per_epoch)} ({fmt_time(row.median_per_epoch)})"


def _short(kernel):
    return {"fused": "biasfit", "read": "read"}.get(kernel, "peer")


def _grid_table(cells):
    lines = ["| data | N | epochs | biasfit fit_fused | fastest peer | its time "
             "| biasfit ahead by | read pass | fit_fused / read | rounds spread over 2× "
             "| load |", "|---" * 11 + "|"]
    for c in cells:
        lead = c.lead
        verdict = "–" if lead is None else (f"**{lead:.3g}×**" if lead >= 1
                                            else f"{lead:.3g}× (behind)")
        lines.append(" | ".join([
            _cell_label(c), _min_median(c.fused),
            "–" if c.best is None else KERNEL_NAMES.get(c.best.kernel, c.best.kernel),
            _min_median(c.best), verdict, _min_median(c.read),
            "–" if c.of_read is None else f"{c.of_read:.3g}×",
            ", ".join(f"{_short(k)} {v:.2g}×" for k, v in c.flagged) or "–",
            "–" if c.rows[0].load is None else f"{c.rows[0].load:g}"]) + " |")
    return lines


def _grid_detail(cells):
    kernels = [k for k in KERNEL_NAMES if any(r.kernel == k for c in cells for r in c.rows)]
    lines = ["| data | N | epochs | " + " | ".join(KERNEL_NAMES[k] for k in kernels) + " |",
             "|---" * (len(kernels) + 3) + "|"]
    for c in cells:
        get = {r.kernel: r for r in c.rows}
        lines.append(_cell_label(c) + " | " + " | ".join(
            "–" if k not in get else fmt_time(get[k].per_epoch)
            + ("†" if (get[k].spread or 0) > SPREAD_FLAG else "")
            + ("" if not get[k].compile_s or get[k].compile_s < 0.05
               else f" (+{get[k].compile_s:.1f} s JIT)") for k in kernels) + " |")
    return lines


def _grid_target_table(targets):
    lines = ["| target | cells | met | worst | goal |", "|---" * 5 + "|"]
    for desc, measured, met, worst, goal in targets:
        lines.append(f"| {desc} | {measured} | {met} | "
                     f"{'–' if worst is None else f'{worst:.3g}×'} | {goal:g}× |")
    return lines


def render_grid(rows, stat, h="##", detail=True):
    cells = grid_cells(rows)
    if not cells:
        return []
    lead = [c for c in cells if c.lead is not None]
    ahead = sum(c.lead >= 1 for c in lead)
    out = [f"{h} biasfit against its peers", "",
           f"Per cell, time per epoch as the {stat} of its rounds (the median in "
           "brackets), every kernel's rounds interleaved with the others'. \"biasfit "
           "ahead by\" is the fastest peer's time over fit_fused's. A JIT peer's "
           "compile time is kept out of its rounds. A cell is flagged where biasfit's, the "
           f"best peer's or the read pass's slowest round took over {SPREAD_FLAG:g}× its "
           "fastest (in the tables of every kernel, † marks such a kernel): there, "
           "load decided more than the kernels did. biasfit is ahead in "
           f"{ahead} of {len(lead)} cells.", ""]
    out += [f"{h}# Targets (issue 15)", ""] + _grid_target_table(
        evaluate_grid_targets(cells)) + [""]
    sections = sorted({(c.key[0], c.key[1] or 0) for c in cells})
    for dtype, threads in sections:
        mine = [c for c in cells if (c.key[0], c.key[1] or 0) == (dtype, threads)]
        out += [f"{h}# {dtype}, {threads} thread{'' if threads == 1 else 's'}", ""]
        out += _grid_table(mine) + [""]
        if detail:
            out += [f"{h}## Every kernel ({dtype}, {threads} thread"
                    f"{'' if threads == 1 else 's'}; {stat} per epoch)", ""]
            out += _grid_detail(mine) + [""]
    return out


def describe_machine(m):
    if not m:
        return "unknown machine"
    gpu = m.get("gpu") or "no GPU"
    vector = ", ".join(m.get("vector") or []) or "no AVX2"
    peers = ", ".join(f"{k} {m[k]}" for k in ("numba", "jax") if m.get(k))
    text = (f"{m.get('cpu')}, {m.get('cores')} cores ({vector}), torch {m.get('torch')}"
            + (f", {peers}" if peers else ""))
    runs = m.get("runs")
    if runs:  # one suite run per thread count
        loads = "; ".join(f"{r.get('threads')} thread{'' if r.get('threads') == 1 else 's'}: "
                          f"load average {r.get('load_start')} at start, "
                          f"{r.get('load_end')} at end" for r in runs)
        return f"{text}, {gpu}; {loads}"
    return (f"{text} with {m.get('threads')} thread{'' if m.get('threads') == 1 else 's'}, "
            f"{gpu}; load average {m.get('load_start')} at start, {m.get('load_end')} at end")


def render_markdown(rows, machine, stat, command, plot_path=None, when=None, *,
                    level=2, detail=True):
    """The report in Markdown, its headings at `level` (2: "##")."""
    grid = [r for r in rows if r.grid]
    rows = [r for r in rows if not r.grid]
    by = lookup(rows)
    h = "#" * level
    out = [f"Machine: {describe_machine(machine)}.", "",
           f"Made by `{command}`" + (f" on {when}" if when else "") +
           f"; a round's time is the {stat} of its rounds, divided by the epochs it ran."
           + (" Speed-ups are eager's (or torch.compile's) time per epoch over the kernel's; "
              "GB/s is input and label bytes per epoch over time per epoch; \"of read pass\" "
              "is that bandwidth over a plain sum's over the same bytes, in the same run."
              if rows else ""), ""]
    if plot_path:
        out += [f"![time per epoch against N]({plot_path})", ""]
    out += render_grid(grid, stat, h, detail)
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


def plot_rows(rows):
    """What the plot draws: the engines suite's rows, or else from the grid,
    float32 tutorial data at 100 epochs (or the fewest measured; N = 3: to
    convergence) with the most threads: fit_fused, the read pass, and per N
    the fastest peer."""
    plain = [r for r in rows if not r.grid]
    if plain:
        return plain
    threads = max((r.threads or 0 for r in rows), default=0)
    counts = {r.grid_epochs for r in rows if r.grid_epochs is not None}
    epochs = 100 if 100 in counts or not counts else min(counts)
    dtype = "float32" if any(r.dtype == "float32" for r in rows) else "float64"
    mine = [r for r in rows if (r.threads or 0) == threads and r.dataset == "tutorial"
            and r.grid_epochs in (None, epochs) and r.dtype == dtype]
    out = [r for r in mine if r.kernel in GRID_OWN]
    for cell in grid_cells(mine):
        if cell.best is not None:
            out.append(dataclasses.replace(cell.best, kernel="best-peer"))
    return out


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


SUITES = {"grid": "bench_peers.py", "kernels": "bench_kernels.py"}


def suite_dir():
    return Path(__file__).resolve().parent


def _run_pytest(json_path, suite, large, pytest_args, extra=()):
    """Runs one suite into json_path; returns pytest's exit code and the
    load average before and after. Run from benchmarks/ itself: from the
    checkout's root, `python -m pytest` would import the source folder
    biasfit/ (no compiled modules there) instead of the installed biasfit."""
    cmd = [sys.executable, "-m", "pytest", str(suite_dir() / SUITES[suite]),
           "--benchmark-only", "-q", f"--benchmark-json={json_path.resolve()}",
           *(["--bench-large"] if large else []), *extra, *pytest_args]
    print("running:", " ".join(cmd), flush=True)
    code = subprocess.call(cmd, cwd=suite_dir())
    # Exit 1: some tests failed, here kernels that missed the reference; the
    # others' times are saved, and the report says what is missing.
    if code not in (0, 1) or not json_path.exists():
        raise SystemExit(f"report: the benchmarks failed (pytest exit {code})")
    if code == 1:
        print("report: some benchmarks failed (see above): they post no time",
              file=sys.stderr)
    return code


def run_suite(json_path, large, pytest_args, suite="kernels", threads=(1, 2)):
    """Runs the suite into json_path. The grid runs once per thread count,
    each in its own process (XLA reads its thread count once, at start), and
    the runs' JSON is merged: their benchmarks, and each run's threads and
    load in machine_info["biasfit"]["runs"]."""
    if suite != "grid":
        before = load_average()
        code = _run_pytest(json_path, suite, large, pytest_args)
        data = json.loads(json_path.read_text())
        data.setdefault("machine_info", {}).setdefault("biasfit", {}).update(
            load_start=before, load_end=load_average())
        json_path.write_text(json.dumps(data, indent=1))
        return code
    merged, code = None, 0
    for t in threads:
        part = json_path.with_name(f"{json_path.stem}-threads{t}.json")
        before = load_average()
        code = max(code, _run_pytest(part, suite, large, pytest_args, [
            "--bench-threads", str(t), "--bench-dtypes", "float32,float64"]) or 0)
        data = json.loads(part.read_text())
        part.unlink()
        run = {"threads": t, "load_start": before, "load_end": load_average()}
        if merged is None:
            merged = data
            merged.setdefault("machine_info", {}).setdefault("biasfit", {})["runs"] = [run]
        else:
            merged["benchmarks"] += data.get("benchmarks", [])
            merged["machine_info"]["biasfit"]["runs"].append(run)
    json_path.write_text(json.dumps(merged, indent=1))
    return code


def write_readme_summary(readme, out, rows, machine, stat, command, plot_name, when):
    rel = Path(os.path.relpath(out.resolve(), readme.resolve().parent)).as_posix()
    block = render_markdown(rows, machine, stat, command,
                            plot_name and f"{rel}/{plot_name}", when, level=3, detail=False)
    block += f"\nEvery figure, with speed-ups and bandwidths: [{rel}/results.md]({rel}/results.md).\n"
    try:
        readme.write_text(replace_readme_block(readme.read_text(), block))
    except (OSError, ValueError) as e:
        raise SystemExit(f"report: cannot update {readme}: {e}")
    print(f"updated {readme}")


def new_run_folder() -> Path:
    """benchmarks/runs/YYYYmmdd-HHMMSS (UTC), a folder no run wrote before."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    folder = suite_dir() / "runs" / stamp
    k = 1
    while folder.exists():
        k += 1
        folder = suite_dir() / "runs" / f"{stamp}-{k}"
    return folder


def build_parser():
    p = argparse.ArgumentParser(prog="python benchmarks/report.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from-json", metavar="FILE", help="report this saved JSON; run nothing")
    p.add_argument("--suite", choices=sorted(SUITES), default="grid",
                   help="grid: biasfit against its peers (bench_peers.py, default); "
                        "kernels: every biasfit engine (bench_kernels.py)")
    p.add_argument("--threads", default="1,2",
                   help="the grid's thread counts, one run each (default 1,2)")
    p.add_argument("--large", action="store_true",
                   help="also run N = 1e7 and 1e8 (the grid: cells with N * epochs <= 1e10)")
    p.add_argument("--out", default=None,
                   help="output folder (default: a new one, benchmarks/runs/DATE-TIME; "
                        "--out benchmarks/results replaces the committed figures)")
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
    out = Path(args.out) if args.out else new_run_folder()
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/report.py",
                        *(sys.argv[1:] if argv is None else argv)])
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        raise SystemExit(f"report: --threads: {args.threads!r} is not a list of counts")
    failed = 0
    if args.from_json:
        json_path = Path(args.from_json)
    else:
        json_path = out / "benchmark.json"
        failed = run_suite(json_path, args.large, args.pytest_args, args.suite, threads)
    try:
        data = json.loads(json_path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"report: cannot read benchmark JSON {json_path}: {e}")
    rows, skipped = parse_results(data, args.stat)
    if not rows:
        raise SystemExit(f"report: no benchmark in {json_path} has the extra_info "
                         f"the report needs ({', '.join(REQUIRED)})")
    for name in skipped:
        print(f"report: skipped {name} (no report extra_info)", file=sys.stderr)
    machine = data.get("machine_info", {}).get("biasfit")
    when = data.get("datetime", datetime.datetime.now(datetime.timezone.utc).isoformat())
    plot_name = None if args.no_plot else "time_per_epoch.png"
    stamp = when[:16]
    note = ("**Some benchmarks failed (pytest exit 1): their kernels missed the reference "
            "and post no time; the run's log names them.**\n\n" if failed else "")
    (out / "results.md").write_text("# biasfit benchmarks\n\n" + note + render_markdown(
        rows, machine, args.stat, command, plot_name, stamp) + "\n")
    print(f"wrote {out / 'results.md'}")
    if plot_name:
        try:
            plot(plot_rows(rows), out / plot_name)
        except PlotUnavailable as e:
            raise SystemExit(f"report: {e}")
        print(f"wrote {out / plot_name}")
    if args.readme:
        write_readme_summary(Path(args.readme), out, rows, machine, args.stat, command,
                             plot_name, stamp)
    missed = [t for t in evaluate_targets([r for r in rows if not r.grid]) if t[5] is False]
    missed_grid = [t for t in evaluate_grid_targets(grid_cells(rows)) if t[2] < t[1]]
    if args.check and (missed or missed_grid):
        for desc, device, n, measured, goal, _ in missed:
            print(f"target missed: {desc} ({device}, N={size_label(n)}): "
                  f"{measured:.3g}x, goal {goal:.3g}x", file=sys.stderr)
        for desc, measured, met, worst, goal in missed_grid:
            print(f"target missed: {desc}: {measured - met} of {measured} cells, "
                  f"worst {worst:.3g}x, goal {goal:.3g}x", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
