"""Issue 27's command line on the data people bring: the fused engine by
default, the mean loss, the plateau stop, compressed, Parquet and ';'-separated
files, predict keeping the input's columns, --json on failure, plots of 1e5
points and the progress bar. cli.main runs in this process (fast)."""
import bz2
import gzip
import io
import json
import lzma
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import biasfit
from biasfit import cli, engine
from biasfit.datafile import DataFileError, load_table, load_xy

from test_cli_robust import main, one_line

ROOT = Path(__file__).resolve().parent.parent
NOISY = ROOT / "examples" / "noisy.csv.gz"
ROWS = [("s1", 0.636962, 0.5), ("s2", 0.25, 0.125), ("s3", 0.5, 1.0), ("s4", 1.0, 0.0)]


def table_text(sep=","):
    return f"sample{sep}dose{sep}response\n" + "".join(
        f"{a}{sep}{b}{sep}{c}\n" for a, b, c in ROWS)


# -- the engine, the reduction, the plateau ----------------------------------------------


def test_the_fused_engine_is_the_default_and_autograd_agrees(capsys):
    assert cli.build_parser().parse_args(["train"]).engine == "fused"
    _, fused, _ = main(capsys, "train", "--quiet")
    _, autograd, _ = main(capsys, "train", "--quiet", "--engine", "autograd")
    assert fused == autograd == ("converged after 34 epochs: final_bias = -16.0019, "
                                 "total_loss = 6.59e-05\n")


def test_the_mean_loss_needs_no_lr_scaling(capsys):
    # The summed loss's lr 0.1 stalls on 200 points; the mean's fits them.
    data = ROOT / "examples" / "points200.csv"
    code, out, _ = main(capsys, "train", "--data", data, "--reduction", "mean",
                        "--epochs", 2000, "--quiet")
    assert code == 0, out
    m = re.fullmatch(r"converged after (\d+) epochs: final_bias = (\S+), "
                     r"mean_loss = (\S+)\n", out)
    assert m and round(float(m[2])) == -16 and float(m[3]) < 1e-4


@pytest.mark.parametrize("engine_name", ["fused", "autograd"])
def test_noisy_data_stops_at_a_plateau_and_says_so(capsys, engine_name):
    code, out, err = main(capsys, "train", "--data", NOISY, "--x-col", "dose", "--y-col",
                          "response", "--reduction", "mean", "--rtol", "1e-6",
                          "--epochs", 100000, "--json", "--engine", engine_name)
    assert code == 0, err
    record = json.loads(out)
    result = record["result"]
    assert result["stop_reason"] == "plateau" and not result["converged"]
    assert result["epochs_run"] < 5000 and round(result["final_bias"]) == -16
    assert record["settings"]["reduction"] == "mean"
    assert record["settings"]["rtol"] == 1e-6 and record["settings"]["patience"] == 10
    _, text, _ = main(capsys, "train", "--data", NOISY, "--x-col", "dose", "--y-col",
                      "response", "--reduction", "mean", "--rtol", "1e-6", "--epochs",
                      100000, "--quiet", "--engine", engine_name)
    assert text.startswith(f"stopped at a plateau after {result['epochs_run']} epochs "
                           f"(the loss improved by less than 1e-06 relative for 10 epochs)")


def test_a_stall_exits_1_with_the_advice_and_json_says_why(capsys):
    data = ROOT / "examples" / "points200.csv"
    code, out, err = main(capsys, "train", "--data", data, "--json")
    one_line(code, err, 1, r"stalled at epoch 1: .*lr/N = 0.0005\), or fit the mean "
                           r"loss \(--reduction mean\)")
    record = json.loads(out)  # one JSON object on stdout, also on failure
    assert record["error"].startswith("the fit stalled at epoch 1")
    assert record["result"]["stop_reason"] == "stalled"
    assert record["result"]["stall_epoch"] == record["result"]["epochs_run"] == 1
    assert len(record["losses"]) == 2


@pytest.mark.parametrize("args, pattern", [
    (["--data", "missing.csv"], "cannot read missing.csv"),
    (["--lr", "-1"], "bad command line"),
    (["--data", str(ROOT / "examples" / "typo.csv")], "row 3"),
])
def test_json_writes_one_object_with_an_error_on_every_failure(capsys, args, pattern):
    code, out, _ = main(capsys, "train", "--json", *args)
    assert code in (1, 2)
    record = json.loads(out)
    assert re.search(pattern, record["error"]) and "versions" in record


# -- files ----------------------------------------------------------------------


@pytest.mark.parametrize("module", [gzip, bz2, lzma])
def test_compressed_files_read_as_the_plain_one(tmp_path, module):
    plain = tmp_path / "d.csv"
    plain.write_text(table_text())
    packed = tmp_path / "d.csv.z"  # told apart by their bytes, not the name
    packed.write_bytes(module.compress(plain.read_bytes()))
    want = load_xy(plain, "dose", "response", with_names=True)
    got = load_xy(packed, "dose", "response", with_names=True)
    assert [t.tolist() for t in got[:2]] == [t.tolist() for t in want[:2]]
    assert got[2] == want[2] == ["dose", "response"]


def test_a_broken_gzip_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "d.csv.gz"
    bad.write_bytes(gzip.compress(table_text().encode())[:30])
    code, _, err = main(capsys, "train", "--data", bad)
    one_line(code, err, 1, "cannot read .*d.csv.gz as gzip")


