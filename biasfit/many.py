"""fit_many: K independent fits in one native call (csrc/cpu/fit_many.h).

One curve per compound on a plate, a learning-rate sweep, bootstrap
resamples: each fit is the fit that fit_fused (final_bias alone, SGD) or
fit(engine="fused") (any other trained parameters, Adam, AdamW) runs on its
points alone, with the same epochs and bits. A fit that diverges or stalls
says so in its status; it never raises for the batch. A stalled fit stops
at its stall, as fit_fused(on_stall="stop") does (fit_fused's default runs
on, as torch.optim does).
"""
import math
import numbers
from dataclasses import dataclass

import torch

from . import _direct, distributed
from .engine import MAX_EPOCHS, OPTIMIZER_KINDS, cached_tutorial_weights
from .model import PARAM_NAMES
from .train import REDUCTIONS

STATUS_NAMES = {_direct.CONVERGED: "converged", _direct.EXHAUSTED: "exhausted",
                _direct.LOSS_NONFINITE: "diverged", _direct.BIAS_NONFINITE: "diverged",
                _direct.PLATEAU: "plateau", _direct.STALLED: "stalled"}
# fit_many's optimizer names for the native kinds (engine.OPTIMIZER_KINDS).
OPTIMIZERS = {name.lower(): kind for name, kind in OPTIMIZER_KINDS.items()}

# The settings table's columns (csrc/core/many.h's ManyColumn), each a
# setting that may be shared (a number) or given per fit (K of them).
_COLUMNS = ("lr", "momentum", "dampening", "nesterov", "weight_decay", "maximize",
            "beta1", "beta2", "eps", "amsgrad", "epochs", "tol", "rtol", "patience", "mean")
_FLAGS = ("nesterov", "maximize", "amsgrad")


@dataclass
class ManyResult:
    """What fit_many returns, one entry per fit (tensors of K).

    params: [K, 7] final values (PARAM_NAMES' order); loss: the last
    evaluated epoch's loss (NaN for a fit of 0 epochs), as FitResult's
    final_loss; epochs: the epoch each fit stopped at (FitResult.epochs_run);
    status: int8 codes (STATUS_NAMES: converged, exhausted, plateau,
    stalled, diverged); bad_param: the parameter that became inf/NaN (-1: none);
    losses: [K, E] every evaluated epoch's loss, NaN after a fit's last
    (only with history=True, else None)."""
    params: torch.Tensor
    loss: torch.Tensor
    epochs: torch.Tensor
    status: torch.Tensor
    bad_param: torch.Tensor
    losses: torch.Tensor = None

    def __len__(self):
        return len(self.epochs)

    @property
    def final_bias(self) -> torch.Tensor:
        return self.params[:, -1]

    @property
    def converged(self) -> torch.Tensor:
        return self.status == _direct.CONVERGED

    def status_names(self) -> list:
        """Each fit's status as a word: converged, exhausted, plateau, stalled,
        diverged."""
        return [STATUS_NAMES[int(s)] for s in self.status.tolist()]

    def counts(self) -> dict:
        """How many fits ended each way, e.g. {"converged": 998, "stalled": 2}."""
        out = {}
        for name in self.status_names():
            out[name] = out.get(name, 0) + 1
        return out


def _per_fit(name, value, fits):
    """A setting as a float64 column of `fits` values: a number is shared;
    a sequence or tensor must hold one value per fit."""
    if isinstance(value, (bool, numbers.Real)):
        return torch.full((fits,), float(value), dtype=torch.float64)
    column = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
    if column.numel() != fits:
        raise ValueError(f"{name} must be one number or one per fit ({fits}), got "
                         f"{column.numel()} values")
    return column


def _settings(fits, values: dict) -> torch.Tensor:
    """The settings table: one shared row where every setting is a number,
    else one row per fit."""
    if all(isinstance(v, (bool, numbers.Real)) for v in values.values()):
        return torch.tensor([[float(values[c]) for c in _COLUMNS]], dtype=torch.float64)
    return torch.stack([_per_fit(c, values[c], fits) for c in _COLUMNS], dim=1)


