"""Python side of the native ops: fake kernels, autograd, functional wrappers.

The schemas live in csrc/ops.cpp and the input checks in csrc/checks.cpp; here the ops get what
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
# with csrc/checks.cpp's wording, rather than hand back uninitialised memory
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
                  nesterov, weight_decay, maximize, epochs, tol):
    _one_device(inputs=inputs, labels=labels, weights=weights, bias=bias)
    return (inputs.new_empty(()), inputs.new_empty((epochs,)),
            inputs.new_empty((epochs,)),
            inputs.new_empty((2,), dtype=torch.int64))


@torch.library.register_fake("biasfit::sgd_step")
def _sgd_step_fake(param, grad, momentum_buffer, lr, momentum, dampening,
                   nesterov, weight_decay, maximize):
    _one_device(param=param, grad=grad, momentum_buffer=momentum_buffer)
    return torch.empty_like(param), torch.empty_like(param)


# -- autograd: only final_bias is trained; the weights are frozen ---------------

def _fused_loss_setup(ctx, inputs, output):
    ctx.bias_shape = inputs[3].shape
    # bias_grad is a by-product, not a function of bias that autograd can see.
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])


def _fused_loss_backward(ctx, grad_loss, grad_bias_grad):
    (bias_grad,) = ctx.saved_tensors
    grad_bias = None
    if ctx.needs_input_grad[3]:
        grad_bias = (grad_loss * bias_grad).reshape(ctx.bias_shape)
    return None, None, None, grad_bias


torch.library.register_autograd(
    "biasfit::fused_loss", _fused_loss_backward, setup_context=_fused_loss_setup)


def _predict_setup(ctx, inputs, output):
    x, weights, bias = inputs
    ctx.bias_shape = bias.shape
    ctx.save_for_backward(x, weights, bias)


def _predict_backward(ctx, grad_out):
    x, weights, bias = ctx.saved_tensors
    grad_bias = None
    if ctx.needs_input_grad[2]:
        grad_bias = _ops.predict_bias_grad(grad_out, x, weights, bias)
        grad_bias = grad_bias.reshape(ctx.bias_shape)
    return None, None, grad_bias


torch.library.register_autograd(
    "biasfit::predict", _predict_backward, setup_context=_predict_setup)


# -- functional API ---------------------------------------------------------------

def predict(inputs, weights, bias):
    """y_hat = relu(w01 relu(w00 x + b00) + w11 relu(w10 x + b10) + bias).

    `weights` holds w00, b00, w01, w10, b10, w11; `bias` is a 0-d tensor.
    Differentiable with respect to `bias`.
    """
    return _ops.predict(inputs, weights, bias)


def fused_loss(inputs, labels, weights, bias):
    """Total squared error sum((y_hat - labels)^2) as a 0-d tensor, in one pass.

    The same pass computes d(loss)/d(bias), which backward hands to autograd;
    sums run in float64 and in a fixed order (same bits for any thread count).
    """
    loss, _ = _ops.fused_loss(inputs, labels, weights, bias)
    return loss
