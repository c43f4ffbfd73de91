"""`biasfit train --group-col`: the group table and the bootstrap's
intervals against a Python loop over single fits (fit_fused), and the
one-line errors."""
import csv
import io
import json

import numpy as np
import pytest
import torch

import biasfit
from biasfit import cli, cli_groups

PLATE = """compound,dose,effect
A,0.0,0.0
A,0.5,1.0
A,1.0,0.0
B,0.0,0.0
B,0.25,0.4
B,0.5,1.0
B,0.75,0.5
B,1.0,0.0
A2,0.0,0.1
C,0.5,0.9
A2,0.5,0.9
A2,1.0,0.0
"""
GROUPS = {"A": ([0.0, 0.5, 1.0], [0.0, 1.0, 0.0]),
          "B": ([0.0, 0.25, 0.5, 0.75, 1.0], [0.0, 0.4, 1.0, 0.5, 0.0]),
          "A2": ([0.0, 0.5, 1.0], [0.1, 0.9, 0.0]), "C": ([0.5], [0.9])}


def run(tmp_path, capsys, *args, text=PLATE):
    path = tmp_path / "plate.csv"
    path.write_text(text)
    code = cli.main(["train", "--data", str(path), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def single(x, y, **kw):
    try:
        r = biasfit.fit_fused(torch.tensor(x), torch.tensor(y), on_stall="raise", **kw)
        status = {"converged": "converged", "plateau": "plateau", "max_epochs": "exhausted"}
        return r.epochs_run, r.final_bias, r.final_loss, status[r.stop_reason]
    except biasfit.StalledError as e:
        return e.epoch, e.result.final_bias, e.result.final_loss, "stalled"


@pytest.mark.parametrize("args, kw", [
    ((), {}),
    (("--reduction", "mean", "--rtol", "0.01", "--patience", "3"),
     dict(reduction="mean", rtol=0.01, patience=3)),
])
def test_group_table_equals_single_fits(tmp_path, capsys, args, kw):
    code, out, _ = run(tmp_path, capsys, "--group-col", "compound", "--json", "--lr", "0.05",
                       *args)
    assert code == 0
    rows = json.loads(out)
    assert [r["group"] for r in rows] == list(GROUPS)
    for row in rows:
        x, y = GROUPS[row["group"]]
        epochs, bias, loss, status = single(x, y, lr=0.05, **kw)
        assert (row["points"], row["epochs"], row["final_bias"], row["status"]) == \
            (len(x), epochs, bias, status)
        assert row["loss"] == loss


def test_csv_table(tmp_path, capsys):
    code, out, _ = run(tmp_path, capsys, "--group-col", "0")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and list(rows[0]) == ["group", "points", "epochs", "final_bias", "loss",
                                           "status"]
    assert rows[0]["group"] == "A" and rows[0]["epochs"] == "34"


def test_bootstrap_intervals_equal_a_loop(tmp_path, capsys):
    code, out, _ = run(tmp_path, capsys, "--group-col", "compound", "--bootstrap", "40",
                       "--seed", "3", "--ci", "0.9", "--json")
    assert code == 0
    rows = json.loads(out)
    draws = cli_groups.resample_indices([len(GROUPS[k][0]) for k in GROUPS], 40, 3)
    for row, key, idxs in zip(rows, GROUPS, draws):
        x, y = (np.array(v, dtype=np.float32) for v in GROUPS[key])
        biases = []
        for idx in idxs:
            epochs, bias, loss, status = single(x[idx].tolist(), y[idx].tolist())
            if status in ("converged", "exhausted"):
                biases.append(bias)
        lo, hi = np.quantile(biases, [0.05, 0.95])
        assert row["bootstrap_ok"] == len(biases)
        assert (row["final_bias_lo"], row["final_bias_hi"]) == (lo, hi)


@pytest.mark.parametrize("args, text, words", [
    (("--group-col", "plate"), PLATE, "no group column 'plate'"),
    (("--group-col", "compound"), PLATE + ",0.5,0.5\n", "empty group"),
    (("--group-col", "compound"), PLATE + "D,nan,0.5\n", "non-finite"),
    (("--group-col", "compound"), PLATE + "D,inf,0.5\n", "non-finite"),
    (("--group-col", "compound", "--ci", "1.5"), PLATE, "--ci must be in (0, 1)"),
])
def test_errors_are_one_line(tmp_path, capsys, args, text, words):
    code, out, err = run(tmp_path, capsys, *args, text=text)
    assert code != 0 and out == ""
    assert len(err.strip().splitlines()) == 1 and words in err


def test_without_group_col_train_is_unchanged(tmp_path, capsys):
    code = cli.main(["train", "--quiet", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["result"]["epochs_run"] == 34
