"""Issue 14's command-line items: hostile files, signals, pipes, and the
options that make long fits usable. Most run cli.main in this process (fast);
signals, pipes and stdin need the real command."""
import os
import re
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

import biasfit
from biasfit import cli
from biasfit.checkpoint import load_model, save_model

from helpers import CHILD_CWD, default_sigint
from test_cli import BIASFIT


def main(capsys, *args):
    """cli.main(args): (exit code, stdout, stderr)."""
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as e:  # argparse's refusals
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(code, err, want_code, pattern):
    assert code == want_code, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.fullmatch(rf"biasfit( \w+)?: error: .*{pattern}.*\n", err), err


def test_a_corrupt_npz_is_one_line(tmp_path, capsys):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros(3), y=np.zeros(3))
    data = good.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[:len(data) // 2])
    code, _, err = main(capsys, "train", "--data", tmp_path / "cut.npz")
    one_line(code, err, 1, "cannot read .*cut.npz as .npz")


def test_an_npz_with_other_members_is_one_line(tmp_path, capsys):
    path = tmp_path / "odd.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.txt", "hello")
        z.writestr("y.txt", "world")
    code, _, err = main(capsys, "train", "--data", path, "--x-col", "x.txt",
                        "--y-col", "y.txt")
    one_line(code, err, 1, "member 'x.txt' is not a NumPy array")


def test_an_empty_npz_says_so_without_control_characters(tmp_path, capsys):
    path = tmp_path / "empty.npz"
    np.savez(path)
    code, _, err = main(capsys, "train", "--data", path)
    one_line(code, err, 1, "is an .npz holding no arrays; expected arrays x and y")
    assert err.isprintable() or err[:-1].isprintable()


def test_npz_arrays_are_taken_by_name_not_position(tmp_path, capsys):
    path = tmp_path / "ab.npz"
    np.savez(path, a=np.array([0.0, 0.5, 1.0]), b=np.array([0.0, 1.0, 0.0]))
    code, _, err = main(capsys, "train", "--data", path)
    one_line(code, err, 1, r"has arrays \(a, b\); choose the x array with --x-col")
    code, out, _ = main(capsys, "train", "--data", path, "--x-col", "a", "--y-col", "b", "-q")
    assert code == 0 and out.startswith("converged after 34 epochs")


def test_one_column_for_both_x_and_y(tmp_path, capsys):
    # pyarrow's reader refuses a column asked for twice; the file is read
    # once per distinct column instead.
    path = tmp_path / "doses.csv"
    path.write_text("dose,effect\n0,0\n0.5,1\n1,0\n")
    for cols in (["0", "0"], ["dose", "dose"]):
        code, out, err = main(capsys, "train", "--data", path, "--x-col", cols[0],
                              "--y-col", cols[1], "-q", "--epochs", "3")
        assert code == 0 and err == "", err
        assert out.startswith("did not converge after 3 epochs")


