"""biasfit.fit_many against single fits: every fit of a batch equals
fit_fused (final_bias alone, SGD) or fit(engine="fused") (other trained
parameters, Adam, AdamW) on its points alone, bit for bit: epochs, final
values, last loss, every epoch's loss and the way it ended. And bad input
raises one ValueError naming the argument before any fit runs."""
import math
import random

import pytest
import torch

import biasfit
from biasfit import DivergedError, StalledError
from biasfit.model import PARAM_NAMES, TUTORIAL_WEIGHTS

DTYPES = (torch.float32, torch.float64)


def same(a, b):
    """Equal as numbers, NaN equal to NaN: the bits, for values of one dtype."""
    return a == b or (math.isnan(a) and math.isnan(b))


def stop_rules(s):
    """The settings' stop rules beside tol (fit's defaults where absent)."""
    return dict(reduction=s.get("reduction", "sum"), rtol=s.get("rtol", 0.0),
                patience=s.get("patience", 10))


def single(x, y, w, b, trained, optimizer, s):
    """One fit alone by the public routes: (status, epochs, final values,
    losses) as fit_many reports them."""
    seen = []

    def record(epoch, loss, bias):
        seen.append(loss)

    dtype = x.dtype
    if tuple(trained) == ("final_bias",) and optimizer == "sgd":
        run = lambda: biasfit.fit_fused(  # noqa: E731
            x, y, weights=torch.tensor(w, dtype=dtype), bias=b, lr=s["lr"],
            momentum=s["momentum"], dampening=s["dampening"], nesterov=s["nesterov"],
            weight_decay=s["weight_decay"], maximize=s["maximize"], epochs=s["epochs"],
            tol=s["tol"], callback=record, on_stall="raise", **stop_rules(s))
        values = lambda r: list(w) + [r.final_bias]  # noqa: E731
    else:
        model = biasfit.BasicNN(final_bias=b, dtype=dtype)
        with torch.no_grad():
            for name, v in zip(PARAM_NAMES, w):
                getattr(model, name).fill_(v)
        for name in PARAM_NAMES:
            getattr(model, name).requires_grad_(name in trained)
        if optimizer == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=s["momentum"],
                                  dampening=s["dampening"], nesterov=s["nesterov"],
                                  weight_decay=s["weight_decay"], maximize=s["maximize"])
        else:
            cls = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
            opt = cls(model.parameters(), lr=s["lr"], betas=s["betas"], eps=s["eps"],
                      weight_decay=s["weight_decay"], amsgrad=s["amsgrad"],
                      maximize=s["maximize"])
        run = lambda: biasfit.fit(model, x, y, optimizer=opt, epochs=s["epochs"],  # noqa: E731
                                  tol=s["tol"], callback=record, engine="fused",
                                  on_stall="raise", **stop_rules(s))
        values = lambda r: [getattr(model, n).item() for n in PARAM_NAMES]  # noqa: E731
    try:
        r = run()
    except StalledError as e:
        return "stalled", e.epoch, values(e.result)[:6] + [e.result.final_bias], seen[:e.epoch + 1]
    except DivergedError as e:
        return "diverged", e.epoch, None, seen
    status = {"converged": "converged", "plateau": "plateau", "max_epochs": "exhausted"}
    return status[r.stop_reason], r.epochs_run, values(r), seen