def _mean(reduction):
    """The mean column's flag for reduction (one for every fit)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction == "mean"


def _data(inputs, labels, offsets):
    """(inputs, labels, offsets tensor, K) as the op takes them."""
    for name, value in (("inputs", inputs), ("labels", labels)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    if offsets is None:
        if inputs.dim() != 2:
            raise ValueError(f"inputs must be [K, N] without offsets (or 1-D with "
                             f"offsets), got shape {list(inputs.shape)}")
        return inputs, labels, torch.empty(0, dtype=torch.int64), inputs.shape[0]
    offsets = torch.as_tensor(offsets, dtype=torch.int64, device="cpu").reshape(-1)
    if inputs.dim() != 1:
        raise ValueError(f"inputs must be 1-D with offsets, got shape {list(inputs.shape)}")
    if offsets.numel() < 2:
        raise ValueError(f"offsets must hold K + 1 >= 2 values, got {offsets.numel()}")
    return inputs, labels, offsets, offsets.numel() - 1


def _start(weights, bias, fits, like) -> torch.Tensor:
    """The starting values, [1, 7] when shared, else [K, 7]."""
    dtype = like.dtype
    if weights is None:
        weights = cached_tutorial_weights(dtype, like.device)
    weights = torch.as_tensor(weights, dtype=dtype, device=like.device)
    if weights.shape not in ((6,), (fits, 6)):
        raise ValueError(f"weights must hold 6 values, or [K, 6] with K = {fits}, got "
                         f"shape {list(weights.shape)}")
    bias = torch.as_tensor(bias, dtype=dtype, device=like.device)
    if bias.numel() not in (1, fits):
        raise ValueError(f"bias must be one number or one per fit ({fits}), got "
                         f"{bias.numel()} values")
    for name, value in (("weights", weights), ("bias", bias)):
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} must be finite, got a non-finite value")
    if weights.dim() == 1 and bias.numel() == 1:
        return torch.cat([weights, bias.reshape(1)]).reshape(1, 7)
    return torch.cat([weights.reshape(-1, 6).expand(fits, 6),
                      bias.reshape(-1, 1).expand(fits, 1)], dim=1)


def fit_many(inputs, labels, *, offsets=None, weights=None, bias=0.0,
             trained=("final_bias",), optimizer="sgd", lr=0.1, momentum=0.0,
             dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False,
             betas=(0.9, 0.999), eps=1e-8, amsgrad=False, epochs=100, tol=1e-4,
             reduction="sum", rtol=0.0, patience=10, history=False) -> ManyResult:
    """K independent fits in one native call, on torch's intra-op threads.

    inputs, labels: [K, N] (K fits of N points), or 1-D with offsets (K + 1
    rising values from 0 to the points' count: fit k is points offsets[k] to
    offsets[k + 1]). weights: the six starting weights, [6] or [K, 6]
    (default the tutorial's); bias: the starting final_bias, one or K.
    trained: the parameters that train (names from PARAM_NAMES), optimizer
    "sgd", "adam" or "adamw" with torch.optim's settings; each setting (lr,
    momentum, ..., betas' two values, epochs, tol) one number shared by every
    fit or one per fit. The stop rules are fit's: tol, and the plateau stop
    (rtol > 0 for patience epochs), rtol and patience likewise shared or per
    fit; reduction "sum" or "mean" (each fit's mean over its own points).
    history: keep every epoch's loss ([K, E]).
    Each fit equals fit_fused / fit(engine="fused") on its points alone.
    Bad input raises one ValueError naming the argument, before any fit runs.
    """
    x, y, offsets, fits = _data(inputs, labels, offsets)
    if isinstance(trained, str):
        trained = (trained,)
    unknown = [n for n in trained if n not in PARAM_NAMES]
    if unknown or not trained:
        raise ValueError(f"trained must name one or more of {PARAM_NAMES}, got {trained!r}")
    mask = sum(1 << PARAM_NAMES.index(n) for n in set(trained))
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {optimizer!r}")
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    values = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                  weight_decay=weight_decay, maximize=maximize, beta1=betas[0],
                  beta2=betas[1], eps=eps, amsgrad=amsgrad, epochs=epochs, tol=tol,
                  rtol=rtol, patience=patience, mean=_mean(reduction))
    for name in _FLAGS:
        flag = values[name]
        if not (isinstance(flag, bool) or isinstance(flag, torch.Tensor)
                or isinstance(flag, (list, tuple))):
            raise TypeError(f"{name} must be True or False (or one per fit), got {flag!r}")
    if isinstance(epochs, numbers.Real) and not (
            isinstance(epochs, numbers.Integral) and 0 <= epochs <= MAX_EPOCHS):
        raise ValueError(f"epochs must be an int in [0, {MAX_EPOCHS}], got {epochs!r}")
    settings = _settings(fits, values)
    start = _start(weights, bias, fits, x)
    call = (mask, OPTIMIZERS[optimizer], bool(history))
    if distributed.is_distributed():
        out = _sharded(x, y, offsets, start, settings, fits, call)
    else:
        out = torch.ops.biasfit.fit_many(x, y, offsets, start, settings, *call)
    params, loss, epochs_run, status, bad, losses, _ = out
    raise_if_interrupted(status)
    return ManyResult(params, loss, epochs_run, status, bad, losses if history else None)


def raise_if_interrupted(status):
    """KeyboardInterrupt where Ctrl-C stopped the fits: the op then gives
    every fit status INTERRUPTED (csrc/torch_ops/fit_many_cpu.cpp), having
    run Python's handler and cleared its exception."""
    if len(status) and int(status[0]) == _direct.INTERRUPTED:
        raise KeyboardInterrupt


def _rows(t, block):
    """t's rows of the block of fits, or its one shared row."""
    return t if len(t) == 1 else t[block]


def _sharded(x, y, offsets, start, settings, fits, call):
    """Under torch.distributed every rank holds every fit; each runs its
    block of them (distributed.shard_rows) and every rank gathers all the
    results: each fit's are its one-process results, bit for bit. The data
    is checked whole on every rank first, so that a bad point in one
    rank's block stops every rank alike (distributed.all_or_none)."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    block = distributed.shard_rows(fits, rank, world)
    with distributed.all_or_none("fit_many"):
        # Every check over all the fits, none run: epochs 0 for each.
        unrun = settings.clone()
        unrun[:, _COLUMNS.index("epochs")] = 0
        torch.ops.biasfit.fit_many(x, y, offsets, start, unrun, *call[:2], False)
        local = None
        if block.stop > block.start:
            if offsets.numel():
                lo, hi = int(offsets[block.start]), int(offsets[block.stop])
                xs, ys, offs = x[lo:hi], y[lo:hi], offsets[block.start:block.stop + 1] - lo
            else:
                xs, ys, offs = x[block], y[block], offsets
            local = torch.ops.biasfit.fit_many(xs, ys, offs, _rows(start, block),
                                               _rows(settings, block), *call)[:6]
            raise_if_interrupted(local[3])
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, local)
    parts = [g for g in gathered if g is not None]
    # Each block's history is as wide as its longest fit: NaN up to the widest.
    width = max(p[5].shape[1] for p in parts)
    histories = [torch.nn.functional.pad(p[5], (0, width - p[5].shape[1]), value=math.nan)
                 for p in parts]
    return (*(torch.cat([p[i] for p in parts]) for i in range(5)), torch.cat(histories),
            None)
