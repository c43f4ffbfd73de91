"""Does every special path of the CPU trainer pay its way? (issue #25)

Builds biasfit._direct (csrc/direct/direct.cpp) once per variant: the code
as it is, and the code without one trick (-DBIASFIT_NO_<TRICK>, see
VARIANTS) or without one trainer plan (the cost model then picks among the
others). Loads every build in this one process (importlib, a spec name per
variant, the same PyInit), and times each variant's fit_sgd on the cells of
bench_peers.py's grid, interleaved round by round (the order rotating), so
load that comes and goes falls on all alike; a round's time for a variant
is the best of BATCHES batches (each at least MIN_CALL_S), which drops the
batches another process preempted, and a cell's time is the median of its
rounds. "control" is the baseline loaded again: its ratio is the noise floor. Also times each plan forced
(BIASFIT_TRAINER_PLAN) against the cost model's choice.

Before any time counts, a variant's fit must be the baseline's bit for bit
(a trick that changes bits is a bug, reported as such); a variant without a
plan must give the bits of one of the baseline's forced plans.

Gain of a path in a cell = median time without it / median time with it
(the baseline): 1.25 means the path makes that cell 25% faster. Verdict:
kept if it gains >= 10% in at least one cell, else "remove".

    python benchmarks/audit_paths.py                  # whole grid, ~10 min
    python benchmarks/audit_paths.py --sizes 3,1e3 --rounds 3 --quick
    python benchmarks/audit_report.py                 # the markdown table
"""
import argparse
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
workloads = None  # benchmarks/workloads.py, imported once the builds are done

CSRC = ROOT / "csrc"
RESULTS = HERE / "results" / "audit"
BUILDS = Path(os.environ.get("BIASFIT_AUDIT_BUILD_DIR", "/tmp/biasfit-audit-builds"))
sys.path.insert(0, str(ROOT / "tools"))
import check_cuda_compile  # noqa: E402  (its load_setup: setup.py as a module)

# setup.py's own C++ flags for the OpenMP build, so that every variant is
# compiled as the extension is; then a shared module of _direct alone.
FLAGS = [*check_cuda_compile.load_setup().cxx_flags(["-O3"], ["-fopenmp"]),
         "-shared", "-fPIC", "-fvisibility=hidden", "-Wno-psabi"]

# name -> (macros, environment at load, what is removed, where). A variant
# whose path runs only on AVX-512 is built and checked but cannot be timed
# on a CPU without it (`measurable`).
VARIANTS = {
    "base": ((), {}, "nothing (the code as it is)", ""),
    # The baseline again, from its own copy: its "gain" is the noise floor.
    "control": ((), {}, "nothing: the baseline again (noise floor)", ""),
    "no_relu_max": (("BIASFIT_NO_RELU_MAX",), {},
                    "relu as x86 max via GCC builtins (Relu<__m256>, <__m512>, <__m512d>)",
                    "cpu/kernels.h"),
    "no_hand_avx2": (("BIASFIT_NO_HAND_AVX2",), {},
                     "the hand-written float32 AVX2 loop (chunk_f32_avx2)",
                     "cpu/kernels.h"),
    "no_small_chunk": (("BIASFIT_NO_SMALL_CHUNK",), {},
                       "small_chunk_sum for chunks under 16 points",
                       "cpu/kernels.h, cpu/reduce.h"),
    "no_simd": ((), {"BIASFIT_CPU_KERNEL": "baseline"},
                "every hand-vectorized path: the baseline (SSE2) build of each loop",
                "cpu/kernels.h, cpu/grads_simd.h"),
    "no_hand_avx512": (("BIASFIT_NO_HAND_AVX512",), {},
                       "the hand-written AVX-512 loops (chunk_hand_avx512 and its steps)",
                       "cpu/kernels.h"),
    "no_fma_add": (("BIASFIT_NO_FMA_ADD",), {},
                   "h + bias as a multiply-add by 1 (add_on_fma_ports)", "cpu/kernels.h"),
    "no_negated": (("BIASFIT_NO_NEGATED",), {},
                   "the masked residual s = -r (Known::kNoNaN, add_active)",
                   "cpu/kernels.h"),
    "no_all_on": (("BIASFIT_NO_ALL_ON",), {},
                  "the all-on chunk loop (Known::kAllOn)", "cpu/kernels.h"),
    "no_prefetch": (("BIASFIT_NO_PREFETCH",), {},
                    "prefetch_ahead 8 KiB ahead", "cpu/kernels.h"),
    "no_stream": (("BIASFIT_NO_STREAM",), {}, "plan kStream", "cpu/trainer.h"),
    "no_once": (("BIASFIT_NO_HIDDEN_ONCE",), {}, "plan kHiddenOnce", "cpu/trainer.h"),
    "no_regroup": (("BIASFIT_NO_REGROUP",), {}, "plan kRegroup",
                   "cpu/active_set.h, cpu/trainer.h"),
    "no_closed": (("BIASFIT_NO_CLOSED",), {}, "plan kClosed",
                  "cpu/closed_form.h, cpu/trainer.h"),
}
from audit_report import AVX512_ONLY  # noqa: E402  (one list, for both)
PLAN_VARIANTS = {"no_stream", "no_once", "no_regroup", "no_closed"}
PLANS = ("stream", "once", "regroup", "closed")
MIN_CALL_S = 1e-3  # shorter fits are repeated within a batch and averaged
BATCHES = 3        # a round's time for a config: the best of its batches


