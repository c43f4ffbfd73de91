"""Python side of the native ops: fake kernels, autograd, functional wrappers.

The schemas live in csrc/torch_ops/ops.cpp and the input checks in csrc/torch_ops/checks.cpp; here the ops get what
torch.compile and autograd need, registered with torch.library so compiled
graphs see them as single nodes with no graph break.
"""
import torch

from . import _native  # noqa: F401  (loads torch.ops.biasfit)

_ops = torch.ops.biasfit


# -- fake (meta) kernels: output metadata only ---------------------------------
#
# The dispatcher sends a call here whenever any argument is on the meta
# device, also when the others hold real data: so these refuse mixed devices
# with csrc/torch_ops/checks.cpp's wording, rather than hand back uninitialised memory
# on the first argument's device.

def _one_device(**tensors):
    (ref_name, ref), *rest = tensors.items()
    for name, t in rest:
        if t is not None and t.device != ref.device:
            raise ValueError(f"biasfit: {name} is on {t.device} but {ref_name} is on "
                             f"{ref.device}; move both to one device")


@torch.library.register_fake("biasfit::predict")
def _predict_fake(inputs, weights, bias):
    _one_device(inputs=inputs, weights=weights, bias=bias)
    return torch.empty_like(inputs, memory_format=torch.contiguous_format)


@torch.library.register_fake("biasfit::fused_loss")
def _fused_loss_fake(inputs, labels, weights, bias):
    _one_device(inputs=inputs, labels=labels, weights=weights, bias=bias)
    return inputs.new_empty(()), inputs.new_empty(())


@torch.library.register_fake("biasfit::fused_loss_sums")
def _fused_loss_sums_fake(inputs, labels, weights, bias):
    _one_device(inputs=inputs, labels=labels, weights=weights, bias=bias)
    return inputs.new_empty((2,), dtype=torch.float64)


@torch.library.register_fake("biasfit::predict_bias_grad")
def _predict_bias_grad_fake(grad_out, inputs, weights, bias):
    _one_device(inputs=inputs, grad_out=grad_out, weights=weights, bias=bias)
    return inputs.new_empty(())


@torch.library.register_fake("biasfit::fit_sgd")
def _fit_sgd_fake(inputs, labels, weights, bias, lr, momentum, dampening,
                  nesterov, weight_decay, maximize, epochs, tol, rtol=0.0, patience=0,
                  divide_by=1.0):
    _one_device(inputs=inputs, labels=labels, weights=weights, bias=bias)
    return (inputs.new_empty(()), inputs.new_empty((epochs,)),
            inputs.new_empty((epochs,)),
            inputs.new_empty((2,), dtype=torch.int64))


@torch.library.register_fake("biasfit::fit_params")
def _fit_params_fake(inputs, labels, params, trained, optimizer, lr, momentum, dampening,
                     nesterov, weight_decay, maximize, beta1, beta2, eps, amsgrad, epochs, tol,
                     rtol=0.0, patience=0, divide_by=1.0):
    _one_device(inputs=inputs, labels=labels, params=params)
    return (inputs.new_empty((7,)), inputs.new_empty((epochs,)), inputs.new_empty((epochs,)),
            inputs.new_empty((3,), dtype=torch.int64))


@torch.library.register_fake("biasfit::sgd_step")
def _sgd_step_fake(param, grad, momentum_buffer, lr, momentum, dampening,
                   nesterov, weight_decay, maximize):
    _one_device(param=param, grad=grad, momentum_buffer=momentum_buffer)
    return torch.empty_like(param), torch.empty_like(param)


@torch.library.register_fake("biasfit::params_step")
def _params_step_fake(params, grads, state, trained, optimizer, lr, momentum, dampening,
                      nesterov, weight_decay, maximize, beta1, beta2, eps, amsgrad):
    _one_device(params=params, grads=grads, state=state)
    return (params.new_empty((7,)), state.new_empty((7, 4)))


