"""Ctrl-C stops a long fit_fused promptly, from inside the native loop."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import CHILD_CWD

SCRIPT = textwrap.dedent("""
    import sys, time, torch, biasfit
    n = 2_000_000
    x = torch.linspace(-0.5, 1.5, n)
    y = torch.rand(n)
    print("fitting", flush=True)
    start = time.perf_counter()
    try:
        # tol=0 never converges: about 1e6 epochs, far longer than the test.
        biasfit.fit_fused(x, y, lr=1e-7, epochs=1_000_000, tol=0.0)
    except KeyboardInterrupt:
        print(f"interrupted after {time.perf_counter() - start:.2f} s", flush=True)
        sys.exit(130)
    print("finished without interruption", flush=True)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_interrupts_fit_fused_within_a_second():
    child = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=CHILD_CWD, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "fitting"
        time.sleep(1.0)  # well inside the native loop by now
        sent = time.perf_counter()
        os.kill(child.pid, signal.SIGINT)
        out, err = child.communicate(timeout=60)
        waited = time.perf_counter() - sent
    finally:
        child.kill()
    assert child.returncode == 130, out + err
    assert "interrupted after" in out
    # The loop checks for signals about every 100 ms; a loaded 2-core
    # machine gets a generous margin, the old behaviour took the whole fit.
    assert waited < 3.0, f"took {waited:.2f} s to stop"


SCRIPT_ALL_SEVEN = textwrap.dedent("""
    import sys, time, torch, biasfit
    n = 2_000_000
    x = torch.linspace(-0.5, 1.5, n)
    y = torch.rand(n)
    model = biasfit.BasicNN()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    print("fitting", flush=True)
    start = time.perf_counter()
    try:
        # fit_params's native loop (engine="fused", every parameter): far
        # longer than the test.
        biasfit.fit(model, x, y, optimizer=opt, epochs=1_000_000, tol=0.0, engine="fused")
    except KeyboardInterrupt:
        print(f"interrupted after {time.perf_counter() - start:.2f} s", flush=True)
        sys.exit(130)
    print("finished without interruption", flush=True)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_interrupts_a_fit_of_all_seven_within_a_second():
    child = subprocess.Popen([sys.executable, "-c", SCRIPT_ALL_SEVEN], cwd=CHILD_CWD,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "fitting"
        time.sleep(1.0)  # well inside the native loop by now
        sent = time.perf_counter()
        os.kill(child.pid, signal.SIGINT)
        out, err = child.communicate(timeout=60)
        waited = time.perf_counter() - sent
    finally:
        child.kill()
    assert child.returncode == 130, out + err
    assert "interrupted after" in out
    assert waited < 3.0, f"took {waited:.2f} s to stop"
