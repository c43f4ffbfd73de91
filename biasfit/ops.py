"""Python side of the native ops: fake kernels, autograd, functional wrappers.

The schemas live in csrc/torch_ops/ops.cpp and the input checks in csrc/torch_ops/checks.cpp; here the ops get what
torch.compile and autograd need, registered with torch.library so compiled
graphs see them as single nodes with no graph break.
"""
import torch
from torch.autograd import forward_ad

from . import _native  # noqa: F401  (loads torch.ops.biasfit)
from . import derivatives

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


def _savable(t):
    """t, or a copy of it if it is an inference tensor, which autograd may
    not save: inference-mode data trains as in plain PyTorch."""
    return t.clone() if t.is_inference() else t


def _building_graph(*tensors) -> bool:
    """Whether a backward must be differentiable: grad mode is on and
    something it differentiates requires grad (create_graph=True, or under
    torch.func.grad, which always builds a graph), or a transform may carry
    tangents through it (forward-over-reverse: jacfwd of jacrev, hessian)."""
    return (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)) or under_transform()


def _detached(*tensors):
    """The tensors' values for a native call: an op's register_autograd
    kernel refuses torch.func's tensors, and the values are all it needs."""
    return tuple(t.detach() for t in tensors)


def _with_graph(native, graph):
    """native's values, exactly, with graph's derivatives: a backward that
    builds a graph returns the native pass's gradients (the same bits as
    without a graph), differentiable as derivatives.py's ops. g.detach() - g
    is exactly +0 for finite g (and made 0 where g is inf or NaN), and
    v - (+0) is v, -0 included."""
    return tuple(None if n is None else n.detach() - (g.detach() - g).nan_to_num(0.0, 0.0, 0.0)
                 for n, g in zip(native, graph))


def _loss_grads_backward(ctx, grad_loss, grads):
    """(inputs, labels, weights, bias) grads of a loss from the pass's
    gradients `grads` = (weights_grad, bias_grad, labels_grad, inputs_grad)."""
    x, y, w, b = ctx.saved_tensors[:4]
    graph = _building_graph(grad_loss, x, y, w, b)
    missing = _bits(ctx.needs_input_grad[:4]) & ~ctx.computed
    if missing:
        # Values only (a graph comes from derivatives.py): detached, the op
        # runs under torch.func too.
        _, wg, bg, yg, xg = _ops.fused_loss_grads(*_detached(x, y, w, b),
                                                  missing | ctx.computed)
        grads = (wg, bg, yg, xg)
    wg, bg, yg, xg = grads
    need = ctx.needs_input_grad
    native = (
        (grad_loss * xg).reshape(x.shape) if need[0] else None,
        (grad_loss * yg).reshape(y.shape) if need[1] else None,
        (grad_loss * wg).reshape(w.shape) if need[2] else None,
        (grad_loss * bg).reshape(b.shape) if need[3] else None,
    )
    if graph:
        return _with_graph(native, derivatives.loss_vjp(grad_loss, x, y, w, b, need[:4]))
    return native


def _save_loss_inputs(ctx, x, y, w, b, *more):
    ctx.save_for_backward(_savable(x), _savable(y), _savable(w), _savable(b), *more)


def _fused_loss_grads_setup(ctx, inputs, output):
    x, y, w, b, needs = inputs
    ctx.computed = needs | NEED_BIAS
    # The gradients are by-products: differentiate fused_loss's loss (with
    # create_graph=True) for their derivatives.
    ctx.mark_non_differentiable(*output[1:])
    _save_loss_inputs(ctx, x, y, w, b, *output[1:])


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
    _save_loss_inputs(ctx, x, y, w, b, output[1])


def _fused_loss_backward(ctx, grad_loss, grad_bias_grad):
    # Only the bias gradient came from the pass; the others, if wanted, from
    # _loss_grads_backward's second pass.
    bias_grad = ctx.saved_tensors[4]
    if not any(ctx.needs_input_grad[:3]) and not (torch.is_grad_enabled() or under_transform()):
        # the tutorial's case, every epoch: keep it short
        return None, None, None, (grad_loss * bias_grad).reshape(ctx.bias_shape)
    return _loss_grads_backward(ctx, grad_loss, (None, bias_grad, None, None))