@torch.library.register_fake("biasfit::fused_loss_grads")
def _fused_loss_grads_fake(inputs, labels, weights, bias, needs):
    _one_device(inputs=inputs, labels=labels, weights=weights, bias=bias)
    per_point = lambda bit: inputs.new_empty(inputs.shape if needs & bit else (0,))
    return (inputs.new_empty(()), inputs.new_empty((6,) if needs & NEED_WEIGHTS else (0,)),
            inputs.new_empty(()), per_point(NEED_LABELS), per_point(NEED_INPUTS))


@torch.library.register_fake("biasfit::fused_loss_grads_sums")
def _fused_loss_grads_sums_fake(inputs, labels, weights, bias):
    _one_device(inputs=inputs, labels=labels, weights=weights, bias=bias)
    return inputs.new_empty((8,), dtype=torch.float64)


@torch.library.register_fake("biasfit::predict_grads")
def _predict_grads_fake(grad_out, inputs, weights, bias, needs):
    _one_device(inputs=inputs, grad_out=grad_out, weights=weights, bias=bias)
    return (inputs.new_empty((6,) if needs & NEED_WEIGHTS else (0,)), inputs.new_empty(()),
            inputs.new_empty(inputs.shape if needs & NEED_INPUTS else (0,)))


# -- autograd -------------------------------------------------------------------
#
# The gradients come from the forward's own pass (fused_loss_grads computes
# the loss and every gradient asked for at once): backward only scales them
# by the incoming gradient. `needs` says which the pass computed; the
# functional fused_loss below asks for exactly those whose inputs require
# grad. A gradient autograd wants that the pass did not compute (the op
# called directly with fewer bits, or fused_loss's older two-output form)
# costs one more pass, never a silent None.

# csrc/core/network.h's GradNeeds.
NEED_WEIGHTS, NEED_BIAS, NEED_LABELS, NEED_INPUTS, NEED_ALL = 1, 2, 4, 8, 15
_INPUT_BITS = (NEED_INPUTS, NEED_LABELS, NEED_WEIGHTS, NEED_BIAS)  # fused_loss's order


def needs_of(inputs, labels, weights, bias) -> int:
    """The GradNeeds bits of the arguments that require grad (none when
    grad mode is off); the bias's bit always, as its gradient is free."""
    needs = NEED_BIAS
    if torch.is_grad_enabled():
        for bit, t in zip(_INPUT_BITS, (inputs, labels, weights, bias)):
            if t.requires_grad:
                needs |= bit
    return needs


def _bits(needs_input_grad):
    return sum(bit for bit, need in zip(_INPUT_BITS, needs_input_grad) if need)


def _loss_grads_backward(ctx, grad_loss, grads):
    """(inputs, labels, weights, bias) grads of a loss from the pass's
    gradients `grads` = (weights_grad, bias_grad, labels_grad, inputs_grad)."""
    x, y, w, b = ctx.saved_tensors[:4]
    missing = _bits(ctx.needs_input_grad[:4]) & ~ctx.computed & ~NEED_BIAS
    if missing:
        _, wg, bg, yg, xg = _ops.fused_loss_grads(x, y, w, b, missing | ctx.computed)
        grads = (wg, bg, yg, xg)
    wg, bg, yg, xg = grads
    need = ctx.needs_input_grad
    return (
        (grad_loss * xg).reshape(x.shape) if need[0] else None,
        (grad_loss * yg).reshape(y.shape) if need[1] else None,
        (grad_loss * wg).reshape(w.shape) if need[2] else None,
        (grad_loss * bg).reshape(b.shape) if need[3] else None,
    )


def _fused_loss_grads_setup(ctx, inputs, output):
    x, y, w, b, needs = inputs
    ctx.computed = needs | NEED_BIAS
    # The gradients are by-products, not functions autograd can see.
    ctx.mark_non_differentiable(*output[1:])
    ctx.save_for_backward(x, y, w, b, *output[1:])


def _fused_loss_grads_backward(ctx, grad_loss, *_):
    return _loss_grads_backward(ctx, grad_loss, ctx.saved_tensors[4:]) + (None,)


torch.library.register_autograd(
    "biasfit::fused_loss_grads", _fused_loss_grads_backward,
    setup_context=_fused_loss_grads_setup)


