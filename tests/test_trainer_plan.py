"""The CPU trainer's plan: how a fit of final_bias reads its points
(csrc/cpu/plan.h's choose_plan). Streamed epochs recompute hidden(x);
hidden-once epochs read a buffer filled once; regrouped ones skip the
points whose output units are off (whole chunks, and 128-point spans of
the rest); closed ones (float64) sum the chunks whose units are all on from
their moments. The choice changes the speed only:
stream and hidden-once give the same bits, regrouping sums the same values
in another order, closing (only where forced) agrees within 1e-13."""
import pytest
import torch

import biasfit
from biasfit import _direct
from helpers import CHUNK, random_problem
from tolerances import PLANS

F32, F64 = 8, 16  # bytes of an input and a label


@pytest.mark.parametrize("n, bytes_, epochs, off, plan", [
    # Few epochs over data in memory: the buffer would cost more than it saves.
    (10**8, F32, 10, 0.0, "stream"),
    (10**8, F32, 10, 0.5, "stream"),
    (10**7, F32, 1, 0.9, "stream"),
    # Dense data in memory: streamed epochs run at the read pass's speed already.
    (10**7, F32, 1000, 0.0, "stream"),
    # Long fits with most units off: regrouping pays for itself ...
    (10**7, F32, 300, 0.9, "regroup"),
    (10**6, F32, 1000, 0.9, "regroup"),
    (10**8, F32, 1000, 0.5, "regroup"),
    (1000, F64, 1000, 0.5, "regroup"),  # one chunk: its off spans are skipped
    (10**6, F64, 100, 0.5, "regroup"),
    (10**5, F32, 100, 0.5, "regroup"),
    (10**5, F64, 100, 0.5, "regroup"),
    (10**4, F64, 100, 0.5, "regroup"),
    (1000, F64, 100, 0.5, "regroup"),
    (10**6, F64, 50, 0.5, "regroup"),  # measured 1.9x faster than hidden-once
    (10**4, F32, 50, 0.5, "regroup"),  # 1.3x
    # ... not over thirty epochs with half the units off, as the sort costs
    # ~20 epochs (the model counts only the units off at the start).
    (10**5, F64, 30, 0.5, "once"),  # measured 1.6x faster than regrouped
    (10**4, F32, 30, 0.5, "once"),
    (1000, F64, 50, 0.5, "once"),  # as fast either way
    # Past L2, in L3: a few streamed epochs beat the buffer's cost.
    (10**6, F32, 10, 0.0, "stream"),
    (10**6, F64, 10, 0.5, "stream"),
    # Over more epochs, or in L2, hidden-once epochs are cheaper than streamed ones.
    (10**6, F32, 100, 0.0, "once"),
    (10**5, F64, 1000, 0.0, "once"),
    # Too few points to skip a span: never regrouped.
    (255, F32, 10**6, 1.0, "once"),
    (3, F32, 100, 1.0, "once"),
])
def test_the_cost_model_picks_the_cheaper_plan(n, bytes_, epochs, off, plan):
    assert _direct.trainer_plan(n, bytes_, epochs, off) == plan


@pytest.mark.parametrize("n, bytes_, epochs", [
    (1000, F64, 10), (10**5, F64, 10), (10**7, F64, 100), (1000, F64, 1),
    (10**8, F64, 5), (1000, F32, 100),
])
def test_closing_is_opt_in(n, bytes_, epochs):
    # Closed sums are not fused_loss's bits, so the cost model never picks
    # them (cpu/plan.h's kAutoClosed): data all on plans as any other.
    closable = _direct.trainer_plan(n, bytes_, epochs, 0.0, True)
    assert closable == _direct.trainer_plan(n, bytes_, epochs, 0.0, False) != "closed"


@pytest.mark.parametrize("n", [1000, 3 * CHUNK + 5])
def test_a_dense_float64_fit_records_fused_loss_at_each_bias(n, monkeypatch):
    # Data all on, which a closed plan could sum from moments: the cost
    # model's plan records fused_loss's bits at every epoch's bias.
    monkeypatch.delenv("BIASFIT_TRAINER_PLAN", raising=False)
    x, y, w = dense_problem(n, torch.float64)
    b = torch.tensor(5.0, dtype=torch.float64)
    _, losses, biases, info = torch.ops.biasfit.fit_sgd(
        x, y, w, b, 0.1 / n, 0.5, 0.0, False, 0.0, False, 20, 0.0)
    assert _direct.trainer_plan_of(x.numpy(), w.numpy(), 5.0, 20) != "closed"
    for e in range(int(info[0])):
        loss, _ = torch.ops.biasfit.fused_loss(x, y, w, biases[e])
        assert torch.equal(losses[e], loss), f"epoch {e}"


