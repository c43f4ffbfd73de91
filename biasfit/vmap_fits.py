"""torch.func.vmap of the whole-fit ops fit_sgd and fit_params: one fit_many.

A vmap over any of a fit op's tensors (inputs, labels, weights, bias or
params; any dim, or None where shared) runs the batch's fits in ONE call of
biasfit::fit_many with raw=True (csrc/cpu/fit_many.h): each fit's epochs
on one thread, the unbatched op's sums and steps, no stall decided. The
outputs are the unbatched op's stacked along dim 0, bit for bit, with one
rule for the histories: the op writes losses[e] and biases[e] only for the
epochs it evaluated (info[0] + 1, or info[0] if it ran out of epochs) and
leaves the rest of its [epochs] rows unspecified; under vmap they are NaN,
as fit_many's own histories are (docs/many.md).

What fit_many does not run goes through a loop of the unbatched op over
the fits, so the results are the same either way: a divide_by other than 1
(the summed loss) or the fit's points (the mean), arguments the op would
refuse (then with its own error) and tensors on a device without
fit_many's kernels.

A vmap of a vmap reaches fit_many's own rule below, which folds the outer
batch into the fits. Ctrl-C during the call raises KeyboardInterrupt.
"""
import torch

from . import _direct, _native  # noqa: F401  (_native loads torch.ops.biasfit)

_ops = torch.ops.biasfit
# model.PARAM_NAMES' bit of final_bias and engine.OPTIMIZER_KINDS' SGD, as
# literals: this module loads while biasfit.model does (ops -> vmap_rules),
# before either can be imported; tests/test_vmap_fits.py checks they agree.
_BIAS_ONLY = 1 << 6   # trained: final_bias alone
_SGD = 0
# Adam's settings in fit_many's table for an SGD fit (never read by it).
_ADAM_UNUSED = (0.9, 0.999, 1e-8, 0.0)


def raise_if_interrupted(status):
    """KeyboardInterrupt where Ctrl-C stopped fit_many (biasfit/many.py's
    test; many.py imports this package's ops, so not from there)."""
    if len(status) and int(status[0]) == _direct.INTERRUPTED:
        raise KeyboardInterrupt


def _front(t, dim):
    return t if dim is None else t.movedim(dim, 0)


def _rows(t, dim, width):
    """t as [1 or K, width] rows: one shared row where it is not mapped."""
    if dim is None:
        return t.reshape(1, width)
    t = t.movedim(dim, 0)
    return t.reshape(t.shape[0], width)


def _one_fit_numel(t, dim):
    return t.numel() // (1 if dim is None else t.shape[dim])


def _slice(t, dim, k):
    return t if dim is None else t.select(dim, k)


def _loop(op, info, in_dims, args):
    """The unbatched op on each fit, its outputs stacked, NaN after each
    fit's evaluated epochs as fit_many's histories."""
    outs = [op(*(_slice(a, d, k) if isinstance(a, torch.Tensor) else a
                 for a, d in zip(args, in_dims)))
            for k in range(info.batch_size)]
    final, losses, biases, fit_info = (torch.stack(o) for o in zip(*outs))
    epoch, status = fit_info[:, 0], fit_info[:, 1]
    seen = torch.where(status == _direct.EXHAUSTED, epoch, epoch + 1)
    after = torch.arange(losses.shape[1], device=losses.device) >= seen[:, None].to(losses.device)
    return (final, losses.masked_fill(after, float("nan")),
            biases.masked_fill(after, float("nan")), fit_info)


def _data_rows(info, in_dims, inputs, labels):
    """inputs, labels as fit_many's [K, N], or None where their per-fit
    shapes differ (the op's own error then comes from the loop)."""
    xd, yd = in_dims[0], in_dims[1]
    shape_x = tuple(_front(inputs, xd).shape[xd is not None:])
    shape_y = tuple(_front(labels, yd).shape[yd is not None:])
    if shape_x != shape_y:
        return None
    n = _one_fit_numel(inputs, xd)
    k = info.batch_size
    return (_rows(inputs, xd, n).expand(k, n), _rows(labels, yd, n).expand(k, n))


def _run_many(info, x, y, start, settings, trained, optimizer, raw):
    """fit_many's raw fits (as fit_sgd: 1, as fit_params: 2), or None where
    its checks refuse them."""
    try:
        out = _ops.fit_many(x, y, torch.empty(0, dtype=torch.int64), start, settings,
                            trained, optimizer, True, raw)
    except (RuntimeError, ValueError):
        return None
    if not torch._C._functorch.is_batchedtensor(out[3]):  # (else fit_many's rule's)
        raise_if_interrupted(out[3])
    return out


def _stop_columns(divide_by, n, rtol, patience):
    """fit_many's (rtol, patience, mean) for the op's plateau stop and
    divide_by, or None where it has no column for divide_by."""
    if divide_by == 1:
        return (rtol, patience, 0.0)
    if divide_by == n:
        return (rtol, patience, 1.0)
    return None


