"""Ctrl-C stops a long native fit promptly, from inside the native loop:
fit_fused's (the bias alone) and fit_params's (every parameter)."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from helpers import CHILD_CWD, default_sigint

# The child: 2e6 points and tol=0, so about 1e6 epochs, far longer than the
# test; FIT is the call that runs them.
SCRIPT = textwrap.dedent("""
    import sys, time, torch, biasfit
    n = 2_000_000
    x = torch.linspace(-0.5, 1.5, n)
    y = torch.rand(n)
    model = biasfit.BasicNN()
    print("fitting", flush=True)
    start = time.perf_counter()
    try:
        FIT
    except KeyboardInterrupt:
        print(f"interrupted after {time.perf_counter() - start:.2f} s", flush=True)
        sys.exit(130)
    print("finished without interruption", flush=True)
""")

FITS = {
    "fit_fused": "biasfit.fit_fused(x, y, lr=1e-7, epochs=1_000_000, tol=0.0)",
    # fit_params's native loop: engine="fused" with every parameter trained.
    "all_seven": "[p.requires_grad_(True) for p in model.parameters()]; "
                 "biasfit.fit(model, x, y, optimizer=torch.optim.Adam(model.parameters(), "
                 "lr=1e-3), epochs=1_000_000, tol=0.0, engine='fused')",
}


def interrupt_child(script, settle):
    """Runs script in a child that prints "fitting" as it starts its fit;
    sends SIGINT `settle` seconds after that line. Returns the child's
    (returncode, stdout, stderr) and the seconds from SIGINT to its exit."""
    child = subprocess.Popen([sys.executable, "-c", script], cwd=CHILD_CWD,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=default_sigint)
    try:
        assert child.stdout.readline().strip() == "fitting"
        time.sleep(settle)  # well inside the native loop by then
        sent = time.perf_counter()
        os.kill(child.pid, signal.SIGINT)
        out, err = child.communicate(timeout=60)
        return child.returncode, out, err, time.perf_counter() - sent
    finally:
        child.kill()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("fit", sorted(FITS))
def test_sigint_interrupts_a_native_fit_within_a_second(fit):
    code, out, err, waited = interrupt_child(SCRIPT.replace("FIT", FITS[fit]), 1.0)
    assert code == 130, out + err
    assert "interrupted after" in out
    # The loop checks for signals about every 100 ms; a loaded 2-core
    # machine gets a generous margin, the old behaviour took the whole fit.
    assert waited < 3.0, f"took {waited:.2f} s to stop"


# -- fit_many: Ctrl-C between fits and within one -------------------------------------
#
# Each call below runs for minutes; SIGINT must end it within about a
# second with KeyboardInterrupt. One child runs them in turn (one import of
# torch), saying when each starts and when its KeyboardInterrupt arrives.
MANY_FITS = {
    # 4 fits of 2e6 points, each far longer than the test: within a fit,
    # on every thread.
    "few_large": ("x = torch.linspace(-0.5, 1.5, 2_000_000).repeat(4, 1); y = torch.rand(4, 2_000_000)",
                  "biasfit.fit_many(x, y, lr=1e-7, epochs=1_000_000, tol=0.0)"),
    # 1e6 tutorial-size fits of 1e5 epochs each (momentum: one fit a thread
    # at a time, not the vector lanes): between fits.
    "many_small": ("x, y = biasfit.tutorial_data(); x, y = x.repeat(1_000_000, 1), y.repeat(1_000_000, 1)",
                   "biasfit.fit_many(x, y, lr=1e-3, momentum=0.5, epochs=100_000, tol=0.0)"),
    # 1e6 tutorial fits by plain SGD: the vector lanes that hold their
    # points in registers (csrc/cpu/fit_many_lanes.h's FewPoints).
    "lanes_few": ("x, y = biasfit.tutorial_data(); x, y = x.repeat(1_000_000, 1), y.repeat(1_000_000, 1)",
                  "biasfit.fit_many(x, y, lr=1e-3, epochs=1_000_000, tol=0.0)"),
    # 1e5 fits of 100 points by plain SGD: the lanes that read them from
    # buffers (ManyPoints).
    "lanes_many": ("x = torch.linspace(-0.5, 1.5, 100).repeat(100_000, 1); y = torch.rand(100_000, 100)",
                   "biasfit.fit_many(x, y, lr=1e-4, epochs=1_000_000, tol=0.0)"),
    # every parameter by Adam (fit_many's fit_params route), with a history.
    "adam_history": ("x = torch.linspace(-0.5, 1.5, 1_000_000).repeat(2, 1); y = torch.rand(2, 1_000_000)",
                     "biasfit.fit_many(x, y, trained=biasfit.model.PARAM_NAMES, optimizer='adam', "
                     "lr=1e-4, epochs=100_000, tol=0.0, history=True)"),
    # torch.func.vmap of fit_sgd: one fit_many call.
    "vmap_fit_sgd": ("x = torch.linspace(-0.5, 1.5, 2_000_000); y = torch.rand(2_000_000); "
                     "w = torch.tensor(biasfit.TUTORIAL_WEIGHTS)",
                     "torch.func.vmap(lambda b: torch.ops.biasfit.fit_sgd(x, y, w, b, 1e-7, 0.0, "
                     "0.0, False, 0.0, False, 1_000_000, 0.0))(torch.zeros(3))"),
}
# Each fit's block of the child (not exec: CPython exits with SIGINT after
# an exec that raised KeyboardInterrupt, even one caught).
MANY_BLOCK = textwrap.dedent("""
    DATA
    print("fitting NAME", flush=True)
    try:
        FIT
    except KeyboardInterrupt:
        print("interrupted NAME", flush=True)
    else:
        sys.exit("finished without interruption: NAME")