def fit_with(plan, monkeypatch, x, y, w, b, epochs):
    monkeypatch.setenv("BIASFIT_TRAINER_PLAN", plan)
    return torch.ops.biasfit.fit_sgd(x, y, w, b, 1e-6, 0.5, 0.0, False, 0.0, False,
                                     epochs, 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_plan_gives_the_same_fit(dtype, monkeypatch):
    n = 5 * CHUNK + 21
    x, y, w, _ = random_problem(n, dtype, "cpu", seed=11)
    b = torch.tensor(-2.0, dtype=dtype)
    fits = {p: fit_with(p, monkeypatch, x, y, w, b, epochs=40)
            for p in ("stream", "once", "regroup")}
    (s_final, s_losses, s_biases, s_info) = fits["stream"]
    o_final, o_losses, o_biases, o_info = fits["once"]
    # The same chunks, lanes and trees: the same bits.
    assert torch.equal(s_losses, o_losses) and torch.equal(s_final, o_final)
    assert s_info.tolist() == o_info.tolist() == [40, 2]
    # Regrouped: the same sums in another order of float64 additions.
    r_final, r_losses, _, r_info = fits["regroup"]
    assert r_info.tolist() == [40, 2]
    rtol = PLANS[dtype]
    torch.testing.assert_close(r_losses, s_losses, rtol=rtol, atol=0)
    torch.testing.assert_close(r_final, s_final, rtol=rtol, atol=0)


def test_an_unknown_plan_name_is_the_cost_models_choice(monkeypatch):
    x, y, w, _ = random_problem(1000, torch.float64, "cpu", seed=2)
    b = torch.tensor(0.5, dtype=torch.float64)
    chosen = fit_with("fastest", monkeypatch, x, y, w, b, epochs=5)
    monkeypatch.delenv("BIASFIT_TRAINER_PLAN")
    default = torch.ops.biasfit.fit_sgd(x, y, w, b, 1e-6, 0.5, 0.0, False, 0.0, False, 5, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(chosen, default))


def dense_problem(n, dtype, seed=3):
    """x in [0, 1] and labels from bias 5 plus noise: hidden + bias > 4 at
    every point, so every output unit is on (bench_peers.py's "dense")."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, generator=g, dtype=torch.float64)
    w = torch.tensor(biasfit.TUTORIAL_WEIGHTS, dtype=torch.float64)
    h = (x * w[0] + w[1]).relu() * w[2] + (x * w[3] + w[4]).relu() * w[5]
    y = (h + 5).relu() + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    return x.to(dtype), y.to(dtype), w.to(dtype)


def closed_and_streamed(monkeypatch, x, y, w, bias, lr, epochs):
    b = torch.tensor(bias, dtype=x.dtype)
    fits = {}
    for plan in ("stream", "closed"):
        monkeypatch.setenv("BIASFIT_TRAINER_PLAN", plan)
        fits[plan] = torch.ops.biasfit.fit_sgd(x, y, w, b, lr, 0.5, 0.0, False, 0.0,
                                               False, epochs, 0.0)
    return fits["closed"], fits["stream"]


@pytest.mark.parametrize("n", [1000, 5 * CHUNK + 21])
def test_closed_chunks_agree_with_the_point_sums(n, monkeypatch):
    x, y, w = dense_problem(n, torch.float64)
    (c_final, c_losses, c_biases, c_info), (s_final, s_losses, s_biases, s_info) = \
        closed_and_streamed(monkeypatch, x, y, w, 4.0, 0.1 / n, 40)
    assert c_info.tolist() == s_info.tolist() == [40, 2]
    torch.testing.assert_close(c_losses, s_losses, rtol=PLANS[torch.float64], atol=0)
    torch.testing.assert_close(c_biases, s_biases, rtol=PLANS[torch.float64], atol=0)
    torch.testing.assert_close(c_final, s_final, rtol=PLANS[torch.float64], atol=0)
    # Not a copy of the streamed fit: the closed sums round differently.
    assert not torch.equal(c_losses, s_losses)


def test_a_chunk_closes_only_while_all_its_units_are_on(monkeypatch):
    # Labels 0 pull the bias down through every hidden value: chunks go from
    # all on, through part on (summed point by point), to all off.
    n = 3 * CHUNK + 5
    x, _, w = dense_problem(n, torch.float64)
    y = torch.zeros(n, dtype=torch.float64)
    (c_final, c_losses, _, c_info), (s_final, s_losses, _, s_info) = \
        closed_and_streamed(monkeypatch, x, y, w, 6.0, 0.2 / n, 60)
    assert c_info.tolist() == s_info.tolist()
    assert s_losses[-1] < s_losses[0] / 1000  # it went into the kinks
    torch.testing.assert_close(c_losses, s_losses, rtol=PLANS[torch.float64], atol=1e-300)
    torch.testing.assert_close(c_final, s_final, rtol=PLANS[torch.float64], atol=0)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_a_chunk_with_a_non_finite_point_is_summed_point_by_point(bad, monkeypatch):
    x, y, w = dense_problem(2 * CHUNK, torch.float64)
    y[CHUNK + 7] = bad
    (_, c_losses, _, c_info), (_, s_losses, _, s_info) = \
        closed_and_streamed(monkeypatch, x, y, w, 4.0, 1e-6, 10)
    assert c_info.tolist() == s_info.tolist() == [0, 3]  # the loss is not finite
    assert c_losses[0].isnan() == s_losses[0].isnan()


def test_a_stall_through_closed_chunks_is_the_streamed_fits(monkeypatch):
    # Labels 0 and a large step: the bias falls below every hidden value and
    # the fit stalls (every unit off); closed or not, at the same epoch.
    n = 2 * CHUNK + 9
    x, _, _ = dense_problem(n, torch.float64)
    y = torch.zeros(n, dtype=torch.float64)
    stalls = {}
    for plan in ("stream", "closed"):
        monkeypatch.setenv("BIASFIT_TRAINER_PLAN", plan)
        with pytest.raises(biasfit.StalledError) as caught:
            biasfit.fit_fused(x, y, lr=1.0 / n, epochs=100, tol=0.0, bias=6.0,
                              on_stall="raise")
        stalls[plan] = caught.value.result
    closed, streamed = stalls["closed"], stalls["stream"]
    assert closed.epochs_run == streamed.epochs_run
    assert closed.final_bias == pytest.approx(streamed.final_bias, rel=PLANS[torch.float64], abs=0)
    assert closed.losses == pytest.approx(streamed.losses, rel=PLANS[torch.float64], abs=0)


def test_an_exact_zero_gradient_with_units_on_is_no_stall(monkeypatch):
    # At its optimum a closed fit's gradient is exactly 0 (2 count (mean +
    # bias) with bias == -mean): not a stall, so the trainer does not send
    # train.py into its stall test (a pass over the inputs).
    x, y, w = dense_problem(1000, torch.float64)
    monkeypatch.setenv("BIASFIT_TRAINER_PLAN", "closed")
    epoch, status, final, losses, biases, first_zero_grad = _direct.fit_sgd(
        x, y, w, 4.0, 0.5 / 1000, 0.0, 0.0, False, 0.0, False, 200, 0.0)
    steps = memoryview(biases).cast("d").tolist() + [final]
    assert steps[-1] == steps[-2]  # it reached a zero gradient
    assert first_zero_grad == -1
    result = biasfit.fit_fused(x, y, lr=0.5 / 1000, epochs=200, tol=0.0, bias=4.0)
    assert result.final_bias == final and result.epochs_run == 200


def test_near_an_exact_fit_chunks_are_summed_point_by_point(monkeypatch):
    # Labels the network gives at bias 5, no noise: near the fit the residuals
    # are rounding errors, which the closed form would not reproduce, so the
    # chunks stop closing and the last epochs are the streamed fit's bits.
    n = 2 * CHUNK + 7
    x, _, w = dense_problem(n, torch.float64)
    h = (x * w[0] + w[1]).relu() * w[2] + (x * w[3] + w[4]).relu() * w[5]
    y = (h + 5.0).relu()
    (c_final, c_losses, _, c_info), (s_final, s_losses, _, s_info) = \
        closed_and_streamed(monkeypatch, x, y, w, 4.37, 0.05 / n, 400)
    assert c_info.tolist() == s_info.tolist()
    assert s_losses[-1] < 1e-20 * s_losses[0]  # it got to the fit
    torch.testing.assert_close(c_losses[:5], s_losses[:5], rtol=5e-13, atol=0)
    assert not torch.equal(c_losses[:5], s_losses[:5])  # closed while far off
    assert torch.equal(c_losses[-20:], s_losses[-20:])
    assert c_final.item() == s_final.item()


def test_a_stall_is_seen_with_a_chunk_that_cannot_close(monkeypatch):
    # hidden(3e306) is -inf: that chunk's moments are not finite and it never
    # closes, yet its unit is off and its loss finite; the fit still stalls
    # (every unit off) and must say so, as with the hidden-once plan.
    x = torch.linspace(0.01, 0.5, 1000, dtype=torch.float64)
    x[1] = 3e306
    y = torch.ones(1000, dtype=torch.float64)
    for plan in ("once", "closed"):
        monkeypatch.setenv("BIASFIT_TRAINER_PLAN", plan)
        with pytest.raises(biasfit.StalledError):
            biasfit.fit_fused(x, y, lr=1.0, on_stall="raise")