def _fused_loss_setup(ctx, inputs, output):
    x, y, w, b = inputs
    ctx.computed = NEED_BIAS
    ctx.bias_shape = b.shape
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, y, w, b, output[1])


def _fused_loss_backward(ctx, grad_loss, grad_bias_grad):
    # Only the bias gradient came from the pass; the others, if wanted, from
    # _loss_grads_backward's second pass.
    bias_grad = ctx.saved_tensors[4]
    if not any(ctx.needs_input_grad[:3]):  # the tutorial's case, every epoch: keep it short
        return None, None, None, (grad_loss * bias_grad).reshape(ctx.bias_shape)
    return _loss_grads_backward(ctx, grad_loss, (None, bias_grad, None, None))


torch.library.register_autograd(
    "biasfit::fused_loss", _fused_loss_backward, setup_context=_fused_loss_setup)


def _predict_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _predict_backward(ctx, grad_out):
    x, weights, bias = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad
    if not (need_x or need_w or need_b):
        return None, None, None
    if need_b and not (need_x or need_w):  # the bias alone: today's sum
        grad_bias = _ops.predict_bias_grad(grad_out, x, weights, bias)
        return None, None, grad_bias.reshape(bias.shape)
    needs = (NEED_INPUTS if need_x else 0) | (NEED_WEIGHTS if need_w else 0) | NEED_BIAS
    wg, bg, xg = _ops.predict_grads(grad_out, x, weights, bias, needs)
    return (xg.reshape(x.shape) if need_x else None,
            wg.reshape(weights.shape) if need_w else None,
            bg.reshape(bias.shape) if need_b else None)


torch.library.register_autograd(
    "biasfit::predict", _predict_backward, setup_context=_predict_setup)


# -- under torch.func transforms --------------------------------------------------
#
# torch.func (grad, vjp, ...) does not run register_autograd formulas of a
# custom op; an autograd.Function with setup_context it does. So under a
# transform the functional forms go through these, which call the same ops
# and scale the same one-pass gradients.

class _FusedLossFn(torch.autograd.Function):
    @staticmethod
    def forward(inputs, labels, weights, bias, needs):
        return _ops.fused_loss_grads(inputs, labels, weights, bias, needs)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _fused_loss_grads_setup(ctx, inputs, output)

    @staticmethod
    def backward(ctx, grad_loss, *_):
        return _fused_loss_grads_backward(ctx, grad_loss)


class _PredictFn(torch.autograd.Function):
    @staticmethod
    def forward(inputs, weights, bias):
        return _ops.predict(inputs, weights, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _predict_setup(ctx, inputs, output)

    @staticmethod
    def backward(ctx, grad_out):
        return _predict_backward(ctx, grad_out)


def _under_func_transform() -> bool:
    return torch._C._are_functorch_transforms_active()


# -- functional API ---------------------------------------------------------------

def predict(inputs, weights, bias):
    """y_hat = relu(w01 relu(w00 x + b00) + w11 relu(w10 x + b10) + bias).

    `weights` holds w00, b00, w01, w10, b10, w11; `bias` is a 0-d tensor.
    Differentiable with respect to every argument, also under torch.func.
    """
    if _under_func_transform():
        return _PredictFn.apply(inputs, weights, bias)
    return _ops.predict(inputs, weights, bias)


def fused_loss(inputs, labels, weights, bias):
    """Total squared error sum((y_hat - labels)^2) as a 0-d tensor, in one pass.

    The same pass computes the gradient with respect to each argument that
    requires grad (inputs, labels, weights, bias), which backward hands to
    autograd; sums run in float64 and in a fixed order (same bits for any
    thread count).
    """
    needs = needs_of(inputs, labels, weights, bias)
    if _under_func_transform():  # torch.func.grad and friends
        return _FusedLossFn.apply(inputs, labels, weights, bias, needs)[0]
    if needs == NEED_BIAS:  # the tutorial's case: the bias-only pass, as fast as ever
        return _ops.fused_loss(inputs, labels, weights, bias)[0]
    return _ops.fused_loss_grads(inputs, labels, weights, bias, needs)[0]
