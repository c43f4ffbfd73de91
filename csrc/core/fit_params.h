// The end of an epoch for any subset of the seven parameters: core/fit.h's
// FitState::end_epoch with SGD (core/sgd.h), Adam or AdamW (core/adam.h) per trained
// parameter. Written once for the CPU trainer (cpu/trainer_params.h) and the
// CUDA one (cuda/kernels_params.cuh), so both stop, step and fail at the
// same epoch, with the same update rules. Free of torch.
//
// A plain aggregate (no constructor, no default member values), so that a
// CUDA kernel can keep one in shared memory; start() makes the first state.
#pragma once

#include <cstdint>

#include "core/adam.h"
#include "core/fit.h"
#include "core/network.h"
#include "core/sgd.h"

namespace biasfit {

enum OptimizerKind : int64_t { kSgd = 0, kAdam = 1, kAdamW = 2 };

struct ParamFitOptions {
  int64_t trained;  // bit p: parameter p (ParamSums's order) trains
  int64_t kind;     // OptimizerKind
  SgdOptions sgd;
  AdamOptions adam;
  int64_t epochs;
  double tol;
  double rtol = 0;        // as core/fit.h's FitOptions
  int64_t patience = 0;
  double divide_by = 1;
};

template <typename T>
struct ParamFitState {
  T params[kNumParams];
  SgdState<T> sgd[kNumParams];
  AdamState<T> adam[kNumParams];
  int64_t epoch;
  int64_t status;
  int64_t bad_param;  // the parameter that became inf/NaN, if one did, else -1
  Plateau plateau;

  BIASFIT_HD static ParamFitState start(const T* params, int64_t epochs) {
    ParamFitState s;
    for (int p = 0; p < kNumParams; ++p) {
      s.params[p] = params[p];
      s.sgd[p] = SgdState<T>{T(0), false};
      s.adam[p] = AdamState<T>::start();
    }
    s.epoch = 0;
    s.status = epochs > 0 ? int64_t(kRunning) : int64_t(kExhausted);
    s.bad_param = -1;
    s.plateau = Plateau::start();
    return s;
  }

  BIASFIT_HD static bool trains(const ParamFitOptions& o, int p) {
    return (o.trained >> p) & 1;
  }

  // core/fit.h's FitState::end_epoch for seven parameters; biases[epoch] is the
  // final_bias the epoch was taken at, as fit_sgd's.
  BIASFIT_HD void end_epoch(const ParamSums& sum, const ParamFitOptions& o,
                            T* losses, T* biases) {
    losses[epoch] = reduced<T>(sum.loss, o.divide_by);
    biases[epoch] = params[kBiasIndex];
    decide(sum, o);
  }

  // end_epoch without the record: the stop test and the steps (as
  // FitState::decide).
  BIASFIT_HD void decide(const ParamSums& sum, const ParamFitOptions& o) {
    status = stop_or_plateau(reduced<T>(sum.loss, o.divide_by), o, plateau);
    if (status != kRunning) return;
    for (int p = 0; p < kNumParams; ++p) {
      if (!trains(o, p)) continue;
      const T grad = reduced<T>(sum.grad[p], o.divide_by);
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

}  // namespace biasfit
