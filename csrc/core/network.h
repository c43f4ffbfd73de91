// The tutorial network's math, written once for the CPU and CUDA kernels.
//
//   hidden(x) = w01 * relu(w00 * x + b00) + w11 * relu(w10 * x + b10)
//   y_hat     = relu(hidden(x) + final_bias)
//
// While final_bias alone trains, hidden(x) is everything the frozen weights
// contribute (every other gradient: "every gradient" below). Per point, the
// squared error and its derivative with respect to final_bias are
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
// through core/rounding.h, which never fuses them into an FMA. Sums over points are the kernels' business and
// always run in double: r is widened first, and since a float32 squared fits
// a double exactly, the float32 path loses nothing before the sum.
#pragma once

#include <cstdint>

#include "core/rounding.h"

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
//
// relu goes through a trait so that the CPU kernels can give SIMD vectors
// the one-instruction IEEE max, which computes exactly this (cpu/x86/simd.h).
template <typename T>
struct Relu {
  BIASFIT_HD static T of(T z) {
    // As torch.relu: NaN propagates (a comparison with NaN is false) and -0
    // stays -0.
    return z < T{} ? T{} : z;
  }
};

template <typename T>
BIASFIT_HD T relu(T z) {
  return Relu<T>::of(z);
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
// the bias gradient of a point's squared error. Every relu' here is PyTorch's
// relu backward, "0 where z <= 0, else pass": a NaN z passes its (NaN)
// gradient on, as in plain PyTorch, rather than hiding it.
template <typename T>
BIASFIT_HD T active_residual(T z, T r) {
  return z <= T{} ? T{} : r;
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

// ---- every gradient ------------------------------------------------------
//
// With a0 = w00 x + b00, a1 = w10 x + b10 (the hidden units' inputs),
// h0 = relu(a0), h1 = relu(a1), z = w01 h0 + w11 h1 + bias and
// g = d(out)/dz (for the loss, out = r^2 and g = 2 r relu'(z)):
//
//   d/d bias = g              d/d w01 = g h0          d/d w11 = g h1
//   d/d b00  = g w01 relu'(a0) =: d0,   d/d w00 = d0 x
//   d/d b10  = g w11 relu'(a1) =: d1,   d/d w10 = d1 x
//   d/d x    = d0 w00 + d1 w10          d/d y (loss only) = -2 r
//
// relu'(0) = 0 at all three units, as PyTorch. The point's values (a0, h0,
// z, r, ...) are the forward's, in T and its order; the derivatives are
// formed in double from them, as the sums are: the summed gradients then
// lose nothing to T before the sum, like the bias gradient above.

// What a pass is asked to compute, as bits of the ops' `needs` argument.
enum GradNeeds : int64_t {
  kNeedWeights = 1,  // the six weights' gradients (one tensor of six)
  kNeedBias = 2,
  kNeedLabels = 4,   // per point: elementwise outputs, never summed
  kNeedInputs = 8,
  kNeedAll = 15,
};

// The parameter gradients' sums, in the order of the `weights` argument
// then final_bias, and the loss: the seven-parameter analogue of LossGrad.
constexpr int kNumParams = kNumWeights + 1;
constexpr int kBiasIndex = kNumWeights;
struct ParamSums {
  double loss;
  double grad[kNumParams];
};

// One point's forward values, kept for its derivatives.
template <typename T>
struct Forward {
  T a0, a1, h0, h1, z;
};

template <typename T>
BIASFIT_HD Forward<T> forward(T x, const Weights<T>& w, T bias) {
  Forward<T> f;
  f.a0 = add_rn(mul_rn(x, w.w00), w.b00);
  f.a1 = add_rn(mul_rn(x, w.w10), w.b10);
  f.h0 = relu(f.a0);
  f.h1 = relu(f.a1);
  // hidden()'s order exactly: (h0 w01) + (h1 w11), then + bias.
  f.z = add_rn(add_rn(mul_rn(f.h0, w.w01), mul_rn(f.h1, w.w11)), bias);
  return f;
}

// The derivatives are formed from the forward's values widened to D: double
// for a scalar point, or a vector of doubles for the CPU's SIMD kernels
// (cpu/x86/param_lanes.h), which run these same functions on 4 or 8 points at
// once. Hence D{} for zero and a ternary per lane, as relu's. Widening a
// float is exact and keeps its sign, so comparing the widened value with 0
// is comparing the original: the results are the same bits as forming each
// derivative from T's values.
// v in every lane (v itself for a double); for constants other than -0,
// which 0 + v would make +0.
template <typename D>
BIASFIT_HD D splat(double v) {
  return D{} + v;
}

// Every value of a Forward (or of Weights) converted by `to`: to double for
// a scalar point; the SIMD kernels pass their lane-wise conversion.
template <typename D, typename T, typename To>
BIASFIT_HD Forward<D> widen(const Forward<T>& f, To to) {
  return {to(f.a0), to(f.a1), to(f.h0), to(f.h1), to(f.z)};
}
template <typename D, typename T, typename To>
BIASFIT_HD Weights<D> widen(const Weights<T>& w, To to) {
  return {to(w.w00), to(w.b00), to(w.w01), to(w.w10), to(w.b10), to(w.w11)};
}
struct ToDouble {
  template <typename T>
  BIASFIT_HD double operator()(T v) const { return double(v); }
};

// g = d(loss)/dz from the widened z and residual r: 2 r where the output
// unit is on, else 0.
template <typename D>
BIASFIT_HD D loss_output_grad(D z, D r) {
  return z <= D{} ? D{} : mul_rn(splat<D>(2.0), r);
}

// backward_point's arithmetic, every value widened to D. relu'(a) tested as
// relu(a) <= 0 (PyTorch's test, on relu's output), which is a <= 0 for every
// a (NaN and -0 included): the SIMD kernels then never widen a0 and a1.
template <typename D>
BIASFIT_HD void backward_wide(const Forward<D>& f, D x, const Weights<D>& w,
                              D g, D* dparams, D* dx) {
  const D d0 = f.h0 <= D{} ? D{} : mul_rn(g, w.w01);
  const D d1 = f.h1 <= D{} ? D{} : mul_rn(g, w.w11);
  if (dparams != nullptr) {
    dparams[W00] = mul_rn(d0, x);
    dparams[B00] = d0;
    dparams[W01] = mul_rn(g, f.h0);
    dparams[W10] = mul_rn(d1, x);
    dparams[B10] = d1;
    dparams[W11] = mul_rn(g, f.h1);
    dparams[kBiasIndex] = g;
  }
  if (dx != nullptr) {
    *dx = add_rn(mul_rn(d0, w.w00), mul_rn(d1, w.w10));
  }
}

// One point's squared error and parameter derivatives from its widened
// forward values, input and residual: what the summing kernels add up.
template <typename D>
BIASFIT_HD D loss_param_grads_wide(const Forward<D>& f, D x, D r,
                                   const Weights<D>& w, D* dparams) {
  backward_wide(f, x, w, loss_output_grad(f.z, r), dparams,
                static_cast<D*>(nullptr));
  return mul_rn(r, r);
}

// d(out)/d(every parameter) and d(out)/dx at one point, given g = d(out)/dz
// (0 where the output unit is off). Parameter order: ParamSums's.
template <typename T>
BIASFIT_HD void backward_point(const Forward<T>& f, T x, const Weights<T>& w,
                               double g, double* dparams, double* dx) {
  backward_wide(widen<double>(f, ToDouble{}), double(x),
                widen<double>(w, ToDouble{}), g, dparams, dx);
}

// One point of fused_loss with every gradient: its squared error, its
// parameter derivatives (if dparams), d/dy (if dy) and d/dx (if dx).
template <typename T>
BIASFIT_HD double point_loss_all_grads(T x, T y, const Weights<T>& w, T bias,
                                       double* dparams, T* dy, T* dx) {
  const Forward<T> f = forward(x, w, bias);
  const T r = sub_rn(relu(f.z), y);
  const double rd = double(r);
  const double g = loss_output_grad(double(f.z), rd);
  if (dy != nullptr) *dy = T(mul_rn(-2.0, rd));  // exact: doubling
  double dxd = 0.0;
  backward_point(f, x, w, g, dparams, dx != nullptr ? &dxd : nullptr);
  if (dx != nullptr) *dx = T(dxd);
  return mul_rn(rd, rd);
}

// One point of predict's backward with every gradient: grad_out times
// d(y_hat)/d(each parameter) into dparams (ParamSums's order), and times
// d(y_hat)/dx into dx (if dx).
template <typename T>
BIASFIT_HD void point_predict_all_grads(T x, T grad_out, const Weights<T>& w,
                                        T bias, double* dparams, T* dx) {
  const Forward<T> f = forward(x, w, bias);
  const double g = f.z <= T(0) ? 0.0 : double(grad_out);
  double dxd = 0.0;
  backward_point(f, x, w, g, dparams, dx != nullptr ? &dxd : nullptr);
  if (dx != nullptr) *dx = T(dxd);
}

// d(y_hat)/d(final_bias) times the incoming gradient, for predict's backward.
template <typename T>
BIASFIT_HD double point_bias_grad(T x, T grad_out, const Weights<T>& w,
                                  T bias) {
  return add_rn(hidden(x, w), bias) <= T(0) ? 0.0 : double(grad_out);
}

}  // namespace biasfit
