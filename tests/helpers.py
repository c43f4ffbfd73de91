"""Data makers shared by the tests."""
from pathlib import Path

import torch

import biasfit

def default_sigint():
    """Popen's preexec_fn for a child that is to get Ctrl-C as a terminal
    user's program does: SIGINT back to its default action, which Python
    turns into KeyboardInterrupt. A shell without job control starts
    background jobs with SIGINT ignored, and children inherit that (a CI
    run launched in the background would otherwise test nothing)."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# Where `python -c` children run: in a checkout the repository root holds the
# source folder biasfit/, which would shadow the installed package.
CHILD_CWD = Path(__file__).resolve().parent


def random_problem(n, dtype, device, seed=0):
    """Inputs spread over every relu's both sides, labels near the outputs.

    x in [-0.5, 1.5] crosses both hidden kinks (x = 0.5 and x = 0); the bias
    puts the output relu's kink inside the data too.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, generator=g, dtype=torch.float64) * 2 - 0.5
    y = torch.rand(n, generator=g, dtype=torch.float64) * 3
    weights = torch.tensor(biasfit.TUTORIAL_WEIGHTS, dtype=torch.float64)
    bias = torch.tensor(-2.0, dtype=torch.float64)
    return tuple(t.to(dtype=dtype, device=device) for t in (x, y, weights, bias))


def rel_err(a, b):
    a, b = float(a), float(b)
    return abs(a - b) / max(abs(b), 1e-300)


# The CPU trainer may regroup the points by hidden value (csrc/cpu/active_set.h)
# when its cost model says so (cpu/plan.h's choose_plan); BIASFIT_TRAINER_PLAN
# forces a plan. REGROUP_EPOCHS: a fit long enough to regroup where forced;
# CHUNK: cpu/reduce.h's kChunk.
REGROUP_EPOCHS, CHUNK = 32, 1 << 14


def regrouped_order(x, w):
    """csrc/cpu/active_set.h's order: a stable sort on the top 12 bits of an
    order-preserving key of float32(hidden(x))."""
    w00, b00, w01, w10, b10, w11 = w
    h = (x * w00 + b00).relu() * w01 + (x * w10 + b10).relu() * w11  # core/network.h's order
    u = h.float().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    key = torch.where(u >= 0x80000000, ~u & 0xFFFFFFFF, u | 0x80000000) >> 20
    return torch.sort(key, stable=True).indices


def cpu_trainer_order(x, w, epochs):
    """The order in which the CPU trainer sums x's points in a fit of
    `epochs` epochs from bias 0: regrouped_order or x's own (None)."""
    from biasfit import _direct

    if x.device.type != "cpu":
        return None
    # cpu/plan.h's plan_for, the trainer's own choice (from bias 0).
    plan = _direct.trainer_plan_of(x.contiguous().numpy(),
                                   torch.as_tensor(w, dtype=x.dtype).numpy(), 0.0, epochs)
    return regrouped_order(x, w) if plan == "regroup" else None
