"""biasfit.fit (both engines) and fit_fused against the tutorial's loop."""
import itertools
import math

import pytest
import torch

import biasfit
from biasfit import reference
from helpers import random_problem
from tolerances import ENGINES, ENGINES_SGD, TUTORIAL


def assert_close_lists(got, want, rtol):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a == pytest.approx(b, rel=rtol, abs=1e-300)


@pytest.mark.parametrize("engine", biasfit.train.ENGINES)
def test_reproduces_the_tutorial(engine):
    x, y = biasfit.tutorial_data()
    model = biasfit.BasicNN()
    result = biasfit.fit(model, x, y, engine=engine)
    assert result.converged
    assert result.epochs_run == 34
    assert len(result.losses) == 35
    assert round(result.final_bias, 4) == -16.0019
    assert result.final_loss == pytest.approx(6.59e-5, rel=1e-3)
    assert model.final_bias.item() == result.final_bias


def test_matches_the_tutorial_loop_bit_for_bit_in_float32():
    # Same per-point rounding and the same SGD arithmetic: the float32 loss of
    # every epoch equals the tutorial loop's float-summed one to float32 ulps.
    x, y = biasfit.tutorial_data()
    model = reference.TutorialNN()
    epochs, bias, losses = reference.tutorial_fit(
        model, x, y, torch.optim.SGD(model.parameters(), lr=0.1))
    result = biasfit.fit(biasfit.BasicNN(), x, y)
    assert result.epochs_run == epochs
    assert_close_lists(result.losses, losses, TUTORIAL[torch.float32])
    assert result.final_bias == pytest.approx(bias, rel=TUTORIAL[torch.float32])


OPTIMIZERS = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True),
    "sgd_weight_decay": lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.01),
    "adam": lambda p: torch.optim.Adam(p, lr=0.5),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_any_optimizer_matches_the_tutorial_loop(name):
    x, y, _, _ = random_problem(5, torch.float64, "cpu", seed=1)
    x = torch.cat([biasfit.tutorial_data()[0].double(), x])
    y = torch.cat([biasfit.tutorial_data()[1].double(), y])
    ref_model = reference.TutorialNN(dtype=torch.float64)
    epochs, bias, losses = reference.tutorial_fit(
        ref_model, x, y, OPTIMIZERS[name](ref_model.parameters()))
    model = biasfit.BasicNN(dtype=torch.float64)
    try:
        result = biasfit.fit(model, x, y, optimizer=OPTIMIZERS[name](model.parameters()))
    except biasfit.StalledError as stall:
        # The tutorial's loop runs on where biasfit stops: every later epoch of
        # it must have the stall's loss, and a bias no higher.
        result = stall.result
        assert epochs == 100 and len(losses) == 100
        assert losses[result.epochs_run:] == [losses[result.epochs_run]] * (
            100 - result.epochs_run)
        assert bias <= result.final_bias
        losses = losses[:result.epochs_run + 1]
    else:
        assert result.epochs_run == epochs
        assert result.final_bias == pytest.approx(bias, rel=TUTORIAL[torch.float64])
    assert_close_lists(result.losses, losses, TUTORIAL[torch.float64])


def sgd_settings():
    for momentum, dampening, nesterov, weight_decay, maximize in itertools.product(
            (0.0, 0.9), (0.0, 0.5), (False, True), (0.0, 0.01), (False, True)):
        if nesterov and (momentum == 0 or dampening != 0):
            continue  # torch.optim.SGD rejects these
        yield dict(momentum=momentum, dampening=dampening, nesterov=nesterov,
                   weight_decay=weight_decay, maximize=maximize)


SGD_SETTINGS = list(sgd_settings())


def engine_pair(x, y, bias0, lr, settings, epochs, tol):
    """Both engines' results; a fit that diverges (maximize climbs until the
    float32 loss overflows) yields a FitResult of what it saw before the error,
    with epochs_run set to the failing epoch; a fit that stalls (see
    biasfit.StalledError) with -epochs_run, so a stall never matches a stop."""
    results = []
    for engine in biasfit.train.ENGINES:
        model = biasfit.BasicNN(bias0, dtype=x.dtype).to(x.device)
        opt = torch.optim.SGD(model.parameters(), lr=lr, **settings)
        seen = []
        try:
            result = biasfit.fit(model, x, y, optimizer=opt, epochs=epochs, tol=tol,
                                 engine=engine, callback=lambda e, loss, b: seen.append(loss))
        except biasfit.DivergedError as err:
            result = biasfit.FitResult(err.epoch, math.nan, seen, False)
        except biasfit.StalledError as err:  # both engines must stall alike
            assert seen == err.result.losses
            result = biasfit.FitResult(-err.epoch, err.result.final_bias, seen, False)
        results.append(result)
    return results


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("settings", SGD_SETTINGS, ids=lambda s: "-".join(
    f"{k}={v}" for k, v in s.items() if v))
