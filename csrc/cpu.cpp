// CPU kernels: loops over points around network.h, sums via reduce_cpu.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "fit.h"
#include "network.h"
#include "ops.h"
#include "reduce_cpu.h"

namespace biasfit {
namespace {

constexpr int64_t kPredictGrain = int64_t(1) << 15;

template <typename T>
Weights<T> load_weights(const at::Tensor& w) {
  return Weights<T>::load(w.contiguous().data_ptr<T>());
}

template <typename T>
T load_bias(const at::Tensor& b) {
  return *b.data_ptr<T>();
}

at::Tensor predict_cpu(const at::Tensor& inputs, const at::Tensor& weights,
                       const at::Tensor& bias) {
  check_predict_args(inputs, weights, bias);
  const at::Tensor x = inputs.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "biasfit::predict", [&] {
    const Weights<scalar_t> w = load_weights<scalar_t>(weights);
    const scalar_t b = load_bias<scalar_t>(bias);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kPredictGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) op[i] = predict(xp[i], w, b);
    });
  });
  return out;
}

template <typename T>
LossGrad loss_grad_sum(const T* x, const T* y, int64_t n, const Weights<T>& w,
                       T bias, std::vector<LossGrad>& scratch) {
  return deterministic_sum(
      n, [&](int64_t i) { return point_loss_grad(x[i], y[i], w, bias); },
      scratch);
}

std::tuple<at::Tensor, at::Tensor> fused_loss_cpu(const at::Tensor& inputs,
                                                  const at::Tensor& labels,
                                                  const at::Tensor& weights,
                                                  const at::Tensor& bias) {
  check_loss_args(inputs, labels, weights, bias);
  const at::Tensor x = inputs.contiguous(), y = labels.contiguous();
  LossGrad sum{};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "biasfit::fused_loss", [&] {
    std::vector<LossGrad> scratch;
    sum = loss_grad_sum(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                        x.numel(), load_weights<scalar_t>(weights),
                        load_bias<scalar_t>(bias), scratch);
  });
  // The sums are double; the results take the data's dtype like any op.
  return {at::scalar_tensor(sum.loss, x.options()),
          at::scalar_tensor(sum.grad, x.options())};
}

at::Tensor predict_bias_grad_cpu(const at::Tensor& grad_out,
                                 const at::Tensor& inputs,
                                 const at::Tensor& weights,
                                 const at::Tensor& bias) {
  check_bias_grad_args(grad_out, inputs, weights, bias);
  const at::Tensor x = inputs.contiguous();
  const at::Tensor g = grad_out.to(x.scalar_type()).contiguous();
  double total = 0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "biasfit::predict_bias_grad",
                             [&] {
    const Weights<scalar_t> w = load_weights<scalar_t>(weights);
    const scalar_t b = load_bias<scalar_t>(bias);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    std::vector<LossGrad> scratch;
    total = deterministic_sum(x.numel(), [&](int64_t i) {
      return LossGrad{0.0, point_bias_grad(xp[i], gp[i], w, b)};
    }, scratch).grad;
  });
  return at::scalar_tensor(total, x.options());
}

FitOutputs fit_sgd_cpu(const at::Tensor& inputs, const at::Tensor& labels,
                       const at::Tensor& weights, const at::Tensor& bias,
                       double lr, double momentum, double dampening,
                       bool nesterov, double weight_decay, bool maximize,
                       int64_t epochs, double tol) {
  const FitCall call =
      prepare_fit(inputs, labels, weights, bias, lr, momentum, dampening,
                  nesterov, weight_decay, maximize, epochs, tol);
  AT_DISPATCH_FLOATING_TYPES(call.x.scalar_type(), "biasfit::fit_sgd", [&] {
    const scalar_t* xp = call.x.data_ptr<scalar_t>();
    const scalar_t* yp = call.y.data_ptr<scalar_t>();
    const Weights<scalar_t> w = load_weights<scalar_t>(call.weights);
    scalar_t* loss_out = call.losses.data_ptr<scalar_t>();
    scalar_t* bias_out = call.biases.data_ptr<scalar_t>();
    auto state = FitState<scalar_t>::start(load_bias<scalar_t>(bias), epochs);
    std::vector<LossGrad> scratch;
    while (state.status == kRunning) {
      state.end_epoch(
          loss_grad_sum(xp, yp, call.x.numel(), w, state.bias, scratch),
          call.opt, loss_out, bias_out);
    }
    *call.final_bias.data_ptr<scalar_t>() = state.bias;
    call.info.data_ptr<int64_t>()[0] = state.epoch;
    call.info.data_ptr<int64_t>()[1] = state.status;
  });
  return call.outputs();
}

}  // namespace

TORCH_LIBRARY_IMPL(biasfit, CPU, m) {
  m.impl("predict", &predict_cpu);
  m.impl("fused_loss", &fused_loss_cpu);
  m.impl("predict_bias_grad", &predict_bias_grad_cpu);
  m.impl("fit_sgd", &fit_sgd_cpu);
}

}  // namespace biasfit
