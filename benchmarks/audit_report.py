"""The markdown table of benchmarks/audit_paths.py's data file.

One row per path (trick or plan): the lines it takes, its gain per grid
cell (median time without it / median time with it), and the verdict: kept
where it gains >= 10% in at least one cell, else remove. A second table
gives each forced plan's time over the cost model's choice.

    python benchmarks/audit_report.py [benchmarks/results/audit/audit.json]
"""
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEEP_GAIN = 1.10
# The variants whose missing path runs only on AVX-512 (audit_paths.py's
# VARIANTS): built and checked everywhere, timed only on a CPU that has it.
AVX512_ONLY = {"no_hand_avx512", "no_fma_add", "no_negated", "no_all_on", "no_prefetch"}
# A cell counts for a verdict only where the control (the baseline loaded
# twice) came out within this of 1: elsewhere load swamped the cell.
QUIET = 0.05

# Lines each path takes in csrc/ (code and the comments that explain it),
# counted by hand on the audited commit.
LINES = {
    "control": "0",
    "no_relu_max": "30 (cpu/kernels.h)",
    "no_hand_avx2": "38 (cpu/kernels.h: chunk_f32_avx2)",
    "no_small_chunk": "30 (cpu/reduce.h: small_chunk_sum; 3 in cpu/kernels.h)",
    "no_aligned_buffer": "~15 (cpu/trainer.h: CacheLineDelete, stride, notes)",
    "no_simd": "~330 (cpu/kernels.h: ISA dispatch and hand loops)",
    "no_hand_avx512": "~150 (cpu/kernels.h: Acc512 .. chunk_hand_avx512)",
    "no_fma_add": "~14 (cpu/kernels.h: add_on_fma_ports' __m512d case)",
    "no_negated": "~25 (cpu/kernels.h: kNoNaN, add_active)",
    "no_all_on": "~30 (cpu/kernels.h: kAllOn, known_at, chunk min h)",
    "no_prefetch": "18 (cpu/kernels.h: prefetch_ahead)",
    "no_stream": "~10 (cpu/trainer.h)",
    "no_once": "~40 (cpu/trainer.h: the hidden buffer)",
    "no_regroup": "233 (cpu/active_set.h) + ~20 (cpu/trainer.h)",
    "no_closed": "177 (cpu/closed_form.h) + ~15 (cpu/trainer.h)",
}


def reaches(v, c, avx512):
    """Whether variant v's missing path runs at all in cell c: a "gain" in a
    cell it cannot reach is noise, and is not counted."""
    pick = c.get("base_plan", "").split("/")
    f32 = c["dtype"] == "float32"
    return {
        "no_relu_max": f32 or avx512,
        "no_hand_avx2": f32 and not avx512,
        "no_small_chunk": c["n"] < 16,
        "no_aligned_buffer": pick != ["stream"],
        "no_stream": "stream" in pick,
        "no_once": "once" in pick,
        "no_regroup": "regroup" in pick,
        "no_closed": "closed" in pick,
    }.get(v, True)


def median(times):
    return statistics.median(times)


def base_time(c):
    """The baseline's median seconds a fit in cell c."""
    b = c["configs"].get("base", {})
    return median(b["times"]) if b.get("times") else b.get("median_s")


def ratio(c, key):
    """Config `key`'s median time over the baseline's in cell c, or None.
    (A data file rebuilt from a run's log holds the ratios themselves.)"""
    m = c["configs"].get(key, {})
    if "ratio" in m:
        return m["ratio"]
    return median(m["times"]) / base_time(c) if m.get("times") else None


def short(cell):
    return cell.replace("float32", "f32").replace("float64", "f64")


