"""The benchmark report's own logic (benchmarks/report.py), on made-up
pytest-benchmark JSON."""
import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest

# The report lives beside the suite it runs, outside the package.
_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "report.py"
_spec = importlib.util.spec_from_file_location("report", _PATH)
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)

MACHINE = {"cpu": "AMD EPYC", "cores": 2, "vector": ["avx2"], "torch": "2.13.0",
           "threads": 2, "gpu": None, "load_start": 0.5, "load_end": 0.7}


def entry(kernel, n, median, epochs=100, device="cpu", dtype="float32", **extra):
    info = dict(kernel=kernel, device=device, dtype=dtype, n=n, epochs=epochs,
                bytes_per_epoch=8 * n, **extra)
    return {"fullname": f"bench_kernels.py::test_fit[{kernel}-{n}]",
            "stats": {"median": median, "min": median / 2, "mean": median * 1.1},
            "extra_info": info}


def saved(*entries):
    return {"machine_info": {"biasfit": MACHINE}, "datetime": "2026-11-25T04:00:00",
            "benchmarks": list(entries)}


SUITE = saved(
    entry("tutorial", 3, 0.035, epochs=35), entry("fused", 3, 0.000035 * 2, epochs=35),
    entry("eager", 10**6, 10.0), entry("compiled", 10**6, 4.0, compile_s=3.2),
    entry("fused", 10**6, 1.0), entry("read", 10**6, 0.5),
)


def rows_of(data, stat="median"):
    rows, skipped = report.parse_results(data, stat)
    assert skipped == []
    return rows


def test_size_labels():
    assert [report.size_label(n) for n in (3, 1000, 10**6, 10**8, 1500, 999)] == [
        "3", "1e3", "1e6", "1e8", "1500", "999"]


def test_parse_divides_by_epochs_and_picks_the_statistic():
    by = report.lookup(rows_of(SUITE))
    fused = by[("fused", "cpu", "float32", 10**6)]
    assert fused.per_epoch == pytest.approx(0.01)
    assert fused.bandwidth == pytest.approx(8e6 / 0.01)
    assert by[("compiled", "cpu", "float32", 10**6)].compile_s == 3.2
    by_min = report.lookup(rows_of(SUITE, "min"))
    assert by_min[("fused", "cpu", "float32", 10**6)].per_epoch == pytest.approx(0.005)


def test_parse_skips_benchmarks_without_report_info():
    data = saved(entry("fused", 10, 1.0), {"fullname": "other::test_x",
                                           "stats": {"median": 1.0}, "extra_info": {}})
    rows, skipped = report.parse_results(data)
    assert [r.kernel for r in rows] == ["fused"]
    assert skipped == ["other::test_x"]
    with pytest.raises(ValueError, match="stat must be one of"):
        report.parse_results(data, "p99")


def test_ratios_compare_the_same_device_dtype_and_size():
    rows = rows_of(saved(entry("eager", 10, 2.0), entry("fused", 10, 1.0),
                         entry("eager", 10, 8.0, dtype="float64"),
                         entry("eager", 20, 100.0)))
    by = report.lookup(rows)
    fused = by[("fused", "cpu", "float32", 10)]
    assert report.ratio(by, fused, "eager") == pytest.approx(2.0)
    assert report.ratio(by, fused, "compiled") is None


def test_targets_report_measured_ratios_and_verdicts():
    targets = {(t[0].split()[2], t[2]): t for t in report.evaluate_targets(rows_of(SUITE))}
    # tutorial 1 ms/epoch over fused 2 µs/epoch: 500x, short of 1000x.
    _, _, _, measured, goal, met = targets[("1000x", 3)]
    assert (measured, goal, met) == (pytest.approx(500), 1000, False)
    _, _, _, measured, goal, met = targets[("5x", 10**6)]
    assert (measured, met) == (pytest.approx(10), True)
    # fused takes twice the read pass's time: a 2x slowdown against 1.25x.
    _, _, _, measured, goal, met = targets[("per", 10**6)]
    assert (measured, goal, met) == (pytest.approx(2.0), 1.25, False)
    assert targets[("5x", 10**7)][5] is None  # not measured without --bench-large


