"""fit and fit_fused: the tutorial's training loop, and the one place that
picks how a fit runs (_route).

Two engines run the loop (biasfit/loop.py says what an epoch does):

- "autograd": model.loss (the fused native op) + backward + any torch.optim
  optimizer, one Python iteration an epoch (biasfit/loop.py).
- "fused": every epoch inside one native call with torch.optim's update
  rules (biasfit/engine.py): fit_sgd for final_bias alone with SGD (the
  direct call into the CPU trainer where it can read the tensors as they
  are, else the op), fit_params for any other trained parameters or
  Adam/AdamW; same epochs, losses and bias.

Under torch.distributed (e.g. torchrun) each rank's data is its shard and
both engines run the epoch loop in Python, summing every rank's loss and
trained parameters' gradients each epoch (loop.sharded_loop, with
biasfit/distributed.py's collectives around engine.py's native steps for
the fused engine).
"""
import inspect
import math
import numbers
from typing import NamedTuple

import torch

from . import distributed, engine
from .engine import (CONVERGED, EXHAUSTED, MAX_EPOCHS, OPTIMIZER_KINDS,  # noqa: F401
                     tutorial_weights)
from .loop import epoch_loop, local_stall, sharded_loop
from .model import PARAM_NAMES, BasicNN
from .result import DivergedError, FitResult, StalledError, StalledWarning  # noqa: F401
from .stall import ON_STALL, may_stall, settle, stall_epoch

ENGINES = ("autograd", "fused")
REDUCTIONS = ("sum", "mean")


class Stop(NamedTuple):
    """How a fit's loss is reduced and when it ends besides tol and epochs:
    reduction "sum" (the tutorial's) or "mean"; the plateau stop (rtol > 0:
    relative improvement below rtol for `patience` epochs, core/fit.h's
    Plateau); on_stall: "warn", "stop" or "raise" (biasfit/stall.py)."""
    reduction: str = "sum"
    rtol: float = 0.0
    patience: int = 10
    on_stall: str = "warn"

    def native(self, inputs) -> tuple:
        """The native calls' (rtol, patience, divide_by), or () for the
        tutorial's loop (their defaults)."""
        if self.reduction == "sum" and self.rtol == 0:
            return ()
        divide_by = float(inputs.numel()) if self.reduction == "mean" else 1.0
        return (float(self.rtol), int(self.patience), divide_by)


_TUTORIAL = Stop()

_BIAS_ONLY = ("final_bias",)


def _route(engine_name, names, optimizer):
    """How a fit runs: engine x trained parameters x optimizer x process
    group -> (job, sharded), job one of
    - "autograd": loop.epoch_loop over model.loss and backward;
    - "sgd": final_bias alone with SGD, fused: engine.sgd_run's one call;
    - "params": any other trained parameters or Adam/AdamW, fused:
      engine.params_run's one call;
    sharded: under torch.distributed, where each job runs loop.sharded_loop
    instead (the native calls run every epoch and cannot all-gather
    between them)."""
    if engine_name not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine_name!r}")
    sharded = distributed.is_distributed()
    if engine_name == "autograd":
        return "autograd", sharded
    if names in (_BIAS_ONLY, None) and (optimizer is None or type(optimizer) is torch.optim.SGD):
        return "sgd", sharded
    return "params", sharded


# -- argument checks -----------------------------------------------------------


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


