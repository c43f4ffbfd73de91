"""torch.func.vmap of the whole-fit ops (fit_sgd, fit_params) against a
Python loop of the unbatched op, bit for bit: one fit_many call for the
batch (biasfit/vmap_fits.py). The op writes a history only up to the epochs
it evaluated; under vmap the rest of each row is NaN (docs/many.md)."""
import random

import pytest
import torch
from torch.func import vmap

import biasfit
from biasfit import _direct, vmap_fits

ops = torch.ops.biasfit
DTYPES = (torch.float32, torch.float64)
SGD_OPTIONS = {  # lr, momentum, dampening, nesterov, weight_decay, maximize
    "plain": (0.1, 0.0, 0.0, False, 0.0, False),
    "momentum": (0.05, 0.9, 0.1, False, 0.0, False),
    "nesterov": (0.05, 0.8, 0.0, True, 0.01, False),
    "weight_decay": (0.1, 0.0, 0.0, False, 0.05, False),
    "maximize": (0.01, 0.0, 0.0, False, 0.0, True),
}


def _bits(t):
    """Bits to compare, NaN included."""
    return t.view(torch.int64 if t.dtype == torch.float64 else torch.int32)


def _seen(info):
    epoch, status = int(info[0]), int(info[1])
    return epoch if status == _direct.EXHAUSTED else epoch + 1


def assert_stacked(got, loop):
    """got (the vmap) is the loop's outputs stacked: final values, info and
    the histories' evaluated epochs bit for bit, NaN after them."""
    final, losses, biases, info = got
    assert len(final) == len(loop)
    for k, (f, l, b, i) in enumerate(loop):
        assert torch.equal(info[k], i), (k, info[k], i)
        assert torch.equal(_bits(final[k]), _bits(f)), (k, final[k], f)
        seen = min(_seen(i), losses.shape[1])
        for g, want in ((losses[k], l), (biases[k], b)):
            assert g.dtype == want.dtype and g.shape == want.shape
            assert torch.equal(_bits(g[:seen]), _bits(want[:seen])), k
            assert bool(g[seen:].isnan().all()), k


def _data(n, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 0.5).to(dtype)
    y = (torch.rand(n, generator=g, dtype=torch.float64) * 3).to(dtype)
    return x, y


def _weights(dtype):
    return torch.tensor(biasfit.TUTORIAL_WEIGHTS, dtype=dtype)


@pytest.fixture
def many_calls(monkeypatch):
    """Counts vmap_fits' calls of fit_many and of the unbatched fit ops."""
    calls = {"fit_many": 0, "fit_sgd": 0, "fit_params": 0}

    class Counting:
        def __getattr__(self, name):
            op = getattr(ops, name)

            def call(*args):
                calls[name] = calls.get(name, 0) + 1
                return op(*args)
            return call
    monkeypatch.setattr(vmap_fits, "_ops", Counting())
    return calls


