"""What ends a fit besides tol and epochs, and the mean loss (issue 27):

- a stall (every output unit off) follows plain torch.optim's trajectory by
  default with one StalledWarning; on_stall="stop" ends the fit there,
  on_stall="raise" raises StalledError;
- reduction="mean" divides the loss and gradient sums by N (core/fit.h's
  divide_by), so lr need not shrink as N grows;
- the plateau stop (rtol, patience: core/fit.h's Plateau) ends a fit whose
  loss has stopped improving, with stop_reason "plateau".
Every route into the native trainer (the direct call, the op, fit_params)
and the autograd engine must agree.
"""
import warnings

import pytest
import torch

import biasfit
from biasfit.reference import TutorialNN, vectorized_fit, vectorized_loss
from tolerances import ENGINES, ENGINES_SGD


def noisy_doses(n, dtype=torch.float32, seed=0, noise=0.05):
    """n doses over [0, 1] labelled by the network at final_bias -16, plus noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = biasfit.BasicNN(-16.0, dtype=torch.float64)(x)
    y = y + noise * torch.randn(n, generator=g, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def momentum_sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.0005, momentum=0.9)


# -- the stall -------------------------------------------------------------------


def torch_optim_losses(x, y, epochs):
    model = TutorialNN(dtype=x.dtype)
    _, bias, losses = vectorized_fit(model, x, y, momentum_sgd(model), epochs=epochs)
    return losses, bias


@pytest.mark.parametrize("engine", biasfit.train.ENGINES)
def test_a_stall_follows_torch_optims_trajectory_and_warns_once(engine):
    # The case: momentum 0.9, lr 0.0005 on 500 points. Every unit is
    # off from epoch 4, yet momentum keeps moving the bias for 60 epochs.
    x, y = noisy_doses(500, torch.float64)
    want, want_bias = torch_optim_losses(x, y, 60)
    model = biasfit.BasicNN(dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = biasfit.fit(model, x, y, optimizer=momentum_sgd(model), epochs=60,
                             engine=engine)
    stalls = [w for w in caught if issubclass(w.category, biasfit.StalledWarning)]
    assert len(stalls) == 1
    text = str(stalls[0].message)
    assert "stalled at epoch 4" in text and "lr/N" in text and 'reduction="mean"' in text
    assert (result.epochs_run, result.stop_reason, result.stall_epoch) == (60, "stalled", 4)
    assert result.losses == pytest.approx(want, rel=ENGINES_SGD[torch.float64])
    assert result.final_bias == pytest.approx(want_bias, rel=ENGINES_SGD[torch.float64])
    assert model.final_bias.item() == result.final_bias


@pytest.mark.parametrize("engine", biasfit.train.ENGINES)
def test_on_stall_stop_ends_the_fit_at_the_stall(engine):
    x, y = noisy_doses(500, torch.float64)
    model = biasfit.BasicNN(dtype=torch.float64)
    with pytest.warns(biasfit.StalledWarning, match="stopped there"):
        result = biasfit.fit(model, x, y, optimizer=momentum_sgd(model), epochs=60,
                             engine=engine, on_stall="stop")
    assert (result.epochs_run, result.stop_reason, result.stall_epoch) == (4, "stalled", 4)
    assert len(result.losses) == 5
    assert model.final_bias.item() == result.final_bias
    with torch.no_grad():
        assert torch.all(model(x) == 0)  # the bias turns every unit off


@pytest.mark.parametrize("engine", biasfit.train.ENGINES)
def test_on_stall_raise_raises_with_the_fit_up_to_the_stall(engine):
    x, y = noisy_doses(500, torch.float64)
    model = biasfit.BasicNN(dtype=torch.float64)
    with pytest.raises(biasfit.StalledError, match="stalled at epoch 4") as err:
        biasfit.fit(model, x, y, optimizer=momentum_sgd(model), epochs=60, engine=engine,
                    on_stall="raise")
    assert err.value.result.epochs_run == 4


def test_fit_fused_stalls_as_fit_does():
    x, y = noisy_doses(500, torch.float64)
    with pytest.warns(biasfit.StalledWarning):
        a = biasfit.fit_fused(x, y, lr=0.0005, momentum=0.9, epochs=60)
    model = biasfit.BasicNN(dtype=torch.float64)
    with pytest.warns(biasfit.StalledWarning):
        b = biasfit.fit(model, x, y, optimizer=momentum_sgd(model), epochs=60,
                        engine="fused")
    assert (a.losses, a.final_bias, a.stall_epoch) == (b.losses, b.final_bias, b.stall_epoch)
    # The op's route (a strided view: the direct call refuses it) agrees.
    wide = torch.stack([x, x]).t()
    with pytest.warns(biasfit.StalledWarning):
        c = biasfit.fit_fused(wide[:, 0], y, lr=0.0005, momentum=0.9, epochs=60)
    assert (c.losses, c.stall_epoch, c.stop_reason) == (a.losses, a.stall_epoch,
                                                         a.stop_reason)


def test_a_fit_that_does_not_stall_warns_nothing():
    x, y = biasfit.tutorial_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = biasfit.fit_fused(x, y)
    assert (result.stop_reason, result.stall_epoch) == ("converged", None)


# -- the mean loss ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("engine", biasfit.train.ENGINES)
def test_the_mean_loss_is_plain_pytorchs_mean(engine, dtype):
    x, y = noisy_doses(1000, dtype)
    model = biasfit.BasicNN(dtype=dtype)
    result = biasfit.fit(model, x, y, lr=0.1, epochs=200, tol=0.0, engine=engine,
                         reduction="mean")
    plain = TutorialNN(dtype=dtype)
    _, bias, losses = vectorized_fit(
        plain, x, y, torch.optim.SGD(plain.parameters(), lr=0.1), epochs=200, tol=0.0,
        loss_fn=lambda m, a, b: vectorized_loss(m, a, b) / len(a))
    assert result.losses == pytest.approx(losses, rel=ENGINES[dtype])
    assert result.final_bias == pytest.approx(bias, rel=ENGINES[dtype])
    assert round(result.final_bias) == -16  # the tutorial's lr fits 1000 points


def test_the_mean_loss_on_every_native_route():
    x, y = noisy_doses(300, torch.float64)
    direct = biasfit.fit_fused(x, y, lr=0.2, epochs=50, reduction="mean")
    op = biasfit.fit_fused(torch.stack([x, x]).t()[:, 0], y, lr=0.2, epochs=50,
                           reduction="mean")
    model = biasfit.BasicNN(dtype=torch.float64)
    params = biasfit.fit(model, x, y, optimizer=torch.optim.SGD([model.final_bias], lr=0.2),
                         epochs=50, engine="fused", reduction="mean")
    assert direct.losses == op.losses
    # fit_params sums in its own pass: the same float64 sums up to their order.
    assert params.losses == pytest.approx(direct.losses, rel=ENGINES[torch.float64])


def test_the_summed_loss_is_the_default_and_unchanged():
    x, y = biasfit.tutorial_data()
    assert biasfit.fit_fused(x, y, reduction="sum") == biasfit.fit_fused(x, y)
    result = biasfit.fit_fused(x, y)
    assert (result.epochs_run, round(result.final_bias, 4)) == (34, -16.0019)


# -- the plateau stop ------------------------------------------------------------


@pytest.mark.parametrize("engine", biasfit.train.ENGINES)
def test_a_plateau_stops_a_noisy_fit(engine):
    x, y = noisy_doses(10_000, torch.float64)
    result = biasfit.fit(biasfit.BasicNN(dtype=torch.float64), x, y, lr=0.1,
                         epochs=100_000, reduction="mean", rtol=1e-6, patience=10,
                         engine=engine)
    assert result.stop_reason == "plateau" and not result.converged
    assert result.epochs_run < 5000 and round(result.final_bias) == -16
    # The last `patience` epochs improved on the best by no more than rtol.
    best = min(result.losses[:-10])
    assert all(best - loss <= 1e-6 * best for loss in result.losses[-10:])


def test_both_engines_and_every_route_plateau_at_the_same_epoch():
    x, y = noisy_doses(2000, torch.float64)
    kw = dict(lr=0.1, epochs=100_000, reduction="mean", rtol=1e-7, patience=5)
    fits = [biasfit.fit(biasfit.BasicNN(dtype=torch.float64), x, y, engine=e, **kw)
            for e in biasfit.train.ENGINES]
    fits.append(biasfit.fit_fused(torch.stack([x, x]).t()[:, 0], y, **kw))  # the op
    model = biasfit.BasicNN(dtype=torch.float64)
    fits.append(biasfit.fit(model, x, y, engine="fused",  # fit_params, Adam
                            optimizer=torch.optim.Adam([model.final_bias], lr=0.5), **kw))
    assert {f.stop_reason for f in fits} == {"plateau"}
    assert fits[0].epochs_run == fits[1].epochs_run == fits[2].epochs_run
    assert fits[0].losses == pytest.approx(fits[1].losses, rel=ENGINES[torch.float64])
    assert fits[3].epochs_run < 1000


def test_rtol_zero_never_plateaus():
    x, y = noisy_doses(500, torch.float64)
    result = biasfit.fit_fused(x, y, lr=0.1, epochs=3000, reduction="mean", tol=0.0)
    assert (result.epochs_run, result.stop_reason) == (3000, "max_epochs")


@pytest.mark.parametrize("kwargs, message", [
    ({"reduction": "max"}, "reduction must be one of"),
    ({"on_stall": "ignore"}, "on_stall must be one of"),
    ({"rtol": -1e-3}, "rtol must be >= 0"),
    ({"rtol": 1.0}, "rtol must be below 1"),
    ({"rtol": 1e-3, "patience": 0}, "patience must be an int >= 1"),
    ({"patience": 2.5}, "patience must be an int >= 1"),
])
@pytest.mark.parametrize("call", ["fit", "fit_fused"])
def test_bad_stop_options_are_named(call, kwargs, message):
    x, y = biasfit.tutorial_data()
    with pytest.raises(ValueError, match=message):
        if call == "fit":
            biasfit.fit(biasfit.BasicNN(), x, y, **kwargs)
        else:
            biasfit.fit_fused(x, y, **kwargs)


def test_the_ops_check_the_new_options():
    x, y = biasfit.tutorial_data()
    w = torch.tensor(biasfit.TUTORIAL_WEIGHTS)
    b = torch.tensor(0.0)
    with pytest.raises(ValueError, match="patience must be >= 1"):
        torch.ops.biasfit.fit_sgd(x, y, w, b, 0.1, 0.0, 0.0, False, 0.0, False, 10, 0.0,
                                  1e-3, 0, 1.0)
    with pytest.raises(ValueError, match="divide_by must be a finite number >= 1"):
        torch.ops.biasfit.fit_sgd(x, y, w, b, 0.1, 0.0, 0.0, False, 0.0, False, 10, 0.0,
                                  0.0, 0, 0.5)
