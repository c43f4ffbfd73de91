"""The tutorial's epoch loop in Python: the autograd engine's, and every
sharded fit's (biasfit/distributed.py adds the collectives around it).

An epoch evaluates the loss and gradient at the current parameters; the
loop stops before the step once the loss is below `tol` or has plateaued
(Plateau), else the optimizer steps. The fused engine runs this same loop natively
(csrc/core/fit.h) and only comes here under torch.distributed.
"""
import math

from . import distributed
from .result import DivergedError, FitResult, mark_stalled
from .stall import first_stall, hidden_max, stall_in


class Plateau:
    """core/fit.h's plateau stop, the same test in the same float64
    arithmetic: with rtol > 0, stop once the loss has not fallen below its
    lowest so far by more than rtol times that lowest for `patience` epochs
    in a row."""

    def __init__(self, rtol, patience):
        self.rtol, self.patience = rtol, patience
        self.best, self.wait = 0.0, -1

    def reached(self, loss) -> bool:
        if not self.rtol > 0:
            return False
        if self.wait < 0 or self.best - loss > self.rtol * self.best:
            self.best, self.wait = loss, 0
            return False
        self.wait += 1
        return self.wait >= self.patience


def epoch_loop(sums, param, optimizer, epochs, tol, callback, checked=None, stall=None,
               rtol=0.0, patience=0, stop_at_stall=False):
    """sums(epoch) -> (loss, grad of param, or None where backward set the
    grads); param: final_bias; checked: the (name, parameter) pairs that
    must stay finite (default final_bias); stall: where a stall
    (biasfit/stall.py) is to be watched for, stalled(bias, next bias) ->
    whether every unit is off at bias and the step did not go up, else None;
    rtol, patience: the plateau stop (Plateau); stop_at_stall: end the fit
    at a stall, else run on as torch.optim does (the result says where)."""
    checked = checked or [("final_bias", param)]
    plateau = Plateau(rtol, patience)
    losses = []
    stalled = None
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
            return _ended(FitResult(epoch, bias, losses, True, stop_reason="converged"),
                          stalled)
        if plateau.reached(value):
            return _ended(FitResult(epoch, bias, losses, False, stop_reason="plateau"),
                          stalled)
        optimizer.step()
        for name, p in checked:
            if not math.isfinite(p.item()):
                raise DivergedError(epoch, name, p.item())
        # Every unit off gives a gradient of exactly 0: only then look further.
        if (stall is not None and stalled is None and param.grad.item() == 0
                and stall(bias, param.item())):
            stalled = (epoch, param.item())
            if stop_at_stall:
                return _ended(FitResult(epoch, param.item(), losses, False), stalled)
    return _ended(FitResult(epochs, param.item(), losses, False), stalled)


def _ended(result, stalled):
    return result if stalled is None else mark_stalled(result, *stalled)


def local_stall(inputs, weights):
    """epoch_loop's stall test over one process's inputs."""
    return lambda bias, after: first_stall(inputs, weights, [bias, after]) is not None


def sharded_loop(local_sums, param, optimizer, epochs, tol, callback, data, settings,
                 *, width=1, set_grads=None, checked=None, stall_weights=None,
                 reduction="sum", rtol=0.0, patience=0, stop_at_stall=False):
    """epoch_loop under torch.distributed: local_sums() -> this rank's
    (loss, grads) at `param` (final_bias); every rank's sums are added
    (distributed.sum_over_ranks), over the total number of rows for
    reduction="mean", and every rank steps and stops alike.
    data: this rank's (inputs, labels); settings: what every rank must share
    (check_shards adds the start bias, epochs, tol and the stop rules); width:
    the gradients in a row (one per trained parameter); set_grads(summed
    grads) hands them to the optimizer (default: param.grad); checked: as
    epoch_loop's; stall_weights: the six weights where a stall is watched
    for (the hidden maximum over every rank's rows decides it, the same on
    every rank); rtol, patience, stop_at_stall: as epoch_loop's."""
    rows = distributed.check_shards(*data, dict(
        settings, bias=param.item(), epochs=epochs, tol=tol, reduction=reduction,
        rtol=rtol, patience=patience, stop_at_stall=stop_at_stall))
    local_sums = distributed.shard_sums(local_sums, data[0], param, width)
    stall = None
    if stall_weights is not None:
        top = distributed.max_over_ranks(hidden_max(data[0], stall_weights))
        stall = lambda bias, after: stall_in(top, [bias, after]) is not None  # noqa: E731
    # Every rank runs the loop in lockstep: an exception on one rank, in an
    # epoch's sums, the callback or the step, stops them all.
    with distributed.Lockstep(width, rows if reduction == "mean" else 1) as lockstep:
        def sums(epoch):
            loss, grad = lockstep.sums(local_sums, epoch, param)
            if set_grads is None:
                return loss, grad
            set_grads(grad)
            return loss, None
        result = epoch_loop(sums, param, optimizer, epochs, tol, callback, checked=checked,
                            stall=stall, rtol=rtol, patience=patience,
                            stop_at_stall=stop_at_stall)
    if result.stall_epoch is not None:
        result._stall_points = rows
    return result
