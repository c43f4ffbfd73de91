"""The all-seven benchmark's table (bench_all_params.py) from its JSON files.

    python benchmarks/all7_report.py results/all7/*.json > results/all7/results.md

One row per (dtype, threads, N, kernel): time per epoch (median of rounds and
min), ns per point per epoch, and the fused trainers' ratios to eager PyTorch
with the same optimizer, to torch.compile (Adam) and to a read pass (a plain
sum of inputs and labels), all from the same file, so from the same session.
Several files of the same threads (repeated sessions) give one row each.
"""
import json
import sys

KERNELS = ("eager-sgd", "eager-adam", "compiled-adam", "autograd-adam", "fused-sgd",
           "fused-adam", "read")


def rows_of(path):
    data = json.load(open(path))
    machine = data["machine_info"].get("biasfit", {})
    out = {}
    for b in data["benchmarks"]:
        info = b["extra_info"]
        per = lambda s: b["stats"][s] / info["epochs"]
        out[(info["dtype"], info["n"], info["kernel"])] = (per("median"), per("min"))
    return machine, out


def fmt(seconds):
    for unit, scale in (("s", 1), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def table(path):
    machine, rows = rows_of(path)
    lines = [f"### {path.rsplit('/', 1)[-1]}: {machine.get('cpu')}, "
             f"{machine.get('cores')} cores ({', '.join(machine.get('vector', []))}), "
             f"torch {machine.get('torch')}, {machine.get('threads')} thread(s), "
             f"load average {machine.get('load_start')} at start, "
             f"{machine.get('load_end')} at end",
             "",
             "| dtype | N | kernel | time/epoch (median) | min | ns/point | "
             "vs eager (same opt.) | vs compile | of read pass |",
             "|---|---|---|---|---|---|---|---|---|"]
    for dtype, n, kernel in sorted(rows, key=lambda k: (k[0], k[1], KERNELS.index(k[2]))):
        med, best = rows[(dtype, n, kernel)]
        cells = ["", "", ""]
        if kernel.startswith("fused"):
            eager = rows.get((dtype, n, "eager-" + kernel.split("-")[1]))
            comp = rows.get((dtype, n, "compiled-adam"))
            read = rows.get((dtype, n, "read"))
            cells = [f"{eager[0] / med:.1f}×" if eager else "",
                     f"{comp[0] / med:.2f}×" if comp else "",
                     f"{med / read[0]:.2f}×" if read else ""]
        lines.append(f"| {dtype} | {n:.0e} | {kernel} | {fmt(med)} | {fmt(best)} | "
                     f"{med / n * 1e9:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(table(p) for p in sys.argv[1:]))