def main(path):
    data = json.loads(Path(path).read_text())
    cells = data["cells"]
    variants = [v for v in data["variants"] if v != "base"]
    out = [f"CPU: {data['cpu']} ({data['nproc']} cores, AVX-512: "
           f"{'yes' if data['avx512'] else 'no'}); {data['compiler']}; "
           f"{data['rounds']} interleaved rounds, medians; {data['date']}.",
           (f"Load average during the cells: "
            f"{min(c['load_average'][0] for c in cells):.1f}-"
            f"{max(c['load_average'][0] for c in cells):.1f}." if all(
                "load_average" in c for c in cells) else ""),
           data.get("note", ""), ""]

    quiet = {c["cell"] for c in cells
             if ratio(c, "control") is not None and abs(ratio(c, "control") - 1) <= QUIET}
    out += [f"Quiet cells (control within {QUIET:.0%} of the baseline): "
            f"{len(quiet)} of {len(cells)}; verdicts count only those.", ""]
    out += ["| path removed | lines | gain per cell (without / with; >1: the path helps; "
            "range, then every cell; n/r: the path does not run there) | best quiet cell reached "
            "| quiet reached cells >= 1.10 | verdict |",
            "|---|---|---|---|---|---|"]
    errors = []
    summary = {}
    for v in variants:
        gains = []
        for c in cells:
            m = c["configs"].get(v, {})
            if "error" in m:
                errors.append((v, c["cell"], m["error"]))
            if ratio(c, v) is not None:
                gains.append((c["cell"], ratio(c, v)))
        removes = data["variants"][v]["removes"]
        if not gains:
            why = ("not timed: AVX-512 only, this CPU has none" if v in AVX512_ONLY
                   else "no data")
            out.append(f"| {removes} | {LINES.get(v, '?')} | {why} | | | unmeasured |")
            continue
        reach = {c["cell"] for c in cells if reaches(v, c, data["avx512"])}
        quiet_gains = [g for g in gains if g[0] in quiet and g[0] in reach] or [("-", 0.0)]
        best = max(quiet_gains, key=lambda g: g[1])
        wins = [g for g in quiet_gains if g[1] >= KEEP_GAIN]
        listing = ", ".join(f"{short(c)} {g:.2f}{'' if c in reach else ' (n/r)'}"
                            for c, g in gains)
        verdict = ("noise floor" if v == "control" else "kept" if wins else "remove")
        out.append(f"| {removes} | {LINES.get(v, '?')} | <details><summary>"
                   f"{len(reach)} cells reached, median "
                   f"{median([g for c, g in gains if c in reach] or [0]):.2f}; all cells "
                   f"{min(g for _, g in gains):.2f}-{max(g for _, g in gains):.2f}</summary>{listing}"
                   f"</details> | {best[1]:.2f} ({short(best[0])}) | {len(wins)}/{len(quiet_gains)} "
                   f"| {verdict} |")
        summary[v] = {"best": best, "wins": len(wins), "verdict": verdict}
    out += ["", "Forced plans (BIASFIT_TRAINER_PLAN) over the cost model's choice "
            "(>1: slower than the model's pick; the model's pick by bits):", "",
            "| cell | base us | model's pick | stream | once | regroup | closed |",
            "|---|---|---|---|---|---|---|"]
    for c in cells:
        b = base_time(c)
        if b is None:
            continue
        ratios = []
        for plan in ("stream", "once", "regroup", "closed"):
            r = ratio(c, f"plan={plan}")
            ratios.append(f"{r:.2f}" if r is not None
                          else ("bits!" if "error" in c["configs"].get(f"plan={plan}", {}) else ""))
        pick = c.get("base_plan", "")
        out.append(f"| {short(c['cell'])} | {b * 1e6:.1f} | {pick} | " + " | ".join(ratios) + " |")
    if errors:
        out += ["", "Bits differing from the baseline's (bugs):", ""]
        out += [f"- {v} in {c}: {e}" for v, c, e in errors]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else HERE / "results" / "audit" / "audit.json"
    text = main(path)
    print(text)
    (Path(path).with_suffix(".md")).write_text(text)