torch.library.register_autograd(
    "biasfit::fused_loss", _fused_loss_backward, setup_context=_fused_loss_setup)


def _predict_setup(ctx, inputs, output):
    ctx.save_for_backward(*map(_savable, inputs))


def _predict_backward(ctx, grad_out):
    x, weights, bias = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad
    if not (need_x or need_w or need_b):
        return None, None, None
    graph = _building_graph(grad_out, x, weights, bias)
    args = _detached(grad_out, x, weights, bias)
    if need_b and not (need_x or need_w):  # the bias alone: today's sum
        native = (None, None, _ops.predict_bias_grad(*args).reshape(bias.shape))
    else:
        needs = (NEED_INPUTS if need_x else 0) | (NEED_WEIGHTS if need_w else 0) | NEED_BIAS
        wg, bg, xg = _ops.predict_grads(*args, needs)
        native = (xg.reshape(x.shape) if need_x else None,
                  wg.reshape(weights.shape) if need_w else None,
                  bg.reshape(bias.shape) if need_b else None)
    if graph:
        return _with_graph(native, derivatives.predict_vjp(grad_out, x, weights, bias,
                                                              ctx.needs_input_grad))
    return native


torch.library.register_autograd(
    "biasfit::predict", _predict_backward, setup_context=_predict_setup)


# The other ops are backward passes, sums for other processes and whole
# fits: numbers, not functions autograd differentiates. Their outputs never
# require grad (differentiate predict or fused_loss instead), rather than
# carry PyTorch's "no autograd kernel" warning.
def _outputs_not_differentiable(ctx, inputs, output):
    ctx.mark_non_differentiable(*(output if isinstance(output, tuple) else (output,)))


def _never_called(ctx, *grads):
    raise RuntimeError("biasfit: this op's outputs are not differentiable")


for _name in ("fused_loss_sums", "fused_loss_grads_sums", "predict_bias_grad",
              "predict_grads", "fit_sgd", "fit_params"):
    torch.library.register_autograd(f"biasfit::{_name}", _never_called,
                                    setup_context=_outputs_not_differentiable)


# -- under torch.func transforms and forward-mode AD -------------------------------
#
# torch.func (grad, vjp, jvp, vmap, ...) does not run register_autograd
# formulas of a custom op, nor does forward-mode AD; an autograd.Function
# with setup_context they do. So under a transform the functional forms go
# through these, which call the same ops and scale the same one-pass
# gradients; jvp is derivatives.py's, and vmap runs the ops' vmap rules.

class _FusedLossFn(torch.autograd.Function):
    """The loss alone: one output, so torch.func's generated vmap rule holds
    also under grad of vmap (it cannot take the None gradients of the
    by-products fused_loss_grads returns). Its backward makes the one pass
    of the gradients asked for; vmap runs the ops' rules
    (biasfit/vmap_rules.py)."""
    generate_vmap_rule = True

    # The ops see values only (_detached), as every native call here.
    @staticmethod
    def forward(inputs, labels, weights, bias):
        return _ops.fused_loss(*_detached(inputs, labels, weights, bias))[0]

    # Only the autograd.Functions have a jvp, so only they save for it.
    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.computed = 0
        _save_loss_inputs(ctx, *inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx, grad_loss):
        return _loss_grads_backward(ctx, grad_loss, (None,) * 4)

    @staticmethod
    def jvp(ctx, tx, ty, tw, tb):
        return derivatives.loss_jvp(*ctx.saved_tensors[:4], tx, ty, tw, tb)


