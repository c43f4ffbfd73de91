"""fit and its engines: the tutorial's training loop.

An epoch evaluates the loss and gradient over all points at the current bias;
training stops before the step once the loss is below `tol`, else the
optimizer steps. Two engines run that loop:

- "autograd": model.loss (the fused native op) + backward + any torch.optim
  optimizer, one Python iteration an epoch.
- "fused": every epoch inside one native call (torch.ops.biasfit.fit_sgd),
  with torch.optim.SGD's update rule; same epochs, losses and bias.

Under torch.distributed (e.g. torchrun) each rank's data is its shard and
both engines run the epoch loop in Python, summing every rank's loss and
gradient each epoch: see biasfit/distributed.py.
"""
import functools
import math
from dataclasses import dataclass, field

import torch

from . import _direct, distributed
from .model import TUTORIAL_WEIGHTS

ENGINES = ("autograd", "fused")

# csrc/fit.h's FitStatus.
_CONVERGED, _EXHAUSTED, _LOSS_NONFINITE, _BIAS_NONFINITE = 1, 2, 3, 4


@dataclass
class FitResult:
    """What a fit did: `epochs_run` is the epoch index it stopped at (the
    tutorial's "Num steps", 34) or `epochs` if it never converged; `losses`
    holds every epoch's total loss in order."""
    epochs_run: int
    final_bias: float
    losses: list = field(default_factory=list)
    converged: bool = False

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else math.nan


class DivergedError(FloatingPointError):
    """The loss or the bias became inf or NaN during a fit."""

    def __init__(self, epoch: int, what: str, value: float):
        self.epoch = epoch
        super().__init__(
            f"biasfit: {what} became {value} at epoch {epoch}; lower lr, or check "
            f"the data for inf/NaN")


def _check_loop_args(lr, epochs, tol):
    if not lr >= 0:  # also NaN
        raise ValueError(f"lr must be >= 0, got {lr}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")


