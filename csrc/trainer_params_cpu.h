// The CPU fused trainer for any subset of the seven parameters, with SGD,
// Adam or AdamW (torch.optim's rules: sgd.h, adam.h), every epoch in one
// call. Free of torch; cpu.cpp runs it as the fit_params op.
//
// An epoch is one pass of grads_cpu.h over the data (loss and the seven
// gradient sums, deterministic), then fit_params.h's end of the epoch (the
// CUDA trainer's too): record, stop on a non-finite loss or below tol, step
// every trained parameter, stop on a non-finite parameter. trainer_cpu.h's
// shortcuts (hidden(x) once per fit, regrouping by hidden value) need a
// frozen hidden layer; fit_params sends a fit of final_bias alone with SGD
// there (train.py does), and does every other fit in full passes.
#pragma once

#include <cstdint>

#include "fit.h"
#include "fit_params.h"
#include "grads_cpu.h"
#include "trainer_cpu.h"

namespace biasfit {
namespace cpu {

// A whole fit over x[0..n), y[0..n) (contiguous) from params[7].
template <typename T>
ParamFitState<T> train_params(const T* x, const T* y, int64_t n,
                              const T* start, const ParamFitOptions& opt,
                              int threads, History<T>& history) {
  ParamFitState<T> state = ParamFitState<T>::start(start, opt.epochs);
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
