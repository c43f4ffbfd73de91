"""The CPU kernels' bit-level promises.

The trainer (fit_sgd) sums each epoch with its own hand-vectorized loop over
precomputed hidden values; fused_loss evaluates the whole network per point;
the all-seven pass (fused_loss_grads, fit_params) runs core/network.h on SIMD
vectors. Each must give the same bits on AVX-512, on AVX2 and on the
baseline kernels (BIASFIT_CPU_KERNEL=avx2 or =baseline forces a lower set),
for any thread count.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import biasfit
from helpers import CHUNK, REGROUP_EPOCHS, random_problem, regrouped_order

DTYPES = [torch.float32, torch.float64]


def special_problem(n, dtype):
    """random_problem with the values kernels get wrong: +-0 and points right
    on the output relu's kink (hidden + bias == 0 for bias -2)."""
    x, y, w, b = random_problem(n, dtype, "cpu", seed=n)
    x[::97] = 0.0
    y[::89] = -0.0
    y[5::89] = 0.0
    x[7::101] = 2.0 / 34.02  # the bottom unit alone, ~2: near the kink
    return x, y, w, b


LR, MOMENTUM = 1e-5, 0.5


def fit_sgd(x, y, w, b, epochs):
    return torch.ops.biasfit.fit_sgd(x, y, w, b, LR, MOMENTUM, 0.0, False, 0.0, False,
                                     epochs, 0.0)


# From bias 80 every output unit is on (hidden >= -69.4 on special_problem's
# x), and the trainer's chunks take their all-on loop (cpu/x86/epoch_loops.h).
ALL_ON_BIAS = 80.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [5, 8, CHUNK + 3, 5 * CHUNK + 13])
@pytest.mark.parametrize("start", [None, ALL_ON_BIAS])
def test_every_trainer_epoch_is_fused_loss_bit_for_bit(n, dtype, start, monkeypatch):
    # The same loop from Python: fused_loss's sums, sgd_step's rule.
    x, y, w, b = special_problem(n, dtype)
    if start is not None:
        b = torch.tensor(start, dtype=dtype)
        # Not the closed plan, which float64 data all on would take: its sums
        # are within 1e-13 of these, not equal (tests/test_trainer_plan.py).
        monkeypatch.setenv("BIASFIT_TRAINER_PLAN", "once")
    final, losses, biases, info = fit_sgd(x, y, w, b, epochs=6)
    assert info.tolist() == [6, 2]  # every epoch ran
    bias, buf = b, None
    for epoch in range(6):
        loss, grad = torch.ops.biasfit.fused_loss(x, y, w, bias)
        assert biases[epoch].item() == bias.item()
        assert losses[epoch].item() == loss.item()
        bias, buf = torch.ops.biasfit.sgd_step(bias, grad, buf, LR, MOMENTUM, 0.0, False,
                                               0.0, False)
    assert final.item() == bias.item()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("plan", ["once", "stream", "regroup"])
@pytest.mark.parametrize("bad", ["nan x", "inf", "-inf", "nan"])
def test_trainer_epoch_with_values_not_finite_is_fused_loss(bad, plan, dtype, monkeypatch):
    # Where no z = h + bias can be NaN, the AVX-512 loops sum -r under the
    # mask z > 0 instead of relu(z) - y (cpu/x86/epoch_loops.h, Known::kNoNaN),
    # which would give a NaN z's point y^2 where relu gives NaN. A chunk
    # holding a NaN h, and a bias that is not finite, must take relu's
    # path: the first epoch's loss is fused_loss's (over the regrouped
    # order, for that plan), NaN included. The other chunks of the NaN x's
    # fit take the masked path.
    monkeypatch.setenv("BIASFIT_TRAINER_PLAN", plan)
    x, y, w, b = special_problem(3 * CHUNK + 21, dtype)
    if bad == "nan x":
        x[CHUNK + 5] = float("nan")
    else:
        b = torch.tensor(float(bad), dtype=dtype)
    _, losses, _, _ = fit_sgd(x, y, w, b, epochs=1)
    order = regrouped_order(x, w) if plan == "regroup" else slice(None)
    loss, _ = torch.ops.biasfit.fused_loss(x[order], y[order], w, b)
    assert losses[0].item().hex() == loss.item().hex()