def fit(model, inputs, labels, *, optimizer=None, lr=0.1, epochs=100, tol=1e-4,
        callback=None, engine="autograd"):
    """Train model.final_bias on (inputs, labels) with the tutorial's loop.

    optimizer: any torch.optim optimizer over model.parameters() (default
    SGD(lr=lr)); engine="fused" takes SGD only. callback(epoch, loss, bias) is
    called for every epoch (after the native call, for the fused engine).
    Raises DivergedError if the loss or bias becomes inf or NaN.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    _check_loop_args(lr, epochs, tol)
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    if engine == "fused":
        return _fit_model_fused(model, inputs, labels, optimizer, epochs, tol, callback)

    def local_sums():
        loss = model.loss(inputs, labels)
        loss.backward()
        return loss.detach(), model.final_bias.grad

    settings = {"optimizer": type(optimizer).__name__, "groups": [
        {k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
        "weights": model.weights().tolist()}  # ranks must train one model
    return _run_epochs(local_sums, model.final_bias, optimizer, epochs, tol, callback,
                       (inputs, labels), settings)


def _run_epochs(local_sums, param, optimizer, epochs, tol, callback, data, settings):
    """The epoch loop around local_sums() -> (loss, grad) of this process's
    data at `param`. Under torch.distributed every rank's sums are added
    (biasfit/distributed.py), and every rank steps and stops alike."""
    if not distributed.is_distributed():
        return _epoch_loop(lambda epoch: local_sums(), param, optimizer, epochs, tol,
                           callback)
    distributed.check_shards(*data, dict(settings, bias=param.item(), epochs=epochs, tol=tol))
    local_sums = distributed.shard_sums(local_sums, data[0], param)
    # Every rank runs the loop in lockstep: an exception on one rank, in an
    # epoch's sums, the callback or the step, stops them all.
    with distributed.Lockstep() as lockstep:
        return _epoch_loop(lambda epoch: lockstep.sums(local_sums, epoch, param), param,
                           optimizer, epochs, tol, callback)


def _epoch_loop(sums, param, optimizer, epochs, tol, callback):
    losses = []
    for epoch in range(epochs):
        optimizer.zero_grad()
        loss, grad = sums(epoch)
        param.grad = grad
        value = loss.item()
        bias = param.item()
        losses.append(value)
        if callback is not None:
            callback(epoch, value, bias)
        if not math.isfinite(value):
            raise DivergedError(epoch, "the loss", value)
        if value < tol:
            return FitResult(epoch, bias, losses, True)
        optimizer.step()
        if not math.isfinite(param.item()):
            raise DivergedError(epoch, "final_bias", param.item())
    return FitResult(epochs, param.item(), losses, False)


def _sgd_hyperparameters(optimizer):
    if type(optimizer) is not torch.optim.SGD:
        raise TypeError(
            f"engine='fused' trains with torch.optim.SGD only, got "
            f"{type(optimizer).__name__}; use engine='autograd' for other optimizers")
    if len(optimizer.param_groups) != 1 or any(optimizer.state.values()):
        raise ValueError(
            "engine='fused' needs a fresh SGD with one parameter group "
            "(it starts its momentum buffer from scratch)")
    group = optimizer.param_groups[0]
    return {k: group[k] for k in ("lr", "momentum", "dampening", "nesterov",
                                  "weight_decay", "maximize")}


def _fit_model_fused(model, inputs, labels, optimizer, epochs, tol, callback):
    hyper = _sgd_hyperparameters(optimizer)
    bias = model.final_bias
    result = fit_fused(inputs, labels, weights=model.weights(), bias=bias.detach(),
                       epochs=epochs, tol=tol, callback=callback, **hyper)
    with torch.no_grad():
        bias.fill_(result.final_bias)
    return result


@functools.lru_cache(maxsize=None)
def _tutorial_weights(dtype, device):
    # Cached: for the tutorial's 3 points, building this tensor on every call
    # would cost a noticeable part of the whole fit.
    return torch.tensor(TUTORIAL_WEIGHTS, dtype=dtype, device=device)


def tutorial_weights(like: torch.Tensor) -> torch.Tensor:
    """The tutorial's six frozen weights in `like`'s dtype and device (read-only)."""
    return _tutorial_weights(like.dtype, like.device)


def fit_fused(inputs, labels, *, weights=None, bias=0.0, lr=0.1, momentum=0.0,
              dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False,
              epochs=100, tol=1e-4, callback=None):
    """The whole fit in one native call, with torch.optim.SGD's update rule.

    weights: the six frozen values (default: the tutorial's, in inputs' dtype);
    bias: the starting final_bias (float or 0-d tensor). Returns a FitResult
    equal to fit(..., engine="autograd") with the same SGD settings.
    """
    _check_loop_args(lr, epochs, tol)
    for name, value, optional in (("inputs", inputs, False), ("labels", labels, False),
                                  ("weights", weights, True)):
        if not (isinstance(value, torch.Tensor) or (optional and value is None)):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    if weights is None:
        weights = tutorial_weights(inputs)
    if distributed.is_distributed():
        if not isinstance(bias, torch.Tensor):
            bias = torch.scalar_tensor(float(bias), dtype=inputs.dtype, device=inputs.device)
        hyper = {"lr": lr, "momentum": momentum, "dampening": dampening,
                 "nesterov": nesterov, "weight_decay": weight_decay, "maximize": maximize}
        local_sums, param, sgd = distributed.fused_parts(inputs, labels, weights, bias, hyper)
        return _run_epochs(local_sums, param, sgd, epochs, tol, callback, (inputs, labels),
                           dict(hyper, weights=weights.tolist()))
    args = (_start_bias(bias), float(lr), float(momentum), float(dampening),
            bool(nesterov), float(weight_decay), bool(maximize), int(epochs), float(tol))
    if _direct_ok(inputs, labels, weights):
        # The CPU trainer called directly: for small data the op's own call
        # (boxing, four result tensors, .tolist()) would cost more than the fit.
        epoch, status, final, losses, biases = _direct.fit_sgd(
            inputs.data_ptr(), labels.data_ptr(), inputs.numel(), weights.data_ptr(),
            inputs.dtype is torch.float64, *args, torch.get_num_threads())
    else:
        epoch, status, final, losses, biases = _fit_sgd_op(inputs, labels, weights, *args)
    if callback is not None:  # replayed: the native loop has no Python in it
        for e, (loss, b) in enumerate(zip(losses, biases)):
            callback(e, loss, b)
    if status == _LOSS_NONFINITE:
        raise DivergedError(epoch, "the loss", losses[-1])
    if status == _BIAS_NONFINITE:
        raise DivergedError(epoch, "final_bias", final)
    return FitResult(epoch, final, losses, status == _CONVERGED)


_FLOAT_DTYPES = (torch.float32, torch.float64)


def _direct_ok(inputs, labels, weights) -> bool:
    """Whether _direct.fit_sgd may read these tensors' memory as they are.

    Only what the raw call needs (contiguous CPU data of one float dtype and
    matching shapes): anything else goes to the op, whose checks
    (csrc/checks.cpp) name what is wrong."""
    return (inputs.is_cpu and labels.is_cpu and weights.is_cpu
            and inputs.dtype in _FLOAT_DTYPES and labels.dtype is inputs.dtype
            and weights.dtype is inputs.dtype and weights.numel() == 6
            and inputs.shape == labels.shape and inputs.numel() > 0
            and inputs.is_contiguous() and labels.is_contiguous()
            and weights.is_contiguous())


def _fit_sgd_op(inputs, labels, weights, bias, *options):
    """torch.ops.biasfit.fit_sgd (any device) with _direct.fit_sgd's results."""
    final, losses, biases, info = torch.ops.biasfit.fit_sgd(
        inputs, labels, weights, torch.tensor(bias, dtype=inputs.dtype, device=inputs.device),
        *options)
    epoch, status = info.tolist()
    seen = epoch if status == _EXHAUSTED else epoch + 1  # csrc/fit.h
    return epoch, status, final.item(), losses[:seen].tolist(), biases[:seen].tolist()


def _start_bias(bias) -> float:
    if isinstance(bias, torch.Tensor):
        if bias.numel() != 1:
            raise ValueError(f"bias must hold one value, got {bias.numel()}")
        return bias.item()
    if isinstance(bias, bool) or not isinstance(bias, (int, float)):
        raise TypeError(f"bias must be a number or a one-value tensor, got {bias!r}")
    return float(bias)