def has_avx512():
    try:
        return " avx512f " in " " + open("/proc/cpuinfo").read().replace("\n", " ") + " "
    except OSError:
        return False


def sources_digest():
    h = hashlib.sha256()
    for path in sorted(CSRC.rglob("*")):
        if path.suffix in (".h", ".cpp", ".cuh") and "cuda" not in path.parts:
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def build(name, macros, digest):
    """The variant's _direct in its own folder (kept while the sources and
    flags stay the same)."""
    import pybind11

    ext = sysconfig.get_config_var("EXT_SUFFIX")
    folder = BUILDS / f"{name}-{digest}"
    out = folder / f"_direct{ext}"
    if out.exists():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    cmd = ["nice", "-n", "10", os.environ.get("CXX", "g++"), *FLAGS,
           *(f"-D{m}" for m in macros), f"-I{CSRC}", f"-I{pybind11.get_include()}",
           f"-I{sysconfig.get_paths()['include']}",
           str(CSRC / "direct" / "direct.cpp"), "-o", str(out)]
    print("building", name, flush=True)
    subprocess.run(cmd, check=True)
    return out


def copy_of(path, name):
    """The same build in another folder: a file loads once per process."""
    if name == "base":
        return path
    folder = path.parent.parent / f"{name}-copy"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, folder / path.name)
    return folder / path.name


