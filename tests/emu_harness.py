"""Builds and runs tests/cuda_emu/harness.cpp: biasfit's CUDA kernels and
host launch sequences (csrc/*.cuh, csrc/cuda/launch.h) compiled with g++
over a CPU emulation of CUDA. See tests/cuda_emu/cuda_emu.h."""
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
EMU = ROOT / "tests" / "cuda_emu"
GXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")

# As the CPU build (setup.py): no FMA contraction. The device code also goes
# through csrc/core/rounding.h, but the harness's host math must round the same.
FLAGS = ["-std=c++20", "-pthread", "-ffp-contract=off", "-Wall", "-Wextra",
         "-Wno-unknown-pragmas"]
TSAN_FLAGS = ["-O1", "-g", "-fsanitize=thread"]

TUTORIAL_WEIGHTS = (1.7, -0.85, -40.8, 12.6, 0.0, 2.7)


def build(out, extra_flags=("-O2",), csrc=CSRC):
    """Compiles the harness to `out`; returns its path. Raises on failure,
    with g++'s output."""
    command = [GXX, *FLAGS, *extra_flags, f"-I{csrc}", f"-I{EMU}",
               str(EMU / "harness.cpp"), "-o", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"g++ failed:\n{' '.join(command)}\n{done.stderr}")
    return Path(out)


class Failed(Exception):
    """The harness exited non-zero: an emulation error, a TSan report, a crash."""

    def __init__(self, returncode, output):
        super().__init__(f"harness exited with {returncode}:\n{output[-4000:]}")
        self.returncode, self.output = returncode, output


def hexes(values):
    return ",".join(float(v).hex() for v in values)


def view_of(arr):
    """(storage, offset, step) of a 1-D NumPy view, in elements: the harness
    rebuilds the same view over a 64-byte aligned copy of the storage."""
    arr = np.asarray(arr)
    itemsize = arr.itemsize
    if arr.size == 0:
        return np.zeros(1, arr.dtype), 0, 1
    step = arr.strides[0] // itemsize if arr.ndim == 1 else 1
    if arr.ndim != 1:
        arr = np.ascontiguousarray(arr).ravel()
    base = arr
    while isinstance(base.base, np.ndarray):
        base = base.base
    start = (arr.__array_interface__["data"][0]
             - base.__array_interface__["data"][0]) // itemsize
    if step < 0 or base.ndim != 1 or not base.flags.c_contiguous:
        return np.ascontiguousarray(arr), 0, 1
    return base, start, step