def test_markdown_holds_times_speedups_bandwidth_and_machine():
    text = report.render_markdown(rows_of(SUITE), MACHINE, "median", "python benchmarks/report.py",
                                 "time_per_epoch.png")
    assert "AMD EPYC, 2 cores (avx2), torch 2.13.0" in text
    assert "| biasfit fit_fused | 2 µs | 10 ms |" in text
    # N=1e6 fused: 10x eager, 4x torch.compile, 0.8 GB/s, half the read pass's.
    assert "| 1e6 | biasfit fit_fused | 100 | 10 ms | 10× | 4× | 0.8 | 50% | – |" in text
    assert "| 1e6 | torch.compile | 100 | 40 ms | 2.5× | 1× | 0.2 | 12% | 3.2 s |" in text
    assert "![time per epoch against N](time_per_epoch.png)" in text
    assert "| **no** |" in text and "| yes |" in text


def test_format_time_units():
    assert [report.fmt_time(t) for t in (2.5, 0.0125, 3.5e-6, 4e-9)] == [
        "2.5 s", "12.5 ms", "3.5 µs", "4 ns"]


def test_plot_without_matplotlib_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(report.PlotUnavailable, match=r"pip install 'biasfit\[plot\]'"):
        report.plot(rows_of(SUITE), tmp_path / "p.png")


def test_report_from_json_writes_table_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")  # the optional `plot` extra
    path = tmp_path / "b.json"
    path.write_text(json.dumps(SUITE))
    assert report.main(["--from-json", str(path), "--out", str(tmp_path)]) == 0
    assert "biasfit fit_fused" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "time_per_epoch.png").read_bytes()[:4] == b"\x89PNG"
    assert report.main(["--from-json", str(path), "--out", str(tmp_path), "--no-plot",
                       "--check"]) == 1
    assert "target missed" in capsys.readouterr().err


def test_readme_block_is_replaced_between_markers():
    text = "# x\nintro\n<!-- bench:start -->\nold table\n<!-- bench:end -->\nafter\n"
    assert report.replace_readme_block(text, "new table\n") == (
        "# x\nintro\n<!-- bench:start -->\nnew table\n<!-- bench:end -->\nafter\n")
    with pytest.raises(ValueError, match="no <!-- bench:start -->"):
        report.replace_readme_block("# no markers\n", "table")


def test_report_refreshes_the_readme_summary(tmp_path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps(SUITE))
    readme = tmp_path / "README.md"
    readme.write_text("## Benchmarks\n<!-- bench:start -->\n<!-- bench:end -->\n")
    out = tmp_path / "benchmarks" / "results"
    argv = ["--from-json", str(path), "--out", str(out), "--no-plot", "--readme", str(readme)]
    assert report.main(argv) == 0
    text = readme.read_text()
    assert "### Targets (float32)" in text and "### Time per epoch (cpu, float32)" in text
    assert "Detail" not in text
    assert "[benchmarks/results/results.md](benchmarks/results/results.md)" in text
    assert f"Made by `python benchmarks/report.py --from-json {path}" in text
    readme.write_text("no markers")
    with pytest.raises(SystemExit, match="cannot update"):
        report.main(argv)