def test_parquet_columns_by_name_and_index(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"sample": [r[0] for r in ROWS], "dose": [r[1] for r in ROWS],
                             "response": [r[2] for r in ROWS]}), path)
    x, y, names = load_xy(path, "dose", "2", with_names=True)
    assert x.tolist() == pytest.approx([r[1] for r in ROWS]) and names == ["dose", "response"]
    x64, _ = load_xy(path, "dose", "response", dtype=torch.float64)
    assert x64.tolist() == [r[1] for r in ROWS]
    with pytest.raises(DataFileError, match="column sample holds string values"):
        load_xy(path, "sample", "response")
    shard = load_xy(path, "dose", "response", rank=1, world_size=2)[0]
    assert shard.tolist() == pytest.approx([r[1] for r in ROWS[2:]])


@pytest.mark.parametrize("sep", [";", "|", "\t", " "])
def test_the_delimiter_is_sniffed(tmp_path, sep):
    path = tmp_path / "d.txt"
    path.write_text(table_text(sep))
    x, y = load_xy(path, "dose", "response", dtype=torch.float64)
    assert x.tolist() == [r[1] for r in ROWS] and y.tolist() == [r[2] for r in ROWS]


def test_every_missing_column_choice_is_named_at_once(tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text(table_text())
    code, _, err = main(capsys, "train", "--data", path)
    one_line(code, err, 1, r"has 3 column\(s\) \(sample, dose, response\); choose the x "
                           r"column with --x-col and the y column with --y-col")
    code, _, err = main(capsys, "train", "--data", path, "--x-col", "dose")
    one_line(code, err, 1, "choose the y column with --y-col$")


# -- predict ------------------------------------------------------------------------


def test_predict_keeps_every_column_as_read(tmp_path, capsys):
    model_file = tmp_path / "m.pt"
    assert main(capsys, "train", "--quiet", "--save", model_file)[0] == 0
    data = tmp_path / "d.csv"
    data.write_text(table_text(";"))
    code, out, err = main(capsys, "predict", "--model", model_file, "--data", data,
                          "--x-col", "dose")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "sample,dose,response,prediction"
    model, _ = biasfit.checkpoint.load_model(model_file)
    with torch.no_grad():
        want = model(torch.tensor([r[1] for r in ROWS]))
    for line, row, y in zip(lines[1:], ROWS, want.tolist()):
        *fields, prediction = line.split(",")
        assert fields == [row[0], str(row[1]), str(row[2])]  # 0.636962 as read
        assert np.float32(prediction) == np.float32(y)
    code, out, _ = main(capsys, "predict", "--model", model_file, "--x", "0.636962", "5e-1")
    assert [line.split(",")[0] for line in out.splitlines()] == ["x", "0.636962", "5e-1"]


def test_load_table_reads_other_formats_too(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.array([0.5, 0.25], dtype=np.float32),
             id=np.array([7, 8]))
    x, names, columns = load_table(tmp_path / "d.npz")
    assert x.tolist() == [0.5, 0.25]
    assert names == ["x", "id"] and columns == [["0.5", "0.25"], ["7", "8"]]


# -- plots and progress ---------------------------------------------------------------


def test_a_plot_of_1e5_points_shows_the_curve_over_faint_points():
    pytest.importorskip("matplotlib")
    from biasfit.plot import figure
    g = torch.Generator().manual_seed(0)
    x = torch.rand(100_000, generator=g)
    y = biasfit.BasicNN(-16.0)(x).detach() + 0.1 * torch.randn(100_000, generator=g)
    model = biasfit.BasicNN(-16.0)
    result = biasfit.FitResult(500, -16.0, [float(v) for v in range(500, 0, -1)])
    left, right = figure(model, x, y, result).axes
    points, = left.collections  # no residual lines at this size
    curve, = left.lines
    assert curve.get_zorder() > points.get_zorder()
    assert points.get_alpha() < 0.1 and points.get_sizes()[0] <= 4
    loss, = right.lines
    assert loss.get_marker() in (None, "None", "")
    # The tutorial's 3 points keep plain dots and their residuals.
    left, _ = figure(model, *biasfit.tutorial_data(), result).axes
    assert len(left.collections) == 2


class FakeBar:
    disable, total, n = False, 100, 0

    def __init__(self):
        self.postfix = ""

    def update(self, k):
        self.n += k

    def set_postfix_str(self, text, refresh=True):
        self.postfix = text


@pytest.mark.parametrize("engine_name", ["fused", "autograd"])
def test_the_progress_bar_shows_epoch_loss_and_bias(engine_name, monkeypatch):
    clock = iter(range(0, 10**6))  # a second between calls: every epoch is shown
    monkeypatch.setattr(cli, "time_now", lambda: next(clock))
    bar = FakeBar()
    progress = cli.Progress(bar)
    x, y = biasfit.tutorial_data()
    result = biasfit.fit(biasfit.BasicNN(), x, y, engine=engine_name, epochs=100,
                         callback=progress.show)
    assert bar.n == result.epochs_run + 1
    assert bar.postfix == f"loss {result.final_loss:.6g}  bias {result.final_bias:.6g}"


def test_the_fused_engine_reports_progress_while_it_runs():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1_000_000, generator=g, dtype=torch.float64)
    y = torch.zeros_like(x)
    seen = []
    with engine.reporting(lambda *row: seen.append(row)):
        result = biasfit.fit_fused(x, y, lr=1e-9, epochs=4000, tol=0.0, bias=-1.0)
    assert seen, "no report during a fit of several seconds"
    epochs = [e for e, _, _ in seen]
    assert epochs == sorted(epochs) and epochs[-1] < result.epochs_run
    for e, loss, bias in seen:
        assert loss == result.losses[e]
    biasfit.fit_fused(x[:10], y[:10])  # reporting is off again
    assert len(seen) == len(epochs)
