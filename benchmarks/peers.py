"""The strongest fits a performance-minded user would write instead of biasfit.

Each peer trains final_bias with the tutorial's loop (SGD on the summed
squared error, stop once the loss is below tol) and returns
(epochs_run, final_bias, losses) like biasfit.reference, so one check holds
every peer to the reference before its time counts. run() is the whole fit:
the hidden layer is computed once per fit inside it, as biasfit's trainer
does, and every call starts again from the starting bias.

    eager analytic    PyTorch without autograd: hidden once, d loss / d bias
                      by hand, out= buffers, one small tensor op after another
    compile epoch     torch.compile of that epoch function, a Python epoch loop
    compile loop      torch.compile of LOOP_CHUNK epochs unrolled in one graph
    numba epoch ...   a Numba @njit epoch (loss and gradient sums in float64),
                      a Python epoch loop; parallel (prange reduction) or
                      serial, fastmath on or off
    numba fit ...     the whole fit in one Numba @njit call, the same variants
    jax fit           jax.jit of the whole fit, epochs in lax.while_loop

Peers needing numba or jax (`pip install .[bench]`) report why they cannot
run through `unavailable()`. Their JIT compiles happen on the first call,
which the benchmark times apart from its rounds.
"""
import functools
import importlib.util

import numpy as np
import torch

from biasfit.model import TUTORIAL_WEIGHTS

LOOP_CHUNK = 10  # epochs per call of the compiled loop: 10, 100 and 1000 are multiples


def hidden(x, w):
    """The two hidden units' weighted sum, in x's dtype, the tutorial's order."""
    w00, b00, w01, w10, b10, w11 = w
    return torch.relu(x * w00 + b00) * w01 + torch.relu(x * w10 + b10) * w11


class _Peer:
    needs = ()  # modules the peer imports

    def __init__(self, x, y, lr, epochs, tol, bias=0.0):
        self.x, self.y, self.lr, self.epochs, self.tol, self.bias = x, y, lr, epochs, tol, bias
        self.w = torch.tensor(TUTORIAL_WEIGHTS, dtype=x.dtype)

    @classmethod
    def unavailable(cls):
        """Why this peer cannot run here, or None."""
        missing = [m for m in cls.needs if importlib.util.find_spec(m) is None]
        if missing:
            return f"{', '.join(missing)} not installed (pip install '.[bench]')"
        return None


def _finish(losses, biases, epochs, tol, final):
    """(epochs_run, final_bias, losses) from every epoch's loss and the bias it
    was evaluated at, stopping at the first loss below tol."""
    for e, loss in enumerate(losses):
        if loss < tol:
            return e, float(biases[e]), list(losses[:e + 1])
    return epochs, float(final), list(losses)


# -- PyTorch --------------------------------------------------------------------

class EagerAnalytic(_Peer):
    """Eager PyTorch with the gradient by hand: 2 sum(r where hidden + b > 0).

    Sums by torch.sum, not torch.dot: a float32 dot (BLAS) accumulates in
    float32 and at 1e6 points drifts 2e-4 from the reference's loss."""

    def run(self):
        x, y = self.x, self.y
        h = hidden(x, self.w.tolist())
        z, r, on, t = (torch.empty_like(h) for _ in range(4))
        b = torch.tensor(self.bias, dtype=x.dtype)
        losses = torch.empty(self.epochs, dtype=torch.float64)
        check = self.tol > 0  # tol 0 never stops: no host round trip an epoch
        for epoch in range(self.epochs):
            torch.add(h, b, out=z)
            torch.gt(z, 0, out=on)                 # relu's derivative, 0 at 0
            torch.clamp(z, min=0, out=r)
            r.sub_(y)                              # relu(h + b) - y
            loss = torch.mul(r, r, out=t).sum()
            losses[epoch] = loss
            if check and loss.item() < self.tol:
                return epoch, b.item(), losses[:epoch + 1].tolist()
            b.sub_(2 * torch.mul(r, on, out=t).sum(), alpha=self.lr)
        return self.epochs, b.item(), losses.tolist()


def _epoch(h, y, b, lr):
    z = h + b
    r = torch.relu(z) - y
    loss = (r * r).sum()
    grad = 2 * torch.where(z > 0, r, 0).sum()
    return loss, b - lr * grad


def _epochs(h, y, b, lr):
    losses, biases = [], []
    for _ in range(LOOP_CHUNK):
        biases.append(b)
        loss, b = _epoch(h, y, b, lr)
        losses.append(loss)
    return torch.stack(losses), torch.stack(biases), b


