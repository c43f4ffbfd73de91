// The tutorial network's math, written once for the CPU and CUDA kernels.
//
//   hidden(x) = w01 * relu(w00 * x + b00) + w11 * relu(w10 * x + b10)
//   y_hat     = relu(hidden(x) + final_bias)
//
// Only final_bias is trained, so hidden(x) is everything the frozen weights
// contribute. Per point, the squared error and its derivative with respect to
// final_bias are
//
//   r    = y_hat - y
//   loss = r^2
//   grad = 2 r * relu'(hidden + bias),  relu'(z) = (z > 0 ? 1 : 0)
//
// relu'(0) is 0, exactly as PyTorch's relu backward: the tutorial's dose 0.5
// lands on that point for the top hidden unit (1.7 * 0.5 - 0.85 == 0).
//
// Precision: each point is evaluated in the data's own type T, in the same
// order of operations as the tutorial's PyTorch module, so float32 points
// round exactly as eager PyTorch rounds them: every multiply and add goes
// through rounding.h, which never fuses them into an FMA. Sums over points are the kernels' business and
// always run in double: r is widened first, and since a float32 squared fits
// a double exactly, the float32 path loses nothing before the sum.
#pragma once

#include "rounding.h"

namespace biasfit {

// The six frozen parameters, in the order of the public `weights` argument.
enum WeightIndex : int { W00 = 0, B00, W01, W10, B10, W11, kNumWeights };

template <typename T>
struct Weights {
  T w00, b00, w01, w10, b10, w11;

  BIASFIT_HD static Weights load(const T* w) {
    return {w[W00], w[B00], w[W01], w[W10], w[B10], w[W11]};
  }
};

// Written for T = float or double and also for T = a GCC/Clang SIMD vector of
// them (__m256 and friends): the CPU trainer's AVX2 loop calls relu and
// active_residual on 8 points at once, so even its vector code has no second
// copy of the formulas. Hence T{} for zero, which both kinds of T accept.
template <typename T>
BIASFIT_HD T relu(T z) {
  // As torch.relu: NaN propagates (a comparison with NaN is false) and -0
  // stays -0.
  return z < T{} ? T{} : z;
}

// The tutorial computes input * w + b, then relu(.) * w_out, then
// top + bottom + final_bias; the same order here gives the same rounding.
template <typename T>
BIASFIT_HD T hidden(T x, const Weights<T>& w) {
  const T top = mul_rn(relu(add_rn(mul_rn(x, w.w00), w.b00)), w.w01);
  const T bottom = mul_rn(relu(add_rn(mul_rn(x, w.w10), w.b10)), w.w11);
  return add_rn(top, bottom);
}

template <typename T>
BIASFIT_HD T predict(T x, const Weights<T>& w, T bias) {
  return relu(add_rn(hidden(x, w), bias));
}

// One point's contribution to the loss and to d(loss)/d(final_bias), widened
// to double for summing: loss = r^2, grad = 2 r relu'(z).
struct LossGrad {
  double loss;
  double grad;
};

// r * relu'(z), the residual where the output unit is active, else 0: half
// the bias gradient of a point's squared error.
template <typename T>
BIASFIT_HD T active_residual(T z, T r) {
  return z > T{} ? r : T{};
}

// From h = hidden(x): trainers may compute h once per fit, since only the
// bias changes between epochs; the result is the same bits either way.
template <typename T>
BIASFIT_HD LossGrad loss_grad_from_hidden(T h, T y, T bias) {
  const T z = add_rn(h, bias);
  const T r = sub_rn(relu(z), y);
  const double rd = double(r);
  return {mul_rn(rd, rd), mul_rn(2.0, double(active_residual(z, r)))};
}

template <typename T>
BIASFIT_HD LossGrad point_loss_grad(T x, T y, const Weights<T>& w, T bias) {
  return loss_grad_from_hidden(hidden(x, w), y, bias);
}

// d(y_hat)/d(final_bias) times the incoming gradient, for predict's backward.
template <typename T>
BIASFIT_HD double point_bias_grad(T x, T grad_out, const Weights<T>& w,
                                  T bias) {
  return add_rn(hidden(x, w), bias) > T(0) ? double(grad_out) : 0.0;
}

}  // namespace biasfit
