// torch.optim.SGD's update for one scalar parameter, shared by the CPU and
// CUDA trainers. It follows torch/optim/sgd.py (_single_tensor_sgd) line by
// line and computes in the parameter's type T, with each hyperparameter
// rounded to T first as the tensor ops do with their Python-float alpha, so
// the fused trainer rounds like the standard optimizer step (each multiply
// and add rounded on its own: core/rounding.h).
#pragma once

#include "core/network.h"

namespace biasfit {

struct SgdOptions {
  double lr;
  double momentum;
  double dampening;
  double weight_decay;
  bool nesterov;
  bool maximize;
};

template <typename T>
struct SgdState {
  T buf;         // momentum buffer
  bool has_buf;  // torch creates the buffer on the first step

  // Returns the parameter after one step with gradient `grad`.
  BIASFIT_HD T step(T param, T grad, const SgdOptions& o) {
    if (o.maximize) grad = -grad;
    if (o.weight_decay != 0) grad = add_rn(grad, mul_rn(T(o.weight_decay), param));
    if (o.momentum != 0) {
      if (!has_buf) {
        buf = grad;
        has_buf = true;
      } else {
        buf = add_rn(mul_rn(buf, T(o.momentum)), mul_rn(T(sub_rn(1.0, o.dampening)), grad));
      }
      grad = o.nesterov ? add_rn(grad, mul_rn(T(o.momentum), buf)) : buf;
    }
    return add_rn(param, mul_rn(T(-o.lr), grad));
  }
};

}  // namespace biasfit
