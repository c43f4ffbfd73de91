"""Data makers shared by the tests."""
import torch

import biasfit


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
