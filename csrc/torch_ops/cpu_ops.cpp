// CPU kernels as stable-ABI ops: checks (torch_ops/checks.cpp), then the torch-free
// loops of cpu/kernels.h and cpu/trainer.h.
#include "torch_ops/python_signals.h"  // first: it includes Python.h (fit_params's Ctrl-C)

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "core/adam.h"
#include "torch_ops/checks.h"
#include "cpu/grads.h"
#include "cpu/kernels.h"
#include "core/sgd.h"
#include "cpu/trainer.h"
#include "cpu/trainer_params.h"

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

// A fresh tensor of inputs' shape where a per-point gradient is asked for,
// else an empty one (the schema's outputs always exist).
Tensor per_point_grad(const Tensor& like, bool asked) {
  return asked ? new_tensor(like, like.sizes()) : new_tensor(like, {0});
}

// The seven parameter sums rounded to T: weights_grad[6] (if asked, else
// empty) and bias_grad (always: it costs nothing more).
template <typename T>
std::tuple<Tensor, Tensor> param_grad_tensors(const Tensor& like,
                                              const ParamSums& sums,
                                              bool weights) {
  Tensor wg = new_tensor(like, {weights ? kNumWeights : 0});
  if (weights) {
    for (int p = 0; p < kNumWeights; ++p) data_of<T>(wg)[p] = T(sums.grad[p]);
  }
  return {wg, scalar_tensor(like, T(sums.grad[kBiasIndex]))};
}

LossGradsOutputs fused_loss_grads_cpu(Tensor inputs, Tensor labels,
                                      Tensor weights, Tensor bias,
                                      int64_t needs) {
  check_loss_args(inputs, labels, weights, bias);
  check_needs(needs);
  const bool want_w = needs & kNeedWeights, want_y = needs & kNeedLabels,
             want_x = needs & kNeedInputs;
  if (!want_w && !want_y && !want_x) {
    // The bias alone (or nothing): fused_loss's own pass, exactly as fast.
    const LossGrad sum = checked_loss_grad_sum(inputs, labels, weights, bias);
    return dispatch_float(inputs.scalar_type(), [&](auto zero) {
      using T = decltype(zero);
      return LossGradsOutputs{scalar_tensor(inputs, T(sum.loss)),
                              new_tensor(inputs, {0}),
                              scalar_tensor(inputs, T(sum.grad)),
                              new_tensor(inputs, {0}), new_tensor(inputs, {0})};
    });
  }
  const bool strided = read_as_views(inputs, labels);
  const Tensor x = strided ? inputs : torch::stable::contiguous(inputs);
  const Tensor y = strided ? labels : torch::stable::contiguous(labels);
  Tensor dy = per_point_grad(inputs, want_y), dx = per_point_grad(inputs, want_x);
  return dispatch_float(x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const PointLossAllGrads<T> point{
        data_of<T>(x), strided ? x.stride(0) : 1,
        data_of<T>(y), strided ? y.stride(0) : 1,
        load_weights<T>(weights), load_scalar<T>(bias),
        want_y ? data_of<T>(dy) : nullptr, want_x ? data_of<T>(dx) : nullptr};
    // The parameters alone over contiguous data (every training epoch of
    // the autograd engine): the branch-free points, same sums bit for bit.
    // The parameter sums always: bias_grad is among them, and the schema
    // promises it whatever `needs` says.
    const ParamSums sums =
        !strided && !want_y && !want_x
            ? sum_param_grads(PointLossParamGrads<T>{point.x, point.y, point.w,
                                                     point.bias},
                              x.numel(), true, torch_threads())
            : sum_param_grads(point, x.numel(), true, torch_threads());
    auto [wg, bg] = param_grad_tensors<T>(x, sums, want_w);
    return LossGradsOutputs{scalar_tensor(x, T(sums.loss)), wg, bg, dy, dx};
  });
}

