// The CPU fused trainer for any subset of the seven parameters, with SGD,
// Adam or AdamW (torch.optim's rules: sgd.h, adam.h), every epoch in one
// call. Free of torch; cpu.cpp runs it as the fit_params op.
//
// An epoch is one pass of grads_cpu.h over the data (loss and the seven
// gradient sums, deterministic), then the end of the epoch as fit.h's: record,
// stop on a non-finite loss or below tol, step every trained parameter, stop
// on a non-finite parameter. trainer_cpu.h's shortcuts (hidden(x) once per
// fit, regrouping by hidden value) need a frozen hidden layer; fit_params
// sends a fit of final_bias alone with SGD there (train.py does), and does
// every other fit in full passes.
#pragma once

#include <cstdint>

#include "adam.h"
#include "fit.h"
#include "grads_cpu.h"
#include "sgd.h"
#include "trainer_cpu.h"

namespace biasfit {
namespace cpu {

enum OptimizerKind : int64_t { kSgd = 0, kAdam = 1, kAdamW = 2 };

struct ParamFitOptions {
  int64_t trained;  // bit p: parameter p (ParamSums's order) trains
  int64_t kind;     // OptimizerKind
  SgdOptions sgd;
  AdamOptions adam;
  int64_t epochs;
  double tol;
};

template <typename T>
struct ParamFitState {
  T params[kNumParams];
  SgdState<T> sgd[kNumParams];
  AdamState<T> adam[kNumParams];
  int64_t epoch = 0;
  int64_t status = kRunning;
  int64_t bad_param = -1;  // the parameter that became inf/NaN, if one did

  bool trains(const ParamFitOptions& o, int p) const {
    return (o.trained >> p) & 1;
  }

  // fit.h's FitState::end_epoch for seven parameters; biases[epoch] is the
  // final_bias the epoch was taken at, as fit_sgd's.
  void end_epoch(const ParamSums& sum, const ParamFitOptions& o, T* losses,
                 T* biases) {
    const T loss = T(sum.loss);
    losses[epoch] = loss;
    biases[epoch] = params[kBiasIndex];
    if (!is_finite(loss)) {
      status = kLossNonFinite;
      return;
    }
    if (double(loss) < o.tol) {
      status = kConverged;
      return;
    }
    for (int p = 0; p < kNumParams; ++p) {
      if (!trains(o, p)) continue;
      const T grad = T(sum.grad[p]);
      params[p] = o.kind == kSgd ? sgd[p].step(params[p], grad, o.sgd)
                                 : adam[p].step_param(params[p], grad, o.adam);
    }
    for (int p = 0; p < kNumParams; ++p) {
      if (trains(o, p) && !is_finite(params[p])) {
        status = kBiasNonFinite;
        bad_param = p;
        return;
      }
    }
    ++epoch;
    if (epoch == o.epochs) status = kExhausted;
  }
};

// A whole fit over x[0..n), y[0..n) (contiguous) from params[7].
template <typename T>
ParamFitState<T> train_params(const T* x, const T* y, int64_t n,
                              const T* start, const ParamFitOptions& opt,
                              int threads, History<T>& history) {
  ParamFitState<T> state;
  for (int p = 0; p < kNumParams; ++p) {
    state.params[p] = start[p];
    state.sgd[p] = SgdState<T>{T(0), false};
    state.adam[p] = AdamState<T>::start();
  }
  if (opt.epochs == 0) state.status = kExhausted;
  // Weights' gradients only when a weight trains: else the bias-only sums.
  const bool weights = (opt.trained & ((1 << kNumWeights) - 1)) != 0;
  while (state.status == kRunning) {
    const PointLossParamGrads<T> point{x, y, Weights<T>::load(state.params),
                                       state.params[kBiasIndex]};
    ParamSums sums;
    if (weights) {
      sums = sum_param_grads(point, n, true, threads);
    } else {
      const LossGrad lg =
          sum_points(PointLoss<T>{x, y, point.w, point.bias}, n, threads);
      sums = ParamSums{lg.loss, {0, 0, 0, 0, 0, 0, lg.grad}};
    }
    history.make_room(state.epoch, opt.epochs);
    state.end_epoch(sums, opt, history.losses.data(), history.biases.data());
  }
  return state;
}

}  // namespace cpu
}  // namespace biasfit
