// The batched ops on the CPU (torch.func.vmap's work, biasfit/vmap_rules.py):
// checks (torch_ops/checks.cpp), then the torch-free loops of cpu/batched.h.
// Each fit k's results are the unbatched op's on row k, bit for bit.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include "cpu/batched.h"
#include "torch_ops/checks.h"

namespace biasfit {
namespace {

using namespace cpu;

int torch_threads() { return int(torch::stable::get_num_threads()); }

// The checked arguments as contiguous tensors, and the batch's size.
struct BatchTensors {
  Tensor x, y, g, w, b;
  int64_t k, n;
  bool has_y, has_g;

  BatchTensors(const Tensor& inputs, const Tensor* labels, const Tensor* grad_out,
               const Tensor& weights, const Tensor& bias)
      : k(check_batched_args(inputs, labels, grad_out, weights, bias)),
        n(inputs.size(1)),
        has_y(labels != nullptr),
        has_g(grad_out != nullptr) {
    x = torch::stable::contiguous(inputs);
    if (has_y) y = torch::stable::contiguous(*labels);
    // grad_out's dtype is converted, as the unbatched ops do (autograd may
    // hand another one).
    if (has_g) g = torch::stable::contiguous(torch::stable::to(*grad_out, x.scalar_type()));
    w = torch::stable::contiguous(weights);
    b = torch::stable::contiguous(bias);
  }

  // Row k of a [rows, width] argument: its own row, or the shared row 0.
  static int64_t step(const Tensor& t, int64_t width) {
    return t.size(0) == 1 ? 0 : width;
  }

  template <typename T>
  Batch<T> rows() const {
    Batch<T> a;
    a.x = data_of<T>(x);
    a.x_step = step(x, n);
    if (has_y) {
      a.y = data_of<T>(y);
      a.y_step = step(y, n);
    }
    if (has_g) {
      a.g = data_of<T>(g);
      a.g_step = step(g, n);
    }
    a.w = data_of<T>(w);
    a.w_step = step(w, kNumWeights);
    a.b = data_of<T>(b);
    a.b_step = step(b, 1);
    a.k = k;
    a.n = n;
    return a;
  }

  Tensor out(std::initializer_list<int64_t> sizes) const {
    return new_tensor(x, torch::headeronly::IntHeaderOnlyArrayRef(sizes));
  }
  Tensor out_double(std::initializer_list<int64_t> sizes) const {
    return new_tensor(x, torch::headeronly::IntHeaderOnlyArrayRef(sizes),
                      ScalarType::Double);
  }
};

Tensor predict_batched_cpu(Tensor inputs, Tensor weights, Tensor bias) {
  const BatchTensors t(inputs, nullptr, nullptr, weights, bias);
  Tensor out = t.out({t.k, t.n});
  dispatch_float(t.x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    batched_predict(t.rows<T>(), data_of<T>(out), torch_threads());
  });
  return out;
}

std::vector<LossGrad> loss_sums(const BatchTensors& t) {
  std::vector<LossGrad> sums(size_t(t.k));
  dispatch_float(t.x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    batched_loss(t.rows<T>(), torch_threads(), sums.data());
  });
  return sums;
}

std::tuple<Tensor, Tensor> fused_loss_batched_cpu(Tensor inputs, Tensor labels,
                                                  Tensor weights, Tensor bias) {
  const BatchTensors t(inputs, &labels, nullptr, weights, bias);
  const std::vector<LossGrad> sums = loss_sums(t);
  Tensor loss = t.out({t.k}), grad = t.out({t.k});
  dispatch_float(t.x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    for (int64_t k = 0; k < t.k; ++k) {
      data_of<T>(loss)[k] = T(sums[k].loss);
      data_of<T>(grad)[k] = T(sums[k].grad);
    }
  });
  return {loss, grad};
}

Tensor fused_loss_sums_batched_cpu(Tensor inputs, Tensor labels, Tensor weights,
                                   Tensor bias) {
  const BatchTensors t(inputs, &labels, nullptr, weights, bias);
  const std::vector<LossGrad> sums = loss_sums(t);
  Tensor out = t.out_double({t.k, 2});
  for (int64_t k = 0; k < t.k; ++k) {
    data_of<double>(out)[2 * k] = sums[k].loss;
    data_of<double>(out)[2 * k + 1] = sums[k].grad;
  }
  return out;
}

Tensor predict_bias_grad_batched_cpu(Tensor grad_out, Tensor inputs,
                                     Tensor weights, Tensor bias) {
  const BatchTensors t(inputs, nullptr, &grad_out, weights, bias);
  Tensor out = t.out({t.k});
  dispatch_float(t.x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    std::vector<LossGrad> sums(size_t(t.k));
    batched_bias_grad(t.rows<T>(), torch_threads(), sums.data());
    for (int64_t k = 0; k < t.k; ++k) data_of<T>(out)[k] = T(sums[k].grad);
  });
  return out;
}

