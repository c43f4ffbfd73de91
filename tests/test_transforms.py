"""The ops under PyTorch's transforms, against the same network in plain
eager PyTorch: autograd of any order, forward-mode AD, torch.func, compile,
autocast, inference mode, empty and non-finite data. A transform gives
plain PyTorch's answer or a clear error, never a silent zero."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import forward_ad
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vmap

import biasfit
from biasfit import reference
from helpers import random_problem
from tolerances import TRANSFORMS

DTYPES = [torch.float32, torch.float64]


def plain_predict(x, w, b):
    """The tutorial's forward, in plain torch ops (reference.TutorialNN's)."""
    w00, b00, w01, w10, b10, w11 = w.unbind()
    return F.relu(F.relu(x * w00 + b00) * w01 + F.relu(x * w10 + b10) * w11 + b)


def plain_loss(x, y, w, b):
    return ((plain_predict(x, w, b) - y) ** 2).sum()


def ours_loss(x, y, w, b):
    return biasfit.fused_loss(x, y, w, b)


def close(got, want, dtype):
    """Equal NaN patterns, and within TRANSFORMS of the largest value."""
    got, want = torch.as_tensor(got).double(), torch.as_tensor(want).double()
    assert got.shape == want.shape
    assert torch.equal(got.isnan(), want.isnan())
    scale = max(want.nan_to_num().abs().max().item(), 1.0)
    assert (got - want).nan_to_num().abs().max().item() <= TRANSFORMS[dtype] * scale, (got, want)


def problem(dtype, n=64, seed=0):
    return random_problem(n, dtype, "cpu", seed)


# -- second and higher derivatives --------------------------------------------------

def flat_hessian(fn, args):
    """The Hessian of fn over every argument at once, as one matrix."""
    sizes = [a.numel() for a in args]
    flat = torch.cat([a.reshape(-1) for a in args])

    def of_flat(v):
        parts = v.split(sizes)
        return fn(*(p.reshape(a.shape) for p, a in zip(parts, args)))
    return torch.autograd.functional.hessian(of_flat, flat)


@pytest.mark.parametrize("dtype", DTYPES)
def test_loss_hessian_over_every_input_equals_plain(dtype):
    x, y, w, b = problem(dtype, n=12)
    ours = flat_hessian(ours_loss, (x, y, w, b))
    plain = flat_hessian(plain_loss, (x, y, w, b))
    close(ours, plain, dtype)
    # The guard against a silent zero: plain's Hessian has nonzero entries
    # in every block (inputs, labels, weights, bias), and so must ours.
    nonzero = plain != 0
    assert nonzero.sum() > 50
    assert torch.equal(ours != 0, nonzero)


@pytest.mark.parametrize("dtype", DTYPES)
def test_predict_second_derivatives_equal_plain(dtype):
    x, _, w, b = problem(dtype, n=12)
    g_out = torch.linspace(-1, 2, len(x), dtype=dtype)
    ours = flat_hessian(lambda x, w, b: (biasfit.predict(x, w, b) * g_out).sum(), (x, w, b))
    plain = flat_hessian(lambda x, w, b: (plain_predict(x, w, b) * g_out).sum(), (x, w, b))
    close(ours, plain, dtype)
    assert torch.equal(ours != 0, plain != 0) and (plain != 0).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_issue_examples_second_derivative_of_the_bias(dtype):
    x, y = (t.to(dtype) for t in biasfit.tutorial_data())
    w = torch.tensor(biasfit.TUTORIAL_WEIGHTS, dtype=dtype)
    b = torch.tensor(-15.0, dtype=dtype, requires_grad=True)
    g, = torch.autograd.grad(((biasfit.predict(x, w, b) - y) ** 2).sum(), b, create_graph=True)
    assert torch.autograd.grad(g, b)[0].item() == 2.0
    f = lambda b: biasfit.fused_loss(x, y, w, b)  # noqa: E731
    assert grad(grad(f))(b.detach()).item() == 2.0
    assert torch.autograd.functional.hessian(f, b.detach()).item() == 2.0
    _, hv = torch.autograd.functional.hvp(f, b.detach(), torch.tensor(3.0, dtype=dtype))
    assert hv.item() == 6.0


def test_third_derivative_is_zero_like_plain():
    x, y, w, b = problem(torch.float64, n=12)
    b = b.clone().requires_grad_(True)
    for fn in (ours_loss, plain_loss):
        g, = torch.autograd.grad(fn(x, y, w, b), b, create_graph=True)
        gg, = torch.autograd.grad(g, b, create_graph=True)
        assert gg.item() > 0
        assert gg.requires_grad  # a third order is asked for, not refused
        ggg, = torch.autograd.grad(gg, b, allow_unused=True, materialize_grads=True)
        assert ggg.item() == 0.0


def test_first_derivatives_keep_the_native_bits_when_a_graph_is_built():
    x, y, w, b = (t.clone().requires_grad_(True) for t in problem(torch.float32, n=1000))
    plain_grads = torch.autograd.grad(ours_loss(x, y, w, b), (x, y, w, b))
    graph_grads = torch.autograd.grad(ours_loss(x, y, w, b), (x, y, w, b), create_graph=True)
    for p, g in zip(plain_grads, graph_grads):
        assert torch.equal(p, g) and g.requires_grad


@pytest.mark.parametrize("op", ["fused_loss", "fused_loss_grads", "predict"])
def test_gradgradcheck(op):
    x, y, w, b = (t.clone().requires_grad_(True) for t in problem(torch.float64, n=9))
    # Away from relu's kinks, where finite differences are meaningful.
    x = torch.tensor([-0.4, -0.2, 0.1, 0.3, 0.7, 0.9, 1.2, 1.4, 0.6], dtype=torch.float64,
                     requires_grad=True)
    b = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    if op == "fused_loss":
        fn, args = biasfit.fused_loss, (x, y, w, b)
    elif op == "predict":
        fn, args = biasfit.predict, (x, w, b)
    else:
        def fn(x, y, w, b):
            return torch.ops.biasfit.fused_loss_grads(x, y, w, b, 15)[0]
        args = (x, y, w, b)
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


def test_gradient_penalty_equals_plain():
    # The gradient of an input-gradient with respect to the weights.
    x, y, w, b = problem(torch.float64, n=32)
    results = []
    for fn in (ours_loss, plain_loss):
        xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        gx, = torch.autograd.grad(fn(xs, y, ws, b), xs, create_graph=True)
        results.append(torch.autograd.grad((gx ** 2).sum(), ws)[0])
    close(*results, torch.float64)
    assert (results[1] != 0).any()


# -- the other ops: not differentiable, never a silent number ------------------------

def test_backward_ops_outputs_do_not_require_grad():
    x, y, w, b = (t.clone().requires_grad_(True) for t in problem(torch.float64, n=8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no autograd kernel" warning
        wg, bg, xg = torch.ops.biasfit.predict_grads(torch.ones_like(x), x, w, b, 15)
        sums = torch.ops.biasfit.fused_loss_sums(x, y, w, b)
    for t in (wg, bg, xg, sums):
        assert not t.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        torch.autograd.grad(bg, b)


# -- forward-mode AD ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_jvp_equals_plain(dtype):
    x, y, w, b = problem(dtype)
    tangents = tuple(torch.randn(t.shape, dtype=dtype, generator=torch.Generator().manual_seed(i))
                     for i, t in enumerate((x, y, w, b)))
    for ours, plain, args, tans in (
            (ours_loss, plain_loss, (x, y, w, b), tangents),
            (biasfit.predict, plain_predict, (x, w, b), tangents[:1] + tangents[2:])):
        o_value, o_tangent = jvp(ours, args, tans)
        p_value, p_tangent = jvp(plain, args, tans)
        close(o_value, p_value, dtype)
        close(o_tangent, p_tangent, dtype)


def test_make_dual_through_basicnn():
    x, y = biasfit.tutorial_data()
    model, ref = biasfit.BasicNN(-15.0), reference.TutorialNN(-15.0)
    outs = []
    for m in (model, ref):
        params = {k: v.detach() for k, v in m.named_parameters()}
        with forward_ad.dual_level():
            dual = {k: forward_ad.make_dual(v, torch.ones_like(v)) for k, v in params.items()}
            out = functional_call(m, dual, (x,))
            outs.append(forward_ad.unpack_dual(out).tangent)
    close(outs[0], outs[1], torch.float32)


def test_jacfwd_equals_jacrev():
    x, y, w, b = problem(torch.float64, n=16)
    for fn, args in ((biasfit.predict, (x, w, b)), (ours_loss, (x, y, w, b))):
        for i in range(len(args)):
            close(jacfwd(fn, argnums=i)(*args), jacrev(fn, argnums=i)(*args), torch.float64)


# -- torch.func ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_func_hessian_equals_plain(dtype):
    x, y, w, b = problem(dtype, n=16)
    for i in range(4):
        close(hessian(ours_loss, argnums=i)(x, y, w, b),
              hessian(plain_loss, argnums=i)(x, y, w, b), dtype)


def test_per_sample_gradients_equal_plain():
    x, y, w, b = problem(torch.float64, n=16)
    per_point = lambda fn: vmap(grad(lambda b, xi, yi: fn(xi[None], yi[None], w, b)),  # noqa: E731
                                in_dims=(None, 0, 0))(b, x, y)
    close(per_point(ours_loss), per_point(plain_loss), torch.float64)


def test_model_ensembling_equals_plain():
    x, y = biasfit.tutorial_data()
    biases = [-15.0, -16.0, -2.0, 0.5]
    results = []
    for cls in (biasfit.BasicNN, reference.TutorialNN):
        models = [cls(b) for b in biases]
        params, buffers = torch.func.stack_module_state(models)
        base = cls()

        def loss_of(p, bufs):
            return ((functional_call(base, (p, bufs), (x,)) - y) ** 2).sum()
        results.append(vmap(grad(loss_of))(params, buffers)["final_bias"])
    close(*results, torch.float32)


# -- torch.compile of torch.func transforms ----------------------------------------

def test_compiled_transforms_equal_eager():
    x, y = biasfit.tutorial_data()
    w = torch.tensor(biasfit.TUTORIAL_WEIGHTS)
    f = lambda b: biasfit.fused_loss(x, y, w, b)  # noqa: E731
    b = torch.tensor(-15.0)
    for transform in (grad(f), grad(grad(f)), hessian(f)):
        eager = transform(b)
        compiled = torch.compile(transform, fullgraph=True)(b)
        close(compiled, eager, torch.float32)
        assert eager.item() != 0
    many = torch.tensor([-15.0, -16.0, 0.5])
    close(torch.compile(vmap(f), fullgraph=True)(many), vmap(f)(many), torch.float32)


def test_compiled_grad_over_basicnn_parameters_equals_eager():
    x, y = biasfit.tutorial_data()
    model = biasfit.BasicNN(-15.0)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p):
        return ((functional_call(model, p, (x,)) - y) ** 2).sum()
    eager = grad(loss)(params)
    compiled = torch.compile(grad(loss), fullgraph=True)(params)
    for name in params:
        close(compiled[name], eager[name], torch.float32)
    assert eager["final_bias"].item() != 0 and eager["w11"].item() != 0


# -- autocast and low precision -------------------------------------------------------

@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_autocast_producer_feeds_basicnn_as_plain(low):
    x, y = biasfit.tutorial_data()
    torch.manual_seed(0)
    lin = torch.nn.Linear(1, 1)
    outs = []
    for m in (biasfit.BasicNN(-1.0), reference.TutorialNN(-1.0)):
        lin.zero_grad()
        with torch.autocast("cpu", dtype=low):
            out = m(lin(x[:, None])[:, 0])
        loss = ((out.float() - y) ** 2).sum()
        loss.backward()
        outs.append((out, lin.weight.grad.clone(), m.final_bias.grad.clone()))
    (o, gw, gb), (po, pgw, pgb) = outs
    assert o.dtype == po.dtype
    torch.testing.assert_close(o, po)
    torch.testing.assert_close(gb, pgb, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(gw, pgw, rtol=1e-2, atol=1e-2)


def test_raw_ops_run_in_float32_under_autocast():
    x, y, w, b = problem(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.ops.biasfit.fused_loss(x.bfloat16(), y, w, b)[0]
    assert loss.dtype == torch.float32
    assert loss.item() == torch.ops.biasfit.fused_loss(x.bfloat16().float(), y, w, b)[0].item()


def test_low_precision_inputs_compute_in_float32():
    x, y, w, b = problem(torch.float32)
    xl = x.bfloat16()
    assert torch.equal(biasfit.predict(xl, w, b),
                       biasfit.predict(xl.float(), w, b).bfloat16())
    assert biasfit.fused_loss(xl, y, w, b).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="inputs must be float32 or float64"):
        torch.ops.biasfit.predict(xl, w, b)


# -- empty, inference-mode and non-finite data -------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_size_inputs_as_plain(dtype):
    model = biasfit.BasicNN(dtype=dtype)
    for p in model.parameters():
        p.requires_grad_(True)
    empty = torch.zeros(0, dtype=dtype)
    out = model(empty)
    assert out.shape == (0,) and out.dtype == dtype
    loss = model.loss(empty, empty)
    assert loss.item() == 0.0
    loss.backward()
    assert all(p.grad.item() == 0.0 for p in model.parameters())
    xs = empty.clone().requires_grad_(True)
    gx, = torch.autograd.grad(biasfit.fused_loss(xs, empty, model.weights(), model.final_bias), xs)
    assert gx.shape == (0,)
    with pytest.raises(ValueError, match="inputs is empty"):
        biasfit.fit_fused(empty, empty)


def test_inference_mode_tensors_train_as_plain():
    with torch.inference_mode():
        xi, yi = biasfit.tutorial_data()
    x, y = biasfit.tutorial_data()
    got = biasfit.fit(biasfit.BasicNN(), xi, yi)
    want = biasfit.fit(biasfit.BasicNN(), x, y)
    assert got.epochs_run == want.epochs_run == 34 and got.final_bias == want.final_bias
    model = biasfit.BasicNN()
    for p in model.parameters():
        p.requires_grad_(True)
    model.loss(xi, yi).backward()
    model(xi).sum().backward()
    assert model.w00.grad is not None


def test_nan_and_inf_reach_the_gradients_as_plain():
    x = torch.tensor([0.5, float("inf")])
    y = torch.tensor([1.0, 0.0])
    w = torch.tensor(biasfit.TUTORIAL_WEIGHTS)
    grads = []
    for fn in (ours_loss, plain_loss):
        args = [t.clone().requires_grad_(True) for t in (x, y, w, torch.tensor(-16.0))]
        loss = fn(*args)
        loss.backward()
        grads.append([loss] + [a.grad for a in args])
    for ours, plain in zip(*grads):
        assert torch.equal(ours.isnan(), plain.isnan()), (ours, plain)
    assert grads[0][4].isnan()  # the bias gradient: NaN, as plain's


def test_nan_reaches_predict_gradients_as_plain():
    x = torch.tensor([0.5, float("nan"), 1.0])
    w = torch.tensor(biasfit.TUTORIAL_WEIGHTS)
    got = []
    for fn in (biasfit.predict, plain_predict):
        args = [t.clone().requires_grad_(True) for t in (x, w, torch.tensor(-1.0))]
        fn(*args).sum().backward()
        got.append([a.grad for a in args])
    for ours, plain in zip(*got):
        assert torch.equal(ours.isnan(), plain.isnan()), (ours, plain)


# -- optimizers and TorchScript ----------------------------------------------------

def test_fit_drives_lbfgs_as_a_plain_loop():
    x, y = biasfit.tutorial_data()
    model = biasfit.BasicNN()
    result = biasfit.fit(model, x, y, optimizer=torch.optim.LBFGS(model.parameters(), lr=0.1),
                         epochs=5)
    ref = reference.TutorialNN()
    opt = torch.optim.LBFGS(ref.parameters(), lr=0.1)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = ((ref(x) - y) ** 2).sum()
        loss.backward()
        losses.append(loss.item())
        if loss.item() < 1e-4:
            break

        def closure():
            opt.zero_grad()
            total = ((ref(x) - y) ** 2).sum()
            total.backward()
            return total
        opt.step(closure)
    assert result.epochs_run == len(losses) or result.converged
    close(torch.tensor(result.losses), torch.tensor(losses), torch.float32)
    close(model.final_bias.detach(), ref.final_bias.detach(), torch.float32)


def test_torchscript_basicnn_matches_eager(tmp_path):
    x, y = biasfit.tutorial_data()
    model = biasfit.BasicNN(-15.0)
    scripted = torch.jit.script(model)
    assert torch.equal(scripted(x), model(x))
    loss = scripted.loss(x, y)
    assert torch.equal(loss, model.loss(x, y))
    loss.backward()
    assert model.final_bias.grad.item() != 0  # the scripted module shares the parameters
    scripted.save(tmp_path / "m.pt")
    assert torch.equal(torch.jit.load(tmp_path / "m.pt")(x), model(x))


# -- transforms composed with vmap ----------------------------------------------------

def _compositions(loss):
    """name -> f(biases): every way a batch of biases meets a derivative."""
    batched = vmap(loss)
    one = torch.ones(())
    return {
        "grad of vmap": lambda bs: grad(lambda bs: batched(bs).sum())(bs),
        "vmap of grad": lambda bs: vmap(grad(loss))(bs),
        "jacrev of vmap": lambda bs: jacrev(batched)(bs),
        "jacfwd of vmap": lambda bs: jacfwd(batched)(bs),
        "hessian of vmap": lambda bs: hessian(lambda bs: batched(bs).sum())(bs),
        "vmap of hessian": lambda bs: vmap(hessian(loss))(bs),
        "vmap of jvp": lambda bs: vmap(lambda b: jvp(loss, (b,), (one,))[1])(bs),
    }


@pytest.mark.parametrize("name", list(_compositions(None)))
def test_transforms_composed_with_vmap_equal_plain(name):
    x, y, w, _ = problem(torch.float64, n=40)
    biases = torch.tensor([-3.0, -2.0, -0.5, 1.0], dtype=torch.float64)
    ours = _compositions(lambda b: ours_loss(x, y, w, b))[name](biases)
    plain = _compositions(lambda b: plain_loss(x, y, w, b))[name](biases)
    close(ours, plain, torch.float64)
    assert (plain != 0).any() and torch.equal(ours != 0, plain != 0)
