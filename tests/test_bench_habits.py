"""The benchmark suites as pytest-benchmark's users meet them (issue 27):
report.py runs the installed biasfit and writes a new folder by default;
--benchmark-compare between two runs on one machine warns about nothing;
groups are named "N=... dtype ..." and listed by N; tables show times per
epoch in a terminal's width; --benchmark-histogram draws on a log scale; no
DeprecationWarning from our code."""
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def load(name):
    sys.path.insert(0, str(BENCH))  # conftest imports report, as pytest would
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


report = load("report")
conftest = load("conftest")


def test_report_writes_a_new_folder_unless_told(monkeypatch, tmp_path):
    made = []

    def fake_pytest(json_path, suite, large, pytest_args, extra=()):
        made.append(json_path)
        json_path.write_text(json.dumps({"machine_info": {}, "benchmarks": [{
            "fullname": "x", "stats": {"min": 1.0, "median": 1.0, "mean": 1.0},
            "extra_info": {"kernel": "fused", "device": "cpu", "dtype": "float32",
                           "n": 3, "epochs": 35, "bytes_per_epoch": 24}}]}))
        return 0

    monkeypatch.setattr(report, "_run_pytest", fake_pytest)
    monkeypatch.setattr(report, "suite_dir", lambda: tmp_path)
    assert report.main(["--suite", "kernels", "--no-plot"]) == 0
    assert report.main(["--suite", "kernels", "--no-plot"]) == 0
    first, second = (p.parent for p in made)
    assert first != second and first.parent == second.parent == tmp_path / "runs"
    assert (first / "results.md").exists() and (second / "results.md").exists()
    assert report.main(["--suite", "kernels", "--no-plot", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "results.md").exists()


def test_the_suite_runs_from_benchmarks_not_the_checkout_root(monkeypatch, tmp_path):
    # From the root, `python -m pytest` would import the source folder biasfit/.
    seen = {}

    def call(cmd, cwd):
        seen.update(cmd=cmd, cwd=cwd)
        (tmp_path / "b.json").write_text("{}")
        return 0

    monkeypatch.setattr(report.subprocess, "call", call)
    report._run_pytest(Path(os.path.relpath(tmp_path / "b.json")), "kernels", False, [])
    assert Path(seen["cwd"]) == BENCH
    json_arg = next(a for a in seen["cmd"] if a.startswith("--benchmark-json="))
    assert Path(json_arg.split("=", 1)[1]).is_absolute()


def test_machine_info_keeps_only_what_stays_put():
    info = {"cpu": {"brand_raw": "x", "hz_actual": [1, 0], "hz_actual_friendly": "1 GHz"}}
    conftest.pytest_benchmark_update_machine_info(None, info)
    assert "hz_actual" not in info["cpu"] and "hz_actual_friendly" not in info["cpu"]
    assert not {"load_start", "load_end"} & set(info["biasfit"])


class Outcome:
    def __init__(self, result):
        self.result = result

    def get_result(self):
        return self.result

    def force_result(self, result):
        self.result = result


def test_groups_sort_by_size_and_times_are_per_epoch():
    names = ["N=1e3 float32", "N=3 float32 dense E10", "N=1e5 float32", "N=3 float32",
             "other"]
    assert sorted(names, key=report.group_key) == [
        "N=3 float32", "N=3 float32 dense E10", "N=1e3 float32", "N=1e5 float32", "other"]
    assert report.group_name(10**6, "float64", "dense", "E10") == "N=1e6 float64 dense E10"
    bench = {"group": "N=3 float32", "min": 2.0, "median": 4.0, "ops": 0.5, "rounds": 7,
             "extra_info": {"epochs": 100}}
    hook = conftest.pytest_benchmark_group_stats(None, [bench], "group")
    next(hook)
    outcome = Outcome([("N=1e3 float32", []), ("N=3 float32", [bench])])
    with pytest.raises(StopIteration):
        hook.send(outcome)
    assert [g for g, _ in outcome.result] == ["N=3 float32", "N=1e3 float32"]
    assert (bench["min"], bench["median"], bench["ops"], bench["rounds"]) == (0.02, 0.04, 50.0, 7)


def test_the_histogram_is_on_a_log_scale():
    pytest.importorskip("pygal")
    from pytest_benchmark import histogram
    conftest.log_scale_histograms()
    rows = [{"name": k, "fullname": k, "rounds": 5, "path": None, "min": lo, "ld15iqr": lo,
             "q1": lo, "median": lo * 1.1, "q3": lo * 1.2, "hd15iqr": lo * 1.3,
             "max": lo * 1.4} for k, lo in (("fused", 2e-7), ("eager", 5e-4))]
    plot = histogram.make_plot(benchmarks=rows, title="t", adjustment=1e9)
    assert plot.logarithmic and plot.range[0] > 0
    assert "<svg" in plot.render(is_unicode=True)


def run_suite(store, *more):
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(BENCH / "bench_kernels.py"), "--benchmark-only",
         "--bench-sizes", "3", "-k", "fused-cpu", "-p", "no:cacheprovider",
         "-W", "error::DeprecationWarning", "--benchmark-autosave",
         f"--benchmark-storage={store}", *more],
        cwd=BENCH, capture_output=True, text=True, timeout=600)


def test_two_runs_compare_quietly_in_a_terminals_width(tmp_path):
    first = run_suite(tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    second = run_suite(tmp_path, "--benchmark-compare")
    out = second.stdout + second.stderr
    assert second.returncode == 0, out
    assert "machine_info is different" not in out and "DeprecationWarning" not in out
    table = [line for line in out.splitlines() if line.startswith("fit[")]
    assert table and max(len(line) for line in table) <= 130, table
    assert "benchmark 'N=3 float32'" in out and "per epoch" in out
    saved = json.loads(sorted(tmp_path.rglob("*.json"))[-1].read_text())
    assert all("load" in b["extra_info"] for b in saved["benchmarks"])
    # The JSON keeps a round's time: the table's per-epoch times are 1/35 of it.
    fused = next(b for b in saved["benchmarks"] if b["name"].endswith("[fused-cpu-float32-N3]"))
    assert fused["extra_info"]["epochs"] == 35
