"""biasfit.fit_many against batched peers (benchmarks/peers_many.py): fits
per second for K fits of N points, final_bias by SGD (stop at loss < 1e-4 or
100 epochs), or all seven parameters (fit_many against fit(engine="fused")
in a loop: no peer trains them).

The fits: the tutorial's weights; N = 3 is the tutorial's data, larger N
points evenly spaced in [0, 1] labelled by the tutorial's curve (final_bias
-16), lr = 0.3 / N (the tutorial's 0.1 per point of its 3); each fit starts
from its own final_bias in [-2, 2]. Every peer's epochs and final biases
must equal fit_many's before its time counts (fit_fused-loop times the first
FUSED_LOOP_MOST fits only, and its rate is theirs). Peers that sum in
another order (JAX) must give the same epochs and final biases within the
engines' tolerance (tests/tolerances.py's ENGINES); the others, the same bits.

    pytest benchmarks/bench_many.py --benchmark-only --bench-threads 2
    python benchmarks/bench_many.py --threads 1,2 --json out.json

The script interleaves: each round times every (cell, peer) once, in
turn, so load that comes and goes falls on all alike; it prints the median
rate of each and the ratios. By default a subsample of the grid (the
targets' cells); BIASFIT_BENCH_FULL=1 runs every cell: K = 1e2 to 1e6 of
N = 3, 100, 1e4 (at most 1e7 points a cell), float32 and float64, final_bias
alone and all seven.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers_many  # noqa: E402

import biasfit  # noqa: E402
from biasfit.model import TUTORIAL_WEIGHTS  # noqa: E402

EPOCHS, TOL = 100, 1e-4
FUSED_LOOP_MOST = 2000
MAX_POINTS = 10**7
FULL = os.environ.get("BIASFIT_BENCH_FULL", "") not in ("", "0")
# (K, N): the targets' cells by default (K = 1e4 to 1e6 where it fits).
DEFAULT_CELLS = [(10**4, 3), (10**5, 3), (10**6, 3), (10**4, 100), (10**3, 10**4)]
FULL_CELLS = [(k, n) for n in (3, 100, 10**4) for k in (10**2, 10**3, 10**4, 10**5, 10**6)
              if k * n <= MAX_POINTS]
PEERS = ("fit_many", "numba-prange", "jax-vmap", "torch-vmap", "fit_fused-loop")


def make_data(K, N, dtype):
    """(X [K, N], Y [K, N], B0 [K], lr)."""
    if N == 3:
        x, y = biasfit.tutorial_data()
    else:
        x = torch.linspace(0, 1, N, dtype=torch.float64)
        w = TUTORIAL_WEIGHTS
        h = torch.relu(x * w[0] + w[1]) * w[2] + torch.relu(x * w[3] + w[4]) * w[5]
        y = torch.relu(h - 16.0)
    X = x.to(dtype).expand(K, N).contiguous()
    Y = y.to(dtype).expand(K, N).contiguous()
    B0 = (torch.rand(K, generator=torch.Generator().manual_seed(K + N), dtype=torch.float64)
          * 4 - 2).to(dtype)
    return X, Y, B0, 0.1 * 3 / N


class Cell:
    """One (K, N, dtype, trained) cell: its data, fit_many's results, and
    each peer's timed call."""

    def __init__(self, K, N, dtype, trained="bias"):
        self.K, self.N, self.dtype, self.trained = K, N, dtype, trained
        self.X, self.Y, self.B0, self.lr = make_data(K, N, dtype)
        self.jax = None
        ref = self.fit_many()
        self.epochs, self.bias = ref.epochs.numpy(), ref.params.numpy()

    def name(self):
        return f"K={self.K:.0e} N={self.N} {str(self.dtype)[6:]} {self.trained}"

    def fit_many(self):
        trained = ("final_bias",) if self.trained == "bias" else biasfit.model.PARAM_NAMES
        return biasfit.fit_many(self.X, self.Y, bias=self.B0, lr=self.lr, epochs=EPOCHS,
                                tol=TOL, trained=trained)

    def call(self, peer):
        """(a callable timing one run, the number of fits it runs), or a reason."""
        if peer == "fit_many":
            return self.fit_many, self.K
        if self.trained != "bias":
            if peer != "fit_fused-loop":
                return "no peer trains all seven"
            return self._all_seven_loop, min(self.K, FUSED_LOOP_MOST)
        why = peers_many.available(peer)
        if why:
            return why
        args = (self.X, self.Y, self.B0, self.lr, EPOCHS, TOL)
        if peer == "numba-prange":
            return lambda: peers_many.numba_prange(*args), self.K
        if peer == "torch-vmap":
            return lambda: peers_many.torch_vmap(*args), self.K
        if peer == "jax-vmap":
            if self.jax is None:
                self.jax = peers_many.JaxData(self.X, self.Y, self.B0)
            return lambda: peers_many.jax_vmap(self.jax, self.lr, EPOCHS, TOL), self.K
        m = min(self.K, FUSED_LOOP_MOST)
        return (lambda: peers_many.fit_fused_loop(self.X[:m], self.Y[:m], self.B0[:m],
                                                  self.lr, EPOCHS, TOL)), m

    def _all_seven_loop(self):
        m = min(self.K, FUSED_LOOP_MOST)
        out = np.empty((m, 7), self.X.numpy().dtype)
        for k in range(m):
            model = biasfit.BasicNN(final_bias=float(self.B0[k]), dtype=self.dtype)
            for p in model.parameters():
                p.requires_grad_(True)
            opt = torch.optim.SGD(model.parameters(), lr=self.lr)
            biasfit.fit(model, self.X[k], self.Y[k], optimizer=opt, epochs=EPOCHS, tol=TOL,
                        engine="fused")
            out[k] = [getattr(model, n).item() for n in biasfit.model.PARAM_NAMES]
        return out

    def check(self, peer, out):
        """Whether a peer's result reproduces fit_many's, per fit."""
        if peer == "fit_many":
            return True
        if self.trained != "bias":
            m = len(out)
            return bool(np.array_equal(out, self.bias[:m]))
        e, b = out
        m = len(e)
        # The same epochs; the final bias within the engines' tolerance
        # (tests/tolerances.py's ENGINES): a peer that sums in another order
        # (JAX's reductions) may differ in the last bits.
        rtol = 1e-5 if self.dtype == torch.float32 else 1e-12
        return bool(np.array_equal(e, self.epochs[:m]) and
                    np.allclose(b, self.bias[:m, 6], rtol=rtol, atol=0))


