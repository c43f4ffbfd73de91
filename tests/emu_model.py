"""A sequential NumPy model of the CUDA kernels' documented summing order
(csrc/cuda/reduce.cuh) and of the trainer's epoch (csrc/core/fit.h, csrc/core/sgd.h),
written from the comments, not the code: what the emulated kernels must
equal bit for bit.

Per point, core/network.h's math in the data's dtype (NumPy rounds each float32
operation to float32, as the kernels do); sums in float64:
  - points go in groups of VEC = 16 bytes; grid_blocks(n) blocks of 256
    threads; thread t adds groups t, t + S, t + 2S, ... (S = threads in the
    grid), points in index order, starting from 0.0;
  - a warp combines its lanes by shuffles down by 16, 8, 4, 2, 1 (lane i
    adds lane i + d; past the warp a lane adds its own value), lane 0 holds
    the sum; a block puts its 8 warp sums in lanes 0..7 of warp 0 (zeros
    above) and does the same tree;
  - the partials, one per block in block order, are summed by one block:
    thread t adds partials t, t + 256, ... from 0.0, then the same trees.
"""
import numpy as np

THREADS, WARP, MAX_BLOCKS, GROUPS_PER_THREAD = 256, 32, 4096, 4
WARPS = THREADS // WARP


def vec(dtype):
    return 16 // np.dtype(dtype).itemsize