// The seven parameter sums rounded to T: weights_grad [k, 6] (if asked, else
// [k, 0]) and bias_grad [k].
template <typename T>
std::tuple<Tensor, Tensor> param_grads(const BatchTensors& t,
                                       const std::vector<ParamSums>& sums,
                                       bool weights) {
  Tensor wg = t.out({t.k, weights ? kNumWeights : 0}), bg = t.out({t.k});
  for (int64_t k = 0; k < t.k; ++k) {
    if (weights) {
      for (int p = 0; p < kNumWeights; ++p) {
        data_of<T>(wg)[k * kNumWeights + p] = T(sums[k].grad[p]);
      }
    }
    data_of<T>(bg)[k] = T(sums[k].grad[kBiasIndex]);
  }
  return {wg, bg};
}

LossGradsOutputs fused_loss_grads_batched_cpu(Tensor inputs, Tensor labels,
                                              Tensor weights, Tensor bias,
                                              int64_t needs) {
  const BatchTensors t(inputs, &labels, nullptr, weights, bias);
  check_needs(needs);
  const bool want_w = needs & kNeedWeights, want_y = needs & kNeedLabels,
             want_x = needs & kNeedInputs;
  Tensor dy = t.out({t.k, want_y ? t.n : 0}), dx = t.out({t.k, want_x ? t.n : 0});
  if (!want_w && !want_y && !want_x) {
    // The bias alone: fused_loss's pass, as the unbatched op takes.
    auto [loss, grad] = fused_loss_batched_cpu(inputs, labels, weights, bias);
    return {loss, t.out({t.k, 0}), grad, dy, dx};
  }
  return dispatch_float(t.x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    std::vector<ParamSums> sums(size_t(t.k));
    batched_loss_grads(t.rows<T>(), want_y ? data_of<T>(dy) : nullptr,
                       want_x ? data_of<T>(dx) : nullptr, torch_threads(),
                       sums.data());
    Tensor loss = t.out({t.k});
    for (int64_t k = 0; k < t.k; ++k) data_of<T>(loss)[k] = T(sums[k].loss);
    auto [wg, bg] = param_grads<T>(t, sums, want_w);
    return LossGradsOutputs{loss, wg, bg, dy, dx};
  });
}

Tensor fused_loss_grads_sums_batched_cpu(Tensor inputs, Tensor labels,
                                         Tensor weights, Tensor bias) {
  const BatchTensors t(inputs, &labels, nullptr, weights, bias);
  std::vector<ParamSums> sums(size_t(t.k));
  dispatch_float(t.x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    batched_loss_grads(t.rows<T>(), static_cast<T*>(nullptr),
                       static_cast<T*>(nullptr), torch_threads(), sums.data());
  });
  Tensor out = t.out_double({t.k, 1 + kNumParams});
  for (int64_t k = 0; k < t.k; ++k) {
    double* row = data_of<double>(out) + k * (1 + kNumParams);
    row[0] = sums[k].loss;
    for (int p = 0; p < kNumParams; ++p) row[1 + p] = sums[k].grad[p];
  }
  return out;
}

PredictGradsOutputs predict_grads_batched_cpu(Tensor grad_out, Tensor inputs,
                                              Tensor weights, Tensor bias,
                                              int64_t needs) {
  const BatchTensors t(inputs, nullptr, &grad_out, weights, bias);
  check_needs(needs);
  const bool want_w = needs & kNeedWeights, want_x = needs & kNeedInputs;
  Tensor dx = t.out({t.k, want_x ? t.n : 0});
  return dispatch_float(t.x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    std::vector<ParamSums> sums(size_t(t.k));
    batched_predict_grads(t.rows<T>(), want_x ? data_of<T>(dx) : nullptr,
                          torch_threads(), sums.data());
    auto [wg, bg] = param_grads<T>(t, sums, want_w);
    return PredictGradsOutputs{wg, bg, dx};
  });
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(biasfit, CPU, m) {
  m.impl("predict_batched", TORCH_BOX(&predict_batched_cpu));
  m.impl("fused_loss_batched", TORCH_BOX(&fused_loss_batched_cpu));
  m.impl("fused_loss_sums_batched", TORCH_BOX(&fused_loss_sums_batched_cpu));
  m.impl("predict_bias_grad_batched", TORCH_BOX(&predict_bias_grad_batched_cpu));
  m.impl("fused_loss_grads_batched", TORCH_BOX(&fused_loss_grads_batched_cpu));
  m.impl("fused_loss_grads_sums_batched",
         TORCH_BOX(&fused_loss_grads_sums_batched_cpu));
  m.impl("predict_grads_batched", TORCH_BOX(&predict_grads_batched_cpu));
}

}  // namespace biasfit
