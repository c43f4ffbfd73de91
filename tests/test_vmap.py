"""torch.func.vmap of the ops (biasfit/vmap_rules.py over the *_batched ops).

Each case is checked twice: against a Python loop over the unbatched op, bit
for bit (the batched op sums each fit as the unbatched op does), and against
plain PyTorch's vmap of the reference network within tests/tolerances.py.
"""
import copy
import os
import subprocess
import sys

import pytest
import torch
from torch.func import functional_call, grad, stack_module_state, vmap
from torch.utils._python_dispatch import TorchDispatchMode

import biasfit
from biasfit.model import WEIGHT_NAMES
from biasfit.reference import TutorialNN
from helpers import random_problem
from tolerances import GRAD_SUMS, REFERENCE, TRANSFORMS

ops = torch.ops.biasfit
DTYPES = [torch.float32, torch.float64]
K = 5
# Three points (one small chunk) and three chunks of cpu/reduce.h's 16384.
SIZES = [3, 40_000]


def same(a, b):
    """Bit for bit, NaN equal to NaN."""
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(u, v) for u, v in zip(a, b))
    return (a.shape == b.shape and a.dtype == b.dtype
            and bool(torch.all((a == b) | (a.isnan() & b.isnan())))
            and torch.equal(a.signbit() & ~a.isnan(), b.signbit() & ~b.isnan()))


def loop(f, in_dims, *args):
    """f over the batch, one slice at a time: what vmap must equal."""
    size = next(a.shape[d] for a, d in zip(args, in_dims) if d is not None)
    outs = [f(*(a if d is None else a.select(d, k) for a, d in zip(args, in_dims)))
            for k in range(size)]
    if isinstance(outs[0], tuple):
        return tuple(torch.stack(o) for o in zip(*outs))
    return torch.stack(outs)


def plain_predict(x, w, b):
    """The reference network (biasfit/reference.py) with w and b as its
    parameters: plain PyTorch, which vmap maps op by op."""
    model = TutorialNN(dtype=x.dtype)
    params = dict(zip(WEIGHT_NAMES, w.unbind())) | {"final_bias": b}
    return functional_call(model, params, (x,))


def plain_loss(x, y, w, b):
    return ((plain_predict(x, w, b) - y) ** 2).sum()


def batch(n, dtype, seed=0):
    """A problem and K variants of each argument: data sets, labels,
    weights near the tutorial's, biases across the output relu's kink."""
    x, y, w, b = random_problem(n, dtype, "cpu", seed)
    g = torch.Generator().manual_seed(seed + 1)
    xs = x + 0.1 * torch.randn(K, n, generator=g, dtype=torch.float64).to(dtype)
    ys = y + torch.randn(K, n, generator=g, dtype=torch.float64).to(dtype)
    ws = w + 0.2 * torch.randn(K, 6, generator=g, dtype=torch.float64).to(dtype)
    bs = torch.linspace(-3, 1, K, dtype=torch.float64).to(dtype)
    return (x, y, w, b), (xs, ys, ws, bs)


# Which of (inputs, labels, weights, bias) are mapped: biases, weights, data
# sets, labels alone, and combinations.
MAPS = {"bias": (None, None, None, 0), "weights": (None, None, 0, None),
        "data": (0, 0, None, None), "labels": (None, 0, None, None),
        "data+bias": (0, 0, None, 0), "weights+bias": (None, None, 0, 0),
        "all": (0, 0, 0, 0)}


