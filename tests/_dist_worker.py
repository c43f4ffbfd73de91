"""One rank of the process groups that tests/test_distributed.py starts.

Run as a script with torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT): `python _dist_worker.py CASES.json OUT.json`. It joins a gloo
group, runs every case in turn on its shard (a case with a "kind" breaks
rank spec["rank"] in that way), and writes one result (or the error it
raised) per case: cases that fail cleanly leave the group usable. test_distributed.py imports the
same make_data/run_fit to compute the single-process reference.
"""
import datetime
import json
import os
import sys
import time
import warnings

import torch

import biasfit
from biasfit import distributed
from biasfit.model import PARAM_NAMES


def make_data(spec):
    """The whole data set of a case, the same on every rank and in pytest."""
    dtype = getattr(torch, spec.get("dtype", "float64"))
    if spec["data"] == "tutorial":
        x, y = biasfit.tutorial_data()
        return x.to(dtype), y.to(dtype)
    gen = torch.Generator().manual_seed(spec["seed"])
    x = torch.rand(spec["n"], generator=gen, dtype=torch.float64)
    # A bump like the tutorial's (0 at the ends, 1 in the middle) plus
    # noise, so the loss keeps a floor and losses compare in relative terms.
    y = 1 - (2 * x - 1).abs() + 0.05 * torch.randn(spec["n"], generator=gen,
                                                   dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def shard(spec, rank, world, x, y):
    sizes = spec.get("sizes", {}).get(str(world))
    if sizes is None:
        rows = distributed.shard_rows(len(x), rank, world)
    else:
        start = sum(sizes[:rank])
        rows = slice(start, start + sizes[rank])
    return x[rows], y[rows]


def make_optimizer(spec, model):
    name, kwargs = spec.get("optimizer", ["SGD", {}])
    return getattr(torch.optim, name)(model.parameters(), **kwargs)


PARAMS = PARAM_NAMES


def run_fit(spec, x, y, model=None, callback=None):
    """spec["train"]: the parameters that train (default: the model's own
    choice, final_bias alone); spec["bias"]: the starting final_bias of the
    default model."""
    model = model or biasfit.BasicNN(final_bias=spec.get("bias", 0.0), dtype=x.dtype)
    if "train" in spec:
        for name in PARAMS:
            getattr(model, name).requires_grad_(name in spec["train"])
    stop = {k: spec[k] for k in ("reduction", "rtol", "patience", "on_stall") if k in spec}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = biasfit.fit(model, x, y, optimizer=make_optimizer(spec, model),
                             epochs=spec.get("epochs", 100), tol=spec.get("tol", 1e-4),
                             engine=spec["engine"], callback=callback, **stop)
    stalls = [str(w.message) for w in caught
              if issubclass(w.category, biasfit.StalledWarning)]
    return {"epochs_run": result.epochs_run, "final_bias": result.final_bias,
            "losses": result.losses, "converged": result.converged,
            "stop_reason": result.stop_reason, "stall_epoch": result.stall_epoch,
            "stall_warnings": stalls,
            "model_bias": model.final_bias.item(), "params": result.params,
            "model_params": {n: getattr(model, n).item() for n in PARAMS}}


class FailingNN(biasfit.BasicNN):
    """Does `action` instead of computing the loss at call number `at`."""

    def __init__(self, action, at, dtype):
        super().__init__(dtype=dtype)
        self.action, self.at, self.calls = action, at, 0

    def loss(self, inputs, labels):
        self.calls += 1
        if self.calls == self.at:
            if self.action == "raise":
                raise RuntimeError("injected failure")
            if self.action == "exit":
                os._exit(3)
            if self.action == "hang":
                time.sleep(600)
        return super().loss(inputs, labels)


def failing_callback(at, message):
    def callback(epoch, loss, bias):
        if epoch == at:
            raise RuntimeError(message)
    return callback


def failing_case(spec, rank, world):
    """Rank `spec['rank']` gets a broken shard, setting, model or callback
    ("all_empty", "diverge" and "callback_everywhere" break every rank)."""
    x, y = shard(spec, rank, world, *make_data(spec))
    model = callback = None
    if spec["kind"] == "all_empty":
        x, y = x[:0], y[:0]
    elif spec["kind"] == "diverge":  # labels far above every output, on every rank
        y = y + 1e3
    elif spec["kind"] == "callback_everywhere":
        callback = failing_callback(spec["at"], f"stop at epoch {spec['at']}")
    elif rank == spec["rank"]:
        kind = spec["kind"]
        if kind == "short_labels":
            y = y[:-1]
        elif kind == "dtype":
            x, y = x.float(), y.float()
        elif kind == "empty":
            x, y = x[:0], y[:0]
        elif kind == "lr":
            spec = dict(spec, optimizer=["SGD", {"lr": 0.2}])
        elif kind == "start_bias":
            spec = dict(spec, bias=-14.0)
        elif kind == "trains":
            spec = dict(spec, train=spec["train"] + ["w00"])
        elif kind == "nan":
            x = x.clone()
            x[0] = float("nan")
        elif kind == "weights":
            model = biasfit.BasicNN(dtype=x.dtype)
            with torch.no_grad():
                model.w00.fill_(1.8)
        elif kind == "callback":
            callback = failing_callback(spec["at"], "injected callback failure")
        else:
            model = FailingNN(kind, spec.get("at", 3), x.dtype)
    return run_fit(spec, x, y, model, callback)


def fit_case(spec, rank, world):
    return run_fit(spec, *shard(spec, rank, world, *make_data(spec)))


def main():
    cases_file, out_file = sys.argv[1:]
    torch.set_num_threads(1)  # several ranks share this machine's cores
    # Generous while the ranks start (they import torch at different
    # speeds on a busy machine), then the test's own timeout for the fits.
    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    torch.distributed.barrier()
    timeout = datetime.timedelta(seconds=float(os.environ["BIASFIT_TEST_PG_TIMEOUT"]))
    torch.distributed.distributed_c10d._set_pg_timeout(timeout)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    with open(cases_file) as f:
        cases = json.load(f)
    results = []
    for spec in cases:
        start = time.monotonic()
        try:
            run = failing_case if "kind" in spec else fit_case
            results.append(run(spec, rank, world))
        except Exception as e:  # the test reads what every rank raised
            results.append({"error": type(e).__name__, "message": str(e)})
        results[-1]["seconds"] = time.monotonic() - start
        # Written after every case: a rank that a later case kills or hangs
        # still leaves its earlier results.
        with open(out_file, "w") as f:
            json.dump(results, f)
    # A peer that died leaves this group unusable; do not wait on it.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
