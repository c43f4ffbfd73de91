"""What the benchmarks run: the data, one runner per kernel, and the check.

Every runner trains final_bias with the tutorial's loop on (x, y) and returns
(epochs_run, final_bias, losses), the shape of biasfit.reference's results, so
one check compares any kernel with the reference. `losses` has one entry per
epoch evaluated: its length is the epoch count a time is divided by.
"""
import functools
import math
import os
import tempfile
import time

import torch

import biasfit
from biasfit import reference

# Labels come from the tutorial network at its trained bias, plus noise, so
# both sides of every relu carry points (x < 0 kills the bottom unit, x < 0.5
# the top one, and the final relu clips the bump's flanks).
TRUE_BIAS = -16.0
NOISE = 0.05
X_RANGE = (-0.5, 1.5)
TUTORIAL_N = 3  # the tutorial's own three points, fitted to convergence

# The data sets, by name: (x range, the bias the labels come from, the bias a
# fit starts at). "tutorial": the above, most output units off at the fitted
# bias. "dense": x in [0, 1] and bias 5, where hidden + 5 >= 4.34, so every
# output unit is on at the start and stays on: every point feeds the gradient
# every epoch, and no regrouping can skip any.
DATASETS = {"tutorial": (X_RANGE, TRUE_BIAS, 0.0), "dense": ((0.0, 1.0), 5.0, 5.0)}

# The tutorial's loop: SGD, lr 0.1 on the summed loss, stop below 1e-4 within
# 100 epochs. On N random points the summed gradient grows with N, so the step
# is scaled by 3 / N to keep the tutorial's step per point (0.1 / 3 of a
# three-point sum) and a stable, non-trivial trajectory.
TUTORIAL_LR, TUTORIAL_TOL, TUTORIAL_EPOCHS = 0.1, 1e-4, 100

# How far a kernel may sit from the reference, relative, per dtype. float32
# reference losses are float32 sums of up to 1e8 squares (torch's cascade
# sum, error ~ eps * log2 N); biasfit sums in double, so the two differ by the
# reference's rounding, which 100 SGD steps then carry into the bias.
LOSS_RTOL = {torch.float32: 1e-4, torch.float64: 1e-9}
BIAS_RTOL = {torch.float32: 1e-4, torch.float64: 1e-9}
# Losses near zero (the converged tutorial's last epochs) compare absolutely.
LOSS_ATOL = {torch.float32: 1e-6, torch.float64: 1e-12}


@functools.lru_cache(maxsize=1)  # a size's kernels share it; 1e8 takes seconds to make
def make_data(n, dtype=torch.float32, device="cpu", seed=0, dataset="tutorial"):
    """The tutorial's three points for n == 3, else n random ones of `dataset`
    (see DATASETS). Callers must not modify them."""
    if n == TUTORIAL_N:
        x, y = biasfit.tutorial_data()
    else:
        gen = torch.Generator().manual_seed(seed)
        (lo, hi), true_bias, _ = DATASETS[dataset]
        x = torch.rand(n, generator=gen, dtype=torch.float64) * (hi - lo) + lo
        truth = reference.TutorialNN(true_bias, dtype=torch.float64)
        with torch.no_grad():
            y = truth(x) + NOISE * torch.randn(n, generator=gen, dtype=torch.float64)
    return x.to(device, dtype), y.to(device, dtype)


def fit_settings(n, epochs):
    """(lr, epochs, tol): the tutorial's to convergence for n == 3, else
    exactly `epochs` epochs (tol 0 never stops early)."""
    if n == TUTORIAL_N:
        return TUTORIAL_LR, TUTORIAL_EPOCHS, TUTORIAL_TOL
    return TUTORIAL_LR * TUTORIAL_N / n, epochs, 0.0


def bytes_per_epoch(x, y):
    return x.numel() * x.element_size() + y.numel() * y.element_size()


# -- the kernels ----------------------------------------------------------------
# Each kernel is a class: prepare() does the untimed work (building models,
# compiling), setup() resets state before each timed round, run() is timed.

class _ModelRunner:
    """A model reused across rounds (so torch.compile's guards hold), reset
    to bias 0 with a fresh SGD before each round."""
    module = reference.TutorialNN
    loss_fn = None

    def __init__(self, x, y, lr, epochs, tol):
        self.x, self.y, self.lr, self.epochs, self.tol = x, y, lr, epochs, tol
        self.model = self.module(dtype=x.dtype).to(x.device)
        self.optimizer = None

    def setup(self):
        with torch.no_grad():
            self.model.final_bias.zero_()
        self.model.final_bias.grad = None
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.lr)

    def prepare(self):
        return {}


class Tutorial(_ModelRunner):
    """The tutorial's per-sample loop: a forward and backward per point."""

    def run(self):
        return reference.tutorial_fit(self.model, self.x, self.y, self.optimizer,
                                      self.epochs, self.tol)