@functools.cache
def _compiled(fn):
    # dynamic: one compile per dtype serves every N (and every lr, a tensor).
    return torch.compile(fn, dynamic=True)


class CompileEpoch(_Peer):
    """torch.compile of the epoch function; the epochs loop in Python."""

    def run(self):
        step = _compiled(_epoch)
        h = hidden(self.x, self.w.tolist())
        b = torch.tensor(self.bias, dtype=self.x.dtype)
        lr = torch.tensor(self.lr, dtype=self.x.dtype)
        losses = torch.empty(self.epochs, dtype=torch.float64)
        for epoch in range(self.epochs):
            loss, new_b = step(h, self.y, b, lr)
            losses[epoch] = loss
            if self.tol > 0 and loss.item() < self.tol:
                return epoch, b.item(), losses[:epoch + 1].tolist()
            b = new_b
        return self.epochs, b.item(), losses.tolist()


class CompileLoop(_Peer):
    """torch.compile of LOOP_CHUNK epochs unrolled into one graph."""

    def run(self):
        chunk = _compiled(_epochs)
        h = hidden(self.x, self.w.tolist())
        b = torch.tensor(self.bias, dtype=self.x.dtype)
        lr = torch.tensor(self.lr, dtype=self.x.dtype)
        losses, biases = [], []
        for _ in range(0, self.epochs, LOOP_CHUNK):
            ls, bs, b = chunk(h, self.y, b, lr)
            losses.append(ls)
            biases.append(bs)
            if self.tol > 0 and bool((ls < self.tol).any()):
                break
        # A last chunk past `epochs` ran epochs the fit would not: the bias
        # they reached is discarded with them.
        losses = torch.cat(losses)[:self.epochs].tolist()
        biases = torch.cat(biases + [b[None]])[:self.epochs + 1].tolist()
        return _finish(losses, biases, self.epochs, self.tol, biases[-1])


# -- Numba ----------------------------------------------------------------------

@functools.cache
def _numba_kernels(parallel, fastmath):
    """(epoch, fit) compiled with these options. Points are evaluated in the
    data's dtype, the sums run in float64."""
    from numba import njit, prange

    opts = dict(parallel=parallel, fastmath=fastmath, nogil=True)

    @njit(**opts)
    def hidden_of(x, w, h):
        zero = w[0] - w[0]  # a 0 of the data's dtype: a literal 0 would widen to float64
        for i in prange(x.size):
            top = max(x[i] * w[0] + w[1], zero) * w[2]
            h[i] = top + max(x[i] * w[3] + w[4], zero) * w[5]

    @njit(**opts)
    def epoch(h, y, b):  # b: a 1-element array of the data's dtype
        zero = b[0] - b[0]
        loss = 0.0
        grad = 0.0
        for i in prange(h.size):
            z = h[i] + b[0]
            r = (z if z > zero else zero) - y[i]
            loss += r * r
            grad += r if z > zero else zero
        return loss, 2.0 * grad

    @njit(**opts)
    def fit(x, y, w, b0, lr, tol, losses, biases):
        # hidden_of's and epoch's loops written out: a parallel function's
        # prange loops run in parallel only in its own body.
        zero = w[0] - w[0]
        h = np.empty_like(x)
        for i in prange(x.size):
            top = max(x[i] * w[0] + w[1], zero) * w[2]
            h[i] = top + max(x[i] * w[3] + w[4], zero) * w[5]
        b = np.empty(1, x.dtype)  # the bias, the step and lr round to the data's dtype
        b[0] = b0
        step = np.empty(2, x.dtype)
        step[0] = lr
        for e in range(losses.size):
            bias = b[0]
            loss = 0.0
            grad = 0.0
            for i in prange(h.size):
                z = h[i] + bias
                r = (z if z > zero else zero) - y[i]
                loss += r * r
                grad += r if z > zero else zero
            losses[e] = loss
            biases[e] = bias
            if loss < tol:
                return e
            step[1] = 2.0 * grad
            b[0] = bias - step[0] * step[1]
        biases[losses.size] = b[0]
        return losses.size

    return hidden_of, epoch, fit


class _Numba(_Peer):
    needs = ("numba",)
    parallel = fastmath = False

    def arrays(self):
        return self.x.numpy(), self.y.numpy(), self.w.numpy()