def check_batch(x_flat, y_flat, offsets, starts, trained, optimizer, settings, per_fit):
    """fit_many over the groups against single() for each."""
    K = len(offsets) - 1
    w = torch.tensor([s[:6] for s in starts], dtype=x_flat.dtype)
    b = torch.tensor([s[6] for s in starts], dtype=x_flat.dtype)
    kwargs = {k: ([p[k] for p in per_fit] if k in settings else per_fit[0][k])
              for k in ("lr", "momentum", "dampening", "nesterov", "weight_decay", "maximize",
                        "eps", "amsgrad", "epochs", "tol")}
    rules = [stop_rules(p) for p in per_fit]
    kwargs["reduction"] = rules[0]["reduction"]
    for k in ("rtol", "patience"):
        kwargs[k] = [r[k] for r in rules] if k in settings else rules[0][k]
    betas = [p["betas"] for p in per_fit]
    kwargs["betas"] = ((betas[0][0], betas[0][1]) if "betas" not in settings
                       else ([q[0] for q in betas], [q[1] for q in betas]))
    got = biasfit.fit_many(x_flat, y_flat, offsets=offsets, weights=w, bias=b,
                           trained=trained, optimizer=optimizer, history=True, **kwargs)
    # Without a history the small fits of final_bias by plain SGD run in
    # vector lanes (csrc/cpu/fit_many_lanes.h): the same results.
    lean = biasfit.fit_many(x_flat, y_flat, offsets=offsets, weights=w, bias=b,
                            trained=trained, optimizer=optimizer, **kwargs)
    assert lean.losses is None
    for field in ("params", "loss", "epochs", "status", "bad_param"):
        a, b_ = getattr(got, field), getattr(lean, field)
        assert torch.equal(a.nan_to_num(7.0), b_.nan_to_num(7.0)), field
    names = got.status_names()
    for k in range(K):
        lo, hi = offsets[k], offsets[k + 1]
        status, epochs, values, losses = single(
            x_flat[lo:hi].clone(), y_flat[lo:hi].clone(), w[k].tolist(), b[k].item(),
            trained, optimizer, per_fit[k])
        where = f"fit {k} ({hi - lo} points, {per_fit[k]})"
        assert names[k] == status, where
        assert int(got.epochs[k]) == epochs, where
        row = got.losses[k].tolist()
        assert len(losses) <= len(row), where
        assert all(same(a, b) for a, b in zip(row, losses)), where
        assert all(math.isnan(v) for v in row[len(losses):]), where
        last = losses[-1] if losses else math.nan
        assert same(got.loss[k].item(), last), where
        if values is not None:
            assert all(same(a, b) for a, b in zip(got.params[k].tolist(), values)), where
        else:
            assert not all(math.isfinite(v) for v in got.params[k].tolist()) or \
                not math.isfinite(last), where
    return names


def ragged(rng, sizes, dtype):
    counts = [rng.choice(sizes) for _ in range(rng.randint(3, 9))]
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + c)
    gen = torch.Generator().manual_seed(rng.randint(0, 2**31))
    x = torch.rand(offsets[-1], generator=gen, dtype=torch.float64).to(dtype)
    y = (torch.rand(offsets[-1], generator=gen, dtype=torch.float64) * 1.2).to(dtype)
    return x, y, offsets


def sgd_settings(rng, epochs=60):
    momentum = rng.choice([0.0, 0.0, 0.5, 0.9])
    nesterov = momentum > 0 and rng.random() < 0.5
    return dict(lr=rng.choice([0.001, 0.01, 0.1, 0.5, 3.0, 1e4, 1e30]), momentum=momentum,
                dampening=0.0 if nesterov else rng.choice([0.0, 0.1]), nesterov=nesterov,
                weight_decay=rng.choice([0.0, 0.0, 0.01]), maximize=rng.random() < 0.1,
                betas=(0.9, 0.999), eps=1e-8, amsgrad=False,
                epochs=rng.choice([0, 1, epochs, epochs]),
                tol=rng.choice([1e-4, 0.0, 0.5, 1e9]))


def adam_settings(rng, epochs=40):
    return dict(lr=rng.choice([0.001, 0.05, 0.5, 1e30]), momentum=0.0, dampening=0.0,
                nesterov=False, weight_decay=rng.choice([0.0, 0.01]),
                maximize=rng.random() < 0.1, betas=(rng.choice([0.9, 0.5]), 0.999),
                eps=rng.choice([1e-8, 1e-3]), amsgrad=rng.random() < 0.5,
                epochs=rng.choice([1, epochs]), tol=rng.choice([1e-4, 0.0, 1e9]))


def start(rng, weights=TUTORIAL_WEIGHTS):
    return list(weights) + [rng.choice([0.0, -5.0, -16.0, -40.0, 2.0])]