def num_groups(n, dtype):
    return -(-n // vec(dtype))


def grid_blocks(n, dtype):
    per_block = THREADS * GROUPS_PER_THREAD
    return int(min(max(-(-num_groups(n, dtype) // per_block), 1), MAX_BLOCKS))


def fits_one_block(n, dtype):
    return num_groups(n, dtype) <= THREADS * GROUPS_PER_THREAD


def relu(z):
    return np.where(z < 0, z.dtype.type(0), z)  # NaN and -0 pass through


def hidden(x, w):
    w00, b00, w01, w10, b10, w11 = (x.dtype.type(v) for v in w)
    return relu(x * w00 + b00) * w01 + relu(x * w10 + b10) * w11


def predict(x, w, bias):
    return relu(hidden(x, w) + x.dtype.type(bias))


def point_loss_grad(x, y, w, bias):
    z = hidden(x, w) + x.dtype.type(bias)
    r = relu(z) - y
    rd = r.astype(np.float64)
    return rd * rd, 2.0 * np.where(z <= 0, x.dtype.type(0), r).astype(np.float64)


def point_bias_grad(x, g, w, bias):
    return np.where(hidden(x, w) + x.dtype.type(bias) <= 0, 0, g).astype(np.float64)


def warp_tree(v):
    """Lane 0 of the shuffle-down tree over the last axis (32 lanes)."""
    for d in (16, 8, 4, 2, 1):
        out = v + v  # lanes past the warp add their own value
        out[..., :WARP - d] = v[..., :WARP - d] + v[..., d:]
        v = out
    return v[..., 0]


def block_tree(v):
    """block_sum over the last axis (256 threads, in thread order)."""
    warps = warp_tree(v.reshape(v.shape[:-1] + (WARPS, WARP)))
    lanes = np.zeros(v.shape[:-1] + (WARP,))
    lanes[..., :WARPS] = warps
    return warp_tree(lanes)


def sequential(columns):
    """Adds the columns left to right from 0.0, one row per thread."""
    acc = np.zeros(columns.shape[0])
    for j in range(columns.shape[1]):
        acc = acc + columns[:, j]
    return acc


def grid_sum(values, dtype):
    """The kernels' sum of per-point float64 `values` (n of them)."""
    n = values.size
    v, blocks = vec(dtype), grid_blocks(n, dtype)
    threads = blocks * THREADS
    rounds = -(-num_groups(n, dtype) // threads)
    # idx[t, j, k]: point k of thread t's j-th group; past n adds nothing
    # (0.0 added to a sum that never is -0 changes no bit).
    t = np.arange(threads)[:, None, None]
    idx = (t + np.arange(rounds)[None, :, None] * threads) * v + np.arange(v)
    padded = np.concatenate([values, [0.0]])
    per_thread = sequential(padded[np.minimum(idx, n)].reshape(threads, -1))
    partials = block_tree(per_thread.reshape(blocks, THREADS))
    cols = -(-blocks // THREADS)
    finish = np.zeros(cols * THREADS)
    finish[:blocks] = partials
    return float(block_tree(sequential(finish.reshape(cols, THREADS).T)))


def fused_loss_sums(x, y, w, bias):
    loss, grad = point_loss_grad(x, y, w, bias)
    return grid_sum(loss, x.dtype), grid_sum(grad, x.dtype)


# -- every gradient (csrc/core/network.h's "every gradient", cuda/kernels_grads.cuh)
#
# Per point, the forward in the data's dtype T: a0 = x w00 + b00,
# a1 = x w10 + b10, h0 = relu(a0), h1 = relu(a1), z = (h0 w01 + h1 w11) + bias.
# The derivatives in float64 from those values, with g = d(out)/dz (0 where
# z <= 0, PyTorch's relu backward: a NaN z passes): d0 = g w01 (0 where
# a0 <= 0), d1 = g w11 (0 where a1 <= 0);
# parameters [d0 x, d0, g h0, d1 x, d1, g h1, g]; d/dx = d0 w00 + d1 w10,
# rounded to T. For the loss, r = relu(z) - y in T, g = 2 r, d/dy = -2 r in T.
# A sum of several values (the loss and the seven parameter gradients) adds
# each value on its own in grid_sum's order.

def _forward(x, w, bias):
    T = x.dtype.type
    w00, b00, w01, w10, b10, w11 = (T(v) for v in w)
    a0, a1 = x * w00 + b00, x * w10 + b10
    h0, h1 = relu(a0), relu(a1)
    return a0, a1, h0, h1, (h0 * w01 + h1 * w11) + T(bias)


def _backward(x, w, a0, a1, h0, h1, g):
    """(7 parameter derivatives as rows, d/dx in float64) from g = d(out)/dz."""
    w00, b00, w01, w10, b10, w11 = (float(x.dtype.type(v)) for v in w)
    d0 = np.where(a0 <= 0, 0.0, g * w01)
    d1 = np.where(a1 <= 0, 0.0, g * w11)
    xd = x.astype(np.float64)
    params = np.stack([d0 * xd, d0, g * h0.astype(np.float64), d1 * xd, d1,
                       g * h1.astype(np.float64), g])
    return params, d0 * w00 + d1 * w10


def point_loss_all_grads(x, y, w, bias):
    """(loss, params[7, n], dy, dx) per point: the loss and parameter
    derivatives in float64, dy and dx in the data's dtype."""
    a0, a1, h0, h1, z = _forward(x, w, bias)
    rd = (relu(z) - y).astype(np.float64)
    g = np.where(z <= 0, 0.0, 2.0 * rd)
    params, dx = _backward(x, w, a0, a1, h0, h1, g)
    return rd * rd, params, (-2.0 * rd).astype(x.dtype), dx.astype(x.dtype)


def point_predict_all_grads(x, grad_out, w, bias):
    """(params[7, n], dx) of grad_out * y_hat per point."""
    a0, a1, h0, h1, z = _forward(x, w, bias)
    g = np.where(z <= 0, 0.0, grad_out.astype(np.float64))
    params, dx = _backward(x, w, a0, a1, h0, h1, g)
    return params, dx.astype(x.dtype)


def loss_grads_sums(x, y, w, bias):
    """fused_loss_grads_sums: [loss, 6 weight grads, bias grad], float64."""
    loss, params, _, _ = point_loss_all_grads(x, y, w, bias)
    return [grid_sum(loss, x.dtype)] + [grid_sum(p, x.dtype) for p in params]


def predict_grads_sums(x, grad_out, w, bias):
    """predict_grads's 7 sums [6 weight grads, bias grad], float64."""
    params, _ = point_predict_all_grads(x, grad_out, w, bias)
    return [grid_sum(p, x.dtype) for p in params]


def sgd_step(state, bias, grad, lr, momentum, dampening, nesterov, weight_decay,
             maximize):
    """csrc/core/sgd.h, in the parameter's type T (each hyperparameter rounded to T)."""
    T = type(bias)
    if maximize:
        grad = -grad
    if weight_decay != 0:
        grad = grad + T(weight_decay) * bias
    if momentum != 0:
        if state.get("buf") is None:
            state["buf"] = grad
        else:
            state["buf"] = state["buf"] * T(momentum) + T(1 - dampening) * grad
        grad = grad + T(momentum) * state["buf"] if nesterov else state["buf"]
    return bias + T(-lr) * grad


def fit(x, y, w, bias, lr=0.1, momentum=0.0, dampening=0.0, nesterov=False,
        weight_decay=0.0, maximize=False, epochs=100, tol=1e-4):
    """fit_sgd's outputs (final bias, losses, biases, [epoch, status]) by
    csrc/core/fit.h's end of an epoch over grid sums."""
    T = x.dtype.type
    bias = T(bias)
    losses, biases = np.zeros(epochs, x.dtype), np.zeros(epochs, x.dtype)
    state, epoch, status = {}, 0, 0 if epochs > 0 else 2
    with np.errstate(all="ignore"):
        while status == 0:
            loss_sum, grad_sum = fused_loss_sums(x, y, w, bias)
            loss = T(loss_sum)
            losses[epoch], biases[epoch] = loss, bias
            if not np.isfinite(loss):
                status = 3
                break
            if float(loss) < tol:
                status = 1
                break
            bias = sgd_step(state, bias, T(grad_sum), lr, momentum, dampening,
                            nesterov, weight_decay, maximize)
            if not np.isfinite(bias):
                status = 4
                break
            epoch += 1
            if epoch == epochs:
                status = 2
    return bias, losses, biases, np.array([epoch, status])
