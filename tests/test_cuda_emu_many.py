"""fit_many's CUDA kernels (csrc/cuda/kernels_many.cuh, queued by
cuda/launch_many.h) run on the CPU under the emulation, as
tests/test_cuda_emu_batched.py runs the batched ones: every fit, by each
route (a thread, a warp or a block per fit), must give CPU fit_many's bits:
final values, last loss, epochs, status, bad parameter and history. The
kernels sum in the CPU's order (cpu/reduce.h's chunks, lanes and trees),
so nothing here is a tolerance.

The CPU reference runs with BIASFIT_TRAINER_PLAN=stream: a final_bias fit of
256 points or more may otherwise be regrouped (cpu/plan.h), a different
summing order that the GPU does not take (docs/many.md).
"""
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import biasfit  # noqa: F401  (loads torch.ops.biasfit)

import emu_harness as eh

pytestmark = pytest.mark.skipif(eh.GXX is None, reason="no g++ to build the CUDA emulation")

# core/many.h's ManyColumn order.
COLUMNS = ("lr", "momentum", "dampening", "nesterov", "weight_decay", "maximize", "beta1",
           "beta2", "eps", "amsgrad", "epochs", "tol", "rtol", "patience", "mean")
THREAD, WARP, BLOCK = 0, 1, 2
CHUNK = 16384
DTYPES = (np.float32, np.float64)
BIAS = 1 << 6  # final_bias's bit of `trained`
KINDS = {"sgd": 0, "adam": 1, "adamw": 2}


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    out = tmp_path_factory.mktemp("emu_many") / "harness_many"
    command = [eh.GXX, *eh.FLAGS, "-O2", f"-I{eh.CSRC}", f"-I{eh.EMU}",
               str(eh.EMU / "harness_many.cpp"), "-o", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def row(rng, optimizer, epochs=40, **fixed):
    """One settings row: random options of the optimizer, any stop rule."""
    s = dict(lr=rng.choice([0.001, 0.01, 0.05, 0.1]), momentum=0.0, dampening=0.0,
             nesterov=0.0, weight_decay=0.0, maximize=0.0, beta1=0.9, beta2=0.999, eps=1e-8,
             amsgrad=0.0, epochs=float(epochs), tol=rng.choice([1e-4, 0.0, 0.5]),
             rtol=rng.choice([0.0, 0.0, 1e-3]), patience=float(rng.choice([1, 3])),
             mean=float(rng.random() < 0.3))
    if optimizer == "sgd":
        s["momentum"] = rng.choice([0.0, 0.0, 0.5, 0.9])
        s["nesterov"] = float(s["momentum"] > 0 and rng.random() < 0.5)
        s["dampening"] = 0.0 if s["nesterov"] else rng.choice([0.0, 0.3])
        s["weight_decay"] = rng.choice([0.0, 0.0, 0.01])
    else:
        s.update(beta1=rng.choice([0.9, 0.5]), beta2=rng.choice([0.999, 0.9]),
                 eps=rng.choice([1e-8, 1e-3]), amsgrad=float(rng.random() < 0.5),
                 weight_decay=rng.choice([0.0, 0.01]))
    s["maximize"] = float(rng.random() < 0.1)
    s.update(fixed)
    if s["momentum"] == 0:
        s["nesterov"] = 0.0
    return [float(s[c]) for c in COLUMNS]


def problem(rng, sizes, dtype):
    """Ragged data of the given group sizes near the tutorial's."""
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(offsets[-1])
    gen = np.random.default_rng(rng.randrange(1 << 30))
    x = gen.random(n).astype(dtype)
    y = (gen.random(n) * 1.2).astype(dtype)
    return x, y, offsets


def starts(rng, fits, dtype):
    w = np.array(eh.TUTORIAL_WEIGHTS)
    return np.array([list(w + [rng.gauss(0, 0.1) for _ in w]) + [rng.uniform(-20, 2)]
                     for _ in range(fits)], dtype)


def emulated(harness, workdir, x, y, offsets, start, settings, trained, kind, history_len,
             route=-1, n=0, host_offsets=True, raw=0):
    d = Path(workdir)
    d.mkdir(parents=True, exist_ok=True)
    fits = len(offsets) - 1 if offsets is not None else len(x) // n
    x.tofile(d / "x.bin")
    y.tofile(d / "y.bin")
    if offsets is not None:
        offsets.tofile(d / "offsets.bin")
    start.tofile(d / "start.bin")
    settings.tofile(d / "settings.bin")
    args = [str(harness), f"dir={d}", f"dtype={'f64' if x.dtype == np.float64 else 'f32'}",
            f"fits={fits}", f"n={n}", f"points={len(x)}",
            f"offsets={int(offsets is not None)}", f"start_rows={len(start)}",
            f"settings_rows={len(settings)}", f"trained={trained}", f"kind={kind}",
            f"history_len={history_len}", f"route={route}",
            f"host_offsets={int(host_offsets)}", f"raw={raw}"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise eh.Failed(done.returncode, done.stdout + done.stderr)
    read = lambda name, t: np.fromfile(d / f"out_{name}.bin", t)  # noqa: E731
    return dict(params=read("params", x.dtype).reshape(fits, 7), loss=read("loss", x.dtype),
                epochs=read("epochs", np.int64), status=read("status", np.int8),
                bad_param=read("bad", np.int8),
                losses=read("history", x.dtype).reshape(fits, history_len),
                biases=read("biases", x.dtype).reshape(fits, history_len if raw else 0))


def on_cpu(x, y, offsets, start, settings, trained, kind, history, n=0, raw=0):
    t = torch.from_numpy
    xs, ys = (t(x), t(y)) if offsets is not None else (t(x).reshape(-1, n), t(y).reshape(-1, n))
    o = t(offsets) if offsets is not None else torch.empty(0, dtype=torch.int64)
    out = torch.ops.biasfit.fit_many(xs, ys, o, t(start), t(settings), trained, kind, history,
                                     raw)
    names = ("params", "loss", "epochs", "status", "bad_param", "losses", "biases")
    return {k: v.numpy() for k, v in zip(names, out)}


def assert_same_bits(got, want):
    for field, w in want.items():
        g = got[field]
        assert g.shape == w.shape, field
        if w.size == 0:
            continue
        if w.dtype.kind == "f":
            same = (g.view(np.uint8) == w.view(np.uint8)).reshape(*w.shape, -1).all(-1)
        else:
            same = g == w
        bad = np.argwhere(~same)
        assert bad.size == 0, (f"{field} differs at {bad[:5].tolist()}: "
                               f"{g[tuple(bad[0])]!r} vs {w[tuple(bad[0])]!r}")


def check(harness, tmp_path, monkeypatch, x, y, offsets, start, settings, trained, kind,
          history=True, route=-1, n=0, host_offsets=True, raw=0):
    monkeypatch.setenv("BIASFIT_TRAINER_PLAN", "stream")
    want = on_cpu(x, y, offsets, start, settings, trained, kind, history, n=n, raw=raw)
    got = emulated(harness, tmp_path, x, y, offsets, start, settings, trained, kind,
                   want["losses"].shape[1], route=route, n=n, host_offsets=host_offsets,
                   raw=raw)
    assert_same_bits(got, want)
    return want


def status_mix_rows(rng):
    """Rows that end every way on the tutorial-like data: converged,
    exhausted, stalled (lr far too large), diverged (an inf loss)."""
    base = dict(momentum=0.0, nesterov=0.0, dampening=0.0, weight_decay=0.0, rtol=0.0,
                mean=0.0)
    return [row(rng, "sgd", **base, lr=0.1, epochs=100.0, tol=1e-4, maximize=0.0),
            row(rng, "sgd", **base, lr=0.01, epochs=10.0, tol=1e-4, maximize=0.0),
            row(rng, "sgd", **base, lr=10.0, epochs=50.0, tol=1e-4, maximize=0.0),
            row(rng, "sgd", **base, lr=1e300, epochs=50.0, tol=1e-4, maximize=1.0)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("route", [THREAD, WARP, BLOCK], ids=["thread", "warp", "block"])
def test_bias_sgd_every_route(harness, tmp_path, monkeypatch, dtype, route):
    """final_bias alone by SGD with every option and stop rule, per-fit
    settings and starts, ragged groups, each fit forced onto one route; the
    tutorial's data repeated ends fits every way, stalls included."""
    rng = random.Random(10 + route)
    x0, y0 = (np.array(v, dtype) for v in ([0.0, 0.5, 1.0], [0.0, 1.0, 0.0]))
    sizes = [rng.choice([1, 2, 5, 15, 16, 17, 40, 100]) for _ in range(12)]
    x, y, offsets = problem(rng, sizes, dtype)
    x, y = np.concatenate([np.tile(x0, 4), x]), np.concatenate([np.tile(y0, 4), y])
    offsets = np.concatenate([[0, 3, 6, 9], offsets + 12]).astype(np.int64)
    fits = len(offsets) - 1
    start = starts(rng, fits, dtype)
    start[:4] = list(eh.TUTORIAL_WEIGHTS) + [0.0]
    settings = np.array(status_mix_rows(rng) + [row(rng, "sgd") for _ in range(fits - 4)])
    want = check(harness, tmp_path, monkeypatch, x, y, offsets, start, settings, BIAS, 0,
                 route=route)
    # converged, exhausted, stalled, diverged (an inf loss or an inf bias)
    assert list(want["status"][:3]) == [1, 2, 7] and want["status"][3] in (3, 4)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("route", [THREAD, WARP, BLOCK], ids=["thread", "warp", "block"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_params_every_route(harness, tmp_path, monkeypatch, dtype, route, optimizer):
    """Random subsets of the seven parameters (final_bias alone with Adam
    too), SGD, Adam and AdamW with their options, per-fit settings."""
    rng = random.Random(100 * route + len(optimizer) + (dtype == np.float64))
    sizes = [rng.choice([1, 3, 15, 16, 33, 70]) for _ in range(8)]
    x, y, offsets = problem(rng, sizes, dtype)
    trained = sum(1 << p for p in range(7) if rng.random() < 0.5) or (1 << 3)
    if optimizer == "sgd" and trained == BIAS:
        trained |= 1
    settings = np.array([row(rng, optimizer, epochs=25) for _ in sizes])
    check(harness, tmp_path, monkeypatch, x, y, offsets, starts(rng, len(sizes), dtype),
          settings, trained, KINDS[optimizer], route=route)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_params_diverge(harness, tmp_path, monkeypatch, dtype):
    """A weight that becomes inf: bad_param names it, on every route."""
    rng = random.Random(3)
    x, y, offsets = problem(rng, [3, 20, 50], dtype)
    settings = np.array([row(rng, "sgd", lr=lr, maximize=1.0, momentum=0.0,
                             weight_decay=0.0, tol=0.0, rtol=0.0, epochs=30.0)
                         for lr in (1e30, 1.7976931348623157e308, 1e-3)])
    start = starts(rng, 3, dtype)
    start[:, 6] = 1.0  # every output unit on: no gradient is zero
    for route in (THREAD, WARP, BLOCK):
        want = check(harness, tmp_path / str(route), monkeypatch, x, y, offsets,
                     start, settings, 0b1001001, 0, route=route)
        assert (want["bad_param"] >= 0).any()


def test_routes_by_size(harness, tmp_path, monkeypatch):
    """The routes as the launcher picks them by size (thread below 16 points,
    warp to two chunks, block above), in one ragged batch; several chunks
    sum in the chunks' pairwise tree; offsets unseen by the host (every
    route's kernel queued) give the same."""
    rng = random.Random(5)
    sizes = [3, 15, 16, 1000, 2 * CHUNK, 2 * CHUNK + 1, 3 * CHUNK + 7]
    x, y, offsets = problem(rng, sizes, np.float64)
    start = starts(rng, len(sizes), np.float64)
    start[:, 6] = -2.0
    settings = np.array([row(rng, "sgd", lr=1e-5, epochs=6.0, tol=0.0, rtol=0.0, mean=0.0)])
    for host_offsets in (True, False):
        check(harness, tmp_path, monkeypatch, x, y, offsets, start, settings, BIAS, 0,
              host_offsets=host_offsets)
    settings = np.array([row(rng, "adam", lr=1e-3, epochs=3.0, tol=0.0, rtol=0.0)])
    check(harness, tmp_path, monkeypatch, x, y, offsets, start, settings, 0b1100001, 1)


@pytest.mark.parametrize("route", [THREAD, WARP], ids=["thread", "warp"])
def test_several_chunks_on_small_teams(harness, tmp_path, monkeypatch, route):
    """A thread or a warp forced onto fits of several chunks: the chunk
    slots of neighbouring fits (unaligned offsets) never meet."""
    rng = random.Random(6)
    sizes = [CHUNK + 5, 7, 2 * CHUNK + 3]
    x, y, offsets = problem(rng, sizes, np.float32)
    settings = np.array([row(rng, "sgd", lr=1e-5, epochs=4.0, tol=0.0, rtol=0.0)])
    check(harness, tmp_path, monkeypatch, x, y, offsets, starts(rng, 3, np.float32),
          settings, BIAS, 0, route=route)
    check(harness, tmp_path, monkeypatch, x, y, offsets, starts(rng, 3, np.float32),
          settings, 0b1000011, 0, route=route)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_dense_batch_shared_rows(harness, tmp_path, monkeypatch, dtype):
    """[K, N] data, one start row and one settings row shared by every fit,
    no history; the tutorial's own fit among them converges at epoch 34."""
    rng = random.Random(8)
    K, n = 40, 3
    x = np.tile(np.array([0.0, 0.5, 1.0], dtype), K)
    y = np.tile(np.array([0.0, 1.0, 0.0], dtype), K)
    y[3:] += np.array([rng.uniform(-0.2, 0.2) for _ in range(3 * K - 3)], dtype)
    start = np.array([list(eh.TUTORIAL_WEIGHTS) + [0.0]], dtype)
    settings = np.array([row(random.Random(0), "sgd", lr=0.1, epochs=100.0, tol=1e-4,
                             momentum=0.0, weight_decay=0.0, maximize=0.0, rtol=0.0,
                             mean=0.0)])
    want = check(harness, tmp_path, monkeypatch, x, y, None, start, settings, BIAS, 0,
                 history=False, n=n)
    assert want["epochs"][0] == 34 and want["status"][0] == 1


@pytest.mark.parametrize("raw", [1, 2])
def test_raw_fits(harness, tmp_path, monkeypatch, raw):
    """The op's raw fits (vmap of fit_sgd, raw=1, and of fit_params, raw=2):
    no stall decided, each epoch's final_bias kept, on every route."""
    rng = random.Random(20 + raw)
    x0, y0 = (np.array(v, np.float64) for v in ([0.0, 0.5, 1.0], [0.0, 1.0, 0.0]))
    x, y, offsets = problem(rng, [5, 40], np.float64)
    x, y = np.concatenate([np.tile(x0, 3), x]), np.concatenate([np.tile(y0, 3), y])
    offsets = np.concatenate([[0, 3, 6], offsets + 9]).astype(np.int64)
    start = starts(rng, 5, np.float64)
    start[:3] = list(eh.TUTORIAL_WEIGHTS) + [0.0]
    settings = np.array(status_mix_rows(rng)[:3] + [row(rng, "sgd") for _ in range(2)])
    for route in (THREAD, WARP, BLOCK):
        want = check(harness, tmp_path / str(route), monkeypatch, x, y, offsets, start,
                     settings, BIAS, 0, route=route, raw=raw)
        assert 7 not in want["status"]  # the stalled fit is not decided stalled


def test_regrouped_cpu_fits_within_bound(harness, tmp_path, monkeypatch):
    """Where the CPU regroups a final_bias fit's points (256 or more,
    cpu/plan.h) it sums another order; the GPU always sums the streamed one.
    There the two agree within 1e-13 relative in float64 (docs/many.md),
    with the same epochs and statuses."""
    rng = random.Random(9)
    sizes = [300, 2000, 5000]
    x, y, offsets = problem(rng, sizes, np.float64)
    x = x * 1.2 - 0.1
    start = np.array([list(eh.TUTORIAL_WEIGHTS) + [-1.0]])
    settings = np.array([row(rng, "sgd", lr=1e-6, epochs=30.0, tol=0.0, rtol=0.0, mean=0.0,
                             momentum=0.0, weight_decay=0.0, maximize=0.0)])
    monkeypatch.setenv("BIASFIT_TRAINER_PLAN", "regroup")
    want = on_cpu(x, y, offsets, start, settings, BIAS, 0, True)
    got = emulated(harness, tmp_path, x, y, offsets, start, settings, BIAS, 0,
                   want["losses"].shape[1])
    for field in ("epochs", "status", "bad_param"):
        assert (got[field] == want[field]).all(), field
    for field in ("params", "loss", "losses"):
        np.testing.assert_allclose(got[field], want[field], rtol=1e-13, atol=0)


def test_threadsanitizer_finds_no_race(tmp_path, monkeypatch):
    """Each route's barriers (the team's shared state, lanes and chunk sums)
    under ThreadSanitizer, on fits of one and of several chunks."""
    from test_cuda_emu_strict import TSAN_ENV, tsan_works
    if not tsan_works():
        pytest.fail("g++ cannot build with -fsanitize=thread (libtsan missing?)")
    binary = tmp_path / "harness_many_tsan"
    command = [eh.GXX, *eh.FLAGS, *eh.TSAN_FLAGS, f"-I{eh.CSRC}", f"-I{eh.EMU}",
               str(eh.EMU / "harness_many.cpp"), "-o", str(binary)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    for name, value in TSAN_ENV.items():
        monkeypatch.setenv(name, value)
    rng = random.Random(12)
    x, y, offsets = problem(rng, [3, 40, CHUNK + 3], np.float32)
    for route in (THREAD, WARP, BLOCK):
        for trained, kind in ((BIAS, 0), (0b1000101, 1)):
            settings = np.array([row(rng, "adam" if kind else "sgd", epochs=2.0, tol=0.0)])
            check(binary, tmp_path / f"{route}{kind}", monkeypatch, x, y, offsets,
                  starts(rng, 3, np.float32), settings, trained, kind, route=route)