def cells():
    dtypes = (torch.float32, torch.float64) if FULL else (torch.float32,)
    trained = ("bias", "all7") if FULL else ("bias",)
    grid = FULL_CELLS if FULL else DEFAULT_CELLS
    return [(K, N, d, t) for K, N in grid for d in dtypes for t in trained]


# -- pytest-benchmark ---------------------------------------------------------------

_CELLS = {}


def _cell(K, N, dtype, trained):
    key = (K, N, dtype, trained)
    if key not in _CELLS:
        _CELLS[key] = Cell(*key)
    return _CELLS[key]


@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("K, N, dtype, trained", cells(),
                         ids=lambda v: str(v).replace("torch.", ""))
def test_many(benchmark, K, N, dtype, trained, peer):
    cell = _cell(K, N, dtype, trained)
    call = cell.call(peer)
    if isinstance(call, str):
        pytest.skip(call)
    run, fits = call
    assert cell.check(peer, run()), f"{peer} does not reproduce fit_many's fits"
    benchmark.extra_info.update(K=K, N=N, dtype=str(dtype)[6:], trained=trained, peer=peer,
                                fits=fits, threads=torch.get_num_threads())
    benchmark.pedantic(run, rounds=3, iterations=1)


# -- interleaved script ---------------------------------------------------------------

def set_threads(threads):
    torch.set_num_threads(threads)
    try:
        import numba
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="2", help="comma-separated thread counts")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None, help="write the rates here")
    args = parser.parse_args()
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        set_threads(threads)
        for K, N, dtype, trained in cells():
            cell = Cell(K, N, dtype, trained)
            calls = {}
            for peer in PEERS:
                call = cell.call(peer)
                if isinstance(call, str):
                    continue
                run, fits = call
                if not cell.check(peer, run()):  # also the JIT compiles, untimed
                    print(f"{cell.name()}: {peer} does not reproduce fit_many's fits")
                    continue
                calls[peer] = (run, fits, [])
            for _ in range(args.rounds):
                for peer, (run, fits, times) in calls.items():
                    t = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - t)
            rates = {p: fits / statistics.median(times) for p, (_, fits, times) in calls.items()}
            best_peer = max((r for p, r in rates.items() if p != "fit_many"), default=None)
            row = dict(K=K, N=N, dtype=str(dtype)[6:], trained=trained, threads=threads,
                       rates=rates, ratio=rates["fit_many"] / best_peer if best_peer else None,
                       epochs_mean=float(cell.epochs.mean()))
            rows.append(row)
            print(f"{threads}t {cell.name()}: " + "  ".join(
                f"{p} {r:.3g}" for p, r in rates.items()) +
                (f"  fit_many/best peer {row['ratio']:.2f}x" if best_peer else ""), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