// fused_loss_grads's float64 sums before rounding, [loss, 6 weights, bias]:
// what a process adds to the other processes' sums.
Tensor fused_loss_grads_sums_cpu(Tensor inputs, Tensor labels, Tensor weights,
                                 Tensor bias) {
  check_loss_args(inputs, labels, weights, bias);
  const bool strided = read_as_views(inputs, labels);
  const Tensor x = strided ? inputs : torch::stable::contiguous(inputs);
  const Tensor y = strided ? labels : torch::stable::contiguous(labels);
  const ParamSums sums = dispatch_float(x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const PointLossAllGrads<T> point{
        data_of<T>(x), strided ? x.stride(0) : 1, data_of<T>(y),
        strided ? y.stride(0) : 1, load_weights<T>(weights),
        load_scalar<T>(bias), nullptr, nullptr};
    // Contiguous data: the vectorized points, the same sums bit for bit.
    return strided ? sum_param_grads(point, x.numel(), true, torch_threads())
                   : sum_param_grads(PointLossParamGrads<T>{point.x, point.y,
                                                            point.w, point.bias},
                                     x.numel(), true, torch_threads());
  });
  Tensor out = new_tensor(inputs, {1 + kNumParams}, ScalarType::Double);
  data_of<double>(out)[0] = sums.loss;
  for (int p = 0; p < kNumParams; ++p) data_of<double>(out)[1 + p] = sums.grad[p];
  return out;
}

PredictGradsOutputs predict_grads_cpu(Tensor grad_out, Tensor inputs,
                                      Tensor weights, Tensor bias,
                                      int64_t needs) {
  check_bias_grad_args(grad_out, inputs, weights, bias);
  check_needs(needs);
  const bool want_w = needs & kNeedWeights, want_x = needs & kNeedInputs;
  const Tensor x = torch::stable::contiguous(inputs);
  const Tensor g = torch::stable::contiguous(
      torch::stable::to(grad_out, x.scalar_type()));
  Tensor dx = per_point_grad(x, want_x);
  return dispatch_float(x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const PointPredictGrads<T> point{data_of<T>(g), data_of<T>(x),
                                     load_weights<T>(weights),
                                     load_scalar<T>(bias),
                                     want_x ? data_of<T>(dx) : nullptr};
    // The bias sum always: it needs the parameter sums' pass anyway.
    const ParamSums sums =
        sum_param_grads(point, x.numel(), true, torch_threads());
    auto [wg, bg] = param_grad_tensors<T>(x, sums, want_w);
    return PredictGradsOutputs{wg, bg, dx};
  });
}