class Eager(_ModelRunner):
    """Whole-tensor eager PyTorch: autograd and torch.optim.SGD."""

    def run(self):
        return reference.vectorized_fit(self.model, self.x, self.y, self.optimizer,
                                        self.epochs, self.tol, loss_fn=self.loss_fn)


CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


class Compiled(Eager):
    """Eager's loop with its loss (forward and backward) under torch.compile."""

    def prepare(self):
        # Each size compiles from scratch into an empty on-disk cache, so the
        # compile time is a first run's, whatever earlier runs left behind
        # (in-process caches of earlier sizes remain).
        torch._dynamo.reset()
        self.loss_fn = torch.compile(reference.vectorized_loss, dynamic=False)
        saved = os.environ.get(CACHE_ENV)
        with tempfile.TemporaryDirectory() as cache:
            os.environ[CACHE_ENV] = cache
            try:
                start = time.perf_counter()
                self.setup()
                reference.vectorized_fit(self.model, self.x, self.y, self.optimizer, 1, 0.0,
                                         loss_fn=self.loss_fn)
                took = time.perf_counter() - start
            finally:
                if saved is None:
                    os.environ.pop(CACHE_ENV, None)
                else:
                    os.environ[CACHE_ENV] = saved
        return {"compile_s": took}


class Autograd(_ModelRunner):
    """biasfit.fit's autograd engine: the fused loss op, backward, SGD."""
    module = biasfit.BasicNN
    engine = "autograd"

    def run(self):
        r = biasfit.fit(self.model, self.x, self.y, optimizer=self.optimizer,
                        epochs=self.epochs, tol=self.tol, engine=self.engine)
        return r.epochs_run, r.final_bias, r.losses


class FusedFit(Autograd):
    """The fused trainer through biasfit.fit(engine="fused"): the same native
    call plus the nn.Module and optimizer plumbing around it."""
    engine = "fused"


class Fused:
    """biasfit's fused trainer, biasfit.fit_fused: every epoch in one native call."""

    def __init__(self, x, y, lr, epochs, tol, bias=0.0):
        self.x, self.y, self.lr, self.epochs, self.tol, self.bias = x, y, lr, epochs, tol, bias

    def prepare(self):
        return {}

    def setup(self):
        pass

    def run(self):
        r = biasfit.fit_fused(self.x, self.y, bias=self.bias, lr=self.lr, epochs=self.epochs,
                              tol=self.tol)
        return r.epochs_run, r.final_bias, r.losses


class Read:
    """The bandwidth baseline: one plain sum over inputs and labels an epoch,
    the least any kernel must do with the same bytes."""

    def __init__(self, x, y, lr, epochs, tol, bias=0.0):
        self.x, self.y, self.epochs = x, y, epochs

    def prepare(self):
        return {}

    def setup(self):
        pass

    def run(self):
        for _ in range(self.epochs):
            sx, sy = self.x.sum(), self.y.sum()
        if self.x.is_cuda:
            torch.cuda.synchronize()
        return sx, sy


KERNELS = {"tutorial": Tutorial, "eager": Eager, "compiled": Compiled,
           "autograd": Autograd, "fused-fit": FusedFit, "fused": Fused, "read": Read}


# -- checks -----------------------------------------------------------------------

def reference_fit(x, y, lr, epochs, tol, bias=0.0):
    """The reference result: the tutorial's own loop on its three points, eager
    vectorized PyTorch (in x's dtype, on the CPU) for random data, from `bias`."""
    cls = Tutorial if x.numel() == TUTORIAL_N else Eager
    runner = cls(x.cpu(), y.cpu(), lr, epochs, tol)
    runner.setup()
    with torch.no_grad():
        runner.model.final_bias.fill_(bias)
    return runner.run()


def check_fit(result, expected, dtype):
    """Raises AssertionError unless `result` matches `expected`."""
    epochs_run, bias, losses = result
    want_epochs, want_bias, want_losses = expected
    assert epochs_run == want_epochs, f"stopped at epoch {epochs_run}, reference {want_epochs}"
    assert len(losses) == len(want_losses), (len(losses), len(want_losses))
    assert math.isclose(bias, want_bias, rel_tol=BIAS_RTOL[dtype]), (
        f"final_bias {bias!r}, reference {want_bias!r}")
    got = torch.tensor(losses, dtype=torch.float64)
    want = torch.tensor(want_losses, dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=LOSS_RTOL[dtype], atol=LOSS_ATOL[dtype],
                               msg=lambda m: f"losses differ from the reference: {m}")


def check_read(result, x, y, dtype):
    """The read baseline's sums against float64 ones, so it reads every byte."""
    for got, data in zip(result, (x, y)):
        want = data.double().sum().item()
        scale = data.double().abs().sum().item()
        assert abs(got.item() - want) <= LOSS_RTOL[dtype] * max(scale, 1.0), (got, want)
