// CPU kernels as stable-ABI ops: checks (checks.cpp), then the torch-free
// loops of kernels_cpu.h and trainer_cpu.h.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "checks.h"
#include "kernels_cpu.h"
#include "trainer_cpu.h"

namespace biasfit {
namespace {

using namespace cpu;

// torch's intra-op thread count (torch.set_num_threads): the sums' bits do
// not depend on it, only their speed.
int torch_threads() { return int(torch::stable::get_num_threads()); }

template <typename T>
Weights<T> load_weights(const Tensor& w) {
  return Weights<T>::load(data_of<T>(torch::stable::contiguous(w)));
}

template <typename T>
T load_scalar(const Tensor& t) {
  return *static_cast<const T*>(t.const_data_ptr());
}

template <typename T>
Tensor scalar_tensor(const Tensor& like, T value) {
  Tensor out = new_tensor(like, {});
  *data_of<T>(out) = value;
  return out;
}

Tensor predict_cpu(Tensor inputs, Tensor weights, Tensor bias) {
  check_predict_args(inputs, weights, bias);
  const Tensor x = torch::stable::contiguous(inputs);
  Tensor out = new_tensor(x, x.sizes());
  dispatch_float(x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const Weights<T> w = load_weights<T>(weights);
    const T b = load_scalar<T>(bias);
    map_points(data_of<T>(x), data_of<T>(out), x.numel(), torch_threads(),
               [&](T xi) { return predict(xi, w, b); });
  });
  return out;
}

// fused_loss's double sums, before any rounding to the data's dtype.
LossGrad checked_loss_grad_sum(const Tensor& inputs, const Tensor& labels,
                               const Tensor& weights, const Tensor& bias) {
  check_loss_args(inputs, labels, weights, bias);
  // Contiguous data takes the vectorized path; 1-D views are read in place
  // (an expanded tensor of 2^31+ elements costs no memory); anything else is
  // made contiguous first.
  const bool strided = read_as_views(inputs, labels);
  const Tensor x = strided ? inputs : torch::stable::contiguous(inputs);
  const Tensor y = strided ? labels : torch::stable::contiguous(labels);
  return dispatch_float(x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const Weights<T> w = load_weights<T>(weights);
    const T b = load_scalar<T>(bias);
    const T* xp = data_of<T>(x);
    const T* yp = data_of<T>(y);
    return strided
        ? sum_points(PointLossStrided<T>{xp, x.stride(0), yp, y.stride(0), w, b},
                     x.numel(), torch_threads())
        : sum_points(PointLoss<T>{xp, yp, w, b}, x.numel(), torch_threads());
  });
}

std::tuple<Tensor, Tensor> fused_loss_cpu(Tensor inputs, Tensor labels,
                                          Tensor weights, Tensor bias) {
  const LossGrad sum = checked_loss_grad_sum(inputs, labels, weights, bias);
  // The sums are double; the results take the data's dtype like any op (a
  // float32 sum past FLT_MAX becomes inf, which fit reports).
  return dispatch_float(inputs.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    return std::tuple<Tensor, Tensor>{scalar_tensor(inputs, T(sum.loss)),
                                      scalar_tensor(inputs, T(sum.grad))};
  });
}

Tensor fused_loss_sums_cpu(Tensor inputs, Tensor labels, Tensor weights,
                           Tensor bias) {
  const LossGrad sum = checked_loss_grad_sum(inputs, labels, weights, bias);
  Tensor out = new_tensor(inputs, {2}, ScalarType::Double);
  data_of<double>(out)[0] = sum.loss;
  data_of<double>(out)[1] = sum.grad;
  return out;
}

Tensor predict_bias_grad_cpu(Tensor grad_out, Tensor inputs, Tensor weights,
                             Tensor bias) {
  check_bias_grad_args(grad_out, inputs, weights, bias);
  const Tensor x = torch::stable::contiguous(inputs);
  const Tensor g = torch::stable::contiguous(
      torch::stable::to(grad_out, x.scalar_type()));
  return dispatch_float(x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const PointBiasGrad<T> point{data_of<T>(g), data_of<T>(x),
                                 load_weights<T>(weights), load_scalar<T>(bias)};
    return scalar_tensor(x, T(sum_points(point, x.numel(), torch_threads()).grad));
  });
}

FitOutputs fit_sgd_cpu(Tensor inputs, Tensor labels, Tensor weights,
                       Tensor bias, double lr, double momentum,
                       double dampening, bool nesterov, double weight_decay,
                       bool maximize, int64_t epochs, double tol) {
  const FitCall call =
      prepare_fit(inputs, labels, weights, bias, lr, momentum, dampening,
                  nesterov, weight_decay, maximize, epochs, tol);
  dispatch_float(call.x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    History<T> history;
    const FitState<T> state =
        train(data_of<T>(call.x), data_of<T>(call.y), call.x.numel(),
              load_weights<T>(call.weights), load_scalar<T>(bias), call.opt,
              torch_threads(), history);
    // The history holds every epoch evaluated, the outputs room for all.
    const size_t seen = std::min<size_t>(history.losses.size(), size_t(epochs));
    std::memcpy(data_of<T>(call.losses), history.losses.data(), seen * sizeof(T));
    std::memcpy(data_of<T>(call.biases), history.biases.data(), seen * sizeof(T));
    *data_of<T>(call.final_bias) = state.bias;
    data_of<int64_t>(call.info)[0] = state.epoch;
    data_of<int64_t>(call.info)[1] = state.status;
  });
  return call.outputs();
}

std::tuple<Tensor, Tensor> sgd_step_cpu(Tensor param, Tensor grad,
                                        std::optional<Tensor> momentum_buffer,
                                        double lr, double momentum,
                                        double dampening, bool nesterov,
                                        double weight_decay, bool maximize) {
  check_sgd_step_args(param, grad, momentum_buffer);
  check_sgd_options(lr, momentum, dampening, nesterov, weight_decay);
  const SgdOptions opt{lr, momentum, dampening, weight_decay, nesterov,
                       maximize};
  return dispatch_float(param.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const bool has_buf = momentum_buffer.has_value();
    SgdState<T> state{has_buf ? load_scalar<T>(*momentum_buffer) : T(0),
                      has_buf};
    const T p = state.step(load_scalar<T>(param), load_scalar<T>(grad), opt);
    Tensor new_param = new_tensor(param, param.sizes());
    Tensor new_buf = new_tensor(param, param.sizes());
    *data_of<T>(new_param) = p;
    *data_of<T>(new_buf) = state.buf;
    return std::tuple<Tensor, Tensor>{new_param, new_buf};
  });
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(biasfit, CPU, m) {
  m.impl("predict", TORCH_BOX(&predict_cpu));
  m.impl("fused_loss", TORCH_BOX(&fused_loss_cpu));
  m.impl("fused_loss_sums", TORCH_BOX(&fused_loss_sums_cpu));
  m.impl("predict_bias_grad", TORCH_BOX(&predict_bias_grad_cpu));
  m.impl("fit_sgd", TORCH_BOX(&fit_sgd_cpu));
  m.impl("sgd_step", TORCH_BOX(&sgd_step_cpu));
}

}  // namespace biasfit