@pytest.mark.parametrize("n", [1000, 6 * CHUNK + 5])  # one chunk, and several
@pytest.mark.parametrize("dtype", DTYPES)
def test_regrouped_trainer_is_fused_loss_over_the_regrouped_points(dtype, n, monkeypatch):
    monkeypatch.setenv("BIASFIT_TRAINER_PLAN", "regroup")
    # Regrouped by hidden value (forced here; the trainer's cost model
    # chooses it for long fits with many units off), skipping whole chunks
    # and the spans of a chunk whose output units are all off, resuming from
    # the lanes saved there: its epochs are fused_loss over the regrouped
    # points, bit for bit.
    x, y, w, b = special_problem(n, dtype)
    b = torch.tensor(-8.0, dtype=dtype)  # a few chunks on, most off
    final, losses, biases, info = fit_sgd(x, y, w, b, epochs=REGROUP_EPOCHS)
    assert info.tolist() == [REGROUP_EPOCHS, 2]
    perm = regrouped_order(x, w)
    xp, yp = x[perm], y[perm]
    bias, buf = b, None
    for epoch in range(REGROUP_EPOCHS):
        loss, grad = torch.ops.biasfit.fused_loss(xp, yp, w, bias)
        assert biases[epoch].item() == bias.item()
        assert losses[epoch].item() == loss.item()
        bias, buf = torch.ops.biasfit.sgd_step(bias, grad, buf, LR, MOMENTUM, 0.0, False,
                                               0.0, False)
    # ... and the original order's sums up to the order of additions.
    for loss, bias in zip(losses.tolist(), biases):
        want = torch.ops.biasfit.fused_loss(x, y, w, bias)[0].item()
        assert loss == pytest.approx(want, rel=1e-6 if dtype == torch.float32 else 1e-13)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_regrouped_trainer_with_non_finite_inputs(bad, monkeypatch):
    monkeypatch.setenv("BIASFIT_TRAINER_PLAN", "regroup")
    n = 5 * CHUNK
    x, y, w, b = special_problem(n, torch.float64)
    x[n // 2] = bad  # hidden: NaN for NaN and +inf, 0 for -inf
    final, losses, biases, info = fit_sgd(x, y, w, b, epochs=REGROUP_EPOCHS)
    loss0 = torch.ops.biasfit.fused_loss(x, y, w, b)[0].item()
    if bad == -float("inf"):
        assert info.tolist() == [REGROUP_EPOCHS, 2]
        assert losses[0].item() == pytest.approx(loss0, rel=1e-13)
    else:
        assert info.tolist() == [0, 3]  # the loss was NaN at epoch 0
        assert losses[0].isnan() and loss0 != loss0


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])  # (hidden(-inf) is 0)
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_non_finite_input_keeps_its_chunk_off_the_all_on_loop(bad, dtype, monkeypatch):
    # hidden(inf) or hidden(nan) is inf or NaN: that chunk's smallest h is
    # NaN, so the full loop sums it, and the loss is fused_loss's (not finite).
    monkeypatch.setenv("BIASFIT_TRAINER_PLAN", "once")
    x, y, w, _ = special_problem(2 * CHUNK + 3, dtype)
    x[CHUNK + 11] = bad
    b = torch.tensor(ALL_ON_BIAS, dtype=dtype)
    _, losses, _, info = fit_sgd(x, y, w, b, epochs=3)
    loss, _ = torch.ops.biasfit.fused_loss(x, y, w, b)
    assert info.tolist() == [0, 3]
    assert losses[0].item() == loss.item() or (losses[0].isnan() and loss.isnan())


