"""Issue 14's API items: arguments checked in Python with messages naming
them, cached weights nobody can change, optimizers that hold the model, and
the summed loss's stall."""
import pytest
import torch

import biasfit
from biasfit.train import MAX_EPOCHS, tutorial_weights
from helpers import CHILD_CWD
from tolerances import ENGINES

X, Y = biasfit.tutorial_data()


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(bias=1e300), ValueError, r"bias 1e\+300 does not fit the data's dtype float32"),
    (dict(bias=torch.tensor(1e300, dtype=torch.float64)), ValueError,
     "bias 1e.300 does not fit the data's dtype float32"),
    (dict(bias=float("inf")), ValueError, "bias must be a finite number, got inf"),
    (dict(epochs=10**18), ValueError, r"epochs must be at most 2147483647 \(2\*\*31 - 1\)"),
    (dict(epochs=2**63), ValueError, "epochs must be at most 2147483647"),
    (dict(lr="0.1"), TypeError, "lr must be a real number, got '0.1'"),
    (dict(lr=float("inf")), ValueError, "lr must be a finite number, got inf"),
    (dict(tol="1e-4"), TypeError, "tol must be a real number"),
    (dict(momentum="0.9"), TypeError, "momentum must be a real number, got '0.9'"),
    (dict(dampening=float("nan")), ValueError, "dampening must be a finite number"),
    (dict(weight_decay=[0.1]), TypeError, "weight_decay must be a real number"),
    (dict(maximize="no"), TypeError, "maximize must be True or False, got 'no'"),
    (dict(nesterov=1, momentum=0.9), TypeError, "nesterov must be True or False, got 1"),
])
def test_fit_fused_names_the_bad_argument(kwargs, error, message):
    with pytest.raises(error, match=message):
        biasfit.fit_fused(X, Y, **kwargs)


def test_float64_data_takes_a_bias_past_float32s_range():
    with pytest.raises(biasfit.DivergedError):  # a real fit, not a refusal
        biasfit.fit_fused(X.double(), Y.double(), bias=1e300, lr=1e300)


@pytest.mark.parametrize("engine", biasfit.train.ENGINES)
@pytest.mark.parametrize("epochs", [10**18, 2**63])
def test_fit_refuses_epochs_past_the_cap(engine, epochs):
    with pytest.raises(ValueError, match="epochs must be at most 2147483647"):
        biasfit.fit(biasfit.BasicNN(), X, Y, epochs=epochs, engine=engine)
    assert MAX_EPOCHS == 2**31 - 1


def test_fit_refuses_an_lr_past_the_parameters_dtype():
    # torch.optim.SGD would fail inside its step ("value cannot be converted
    # to type float without overflow"); float64 parameters take it.
    with pytest.raises(ValueError, match=r"lr 1e\+39 is too large for the model's "
                                         r"float32 parameters \(at most 3.403e\+38\)"):
        biasfit.fit(biasfit.BasicNN(), X, Y, lr=1e39)
    with pytest.raises(biasfit.StalledError):  # a real fit, not a refusal
        biasfit.fit(biasfit.BasicNN(dtype=torch.float64), X.double(), Y.double(), lr=1e39,
                    on_stall="raise")


def test_fit_fused_keeps_a_real_number_bias_and_bools():
    import numpy as np  # numpy scalars are real numbers too
    a = biasfit.fit_fused(X, Y, lr=np.float64(0.1), bias=np.float32(0.0), maximize=False)
    assert (a.epochs_run, round(a.final_bias, 4)) == (34, -16.0019)


def test_writing_to_tutorial_weights_changes_no_later_fit():
    before = biasfit.fit_fused(X, Y)
    w = tutorial_weights(X)
    w[0] = 5.0
    assert tutorial_weights(X).tolist() == torch.tensor(biasfit.TUTORIAL_WEIGHTS).tolist()
    assert biasfit.fit_fused(X, Y) == before


@pytest.mark.parametrize("engine", biasfit.train.ENGINES)
def test_fit_refuses_an_optimizer_over_another_models_parameters(engine):
    model, other = biasfit.BasicNN(), biasfit.BasicNN()
    sgd = torch.optim.SGD(other.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizer does not hold the model's trainable "
                                         "parameter.* final_bias"):
        biasfit.fit(model, X, Y, optimizer=sgd, engine=engine)
    assert model.final_bias.item() == other.final_bias.item() == 0.0


def test_fused_engine_without_an_optimizer_does_not_import_dynamo():
    import subprocess
    import sys
    code = ("import sys, biasfit; x, y = biasfit.tutorial_data(); "
            "r = biasfit.fit(biasfit.BasicNN(), x, y, engine='fused'); "
            "print(r.epochs_run, 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=CHILD_CWD, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split() == ["34", "False"], out.stderr


# -- the summed loss's stall ----------------------------------------------------------

def two_hundred_points():
    x = torch.linspace(0, 1, 200)
    with torch.no_grad():
        return x, biasfit.BasicNN(-16.0)(x)


@pytest.mark.parametrize("engine", biasfit.train.ENGINES)
def test_a_stall_stops_the_fit_and_says_why(engine):
    x, y = two_hundred_points()
    seen = []
    model = biasfit.BasicNN()
    with pytest.raises(biasfit.StalledError) as err:
        biasfit.fit(model, x, y, engine=engine, callback=lambda *row: seen.append(row),
                    on_stall="raise")
    stall = err.value
    assert stall.epoch == stall.result.epochs_run == 1
    assert len(seen) == len(stall.result.losses) == 2
    # Epoch 0's step jumped so far down that no point's output unit is on.
    bias = stall.result.final_bias
    assert bias < -300 and model.final_bias.item() == bias
    with torch.no_grad():
        assert torch.all(model(x) == 0)
    text = str(stall)
    assert "stalled at epoch 1" in text and "every output unit off" in text
    assert "all 200 points" in text and "1/N (lr/N = 0.0005)" in text


def test_both_engines_stall_at_the_same_epoch_with_momentum():
    stalls = []
    for engine in biasfit.train.ENGINES:
        model = biasfit.BasicNN()
        sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        with pytest.raises(biasfit.StalledError) as err:
            biasfit.fit(model, X, Y, optimizer=sgd, engine=engine, on_stall="raise")
        stalls.append(err.value.result)
    assert stalls[0].epochs_run == stalls[1].epochs_run == 3
    assert stalls[0].losses == pytest.approx(stalls[1].losses, rel=ENGINES[torch.float32])


def test_a_scaled_lr_does_not_stall():
    x, y = two_hundred_points()
    result = biasfit.fit_fused(x, y, lr=0.1 / 200, epochs=1000)
    assert result.converged and round(result.final_bias) == -16


def test_weight_decay_pulls_the_bias_back_so_it_is_no_stall():
    x, y = two_hundred_points()
    biases = []
    result = biasfit.fit_fused(x, y, weight_decay=0.5, epochs=20, tol=0.0,
                               callback=lambda e, loss, b: biases.append(b))
    assert len(result.losses) == 20  # every unit off from epoch 1, yet no stall:
    assert all(a < b for a, b in zip(biases[1:], biases[2:]))  # the bias climbs back
