"""The stall (result.StalledWarning, StalledError), decided in one place.

Once final_bias is so low that every point's output unit is off
(hidden + final_bias <= 0), every output is 0 and the gradient exactly 0.
With SGD without weight decay the step is then momentum alone, whose
direction never changes: a step down (or none) means every later one is
down too, so the units stay off and no epoch can ever change the loss.

What then happens is the caller's on_stall (settle): "warn" (the default)
keeps torch.optim's whole trajectory and warns once, "stop" ends the fit at
the stall and warns, "raise" raises StalledError.
"""
import warnings

import torch

from .engine import EXHAUSTED, PLATEAU, bias_list, weights_tensor
from .result import StalledError, StalledWarning, stall_message

ON_STALL = ("warn", "stop", "raise")


def settle(result, on_stall, n_points, lr, reduction):
    """result, after the warning or the error its stall calls for (none
    for a fit that did not stall)."""
    if result.stall_epoch is None:
        return result
    if on_stall == "raise":
        raise StalledError(result, result._stall_points or n_points, lr, reduction)
    n_points = result._stall_points or n_points
    text = stall_message(result.stall_epoch, result._stall_bias, n_points, lr, reduction)
    ran_on = "stopped there" if on_stall == "stop" else (
        f"ran on to epoch {result.epochs_run} as torch.optim does (on_stall=\"stop\" "
        f"stops at the stall)")
    warnings.warn(f"biasfit: {text}; the fit {ran_on}", StalledWarning, stacklevel=3)
    return result


def may_stall(weight_decay, momentum) -> bool:
    """Whether the stall argument above holds for these SGD settings."""
    return weight_decay == 0 and momentum <= 1


def stall_epoch(run, inputs, weights, momentum, weight_decay):
    """The epoch at which a native bias-only SGD fit stalled, or None: the
    one decision for every route into the native trainer (the autograd
    engine and the sharded loops ask first_stall epoch by epoch, with the
    same test). run: the fit's result (engine.py: epoch, status,
    final_bias, losses, biases, zero_grad); weights: as engine.direct_sgd
    takes them.

    Only a fit that ran out of epochs with a last step that did not go up
    can have stalled, and only from an epoch whose gradient was exactly 0
    (every unit off gives 0): only then is the pass over the inputs worth it
    (at 1e7 points it costs more than a 10-epoch fit). The direct call's
    trainer reports that epoch (zero_grad, -1 for none); the op reports no
    gradient (zero_grad None), but a stall that began before its last epoch
    repeats its loss exactly (every output is 0, so the loss is sum(y^2) in
    the kernel's fixed order), so a repeated last loss stands in for it
    there."""
    _, status, final, losses, biases, zero_grad = run
    if status not in (EXHAUSTED, PLATEAU) or not may_stall(weight_decay, momentum):
        return None
    if zero_grad is None:
        zero_grad = len(losses) - 2 if len(losses) > 1 and losses[-1] == losses[-2] else -1
    if zero_grad < 0:
        return None
    biases = bias_list(biases)
    if final > biases[-1]:
        return None
    # Only here: the lookup is a tenth of a 3-point fit. (A plateau's last
    # epoch took no step: its bias is final.)
    return first_stall(inputs, weights_tensor(weights, inputs),
                       biases if status == PLATEAU else biases + [final])


def first_stall(inputs, weights, biases):
    """The first epoch e whose bias biases[e] turns every unit off and whose
    step does not go up (biases[e + 1] <= biases[e]), or None. One pass over
    the inputs, in their dtype and core/network.h's order of operations."""
    return stall_in(hidden_max(inputs, weights), biases)


def hidden_max(inputs, weights):
    """The largest output unit input before final_bias (a 0-d tensor in the
    inputs' dtype; -inf for no inputs): every unit is off at a bias b where
    hidden_max + b <= 0."""
    w00, b00, w01, w10, b10, w11 = weights.unbind()
    with torch.no_grad():
        if inputs.numel() == 0:
            return torch.tensor(-torch.inf, dtype=inputs.dtype, device=inputs.device)
        hidden = (inputs * w00 + b00).relu() * w01 + (inputs * w10 + b10).relu() * w11
        return hidden.max()


def stall_in(top, biases):
    """first_stall's test with the hidden maximum `top` already known (the
    maximum over every rank's shard, under torch.distributed)."""
    with torch.no_grad():
        b = torch.tensor(biases, dtype=top.dtype, device=top.device)
        stalled = ((top + b[:-1]) <= 0) & (b[1:] <= b[:-1])
        hits = stalled.nonzero()
    return int(hits[0]) if len(hits) else None
