"""The fused engine: the native trainer's calls, the one decoder of what
they return, and the native steps an epoch loop driven from Python takes.

- direct_sgd / sgd_run / params_run: one whole fit in one native call. The
  bias-only SGD fit goes to the CPU trainer directly (biasfit._direct.fit_sgd,
  which reads the tensors themselves: csrc/direct/read_args.h) wherever it
  can read the arguments as they are, else to torch.ops.biasfit.fit_sgd (any
  device, any view); any other set of trained parameters or optimizer to
  torch.ops.biasfit.fit_params. All give one kind of result (below).
- decode: such a result -> FitResult, or the error that ended it.
- NativeSGD, NativeParams, sgd_parts, params_parts: one epoch's native
  sums and step, for a loop that must run in Python (biasfit/distributed.py
  adds its collectives between them).

The status codes are core/fit.h's FitStatus, exported by biasfit._direct.
"""
import contextlib
import functools

import torch

from . import _direct
from ._direct import BIAS_NONFINITE, CONVERGED, EXHAUSTED, INTERRUPTED, LOSS_NONFINITE, PLATEAU
from .model import PARAM_NAMES, TUTORIAL_WEIGHTS, WEIGHT_NAMES
from .result import DivergedError, FitResult, mark_stalled

# The most epochs one fit may run. Every epoch's loss and bias are kept (16
# bytes in float64), so 2**31 - 1 epochs already hold 32 GiB of history: a
# larger count is a mistake, not a plan.
MAX_EPOCHS = 2**31 - 1

# The optimizers fit_params runs natively (csrc/cpu/trainer_params.h's
# OptimizerKind), with torch.optim's update rules.
OPTIMIZER_KINDS = {"SGD": 0, "Adam": 1, "AdamW": 2}


@functools.lru_cache(maxsize=None)
def cached_tutorial_weights(dtype, device):
    # Cached: for the tutorial's 3 points, building this tensor on every call
    # would cost a noticeable part of the whole fit. Never handed out (callers
    # could write to it): the trainers read it, tutorial_weights hands out copies.
    return torch.tensor(TUTORIAL_WEIGHTS, dtype=dtype, device=device)


def tutorial_weights(like: torch.Tensor) -> torch.Tensor:
    """The tutorial's six frozen weights in `like`'s dtype and device: a new
    tensor each call, so writing to it changes nothing else."""
    return cached_tutorial_weights(like.dtype, like.device).clone()


def weights_tensor(weights, like: torch.Tensor) -> torch.Tensor:
    """The six weights as direct_sgd takes them (None: the tutorial's; a
    tensor; a BasicNN's _parameters) as one tensor, for a pass in torch."""
    if weights is None:
        return cached_tutorial_weights(like.dtype, like.device)
    if isinstance(weights, dict):
        return torch.stack([weights[n].detach() for n in WEIGHT_NAMES])
    return weights


_cpu = torch.device("cpu")
_direct.setup(torch.Tensor, torch.nn.Parameter, torch.float32, torch.float64,
              cached_tutorial_weights(torch.float32, _cpu),
              cached_tutorial_weights(torch.float64, _cpu), WEIGHT_NAMES, MAX_EPOCHS,
              torch.get_num_threads)


# FitResult.stop_reason of a native fit that ended without an error.
_REASONS = {CONVERGED: "converged", PLATEAU: "plateau", EXHAUSTED: "max_epochs"}


def _seen(epoch, status) -> int:
    # core/fit.h: a run that stopped at `epoch` evaluated epoch `epoch` too.
    return epoch if status == EXHAUSTED else epoch + 1


# A native fit's result, as every route gives it: (epoch, status, final_bias,
# losses, biases, zero_grad): the epoch it stopped at, its FitStatus, every
# evaluated epoch's loss (a list) and bias (a list, or packed float64 bytes
# from the direct call: no Python float per epoch, unpacked by bias_list
# only for a callback or a stall check), and the first epoch with an exact
# zero gradient and no unit known on (-1: none; None where the trainer does
# not report it: the op). See stall.stall_epoch.

# The bias-only SGD fit by the CPU trainer, called directly on the objects
# themselves: direct_sgd(inputs, labels, weights, bias, lr, momentum,
# dampening, nesterov, weight_decay, maximize, epochs, tol[, out]) -> the
# result above, or None where csrc/direct/read_args.h cannot read them as
# they are. weights: None for the tutorial's, a tensor of six values, or a
# BasicNN's _parameters; bias: a float or a one-value tensor; out: None, or
# a one-value tensor (a model's final_bias) that receives the final bias in
# place if the fit converges or runs out of epochs. Threads:
# torch.get_num_threads().
direct_sgd = _direct.fit_sgd