""")


def _many_script(names):
    blocks = (MANY_BLOCK.replace("NAME", n).replace("DATA", MANY_FITS[n][0])
              .replace("FIT", MANY_FITS[n][1]) for n in names)
    return "import sys, torch, biasfit\ntorch.set_num_threads(2)\n" + "".join(blocks)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_interrupts_fit_many_within_a_second():
    names = sorted(MANY_FITS)
    child = subprocess.Popen([sys.executable, "-c", _many_script(names)],
                             cwd=CHILD_CWD, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, preexec_fn=default_sigint)
    waits = {}
    watchdog = threading.Timer(60, child.kill)  # a fit that never stops: a failure, not a hang
    watchdog.start()
    try:
        for name in names:
            assert child.stdout.readline().split() == ["fitting", name]
            time.sleep(1.0)  # well inside fit_many by now
            sent = time.perf_counter()
            os.kill(child.pid, signal.SIGINT)
            line = child.stdout.readline().split()
            waits[name] = time.perf_counter() - sent
            assert line == ["interrupted", name], (line, child.stderr.read())
        child.communicate(timeout=60)
    finally:
        watchdog.cancel()
        child.kill()
    assert child.returncode == 0
    # The calling thread asks every ~100 ms; a loaded 2-core machine gets a
    # generous margin (without the checks, each call ran for minutes).
    assert max(waits.values()) < 2.0, waits


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_during_train_group_col_exits_130_with_one_line(tmp_path):
    # 40 groups of 50 points, each fit far longer than the test; the child
    # runs the command line's main as `biasfit train --group-col` does.
    import numpy as np
    rng = np.random.default_rng(0)
    rows = ["compound,dose,effect"] + [f"c{g},{x:.4f},{rng.random():.4f}" for g in range(40)
                                       for x in np.linspace(-0.5, 1.5, 50)]
    plate = tmp_path / "plate.csv"
    plate.write_text("\n".join(rows) + "\n")
    script = textwrap.dedent(f"""
        import sys
        from biasfit import cli
        print("fitting", flush=True)
        sys.exit(cli.main(["train", "--data", {str(plate)!r}, "--group-col", "compound",
                           "--epochs", "100000000", "--tol", "0", "--lr", "1e-6",
                           "--momentum", "0.5"]))
    """)
    code, out, err, waited = interrupt_child(script, 1.5)  # 1.5 s: the table read too
    assert code == 130, out + err
    assert (out, err) == ("", "biasfit train: interrupted\n")
    assert waited < 3.0, f"took {waited:.2f} s to stop"  # (with the child's exit)