class _PredictFn(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(inputs, weights, bias):
        return _ops.predict(*_detached(inputs, weights, bias))

    @staticmethod
    def setup_context(ctx, inputs, output):
        _predict_setup(ctx, inputs, output)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx, grad_out):
        return _predict_backward(ctx, grad_out)

    @staticmethod
    def jvp(ctx, tx, tw, tb):
        return derivatives.predict_jvp(*ctx.saved_tensors, tx, tw, tb)


def under_transform() -> bool:
    """Whether a torch.func transform or forward-mode AD is active."""
    return torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0


# torch.compile of a torch.func transform: Dynamo inlines an
# autograd.Function's forward there and differentiates what it calls, so the
# forward itself must be differentiable: the op's values (detached: its
# register_autograd kernel refuses the transform's tensors,
# pytorch/pytorch#168393) with derivatives.py's graph.

def _compiled_predict(inputs, weights, bias):
    value = _ops.predict(*_detached(inputs, weights, bias))
    return _with_graph((value,), (derivatives.predict(inputs, weights, bias),))[0]


def _compiled_loss(inputs, labels, weights, bias):
    value = _ops.fused_loss(*_detached(inputs, labels, weights, bias))[0]
    return _with_graph((value,), (derivatives.loss(inputs, labels, weights, bias),))[0]


# -- autocast and low precision ----------------------------------------------------
#
# The kernels compute in float32 or float64 (sums in float64). Under autocast
# the ops run in float32, as autocast runs mse_loss: a bfloat16 or float16
# producer (an nn.Linear under torch.autocast) feeds them upcast. Outside
# autocast, float16/bfloat16 inputs are computed in float32 and the outputs
# returned in inputs' dtype (the functional forms and BasicNN; the raw ops
# take float32 and float64 only).

for _name in ("predict", "fused_loss", "fused_loss_grads", "fused_loss_sums",
              "fused_loss_grads_sums", "predict_bias_grad", "predict_grads"):
    for _device in ("cpu", "cuda"):
        torch.library.register_autocast(f"biasfit::{_name}", _device, torch.float32)

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _in_float32(fn, inputs, *rest):
    out = fn(inputs.float(), *(t.float() for t in rest))
    return out.to(inputs.dtype) if inputs.dtype in _LOW_PRECISION else out


# -- functional API ---------------------------------------------------------------

def predict(inputs, weights, bias):
    """y_hat = relu(w01 relu(w00 x + b00) + w11 relu(w10 x + b10) + bias).

    `weights` holds w00, b00, w01, w10, b10, w11; `bias` is a 0-d tensor.
    Differentiable with respect to every argument, also under torch.func.
    """
    if inputs.dtype in _LOW_PRECISION or bias.dtype in _LOW_PRECISION:
        return _in_float32(predict, inputs, weights, bias)
    if under_transform():
        if torch.compiler.is_compiling():
            return _compiled_predict(inputs, weights, bias)
        return _PredictFn.apply(inputs, weights, bias)
    return _ops.predict(inputs, weights, bias)


def fused_loss(inputs, labels, weights, bias):
    """Total squared error sum((y_hat - labels)^2) as a 0-d tensor, in one pass.

    The same pass computes the gradient with respect to each argument that
    requires grad (inputs, labels, weights, bias), which backward hands to
    autograd; sums run in float64 and in a fixed order (same bits for any
    thread count).
    """
    if inputs.dtype in _LOW_PRECISION or bias.dtype in _LOW_PRECISION:
        return _in_float32(fused_loss, inputs, labels, weights, bias)
    if under_transform():  # torch.func.grad and friends
        if torch.compiler.is_compiling():
            return _compiled_loss(inputs, labels, weights, bias)
        return _FusedLossFn.apply(inputs, labels, weights, bias)
    needs = needs_of(inputs, labels, weights, bias)
    if needs == NEED_BIAS:  # the tutorial's case: the bias-only pass, as fast as ever
        return _ops.fused_loss(inputs, labels, weights, bias)[0]
    return _ops.fused_loss_grads(inputs, labels, weights, bias, needs)[0]


from . import vmap_rules  # noqa: E402,F401  (torch.func.vmap of the ops)