@pytest.mark.parametrize("n", [3, 1000, 100_003])  # 1000, 100_003: the CPU trainer may regroup
def test_fused_engine_equals_autograd_engine(n, settings, dtype, device):
    if n == 3:
        x, y = (t.to(device, dtype) for t in biasfit.tutorial_data())
        bias0, lr = 0.0, 0.1
    else:
        x, y, _, _ = random_problem(n, dtype, device, seed=n)
        bias0, lr = -2.0, 0.1 / n
    autograd, fused = engine_pair(x, y, bias0, lr, settings, epochs=100, tol=1e-4)
    assert fused.epochs_run == autograd.epochs_run
    assert fused.converged == autograd.converged
    assert_close_lists(fused.losses, autograd.losses, ENGINES[dtype])
    assert fused.final_bias == pytest.approx(autograd.final_bias, rel=ENGINES[dtype],
                                             nan_ok=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("settings", [SGD_SETTINGS[0], SGD_SETTINGS[-1]])
def test_fused_engine_equals_autograd_engine_at_1e6(settings, dtype, device):
    x, y, _, _ = random_problem(1_000_000, dtype, device, seed=5)
    autograd, fused = engine_pair(x, y, -2.0, 1e-7, settings, epochs=40, tol=0.0)
    assert fused.epochs_run == autograd.epochs_run == 40
    assert_close_lists(fused.losses, autograd.losses, ENGINES[dtype])
    assert fused.final_bias == pytest.approx(autograd.final_bias, rel=ENGINES[dtype])


@pytest.mark.parametrize("engine", biasfit.train.ENGINES)
def test_callback_sees_every_epoch(engine):
    x, y = biasfit.tutorial_data()
    seen = []
    result = biasfit.fit(biasfit.BasicNN(), x, y, engine=engine,
                         callback=lambda e, loss, b: seen.append((e, loss, b)))
    assert [e for e, _, _ in seen] == list(range(35))
    assert [loss for _, loss, _ in seen] == result.losses
    assert seen[0][2] == 0.0 and seen[-1][2] == result.final_bias


@pytest.mark.parametrize("engine", biasfit.train.ENGINES)
def test_model_double_and_to_work_as_usual(engine, device):
    x, y = (t.to(device, torch.float64) for t in biasfit.tutorial_data())
    model = biasfit.BasicNN().double().to(device)
    assert model.final_bias.dtype == torch.float64
    assert model.final_bias.device.type == device.type
    result = biasfit.fit(model, x, y, engine=engine)
    assert (result.epochs_run, round(result.final_bias, 4)) == (34, -16.0019)
    assert model(x).dtype == torch.float64


def test_fit_fused_functional_form():
    x, y = biasfit.tutorial_data()
    result = biasfit.fit_fused(x, y)
    assert (result.epochs_run, round(result.final_bias, 4)) == (34, -16.0019)
    w = torch.tensor(biasfit.TUTORIAL_WEIGHTS)
    again = biasfit.fit_fused(x, y, weights=w, bias=torch.tensor(0.0))
    assert again == result


@pytest.mark.parametrize("engine", biasfit.train.ENGINES)
def test_not_converged_runs_every_epoch(engine):
    x, y = biasfit.tutorial_data()
    result = biasfit.fit(biasfit.BasicNN(), x, y, epochs=10, engine=engine)
    assert not result.converged
    assert result.epochs_run == 10 and len(result.losses) == 10
    empty = biasfit.fit(biasfit.BasicNN(), x, y, epochs=0, engine=engine)
    assert (empty.epochs_run, empty.losses, empty.converged) == (0, [], False)
    assert math.isnan(empty.final_loss)


@pytest.mark.parametrize("engine", biasfit.train.ENGINES)
def test_nan_data_stops_with_the_epoch(engine):
    x, y = biasfit.tutorial_data()
    y[1] = float("nan")
    with pytest.raises(biasfit.DivergedError, match="the loss became nan at epoch 0"):
        biasfit.fit(biasfit.BasicNN(), x, y, engine=engine)


@pytest.mark.parametrize("what, bias0, dtype, settings", [
    # Climbing the loss until float32 overflows it.
    ("the loss became inf at epoch 5", 0.0, torch.float32, dict(lr=1e3, maximize=True)),
    # Epoch 1 has every output at 0 (finite loss), but its step overflows the bias.
    ("final_bias became inf at epoch 1", 10.0, torch.float64,
     dict(lr=1e300, weight_decay=1.0)),
])
def test_divergence_is_reported_at_the_same_epoch_by_both_engines(what, bias0, dtype, settings):
    x, y = (t.to(dtype) for t in biasfit.tutorial_data())
    for engine in biasfit.train.ENGINES:
        model = biasfit.BasicNN(bias0, dtype=dtype)
        opt = torch.optim.SGD(model.parameters(), **settings)
        with pytest.raises(biasfit.DivergedError, match=what):
            biasfit.fit(model, x, y, optimizer=opt, engine=engine)


# float32: the engines' bound, and why it is looser than float64's. Each step
# torch's CPU add_(grad, alpha=-lr) may fuse the multiply-add (one rounding)
# where biasfit rounds lr * grad first (two): one float32 rounding apart per
# step, which later steps carry and compound. Measured over 1248 fits of 100
# epochs (N = 3 .. 100003, lr 0.02 .. 0.5 per point, every SGD setting):
# losses within 7.2e-5 relative, biases within 6e-5 (2e-6 at lr 0.1 per
# point). tests/tolerances.py's ENGINES_SGD, which docs/numerics.md states.


@pytest.mark.parametrize("n", [3, 10])
@pytest.mark.parametrize("lr_per_point", [0.02, 0.5])
@pytest.mark.parametrize("settings", SGD_SETTINGS, ids=lambda s: "-".join(
    f"{k}={v}" for k, v in s.items() if v) or "plain")
def test_float32_engines_agree_within_the_stated_bound(n, lr_per_point, settings):
    if n == 3:
        x, y = biasfit.tutorial_data()
        bias0, lr = 0.0, lr_per_point
    else:
        x, y, _, _ = random_problem(n, torch.float32, "cpu", seed=0)
        bias0, lr = -2.0, lr_per_point / n
    autograd, fused = engine_pair(x, y, bias0, lr, settings, epochs=100, tol=1e-4)
    assert fused.epochs_run == autograd.epochs_run
    assert_close_lists(fused.losses, autograd.losses, ENGINES_SGD[torch.float32])
    assert fused.final_bias == pytest.approx(autograd.final_bias, rel=ENGINES_SGD[torch.float32],
                                             nan_ok=True)
