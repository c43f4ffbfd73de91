"""The installed `biasfit` command, run as a user runs it: in a subprocess.

Each subprocess pays torch's import (seconds here), so the bad-input cases run
side by side in one module fixture, and the good runs share their outputs.
"""
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import biasfit
from biasfit import cli
from biasfit.checkpoint import load_model

_BIN = os.path.join(os.path.dirname(sys.executable), "biasfit")
BIASFIT = _BIN if os.path.exists(_BIN) else shutil.which("biasfit")
HAVE_CUDA = torch.cuda.is_available() and biasfit.WITH_CUDA


def run(*args, module=False, cwd=None, env=None):
    """`biasfit ARGS` (or `python -m biasfit ARGS`), its output captured."""
    command = [sys.executable, "-m", "biasfit"] if module else [BIASFIT]
    assert command[0], "the biasfit command is not installed (pip install -e .)"
    return subprocess.run(command + [str(a) for a in args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def ok(proc):
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return proc


def fit_here(inputs, labels, *, lr=0.1, epochs=100, tol=1e-4, momentum=0.0,
             nesterov=False, weight_decay=0.0, engine="fused",
             dtype=torch.float32, init_bias=0.0):
    """biasfit.fit in this process, with the settings the CLI was given."""
    model = biasfit.BasicNN(init_bias, dtype=dtype)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                          nesterov=nesterov, weight_decay=weight_decay)
    return biasfit.fit(model, torch.tensor(inputs, dtype=dtype),
                       torch.tensor(labels, dtype=dtype), optimizer=opt,
                       epochs=epochs, tol=tol, engine=engine)


# -- train ---------------------------------------------------------------------

def test_train_without_arguments_fits_the_tutorial_data(tmp_path):
    proc = ok(run("train", cwd=tmp_path))
    *epochs, last = proc.stdout.splitlines()
    expected = []
    model = biasfit.BasicNN()
    result = biasfit.fit(model, *biasfit.tutorial_data(),
                         callback=lambda *row: expected.append(row))
    assert len(epochs) == len(expected) == 35
    for line, (epoch, loss, bias) in zip(epochs, expected):
        m = re.fullmatch(r"epoch +(\d+)  total_loss (\S+)  final_bias (\S+)", line)
        assert m, line
        assert int(m[1]) == epoch
        assert float(m[2]) == pytest.approx(loss, rel=1e-5)
        assert float(m[3]) == pytest.approx(bias, rel=1e-5, abs=1e-6)
    assert result.epochs_run == 34
    assert last == "converged after 34 epochs: final_bias = -16.0019, total_loss = 6.59e-05"
    assert proc.stderr == ""  # no progress bar when stderr is not a terminal


def test_python_m_biasfit_json_matches_fit_in_process(tmp_path):
    proc = ok(run("train", "--json", module=True, cwd=tmp_path))
    out = json.loads(proc.stdout)
    want = fit_here([0.0, 0.5, 1.0], [0.0, 1.0, 0.0])
    assert out["result"] == {"epochs_run": want.epochs_run, "final_bias": want.final_bias,
                             "final_loss": want.final_loss, "converged": True,
                             "stop_reason": "converged", "stall_epoch": None}
    assert out["losses"] == want.losses
    assert out["versions"] == {"biasfit": biasfit.__version__, "torch": torch.__version__}
    assert out["settings"] == {
        "points": 3, "data": None, "x_col": None, "y_col": None, "lr": 0.1,
        "epochs": 100, "tol": 1e-4, "reduction": "sum", "rtol": 0.0, "patience": 10,
        "momentum": 0.0, "nesterov": False, "weight_decay": 0.0, "engine": "fused",
        "device": "cpu",
        "dtype": "float32", "init_bias": 0.0}


# Points off the tutorial's, in three formats, so the options have work to do.
DOSES = [0.0, 0.25, 0.5, 0.75, 1.0]
EFFECT = [0.0, 0.5, 1.0, 0.5, 0.0]


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    rows = "".join(f"{i},{a},{b}\n" for i, (a, b) in enumerate(zip(DOSES, EFFECT)))
    (folder / "three.csv").write_text("id,dose,effect\n" + rows)
    np.save(folder / "d.npy", np.array([DOSES, EFFECT]).T)
    np.savez(folder / "d.npz", x=np.array(DOSES), y=np.array(EFFECT))
    return folder


OPTIONS = {"lr": 0.05, "epochs": 300, "tol": 1e-6, "momentum": 0.5, "nesterov": True,
           "weight_decay": 0.01, "init_bias": -10.0}


@pytest.mark.parametrize("engine, source", [
    ("autograd", ("three.csv", "--x-col", "dose", "--y-col", "effect")),
    ("fused", ("three.csv", "--x-col", "1", "--y-col", "2")),
    ("autograd", ("d.npy",)),
    ("fused", ("d.npz",))])
def test_every_option_reaches_fit(data_files, engine, source):
    name, *cols = source
    proc = ok(run("train", "--json", "--data", data_files / name, *cols,
                  "--lr", 0.05, "--epochs", 300, "--tol", 1e-6, "--momentum", 0.5,
                  "--nesterov", "--weight-decay", 0.01, "--init-bias", -10,
                  "--engine", engine, "--dtype", "float64"))
    out = json.loads(proc.stdout)
    want = fit_here(DOSES, EFFECT, engine=engine, dtype=torch.float64, **OPTIONS)
    assert out["losses"] == want.losses
    assert out["result"]["final_bias"] == want.final_bias
    assert out["result"]["epochs_run"] == want.epochs_run
    assert {k: out["settings"][k] for k in OPTIONS} == OPTIONS
    assert out["settings"]["engine"] == engine and out["settings"]["points"] == 5


@pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA GPU and biasfit built with CUDA")
def test_train_on_cuda_matches_cpu():
    cpu = json.loads(ok(run("train", "--json", "--dtype", "float64")).stdout)
    gpu = json.loads(ok(run("train", "--json", "--dtype", "float64", "--device", "cuda")).stdout)
    assert gpu["result"]["epochs_run"] == cpu["result"]["epochs_run"]
    assert gpu["losses"] == pytest.approx(cpu["losses"], rel=1e-10)


# -- save, predict, plot -----------------------------------------------------------

def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_save_then_predict_and_plot(tmp_path):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (the plot extra)")
    model_path, fig = tmp_path / "model.pt", tmp_path / "fit.png"
    proc = ok(run("train", "--save", model_path, "--plot", fig, cwd=tmp_path))
    assert f"saved the model to {model_path}" in proc.stdout
    assert png_size(fig) == (1000, 400)
    assert [p.name for p in tmp_path.iterdir()] != [] and not list(tmp_path.glob(".biasfit-*"))

    model, meta = load_model(model_path)
    assert model.final_bias.item() == meta["result"]["final_bias"]
    assert meta["result"]["epochs_run"] == 34 and len(meta["losses"]) == 35
    assert meta["settings"]["lr"] == 0.1 and meta["versions"]["torch"] == torch.__version__

    xs = [-0.5, 0.0, 0.3, 0.5, 0.51, 1.0, 2.0]
    (tmp_path / "x.csv").write_text("x\n" + "".join(f"{v}\n" for v in xs))
    expected = biasfit.BasicNN(meta["result"]["final_bias"])(torch.tensor(xs)).tolist()
    for args in (["--x", *xs], ["--data", tmp_path / "x.csv"]):
        out = ok(run("predict", "--model", model_path, *args)).stdout.splitlines()
        assert out[0] == "x,prediction"
        got = [[float(v) for v in line.split(",")] for line in out[1:]]
        assert [x for x, _ in got] == pytest.approx(xs)
        # 9 significant digits round-trip float32 exactly.
        assert torch.tensor([p for _, p in got]).tolist() == expected


def test_json_save_keeps_stdout_pure_json(tmp_path):
    proc = ok(run("train", "--json", "--save", tmp_path / "m.pt", "--engine", "fused"))
    out = json.loads(proc.stdout)
    _, meta = load_model(tmp_path / "m.pt")
    assert meta == out


def test_plot_without_matplotlib_says_how_to_install(tmp_path):
    hide = tmp_path / "hide"
    (hide / "matplotlib").mkdir(parents=True)
    (hide / "matplotlib" / "__init__.py").write_text(
        "raise ImportError('No module named matplotlib (hidden by the test)')\n")
    env = {**os.environ, "PYTHONPATH": str(hide)}
    proc = run("train", "--plot", tmp_path / "f.png", env=env)
    assert proc.returncode != 0 and proc.stdout == ""  # refused before fitting
    assert proc.stderr == ("biasfit train: error: plotting needs matplotlib: "
                           "pip install 'biasfit[plot]' (or: pip install matplotlib)\n")
    assert not (tmp_path / "f.png").exists()


# -- bad input: one line on stderr, non-zero exit, no traceback ---------------------

BAD_FILES = {
    "bad_number.csv": "x,y\n0,0\n0.5,abc\n1,0\n",
    "wrong_width.csv": "x,y\n0,0\n0.5,1,7\n",
    "empty.csv": "",
    "nan.csv": "x,y\n0,0\nnan,1\n",
    "overflow.csv": "0,0\n1,1e39\n",
    "three.csv": "a,b,c\n1,2,3\n",
    "huge_labels.csv": "x,y\n0.5,3e19\n",
    "binary.dat": b"\xff\xfe\x00\x01garbage",
}
BAD_ARRAYS = {
    "inf.npy": np.array([[0.0, 0.0], [np.inf, 1.0]]),
    "flat.npy": np.array([0.0, 1.0]),
    "lengths.npz": {"x": np.zeros(3), "y": np.zeros(2)},
}
MISSING_GPU = "--device cuda: no CUDA GPU is available on this machine"

# (args, exit code, the one line on stderr as a regex)
BAD = {
    "missing file": (["train", "--data", "nope.csv"], 1,
                     "cannot read nope.csv: No such file or directory"),
    "directory": (["train", "--data", "."], 1, r"cannot read \.: Is a directory"),
    "not text": (["train", "--data", "binary.dat"], 1,
                 "binary.dat is not a UTF-8 text, .npy, .npz or Parquet file"),
    "non-number": (["train", "--data", "bad_number.csv"], 1,
                   r"bad_number.csv row 2 \(line 3\), column y: 'abc' is not a number"),
    "wrong field count": (["train", "--data", "wrong_width.csv"], 1,
                          r"wrong_width.csv row 2 \(line 3\) has 3 fields, expected 2"),
    "empty": (["train", "--data", "empty.csv"], 1, "empty.csv is empty: no rows of data"),
    "nan": (["train", "--data", "nan.csv"], 1,
            r"nan.csv row 2 \(line 3\), column x: nan is not a finite float32 number"),
    "inf": (["train", "--data", "inf.npy"], 1,
            "inf.npy row 2, column 0: inf is not a finite float32 number"),
    "float32 overflow": (["train", "--data", "overflow.csv"], 1,
                         r"row 2 \(line 2\), column 1: 1e\+39 is not a finite float32"),
    "lengths differ": (["train", "--data", "lengths.npz"], 1,
                       r"lengths.npz: arrays of different lengths \(x has 3, y has 2\)"),
    "npy shape": (["train", "--data", "flat.npy"], 1, r"shape \(2,\); expected \(N, 2\)"),
    "unknown column": (["train", "--data", "nan.csv", "--x-col", "dose"], 1,
                       r"--x-col 'dose' is not a column of nan.csv \(columns: x, y;"),
    "column index": (["train", "--data", "nan.csv", "--y-col", "2"], 1,
                     "--y-col '2' is not a column"),
    "columns unnamed": (["train", "--data", "three.csv"], 1,
                        r"three.csv has 3 column\(s\) \(a, b, c\); choose the x column "
                        "with --x-col"),
    "diverges": (["train", "--data", "huge_labels.csv"], 1,
                 "the loss became inf at epoch 0; lower lr, or check the data"),
    "negative lr": (["train", "--lr", "-0.1"], 2, "argument --lr: must be >= 0, got -0.1"),
    "nan lr": (["train", "--lr", "nan"], 2, "argument --lr: expected a finite number"),
    "negative epochs": (["train", "--epochs", "-1"], 2, "argument --epochs: must be >= 0"),
    "fractional epochs": (["train", "--epochs", "2.5"], 2,
                          "argument --epochs: expected an integer, got '2.5'"),
    "negative tol": (["train", "--tol", "-0.5"], 2, "argument --tol: must be >= 0"),
    "negative momentum": (["train", "--momentum", "-1"], 2, "argument --momentum: must be"),
    "negative decay": (["train", "--weight-decay", "-1"], 2, "argument --weight-decay: must"),
    "inf init bias": (["train", "--init-bias", "inf"], 2, "argument --init-bias: expected a"),
    "nesterov alone": (["train", "--nesterov"], 2, "--nesterov needs --momentum > 0"),
    # Finite, but past float32's largest: torch.optim.SGD failed inside its
    # step with a traceback, and a bias of inf reached the fit.
    "lr past float32": (["train", "--lr", "1e39"], 2,
                        r"--lr 1e\+39 is too large for float32 \(at most 3.403e\+38"),
    "decay past float32": (["train", "--weight-decay", "1e39"], 2,
                           "--weight-decay 1e\\+39 is too large for float32"),
    "init bias past float32": (["train", "--init-bias=-1e39"], 2,
                               "--init-bias -1e\\+39 is too large for float32"),
    "engine": (["train", "--engine", "jit"], 2, "argument --engine: invalid choice: 'jit'"),
    "dtype": (["train", "--dtype", "float16"], 2, "argument --dtype: invalid choice"),
    "unknown option": (["train", "--learning-rate", "1"], 2,
                       "unrecognized arguments: --learning-rate 1"),
    "no command": ([], 2, "the following arguments are required: command"),
    "save folder": (["train", "--save", "no/such/m.pt"], 2,
                    "--save no/such/m.pt: folder .* does not exist"),
    "save into a folder": (["train", "--save", "."], 2,
                           r"--save \. is a folder: name a file in it"),
    "save no name": (["train", "--save", ""], 2, "--save: name a file"),
    "plot no name": (["train", "--plot", ""], 2, "--plot: name a file"),
    "save over the data": (["train", "--save", "nan.csv"], 2,
                           "--save nan.csv exists and is not a biasfit model file"),
    "column without data": (["train", "--x-col", "dose"], 2,
                            "--x-col chooses a column of --data: give --data FILE too"),
    "predict column without data": (["predict", "--model", "m.pt", "--x", "1",
                                     "--x-col", "y"], 2, "--x-col chooses a column of --data"),
    "model missing": (["predict", "--model", "none.pt", "--x", "1"], 1,
                      "cannot read none.pt: No such file"),
    "not a model": (["predict", "--model", "nan.csv", "--x", "1"], 1,
                    "nan.csv is not a biasfit model file"),
    "predict nan": (["predict", "--model", "m.pt", "--x", "0", "nan"], 2,
                    "argument --x: expected a finite number, got 'nan'"),
    "predict no inputs": (["predict", "--model", "m.pt"], 2,
                          "one of the arguments --data --x is required"),
    "predict bad data": (["predict", "--model", "m.pt", "--data", "bad_number.csv",
                          "--x-col", "y"], 1, r"row 2 \(line 3\), column y: 'abc'"),
}
# Where --device cuda works, test_train_on_cuda_matches_cpu checks it instead.
if not torch.cuda.is_available():
    BAD["missing GPU"] = (["train", "--device", "cuda"], 2, MISSING_GPU)
elif not biasfit.WITH_CUDA:
    BAD["missing GPU"] = (["train", "--device", "cuda"], 2, "built without CUDA support")


# Every BAD case also runs in-process below (milliseconds each); these run as
# the installed command too: one per kind of mistake, each subprocess ~2 s of CPU.
IN_SUBPROCESS = ["missing file", "not text", "non-number", "wrong field count", "empty",
                 "nan", "float32 overflow", "lengths differ", "unknown column",
                 "diverges", "negative lr", "fractional epochs", "nesterov alone",
                 "lr past float32",
                 "no command", "not a model", "predict nan", "missing GPU"]


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    """A folder holding the bad files (and a good model, m.pt)."""
    folder = tmp_path_factory.mktemp("bad")
    for name, content in BAD_FILES.items():
        path = folder / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    for name, array in BAD_ARRAYS.items():
        if isinstance(array, dict):
            np.savez(folder / name, **array)
        else:
            np.save(folder / name, array)
    biasfit.checkpoint.save_model(folder / "m.pt", biasfit.BasicNN(-16.0), {})
    return folder


@pytest.fixture(scope="module")
def bad_runs(bad_folder):
    """The IN_SUBPROCESS cases, run side by side."""
    cases = [case for case in IN_SUBPROCESS if case in BAD]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        futures = {case: pool.submit(run, *BAD[case][0], cwd=bad_folder) for case in cases}
        return {case: future.result() for case, future in futures.items()}


def check_refusal(case, code, stdout, stderr):
    _, want_code, message = BAD[case]
    assert code == want_code, (stdout, stderr)
    assert "Traceback" not in stderr + stdout
    assert re.fullmatch(rf"biasfit( \w+)?: error: .*{message}.*\n", stderr), stderr
    assert stderr.count("\n") == 1


@pytest.mark.parametrize("case", [case for case in IN_SUBPROCESS if case in BAD])
def test_bad_input_to_the_command_is_one_clear_line(bad_runs, case):
    proc = bad_runs[case]
    check_refusal(case, proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_to_main_is_one_clear_line(bad_folder, monkeypatch, capsys, case):
    monkeypatch.chdir(bad_folder)
    try:
        code = cli.main(BAD[case][0])
    except SystemExit as e:  # argparse's refusals
        code = e.code
    out = capsys.readouterr()
    check_refusal(case, code, out.out, out.err)


# -- the progress bar: only on a terminal, only for long fits ------------------------

class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bar_shows_on_a_terminal_once_the_delay_passed(monkeypatch, terminal):
    monkeypatch.setattr(cli, "PROGRESS_DELAY_S", 0.0)
    stream = _Terminal() if terminal else io.StringIO()
    with cli._progress(40, stream) as bar:
        for _ in range(40):
            bar.update()
    assert ("/40 [" in stream.getvalue()) == terminal


def test_progress_bar_waits_for_the_delay(monkeypatch):
    stream = _Terminal()
    with cli._progress(40, stream) as bar:
        bar.update(40)
    assert stream.getvalue() == ""  # a fit this quick shows no bar


# -- a loss past float32's range is a diverged fit, not a crash ----------------------

@pytest.mark.parametrize("engine", ["autograd", "fused"])
def test_float32_loss_overflow_is_reported_as_divergence(engine):
    model = biasfit.BasicNN()
    with pytest.raises(biasfit.DivergedError, match="the loss became inf at epoch 0"):
        biasfit.fit(model, torch.tensor([0.5]), torch.tensor([3e19]), engine=engine)
