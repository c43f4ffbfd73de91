"""Training all seven parameters (issue 13): the fused trainer against eager
PyTorch (autograd + torch.optim SGD and Adam), torch.compile and biasfit's
autograd engine, per size (benchmark group "N=... dtype all7").

Each size runs a fixed number of epochs (EPOCHS, fewer for 1e7) from the
tutorial's weights with final_bias -16 on workloads.make_data's points, so
time per epoch = a round's time / epochs. Every kernel's losses are checked
against eager PyTorch's with the same optimizer before its time counts. The
bias-only kernels are bench_kernels.py's; run both files in one session to
compare in one run.
"""
import pytest
import torch

import biasfit
import workloads
from biasfit import reference
from report import group_name, size_label
from conftest import bench_dtypes, bench_sizes

KERNELS = ("eager-sgd", "eager-adam", "compiled-adam", "autograd-adam", "fused-sgd",
           "fused-adam", "read")
EPOCHS = {10**7: 5, 10**8: 1}
DEFAULT_EPOCHS = 20
# Eager float32 sums in float32 (cascade sums) where biasfit sums in double;
# float64 agrees to rounding.
LOSS_RTOL = {torch.float32: 1e-3, torch.float64: 1e-9}
ROUNDS = {10**7: 2, 10**8: 1}


def pytest_generate_tests(metafunc):
    if "all7_case" in metafunc.fixturenames:
        sizes = [n for n in bench_sizes(metafunc.config) if n >= 1000]
        metafunc.parametrize("all7_case", [
            pytest.param((k, n, d), id=f"{k}-{d}-N{size_label(n)}")
            for n in sizes for d in bench_dtypes(metafunc.config) for k in KERNELS])


def optimizer_for(kernel, params, n):
    if kernel.endswith("sgd"):
        return torch.optim.SGD(params, lr=0.01 / n, momentum=0.9)
    return torch.optim.Adam(params, lr=0.01)


def all_trainable(cls, dtype):
    model = cls(final_bias=workloads.TRUE_BIAS, dtype=dtype)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def make_runner(kernel, x, y, dtype, epochs):
    """() -> losses, with models and optimizers built outside the timing
    (setup), as bench_kernels.py does."""
    n = x.numel()
    if kernel == "read":
        def run():
            for _ in range(epochs):
                x.sum().item(), y.sum().item()
            return None
        return (lambda: None), run
    state = {}
    if kernel.startswith(("eager", "compiled")):
        loss_fn = reference.vectorized_loss
        if kernel.startswith("compiled"):
            loss_fn = torch.compile(reference.vectorized_loss)

        def setup():
            model = all_trainable(reference.TutorialNN, dtype)
            state.update(model=model, opt=optimizer_for(kernel, model.parameters(), n))

        def run():
            return reference.vectorized_fit(state["model"], x, y, state["opt"], epochs=epochs,
                                            tol=0, loss_fn=loss_fn)[2]
        return setup, run
    engine = "fused" if kernel.startswith("fused") else "autograd"

    def setup():
        model = all_trainable(biasfit.BasicNN, dtype)
        state.update(model=model, opt=optimizer_for(kernel, model.parameters(), n))

    def run():
        return biasfit.fit(state["model"], x, y, optimizer=state["opt"], epochs=epochs, tol=0,
                           engine=engine).losses
    return setup, run


def test_all_seven(benchmark, all7_case):
    kernel, n, dtype_name = all7_case
    dtype = getattr(torch, dtype_name)
    x, y = workloads.make_data(n, dtype, "cpu")
    epochs = EPOCHS.get(n, DEFAULT_EPOCHS)
    setup, run = make_runner(kernel, x, y, dtype, epochs)
    if kernel != "read":
        # The check: eager PyTorch with the same optimizer, same epochs.
        ref_kernel = "eager-sgd" if kernel.endswith("sgd") else "eager-adam"
        ref_setup, ref_run = make_runner(ref_kernel, x, y, dtype, epochs)
        ref_setup()
        want = ref_run()
        setup()
        got = run()
        assert len(got) == len(want) == epochs
        for a, b in zip(got, want):
            assert a == pytest.approx(b, rel=LOSS_RTOL[dtype]), kernel
    benchmark.group = group_name(n, dtype_name, "all7")
    benchmark.extra_info.update(kernel=kernel, n=n, epochs=epochs, dtype=dtype_name)
    benchmark.pedantic(run, setup=setup, rounds=ROUNDS.get(n, 5), iterations=1)
