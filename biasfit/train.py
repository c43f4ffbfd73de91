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
trained parameters' gradients each epoch: see biasfit/distributed.py.
"""
import functools
import math
import numbers
from dataclasses import dataclass, field

import torch

from . import _direct, distributed
from .model import TUTORIAL_WEIGHTS

ENGINES = ("autograd", "fused")

# csrc/core/fit.h's FitStatus.
_CONVERGED, _EXHAUSTED, _LOSS_NONFINITE, _BIAS_NONFINITE = 1, 2, 3, 4
_INTERRUPTED = 5  # csrc/core/fit.h


@dataclass
class FitResult:
    """What a fit did: `epochs_run` is the epoch index it stopped at (the
    tutorial's "Num steps", 34) or `epochs` if it never converged; `losses`
    holds every epoch's total loss in order."""
    epochs_run: int
    final_bias: float
    losses: list = field(default_factory=list)
    converged: bool = False
    # The final value of every parameter the fit trained, by name (w00, ...,
    # final_bias); empty for a fit of final_bias alone by fit_fused.
    params: dict = field(default_factory=dict)

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


# The most epochs one fit may run. Every epoch's loss and bias are kept (16
# bytes in float64), so 2**31 - 1 epochs already hold 32 GiB of history: a
# larger count is a mistake, not a plan.
MAX_EPOCHS = 2**31 - 1


def _real(name, value, *, minimum=None, finite=True):
    """value as a float, or a TypeError/ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if minimum is not None and not value >= minimum:  # NaN fails this too
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def _flag(name, value) -> bool:
    # bool("no") is True: only a real bool says what the caller meant.
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _check_loop_args(lr, epochs, tol):
    _real("lr", lr, minimum=0)
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if epochs > MAX_EPOCHS:
        raise ValueError(
            f"epochs must be at most {MAX_EPOCHS} (2**31 - 1), got {epochs}: every "
            f"epoch's loss and bias are kept, 16 bytes each")
    _real("tol", tol, minimum=0, finite=False)  # tol=inf stops at epoch 0


def fit(model, inputs, labels, *, optimizer=None, lr=0.1, epochs=100, tol=1e-4,
        callback=None, engine="autograd"):
    """Train the model on (inputs, labels) with the tutorial's loop.

    Trains every parameter of the model that requires grad (the tutorial's
    BasicNN: final_bias alone, unless others are set to require grad).
    optimizer: any torch.optim optimizer over model.parameters() (default
    SGD(lr=lr)); engine="fused" takes SGD, Adam and AdamW. callback(epoch,
    loss, bias) is called for every epoch (after the native call, for the
    fused engine). Under torch.distributed (e.g. torchrun) inputs and labels
    are this rank's shard, and every rank trains one model on all of them
    (biasfit/distributed.py).
    Raises DivergedError if the loss or bias becomes inf or NaN, and
    StalledError if SGD reaches a bias where every output unit is off.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    _check_loop_args(lr, epochs, tol)
    result = _fit(model, inputs, labels, optimizer, lr, epochs, tol, callback, engine)
    if not result.params and hasattr(model, "trainable_names"):
        result.params = _trained_values(model)
    return result


def _fit(model, inputs, labels, optimizer, lr, epochs, tol, callback, engine):
    if engine == "fused" and (_trains_more_than_the_bias(model) or (
            optimizer is not None and type(optimizer) is not torch.optim.SGD)):
        return _fit_params_fused(model, inputs, labels, optimizer, lr, epochs, tol, callback)
    if engine == "fused":
        # No torch.optim.SGD unless given: building one imports torch._dynamo
        # (about a second), which the native loop never needs.
        hyper = ({"lr": lr} if optimizer is None
                 else _sgd_hyperparameters(optimizer, model))
        return _fit_model_fused(model, inputs, labels, hyper, epochs, tol, callback)
    if optimizer is None:
        # torch.optim.SGD steps by -lr in the parameters' dtype: an lr past
        # its largest would fail inside the step.
        largest = torch.finfo(model.final_bias.dtype).max
        if lr > largest:
            raise ValueError(f"lr {lr:g} is too large for the model's "
                             f"{str(model.final_bias.dtype).removeprefix('torch.')} "
                             f"parameters (at most {largest:.4g})")
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    _check_optimizer_holds(optimizer, model)
    if _trains_more_than_the_bias(model):
        return _fit_params_autograd(model, inputs, labels, optimizer, epochs, tol, callback)

    def local_sums():
        loss = model.loss(inputs, labels)
        loss.backward()
        return loss.detach(), model.final_bias.grad

    return _run_epochs(local_sums, model.final_bias, optimizer, epochs, tol, callback,
                       (inputs, labels), _autograd_settings(optimizer, model),
                       model.weights())


def _autograd_settings(optimizer, model) -> dict:
    # What every rank must share to train one model (_run_epochs adds the
    # starting final_bias, epochs and tol): the six weights' values, which
    # parameters train, and the optimizer with every hyperparameter.
    return {"optimizer": type(optimizer).__name__, "groups": [
        {k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
        "weights": model.weights().tolist(),
        "trains": list(getattr(model, "trainable_names", lambda: ("final_bias",))())}


def _trains_more_than_the_bias(model) -> bool:
    names = getattr(model, "trainable_names", None)
    return names is not None and names() != ("final_bias",)


def _trained_values(model) -> dict:
    return {name: getattr(model, name).item() for name in model.trainable_names()}


def _fit_params_autograd(model, inputs, labels, optimizer, epochs, tol, callback):
    """The tutorial's loop over every parameter that requires grad: the fused
    op's one pass gives all their gradients, the optimizer steps them.
    Under torch.distributed every rank sends its shard's loss and those
    gradients, and sets each parameter's .grad to their sum over the ranks
    before the optimizer steps: every rank steps alike."""
    checked = [(name, getattr(model, name)) for name in model.trainable_names()]

    def sums(epoch):  # backward leaves every trained parameter's .grad
        loss = model.loss(inputs, labels)
        loss.backward()
        return loss.detach(), None

    if not distributed.is_distributed():
        return _epoch_loop(sums, model.final_bias, optimizer, epochs, tol, callback,
                           checked=checked)

    def local_sums():
        loss, _ = sums(None)
        missing = [name for name, p in checked if p.grad is None]
        if missing:  # a model whose loss leaves a trained parameter out
            raise RuntimeError(f"biasfit: the loss gave no gradient for {', '.join(missing)}")
        return loss, torch.stack([p.grad.reshape(()) for _, p in checked])

    def set_grads(grads):
        for (_, p), g in zip(checked, grads.reshape(-1).unbind()):
            p.grad = g.reshape(p.shape)

    return _run_epochs(local_sums, model.final_bias, optimizer, epochs, tol, callback,
                       (inputs, labels), _autograd_settings(optimizer, model),
                       width=len(checked), set_grads=set_grads, checked=checked)


def _run_epochs(local_sums, param, optimizer, epochs, tol, callback, data, settings,
                weights=None, *, width=1, set_grads=None, checked=None):
    """The epoch loop around local_sums() -> (loss, grad) of this process's
    data at `param` (final_bias). Under torch.distributed every rank's sums
    are added (biasfit/distributed.py), and every rank steps and stops
    alike. With `weights` (one process, SGD), a stall (see StalledError)
    stops the fit. For several trained parameters: grad holds `width`
    values, set_grads(summed grads) hands them to the optimizer, and
    `checked` lists the (name, parameter) pairs that must stay finite."""
    if not distributed.is_distributed():
        watch = (weights is not None and type(optimizer) is torch.optim.SGD
                 and all(_may_stall(group["weight_decay"], group["momentum"])
                     for group in optimizer.param_groups))
        return _epoch_loop(lambda epoch: local_sums(), param, optimizer, epochs, tol,
                           callback, data[0] if watch else None, weights)
    distributed.check_shards(*data, dict(settings, bias=param.item(), epochs=epochs, tol=tol))
    local_sums = distributed.shard_sums(local_sums, data[0], param, width)
    # Every rank runs the loop in lockstep: an exception on one rank, in an
    # epoch's sums, the callback or the step, stops them all.
    with distributed.Lockstep(width) as lockstep:
        def sums(epoch):
            loss, grad = lockstep.sums(local_sums, epoch, param)
            if set_grads is None:
                return loss, grad
            set_grads(grad)
            return loss, None
        return _epoch_loop(sums, param, optimizer, epochs, tol, callback, checked=checked)


def _epoch_loop(sums, param, optimizer, epochs, tol, callback, watch_inputs=None,
                weights=None, checked=None):
    """sums(epoch) -> (loss, grad of param, or None where backward set the
    grads); watch_inputs: the inputs, when a stall is to stop the fit;
    checked: the (name, parameter) pairs that must stay finite (default
    final_bias, `param`)."""
    checked = checked or [("final_bias", param)]
    losses = []
    for epoch in range(epochs):
        optimizer.zero_grad()
        loss, grad = sums(epoch)
        if grad is not None:
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
        for name, p in checked:
            if not math.isfinite(p.item()):
                raise DivergedError(epoch, name, p.item())
        # Every unit off gives a gradient of exactly 0: only then look further.
        if watch_inputs is not None and grad.item() == 0 and _first_stall(
                watch_inputs, weights, [bias, param.item()]) is not None:
            raise StalledError(FitResult(epoch, param.item(), losses, False),
                               len(watch_inputs), optimizer.param_groups[0]["lr"])
    return FitResult(epochs, param.item(), losses, False)


def _check_optimizer_holds(optimizer, model):
    """An optimizer over another model's parameters would step those and
    leave this model's untouched, every epoch, silently."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [name for name, p in model.named_parameters()
               if p.requires_grad and id(p) not in held]
    if missing:
        raise ValueError(
            f"optimizer does not hold the model's trainable parameter(s) "
            f"{', '.join(missing)}: build it from this model's parameters(), e.g. "
            f"torch.optim.SGD(model.parameters(), lr=0.1)")


# The optimizers the fused trainer runs natively (csrc/cpu/trainer_params.h's
# OptimizerKind), with torch.optim's update rules.
_FUSED_OPTIMIZERS = {"SGD": 0, "Adam": 1, "AdamW": 2}
_PARAM_NAMES = ("w00", "b00", "w01", "w10", "b10", "w11", "final_bias")


def _check_fused_optimizer(optimizer, model):
    name = type(optimizer).__name__
    if type(optimizer) not in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        raise TypeError(
            f"engine='fused' trains with torch.optim.SGD, Adam or AdamW only, got "
            f"{name}; use engine='autograd' for other optimizers")
    if len(optimizer.param_groups) != 1 or any(optimizer.state.values()):
        raise ValueError(
            f"engine='fused' needs a fresh {name} with one parameter group "
            f"(it starts its optimizer state from scratch)")
    _check_optimizer_holds(optimizer, model)


def _sgd_hyperparameters(optimizer, model):
    _check_fused_optimizer(optimizer, model)
    group = optimizer.param_groups[0]
    return {k: group[k] for k in ("lr", "momentum", "dampening", "nesterov",
                                  "weight_decay", "maximize")}


def _fit_params_fused(model, inputs, labels, optimizer, lr, epochs, tol, callback):
    """engine="fused" for any subset of the seven parameters (those that
    require grad) or with Adam/AdamW: the whole fit in one fit_params call
    (under torch.distributed, its epochs from Python: _fit_params_sharded)."""
    names = getattr(model, "trainable_names", lambda: ("final_bias",))()
    opts = {"kind": 0, "lr": lr, "momentum": 0.0, "dampening": 0.0, "nesterov": False,
            "weight_decay": 0.0, "maximize": False, "beta1": 0.9, "beta2": 0.999,
            "eps": 1e-8, "amsgrad": False}
    if optimizer is not None:
        _check_fused_optimizer(optimizer, model)
        group = optimizer.param_groups[0]
        kind = _FUSED_OPTIMIZERS[type(optimizer).__name__]
        if kind == 1 and group.get("decoupled_weight_decay", False):
            kind = 2  # Adam(decoupled_weight_decay=True) is AdamW
        opts.update(kind=kind, lr=float(group["lr"]), weight_decay=group["weight_decay"],
                    maximize=group["maximize"])
        if kind == 0:
            opts.update({k: group[k] for k in ("momentum", "dampening", "nesterov")})
        else:
            beta1, beta2 = (float(b) for b in group["betas"])
            opts.update(beta1=beta1, beta2=beta2, eps=group["eps"], amsgrad=group["amsgrad"])
    params = torch.stack([getattr(model, n).detach() for n in _PARAM_NAMES]).contiguous()
    trained = sum(1 << i for i, n in enumerate(_PARAM_NAMES) if n in names)
    if distributed.is_distributed():
        return _fit_params_sharded(model, inputs, labels, params, trained, opts, epochs,
                                   tol, callback)
    final, losses, biases, info = torch.ops.biasfit.fit_params(
        inputs, labels, params, trained, opts["kind"], opts["lr"], opts["momentum"],
        opts["dampening"], opts["nesterov"], opts["weight_decay"], opts["maximize"],
        opts["beta1"], opts["beta2"], opts["eps"], opts["amsgrad"], int(epochs), float(tol))
    epoch, status, bad = info.tolist()
    if status == _INTERRUPTED:  # Ctrl-C inside the op, which cleared it (torch_ops/cpu_ops.cpp)
        raise KeyboardInterrupt
    seen = epoch if status == _EXHAUSTED else epoch + 1  # csrc/core/fit.h
    losses, biases, final = losses[:seen].tolist(), biases[:seen].tolist(), final.tolist()
    with torch.no_grad():  # where the autograd engine leaves them
        for i, n in enumerate(_PARAM_NAMES):
            if n in names:
                getattr(model, n).fill_(final[i])
    if callback is not None:  # replayed: the native loop has no Python in it
        for e, (loss, b) in enumerate(zip(losses, biases)):
            callback(e, loss, b)
    if status == _LOSS_NONFINITE:
        raise DivergedError(epoch, "the loss", losses[-1])
    if status == _BIAS_NONFINITE:
        raise DivergedError(epoch, _PARAM_NAMES[bad], final[bad])
    return FitResult(epoch, final[-1], losses, status == _CONVERGED,
                     {n: final[i] for i, n in enumerate(_PARAM_NAMES) if n in names})


def _fit_params_sharded(model, inputs, labels, params, trained, opts, epochs, tol,
                        callback):
    """fit_params's fit under torch.distributed: every epoch, this shard's
    float64 sums (fit_params's own pass), summed over the ranks, then
    fit_params's step (NativeParams): the one-process fit_params's bits for
    one rank, and up to the order of the float64 sums for several."""
    local_sums, native = distributed.fused_params_parts(inputs, labels, params, trained, opts)
    index = [i for i in range(len(_PARAM_NAMES)) if (trained >> i) & 1]
    names = [_PARAM_NAMES[i] for i in index]

    def set_grads(grads):
        if index:
            native.grads[index] = grads.reshape(-1)

    settings = dict(opts, engine="fused", weights=params[:6].tolist(), trains=names)
    try:
        return _run_epochs(local_sums, native.params[6], native, epochs, tol, callback,
                           (inputs, labels), settings, width=len(index),
                           set_grads=set_grads,
                           checked=[(_PARAM_NAMES[i], native.params[i]) for i in index])
    finally:
        with torch.no_grad():  # where fit_params's engine leaves them, also on an error
            for i in index:
                getattr(model, _PARAM_NAMES[i]).fill_(native.params[i].item())


def _fit_model_fused(model, inputs, labels, hyper, epochs, tol, callback):
    bias = model.final_bias
    try:
        result = fit_fused(inputs, labels, weights=model.weights(), bias=bias.detach(),
                           epochs=epochs, tol=tol, callback=callback, **hyper)
    except StalledError as e:
        with torch.no_grad():  # where the autograd engine leaves it too
            bias.fill_(e.result.final_bias)
        raise
    with torch.no_grad():
        bias.fill_(result.final_bias)
    return result


@functools.lru_cache(maxsize=None)
def _tutorial_weights(dtype, device):
    # Cached: for the tutorial's 3 points, building this tensor on every call
    # would cost a noticeable part of the whole fit. Never handed out (callers
    # could write to it): fit_fused reads it, tutorial_weights hands out copies.
    return torch.tensor(TUTORIAL_WEIGHTS, dtype=dtype, device=device)


def tutorial_weights(like: torch.Tensor) -> torch.Tensor:
    """The tutorial's six frozen weights in `like`'s dtype and device: a new
    tensor each call, so writing to it changes nothing else."""
    return _tutorial_weights(like.dtype, like.device).clone()


def _checked_fused_args(inputs, labels, weights, bias, lr, momentum, dampening, nesterov,
                        weight_decay, maximize, epochs, tol):
    """fit_fused's arguments checked one by one: (lr, momentum, dampening,
    nesterov, weight_decay, maximize, start bias) as floats and bools, or a
    TypeError/ValueError naming the first one that is wrong."""
    _check_loop_args(lr, epochs, tol)
    for name, value, optional in (("inputs", inputs, False), ("labels", labels, False),
                                  ("weights", weights, True)):
        if not (isinstance(value, torch.Tensor) or (optional and value is None)):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    return (float(lr), _real("momentum", momentum, minimum=0), _real("dampening", dampening),
            _flag("nesterov", nesterov), _real("weight_decay", weight_decay, minimum=0),
            _flag("maximize", maximize), _start_bias(bias, inputs.dtype))


def fit_fused(inputs, labels, *, weights=None, bias=0.0, lr=0.1, momentum=0.0,
              dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False,
              epochs=100, tol=1e-4, callback=None):
    """The whole fit in one native call, with torch.optim.SGD's update rule.

    weights: the six frozen values (default: the tutorial's, in inputs' dtype);
    bias: the starting final_bias (float or 0-d tensor). Returns a FitResult
    equal to fit(..., engine="autograd") with the same SGD settings.
    """
    plain = _direct.fit_plain(inputs, labels, weights, bias, lr, momentum, dampening,
                              nesterov, weight_decay, maximize, epochs, tol,
                              torch.get_num_threads())
    if plain is not None:
        # The usual call (csrc/direct/plain_call.h: 1-D CPU data, the tutorial's
        # weights, plain floats): recognized and run in C, since at the
        # tutorial's size checking it in Python took as long as the fit.
        epoch, status, final, losses, packed, zero_grad = plain
    else:
        lr, momentum, dampening, nesterov, weight_decay, maximize, start = (
            _checked_fused_args(inputs, labels, weights, bias, lr, momentum, dampening,
                                nesterov, weight_decay, maximize, epochs, tol))
        epochs, tol = int(epochs), float(tol)
        hyper = {"lr": lr, "momentum": momentum, "dampening": dampening,
                 "nesterov": nesterov, "weight_decay": weight_decay, "maximize": maximize}
        if distributed.is_distributed():
            return _fit_fused_sharded(inputs, labels, weights, bias, start, hyper, epochs,
                                      tol, callback)
        epoch, status, final, losses, packed, zero_grad = _fit_sgd_native(
            inputs, labels, weights, start, hyper, epochs, tol)
    biases = None  # every epoch's bias, unpacked from float64 bytes when needed
    stall = None
    # Every unit off gives a gradient of exactly 0: only from such an epoch
    # is the pass over the inputs worth it (at 1e7 points it costs more than
    # a 10-epoch fit). A stall at the very last epoch ends as exhausted.
    if status == _EXHAUSTED and zero_grad >= 0 and _may_stall(weight_decay, momentum):
        biases = memoryview(packed).cast("d").tolist()
        if final <= biases[-1]:
            if weights is None:  # only here: the lookup is a tenth of a 3-point fit
                weights = _tutorial_weights(inputs.dtype, inputs.device)
            stall = _first_stall(inputs, weights, biases + [final])
        if stall is not None:
            losses, final = losses[:stall + 1], biases[stall + 1] if stall + 1 < len(
                biases) else final
            biases = biases[:stall + 1]
    if callback is not None:  # replayed: the native loop has no Python in it
        if biases is None:
            biases = memoryview(packed).cast("d").tolist()
        for e, (loss, b) in enumerate(zip(losses, biases)):
            callback(e, loss, b)
    if status == _LOSS_NONFINITE:
        raise DivergedError(epoch, "the loss", losses[-1])
    if status == _BIAS_NONFINITE:
        raise DivergedError(epoch, "final_bias", final)
    if stall is not None:
        raise StalledError(FitResult(stall, final, losses, False), len(inputs), lr)
    return FitResult(epoch, final, losses, status == _CONVERGED)


def _fit_fused_sharded(inputs, labels, weights, bias, start, hyper, epochs, tol, callback):
    """fit_fused under torch.distributed: the epoch loop in Python around the
    native one-pass op, every rank's sums added each epoch."""
    if weights is None:
        weights = tutorial_weights(inputs)
    if not isinstance(bias, torch.Tensor):
        bias = torch.scalar_tensor(start, dtype=inputs.dtype, device=inputs.device)
    local_sums, param, sgd = distributed.fused_parts(inputs, labels, weights, bias, hyper)
    return _run_epochs(local_sums, param, sgd, epochs, tol, callback, (inputs, labels),
                       dict(hyper, weights=weights.tolist()))


def _fit_sgd_native(inputs, labels, weights, start, hyper, epochs, tol):
    """The native trainer for checked arguments: the direct call where it may
    read the tensors as they are, else the op (any device, any view).
    Returns fit_plain's (epoch, status, final_bias, losses, packed float64
    biases, first zero-gradient epoch or -1)."""
    options = (start, hyper["lr"], hyper["momentum"], hyper["dampening"], hyper["nesterov"],
               hyper["weight_decay"], hyper["maximize"], epochs, tol)
    direct = _direct_args(inputs, labels, weights)
    if direct is not None:
        # The CPU trainer called directly: for small data the op's own call
        # (boxing, four result tensors, .tolist()) would cost more than the fit.
        return _direct.fit_sgd(*direct, *options, torch.get_num_threads())
    if weights is None:
        weights = _tutorial_weights(inputs.dtype, inputs.device)
    final, losses, biases, info = torch.ops.biasfit.fit_sgd(
        inputs, labels, weights,
        torch.tensor(start, dtype=inputs.dtype, device=inputs.device), *options[1:])
    epoch, status = info.tolist()
    seen = epoch if status == _EXHAUSTED else epoch + 1  # csrc/core/fit.h
    losses = losses[:seen].tolist()
    # A stall that began before the last epoch repeats its loss exactly
    # (every output is 0, so the loss is sum(y^2) in the kernel's fixed
    # order): the op reports no gradients, so look only then.
    zero_grad = len(losses) - 2 if len(losses) > 1 and losses[-1] == losses[-2] else -1
    packed = biases[:seen].to("cpu", torch.float64).numpy().tobytes()
    return epoch, status, final.item(), losses, packed, zero_grad


_FLOAT_DTYPES = (torch.float32, torch.float64)


# The tutorial weights on the CPU and their address, per dtype: the direct
# call's default, read without a tensor attribute lookup.
_CPU_WEIGHTS = {dtype: (lambda w: (w, w.data_ptr()))(_tutorial_weights(dtype, torch.device("cpu")))
                for dtype in _FLOAT_DTYPES}


_direct.setup_plain(torch.Tensor, torch.float32, torch.float64,
                    _CPU_WEIGHTS[torch.float32][1], _CPU_WEIGHTS[torch.float64][1],
                    distributed.initialized_check(), MAX_EPOCHS)


def _direct_args(inputs, labels, weights):
    """(x, y, n, weights, is_double) for _direct.fit_sgd when it may read
    these tensors' memory as they are, else None.

    Only what the raw call needs (1-D contiguous CPU data of one float dtype
    and one length; weights None for the tutorial's): anything else goes to
    the op, whose checks (csrc/torch_ops/checks.cpp) name what is wrong."""
    dtype = inputs.dtype
    if not (dtype in _CPU_WEIGHTS and labels.dtype is dtype and inputs.is_cpu
            and labels.is_cpu and inputs.dim() == 1 and labels.dim() == 1
            and inputs.is_contiguous() and labels.is_contiguous()):
        return None
    n = inputs.numel()
    if n == 0 or labels.numel() != n:
        return None
    if weights is None:
        w = _CPU_WEIGHTS[dtype][1]
    elif (weights.is_cpu and weights.dtype is dtype and weights.numel() == 6
          and weights.is_contiguous()):
        w = weights.data_ptr()
    else:
        return None
    return inputs.data_ptr(), labels.data_ptr(), n, w, dtype is torch.float64


def _start_bias(bias, dtype) -> float:
    if isinstance(bias, torch.Tensor):
        if bias.numel() != 1:
            raise ValueError(f"bias must hold one value, got {bias.numel()}")
        value = bias.item()
    elif isinstance(bias, bool) or not isinstance(bias, numbers.Real):
        raise TypeError(f"bias must be a number or a one-value tensor, got {bias!r}")
    else:
        value = float(bias)
    if not math.isfinite(value):
        raise ValueError(f"bias must be a finite number, got {value}")
    if dtype.is_floating_point and abs(value) > torch.finfo(dtype).max:
        name = str(dtype).removeprefix("torch.")
        raise ValueError(f"bias {value:g} does not fit the data's dtype {name} "
                         f"(largest {torch.finfo(dtype).max:.4g})")
    return value


# -- the summed loss's stall ----------------------------------------------------
#
# Once final_bias is so low that every point's output unit is off
# (hidden + final_bias <= 0), every output is 0 and the gradient exactly 0.
# With SGD without weight decay the step is then momentum alone, whose
# direction never changes: a step down (or none) means every later one is
# down too, so the units stay off and no epoch can ever change the loss.


class StalledError(RuntimeError):
    """The fit reached a final_bias where every output unit is off: the
    gradient is 0 and no later epoch can change anything. `result` is the fit
    up to that epoch."""

    def __init__(self, result: FitResult, n_points: int, lr: float):
        self.result = result
        self.epoch = result.epochs_run
        super().__init__(
            f"biasfit: the fit stalled at epoch {self.epoch}: final_bias = "
            f"{result.final_bias:.6g} turns every output unit off (hidden + final_bias "
            f"<= 0 at all {n_points} points), so the gradient is exactly 0 and no later "
            f"step can change it. The loss is summed over the points, so its gradient "
            f"grows with N: lower lr, e.g. scaled by 1/N (lr/N = {lr / n_points:.3g})")


def _may_stall(weight_decay, momentum) -> bool:
    """Whether the stall argument above holds for these SGD settings."""
    return weight_decay == 0 and momentum <= 1


def _first_stall(inputs, weights, biases):
    """The first epoch e whose bias biases[e] turns every unit off and whose
    step does not go up (biases[e + 1] <= biases[e]), or None. One pass over
    the inputs, in their dtype and core/network.h's order of operations."""
    w00, b00, w01, w10, b10, w11 = weights.unbind()
    with torch.no_grad():
        hidden = (inputs * w00 + b00).relu() * w01 + (inputs * w10 + b10).relu() * w11
        b = torch.tensor(biases, dtype=inputs.dtype, device=inputs.device)
        stalled = ((hidden.max() + b[:-1]) <= 0) & (b[1:] <= b[:-1])
        hits = stalled.nonzero()
    return int(hits[0]) if len(hits) else None
