"""The CPU trainer's plan: how a fit of final_bias reads its points
(csrc/trainer_cpu.h's choose_plan). Streamed epochs recompute hidden(x);
hidden-once epochs read a buffer filled once; regrouped ones skip chunks
whose output units are all off. The choice changes the speed only: stream
and hidden-once give the same bits, regrouping sums the same values in
another order."""
import pytest
import torch

import biasfit
from biasfit import _direct
from helpers import CHUNK, random_problem

F32, F64 = 8, 16  # bytes of an input and a label


@pytest.mark.parametrize("n, bytes_, epochs, off, plan", [
    # Few epochs over data in memory: the buffer would cost more than it saves.
    (10**8, F32, 10, 0.0, "stream"),
    (10**8, F32, 10, 0.5, "stream"),
    (10**7, F32, 1, 0.9, "stream"),
    # Dense data in memory: streamed epochs run at the read pass's speed already.
    (10**7, F32, 1000, 0.0, "stream"),
    # Long fits with most units off: regrouping pays for itself.
    (10**7, F32, 100, 0.9, "regroup"),
    (10**6, F32, 1000, 0.9, "regroup"),
    (10**8, F32, 1000, 0.5, "regroup"),
    # In cache, hidden-once epochs are cheaper than streamed ones.
    (10**6, F32, 100, 0.0, "once"),
    (10**5, F64, 1000, 0.1, "once"),
    # Too few chunks to skip any: never regrouped.
    (3 * CHUNK, F32, 10**6, 1.0, "once"),
    (3, F32, 100, 1.0, "once"),
])
def test_the_cost_model_picks_the_cheaper_plan(n, bytes_, epochs, off, plan):
    assert _direct.trainer_plan(n, bytes_, epochs, off) == plan


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
    rtol = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(r_losses, s_losses, rtol=rtol, atol=0)
    torch.testing.assert_close(r_final, s_final, rtol=rtol, atol=0)


def test_an_unknown_plan_name_is_the_cost_models_choice(monkeypatch):
    x, y, w, _ = random_problem(1000, torch.float64, "cpu", seed=2)
    b = torch.tensor(0.5, dtype=torch.float64)
    chosen = fit_with("fastest", monkeypatch, x, y, w, b, epochs=5)
    monkeypatch.delenv("BIASFIT_TRAINER_PLAN")
    default = torch.ops.biasfit.fit_sgd(x, y, w, b, 1e-6, 0.5, 0.0, False, 0.0, False, 5, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(chosen, default))
