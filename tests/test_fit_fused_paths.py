"""fit_fused's one route gives one result whichever way it reaches the
trainer: the direct call on the arguments as given (csrc/direct/read_args.h:
1-D CPU data, weights None or a tensor, plain floats), the direct call after
Python's checks (other number types), and the op (views, other devices)."""
import numpy as np
import pytest
import torch

import biasfit
from biasfit.train import tutorial_weights


def as_tuple(r):
    return r.epochs_run, r.final_bias, r.losses, r.converged


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_route_gives_the_same_fit(dtype):
    x, y = (t.to(dtype) for t in biasfit.tutorial_data())
    plain = as_tuple(biasfit.fit_fused(x, y))
    assert plain[0] == 34 and plain[3]
    general = [
        biasfit.fit_fused(x, y, weights=tutorial_weights(x)),   # given weights
        biasfit.fit_fused(x, y, bias=torch.tensor(0.0)),        # a tensor bias
        biasfit.fit_fused(x, y, lr=np.float64(0.1)),            # a NumPy float
        biasfit.fit_fused(x, y, epochs=np.int64(100)),          # a NumPy int
        biasfit.fit_fused(x, y, momentum=0),                    # an int
    ]
    for r in general:
        assert as_tuple(r) == plain
    # A strided view goes through the op: the same trainer, the same bits.
    xs = torch.stack([x, x], 1)[:, 0]
    ys = torch.stack([y, y], 1)[:, 0]
    assert not xs.is_contiguous()
    assert as_tuple(biasfit.fit_fused(xs, ys)) == plain


def test_plain_calls_with_bad_values_still_name_the_argument():
    x, y = biasfit.tutorial_data()
    for kwargs, match in [({"lr": -0.1}, "lr"), ({"lr": float("nan")}, "lr"),
                          ({"momentum": float("inf")}, "momentum"),
                          ({"epochs": -1}, "epochs"), ({"tol": -1.0}, "tol"),
                          ({"bias": float("inf")}, "bias"),
                          ({"nesterov": True}, "nesterov")]:
        with pytest.raises(ValueError, match=match):
            biasfit.fit_fused(x, y, **kwargs)


def test_the_plain_call_keeps_the_stall_and_callback_semantics():
    x, y = biasfit.tutorial_data()
    seen = []
    r = biasfit.fit_fused(x, y, callback=lambda e, loss, b: seen.append((e, loss, b)))
    assert [s[1] for s in seen] == r.losses and seen[0][2] == 0.0
    with pytest.raises(biasfit.StalledError):
        biasfit.fit_fused(x, y, bias=-100.0, epochs=5, on_stall="raise")
    with pytest.warns(biasfit.StalledWarning, match="stalled at epoch 0"):
        r = biasfit.fit_fused(x, y, bias=-100.0, epochs=5)
    assert (r.epochs_run, r.stop_reason, r.stall_epoch) == (5, "stalled", 0)