@pytest.mark.parametrize("dtype", DTYPES)
def test_tutorial_batch_equals_fit_fused(dtype):
    x, y = biasfit.tutorial_data()
    x, y = x.to(dtype), y.to(dtype)
    got = biasfit.fit_many(x.repeat(5, 1), y.repeat(5, 1))
    one = biasfit.fit_fused(x, y)
    assert got.epochs.tolist() == [34] * 5
    assert got.final_bias.tolist() == [one.final_bias] * 5
    assert got.loss.tolist() == [one.final_loss] * 5
    assert got.status_names() == ["converged"] * 5
    assert got.losses is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_bias_sgd_per_fit(dtype, seed):
    """final_bias alone with SGD, every option per fit, ragged groups of
    1 to 300 points (300: the size where fit_fused may regroup)."""
    rng = random.Random(seed)
    x, y, offsets = ragged(rng, [1, 2, 3, 7, 15, 16, 17, 40, 300], dtype)
    K = len(offsets) - 1
    per_fit = [sgd_settings(rng) for _ in range(K)]
    starts = [start(rng) for _ in range(K)]
    check_batch(x, y, offsets, starts, ("final_bias",), "sgd", set(per_fit[0]) - {"betas"},
                per_fit)


@pytest.mark.parametrize("dtype", DTYPES)
def test_statuses_mix(dtype):
    """Every way a fit ends, in one batch: converged, exhausted, stalled
    (lr too large for the points), diverged (inf loss)."""
    x, y = biasfit.tutorial_data()
    x, y = x.to(dtype).repeat(4), y.to(dtype).repeat(4)
    offsets = [0, 3, 6, 9, 12]
    per_fit = [dict(sgd_settings(random.Random(0)), momentum=0.0, nesterov=False,
                    dampening=0.0, weight_decay=0.0, maximize=up, tol=1e-4, epochs=e, lr=lr)
               for lr, e, up in ((0.1, 100, False), (0.1, 10, False), (10.0, 50, False),
                                 (1e300, 50, True))]
    starts = [list(TUTORIAL_WEIGHTS) + [0.0]] * 4
    names = check_batch(x, y, offsets, starts, ("final_bias",), "sgd",
                        {"lr", "epochs", "maximize"}, per_fit)
    assert names == ["converged", "exhausted", "stalled", "diverged"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_stop_rules_per_fit(dtype, reduction, optimizer):
    """fit's other stop rules: the plateau stop (rtol and patience per fit)
    and the mean loss (each fit over its own points), final_bias alone or
    with a weight, against single fits; some fits end on their plateau."""
    rng = random.Random(21)
    x, y, offsets = ragged(rng, [3, 5, 40], dtype)
    K = len(offsets) - 1
    make = sgd_settings if optimizer == "sgd" else adam_settings
    per_fit = [dict(make(rng, epochs=80), tol=1e-12, rtol=rng.choice([0.0, 1e-3, 0.05]),
                    patience=rng.choice([1, 3, 10]), reduction=reduction) for _ in range(K)]
    per_fit[0].update(rtol=0.05, patience=2, lr=0.01, epochs=80)
    starts = [start(rng) for _ in range(K)]
    trained = ("final_bias",) if optimizer == "sgd" else ("w11", "final_bias")
    names = check_batch(x, y, offsets, starts, trained, optimizer, set(per_fit[0]), per_fit)
    assert "plateau" in names


@pytest.mark.parametrize("dtype", DTYPES)
def test_lanes_many_fits(dtype):
    """Thousands of fits of final_bias by plain SGD: the vector lanes (a
    lane per fit; for fewer than 16 points several groups of lanes, for 16
    to 255 points each lane summing its fit's 16-lane chunk; refilled as
    fits end at different epochs) against the one-fit-at-a-time path that a
    history request takes, which the tests above hold to fit_fused. Every
    status occurs."""
    K = 3000
    gen = torch.Generator().manual_seed(5)
    few = torch.randint(1, 16, (K,), generator=gen)
    many = torch.tensor([16, 17, 31, 40, 100, 255])[torch.randint(6, (K,), generator=gen)]
    sizes = torch.where(torch.rand(K, generator=gen) < 0.7, few, many)
    offsets = [0] + torch.cumsum(sizes, 0).tolist()
    x = torch.rand(offsets[-1], generator=gen, dtype=torch.float64).to(dtype)
    y = (torch.rand(offsets[-1], generator=gen, dtype=torch.float64) * 1.2).to(dtype)
    pick = lambda values: torch.tensor(values)[torch.randint(len(values), (K,), generator=gen)]
    kwargs = dict(offsets=offsets, bias=pick([0.0, -5.0, -16.0, -40.0, 2.0, 1.5]).to(dtype),
                  lr=pick([0.001, 0.01, 0.1, 0.5, 3.0, 1e4, 1e30]).tolist(),
                  maximize=(torch.rand(K, generator=gen) < 0.1).tolist(),
                  epochs=pick([0, 1, 7, 60, 100]).tolist(),
                  tol=pick([1e-4, 0.0, 0.5, 1e9, 0.03]).tolist())
    lean = biasfit.fit_many(x, y, **kwargs)
    full = biasfit.fit_many(x, y, history=True, **kwargs)
    for field in ("params", "loss", "epochs", "status", "bad_param"):
        a, b = getattr(lean, field), getattr(full, field)
        assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)), field
    assert set(lean.counts()) == {"converged", "exhausted", "stalled", "diverged"}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("seed", range(2))