def _all_seven(x, y, w, b):
    """The all-seven kernels' outputs (fused_loss_grads's sums, its rounded
    gradients and a fit_params fit of every parameter), as floats."""
    sums = torch.ops.biasfit.fused_loss_grads_sums(x, y, w, b)
    loss, wg, bg, _, _ = torch.ops.biasfit.fused_loss_grads(x, y, w, b, 3)
    params = torch.cat([w, b.reshape(1)])
    final, losses, _, _ = torch.ops.biasfit.fit_params(
        x, y, params, 127, 1, 0.01, 0.0, 0.0, False, 0.0, False, 0.9, 0.999, 1e-8,
        False, 4, 0.0)
    return [*sums.tolist(), loss.item(), *wg.tolist(), bg.item(), *final.tolist(),
            *losses.tolist()]


def set_plan(plan):
    """BIASFIT_TRAINER_PLAN for the fits that follow (None: the cost model's)."""
    if plan is None:
        os.environ.pop("BIASFIT_TRAINER_PLAN", None)
    else:
        os.environ["BIASFIT_TRAINER_PLAN"] = plan


def _sums_json(sizes):
    """Every kernel's output on special_problem(n), exactly (float.hex)."""
    out = {}
    for n in sizes:
        for dtype in DTYPES:
            x, y, w, b = special_problem(n, dtype)
            x[3::83] = 0.5  # the top hidden unit exactly at its kink
            loss, grad = torch.ops.biasfit.fused_loss(x, y, w, b)
            sums = torch.ops.biasfit.fused_loss_sums(x, y, w, b)
            final, losses, _, _ = fit_sgd(x, y, w, b, epochs=4)
            # Regrouped (forced: the cost model would not at these sizes),
            # resuming chunks from saved lanes; and the strided (view) kernel.
            set_plan("regroup")
            regrouped = fit_sgd(x, y, w, torch.tensor(-8.0, dtype=dtype),
                                epochs=REGROUP_EPOCHS)[1]
            set_plan(None)
            # Every unit on: the all-on loop, and (float64) the closed sums.
            all_on = []
            for plan in ("once", "closed"):
                set_plan(plan)
                all_on.append(fit_sgd(x, y, w, torch.tensor(ALL_ON_BIAS, dtype=dtype),
                                      epochs=4)[1])
            set_plan(None)
            strided = torch.ops.biasfit.fused_loss(x[::3], y[::3], w, b)
            out[f"{dtype}-{n}"] = [v.hex() for v in
                                   [loss.item(), grad.item(), *sums.tolist(), final.item(),
                                    *losses.tolist(), *regrouped.tolist(),
                                    *torch.cat(all_on).tolist(),
                                    *(s.item() for s in strided), *_all_seven(x, y, w, b)]]
    return json.dumps(out)


# A tail alone, whole vectors and a tail, one chunk of several 128-point
# spans, a chunk and a last span of 2 points, several chunks and a tail.
KERNEL_SIZES = [13, 16 * 7 + 5, 1000, CHUNK + 130, 3 * CHUNK + 21]


@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_every_instruction_set_gives_the_same_bits(isa):
    # This process runs the best kernels the CPU has (AVX-512 or AVX2);
    # BIASFIT_CPU_KERNEL makes a child take a lower set.
    flags = open("/proc/cpuinfo").read()
    if "avx2" not in flags:
        pytest.skip("no AVX2 here: every run already takes the baseline kernels")
    if isa == "avx2" and "avx512f" not in flags:
        pytest.skip("no AVX-512 here: every run already takes the AVX2 kernels")
    code = "import test_cpu_kernels as t; print(t._sums_json(%r))" % (KERNEL_SIZES,)
    env = dict(os.environ, BIASFIT_CPU_KERNEL=isa)
    # Run from tests/, which `python -c` puts first on sys.path: from the
    # repository root, `import biasfit` would find the unbuilt source tree.
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300, cwd=os.path.dirname(os.path.abspath(__file__)))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == json.loads(_sums_json(KERNEL_SIZES))


