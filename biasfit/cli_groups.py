"""`biasfit train --group-col COL`: one fit per group of rows, all in one
biasfit.fit_many call, written as a table (CSV, or JSON with --json):
group, points, epochs, final_bias, loss, status. `--bootstrap B [--seed S]
[--ci 0.95]` refits B resamples of each group (rows drawn with replacement)
in the same call and adds percentile intervals of final_bias.

cli.py's train command hands over here when --group-col is given
(with_group_options, the hook at its end).
"""
import csv
import json
import math
import sys

import numpy as np
import torch

import biasfit

from .datafile import DataFileError


def with_group_options(build_parser):
    """build_parser with train's group options, and train's run handing a
    grouped call to train_groups."""

    def build():
        parser = build_parser()
        sub = next(a for a in parser._actions if hasattr(a, "choices")
                   and isinstance(a.choices, dict) and "train" in a.choices)
        train = sub.choices["train"]
        grouped = train.add_argument_group("one fit per group (biasfit.fit_many)")
        grouped.add_argument("--group-col", metavar="COL",
                             help="fit one curve per value of this column (header name or "
                                  "0-based index of a CSV with a header)")
        grouped.add_argument("--bootstrap", type=int, default=0, metavar="B",
                             help="also refit B resamples of each group and report "
                                  "percentile intervals of final_bias (0)")
        grouped.add_argument("--seed", type=int, default=0, help="the resamples' seed (0)")
        grouped.add_argument("--ci", type=float, default=0.95,
                             help="the intervals' coverage, in (0, 1) (0.95)")
        single = train.get_default("run")

        def run(args):
            return train_groups(args) if args.group_col is not None else single(args)

        train.set_defaults(run=run)
        return parser

    return build


def _column(names, wanted, role):
    if wanted is None:
        return None
    if wanted in names:
        return names.index(wanted)
    if wanted.isdigit() and int(wanted) < len(names):
        return int(wanted)
    raise DataFileError(f"no {role} column {wanted!r}: the header has "
                        f"{', '.join(names)}")


def read_groups(path, group_col, x_col=None, y_col=None):
    """(group names in order of first appearance, x per group, y per group,
    the x and y columns' names) from a CSV with a header."""
    if path in (None, "-"):
        raise DataFileError("--group-col needs --data FILE (a CSV with a header)")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise DataFileError(f"{path} is empty")
    names = [n.strip() for n in rows[0]]
    g = _column(names, group_col, "group")
    rest = [i for i in range(len(names)) if i != g]
    xi = _column(names, x_col, "x") if x_col is not None else rest[0] if rest else None
    yi = _column(names, y_col, "y") if y_col is not None else (
        [i for i in rest if i != xi] or [None])[0]
    if xi is None or yi is None:
        raise DataFileError(f"{path}: needs an x and a y column beside the group column")
    groups = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(names):
            raise DataFileError(f"{path}, line {line}: {len(row)} fields, the header has "
                                f"{len(names)}")
        key = row[g].strip()
        if not key:
            raise DataFileError(f"{path}, line {line}: empty group in column {names[g]!r}")
        try:
            x, y = float(row[xi]), float(row[yi])
        except ValueError:
            raise DataFileError(f"{path}, line {line}: {row[xi]!r} or {row[yi]!r} is not a "
                                f"number") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise DataFileError(f"{path}, line {line}: non-finite value "
                                f"({names[xi]}={row[xi]}, {names[yi]}={row[yi]})")
        groups.setdefault(key, ([], []))
        groups[key][0].append(x)
        groups[key][1].append(y)
    if not groups:
        raise DataFileError(f"{path}: no data rows")
    keys = list(groups)
    return keys, [groups[k][0] for k in keys], [groups[k][1] for k in keys], (names[xi],
                                                                              names[yi])


def resample_indices(sizes, resamples, seed):
    """For each group (in order) `resamples` index arrays, each drawn with
    replacement from range(size): the bootstrap's rows."""
    rng = np.random.default_rng(seed)
    return [[rng.integers(0, n, n) for _ in range(resamples)] for n in sizes]


def fit_groups(xs, ys, resamples, *, dtype, **settings):
    """fit_many over the groups, then each group's resamples, in one call."""
    parts_x = [np.asarray(x) for x in xs]
    parts_y = [np.asarray(y) for y in ys]
    for x, y, draws in zip(xs, ys, resamples):
        for idx in draws:
            parts_x.append(np.asarray(x)[idx])
            parts_y.append(np.asarray(y)[idx])
    offsets = np.cumsum([0] + [len(p) for p in parts_x])
    flat_x = torch.tensor(np.concatenate(parts_x), dtype=dtype)
    flat_y = torch.tensor(np.concatenate(parts_y), dtype=dtype)
    return biasfit.fit_many(flat_x, flat_y, offsets=offsets.tolist(), **settings)


def train_groups(args) -> int:
    from .cli import DTYPES, UsageError
    if args.bootstrap < 0:
        raise UsageError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if not 0 < args.ci < 1:
        raise UsageError(f"--ci must be in (0, 1), got {args.ci}")
    if args.device != "cpu":
        raise UsageError("--group-col fits on the CPU (fit_many): drop --device")
    keys, xs, ys, _ = read_groups(args.data, args.group_col, args.x_col, args.y_col)
    draws = resample_indices([len(x) for x in xs], args.bootstrap, args.seed)
    result = fit_groups(xs, ys, draws, dtype=DTYPES[args.dtype], bias=args.init_bias,
                        lr=args.lr, momentum=args.momentum, nesterov=args.nesterov,
                        weight_decay=args.weight_decay, epochs=args.epochs, tol=args.tol,
                        reduction=args.reduction, rtol=args.rtol, patience=args.patience)
    table = table_of(keys, xs, result, args.bootstrap, args.ci)
    write_table(table, args.json, sys.stdout)
    return 0


def table_of(keys, xs, result, resamples, ci):
    """One row per group: group, points, epochs, final_bias, loss, status,
    and with resamples the percentile interval of final_bias over the
    resamples that converged or ran out of epochs (ok: how many)."""
    names = result.status_names()
    bias, loss, epochs = result.final_bias.tolist(), result.loss.tolist(), result.epochs.tolist()
    rows = []
    for g, key in enumerate(keys):
        row = {"group": key, "points": len(xs[g]), "epochs": epochs[g],
               "final_bias": bias[g], "loss": loss[g], "status": names[g]}
        if resamples:
            first = len(keys) + g * resamples
            good = [bias[k] for k in range(first, first + resamples)
                    if names[k] in ("converged", "plateau", "exhausted")]
            lo, hi = (np.quantile(good, [(1 - ci) / 2, 1 - (1 - ci) / 2]).tolist()
                      if good else (math.nan, math.nan))
            row.update({"bootstrap_ok": len(good), "final_bias_lo": lo, "final_bias_hi": hi})
        rows.append(row)
    return rows


def write_table(rows, as_json, out):
    if as_json:
        json.dump(rows, out, indent=1)
        out.write("\n")
        return
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                         for k, v in row.items()})