def _stop(reduction, rtol, patience, on_stall) -> Stop:
    """The stop options checked, or a TypeError/ValueError naming the first
    one that is wrong."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if on_stall not in ON_STALL:
        raise ValueError(f"on_stall must be one of {ON_STALL}, got {on_stall!r}")
    rtol = _real("rtol", rtol, minimum=0)
    if not rtol < 1:
        raise ValueError(f"rtol must be below 1, got {rtol}")
    if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 1:
        raise ValueError(f"patience must be an int >= 1, got {patience!r}")
    return Stop(reduction, rtol, int(patience), on_stall)


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


def _checked_sgd_args(inputs, labels, weights, bias, lr, momentum, dampening, nesterov,
                      weight_decay, maximize, epochs, tol):
    """fit_fused's arguments checked one by one: (start bias, SGD's settings)
    as floats and bools, or a TypeError/ValueError naming the first one that
    is wrong."""
    _check_loop_args(lr, epochs, tol)
    for name, value, optional in (("inputs", inputs, False), ("labels", labels, False),
                                  ("weights", weights, True)):
        if not (isinstance(value, torch.Tensor) or (optional and value is None)):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    hyper = {"lr": float(lr), "momentum": _real("momentum", momentum, minimum=0),
             "dampening": _real("dampening", dampening), "nesterov": _flag("nesterov", nesterov),
             "weight_decay": _real("weight_decay", weight_decay, minimum=0),
             "maximize": _flag("maximize", maximize)}
    return _start_bias(bias, inputs.dtype), hyper


# -- fit -----------------------------------------------------------------------


def fit(model, inputs, labels, *, optimizer=None, lr=0.1, epochs=100, tol=1e-4,
        callback=None, engine="autograd", reduction="sum", rtol=0.0, patience=10,
        on_stall="warn"):
    """Train the model on (inputs, labels) with the tutorial's loop.

    Trains every parameter of the model that requires grad (the tutorial's
    BasicNN: final_bias alone, unless others are set to require grad).
    optimizer: any torch.optim optimizer over model.parameters() (default
    SGD(lr=lr)); engine="fused" takes SGD, Adam and AdamW. callback(epoch,
    loss, bias) is called for every epoch (after the native call, for the
    fused engine). Under torch.distributed (e.g. torchrun) inputs and labels
    are this rank's shard, and every rank trains one model on all of them
    (biasfit/distributed.py).
    reduction: "sum" (the tutorial's summed squared error) or "mean" (lr
    need not shrink as N grows). The fit stops once the loss is below tol,
    or with rtol > 0 once it has improved by less than rtol (relative to its
    lowest) for `patience` epochs in a row; result.stop_reason says which.
    Raises DivergedError if the loss or bias becomes inf or NaN. If SGD
    reaches a bias where every output unit is off (a stall: the loss can no
    longer change), on_stall="warn" runs on as torch.optim does and warns
    (StalledWarning), "stop" ends the fit there and warns, "raise" raises
    StalledError.
    """
    # None for a model without trainable_names: final_bias alone trains, and
    # the result names no parameters.
    names = getattr(model, "trainable_names", None)
    names = None if names is None else names()
    job, sharded = _route(engine, names, optimizer)
    stop = _TUTORIAL if (reduction, rtol, patience, on_stall) == _TUTORIAL else _stop(
        reduction, rtol, patience, on_stall)
    if job != "sgd" or optimizer is not None:
        # (the SGD job with the default optimizer checks them itself: read
        # in C where it can, else by _checked_sgd_args, with these messages)
        _check_loop_args(lr, epochs, tol)
    result = _JOBS[job](model, inputs, labels, optimizer, lr, epochs, tol, callback, names,
                        sharded, stop)
    if result.stall_epoch is None:
        return result
    lr = lr if optimizer is None else optimizer.param_groups[0]["lr"]
    return settle(result, stop.on_stall, inputs.numel(), lr, stop.reduction)


def _trained_values(model, names) -> dict:
    return {} if names is None else {name: getattr(model, name).item() for name in names}


def _step_needs_closure(optimizer) -> bool:
    """Whether optimizer.step must be given a closure (torch.optim.LBFGS)."""
    closure = inspect.signature(optimizer.step).parameters.get("closure")
    return closure is not None and closure.default is inspect.Parameter.empty


class _ClosureDriven:
    """An optimizer whose step takes a closure (LBFGS), stepped by the epoch
    loop's plain step(): the closure re-evaluates the loss and every gradient
    at the current parameters, as plain PyTorch's LBFGS loop writes it."""

    def __init__(self, optimizer, sums):
        self.optimizer, self.param_groups, self._sums = optimizer, optimizer.param_groups, sums

    def zero_grad(self):
        self.optimizer.zero_grad()

    def step(self):
        def closure():
            self.optimizer.zero_grad()
            return self._sums()[0]
        self.optimizer.step(closure)