def test_params_per_fit(dtype, optimizer, seed):
    """Any subset of the seven parameters, SGD/Adam/AdamW, settings per fit."""
    rng = random.Random(100 + seed)
    x, y, offsets = ragged(rng, [1, 3, 16, 33, 200], dtype)
    K = len(offsets) - 1
    trained = tuple(n for n in PARAM_NAMES if rng.random() < 0.5) or ("w01",)
    if optimizer == "sgd" and trained == ("final_bias",):
        trained = ("w00", "final_bias")
    make = sgd_settings if optimizer == "sgd" else adam_settings
    per_fit = [make(rng, epochs=30) for _ in range(K)]
    starts = [start(rng) for _ in range(K)]
    check_batch(x, y, offsets, starts, trained, optimizer, set(per_fit[0]), per_fit)


def test_bias_adam_and_shared_settings():
    """final_bias alone with Adam goes fit_params's way; shared settings."""
    rng = random.Random(7)
    x, y, offsets = ragged(rng, [3, 20], torch.float32)
    K = len(offsets) - 1
    s = adam_settings(rng)
    check_batch(x, y, offsets, [start(rng) for _ in range(K)], ("final_bias",), "adam", set(),
                [s] * K)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("plan", [None, "stream", "once", "regroup", "closed"])
def test_large_fits(dtype, plan, monkeypatch):
    """Fits past one chunk (16384 points), in each of fit_fused's plans
    (BIASFIT_TRAINER_PLAN forces one; None: its cost model's)."""
    if plan is not None:
        monkeypatch.setenv("BIASFIT_TRAINER_PLAN", plan)
    gen = torch.Generator().manual_seed(3)
    sizes = [20000, 5000, 300]
    x = torch.rand(sum(sizes), generator=gen, dtype=torch.float64).to(dtype)
    y = torch.rand(sum(sizes), generator=gen, dtype=torch.float64).to(dtype)
    offsets = [0, 20000, 25000, 25300]
    s = dict(sgd_settings(random.Random(1)), lr=1e-5, epochs=12, tol=0.0, momentum=0.0,
             nesterov=False, weight_decay=0.0, maximize=False, dampening=0.0)
    check_batch(x, y, offsets, [list(TUTORIAL_WEIGHTS) + [-10.0]] * 3, ("final_bias",), "sgd",
                set(), [s] * 3)


def test_one_thread_and_two_agree():
    rng = random.Random(11)
    x, y, offsets = ragged(rng, [3, 50], torch.float32)
    runs = []
    for threads in (1, 2):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            runs.append(biasfit.fit_many(x, y, offsets=offsets, lr=0.05, bias=-3.0,
                                         history=True))
        finally:
            torch.set_num_threads(before)
    for a, b in zip(runs[0].__dict__.values(), runs[1].__dict__.values()):
        assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))