class Harness:
    def __init__(self, binary, env=None):
        self.binary = Path(binary)
        self.env = env or {}

    def run(self, op, workdir, timeout=600, **params):
        args = [str(self.binary), op, f"dir={workdir}"]
        args += [f"{k}={v}" for k, v in params.items()]
        env = dict(os.environ, **self.env)
        done = subprocess.run(args, capture_output=True, text=True, env=env,
                              timeout=timeout)
        if done.returncode != 0:
            raise Failed(done.returncode, done.stdout + done.stderr)
        counts = done.stdout.strip().splitlines()[-1]
        self.last_output = done.stdout + done.stderr
        return dict(kv.split("=") for kv in counts.split())

    def _call(self, op, workdir, a, b, weights, bias, **params):
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        dtype = np.asarray(a).dtype
        sa, a_off, a_step = view_of(a)
        sb, b_off, b_step = view_of(b if b is not None else a)
        sa.tofile(workdir / "a.bin")
        sb.tofile(workdir / "b.bin")
        counts = self.run(op, workdir, dtype="f64" if dtype == np.float64 else "f32",
                          n=np.asarray(a).size, a_off=a_off, a_step=a_step,
                          b_off=b_off, b_step=b_step, w=hexes(weights),
                          bias=float(bias).hex(), **params)
        return dtype, counts

    def predict(self, workdir, x, weights, bias):
        dtype, _ = self._call("predict", workdir, np.ascontiguousarray(x), None,
                              weights, bias)
        return np.fromfile(Path(workdir) / "out.bin", dtype)

    def fused_loss(self, workdir, x, y, weights, bias, sums=False):
        """(loss, grad) in the data's dtype, or float64 with sums=True."""
        op = "fused_loss_sums" if sums else "fused_loss"
        dtype, _ = self._call(op, workdir, x, y, weights, bias)
        return tuple(np.fromfile(Path(workdir) / "out.bin",
                                 np.float64 if sums else dtype))

    def predict_bias_grad(self, workdir, grad_out, x, weights, bias):
        dtype, _ = self._call("predict_bias_grad", workdir, np.ascontiguousarray(x),
                              np.ascontiguousarray(grad_out), weights, bias)
        return np.fromfile(Path(workdir) / "out.bin", dtype)[1]

    def fit(self, workdir, x, y, weights, bias, lr=0.1, momentum=0.0,
            dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False,
            epochs=100, tol=1e-4, event_delay=0, capturing=False, rtol=0.0, patience=0,
            divide_by=1.0):
        """(final_bias, losses, biases, info, counts), as ops.fit_sgd."""
        dtype, counts = self._call(
            "fit", workdir, x, y, weights, bias, lr=float(lr).hex(),
            momentum=float(momentum).hex(), dampening=float(dampening).hex(),
            weight_decay=float(weight_decay).hex(), nesterov=int(nesterov),
            maximize=int(maximize), epochs=int(epochs), tol=float(tol).hex(),
            event_delay=event_delay, capturing=int(capturing), rtol=float(rtol).hex(),
            patience=int(patience), divide_by=float(divide_by).hex())
        d = Path(workdir)
        return (np.fromfile(d / "out_bias.bin", dtype)[0],
                np.fromfile(d / "out_losses.bin", dtype),
                np.fromfile(d / "out_biases.bin", dtype),
                np.fromfile(d / "out_info.bin", np.int64), counts)

    # -- every gradient (csrc/cuda/kernels_grads.cuh, cuda/kernels_params.cuh)

    def loss_grads(self, workdir, x, y, weights, bias, needs=15):
        """fused_loss_grads: (loss, weights_grad[6] or None, bias_grad, dy or
        None, dx or None) in the data's dtype; needs as the op's."""
        dtype, _ = self._call("loss_grads", workdir, x, y, weights, bias, needs=needs)
        d = Path(workdir)
        out = np.fromfile(d / "out.bin", dtype)
        per_point = lambda bit, name: np.fromfile(d / name, dtype) if needs & bit else None
        return (out[0], out[1:7] if needs & 1 else None, out[7],
                per_point(4, "out_dy.bin"), per_point(8, "out_dx.bin"))

    def loss_grads_sums(self, workdir, x, y, weights, bias):
        """fused_loss_grads_sums: float64 [loss, 6 weight grads, bias grad]."""
        self._call("loss_grads_sums", workdir, x, y, weights, bias)
        return np.fromfile(Path(workdir) / "out.bin", np.float64)

    def predict_grads(self, workdir, grad_out, x, weights, bias, needs=15):
        """predict_grads: (weights_grad[6] or None, bias_grad, dx or None)."""
        dtype, _ = self._call("predict_grads", workdir, np.ascontiguousarray(x),
                              np.ascontiguousarray(grad_out), weights, bias, needs=needs)
        d = Path(workdir)
        out = np.fromfile(d / "out.bin", dtype)
        return (out[:6] if needs & 1 else None, out[6],
                np.fromfile(d / "out_dx.bin", dtype) if needs & 8 else None)

    def fit_params(self, workdir, x, y, params, trained=127, kind=0, lr=0.1, momentum=0.0,
                   dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False,
                   beta1=0.9, beta2=0.999, eps=1e-8, amsgrad=False, epochs=100, tol=1e-4,
                   event_delay=0, capturing=False):
        """(params[7], losses, biases, info[3], counts), as ops.fit_params."""
        f = lambda v: float(v).hex()
        dtype, counts = self._call(
            "fit_params", workdir, x, y, TUTORIAL_WEIGHTS, 0.0, p=hexes(params),
            trained=int(trained), kind=int(kind), lr=f(lr), momentum=f(momentum),
            dampening=f(dampening), nesterov=int(nesterov), weight_decay=f(weight_decay),
            maximize=int(maximize), beta1=f(beta1), beta2=f(beta2), eps=f(eps),
            amsgrad=int(amsgrad), epochs=int(epochs), tol=f(tol),
            event_delay=event_delay, capturing=int(capturing))
        d = Path(workdir)
        return (np.fromfile(d / "out_params.bin", dtype),
                np.fromfile(d / "out_losses.bin", dtype),
                np.fromfile(d / "out_biases.bin", dtype),
                np.fromfile(d / "out_info.bin", np.int64), counts)
