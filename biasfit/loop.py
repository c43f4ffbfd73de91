"""The tutorial's epoch loop in Python: the autograd engine's, and every
sharded fit's (biasfit/distributed.py adds the collectives around it).

An epoch evaluates the loss and gradient at the current parameters; the
loop stops before the step once the loss is below `tol`, else the
optimizer steps. The fused engine runs this same loop natively
(csrc/core/fit.h) and only comes here under torch.distributed.
"""
import math

from . import distributed
from .result import DivergedError, FitResult, StalledError
from .stall import first_stall


def epoch_loop(sums, param, optimizer, epochs, tol, callback, checked=None, stall=None):
    """sums(epoch) -> (loss, grad of param, or None where backward set the
    grads); param: final_bias; checked: the (name, parameter) pairs that
    must stay finite (default final_bias); stall: (inputs, weights) where a
    stall (biasfit/stall.py) is to stop the fit, else None."""
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
        if stall is not None and param.grad.item() == 0 and first_stall(
                stall[0], stall[1], [bias, param.item()]) is not None:
            raise StalledError(FitResult(epoch, param.item(), losses, False),
                               len(stall[0]), optimizer.param_groups[0]["lr"])
    return FitResult(epochs, param.item(), losses, False)


def sharded_loop(local_sums, param, optimizer, epochs, tol, callback, data, settings,
                 *, width=1, set_grads=None, checked=None):
    """epoch_loop under torch.distributed: local_sums() -> this rank's
    (loss, grads) at `param` (final_bias); every rank's sums are added
    (distributed.sum_over_ranks), and every rank steps and stops alike.
    data: this rank's (inputs, labels); settings: what every rank must share
    (check_shards adds the start bias, epochs and tol); width: the gradients
    in a row (one per trained parameter); set_grads(summed grads) hands them
    to the optimizer (default: param.grad); checked: as epoch_loop's."""
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
        return epoch_loop(sums, param, optimizer, epochs, tol, callback, checked=checked)
