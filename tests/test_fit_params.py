"""Both engines train any subset of the seven parameters (issue 13): the
autograd engine (fused_loss_grads + torch.optim) and the fused trainer
(fit_params, torch.optim's rules natively) agree, and both follow the
pure-PyTorch reference."""
import pytest
import torch

import biasfit
from biasfit import reference
from biasfit.model import PARAM_NAMES
from helpers import random_problem
from tolerances import ENGINES

PARAMS = PARAM_NAMES
SUBSETS = {"bias": ("final_bias",), "weights": PARAMS[:6], "hidden": ("w00", "b00", "w10"),
           "all": PARAMS}
# The engines' agreement, per dtype (tests/tolerances.py's ENGINES): the same
# gradient bits, optimizer arithmetic that may differ by torch's fused
# multiply-adds. Measured worst: 8.5e-16 (float64), 3.4e-7 (float32), over
# these settings.
OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=1e-4),
    "sgd_momentum_dampening_wd": lambda p: torch.optim.SGD(
        p, lr=1e-4, momentum=0.9, dampening=0.1, weight_decay=0.01),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=1e-4, momentum=0.9, nesterov=True,
                                              weight_decay=0.01),
    "sgd_maximize": lambda p: torch.optim.SGD(p, lr=1e-8, momentum=0.5, maximize=True),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),
    "adam_wd_amsgrad": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    "adamw_amsgrad_maximize": lambda p: torch.optim.AdamW(p, lr=0.001, amsgrad=True,
                                                          maximize=True, betas=(0.8, 0.99)),
}


def model_training(subset, dtype, cls=biasfit.BasicNN):
    model = cls(final_bias=-2.0, dtype=dtype)
    for name in PARAMS:
        getattr(model, name).requires_grad_(name in subset)
    return model


def assert_close(got, want, rtol):
    assert got == pytest.approx(want, rel=rtol, abs=1e-300)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("subset", SUBSETS)
@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_engines_agree(opt, subset, dtype):
    x, y, _, _ = random_problem(2000, dtype, "cpu", seed=5)
    results = {}
    for engine in ("autograd", "fused"):
        model = model_training(SUBSETS[subset], dtype)
        optimizer = OPTIMIZERS[opt](model.parameters())
        results[engine] = biasfit.fit(model, x, y, optimizer=optimizer, epochs=60, tol=0,
                                      engine=engine)
        for name in PARAMS:  # the model holds the fit's final values
            value = getattr(model, name).item()
            if name in SUBSETS[subset]:
                assert value == results[engine].params[name]
    a, f = results["autograd"], results["fused"]
    assert a.epochs_run == f.epochs_run == 60
    assert set(a.params) == set(f.params) == set(SUBSETS[subset])
    for la, lf in zip(a.losses, f.losses):
        assert_close(lf, la, ENGINES[dtype])
    for name in a.params:
        assert_close(f.params[name], a.params[name], ENGINES[dtype])


@pytest.mark.parametrize("engine", ["autograd", "fused"])
@pytest.mark.parametrize("subset", ["bias", "all"])
def test_engines_follow_the_reference_module(engine, subset):
    # float64: eager autograd over TutorialNN with the same optimizer.
    x, y, _, _ = random_problem(3001, torch.float64, "cpu", seed=11)
    model = model_training(SUBSETS[subset], torch.float64)
    ref = model_training(SUBSETS[subset], torch.float64, reference.TutorialNN)
    result = biasfit.fit(model, x, y, optimizer=torch.optim.Adam(model.parameters(), lr=0.02),
                         epochs=50, tol=0, engine=engine)
    _, _, losses = reference.vectorized_fit(ref, x, y, torch.optim.Adam(ref.parameters(),
                                                                        lr=0.02), epochs=50, tol=0)
    for a, b in zip(result.losses, losses):
        assert_close(a, b, 1e-10)
    for name in SUBSETS[subset]:
        assert_close(result.params[name], getattr(ref, name).item(), 1e-10)


def test_fused_engine_converges_at_the_same_epoch():
    x, y = biasfit.tutorial_data()
    epochs = {}
    for engine in ("autograd", "fused"):
        model = biasfit.BasicNN()  # the tutorial's start, all seven training
        for p in model.parameters():
            p.requires_grad_(True)
        r = biasfit.fit(model, x, y, optimizer=torch.optim.Adam(model.parameters(), lr=0.05),
                        epochs=500, tol=1e-4, engine=engine)
        epochs[engine] = (r.epochs_run, r.converged)
    assert epochs["autograd"] == epochs["fused"] and epochs["fused"][1]


def test_divergence_names_the_parameter():
    # Labels far above the outputs: a step raises w11 by lr times a gradient
    # over 1, so lr 1e300 overflows the next loss, lr 1e308 w11 itself.
    x, y, _, _ = random_problem(100, torch.float64, "cpu")
    for engine in ("autograd", "fused"):
        model = model_training(("w11",), torch.float64)
        with pytest.raises(biasfit.DivergedError, match="the loss became inf at epoch 1"):
            biasfit.fit(model, x, y + 1e3, epochs=10, engine=engine,
                        optimizer=torch.optim.SGD(model.parameters(), lr=1e300))
        model = model_training(("w11",), torch.float64)
        with pytest.raises(biasfit.DivergedError, match="w11 became (inf|nan) at epoch 0"):
            biasfit.fit(model, x, y + 1e3, epochs=10, engine=engine,
                        optimizer=torch.optim.SGD(model.parameters(), lr=1e308, momentum=1e10))


def test_fit_params_op_checks_and_opcheck():
    x, y, _, _ = random_problem(50, torch.float64, "cpu")
    params = torch.tensor(biasfit.TUTORIAL_WEIGHTS + (-2.0,), dtype=torch.float64)
    torch.library.opcheck(torch.ops.biasfit.fit_params.default,
                          (x, y, params, 127, 1, 0.01, 0.0, 0.0, False, 0.0, False,
                           0.9, 0.999, 1e-8, True, 5, 0.0))
    with pytest.raises(ValueError, match="trained must be"):
        torch.ops.biasfit.fit_params(x, y, params, 128, 0, 0.1, 0.0, 0.0, False, 0.0, False,
                                     0.9, 0.999, 1e-8, False, 5, 0.0)
    with pytest.raises(ValueError, match="beta2 must be"):
        torch.ops.biasfit.fit_params(x, y, params, 1, 1, 0.1, 0.0, 0.0, False, 0.0, False,
                                     0.9, 1.0, 1e-8, False, 5, 0.0)
    with pytest.raises(ValueError, match="params must be 1-D with 7 values"):
        torch.ops.biasfit.fit_params(x, y, params[:6], 1, 0, 0.1, 0.0, 0.0, False, 0.0, False,
                                     0.9, 0.999, 1e-8, False, 5, 0.0)
