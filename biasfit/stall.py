"""The summed loss's stall (result.StalledError), decided in one place.

Once final_bias is so low that every point's output unit is off
(hidden + final_bias <= 0), every output is 0 and the gradient exactly 0.
With SGD without weight decay the step is then momentum alone, whose
direction never changes: a step down (or none) means every later one is
down too, so the units stay off and no epoch can ever change the loss.
"""
import torch

from .engine import EXHAUSTED, bias_list, weights_tensor


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
    if status != EXHAUSTED or not may_stall(weight_decay, momentum):
        return None
    if zero_grad is None:
        zero_grad = len(losses) - 2 if len(losses) > 1 and losses[-1] == losses[-2] else -1
    if zero_grad < 0:
        return None
    biases = bias_list(biases)
    if final > biases[-1]:
        return None
    # Only here: the lookup is a tenth of a 3-point fit.
    return first_stall(inputs, weights_tensor(weights, inputs), biases + [final])


def first_stall(inputs, weights, biases):
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
