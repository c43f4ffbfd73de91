"""torch.func.vmap of the ops: every op maps onto its batched native op.

A vmap over any argument (data, labels, weights, bias; any dim, or None)
becomes one call of the op's batched form (csrc/torch_ops/ops.cpp's
*_batched, csrc/cpu/batched.h): each argument goes in as rows [1 or K, ...],
a row shared by every fit where the argument is not mapped, so a batch of
biases or weights reads the shared data once and never builds a [K, N]
tensor for a loss. Fit k's results are the unbatched op's on its slice, bit
for bit. A vmap of a vmap reaches the batched ops' own rules below, which
fold the outer batch into the rows.
"""
import torch

from . import _native  # noqa: F401  (loads torch.ops.biasfit)
from . import derivatives
from .ops import (NEED_INPUTS, NEED_LABELS, NEED_WEIGHTS, _building_graph, _detached,
                  _never_called, _outputs_not_differentiable, _savable, _with_graph)

_ops = torch.ops.biasfit


def _refuse(message):
    raise ValueError(f"biasfit: {message}")


def _front(t, dim):
    """t with its mapped dim first, or None where it is not mapped."""
    return None if dim is None else t.movedim(dim, 0)


class _Args:
    """An op's tensors as the batched op takes them (rows), with the data's
    per-fit shape (the unbatched op's), checked as that op checks them so
    that a mistake reads as it would without vmap."""

    def __init__(self, in_dims, **tensors):
        self.shape = None
        self.rows = {}
        for (name, t), dim in zip(tensors.items(), in_dims):
            mapped = _front(t, dim)
            one = tuple(t.shape if mapped is None else mapped.shape[1:])  # one fit's
            size = _numel(one)
            if name in ("inputs", "labels", "grad_out"):
                if self.shape is None:
                    self.shape = one
                elif one != self.shape:
                    _refuse(f"{name} has shape {list(one)} but inputs has shape "
                            f"{list(self.shape)}; they must match")
            elif name == "weights" and size != 6:
                _refuse(f"weights must hold 6 values (w00, b00, w01, w10, b10, w11), got {size}")
            elif name == "bias" and size != 1:
                _refuse(f"bias must hold one value, got {size}")
            width = () if name == "bias" else (size,)
            self.rows[name] = (t.reshape(1, *width) if mapped is None
                               else mapped.reshape(mapped.shape[0], *width))


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def _per_point(args, t):
    """A [K, N] per-point result in the data's per-fit shape; [K, 0] (a
    gradient not asked for) as it is: the unbatched op's [0] for each fit."""
    n = _numel(args.shape)
    return t.reshape(t.shape[0], *args.shape) if t.shape[1] == n else t


# -- the unbatched ops' rules -----------------------------------------------------

@torch.library.register_vmap("biasfit::predict")
def _predict_vmap(info, in_dims, inputs, weights, bias):
    a = _Args(in_dims, inputs=inputs, weights=weights, bias=bias)
    out = _ops.predict_batched(a.rows["inputs"], a.rows["weights"], a.rows["bias"])
    return _per_point(a, out), 0


@torch.library.register_vmap("biasfit::fused_loss")
def _fused_loss_vmap(info, in_dims, inputs, labels, weights, bias):
    a = _Args(in_dims, inputs=inputs, labels=labels, weights=weights, bias=bias)
    r = a.rows
    return _ops.fused_loss_batched(r["inputs"], r["labels"], r["weights"], r["bias"]), (0, 0)


@torch.library.register_vmap("biasfit::fused_loss_sums")
def _fused_loss_sums_vmap(info, in_dims, inputs, labels, weights, bias):
    a = _Args(in_dims, inputs=inputs, labels=labels, weights=weights, bias=bias)
    r = a.rows
    return _ops.fused_loss_sums_batched(r["inputs"], r["labels"], r["weights"], r["bias"]), 0


@torch.library.register_vmap("biasfit::predict_bias_grad")
def _predict_bias_grad_vmap(info, in_dims, grad_out, inputs, weights, bias):
    # inputs first: its shape is the one the others must match.
    a = _Args((in_dims[1], in_dims[0], in_dims[2], in_dims[3]),
              inputs=inputs, grad_out=grad_out, weights=weights, bias=bias)
    r = a.rows
    return _ops.predict_bias_grad_batched(r["grad_out"], r["inputs"], r["weights"],
                                          r["bias"]), 0


@torch.library.register_vmap("biasfit::fused_loss_grads")
def _fused_loss_grads_vmap(info, in_dims, inputs, labels, weights, bias, needs):
    a = _Args(in_dims[:4], inputs=inputs, labels=labels, weights=weights, bias=bias)
    r = a.rows
    loss, wg, bg, yg, xg = _ops.fused_loss_grads_batched(
        r["inputs"], r["labels"], r["weights"], r["bias"], needs)
    return (loss, wg, bg, _per_point(a, yg), _per_point(a, xg)), (0,) * 5