def mapped_args(one, many, in_dims):
    return [m if d is not None else o for o, m, d in zip(one, many, in_dims)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("case", list(MAPS))
def test_fused_loss_and_predict(dtype, n, case):
    one, many = batch(n, dtype)
    in_dims = MAPS[case]
    args = mapped_args(one, many, in_dims)
    for f in (ops.fused_loss, lambda *a: biasfit.fused_loss(*a)):
        got = vmap(f, in_dims)(*args)
        assert same(got, loop(f, in_dims, *args)), case
    expected = vmap(plain_loss, in_dims)(*args)
    loss = vmap(biasfit.fused_loss, in_dims)(*args)
    assert torch.allclose(loss, expected, rtol=REFERENCE[dtype], atol=0)
    # predict maps over (inputs, weights, bias).
    p_dims = (in_dims[0], in_dims[2], in_dims[3])
    p_args = (args[0], args[2], args[3])
    if all(d is None for d in p_dims):
        return
    for f in (ops.predict, biasfit.predict):
        assert same(vmap(f, p_dims)(*p_args), loop(f, p_dims, *p_args)), case
    assert torch.allclose(vmap(biasfit.predict, p_dims)(*p_args),
                          vmap(plain_predict, p_dims)(*p_args),
                          rtol=REFERENCE[dtype], atol=REFERENCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_op_equals_the_loop(dtype):
    (x, y, w, b), (xs, ys, ws, bs) = batch(40_000, dtype)
    gs = ys.flip(0)  # a batch of grad_out
    cases = [
        (ops.fused_loss_sums, (0, None, None, 0), (xs, y, w, bs)),
        (ops.fused_loss_grads_sums, (None, 0, 0, None), (x, ys, ws, b)),
        (ops.predict_bias_grad, (0, None, 0, None), (gs, x, ws, b)),
        (ops.predict_bias_grad, (None, 0, None, 0), (y, xs, w, bs)),
    ]
    for needs in range(16):
        cases.append((lambda *a, needs=needs: ops.fused_loss_grads(*a, needs),
                      (0, None, 0, 0), (xs, y, ws, bs)))
        cases.append((lambda *a, needs=needs: ops.fused_loss_grads(*a, needs),
                      (None, None, None, 0), (x, y, w, bs)))
        cases.append((lambda *a, needs=needs: ops.predict_grads(*a, needs),
                      (0, None, None, 0), (gs, x, w, bs)))
        cases.append((lambda *a, needs=needs: ops.predict_grads(*a, needs),
                      (None, 0, 0, None), (y, xs, ws, b)))
    for f, in_dims, args in cases:
        assert same(vmap(f, in_dims)(*args), loop(f, in_dims, *args)), in_dims


@pytest.mark.parametrize("dtype", DTYPES)
def test_any_dim_and_any_shape(dtype):
    """A mapped dim anywhere, and data of another shape than 1-D: the
    unbatched op's shape comes back."""
    (x, y, w, b), (xs, ys, ws, bs) = batch(600, dtype)
    xt, yt = xs.T.reshape(20, 30, K), ys.T.reshape(20, 30, K)  # mapped last
    wt = ws.T  # [6, K]: mapped dim 1
    f = ops.fused_loss_grads
    got = vmap(lambda *a: f(*a, 15), (2, 2, 1, 0))(xt, yt, wt, bs)
    expected = loop(lambda *a: f(*a, 15), (2, 2, 1, 0), xt, yt, wt, bs)
    assert same(got, expected)
    assert got[3].shape == (K, 20, 30)
    got = vmap(ops.predict, (2, 1, None), out_dims=1)(xt, wt, b)
    assert same(got, loop(ops.predict, (2, 1, None), xt, wt, b).movedim(0, 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nested_vmap(dtype):
    (x, y, w, b), (xs, ys, ws, bs) = batch(20_000, dtype)
    # Biases inside, weights outside; data sets outside, biases inside.
    inner = vmap(ops.fused_loss, (None, None, None, 0))
    got = vmap(inner, (None, None, 0, None))(x, y, ws, bs)
    expected = torch.stack([loop(ops.fused_loss, (None, None, None, 0), x, y, wk, bs)[0]
                            for wk in ws])
    assert same(got[0], expected)
    got = vmap(vmap(biasfit.fused_loss, (None, None, None, 0)), (0, 0, None, None))(
        xs, ys, w, bs)
    expected = torch.stack([torch.stack([biasfit.fused_loss(xk, yk, w, bk) for bk in bs])
                            for xk, yk in zip(xs, ys)])
    assert same(got, expected)
    # Three deep, predict.
    f = vmap(vmap(vmap(ops.predict, (None, None, 0)), (None, 0, None)), (0, None, None))
    got = f(xs[:2, :50], ws[:3], bs)
    assert got.shape == (2, 3, K, 50)
    assert same(got[1, 2, 4], ops.predict(xs[1, :50], ws[2], bs[4]))
    assert torch.allclose(got, vmap(vmap(vmap(plain_predict, (None, None, 0)),
                                         (None, 0, None)), (0, None, None))(
        xs[:2, :50], ws[:3], bs), rtol=REFERENCE[dtype], atol=REFERENCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_under_vmap(dtype):
    """vmap of grad: a batch of bias gradients, per-sample weight gradients
    (one point per sample), model ensembling over weights."""
    (x, y, w, b), (xs, ys, ws, bs) = batch(2_000, dtype)
    dloss_db = grad(biasfit.fused_loss, argnums=3)
    got = vmap(dloss_db, (None, None, None, 0))(x, y, w, bs)
    assert same(got, loop(dloss_db, (None, None, None, 0), x, y, w, bs))
    assert torch.allclose(got, vmap(grad(plain_loss, argnums=3), (None, None, None, 0))(
        x, y, w, bs), rtol=GRAD_SUMS[dtype], atol=0)
    dloss_dw = grad(biasfit.fused_loss, argnums=2)
    per_sample = vmap(dloss_dw, (0, 0, None, None))(x, y, w, b)
    assert per_sample.shape == (2_000, 6)
    assert same(per_sample, loop(dloss_dw, (0, 0, None, None), x, y, w, b))
    plain = vmap(grad(plain_loss, argnums=2), (0, 0, None, None))(x, y, w, b)
    assert torch.allclose(per_sample, plain, rtol=GRAD_SUMS[dtype], atol=1e-12)
    ensemble = vmap(dloss_dw, (None, None, 0, None))(x, y, ws, b)
    assert same(ensemble, loop(dloss_dw, (None, None, 0, None), x, y, ws, b))


def test_threads_change_no_bit():
    (x, y, w, b), (xs, ys, ws, bs) = batch(70_000, torch.float32)
    bs = torch.linspace(-3, 1, 300)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append((vmap(ops.fused_loss, (None, None, None, 0))(x, y, w, bs),
                            vmap(ops.fused_loss, (0, 0, 0, None))(xs, ys, ws, b)))
    finally:
        torch.set_num_threads(before)
    assert same(results[0], results[1]) and same(results[0], results[2])


class _Shapes(TorchDispatchMode):
    """Records the shape of every tensor an op makes below vmap."""

    def __init__(self):
        super().__init__()
        self.made = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple) else (out,):
            if isinstance(t, torch.Tensor):
                self.made.append((str(func), tuple(t.shape)))
        return out


def test_a_batch_of_biases_reads_shared_data_once():
    """No [K, N] tensor for a batch of biases' losses: the data goes in as
    one shared row."""
    x, y, w, _ = random_problem(10_000, torch.float32, "cpu")
    bs = torch.linspace(-3, 1, 100)
    with _Shapes() as mode:
        vmap(biasfit.fused_loss, (None, None, None, 0))(x, y, w, bs)
    assert any("fused_loss_batched" in f for f, _ in mode.made), mode.made
    assert all(10_000 * 100 > torch.Size(s).numel() for _, s in mode.made), mode.made


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty(dtype):
    """A batch of 0 data sets, and 0 points: plain PyTorch's shapes and sums."""
    (x, y, w, b), (xs, ys, ws, bs) = batch(10, dtype)
    for f in (ops.fused_loss, biasfit.fused_loss):
        got = vmap(f, (0, 0, None, None))(xs[:0], ys[:0], w, b)
        expected = vmap(plain_loss, (0, 0, None, None))(xs[:0], ys[:0], w, b)
        assert (got[0] if f is ops.fused_loss else got).shape == expected.shape == (0,)
    assert vmap(ops.predict, (0, None, None))(xs[:0], w, b).shape == (0, 10)
    # A batch of 0 biases: plain PyTorch's vmap raises (IndexError in
    # select, torch 2.13); the ops give the empty batch's shapes.
    with pytest.raises(IndexError):
        vmap(plain_loss, (None, None, None, 0))(x, y, w, bs[:0])
    assert vmap(biasfit.fused_loss, (None, None, None, 0))(x, y, w, bs[:0]).shape == (0,)
    assert vmap(ops.predict, (None, None, 0))(x, w, bs[:0]).shape == (0, 10)
    # No points: the loss and its gradient are sums over nothing.
    loss, grad_b = vmap(ops.fused_loss, (None, None, None, 0))(x[:0], y[:0], w, bs)
    assert same(loss, vmap(plain_loss, (None, None, None, 0))(x[:0], y[:0], w, bs))
    assert same(grad_b, torch.zeros(K, dtype=dtype))
    assert vmap(ops.predict, (None, 0, None))(x[:0], ws, b).shape == (K, 0)


def test_bad_input_names_the_argument():
    (x, y, w, b), (xs, ys, ws, bs) = batch(10, torch.float64)
    with pytest.raises(ValueError, match="labels has shape \\[9\\] but inputs"):
        vmap(ops.fused_loss, (None, None, None, 0))(x, y[:9], w, bs)
    with pytest.raises(ValueError, match="weights must hold 6 values"):
        vmap(ops.predict, (None, 0, None))(x, ws[:, :5], b)
    with pytest.raises(ValueError, match="bias must hold one value"):
        vmap(ops.predict, (None, None, 0))(x, w, torch.zeros(K, 2, dtype=x.dtype))
    with pytest.raises(ValueError, match="labels has dtype"):
        vmap(ops.fused_loss, (0, 0, None, None))(xs, ys.float(), w, b)
    # The batched ops themselves: batch sizes and dims.
    with pytest.raises(ValueError, match="labels has batch size 3 but inputs has 5"):
        ops.fused_loss_batched(xs, ys[:3], w[None], b[None])
    with pytest.raises(ValueError, match="bias has batch size 2 but inputs has 5"):
        ops.predict_batched(xs, w[None], bs[:2])
    with pytest.raises(ValueError, match="inputs must be 2-D"):
        ops.fused_loss_batched(x, y, w[None], b[None])
    with pytest.raises(ValueError, match="weights must be 2-D \\[batch, 6\\]"):
        ops.predict_batched(xs, w, b[None])
    with pytest.raises(ValueError, match="grad_out must be 2-D \\[batch, 10\\]"):
        ops.predict_bias_grad_batched(ys[:, :9], xs, w[None], b[None])


def test_opcheck():
    (x, y, w, b), (xs, ys, ws, bs) = batch(100, torch.float64)
    x1, y1, w1, b1 = x[None], y[None], w[None], b[None]
    for args in ((xs, y1, w1, bs), (x1, ys, ws, b1)):
        torch.library.opcheck(ops.fused_loss_batched.default, args)
        torch.library.opcheck(ops.fused_loss_sums_batched.default, args)
        torch.library.opcheck(ops.fused_loss_grads_sums_batched.default, args)
        for needs in (2, 15):
            torch.library.opcheck(ops.fused_loss_grads_batched.default, (*args, needs))
    torch.library.opcheck(ops.predict_batched.default, (x1, ws, bs))
    torch.library.opcheck(ops.predict_bias_grad_batched.default, (ys, x1, w1, bs))
    for needs in (2, 11):
        torch.library.opcheck(ops.predict_grads_batched.default, (y1, xs, ws, b1, needs))


def test_torch_compile_of_vmap_is_eager():
    (x, y, w, b), (xs, ys, ws, bs) = batch(1000, torch.float32)
    for f, in_dims, args in ((ops.fused_loss, (None, None, None, 0), (x, y, w, bs)),
                             (biasfit.fused_loss, (0, 0, 0, None), (xs, ys, ws, b)),
                             (biasfit.predict, (None, 0, 0), (x, ws, bs))):
        eager = vmap(f, in_dims)
        assert same(torch.compile(eager, fullgraph=True)(*args), eager(*args))


@pytest.mark.parametrize("dtype", DTYPES)
def test_autograd_through_a_vmap_of_the_ops(dtype):
    """Plain autograd outside a vmap of the ops themselves: each argument's
    gradient is the loop's, bit for bit where each fit has its own row,
    summed over the fits where the row is shared."""
    (x, y, w, b), (xs, ys, ws, bs) = batch(20_000, dtype)
    cases = [(lambda *a: ops.fused_loss(*a)[0], (0, None, 0, 0), (xs, y, ws, bs)),
             (lambda *a: ops.fused_loss_grads(*a, 2)[0], (None, 0, None, 0), (x, ys, w, bs)),
             (lambda *a: ops.predict(*a).sum(), (0, 0, None), (xs, ws, b))]
    for f, in_dims, args in cases:
        leaves = [a.clone().requires_grad_() for a in args]
        got = torch.autograd.grad(vmap(f, in_dims)(*leaves).sum(), leaves)
        looped = torch.autograd.grad(loop(f, in_dims, *leaves).sum(), leaves)
        for d, g, e in zip(in_dims, got, looped):
            if d is not None:
                assert same(g, e), in_dims
            else:
                # K terms each, added in another order: bounded by their size.
                scale = K * e.abs().max()
                assert torch.allclose(g, e, rtol=0, atol=GRAD_SUMS[dtype] * scale), in_dims
                assert g.abs().sum() > 0


def test_opcheck_with_gradients():
    (x, y, w, b), (xs, ys, ws, bs) = batch(100, torch.float64)
    req = lambda t: t.clone().requires_grad_()
    args = (req(xs), req(y[None]), req(w[None]), req(bs))
    torch.library.opcheck(ops.fused_loss_batched.default, args)
    torch.library.opcheck(ops.fused_loss_grads_batched.default, (*args, 15))
    torch.library.opcheck(ops.predict_batched.default, (req(x[None]), req(ws), req(bs)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_model_ensembling_matches_plain(dtype):
    """stack_module_state over BasicNNs and over the reference module: the
    same outputs and parameter gradients."""
    x, y, _, _ = random_problem(500, dtype, "cpu")
    ensembles = []
    for make in (lambda b: biasfit.BasicNN(dtype=dtype), lambda b: TutorialNN(b, dtype=dtype)):
        models = [make(-2.0 + k) for k in range(K)]
        for k, m in enumerate(models):
            with torch.no_grad():
                m.final_bias.fill_(-2.0 + k)
        params, buffers = stack_module_state(models)
        base = copy.deepcopy(models[0]).to("meta")
        loss = lambda p, b: ((functional_call(base, (p, b), (x,)) - y) ** 2).sum()
        out = vmap(lambda p, b: functional_call(base, (p, b), (x,)))(params, buffers)
        ensembles.append((out, vmap(grad(loss))(params, buffers)))
    (out, grads), (plain_out, plain_grads) = ensembles
    tol = GRAD_SUMS[dtype]
    assert torch.allclose(out, plain_out, rtol=REFERENCE[dtype], atol=REFERENCE[dtype])
    for name in plain_grads:
        assert torch.allclose(grads[name], plain_grads[name], rtol=tol, atol=tol), name


def _batched_equals_loop(n):
    """In this process's instruction set: whether every batched sum equals
    the loop over the unbatched op (printed by a child below)."""
    ok = True
    for dtype in DTYPES:
        (x, y, w, b), (xs, ys, ws, bs) = batch(n, dtype)
        for in_dims, args in (((None, None, None, 0), (x, y, w, bs)),
                              ((0, 0, 0, 0), (xs, ys, ws, bs))):
            for f in (ops.fused_loss, lambda *a: ops.fused_loss_grads(*a, 15)):
                ok &= same(vmap(f, in_dims)(*args), loop(f, in_dims, *args))
    return ok


@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_every_instruction_set_gives_the_loops_bits(isa):
    """cpu/isa.h's lower sets (BIASFIT_CPU_KERNEL) in a child: the shared
    hidden buffer's path and the others equal the unbatched op there too."""
    code = "import test_vmap as t; print(t._batched_equals_loop(3 * 16384 + 21))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, BIASFIT_CPU_KERNEL=isa), timeout=300,
                          cwd=os.path.dirname(os.path.abspath(__file__)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True"]


def test_second_derivatives_through_a_vmap_of_the_ops():
    """create_graph=True through a vmap of the ops themselves: the second
    derivatives are plain PyTorch's (never a silent 0)."""
    (x, y, w, b), (xs, ys, ws, bs) = batch(300, torch.float64)
    for f, plain, in_dims, args in (
            (lambda *a: ops.fused_loss(*a)[0], plain_loss, (None, None, 0, 0), (x, y, ws, bs)),
            (lambda *a: ops.predict(*a).pow(2).sum(), lambda *a: plain_predict(*a).pow(2).sum(),
             (0, 0, None), (xs, ws, b))):
        results = []
        for fn in (f, plain):
            leaves = [a.clone().requires_grad_() for a in args]
            first = torch.autograd.grad(vmap(fn, in_dims)(*leaves).sum(), leaves,
                                        create_graph=True)
            second = torch.autograd.grad(sum(g.pow(2).sum() for g in first), leaves)
            results.append(second)
        for got, expected in zip(*results):
            tol = TRANSFORMS[torch.float64]
            assert torch.allclose(got, expected, rtol=tol, atol=tol * expected.abs().max())
        assert any(g.abs().sum() > 0 for g in results[0])