def _info(*columns):
    return torch.stack([c.to(torch.int64) for c in columns], dim=1)


@torch.library.register_vmap("biasfit::fit_sgd")
def _fit_sgd_vmap(info, in_dims, inputs, labels, weights, bias, lr, momentum, dampening,
                  nesterov, weight_decay, maximize, epochs, tol, rtol=0.0, patience=0,
                  divide_by=1.0):
    args = (inputs, labels, weights, bias, lr, momentum, dampening, nesterov,
            weight_decay, maximize, epochs, tol, rtol, patience, divide_by)
    out = None
    data = _data_rows(info, in_dims, inputs, labels)
    stop = data and _stop_columns(divide_by, data[0].shape[1], rtol, patience)
    if (stop is not None and _one_fit_numel(weights, in_dims[2]) == 6
            and _one_fit_numel(bias, in_dims[3]) == 1):
        w, b = _rows(weights, in_dims[2], 6), _rows(bias, in_dims[3], 1)
        rows = max(w.shape[0], b.shape[0])
        start = torch.cat([w.expand(rows, 6), b.expand(rows, 1)], dim=1)
        settings = torch.tensor([[lr, momentum, dampening, float(nesterov), weight_decay,
                                  float(maximize), *_ADAM_UNUSED, epochs, tol, *stop]],
                                dtype=torch.float64)
        out = _run_many(info, *data, start, settings, _BIAS_ONLY, _SGD, 1)
    if out is None:
        return _loop(_ops.fit_sgd, info, in_dims, args), (0, 0, 0, 0)
    params, _, epoch, status, _, losses, biases = out
    return (params[:, -1], losses, biases, _info(epoch, status)), (0, 0, 0, 0)


@torch.library.register_vmap("biasfit::fit_params")
def _fit_params_vmap(info, in_dims, inputs, labels, params, trained, optimizer, lr,
                     momentum, dampening, nesterov, weight_decay, maximize, beta1, beta2,
                     eps, amsgrad, epochs, tol, rtol=0.0, patience=0, divide_by=1.0):
    args = (inputs, labels, params, trained, optimizer, lr, momentum, dampening, nesterov,
            weight_decay, maximize, beta1, beta2, eps, amsgrad, epochs, tol, rtol, patience,
            divide_by)
    out = None
    data = _data_rows(info, in_dims, inputs, labels)
    stop = data and _stop_columns(divide_by, data[0].shape[1], rtol, patience)
    if stop is not None and _one_fit_numel(params, in_dims[2]) == 7:
        settings = torch.tensor([[lr, momentum, dampening, float(nesterov), weight_decay,
                                  float(maximize), beta1, beta2, eps, float(amsgrad),
                                  epochs, tol, *stop]], dtype=torch.float64)
        out = _run_many(info, *data, _rows(params, in_dims[2], 7), settings, trained,
                        optimizer, 2)
    if out is None:
        return _loop(_ops.fit_params, info, in_dims, args), (0, 0, 0, 0)
    final, _, epoch, status, bad, losses, biases = out
    return (final, losses, biases, _info(epoch, status, bad)), (0, 0, 0, 0)


# -- fit_many's own rule: a vmap of a vmap of the fit ops ------------------------
#
# Under an outer vmap of B, fit_many's [K, N] data, [1 or K, 7] start and
# [1 or K, columns] settings fold into B * K fits of one call (offsets empty:
# the form the rules above pass); the outputs unfold to [B, K, ...].

def _fold(info, dim, t, fits, data=False):
    """t's [B * K, ...] rows (a row shared by every fit stays one row; the
    data has a row per fit)."""
    if dim is None and t.shape[0] == 1 and not data:
        return t
    outer = t.unsqueeze(0) if dim is None else t.movedim(dim, 0)
    outer = outer.expand(info.batch_size, fits, *outer.shape[2:])
    return outer.reshape(info.batch_size * fits, *outer.shape[2:])


@torch.library.register_vmap("biasfit::fit_many")
def _fit_many_vmap(info, in_dims, inputs, labels, offsets, start, settings, trained,
                   optimizer, history, raw=0):
    if in_dims[2] is not None or offsets.numel():
        raise ValueError("biasfit: a vmap of fit_many takes [K, N] data without offsets")
    fits = _front(inputs, in_dims[0]).shape[in_dims[0] is not None]
    x, y = (_fold(info, d, t, fits, data=True) for d, t in
            ((in_dims[0], inputs), (in_dims[1], labels)))
    s, sett = (_fold(info, d, t, fits) for d, t in ((in_dims[3], start), (in_dims[4], settings)))
    out = _ops.fit_many(x, y, offsets, s, sett, trained, optimizer, history, raw)
    raise_if_interrupted(out[3])
    return (tuple(o.reshape(info.batch_size, fits, *o.shape[1:]) for o in out),
            (0,) * len(out))