FitOutputs fit_sgd_cpu(Tensor inputs, Tensor labels, Tensor weights,
                       Tensor bias, double lr, double momentum,
                       double dampening, bool nesterov, double weight_decay,
                       bool maximize, int64_t epochs, double tol,
                       double rtol, int64_t patience, double divide_by) {
  const FitCall call =
      prepare_fit(inputs, labels, weights, bias, lr, momentum, dampening,
                  nesterov, weight_decay, maximize, epochs, tol, rtol,
                  patience, divide_by);
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

FitOutputs fit_params_cpu(Tensor inputs, Tensor labels, Tensor params,
                          int64_t trained, int64_t optimizer, double lr,
                          double momentum, double dampening, bool nesterov,
                          double weight_decay, bool maximize, double beta1,
                          double beta2, double eps, bool amsgrad,
                          int64_t epochs, double tol, double rtol,
                          int64_t patience, double divide_by) {
  const ParamFitCall call = prepare_fit_params(
      inputs, labels, params, trained, optimizer, lr, momentum, dampening,
      nesterov, weight_decay, maximize, beta1, beta2, eps, amsgrad, epochs, tol,
      rtol, patience, divide_by);
  const Tensor& x = call.x;
  dispatch_float(x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    History<T> history;
    const ParamFitState<T> state =
        train_params(data_of<T>(x), data_of<T>(call.y), x.numel(),
                     data_of<T>(call.start), call.opt, torch_threads(), history,
                     {&python_signal_pending});
    const size_t seen = std::min<size_t>(history.losses.size(), size_t(epochs));
    std::memcpy(data_of<T>(call.losses), history.losses.data(), seen * sizeof(T));
    std::memcpy(data_of<T>(call.biases), history.biases.data(), seen * sizeof(T));
    std::memcpy(data_of<T>(call.final_params), state.params, sizeof(state.params));
    data_of<int64_t>(call.info)[0] = state.epoch;
    data_of<int64_t>(call.info)[1] = state.status;
    data_of<int64_t>(call.info)[2] = state.bad_param;
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

// params_step's state columns, per parameter.
enum StepState : int { kBufOrExpAvg = 0, kExpAvgSq, kMaxExpAvgSq, kSteps, kStateWidth };

std::tuple<Tensor, Tensor> params_step_cpu(
    Tensor params, Tensor grads, Tensor state, int64_t trained,
    int64_t optimizer, double lr, double momentum, double dampening,
    bool nesterov, double weight_decay, bool maximize, double beta1,
    double beta2, double eps, bool amsgrad) {
  check_params_step_args(params, grads, state, trained, optimizer);
  // fit_params's checks and options, so the step is its step.
  check_sgd_options(lr, optimizer == kSgd ? momentum : 0.0, dampening,
                    optimizer == kSgd && nesterov, weight_decay);
  if (optimizer != kSgd) check_adam_options(beta1, beta2, eps);
  const SgdOptions sgd{lr, momentum, dampening, weight_decay, nesterov,
                       maximize};
  const AdamOptions adam{lr,      beta1,    beta2, eps, weight_decay,
                         amsgrad, maximize, optimizer == kAdamW};
  const Tensor p_in = torch::stable::contiguous(params);
  const Tensor g_in = torch::stable::contiguous(grads);
  const Tensor s_in = torch::stable::contiguous(state);
  Tensor new_params = new_tensor(p_in, {kNumParams});
  Tensor new_state = new_tensor(s_in, {kNumParams, kStateWidth});
  dispatch_float(p_in.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const T* p = data_of<T>(p_in);
    const T* g = data_of<T>(g_in);
    T* out = data_of<T>(new_params);
    for (int i = 0; i < kNumParams; ++i) {
      // The state holds values of type T (exact in double) and a count.
      const double* s = data_of<double>(s_in) + kStateWidth * i;
      double* s_out = data_of<double>(new_state) + kStateWidth * i;
      std::copy(s, s + kStateWidth, s_out);
      out[i] = p[i];
      if (!((trained >> i) & 1)) continue;
      const int64_t steps = int64_t(s[kSteps]);
      if (optimizer == kSgd) {
        // torch (and the trainer) creates the momentum buffer at step 1.
        SgdState<T> st{T(s[kBufOrExpAvg]), steps > 0};
        out[i] = st.step(p[i], g[i], sgd);
        s_out[kBufOrExpAvg] = double(st.buf);
      } else {
        AdamState<T> st{T(s[kBufOrExpAvg]), T(s[kExpAvgSq]), T(s[kMaxExpAvgSq]),
                        steps};
        out[i] = st.step_param(p[i], g[i], adam);
        s_out[kBufOrExpAvg] = double(st.exp_avg);
        s_out[kExpAvgSq] = double(st.exp_avg_sq);
        s_out[kMaxExpAvgSq] = double(st.max_exp_avg_sq);
      }
      s_out[kSteps] = double(steps + 1);
    }
  });
  return {new_params, new_state};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(biasfit, CPU, m) {
  m.impl("predict", TORCH_BOX(&predict_cpu));
  m.impl("fused_loss", TORCH_BOX(&fused_loss_cpu));
  m.impl("fused_loss_sums", TORCH_BOX(&fused_loss_sums_cpu));
  m.impl("predict_bias_grad", TORCH_BOX(&predict_bias_grad_cpu));
  m.impl("fused_loss_grads", TORCH_BOX(&fused_loss_grads_cpu));
  m.impl("fused_loss_grads_sums", TORCH_BOX(&fused_loss_grads_sums_cpu));
  m.impl("predict_grads", TORCH_BOX(&predict_grads_cpu));
  m.impl("fit_sgd", TORCH_BOX(&fit_sgd_cpu));
  m.impl("fit_params", TORCH_BOX(&fit_params_cpu));
  m.impl("sgd_step", TORCH_BOX(&sgd_step_cpu));
  m.impl("params_step", TORCH_BOX(&params_step_cpu));
}

}  // namespace biasfit