def _sgd(x, y, w, b, options, epochs=60, tol=1e-4):
    return ops.fit_sgd(x, y, w, b, *options, epochs, tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("option", sorted(SGD_OPTIONS))
def test_fit_sgd_vmap_over_biases_equals_a_loop(dtype, option, many_calls):
    rng = random.Random(hash((str(dtype), option)) & 0xffff)
    k, n = rng.randint(1, 7), rng.choice([1, 3, 17, 40])
    x, y = _data(n, dtype, rng.randint(0, 99))
    w = _weights(dtype)
    # From every unit on to every unit off (a stall): converged, exhausted
    # and stalled fits in one batch.
    bias = torch.linspace(-30.0, 4.0, k, dtype=dtype)
    got = vmap(lambda b: _sgd(x, y, w, b, SGD_OPTIONS[option]))(bias)
    assert_stacked(got, [_sgd(x, y, w, b, SGD_OPTIONS[option]) for b in bias])
    assert many_calls == {"fit_many": 1, "fit_sgd": 0, "fit_params": 0}


@pytest.mark.parametrize("dtype", DTYPES)
def test_fit_sgd_vmap_in_dims_variants(dtype, many_calls):
    k, n = 5, 11
    xs, ys = zip(*(_data(n, dtype, s) for s in range(k)))
    xs, ys = torch.stack(xs), torch.stack(ys)            # [K, N]
    ws = _weights(dtype) + 0.01 * torch.arange(k, dtype=dtype)[:, None]  # [K, 6]
    bs = torch.linspace(-1.0, 1.0, k, dtype=dtype)
    o = SGD_OPTIONS["momentum"]
    cases = {  # in_dims over (inputs, labels, weights, bias) and the mapped tensors
        (0, 0, None, None): (xs, ys, ws[0], bs[0]),
        (1, None, None, 0): (xs.T.contiguous(), ys[0], ws[0], bs),
        (None, 1, 0, None): (xs[0], ys.T, ws, bs[0]),
        (0, 0, 1, 0): (xs, ys, ws.T, bs),
    }
    for in_dims, args in cases.items():
        got = vmap(lambda x, y, w, b: _sgd(x, y, w, b, o), in_dims=in_dims)(*args)
        loop = [_sgd(*(a if d is None else a.select(d, i) for a, d in zip(args, in_dims)), o)
                for i in range(k)]
        assert_stacked(got, loop)
    assert many_calls["fit_many"] == len(cases) and many_calls["fit_sgd"] == 0


def test_fit_sgd_vmap_of_2d_data_per_fit():
    # The op takes data of any shape: a [K, 2, 3] batch maps onto [K, 6] fits.
    x, y = _data(30, torch.float64, 1)
    x, y = x.reshape(5, 2, 3), y.reshape(5, 2, 3)
    w, b = _weights(torch.float64), torch.tensor(0.0, dtype=torch.float64)
    o = SGD_OPTIONS["plain"]
    got = vmap(lambda x, y: _sgd(x, y, w, b, o))(x, y)
    assert_stacked(got, [_sgd(x[i], y[i], w, b, o) for i in range(5)])


@pytest.mark.parametrize("dtype", DTYPES)
def test_fit_sgd_vmap_mixed_statuses(dtype):
    # The tutorial's data (which converges), from starts that converge, run
    # out of epochs (tol 0), diverge (lr 1e30) and stall (every unit off).
    x = torch.tensor([0.0, 0.5, 1.0], dtype=dtype)
    y = torch.tensor([0.0, 1.0, 0.0], dtype=dtype)
    w = _weights(dtype)
    big = y * (1e30 if dtype == torch.float32 else 1e200)  # a loss past the dtype's range
    cases = [(0.1, 0.0, y), (0.1, 0.0, big), (0.1, -40.0, y)]  # (lr, start, labels)
    tols = torch.tensor([1e-4, 0.0])
    statuses = set()
    for lr, start, y in cases:
        o = (lr, 0.0, 0.0, False, 0.0, False)
        bias = torch.full((3,), start, dtype=dtype) + torch.tensor([0.0, 0.5, 1.0], dtype=dtype)
        for tol in tols.tolist():
            got = vmap(lambda b: _sgd(x, y, w, b, o, epochs=40, tol=tol))(bias)
            assert_stacked(got, [_sgd(x, y, w, b, o, epochs=40, tol=tol) for b in bias])
            statuses.update(got[3][:, 1].tolist())
    assert {_direct.CONVERGED, _direct.EXHAUSTED}.issubset(statuses)
    assert statuses & {_direct.LOSS_NONFINITE, _direct.BIAS_NONFINITE}


def test_stalled_fits_run_on_as_the_op_does():
    # Every unit off: the op runs on to the last epoch (a stall is train.py's
    # decision, not the op's); fit_many's own fits would report "stalled".
    x, y = _data(5, torch.float64, 4)
    w = _weights(torch.float64)
    bias = torch.tensor([-40.0, -30.0], dtype=torch.float64)
    o = SGD_OPTIONS["momentum"]
    got = vmap(lambda b: _sgd(x, y, w, b, o, epochs=25))(bias)
    assert got[3][:, 1].tolist() == [_direct.EXHAUSTED] * 2
    assert_stacked(got, [_sgd(x, y, w, b, o, epochs=25) for b in bias])
    many = biasfit.fit_many(x.repeat(2, 1), y.repeat(2, 1), bias=bias, lr=o[0],
                            momentum=o[1], dampening=o[2], epochs=25)
    assert many.status_names() == ["stalled", "stalled"]


def test_fit_sgd_vmap_of_random_batches():
    rng = random.Random(7)
    for _ in range(6):
        dtype = rng.choice(DTYPES)
        k, n = rng.randint(1, 9), rng.randint(1, 70)
        xs = torch.stack([_data(n, dtype, rng.randint(0, 999))[0] for _ in range(k)])
        ys = torch.stack([_data(n, dtype, rng.randint(0, 999))[1] for _ in range(k)])
        bs = torch.tensor([rng.uniform(-5, 3) for _ in range(k)], dtype=dtype)
        o = SGD_OPTIONS[rng.choice(sorted(SGD_OPTIONS))]
        epochs = rng.choice([0, 1, 7, 80])
        w = _weights(dtype)
        got = vmap(lambda x, y, b: _sgd(x, y, w, b, o, epochs=epochs))(xs, ys, bs)
        assert_stacked(got, [_sgd(xs[i], ys[i], w, bs[i], o, epochs=epochs)
                             for i in range(k)])


def test_a_large_fit_that_the_trainer_regroups():
    # 40000 points: fit_fused's trainer may regroup them (cpu/plan.h); the
    # batched fit runs cpu::train itself there, and the bits agree.
    x, y = _data(40_000, torch.float32, 5)
    w = _weights(torch.float32)
    bias = torch.tensor([-1.0, 0.5], dtype=torch.float32)
    o = (1e-5, 0.0, 0.0, False, 0.0, False)
    got = vmap(lambda b: _sgd(x, y, w, b, o, epochs=30, tol=0.0))(bias)
    assert_stacked(got, [_sgd(x, y, w, b, o, epochs=30, tol=0.0) for b in bias])


# -- fit_params: any subset of the seven, SGD, Adam, AdamW ---------------------------

def _params(x, y, p, trained, kind, lr, momentum=0.0, nesterov=False, weight_decay=0.0,
            amsgrad=False, maximize=False, epochs=50, tol=1e-4):
    return ops.fit_params(x, y, p, trained, kind, lr, momentum, 0.0, nesterov, weight_decay,
                          maximize, 0.9, 0.999, 1e-8, amsgrad, epochs, tol)


PARAM_CASES = {  # trained bits (PARAM_NAMES' order), optimizer kind, options
    "bias_sgd": (1 << 6, 0, dict(lr=0.01, momentum=0.5)),
    "all_sgd": (0x7f, 0, dict(lr=0.001, momentum=0.9, nesterov=True)),
    "adam_all": (0x7f, 1, dict(lr=0.01)),
    "adam_amsgrad": (0b1000101, 1, dict(lr=0.05, amsgrad=True, maximize=False)),
    "adamw": (0b0110010, 2, dict(lr=0.01, weight_decay=0.1)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(PARAM_CASES))
def test_fit_params_vmap_equals_a_loop(dtype, case, many_calls):
    trained, kind, options = PARAM_CASES[case]
    k = 4
    x, y = _data(50 if dtype == torch.float64 else 13, dtype, 11)
    start = torch.cat([_weights(dtype), torch.tensor([0.0], dtype=dtype)])
    params = start + torch.linspace(-0.3, 0.3, k, dtype=dtype)[:, None]
    got = vmap(lambda p: _params(x, y, p, trained, kind, **options))(params)
    assert_stacked(got, [_params(x, y, p, trained, kind, **options) for p in params])
    assert many_calls == {"fit_many": 1, "fit_sgd": 0, "fit_params": 0}


def test_fit_params_vmap_over_data_with_diverging_fits():
    dtype = torch.float64
    x, y = _data(24, dtype, 12)
    xs, ys = x.reshape(4, 6), y.reshape(4, 6) * torch.tensor([1.0, 1.0, 1e200, 1.0],
                                                             dtype=dtype)[:, None]
    p = torch.cat([_weights(dtype), torch.tensor([0.0], dtype=dtype)])
    got = vmap(lambda x, y: _params(x, y, p, 0x7f, 0, lr=0.1))(xs, ys)
    loop = [_params(xs[i], ys[i], p, 0x7f, 0, lr=0.1) for i in range(4)]
    assert_stacked(got, loop)
    assert got[3][2, 1] in (_direct.LOSS_NONFINITE, _direct.BIAS_NONFINITE)


# -- nested vmap, and what fit_many does not run ---------------------------------------

def test_vmap_of_vmap_is_one_fit_many_call(many_calls):
    dtype = torch.float64
    x, y = _data(7, dtype, 13)
    xs, ys = torch.stack([x, x * 0.5, x + 0.1]), torch.stack([y, y, y * 2])   # outer: 3
    bs = torch.linspace(-2.0, 2.0, 4, dtype=dtype)                              # inner: 4
    w, o = _weights(dtype), SGD_OPTIONS["nesterov"]
    got = vmap(lambda x, y: vmap(lambda b: _sgd(x, y, w, b, o))(bs))(xs, ys)
    for i in range(3):
        assert_stacked(tuple(t[i] for t in got), [_sgd(xs[i], ys[i], w, b, o) for b in bs])
    # The inner rule's call reaches fit_many's own rule, which folds the
    # outer batch in: one native call.
    assert many_calls == {"fit_many": 2, "fit_sgd": 0, "fit_params": 0}


@pytest.mark.parametrize("dtype", DTYPES)
def test_plateau_stop_and_mean_loss(dtype, many_calls):
    # rtol/patience and divide_by = the points (the mean) are fit_many's own
    # settings; another divide_by goes through a loop of the op.
    x, y = _data(6, dtype, 14)
    w, bs = _weights(dtype), torch.tensor([-1.0, 0.0, 2.0], dtype=dtype)
    o = SGD_OPTIONS["plain"]
    for divide_by, many in ((6.0, 1), (1.0, 1), (2.5, 0)):
        def fit(b):
            return ops.fit_sgd(x, y, w, b, *o, 200, 0.0, 1e-3, 3, divide_by)
        got = vmap(fit)(bs)
        assert_stacked(got, [fit(b) for b in bs])
        assert many_calls["fit_many"] == many, divide_by
        many_calls["fit_many"] = 0
        p = torch.cat([w, torch.tensor([0.5], dtype=dtype)])
        got = vmap(lambda p: ops.fit_params(x, y, p, 0x7f, 1, 0.01, 0.0, 0.0, False, 0.0, False,
                                            0.9, 0.999, 1e-8, False, 300, 0.0, 1e-3, 3,
                                            divide_by))(p.expand(2, 7))
        assert_stacked(got, [ops.fit_params(x, y, p, 0x7f, 1, 0.01, 0.0, 0.0, False, 0.0,
                                            False, 0.9, 0.999, 1e-8, False, 300, 0.0, 1e-3,
                                            3, divide_by)] * 2)
        assert many_calls["fit_many"] == many, divide_by
        many_calls["fit_many"] = 0
        assert _direct.PLATEAU in got[3][:, 1].tolist() or divide_by != 6.0


def test_bad_input_gets_the_ops_own_error():
    x, y = _data(4, torch.float64, 15)
    w = _weights(torch.float64)
    with pytest.raises(ValueError, match="lr"):
        vmap(lambda b: _sgd(x, y, w, b, (-1.0, 0.0, 0.0, False, 0.0, False)))(
            torch.zeros(2, dtype=torch.float64))
    # Non-finite data: fit_many refuses it before any fit, the op runs it:
    # the vmap gives the op's numbers.
    bad = x.clone()
    bad[1] = float("nan")
    bs = torch.zeros(2, dtype=torch.float64)
    o = SGD_OPTIONS["plain"]
    got = vmap(lambda b: _sgd(bad, y, w, b, o))(bs)
    assert_stacked(got, [_sgd(bad, y, w, b, o) for b in bs])


def test_fit_fused_under_vmap_says_what_to_use():
    x, y = _data(3, torch.float32, 16)
    with pytest.raises(RuntimeError, match="fit_fused cannot run under torch.func"):
        vmap(lambda b: torch.tensor(biasfit.fit_fused(x, y, bias=b).final_bias))(
            torch.zeros(2))
    with pytest.raises(RuntimeError, match="fit_fused cannot run under torch.func"):
        vmap(lambda xx: torch.tensor(biasfit.fit_fused(xx, y).final_bias))(
            torch.stack([x, x]))


def test_fit_params_of_the_bias_alone_keeps_fit_params_sums():
    # fit_params's loop (cpu/trainer_params.h) and fit_sgd's (cpu/trainer.h)
    # can differ in the last bits of a loss: on these data they do, and the
    # vmap of fit_params gives fit_params's.
    x, y = _data(20_000, torch.float64, 1)
    start = torch.cat([_weights(torch.float64), torch.tensor([-1.0], dtype=torch.float64)])
    params = torch.stack([start, start + 0.01])

    def fit(p):
        return _params(x, y, p, 1 << 6, 0, lr=0.01, momentum=0.5)
    got = vmap(fit)(params)
    assert_stacked(got, [fit(p) for p in params])
    w, b = start[:6], start[6]
    as_sgd = _sgd(x, y, w, b, (0.01, 0.5, 0.0, False, 0.0, False), epochs=50)
    assert not torch.equal(as_sgd[1], got[1][0])  # (else this test shows nothing)


@pytest.mark.parametrize("dtype", DTYPES)
def test_long_fits_run_in_spans_with_the_same_bits(dtype):
    # 3000 points x 100 epochs: fit_many checks for Ctrl-C every ~64k
    # points' worth of epochs, so these fits run in spans of 21 epochs
    # (csrc/cpu/many_stop.h's run_epochs); the spans change no bit.
    x, y = _data(3000, dtype, 17)
    w = _weights(dtype)
    bias = torch.tensor([-0.5, 0.7], dtype=dtype)
    o = (1e-4, 0.9, 0.0, True, 0.0, False)
    got = vmap(lambda b: _sgd(x, y, w, b, o, epochs=100, tol=0.0))(bias)
    assert_stacked(got, [_sgd(x, y, w, b, o, epochs=100, tol=0.0) for b in bias])
    params = torch.cat([w, bias[:1]]) + torch.tensor([[0.0], [0.1]], dtype=dtype)
    got = vmap(lambda p: _params(x, y, p, 0x7f, 2, lr=1e-3, epochs=100, tol=0.0))(params)
    assert_stacked(got, [_params(x, y, p, 0x7f, 2, lr=1e-3, epochs=100, tol=0.0)
                         for p in params])


def test_vmap_of_vmap_of_fit_params_over_data_and_starts():
    dtype = torch.float32
    x, y = _data(12, dtype, 18)
    xs, ys = x.reshape(2, 6), y.reshape(2, 6)                                 # outer: 2
    start = torch.cat([_weights(dtype), torch.tensor([0.0], dtype=dtype)])
    params = start + torch.linspace(-0.2, 0.2, 3, dtype=dtype)[:, None]       # inner: 3

    def fit(x, y, p):
        return _params(x, y, p, 0b1000011, 1, lr=0.02, amsgrad=True)
    got = vmap(lambda x, y: vmap(lambda p: fit(x, y, p))(params))(xs, ys)
    for i in range(2):
        assert_stacked(tuple(t[i] for t in got), [fit(xs[i], ys[i], p) for p in params])


def test_literals_agree_with_their_sources():
    """vmap_fits.py spells two codes as literals (it loads before model and
    engine can be imported): they must be those modules' values."""
    from biasfit.engine import OPTIMIZER_KINDS
    from biasfit.model import PARAM_NAMES
    assert vmap_fits._BIAS_ONLY == 1 << PARAM_NAMES.index("final_bias")
    assert vmap_fits._SGD == OPTIMIZER_KINDS["SGD"]