def test_plot_format_is_checked_before_the_fit(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (the plot extra)")
    for name in ("fit.txt", "fit"):
        code, out, err = main(capsys, "train", "--plot", tmp_path / name)
        one_line(code, err, 2, r"--plot .*: name a file ending in one of .*\.png")
        assert out == ""  # refused before the fit, which would print every epoch
    code, _, err = main(capsys, "train", "--plot", tmp_path)
    one_line(code, err, 2, "is a folder: name a file in it")


def test_epochs_past_the_cap_are_refused_before_the_fit(capsys):
    code, out, err = main(capsys, "train", "--engine", "fused", "--epochs", "1e18")
    one_line(code, err, 2, r"argument --epochs: must be at most 2147483647 \(2\*\*31 - 1\)")
    assert out == ""
    code, out, _ = main(capsys, "train", "--epochs", "1e1", "-q")  # 1e1 is the integer 10
    assert code == 0 and out.startswith("did not converge after 10 epochs")


@pytest.mark.parametrize("changes, pattern", [
    ({"final_bias": -16.0}, "parameter final_bias is a float, not a tensor"),
    ({"final_bias": torch.tensor(1)}, "parameter final_bias is int64"),
    ({"final_bias": torch.tensor(1.0, dtype=torch.half)}, "parameter final_bias is float16"),
])
def test_crafted_model_files_are_one_line(tmp_path, capsys, changes, pattern):
    state = dict(biasfit.BasicNN(-16.0).state_dict(), **changes)
    torch.save({"format": "biasfit-model-1", "state_dict": state, "metadata": "{}"},
               tmp_path / "m.pt")
    code, _, err = main(capsys, "predict", "--model", tmp_path / "m.pt", "--x", "0.5")
    one_line(code, err, 1, pattern)


def test_a_foreign_pickle_as_model_prints_no_warning(tmp_path, capsys):
    import pickle
    (tmp_path / "p.pt").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    code, _, err = main(capsys, "predict", "--model", tmp_path / "p.pt", "--x", "0.5")
    one_line(code, err, 1, "is not a biasfit model file")


def test_dev_zero_is_refused_without_reading_it(capsys):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero here")
    code, _, err = main(capsys, "train", "--data", "/dev/zero")
    one_line(code, err, 1, "/dev/zero is not a UTF-8 text, .npy, .npz or Parquet file")


def test_a_utf8_bom_csv_reads_like_any_other(tmp_path, capsys):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffdose,effect\r\n0,0\r\n0.5,1\r\n1,0\r\n".encode())
    code, out, err = main(capsys, "train", "--data", path, "--x-col", "dose",
                          "--y-col", "effect", "-q")
    assert (code, err) == (0, "")
    assert out == "converged after 34 epochs: final_bias = -16.0019, total_loss = 6.59e-05\n"
    plain = tmp_path / "plain.csv"
    plain.write_bytes("\ufeff0,0\n0.5,1\n1,0\n".encode())
    assert main(capsys, "train", "--data", plain, "-q")[1] == out


def test_predict_refuses_inputs_that_give_non_finite_output(tmp_path, capsys):
    save_model(tmp_path / "m.pt", biasfit.BasicNN(-16.0), {})
    code, out, err = main(capsys, "predict", "--model", tmp_path / "m.pt", "--x", "0.5", "1e38")
    one_line(code, err, 2, r"--x 1e\+38: the model's output is not a finite float32 number")
    assert out == ""
    (tmp_path / "x.csv").write_text("x\n0.5\n3e38\n")
    code, _, err = main(capsys, "predict", "--model", tmp_path / "m.pt", "--data",
                        tmp_path / "x.csv")
    one_line(code, err, 1, r"x.csv row 2 \(x = 3e\+38\): the model's output is not a finite")


def test_save_keeps_a_file_it_did_not_write_and_replaces_a_model(tmp_path, capsys):
    data = tmp_path / "doses.csv"
    data.write_text("x,y\n0,0\n0.5,1\n1,0\n")
    code, _, err = main(capsys, "train", "-q", "--data", data, "--save", data)
    one_line(code, err, 2, "exists and is not a biasfit model file")
    assert data.read_text() == "x,y\n0,0\n0.5,1\n1,0\n"
    model = tmp_path / "m.pt"
    for epochs in (3, 5):  # the second save replaces the first's model
        assert main(capsys, "train", "-q", "--epochs", epochs, "--save", model)[0] == 0
    assert load_model(model)[1]["settings"]["epochs"] == 5


def test_one_epoch_is_singular(capsys):
    code, out, _ = main(capsys, "train", "-q", "--tol", 200, "--epochs", 5)
    assert code == 0 and out.startswith("converged after 1 epoch: "), out


def test_zero_epochs_reports_the_starting_bias_and_no_loss(capsys):
    code, out, err = main(capsys, "train", "--epochs", "0", "--init-bias", "-2")
    assert (code, err) == (0, "")
    assert out == ("ran no epochs (--epochs 0): final_bias = -2.0000, the starting value; "
                   "no loss was computed\n")
    assert "nan" not in out


@pytest.mark.parametrize("engine", ["autograd", "fused"])
def test_a_stalled_fit_stops_and_says_to_scale_lr(tmp_path, capsys, engine):
    x = np.linspace(0, 1, 200)
    with torch.no_grad():
        y = biasfit.BasicNN(-16.0, dtype=torch.float64)(torch.from_numpy(x)).numpy()
    np.save(tmp_path / "d.npy", np.stack([x, y], axis=1))
    code, out, err = main(capsys, "train", "--data", tmp_path / "d.npy", "--engine", engine)
    one_line(code, err, 1, "the fit stalled at epoch 1: .* every output unit off .* "
                           r"all 200 points.*1/N \(lr/N = 0.0005\)")
    assert len(out.splitlines()) == 2  # epochs 0 and 1, not 99 identical ones


def test_quiet_and_log_every(capsys):
    code, out, _ = main(capsys, "train", "--quiet")
    assert code == 0 and out.splitlines() == [
        "converged after 34 epochs: final_bias = -16.0019, total_loss = 6.59e-05"]
    code, out, _ = main(capsys, "train", "--log-every", "10")
    epochs = [int(line.split()[1]) for line in out.splitlines()[:-1]]
    assert epochs == [0, 10, 20, 30, 34]  # every 10th and the last
    code, _, err = main(capsys, "train", "--log-every", "0")
    one_line(code, err, 2, "argument --log-every: must be >= 1")


def test_help_says_the_loss_is_summed_and_shows_examples(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "SUM of squared errors" in text and "Scale lr by 1/N" in text
    assert "examples:" in text and "--data - --json" in text
    for option, words in (("--device", "where the data and the fit live"),
                          ("--dtype", "precision of the data"),
                          ("--engine", "fused (the default)")):
        assert words in text, option
    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    assert "a model file written by biasfit train --save" in capsys.readouterr().out


def test_the_fused_engine_starts_without_torch_dynamo():
    code = ("import sys; from biasfit import cli; cli.main(['train', '-q', '--engine', "
            "'fused']); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=CHILD_CWD, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.splitlines()[-1] == "False", out.stderr


def test_plot_reaches_the_peak_names_the_columns_and_says_converged(tmp_path, capsys,
                                                                    monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure
    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kw: saved.append(fig))
    path = tmp_path / "d.csv"
    path.write_text("dose,effect\n0,0\n0.5,1\n1,0\n")
    code, out, _ = main(capsys, "train", "--data", path, "--x-col", "dose", "--y-col",
                        "effect", "--plot", tmp_path / "f.png")
    assert code == 0
    left = saved[0].axes[0]
    assert left.get_xlabel() == "input (dose)" and left.get_ylabel() == "output (effect)"
    assert left.get_title() == "converged after 34 epochs: final_bias = -16.0019"
    assert "converged after 34 epochs: final_bias = -16.0019" in out
    curve_x, curve_y = left.lines[0].get_data()
    model = biasfit.BasicNN(-16.00188255)
    assert max(curve_y) == pytest.approx(model(torch.tensor([0.5])).item(), abs=1e-6)
    assert 0.5 in list(curve_x)
    code, _, _ = main(capsys, "train", "--epochs", "3", "--plot", tmp_path / "g.png")
    assert saved[1].axes[0].get_title().startswith("did not converge after 3 epochs")


def test_the_sampled_curve_reaches_the_true_peak():
    # final_bias -15.09 peaks at 1.92, on the kink at x = 0.5; data from an
    # off-grid range, so an even grid alone misses the kink.
    from biasfit.plot import curve_points
    model = biasfit.BasicNN(-15.09, dtype=torch.float64)
    x = torch.tensor([-0.0123, 0.31, 0.97], dtype=torch.float64)
    with torch.no_grad():
        sampled = model(curve_points(model, x)).max().item()
        dense = model(torch.linspace(-0.0123, 0.97, 1_000_001, dtype=torch.float64)).max()
    assert sampled == pytest.approx(1.92, abs=1e-12) and sampled >= dense.item()


# -- as a user runs it: signals, pipes, stdin ---------------------------------------

LONG_FIT = ["train", "--epochs", "1000000", "--tol", "0"]


def test_ctrl_c_during_train_exits_130_with_one_line():
    proc = subprocess.Popen([BIASFIT, *LONG_FIT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        assert proc.stdout.readline().startswith("epoch    0")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err == "biasfit train: interrupted\n"


def test_output_into_a_closed_pipe_exits_quietly():
    proc = subprocess.Popen([BIASFIT, *LONG_FIT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        proc.stdout.readline()
        proc.stdout.close()  # what `| head -1` does after its line
        err = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 141 and err == b""


def test_data_from_stdin():
    proc = subprocess.run([BIASFIT, "train", "--data", "-", "-q"], input="x,y\n0,0\n0.5,1\n1,0\n",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("converged after 34 epochs")
