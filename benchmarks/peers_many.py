"""Batched peers of biasfit.fit_many: K fits of final_bias (SGD, stop once
the loss is below tol or after `epochs`) as a performance-minded user would
write them without biasfit.

    numba-prange   a serial whole-fit loop per fit, @njit(parallel=True)
                   with prange over the fits (points in the data's dtype,
                   sums in float64, as benchmarks/peers.py's Numba fit)
    jax-vmap       jax.jit(jax.vmap(fit)), fit's epochs in lax.while_loop
                   (benchmarks/peers.py's JAX fit, vmapped)
    torch-vmap     torch.func.vmap of an eager epoch (PyTorch's model
                   ensembling recipe), the epochs in a Python loop with a
                   mask of the fits still running
    fit_fused-loop biasfit.fit_fused in a Python loop

Each takes (X [K, N], Y [K, N], B0 [K], lr, epochs, tol) and returns
(epochs_run [K], final_bias [K]) as NumPy arrays, so one check holds every
peer to fit_many's results before its time counts (bench_many.py).
"""
import functools
import importlib.util

import numpy as np
import torch

import biasfit
from biasfit.model import TUTORIAL_WEIGHTS


def available(name) -> str:
    """Why peer `name` cannot run here, or None."""
    need = {"numba-prange": "numba", "jax-vmap": "jax"}.get(name)
    if need and importlib.util.find_spec(need) is None:
        return f"{need} not installed (pip install '.[bench]')"
    return None


@functools.cache
def _numba_fit_all():
    from numba import njit, prange

    @njit(nogil=True)
    def fit_one(x, y, w, b0, step, tol, epochs, g, k):
        zero = w[0] - w[0]  # a 0 of the data's dtype
        h = np.empty_like(x)
        for i in range(x.size):
            h[i] = max(x[i] * w[0] + w[1], zero) * w[2] + max(x[i] * w[3] + w[4], zero) * w[5]
        b = b0
        for e in range(epochs):
            loss = 0.0
            grad = 0.0
            for i in range(h.size):
                z = h[i] + b
                r = (z if z > zero else zero) - y[i]
                loss += np.float64(r) * np.float64(r)
                grad += r if z > zero else zero
            if loss < tol:
                return e, b
            g[k] = 2.0 * grad  # rounded to the data's dtype, as biasfit's step
            b = b - step[0] * g[k]
        return epochs, b

    @njit(parallel=True, nogil=True)
    def fit_all(X, Y, w, B0, step, tol, epochs, out_e, out_b):
        for k in prange(X.shape[0]):
            e, b = fit_one(X[k], Y[k], w, B0[k], step, tol, epochs, out_b, k)
            out_e[k] = e
            out_b[k] = b

    return fit_all


def numba_prange(X, Y, B0, lr, epochs, tol):
    fit_all = _numba_fit_all()
    x, y, b0 = X.numpy(), Y.numpy(), B0.numpy()
    w = np.array(TUTORIAL_WEIGHTS, dtype=x.dtype)
    step = np.array([lr], dtype=x.dtype)
    out_e = np.empty(len(x), np.int64)
    out_b = np.empty(len(x), x.dtype)
    fit_all(x, y, w, b0, step, tol, epochs, out_e, out_b)
    return out_e, out_b


@functools.cache
def _jax_vmapped(epochs):
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)

    def fit(x, y, w, b0, lr, tol):
        h = jnp.maximum(x * w[0] + w[1], 0) * w[2] + jnp.maximum(x * w[3] + w[4], 0) * w[5]

        def cond(state):
            e, _, done = state
            return (e < epochs) & ~done

        def body(state):
            e, b, _ = state
            z = h + b
            r = jnp.maximum(z, 0) - y
            rd = r.astype(jnp.float64)
            loss = jnp.sum(rd * rd)
            grad = 2 * jnp.sum(jnp.where(z > 0, rd, 0))
            done = loss < tol
            b = jnp.where(done, b, b - lr * grad.astype(b.dtype))
            return jnp.where(done, e, e + 1), b, done

        e, b, _ = jax.lax.while_loop(cond, body, (0, b0, False))
        return e, b

    return jax, jax.jit(jax.vmap(fit, in_axes=(0, 0, None, 0, None, None)))


class JaxData:
    """The data as a JAX user holds it, made once outside the timing."""

    def __init__(self, X, Y, B0):
        import jax.numpy as jnp
        self.x, self.y, self.b0 = (jnp.asarray(t.numpy()) for t in (X, Y, B0))
        self.w = jnp.asarray(np.array(TUTORIAL_WEIGHTS, dtype=X.numpy().dtype))


def jax_vmap(data, lr, epochs, tol):
    _, fit = _jax_vmapped(epochs)
    dtype = np.asarray(data.b0).dtype.type
    e, b = fit(data.x, data.y, data.w, data.b0, dtype(lr), tol)
    return np.asarray(e), np.asarray(b)


def _epoch(h, y, b):
    z = h + b
    r = torch.relu(z) - y
    rd = r.double()
    return (rd * rd).sum(), 2 * torch.where(z > 0, rd, 0.0).sum()


_vmapped_epoch = torch.func.vmap(_epoch)


def torch_vmap(X, Y, B0, lr, epochs, tol):
    w = torch.tensor(TUTORIAL_WEIGHTS, dtype=X.dtype)
    H = torch.relu(X * w[0] + w[1]) * w[2] + torch.relu(X * w[3] + w[4]) * w[5]
    b = B0.clone()
    running = torch.ones(len(X), dtype=torch.bool)
    run = torch.zeros(len(X), dtype=torch.int64)
    lr_t = torch.tensor(lr, dtype=X.dtype)
    for _ in range(epochs):
        loss, grad = _vmapped_epoch(H, Y, b)
        running &= ~(loss < tol)
        if not running.any():
            break
        b = torch.where(running, b - lr_t * grad.to(X.dtype), b)
        run += running
    return run.numpy(), b.numpy()


def fit_fused_loop(X, Y, B0, lr, epochs, tol):
    e = np.empty(len(X), np.int64)
    b = np.empty(len(X), X.numpy().dtype)
    for k in range(len(X)):
        r = biasfit.fit_fused(X[k], Y[k], bias=float(B0[k]), lr=lr, epochs=epochs, tol=tol)
        e[k], b[k] = r.epochs_run, r.final_bias
    return e, b
