"""The network's first derivatives written in torch ops, for when autograd
must see them: a backward that builds a graph (create_graph=True,
torch.func.grad of grad, hessian, a gradient penalty) and forward-mode AD
(jvp, jacfwd, make_dual).

The native kernels compute the same derivatives in one pass (csrc/core/
network.h), but their outputs are numbers autograd cannot differentiate
again. Here every step is a differentiable torch op, so second and higher
derivatives are autograd's own: relu's derivative is a mask, whose own
derivative is 0, as in PyTorch. The masks are PyTorch's relu backward, "0
where relu's output <= 0, else pass": a NaN passes, as plain PyTorch's does.

Values here round as torch's ops do; ops.py returns the native pass's
values and takes only the graph from these (ops._with_graph).
"""
import torch


def _forward(x, w, b):
    w00, b00, w01, w10, b10, w11 = w.reshape(6).unbind()
    h0 = (x * w00 + b00).relu()
    h1 = (x * w10 + b10).relu()
    z = (h0 * w01 + h1 * w11) + b.reshape(())
    return h0, h1, z


def predict(x, w, b):
    """The network's output in torch ops."""
    return _forward(x, w, b)[2].relu()


def loss(x, y, w, b):
    """sum((predict(x, w, b) - y)^2) in torch ops."""
    return ((predict(x, w, b) - y) ** 2).sum()


def _pass(mask_of, g):
    """g where relu's output mask_of > 0 (NaN included), else 0."""
    return torch.where(mask_of <= 0, torch.zeros_like(g), g)


def _predict_vjp_from(x, w, h0, h1, z, g_out):
    """(d/dx, d/dweights [6], d/dbias) of sum(g_out * y_hat)."""
    w00, _, w01, w10, _, w11 = w.reshape(6).unbind()
    g = _pass(z, g_out)
    d0 = _pass(h0, g * w01)
    d1 = _pass(h1, g * w11)
    weights_grad = torch.stack([(d0 * x).sum(), d0.sum(), (g * h0).sum(),
                                (d1 * x).sum(), d1.sum(), (g * h1).sum()])
    return d0 * w00 + d1 * w10, weights_grad, g.sum()


def predict_vjp(grad_out, x, w, b):
    """predict's backward: (inputs, weights, bias) gradients of
    sum(grad_out * predict(x, w, b)), in the arguments' shapes."""
    h0, h1, z = _forward(x, w, b)
    xg, wg, bg = _predict_vjp_from(x, w, h0, h1, z, grad_out)
    return xg, wg.reshape(w.shape), bg.reshape(b.shape)


def loss_vjp(grad_loss, x, y, w, b):
    """fused_loss's backward: (inputs, labels, weights, bias) gradients of
    grad_loss * sum((predict(x, w, b) - y)^2), in the arguments' shapes."""
    h0, h1, z = _forward(x, w, b)
    two_r = 2 * (z.relu() - y) * grad_loss
    xg, wg, bg = _predict_vjp_from(x, w, h0, h1, z, two_r)
    return xg, -two_r, wg.reshape(w.shape), bg.reshape(b.shape)


def _zero_or(t, like):
    return torch.zeros_like(like) if t is None else t


def predict_jvp(x, w, b, tx, tw, tb):
    """The tangent of predict(x, w, b) along (tx, tw, tb); None for a zero
    tangent."""
    tx, tw, tb = _zero_or(tx, x), _zero_or(tw, w), _zero_or(tb, b)
    w00, b00, w01, w10, b10, w11 = w.reshape(6).unbind()
    t00, tb00, t01, t10, tb10, t11 = tw.reshape(6).unbind()
    h0, h1, z = _forward(x, w, b)
    dh0 = _pass(h0, tx * w00 + x * t00 + tb00)
    dh1 = _pass(h1, tx * w10 + x * t10 + tb10)
    dz = (dh0 * w01 + h0 * t01) + (dh1 * w11 + h1 * t11) + tb.reshape(())
    return _pass(z, dz)


def loss_jvp(x, y, w, b, tx, ty, tw, tb):
    """The tangent of sum((predict(x, w, b) - y)^2) along (tx, ty, tw, tb)."""
    r = _forward(x, w, b)[2].relu() - y
    dy_hat = predict_jvp(x, w, b, tx, tw, tb)
    return (2 * r * (dy_hat - _zero_or(ty, y))).sum()