@torch.library.register_vmap("biasfit::fused_loss_grads_sums")
def _fused_loss_grads_sums_vmap(info, in_dims, inputs, labels, weights, bias):
    a = _Args(in_dims, inputs=inputs, labels=labels, weights=weights, bias=bias)
    r = a.rows
    return _ops.fused_loss_grads_sums_batched(r["inputs"], r["labels"], r["weights"],
                                              r["bias"]), 0


@torch.library.register_vmap("biasfit::predict_grads")
def _predict_grads_vmap(info, in_dims, grad_out, inputs, weights, bias, needs):
    a = _Args((in_dims[1], in_dims[0], in_dims[2], in_dims[3]),
              inputs=inputs, grad_out=grad_out, weights=weights, bias=bias)
    r = a.rows
    wg, bg, xg = _ops.predict_grads_batched(r["grad_out"], r["inputs"], r["weights"],
                                            r["bias"], needs)
    return (wg, bg, _per_point(a, xg)), (0, 0, 0)


# -- the batched ops' rules: a vmap of a vmap ---------------------------------------
#
# Under an outer vmap the batched op's rows [K or 1, ...] gain an outer batch
# B; the rows of the two batches fold into B * K rows of one call. A row
# shared by both stays one row; a row shared along one batch only is
# repeated to fill the other (a copy: the outer vmap of a batch of biases
# over a batch of data sets, say, reads each data set once per bias).

def _fold(info, in_dims, tensors):
    """The B * K rows of each tensor (B the outer batch, K the inner)."""
    inner = 1
    for t, dim in zip(tensors, in_dims):
        size = t.shape[0] if dim is None else t.movedim(dim, 0).shape[1]
        if size != 1:
            inner = size
    rows = []
    for t, dim in zip(tensors, in_dims):
        if dim is None and t.shape[0] == 1:
            rows.append(t)  # shared by every fit of both batches
            continue
        outer = t.unsqueeze(0) if dim is None else t.movedim(dim, 0)
        outer = outer.expand(info.batch_size, inner, *outer.shape[2:])
        rows.append(outer.reshape(info.batch_size * inner, *outer.shape[2:]))
    return rows, inner


def _unfold(info, inner, t):
    """[B * K, ...] back to [B, K, ...]."""
    return t.reshape(info.batch_size, inner, *t.shape[1:])


def _batched_rule(op, outputs):
    """The rule of a batched op whose tensor arguments come first and whose
    other arguments (needs) follow as they are."""
    def rule(info, in_dims, *args):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        rest = args[len(tensors):]
        rows, inner = _fold(info, in_dims[:len(tensors)], tensors)
        out = op(*rows, *rest)
        if outputs == 1:
            return _unfold(info, inner, out), 0
        return tuple(_unfold(info, inner, o) for o in out), (0,) * outputs
    return rule


for _name, _outputs in (("predict_batched", 1), ("fused_loss_batched", 2),
                        ("fused_loss_sums_batched", 1), ("predict_bias_grad_batched", 1),
                        ("fused_loss_grads_batched", 5), ("fused_loss_grads_sums_batched", 1),
                        ("predict_grads_batched", 3)):
    torch.library.register_vmap(f"biasfit::{_name}",
                                _batched_rule(getattr(_ops, _name), _outputs))


# -- autograd of the batched ops ----------------------------------------------------
#
# A vmap of the ops themselves over tensors that require grad (plain autograd
# outside the vmap) reaches these: the unbatched ops' backward for each fit,
# summed over the fits where an argument's one row is shared by them all.
# (The public functions under vmap go through ops.py's autograd.Functions.)

def _to_rows(g, like):
    """Per-fit gradients [K, ...] as like's rows: summed where like is one
    row shared by every fit."""
    return g.sum(0, keepdim=True) if like.shape[0] == 1 and g.shape[0] != 1 else g


def _graph_of(vjp, need, grad, *rows):
    """Where a backward builds a graph (create_graph=True, torch.func.grad):
    the unbatched backward's torch-op form (biasfit/derivatives.py) mapped
    over the fits, as the rows' gradients, for ops._with_graph."""
    k = grad.shape[0]
    full = [r.expand(k, *r.shape[1:]) for r in rows]
    grads = torch.func.vmap(vjp)(grad, *full)
    return tuple(_to_rows(g, r) if n else None for g, r, n in zip(grads, rows, need))


def _loss_batched_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(*output[1:])
    ctx.save_for_backward(*map(_savable, inputs[:4]))
    ctx.has_needs = len(inputs) > 4