def test_same_bits_for_any_thread_count(monkeypatch):
    x, y, w, b = random_problem(1_000_000, torch.float32, "cpu", seed=3)
    # The fits take float64 data: a float32 fit's losses and bias round the
    # sums' last bits away, and with them any change of order.
    x64, y64 = x.double(), y.double()
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            loss, grad = torch.ops.biasfit.fused_loss(x, y, w, b)
            result = [loss.item(), grad.item()]
            # Each plan splits the chunks it sums among the threads; a
            # regrouped fit also sorts the points in one piece a thread.
            for plan in ("stream", "once", "regroup"):
                monkeypatch.setenv("BIASFIT_TRAINER_PLAN", plan)
                fit = biasfit.fit_fused(x64, y64, bias=-2.0, epochs=REGROUP_EPOCHS,
                                        tol=0.0, lr=1e-7)
                result += [fit.losses, fit.final_bias]
            results.append(result)
    finally:
        torch.set_num_threads(before)
    assert results[0] == results[1] == results[2]


def test_fit_params_same_bits_for_any_thread_count():
    # Every epoch in one parallel region, chunks split among the threads:
    # the sums and so the whole fit are the same bits for any thread count.
    x, y, w, b = random_problem(5 * CHUNK + 7, torch.float32, "cpu", seed=4)
    params = torch.cat([w, b.reshape(1)])
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            final, losses, biases, info = torch.ops.biasfit.fit_params(
                x, y, params, 127, 1, 0.01, 0.0, 0.0, False, 0.0, False, 0.9, 0.999,
                1e-8, False, 6, 0.0)
            sums = torch.ops.biasfit.fused_loss_grads_sums(x, y, w, b)
            results.append((final.tolist(), losses.tolist(), info.tolist(), sums.tolist()))
    finally:
        torch.set_num_threads(before)
    assert results[0] == results[1] == results[2]
    assert results[0][2] == [6, 2, -1]  # every epoch ran


LANES = 16  # csrc/cpu/reduce.h's kLanes


def cpu_order_sum(values):
    """cpu/reduce.h's documented order, in float64: chunks of CHUNK points;
    in a chunk, point i adds into lane i % LANES (lanes start at +0.0), the
    lanes combine in the tree l[k] += l[k + w] for w = 8, 4, 2, 1; the chunk
    sums combine pairwise ((c0 + c1) + (c2 + c3)) + ... ."""
    chunks = []
    for start in range(0, len(values), CHUNK):
        lanes = [0.0] * LANES
        for i, v in enumerate(values[start:start + CHUNK]):
            lanes[i % LANES] += v
        width = LANES // 2
        while width:
            for k in range(width):
                lanes[k] += lanes[k + width]
            width //= 2
        chunks.append(lanes[0])
    while len(chunks) > 1:
        pairs = [chunks[i] + chunks[i + 1] for i in range(0, len(chunks) - 1, 2)]
        chunks = pairs + ([chunks[-1]] if len(chunks) % 2 else [])
    return chunks[0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 15, 16, 17, 33, CHUNK + 3, 2 * CHUNK + 37])
def test_sums_follow_the_documented_order(n, dtype):
    # The per-point values in the data's dtype, as core/network.h evaluates them
    # (torch's eager ops round each multiply and add alike), summed in the
    # order above in Python floats: every kernel, small chunks included,
    # must give exactly these bits.
    x, y, w, b = special_problem(n, dtype)
    w00, b00, w01, w10, b10, w11 = w
    h = (x * w00 + b00).relu() * w01 + (x * w10 + b10).relu() * w11
    z = h + b
    r = z.relu() - y
    loss = (r.double() * r.double()).tolist()
    grad = (2.0 * torch.where(z > 0, r, torch.zeros_like(r)).double()).tolist()
    sums = torch.ops.biasfit.fused_loss_sums(x, y, w, b).tolist()
    assert sums[0] == cpu_order_sum(loss)
    assert sums[1] == cpu_order_sum(grad)
    # The trainer's first epoch (the direct call's, and the op's) is the
    # same sum; with every unit off, fit_fused reports the stall instead.
    try:
        first = biasfit.fit_fused(x, y, weights=w, bias=b, epochs=1, tol=0.0, lr=0.0)
    except biasfit.StalledError as e:
        first = e.result
    _, losses, _, _ = fit_sgd(x, y, w, b, epochs=1)
    assert first.losses[0] == losses[0].item() == torch.tensor(sums[0], dtype=dtype).item()