def test_report_refuses_json_without_report_info(tmp_path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(SystemExit, match="no benchmark in"):
        report.main(["--from-json", str(path), "--out", str(tmp_path), "--no-plot"])
    with pytest.raises(SystemExit, match="cannot read benchmark JSON"):
        report.main(["--from-json", str(tmp_path / "missing.json"), "--out", str(tmp_path)])


# -- the grid: bench_peers.py's benchmarks ------------------------------------------

def cell_entry(kernel, n, seconds, epochs=100, dataset="tutorial", threads=2, spread=1.1,
               grid_epochs=100, load=1.5, **extra):
    e = entry(kernel, n, seconds * 2, epochs=epochs, dataset=dataset, threads=threads,
              grid=True, grid_epochs=grid_epochs, spread=spread, load=load, **extra)
    e["stats"]["min"] = seconds  # entry() makes min half the median
    return e


GRID = saved(
    # the tutorial fit to convergence: biasfit 2x slower than the serial Numba fit
    cell_entry("fused", 3, 35e-6, epochs=35, grid_epochs=None),
    cell_entry("numba-fit-ser", 3, 17.5e-6, epochs=35, grid_epochs=None),
    cell_entry("jax-fit", 3, 70e-6, epochs=35, grid_epochs=None, compile_s=0.4),
    # 1e6 points, 100 epochs: biasfit 3x ahead of the best peer, under the read pass
    cell_entry("fused", 10**6, 0.01), cell_entry("read", 10**6, 0.02),
    cell_entry("compile-loop", 10**6, 0.03, spread=2.5),
    cell_entry("eager-analytic", 10**6, 0.3),
    # dense, 1e6: biasfit 1.5x the read pass, behind Numba
    cell_entry("fused", 10**6, 0.03, dataset="dense"),
    cell_entry("read", 10**6, 0.02, dataset="dense"),
    cell_entry("numba-fit-par-fm", 10**6, 0.024, dataset="dense"),
    # the same cell with one thread is a cell of its own
    cell_entry("fused", 10**6, 0.05, threads=1), cell_entry("read", 10**6, 0.04, threads=1),
    cell_entry("numba-epoch-ser", 10**6, 0.1, threads=1),
)


def test_grid_cells_pick_the_fastest_peer_and_compare():
    cells = {c.key: c for c in report.grid_cells(rows_of(GRID, "min"))}
    assert len(cells) == 4
    tut = cells[("float32", 2, "tutorial", 10**6, 100)]
    assert tut.best.kernel == "compile-loop"
    assert tut.lead == pytest.approx(3.0) and tut.of_read == pytest.approx(0.5)
    assert tut.flagged == [("compile-loop", 2.5)]  # its rounds spread 2.5x
    dense = cells[("float32", 2, "dense", 10**6, 100)]
    assert dense.best.kernel == "numba-fit-par-fm"
    assert dense.lead == pytest.approx(0.8) and dense.of_read == pytest.approx(1.5)
    assert cells[("float32", 1, "tutorial", 10**6, 100)].best.kernel == "numba-epoch-ser"
    # the order: dtype, threads, tutorial before dense, N, epochs
    assert [c.key[1:4] for c in report.grid_cells(rows_of(GRID, "min"))] == [
        (1, "tutorial", 10**6), (2, "tutorial", 3), (2, "tutorial", 10**6), (2, "dense", 10**6)]


def test_grid_targets_count_the_cells_that_meet_them():
    targets = {t[0].split()[1]: t for t in
               report.evaluate_grid_targets(report.grid_cells(rows_of(GRID, "min")))}
    # fastest: ahead at 1e6 tutorial with 1 and 2 threads; behind at N=3 and dense
    assert targets["fastest"][1:4] == (4, 2, pytest.approx(2.0))
    assert targets["tutorial"][1:4] == (1, 0, pytest.approx(2.0))
    assert targets["epochs"][1:4] == (1, 0, pytest.approx(1.5))   # dense, 1.5x the read
    assert targets["="][1:4] == (0, 0, None)                       # no 1e8 cell measured


def test_grid_markdown_shows_each_cell_with_min_and_median():
    text = report.render_markdown(rows_of(GRID, "min"), MACHINE, "min", "report.py")
    assert "biasfit is ahead in 2 of 4 cells" in text
    assert ("| tutorial | 1e6 | 100 | 100 µs (200 µs) | torch.compile loop | 300 µs (600 µs) "
            "| **3×** | 200 µs (400 µs) | 0.5× | peer 2.5× | 1.5 |") in text
    assert "| 300 µs† |" in text  # the flagged kernel in the table of every kernel
    assert "| dense | 1e6 | 100 | 300 µs (600 µs) | Numba whole fit, parallel, fastmath" in text
    assert "| 0.8× (behind) |" in text
    assert "| tutorial | 3 | to convergence (35) | 1 µs (2 µs) |" in text
    assert "### float32, 1 thread" in text and "### float32, 2 threads" in text
    assert "70 µs" not in text and "2 µs (+0.4 s JIT)" in text  # JAX: per epoch, JIT apart
    assert "Targets (float32)" not in text  # the engines suite's targets need its rows


def test_grid_check_fails_on_a_missed_target(tmp_path, capsys):
    path = tmp_path / "b.json"
    path.write_text(json.dumps(GRID))
    assert report.main(["--from-json", str(path), "--out", str(tmp_path), "--no-plot",
                        "--check"]) == 1
    assert "target missed: biasfit fastest in every cell" in capsys.readouterr().err


BOTH = ("--bench-dtypes", "float32,float64")


def test_the_grid_runs_once_per_thread_count_and_merges(tmp_path, monkeypatch):
    calls = []

    def fake_pytest(json_path, suite, large, pytest_args, extra=()):
        threads = int(extra[1])
        calls.append((suite, extra, tuple(pytest_args)))
        data = saved(cell_entry("fused", 10**6, 0.01 * threads, threads=threads))
        json_path.write_text(json.dumps(data))

    # The load around each run, measured by the report itself (the suite's
    # machine_info holds no load: --benchmark-compare compares it).
    monkeypatch.setattr(report, "load_average", iter([1, 9, 2, 9]).__next__)
    monkeypatch.setattr(report, "_run_pytest", fake_pytest)
    out = tmp_path / "results"
    assert report.main(["--out", str(out), "--no-plot", "--threads", "1,2", "--", "-k", "x"]) == 0
    assert calls == [("grid", ["--bench-threads", "1", *BOTH], ("-k", "x")),
                     ("grid", ["--bench-threads", "2", *BOTH], ("-k", "x"))]
    data = json.loads((out / "benchmark.json").read_text())
    assert [b["extra_info"]["threads"] for b in data["benchmarks"]] == [1, 2]
    assert sorted(p.name for p in out.iterdir()) == ["benchmark.json", "results.md"]
    text = (out / "results.md").read_text()
    assert ("1 thread: load average 1 at start, 9 at end; "
            "2 threads: load average 2 at start, 9 at end") in text


def test_nothing_in_the_package_imports_the_benchmarks():
    root = Path(__file__).resolve().parent.parent
    suite = {p.stem for p in (root / "benchmarks").glob("*.py")} | {"benchmarks"}
    for source in (root / "biasfit").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            assert not {n.split(".")[0] for n in names} & suite, (source, names)


def test_failed_kernels_are_reported_and_fail_the_report(tmp_path, monkeypatch):
    def fake_pytest(json_path, suite, large, pytest_args, extra=()):
        json_path.write_text(json.dumps(saved(cell_entry("fused", 10**6, 0.01))))
        return 1  # some kernel missed the reference: pytest exit 1, JSON written

    monkeypatch.setattr(report, "_run_pytest", fake_pytest)
    out = tmp_path / "results"
    assert report.main(["--out", str(out), "--no-plot", "--threads", "2"]) == 1
    assert "Some benchmarks failed" in (out / "results.md").read_text()


def test_the_grid_plot_draws_biasfit_the_read_pass_and_each_sizes_best_peer():
    rows = report.plot_rows(rows_of(GRID, "min"))
    assert sorted((r.kernel, r.n) for r in rows) == [
        ("best-peer", 3), ("best-peer", 10**6), ("fused", 3), ("fused", 10**6), ("read", 10**6)]
    assert next(r for r in rows if r.kernel == "best-peer" and r.n == 10**6).seconds == 0.03
