// torch.optim.Adam's and AdamW's update for one scalar parameter, shared by
// the trainers as core/sgd.h is. It follows torch/optim/adam.py
// (_single_tensor_adam, the path torch takes for CPU tensors: not
// capturable, not foreach) line by line, in the parameter's type T, each
// Python-float coefficient computed in double and rounded to T where the
// tensor op rounds it. Like core/sgd.h, not bit for bit: torch's CPU kernels may
// fuse a multiply and an add (lerp_, addcmul_, addcdiv_) where these round
// each on its own (core/rounding.h). Every operation, the double coefficients'
// included, goes through core/rounding.h, so the CUDA trainer rounds as the CPU
// one whatever nvcc's flags; only pow (the bias corrections' beta^step) is
// the platform's: glibc's on the CPU, CUDA's (within 2 ulp) on the GPU.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/network.h"

namespace biasfit {

struct AdamOptions {
  double lr;
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
  bool amsgrad;
  bool maximize;
  bool decoupled;  // AdamW: decay the parameter, not the gradient
};

// Python's x ** k for a float x and an integer-valued float k, as double:
// CPython calls C's pow, and so does this.
BIASFIT_HD double pow_step(double x, int64_t step) {
  return std::pow(x, double(step));
}

template <typename T>
struct AdamState {
  T exp_avg;
  T exp_avg_sq;
  T max_exp_avg_sq;
  int64_t step;  // torch keeps it as a float tensor; exact up to 2^24 steps

  BIASFIT_HD static AdamState start() { return {T(0), T(0), T(0), 0}; }

  // torch's lerp (ATen/native/Lerp.h) for a scalar weight.
  BIASFIT_HD static T lerp(T self, T end, T weight) {
    return (weight < T(0.5) && weight > T(-0.5))
               ? add_rn(self, mul_rn(weight, sub_rn(end, self)))
               : sub_rn(end, mul_rn(sub_rn(end, self), sub_rn(T(1), weight)));
  }

  BIASFIT_HD T step_param(T param, T grad, const AdamOptions& o) {
    if (o.maximize) grad = -grad;
    ++step;
    if (o.weight_decay != 0) {
      if (o.decoupled) {
        param = mul_rn(param, T(sub_rn(1.0, mul_rn(o.lr, o.weight_decay))));
      } else {
        grad = add_rn(grad, mul_rn(T(o.weight_decay), param));
      }
    }
    exp_avg = lerp(exp_avg, grad, T(sub_rn(1.0, o.beta1)));
    // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    exp_avg_sq = add_rn(mul_rn(exp_avg_sq, T(o.beta2)),
                        mul_rn(mul_rn(T(sub_rn(1.0, o.beta2)), grad), grad));
    const double bias_correction1 = sub_rn(1.0, pow_step(o.beta1, step));
    const double bias_correction2 = sub_rn(1.0, pow_step(o.beta2, step));
    const double step_size = div_rn(o.lr, bias_correction1);
    const double bias_correction2_sqrt = sqrt_rn(bias_correction2);
    T second = exp_avg_sq;
    if (o.amsgrad) {
      // torch.maximum: NaN wins.
      max_exp_avg_sq = (max_exp_avg_sq != max_exp_avg_sq || second != second)
                           ? add_rn(max_exp_avg_sq, second)
                           : (max_exp_avg_sq > second ? max_exp_avg_sq : second);
      second = max_exp_avg_sq;
    }
    const T denom = add_rn(div_rn(sqrt_rn(second), T(bias_correction2_sqrt)),
                           T(o.eps));
    // param.addcdiv_(exp_avg, denom, value=-step_size): self + value * t1 / t2
    return add_rn(param, div_rn(mul_rn(T(-step_size), exp_avg), denom));
  }
};

}  // namespace biasfit