class NumbaEpoch(_Numba):
    """A Numba epoch function; the epochs loop and SGD step in Python."""

    def run(self):
        hidden_of, epoch, _ = _numba_kernels(self.parallel, self.fastmath)
        x, y, w = self.arrays()
        h = np.empty_like(x)
        hidden_of(x, w, h)
        dtype = x.dtype.type
        b = np.array([self.bias], dtype=x.dtype)
        lr = dtype(self.lr)
        losses = []
        for e in range(self.epochs):
            loss, grad = epoch(h, y, b)
            losses.append(loss)
            if loss < self.tol:
                return e, float(b[0]), losses
            b[0] = b[0] - lr * dtype(grad)
        return self.epochs, float(b[0]), losses


class NumbaFit(_Numba):
    """The whole fit in one Numba call."""

    def run(self):
        fit = _numba_kernels(self.parallel, self.fastmath)[2]
        x, y, w = self.arrays()
        losses = np.empty(self.epochs)
        biases = np.empty(self.epochs + 1)
        e = fit(x, y, w, self.bias, self.lr, self.tol, losses, biases)
        if e < self.epochs:
            return e, float(biases[e]), losses[:e + 1].tolist()
        return e, float(biases[e]), losses.tolist()


def _numba_variant(base, parallel, fastmath):
    name = f"{base.__name__}{'Parallel' if parallel else 'Serial'}{'Fast' if fastmath else ''}"
    return type(name, (base,), {"parallel": parallel, "fastmath": fastmath,
                                "__doc__": base.__doc__})


# -- JAX ------------------------------------------------------------------------

@functools.cache
def _jax_fit():
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)  # float64 data, float64 loss history

    @functools.partial(jax.jit, static_argnames="epochs")
    def fit(x, y, w, b0, lr, tol, epochs):
        h = (jnp.maximum(x * w[0] + w[1], 0) * w[2]
             + jnp.maximum(x * w[3] + w[4], 0) * w[5])

        def cond(state):
            e, _, _, done = state
            return (e < epochs) & ~done

        def body(state):
            e, b, losses, _ = state
            z = h + b
            r = jnp.maximum(z, 0) - y
            loss = jnp.sum(r * r, dtype=jnp.float64)
            grad = 2 * jnp.sum(jnp.where(z > 0, r, 0), dtype=jnp.float64)
            done = loss < tol
            b = jnp.where(done, b, b - lr * grad.astype(b.dtype))
            return e + 1, b, losses.at[e].set(loss), done

        start = (0, b0, jnp.zeros(epochs, jnp.float64), False)
        e, b, losses, done = jax.lax.while_loop(cond, body, start)
        return e, b, losses, done

    return jax, fit


class JaxFit(_Peer):
    """jax.jit of the whole fit, the epochs in lax.while_loop."""
    needs = ("jax",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The data as a JAX user holds it, made once outside the timing.
        jax, self.fit = _jax_fit()
        self.arrays = [jax.numpy.asarray(t.numpy()) for t in (self.x, self.y, self.w)]

    def run(self):
        dtype = self.x.numpy().dtype
        e, b, losses, done = self.fit(*self.arrays, dtype.type(self.bias), dtype.type(self.lr),
                                      self.tol, epochs=self.epochs)
        e = int(e)
        losses = np.asarray(losses)[:e].tolist()
        return (e - 1 if bool(done) else e), float(b), losses


PEERS = {
    "eager-analytic": EagerAnalytic,
    "compile-epoch": CompileEpoch,
    "compile-loop": CompileLoop,
    **{f"numba-{kind}-{'par' if par else 'ser'}{'-fm' if fm else ''}":
       _numba_variant(base, par, fm)
       for kind, base in (("epoch", NumbaEpoch), ("fit", NumbaFit))
       for par in (True, False) for fm in (True, False)},
    "jax-fit": JaxFit,
}

PEER_NAMES = {
    "eager-analytic": "eager PyTorch, analytic gradient",
    "compile-epoch": "torch.compile epoch",
    "compile-loop": f"torch.compile loop ({LOOP_CHUNK} epochs a call)",
    "jax-fit": "JAX jit fit (while_loop)",
    **{k: "Numba {} fit{}{}".format(
        "epoch" if "epoch" in k else "whole", ", parallel" if "-par" in k else ", serial",
        ", fastmath" if k.endswith("-fm") else "").replace("epoch fit", "epoch fn")
       for k in PEERS if k.startswith("numba")},
}