def _fit_autograd(model, inputs, labels, optimizer, lr, epochs, tol, callback, names,
                  sharded, stop):
    """The tutorial's loop over every trained parameter: the fused op's one
    pass gives all their gradients, the optimizer steps them. Under
    torch.distributed every rank sends its shard's loss and those gradients,
    and sets each parameter's .grad to their sum over the ranks before the
    optimizer steps: every rank steps alike."""
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
    checked = [(name, getattr(model, name)) for name in names or _BIAS_ONLY]
    bias = model.final_bias

    # The mean divides the summed loss (the native op's) by N: over every
    # rank's rows under torch.distributed (sharded_loop divides the sums).
    mean = stop.reduction == "mean" and not sharded

    def sums(epoch=None):  # backward leaves every trained parameter's .grad
        loss = model.loss(inputs, labels)
        if mean:
            loss = loss / inputs.numel()
        loss.backward()
        return loss.detach(), None

    if not sharded and inputs.numel() == 0:  # as the fused engine's op says it
        raise ValueError("biasfit: inputs is empty: a fit needs at least one point")
    if _step_needs_closure(optimizer):
        if sharded:
            raise ValueError(f"optimizer {type(optimizer).__name__} re-evaluates the loss "
                             f"inside its step, which a sharded fit cannot do in lockstep; "
                             f"use it in a single process")
        optimizer = _ClosureDriven(optimizer, sums)

    # A stall (biasfit/stall.py) is watched for in a fit of final_bias alone by SGD.
    watch = (names in (_BIAS_ONLY, None) and type(optimizer) is torch.optim.SGD
             and all(may_stall(group["weight_decay"], group["momentum"])
                     for group in optimizer.param_groups))
    rules = {"rtol": stop.rtol, "patience": stop.patience,
             "stop_at_stall": stop.on_stall != "warn"}
    if not sharded:
        result = epoch_loop(sums, bias, optimizer, epochs, tol, callback, checked=checked,
                            stall=local_stall(inputs, model.weights()) if watch else None,
                            **rules)
        result.params = _trained_values(model, names)
        return result

    def local_sums():
        loss, _ = sums()
        missing = [name for name, p in checked if p.grad is None]
        if missing:  # a model whose loss leaves a trained parameter out
            raise RuntimeError(f"biasfit: the loss gave no gradient for {', '.join(missing)}")
        return loss, torch.stack([p.grad.reshape(()) for _, p in checked])

    def set_grads(grads):
        for (_, p), g in zip(checked, grads.reshape(-1).unbind()):
            p.grad = g.reshape(p.shape)

    # What every rank must share to train one model (sharded_loop adds the
    # starting final_bias, epochs and tol): the six weights' values, which
    # parameters train, and the optimizer with every hyperparameter.
    settings = {"optimizer": type(optimizer).__name__, "groups": [
        {k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
        "weights": model.weights().tolist(), "trains": list(names or _BIAS_ONLY)}
    result = sharded_loop(local_sums, bias, optimizer, epochs, tol, callback,
                          (inputs, labels), settings, width=len(checked),
                          set_grads=set_grads, checked=checked,
                          stall_weights=model.weights().detach() if watch else None,
                          reduction=stop.reduction, **rules)
    result.params = _trained_values(model, names)
    return result


def _fit_sgd(model, inputs, labels, optimizer, lr, epochs, tol, callback, names, sharded,
             stop):
    """engine="fused" for final_bias alone with SGD: fit_fused's fit from
    the model's weights and final_bias, left where the autograd engine
    leaves it (also at a stall; not at a divergence)."""
    # A BasicNN's weights are read where they are (its _parameters, by the
    # direct call), not stacked, and its final_bias written by the direct
    # call itself: for the tutorial's 3 points the stack and the fill_ cost
    # more than the fit.
    params = model._parameters if type(model).weights is BasicNN.weights else None
    bias = model.final_bias if params is None else params["final_bias"]
    if optimizer is None:
        hyper = (lr, 0.0, 0.0, False, 0.0, False)
    else:
        _check_fused_optimizer(optimizer, model)
        group = optimizer.param_groups[0]
        hyper = tuple(group[k] for k in ("lr", "momentum", "dampening", "nesterov",
                                         "weight_decay", "maximize"))
    # Written during the fit only without a callback: the replay comes after
    # the native fit, and a callback that raises leaves the bias as it was.
    out = bias if callback is None else None
    weights = None if params is not None else model.weights()
    result = _sgd(inputs, labels, weights, bias, *hyper, epochs, tol, callback, sharded,
                  stop, params, out)
    if out is None or result.stall_epoch == result.epochs_run:
        # (also where a fit cut back at its stall: the call wrote its last bias)
        with torch.no_grad():
            bias.fill_(result.final_bias)
    if names is not None:  # final_bias's value in the model's dtype
        result.params = ({"final_bias": bias.item()} if names == _BIAS_ONLY
                         else _trained_values(model, names))
    return result


def _fit_params(model, inputs, labels, optimizer, lr, epochs, tol, callback, names,
                sharded, stop):
    """engine="fused" for any subset of the seven parameters or with
    Adam/AdamW: the whole fit in one fit_params call (under
    torch.distributed, its epochs from Python with fit_params's step)."""
    opts = {"kind": 0, "lr": lr, "momentum": 0.0, "dampening": 0.0, "nesterov": False,
            "weight_decay": 0.0, "maximize": False, "beta1": 0.9, "beta2": 0.999,
            "eps": 1e-8, "amsgrad": False}
    if optimizer is not None:
        _check_fused_optimizer(optimizer, model)
        group = optimizer.param_groups[0]
        kind = OPTIMIZER_KINDS[type(optimizer).__name__]
        if kind == 1 and group.get("decoupled_weight_decay", False):
            kind = 2  # Adam(decoupled_weight_decay=True) is AdamW
        opts.update(kind=kind, lr=float(group["lr"]), weight_decay=group["weight_decay"],
                    maximize=group["maximize"])
        if kind == 0:
            opts.update({k: group[k] for k in ("momentum", "dampening", "nesterov")})
        else:
            beta1, beta2 = (float(b) for b in group["betas"])
            opts.update(beta1=beta1, beta2=beta2, eps=group["eps"], amsgrad=group["amsgrad"])
    params = torch.stack([getattr(model, n).detach() for n in PARAM_NAMES]).contiguous()
    index = [i for i, n in enumerate(PARAM_NAMES) if n in names]
    trained = sum(1 << i for i in index)
    if sharded:
        result = _params_sharded(model, inputs, labels, params, trained, index, opts,
                                 epochs, tol, callback, stop)
    else:
        run, values, bad = engine.params_run(inputs, labels, params, trained, opts, epochs,
                                             tol, stop.native(inputs))
        with torch.no_grad():  # where the autograd engine leaves them
            for i in index:
                getattr(model, PARAM_NAMES[i]).fill_(values[i])
        result = engine.decode(*run[:5], callback, values, bad)
        result.params = {PARAM_NAMES[i]: values[i] for i in index}
    if not result.params:
        result.params = _trained_values(model, names)
    return result


def _params_sharded(model, inputs, labels, params, trained, index, opts, epochs, tol,
                    callback, stop):
    """fit_params's fit under torch.distributed: every epoch, this shard's
    float64 sums (fit_params's own pass), summed over the ranks, then
    fit_params's step (engine.NativeParams): the one-process fit_params's
    bits for one rank, and up to the order of the float64 sums for several."""
    local_sums, native = engine.params_parts(inputs, labels, params, trained, opts)

    def set_grads(grads):
        if index:
            native.grads[index] = grads.reshape(-1)

    names = [PARAM_NAMES[i] for i in index]
    settings = dict(opts, engine="fused", weights=params[:6].tolist(), trains=names)
    try:
        return sharded_loop(local_sums, native.params[6], native, epochs, tol, callback,
                            (inputs, labels), settings, width=len(index),
                            set_grads=set_grads,
                            checked=[(PARAM_NAMES[i], native.params[i]) for i in index],
                            reduction=stop.reduction, rtol=stop.rtol,
                            patience=stop.patience)
    finally:
        with torch.no_grad():  # where fit_params's engine leaves them, also on an error
            for i in index:
                getattr(model, PARAM_NAMES[i]).fill_(native.params[i].item())


_JOBS = {"autograd": _fit_autograd, "sgd": _fit_sgd, "params": _fit_params}


# -- fit_fused -----------------------------------------------------------------


# fit_fused reads its tensors' values (a FitResult of Python numbers): a
# mapped tensor under torch.func.vmap has none to read.
_UNDER_TRANSFORM = ("biasfit.fit_fused cannot run under torch.func transforms (vmap): it "
                    "returns Python numbers; vmap torch.ops.biasfit.fit_sgd (one fit_many "
                    "call), or call biasfit.fit_many")


def fit_fused(inputs, labels, *, weights=None, bias=0.0, lr=0.1, momentum=0.0,
              dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False,
              epochs=100, tol=1e-4, callback=None, reduction="sum", rtol=0.0, patience=10,
              on_stall="warn"):
    """The whole fit in one native call, with torch.optim.SGD's update rule.

    weights: the six frozen values (default: the tutorial's, in inputs' dtype);
    bias: the starting final_bias (float or 0-d tensor). Returns a FitResult
    equal to fit(..., engine="autograd") with the same SGD settings;
    reduction, rtol, patience and on_stall as fit's.
    """
    _, sharded = _route("fused", _BIAS_ONLY, None)
    stop = _TUTORIAL if (reduction, rtol, patience, on_stall) == _TUTORIAL else _stop(
        reduction, rtol, patience, on_stall)
    try:
        result = _sgd(inputs, labels, weights, bias, lr, momentum, dampening, nesterov,
                      weight_decay, maximize, epochs, tol, callback, sharded, stop)
    except RuntimeError as error:  # (no cost to the fits that run)
        if torch._C._are_functorch_transforms_active():
            raise RuntimeError(_UNDER_TRANSFORM) from error
        raise
    if result.stall_epoch is None:
        return result
    return settle(result, stop.on_stall, inputs.numel(), lr, stop.reduction)


def _sgd(inputs, labels, weights, bias, lr, momentum, dampening, nesterov, weight_decay,
         maximize, epochs, tol, callback, sharded, stop=_TUTORIAL, params=None, out=None):
    """The "sgd" job (fit_fused's fit, and fit's fused one of final_bias
    alone): the direct call where it can read the arguments as they are (the
    usual call: 1-D CPU data, plain floats; at the tutorial's size checking
    them in Python took as long as the fit), else the arguments checked,
    then engine.sgd_run (the op), or under torch.distributed the epoch loop
    around the native step. params: a BasicNN's _parameters, read in place
    of weights (None); out: a one-value tensor (a model's final_bias) that
    receives the final bias if the fit ends without an error; stop: a Stop."""
    native = stop.native(inputs) if stop is not _TUTORIAL else ()
    stop_at_stall = stop.on_stall != "warn"
    if not sharded and (params is not None or type(weights) is not dict):
        if params is not None:
            weights = params
        run = engine.direct_sgd(inputs, labels, weights, bias, lr, momentum, dampening,
                                nesterov, weight_decay, maximize, epochs, tol, out, *native)
        if run is not None:
            return _decode_sgd(run, inputs, weights, momentum, weight_decay, callback,
                               stop_at_stall)
    if params is not None:
        weights = engine.weights_tensor(params, inputs)
    start, hyper = _checked_sgd_args(inputs, labels, weights, bias, lr, momentum, dampening,
                                     nesterov, weight_decay, maximize, epochs, tol)
    epochs, tol = int(epochs), float(tol)
    if sharded:
        if weights is None:
            weights = tutorial_weights(inputs)
        if not isinstance(bias, torch.Tensor):
            bias = torch.scalar_tensor(start, dtype=inputs.dtype, device=inputs.device)
        local_sums, param, sgd = engine.sgd_parts(inputs, labels, weights, bias, hyper)
        watch = may_stall(hyper["weight_decay"], hyper["momentum"])
        result = sharded_loop(local_sums, param, sgd, epochs, tol, callback,
                              (inputs, labels), dict(hyper, weights=weights.tolist()),
                              stall_weights=weights if watch else None,
                              reduction=stop.reduction, rtol=stop.rtol,
                              patience=stop.patience, stop_at_stall=stop_at_stall)
    else:
        run = engine.sgd_run(inputs, labels, weights, start, hyper, epochs, tol,
                             stop.native(inputs))
        result = _decode_sgd(run, inputs, weights, hyper["momentum"],
                             hyper["weight_decay"], callback, stop_at_stall)
    if out is not None:
        with torch.no_grad():
            out.fill_(result.final_bias)
    return result


def _decode_sgd(run, inputs, weights, momentum, weight_decay, callback, stop_at_stall):
    """engine.decode for a bias-only SGD fit, marked (with stop_at_stall,
    cut back) where it stalled."""
    epoch, status, final, losses, biases, _ = run
    # (only a fit that ran out of epochs or plateaued can have: stall_epoch's
    # first test, asked here too to spare converged fits the call)
    stall = (None if status == CONVERGED
             else stall_epoch(run, inputs, weights, momentum, weight_decay))
    return engine.decode(epoch, status, final, losses, biases, callback, None, 6, stall,
                         stop_at_stall)