def load(name, path, env):
    """Loads a build under its own spec name (the init function stays
    PyInit__direct); `env` is set while its static initializers run (the
    instruction set is chosen then)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        spec = importlib.util.spec_from_file_location(f"audit_{name}._direct", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return module


def fit(module, x, y, w, bias, lr, epochs, tol, threads):
    """One fit through the module's native entry: the only place that knows
    its signature (fit_sgd over contiguous tensors' addresses)."""
    return module.fit_sgd(x.data_ptr(), y.data_ptr(), x.numel(), w.data_ptr(),
                          x.dtype == torch.float64, bias, lr, 0.0, 0.0, False, 0.0,
                          False, epochs, tol, threads)


def bits(result):
    """A fit's result, every float by its bits."""
    def b(v):
        if isinstance(v, float):
            return struct.pack("<d", v).hex()
        if isinstance(v, (list, tuple)):
            return [b(u) for u in v]
        if isinstance(v, bytes):
            return v.hex()
        return v
    return json.dumps(b(list(result)))


def cells(sizes, epochs_list, max_work, dtypes, datasets):
    for dtype in dtypes:
        for n in sizes:
            if n == 3:  # workloads.TUTORIAL_N
                yield dtype, "tutorial", n, None
                continue
            for dataset in datasets:
                for epochs in epochs_list:
                    if n * epochs <= max_work:
                        yield dtype, dataset, n, epochs


def cell_name(dtype, dataset, n, epochs, threads):
    size = "3" if n == 3 else f"1e{len(str(n)) - 1}"
    return (f"{str(dtype).replace('torch.', '')}-{dataset}-N{size}-"
            + ("converge" if epochs is None else f"E{epochs}") + f"-T{threads}")


def measure_cell(modules, configs, args_for, rounds, check_plans):
    """Rounds of every config (variant, forced plan) of one cell, interleaved.
    Returns per config: seconds per call for each round, or why none."""
    base = modules["base"]
    expected = {}
    for plan in (None, *check_plans):
        set_plan(plan)
        expected[plan] = bits(fit(base, *args_for()))
    set_plan(None)
    # The model's pick, as far as bits tell (stream and once give the same).
    out = {("base", "pick"): "/".join(p for p in check_plans if expected[p] == expected[None])}
    if hasattr(base, "trainer_plan_of"):  # the trainer's own word, where built with it
        x, _, w, bias, _, epochs, *_ = args_for()
        out[("base", "pick")] = base.trainer_plan_of(x.numpy(), w.numpy(), bias, epochs)
    repeats = {}
    for config in configs:
        variant, plan = config
        set_plan(plan)
        got = bits(fit(modules[variant], *args_for()))
        start = time.perf_counter()
        fit(modules[variant], *args_for())
        once = time.perf_counter() - start
        set_plan(None)
        if plan is not None:
            ok = got == expected[plan]
        elif variant in PLAN_VARIANTS:
            ok = got in expected.values()
            matches = [p or "auto" for p, e in expected.items() if e == got]
            out[config] = {"matches": matches}
        else:
            ok = got == expected[None]
        if not ok:
            out[config] = {"error": "bits differ from the baseline's"}
            continue
        out.setdefault(config, {})["times"] = []
        repeats[config] = max(1, int(MIN_CALL_S / max(once, 1e-7)))
    live = [c for c in configs if "times" in out.get(c, {})]
    for r in range(rounds):
        order = live[r % len(live):] + live[:r % len(live)]
        for config in order:
            variant, plan = config
            set_plan(plan)
            k = repeats[config]
            args = args_for()
            best = float("inf")
            for _ in range(BATCHES):
                start = time.perf_counter()
                for _ in range(k):
                    fit(modules[variant], *args)
                best = min(best, (time.perf_counter() - start) / k)
            out[config]["times"].append(best)
            set_plan(None)
    return out


def set_plan(plan):
    if plan is None:
        os.environ.pop("BIASFIT_TRAINER_PLAN", None)
    else:
        os.environ["BIASFIT_TRAINER_PLAN"] = plan


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="3,1e3,1e4,1e5,1e6")
    p.add_argument("--epochs", default="10,100,1000")
    p.add_argument("--max-work", type=float, default=1e8)
    p.add_argument("--dtypes", default="float32,float64")
    p.add_argument("--datasets", default="tutorial,dense")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--variants", default="",
                   help="comma-separated (default: every one this CPU can run)")
    p.add_argument("--out", default=str(RESULTS / "audit.json"))
    p.add_argument("--build-only", action="store_true")
    p.add_argument("--cells", default="",
                   help="comma-separated cell names to run alone (a confirming rerun)")
    a = p.parse_args()
    sizes = [int(float(s)) for s in a.sizes.split(",")]
    epochs_list = [int(float(s)) for s in a.epochs.split(",")]
    dtypes = [getattr(torch, d) for d in a.dtypes.split(",")]
    threads_list = [int(t) for t in a.threads.split(",")]
    avx512 = has_avx512()
    # AVX-512-only variants are built and checked only where they can run.
    default = [v for v in VARIANTS if avx512 or v not in AVX512_ONLY]
    chosen = a.variants.split(",") if a.variants else default
    names = ["base"] + [v for v in chosen if v != "base"]

    digest = sources_digest()
    paths = {}
    for name in names:
        macros, env, _, _ = VARIANTS[name]
        paths[name] = build(name, macros, digest) if macros or name == "base" else None
        if not macros:  # the baseline's code: loaded again from its own copy
            paths[name] = copy_of(paths["base"], name)
    if a.build_only:
        return
    global workloads
    import workloads
    modules = {name: load(name, paths[name], VARIANTS[name][1]) for name in names}
    timed = [n for n in names if avx512 or n not in AVX512_ONLY]

    results = []
    grid = list(cells(sizes, epochs_list, a.max_work, dtypes, a.datasets.split(",")))
    for threads in threads_list:
        for dtype, dataset, n, epochs in grid:
            if a.cells and cell_name(dtype, dataset, n, epochs, threads) not in a.cells.split(","):
                continue
            x, y = workloads.make_data(n, dtype, dataset=dataset)
            w = torch.tensor(workloads.biasfit.TUTORIAL_WEIGHTS, dtype=dtype)
            lr, e, tol = workloads.fit_settings(n, epochs)
            bias = workloads.DATASETS[dataset][2] if n != 3 else 0.0
            args_for = lambda: (x, y, w, bias, lr, e, tol, threads)  # noqa: E731
            plans = [q for q in PLANS if (q != "regroup" or n >= 256)
                     and (q != "closed" or dtype == torch.float64)]
            configs = [(v, None) for v in timed] + [("base", q) for q in plans]
            # Not timed (no AVX-512 here): still checked bit for bit.
            untimed = [v for v in names if v not in timed]
            for v in untimed:
                same = bits(fit(modules[v], *args_for())) == bits(fit(modules["base"], *args_for()))
                if not same:
                    print("BITS DIFFER", v, flush=True)
            measured = measure_cell(modules, configs, args_for, a.rounds, plans)
            name = cell_name(dtype, dataset, n, epochs, threads)
            row = {"cell": name, "dtype": str(dtype).replace("torch.", ""),
                   "dataset": dataset, "n": n, "epochs": epochs, "threads": threads,
                   "load_average": os.getloadavg(), "configs": {}}
            row["base_plan"] = measured.pop(("base", "pick"))
            for (variant, plan), m in measured.items():
                key = variant if plan is None else f"plan={plan}"
                row["configs"][key] = m
            for v in untimed:
                row["configs"][v] = {"untimed": "AVX-512 only; this CPU has none"}
            results.append(row)
            base_t = statistics.median(row["configs"]["base"]["times"])
            summary = " ".join(
                f"{k}={statistics.median(m['times']) / base_t:.2f}"
                for k, m in row["configs"].items() if m.get("times") and k != "base")
            errors = [k for k, m in row["configs"].items() if "error" in m]
            print(f"{name}: base {base_t * 1e6:.1f} us; {summary}"
                  + (f" ERRORS {errors}" if errors else ""), flush=True)
            write(a.out, avx512, digest, a.rounds, names, results)
    print("wrote", a.out)


def write(out, avx512, digest, rounds, names, results):
    model = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((l.split(":", 1)[1].strip() for l in model.splitlines()
                  if l.startswith("Model name")), platform.processor())
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({
        "cpu": model, "avx512": avx512, "nproc": os.cpu_count(),
        "compiler": subprocess.run([os.environ.get("CXX", "g++"), "--version"],
                                   capture_output=True, text=True).stdout.splitlines()[0],
        "flags": FLAGS, "sources": digest, "rounds": rounds,
        "variants": {k: {"macros": list(v[0]), "env": v[1], "removes": v[2],
                         "where": v[3]} for k, v in VARIANTS.items() if k in names},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cells": results}, indent=1))


if __name__ == "__main__":
    main()