@contextlib.contextmanager
def reporting(progress):
    """Inside the block, the direct call's fits report progress(epoch, loss,
    bias) of their last recorded epoch about every 0.1 s, as they run (the
    op's route and fit_params report nothing); progress None: no reports."""
    _direct.set_progress(progress)
    try:
        yield
    finally:
        _direct.set_progress(None)


def bias_list(biases) -> list:
    return biases if isinstance(biases, list) else memoryview(biases).cast("d").tolist()


def sgd_run(inputs, labels, weights, start, hyper, epochs, tol, stop=()):
    """The bias-only SGD fit for checked arguments (start: the bias as a
    float, hyper: SGD's settings as floats and bools): the direct call where
    it may read the tensors as they are, else the op. (train._sgd tries the
    direct call on the caller's own arguments first; this second try serves
    the calls it refused only for their numbers' types, an int lr say, now
    plain floats.)"""
    options = (hyper["lr"], hyper["momentum"], hyper["dampening"], hyper["nesterov"],
               hyper["weight_decay"], hyper["maximize"], epochs, tol)
    # stop: () for the tutorial's loop, else (rtol, patience, divide_by).
    run = direct_sgd(inputs, labels, weights, start, *options, *((None,) + stop if stop else ()))
    if run is not None:
        return run
    if weights is None:
        weights = cached_tutorial_weights(inputs.dtype, inputs.device)
    final, losses, biases, info = torch.ops.biasfit.fit_sgd(
        inputs, labels, weights,
        torch.tensor(start, dtype=inputs.dtype, device=inputs.device), *options, *stop)
    epoch, status = info.tolist()
    seen = _seen(epoch, status)
    return epoch, status, final.item(), losses[:seen].tolist(), biases[:seen].tolist(), None


def params_run(inputs, labels, params, trained: int, opts: dict, epochs, tol, stop=()):
    """fit_params's whole fit: any subset of the seven parameters (bit i of
    `trained`: PARAM_NAMES[i]) with SGD, Adam or AdamW (opts: see
    NativeParams). Returns the result above, with zero_grad None, and the
    seven final values and the index of the one that became inf or NaN."""
    final, losses, biases, info = torch.ops.biasfit.fit_params(
        inputs, labels, params, trained, *_params_options(opts), int(epochs), float(tol),
        *stop)
    epoch, status, bad = info.tolist()
    if status == INTERRUPTED:  # Ctrl-C inside the op, which cleared it (torch_ops/cpu_ops.cpp)
        raise KeyboardInterrupt
    seen = _seen(epoch, status)
    final = final.tolist()
    return (epoch, status, final[-1], losses[:seen].tolist(), biases[:seen].tolist(),
            None), final, bad


def decode(epoch, status, final_bias, losses, biases, callback, values=None, bad=6,
           stall=None, stop_at_stall=False) -> FitResult:
    """The FitResult of a native fit, or the error that ended it: replays
    the callback over every epoch (the native loop has no Python in it),
    then raises DivergedError for a non-finite loss or parameter (values:
    the seven final values, PARAM_NAMES[bad] the one that became inf or
    NaN; default final_bias). A fit that stalled at epoch `stall`
    (stall.stall_epoch) is marked so (stall.settle warns or raises), and cut
    back there with stop_at_stall."""
    stalled = None
    if stall is not None:
        biases = bias_list(biases)
        stalled = (stall, biases[stall + 1] if stall + 1 < len(biases) else final_bias)
        if stop_at_stall:
            final_bias = stalled[1]
            epoch, losses, biases = stall, losses[:stall + 1], biases[:stall + 1]
    if callback is not None:
        for e, (loss, b) in enumerate(zip(losses, bias_list(biases))):
            callback(e, loss, b)
    if status == LOSS_NONFINITE:
        raise DivergedError(epoch, "the loss", losses[-1])
    if status == BIAS_NONFINITE:
        raise DivergedError(epoch, PARAM_NAMES[bad], final_bias if values is None
                            else values[bad])
    result = FitResult(epoch, final_bias, losses, status == CONVERGED,
                       stop_reason=_REASONS.get(status, "max_epochs"))
    return result if stalled is None else mark_stalled(result, *stalled)


