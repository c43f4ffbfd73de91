// The CUDA points and sinks of every gradient (core/network.h's "every
// gradient"): fused_loss_grads, fused_loss_grads_sums, predict_grads and the
// epochs of fit_params. Each point returns its loss and seven parameter
// derivatives as a ParamSums, which cuda/reduce.cuh sums in its fixed order
// (float64, every value on its own), and writes its per-point derivatives
// (d/dy, d/dx) where asked. Torch-free, like cuda/kernels.cuh.
#pragma once

#include <cstdint>

#include "core/network.h"
#include "cuda/reduce.cuh"

namespace biasfit {
namespace cuda {

// Per-point outputs, contiguous, indexed like the points; null: not asked.
template <typename T>
struct PointGrads {
  T* dy;
  T* dx;
};

// fused_loss_grads's points: (input, label) -> the loss and every gradient.
template <typename T>
struct LossGradsPoint {
  using Extra = PointGrads<T>;
  Weights<T> w;
  T bias;
  Extra extra;
  __device__ ParamSums operator()(T x, T y, int64_t i) const {
    ParamSums s;
    T dy = T(0), dx = T(0);
    s.loss = point_loss_all_grads(x, y, w, bias, s.grad,
                                  extra.dy != nullptr ? &dy : nullptr,
                                  extra.dx != nullptr ? &dx : nullptr);
    if (extra.dy != nullptr) extra.dy[i] = dy;
    if (extra.dx != nullptr) extra.dx[i] = dx;
    return s;
  }
};

// predict_grads's points: (input, grad_out) -> grad_out times d(y_hat)/d(the
// parameters), summed; .loss stays 0.
template <typename T>
struct PredictGradsPoint {
  using Extra = PointGrads<T>;  // dy unused
  Weights<T> w;
  T bias;
  Extra extra;
  __device__ ParamSums operator()(T x, T g, int64_t i) const {
    ParamSums s;
    s.loss = 0.0;
    T dx = T(0);
    point_predict_all_grads(x, g, w, bias, s.grad,
                            extra.dx != nullptr ? &dx : nullptr);
    if (extra.dx != nullptr) extra.dx[i] = dx;
    return s;
  }
};

// The sums rounded to the data's type, as torch_ops/cpu_ops.cpp's: the loss (if asked),
// the six weights' gradients (if asked) and the bias's (always).
template <typename T>
struct ParamGradsSink {
  using Sum = ParamSums;
  T* loss;
  T* weights_grad;
  T* bias_grad;
  __device__ bool active() const { return true; }
  __device__ void operator()(const ParamSums& s) const {
    if (loss != nullptr) *loss = T(s.loss);
    if (weights_grad != nullptr) {
      for (int p = 0; p < kNumWeights; ++p) weights_grad[p] = T(s.grad[p]);
    }
    *bias_grad = T(s.grad[kBiasIndex]);
  }
};

// fused_loss_grads_sums: the float64 sums as they are, [loss, 7 grads].
struct ParamSumsSink {
  using Sum = ParamSums;
  double* out;
  __device__ bool active() const { return true; }
  __device__ void operator()(const ParamSums& s) const {
    out[0] = s.loss;
    for (int p = 0; p < kNumParams; ++p) out[1 + p] = s.grad[p];
  }
};

}  // namespace cuda
}  // namespace biasfit
