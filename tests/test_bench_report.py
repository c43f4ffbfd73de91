"""The benchmark report's own logic, on made-up pytest-benchmark JSON."""
import json
import sys

import pytest

from biasfit import bench

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
    rows, skipped = bench.parse_results(data, stat)
    assert skipped == []
    return rows


def test_size_labels():
    assert [bench.size_label(n) for n in (3, 1000, 10**6, 10**8, 1500, 999)] == [
        "3", "1e3", "1e6", "1e8", "1500", "999"]


def test_parse_divides_by_epochs_and_picks_the_statistic():
    by = bench.lookup(rows_of(SUITE))
    fused = by[("fused", "cpu", "float32", 10**6)]
    assert fused.per_epoch == pytest.approx(0.01)
    assert fused.bandwidth == pytest.approx(8e6 / 0.01)
    assert by[("compiled", "cpu", "float32", 10**6)].compile_s == 3.2
    by_min = bench.lookup(rows_of(SUITE, "min"))
    assert by_min[("fused", "cpu", "float32", 10**6)].per_epoch == pytest.approx(0.005)


def test_parse_skips_benchmarks_without_report_info():
    data = saved(entry("fused", 10, 1.0), {"fullname": "other::test_x",
                                           "stats": {"median": 1.0}, "extra_info": {}})
    rows, skipped = bench.parse_results(data)
    assert [r.kernel for r in rows] == ["fused"]
    assert skipped == ["other::test_x"]
    with pytest.raises(ValueError, match="stat must be one of"):
        bench.parse_results(data, "p99")


def test_ratios_compare_the_same_device_dtype_and_size():
    rows = rows_of(saved(entry("eager", 10, 2.0), entry("fused", 10, 1.0),
                         entry("eager", 10, 8.0, dtype="float64"),
                         entry("eager", 20, 100.0)))
    by = bench.lookup(rows)
    fused = by[("fused", "cpu", "float32", 10)]
    assert bench.ratio(by, fused, "eager") == pytest.approx(2.0)
    assert bench.ratio(by, fused, "compiled") is None


def test_targets_report_measured_ratios_and_verdicts():
    targets = {(t[0].split()[2], t[2]): t for t in bench.evaluate_targets(rows_of(SUITE))}
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
    text = bench.render_markdown(rows_of(SUITE), MACHINE, "median", "python -m biasfit.bench",
                                 "time_per_epoch.png")
    assert "AMD EPYC, 2 cores (avx2), torch 2.13.0" in text
    assert "| biasfit fit_fused | 2 µs | 10 ms |" in text
    # N=1e6 fused: 10x eager, 4x torch.compile, 0.8 GB/s, half the read pass's.
    assert "| 1e6 | biasfit fit_fused | 100 | 10 ms | 10× | 4× | 0.8 | 50% | – |" in text
    assert "| 1e6 | torch.compile | 100 | 40 ms | 2.5× | 1× | 0.2 | 12% | 3.2 s |" in text
    assert "![time per epoch against N](time_per_epoch.png)" in text
    assert "| **no** |" in text and "| yes |" in text


def test_format_time_units():
    assert [bench.fmt_time(t) for t in (2.5, 0.0125, 3.5e-6, 4e-9)] == [
        "2.5 s", "12.5 ms", "3.5 µs", "4 ns"]


def test_plot_without_matplotlib_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(bench.PlotUnavailable, match=r"pip install 'biasfit\[plot\]'"):
        bench.plot(rows_of(SUITE), tmp_path / "p.png")


def test_report_from_json_writes_table_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")  # the optional `plot` extra
    path = tmp_path / "b.json"
    path.write_text(json.dumps(SUITE))
    assert bench.main(["--from-json", str(path), "--out", str(tmp_path)]) == 0
    assert "biasfit fit_fused" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "time_per_epoch.png").read_bytes()[:4] == b"\x89PNG"
    assert bench.main(["--from-json", str(path), "--out", str(tmp_path), "--no-plot",
                       "--check"]) == 1
    assert "target missed" in capsys.readouterr().err


def test_readme_block_is_replaced_between_markers():
    text = "# x\nintro\n<!-- bench:start -->\nold table\n<!-- bench:end -->\nafter\n"
    assert bench.replace_readme_block(text, "new table\n") == (
        "# x\nintro\n<!-- bench:start -->\nnew table\n<!-- bench:end -->\nafter\n")
    with pytest.raises(ValueError, match="no <!-- bench:start -->"):
        bench.replace_readme_block("# no markers\n", "table")


def test_report_refreshes_the_readme_summary(tmp_path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps(SUITE))
    readme = tmp_path / "README.md"
    readme.write_text("## Benchmarks\n<!-- bench:start -->\n<!-- bench:end -->\n")
    out = tmp_path / "benchmarks" / "results"
    argv = ["--from-json", str(path), "--out", str(out), "--no-plot", "--readme", str(readme)]
    assert bench.main(argv) == 0
    text = readme.read_text()
    assert "### Targets (float32)" in text and "### Time per epoch (cpu, float32)" in text
    assert "Detail" not in text
    assert "[benchmarks/results/results.md](benchmarks/results/results.md)" in text
    assert f"Made by `python -m biasfit.bench --from-json {path}" in text
    readme.write_text("no markers")
    with pytest.raises(SystemExit, match="cannot update"):
        bench.main(argv)


def test_report_refuses_json_without_report_info(tmp_path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(SystemExit, match="no benchmark in"):
        bench.main(["--from-json", str(path), "--out", str(tmp_path), "--no-plot"])
    with pytest.raises(SystemExit, match="cannot read benchmark JSON"):
        bench.main(["--from-json", str(tmp_path / "missing.json"), "--out", str(tmp_path)])