# -- bad input ------------------------------------------------------------------

def _tutorial_flat():
    x, y = biasfit.tutorial_data()
    return x.repeat(3), y.repeat(3)


@pytest.mark.parametrize("offsets, words", [
    ([0, 6, 3, 9], "out of order"),
    ([0, 3, 3, 9], "empty group"),
    ([0, 3, 6, 8], "points' count"),
    ([1, 3, 6, 9], "start at 0"),
    ([0], "K + 1"),
])
def test_bad_offsets(offsets, words):
    x, y = _tutorial_flat()
    with pytest.raises(ValueError, match="offsets") as e:
        biasfit.fit_many(x, y, offsets=offsets)
    assert words in str(e.value)


@pytest.mark.parametrize("name, value", [
    ("lr", [0.1, 0.2]), ("tol", [1e-4] * 4), ("epochs", [10, 20]),
    ("momentum", torch.zeros(2)), ("bias", [0.0, 1.0]),
])
def test_per_fit_settings_of_wrong_length(name, value):
    x, y = _tutorial_flat()
    with pytest.raises(ValueError, match=f"^{name} must be one"):
        biasfit.fit_many(x.reshape(3, 3), y.reshape(3, 3), **{name: value})


@pytest.mark.parametrize("where", ["inputs", "labels", "bias", "weights", "lr"])
def test_non_finite_values(where):
    x, y = _tutorial_flat()
    kwargs = {}
    if where == "inputs":
        x[4] = math.inf
    elif where == "labels":
        y[2] = math.nan
    elif where == "bias":
        kwargs["bias"] = [0.0, math.nan, 0.0]
    elif where == "weights":
        kwargs["weights"] = [1.7, -0.85, math.inf, 12.6, 0.0, 2.7]
    else:
        kwargs["lr"] = [0.1, math.nan, 0.1]
    with pytest.raises(ValueError, match=where):
        biasfit.fit_many(x.reshape(3, 3), y.reshape(3, 3), **kwargs)


def test_bad_setting_names_the_fit():
    x, y = _tutorial_flat()
    with pytest.raises(ValueError, match="fit 1: lr must be >= 0"):
        biasfit.fit_many(x.reshape(3, 3), y.reshape(3, 3), lr=[0.1, -1.0, 0.1])
    with pytest.raises(ValueError, match="epochs must be an int"):
        biasfit.fit_many(x.reshape(3, 3), y.reshape(3, 3), epochs=2.5)
    with pytest.raises(ValueError, match="trained"):
        biasfit.fit_many(x.reshape(3, 3), y.reshape(3, 3), trained=("bias",))
    with pytest.raises(ValueError, match="optimizer"):
        biasfit.fit_many(x.reshape(3, 3), y.reshape(3, 3), optimizer="rmsprop")
    with pytest.raises(ValueError, match="inputs must be"):
        biasfit.fit_many(x, y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_many_small_fits_in_lanes(dtype):
    """Hundreds of fits of 1 to 15 points, plain SGD per fit (lanes refilled
    as fits end at different epochs), against fit_fused one by one."""
    rng = random.Random(5)
    x, y, offsets = ragged(rng, list(range(1, 16)), dtype)
    sizes = [rng.randint(1, 15) for _ in range(300)]
    offsets = [0]
    for c in sizes:
        offsets.append(offsets[-1] + c)
    gen = torch.Generator().manual_seed(9)
    x = torch.rand(offsets[-1], generator=gen, dtype=torch.float64).to(dtype)
    y = (torch.rand(offsets[-1], generator=gen, dtype=torch.float64) * 1.5).to(dtype)
    per_fit = [dict(sgd_settings(rng), momentum=0.0, nesterov=False, weight_decay=0.0,
                    dampening=0.0) for _ in sizes]
    starts = [start(rng) for _ in sizes]
    names = check_batch(x, y, offsets, starts, ("final_bias",), "sgd",
                        {"lr", "maximize", "epochs", "tol"}, per_fit)
    assert {"converged", "exhausted", "stalled", "diverged"} <= set(names)