def _params_options(o: dict) -> tuple:
    return (int(o["kind"]), float(o["lr"]), float(o["momentum"]), float(o["dampening"]),
            bool(o["nesterov"]), float(o["weight_decay"]), bool(o["maximize"]),
            float(o["beta1"]), float(o["beta2"]), float(o["eps"]), bool(o["amsgrad"]))


# -- one epoch at a time, for a loop driven from Python -------------------------


class NativeSGD:
    """torch.optim.SGD's update of one parameter, computed by csrc/core/sgd.h as
    the native trainer (fit_sgd) computes it, so an epoch loop driven from
    Python steps with fit_sgd's bits. torch.optim.SGD itself can differ in
    the last bit: its add_(grad, alpha=-lr) is a fused multiply-add on CPUs
    that have one, and core/sgd.h rounds the product first as eager code does.
    """

    def __init__(self, param, *, lr, momentum, dampening, nesterov,
                 weight_decay, maximize):
        self.param = param
        self.hyper = (float(lr), float(momentum), float(dampening), bool(nesterov),
                      float(weight_decay), bool(maximize))
        self.momentum_buffer = None

    def zero_grad(self):
        self.param.grad = None

    def step(self):
        new, buf = torch.ops.biasfit.sgd_step(
            self.param.detach().to(_cpu), self.param.grad.to(_cpu),
            self.momentum_buffer, *self.hyper)
        if self.hyper[1] != 0:  # momentum: torch keeps a buffer from step 1
            self.momentum_buffer = buf
        with torch.no_grad():
            self.param.copy_(new)


class NativeParams:
    """fit_params's optimizer step (csrc/core/sgd.h, core/adam.h) of the seven
    parameters, through the params_step op, so an epoch loop driven from
    Python steps with the native trainer's bits (torch.optim's own step can
    differ in the last bit: see NativeSGD).

    `params` holds the seven values (PARAM_NAMES), stepped in place; `grads`
    the trained ones' gradients for the next step. options: fit_params's
    (kind 0 SGD, 1 Adam, 2 AdamW, lr, momentum, dampening, nesterov,
    weight_decay, maximize, beta1, beta2, eps, amsgrad).
    """

    def __init__(self, params, trained: int, options: dict):
        self.params = params.detach().clone().cpu()
        self.grads = torch.zeros_like(self.params)
        self.trained = int(trained)
        self.options = _params_options(options)
        self.state = torch.zeros(len(PARAM_NAMES), 4, dtype=torch.float64)

    def zero_grad(self):
        self.grads.zero_()

    def step(self):
        new, self.state = torch.ops.biasfit.params_step(
            self.params, self.grads, self.state, self.trained, *self.options)
        self.params.copy_(new)  # in place: views of params see the step


def sgd_parts(inputs, labels, weights, bias, hyper: dict):
    """The bias-only SGD fit's epoch in Python: (local_sums, param,
    optimizer), around the native one-pass op (fit_sgd runs every epoch
    natively and cannot hand over between them). local_sums() -> the loss
    and bias gradient at param, as float64 sums, so float32 shards add up
    as float32 data does in one process: rounded once, after the sum."""
    param = bias.detach().clone()

    def local_sums():
        return torch.ops.biasfit.fused_loss_sums(inputs, labels, weights, param).unbind()

    return local_sums, param, NativeSGD(param, **hyper)


def params_parts(inputs, labels, params, trained: int, options: dict):
    """fit_params's epoch in Python for any subset of the seven parameters:
    (local_sums, optimizer), optimizer a NativeParams. local_sums() -> the
    float64 loss and trained gradients at the optimizer's current params,
    from the native one-pass op that fit_params runs."""
    native = NativeParams(params, trained, options)
    index = [i for i in range(len(PARAM_NAMES)) if (trained >> i) & 1]
    weights, bias = native.params[:6], native.params[6]  # views: they follow each step

    def local_sums():
        # fit_params's passes: the bias-only sums unless a weight trains (the
        # same bits as its own).
        if index and index[0] < 6:
            sums = torch.ops.biasfit.fused_loss_grads_sums(inputs, labels, weights, bias)
            return sums[0], sums[1:][index]
        sums = torch.ops.biasfit.fused_loss_sums(inputs, labels, weights, bias)
        return sums[0], sums[1:1 + len(index)]  # final_bias's gradient, or none

    return local_sums, native