def _loss_batched_backward(ctx, grad_loss, *_):
    x, y, w, b = ctx.saved_tensors
    need = ctx.needs_input_grad[:4]
    graph = _building_graph(grad_loss, x, y, w, b)
    bits = ((NEED_INPUTS if need[0] else 0) | (NEED_LABELS if need[1] else 0)
            | (NEED_WEIGHTS if need[2] else 0))
    _, wg, bg, yg, xg = _ops.fused_loss_grads_batched(*_detached(x, y, w, b), bits)
    g = grad_loss[:, None]
    grads = (_to_rows(g * xg, x) if need[0] else None, _to_rows(g * yg, y) if need[1] else None,
             _to_rows(g * wg, w) if need[2] else None,
             _to_rows(grad_loss * bg, b) if need[3] else None)
    if graph:
        grads = _with_graph(grads, _graph_of(derivatives.loss_vjp, need, grad_loss, x, y, w, b))
    return grads + (None,) if ctx.has_needs else grads


for _name in ("fused_loss_batched", "fused_loss_grads_batched"):
    torch.library.register_autograd(f"biasfit::{_name}", _loss_batched_backward,
                                    setup_context=_loss_batched_setup)


def _predict_batched_setup(ctx, inputs, output):
    ctx.save_for_backward(*map(_savable, inputs))


def _predict_batched_backward(ctx, grad_out):
    x, w, b = ctx.saved_tensors
    need_x, need_w, need_b = need = ctx.needs_input_grad
    graph = _building_graph(grad_out, x, w, b)
    bits = (NEED_INPUTS if need_x else 0) | (NEED_WEIGHTS if need_w else 0)
    wg, bg, xg = _ops.predict_grads_batched(*_detached(grad_out, x, w, b), bits)
    grads = (_to_rows(xg, x) if need_x else None, _to_rows(wg, w) if need_w else None,
             _to_rows(bg, b) if need_b else None)
    if graph:
        grads = _with_graph(grads, _graph_of(derivatives.predict_vjp, need, grad_out, x, w, b))
    return grads


torch.library.register_autograd("biasfit::predict_batched", _predict_batched_backward,
                                setup_context=_predict_batched_setup)

# The other batched ops are backward passes and sums, as their unbatched
# forms (biasfit/ops.py): outputs that never require grad.
for _name in ("fused_loss_sums_batched", "fused_loss_grads_sums_batched",
              "predict_bias_grad_batched", "predict_grads_batched"):
    torch.library.register_autograd(f"biasfit::{_name}", _never_called,
                                    setup_context=_outputs_not_differentiable)


# -- fake (meta) kernels of the batched ops ------------------------------------------

def _batch(*tensors):
    k = 1
    for t in tensors:
        if t.shape[0] != 1:
            k = t.shape[0]
    return k


@torch.library.register_fake("biasfit::predict_batched")
def _predict_batched_fake(inputs, weights, bias):
    return inputs.new_empty((_batch(inputs, weights, bias), inputs.shape[1]))


@torch.library.register_fake("biasfit::fused_loss_batched")
def _fused_loss_batched_fake(inputs, labels, weights, bias):
    k = _batch(inputs, labels, weights, bias)
    return inputs.new_empty((k,)), inputs.new_empty((k,))


@torch.library.register_fake("biasfit::fused_loss_sums_batched")
def _fused_loss_sums_batched_fake(inputs, labels, weights, bias):
    return inputs.new_empty((_batch(inputs, labels, weights, bias), 2), dtype=torch.float64)


@torch.library.register_fake("biasfit::predict_bias_grad_batched")
def _predict_bias_grad_batched_fake(grad_out, inputs, weights, bias):
    return inputs.new_empty((_batch(grad_out, inputs, weights, bias),))


@torch.library.register_fake("biasfit::fused_loss_grads_batched")
def _fused_loss_grads_batched_fake(inputs, labels, weights, bias, needs):
    k, n = _batch(inputs, labels, weights, bias), inputs.shape[1]
    return (inputs.new_empty((k,)), inputs.new_empty((k, 6 if needs & NEED_WEIGHTS else 0)),
            inputs.new_empty((k,)), inputs.new_empty((k, n if needs & NEED_LABELS else 0)),
            inputs.new_empty((k, n if needs & NEED_INPUTS else 0)))


@torch.library.register_fake("biasfit::fused_loss_grads_sums_batched")
def _fused_loss_grads_sums_batched_fake(inputs, labels, weights, bias):
    return inputs.new_empty((_batch(inputs, labels, weights, bias), 8), dtype=torch.float64)


@torch.library.register_fake("biasfit::predict_grads_batched")
def _predict_grads_batched_fake(grad_out, inputs, weights, bias, needs):
    k, n = _batch(grad_out, inputs, weights, bias), inputs.shape[1]
    return (inputs.new_empty((k, 6 if needs & NEED_WEIGHTS else 0)), inputs.new_empty((k,)),
            inputs.new_empty((k, n if needs & NEED_INPUTS else 0)))


from . import vmap_fits  # noqa: E402,F401  (issue 28: vmap of the fit ops onto fit_many)
