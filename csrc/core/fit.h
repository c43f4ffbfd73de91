// The tutorial's epoch loop, minus the pass over the data: what a trainer does
// with one epoch's summed loss and gradient. Shared by the CPU and CUDA
// trainers so both stop, step and fail at the same epoch as biasfit.fit's
// autograd engine:
//
//   loss = epoch loss (rounded to T, as the autograd engine's loss tensor)
//   if loss is inf/NaN: fail at this epoch
//   if loss < tol:      converged, stop before stepping
//   bias = SGD step with the epoch's gradient
//   if bias is inf/NaN: fail at this epoch
#pragma once

#include <cstdint>

#include "core/network.h"
#include "core/sgd.h"

namespace biasfit {

// Values of the status the trainers report; biasfit._direct exports them
// (direct/direct.cpp) for Python to read.
enum FitStatus : int64_t {
  kRunning = 0,
  kConverged = 1,     // loss < tol at epoch `epoch`, no step taken there
  kExhausted = 2,     // every epoch ran and stepped
  kLossNonFinite = 3, // the loss of epoch `epoch` was inf or NaN
  kBiasNonFinite = 4, // the step of epoch `epoch` made the bias inf or NaN
  kInterrupted = 5,   // stopped by an interrupt (Ctrl-C) after epoch `epoch`
};

struct FitOptions {
  SgdOptions sgd;
  int64_t epochs;
  double tol;
};

template <typename T>
BIASFIT_HD bool is_finite(T v) {
  return v == v && sub_rn(v, v) == T(0);  // false for NaN and for +-inf
}

// An epoch's stop test before its step, shared by the trainers' end of an
// epoch (FitState here, ParamFitState in core/fit_params.h): the status a fit
// ends with at this loss, or kRunning to step.
template <typename T>
BIASFIT_HD int64_t stop_before_step(T loss, double tol) {
  if (!is_finite(loss)) return kLossNonFinite;
  if (double(loss) < tol) return kConverged;
  return kRunning;
}

template <typename T>
struct FitState {
  T bias;
  SgdState<T> sgd;
  int64_t epoch;   // epochs completed so far (= steps taken while running)
  int64_t status;

  BIASFIT_HD static FitState start(T bias, int64_t epochs) {
    return {bias, SgdState<T>{T(0), false}, 0,
            epochs > 0 ? int64_t(kRunning) : int64_t(kExhausted)};
  }

  // Consumes one epoch's sums; records its loss and the bias it was taken at.
  BIASFIT_HD void end_epoch(const LossGrad& sum, const FitOptions& o,
                            T* losses, T* biases) {
    losses[epoch] = T(sum.loss);
    biases[epoch] = bias;
    decide(sum, o);
  }

  // end_epoch without the record: the stop test and the step (a trainer
  // that keeps no history, cpu/fit_many.h, calls this alone).
  BIASFIT_HD void decide(const LossGrad& sum, const FitOptions& o) {
    status = stop_before_step(T(sum.loss), o.tol);
    if (status != kRunning) return;
    bias = sgd.step(bias, T(sum.grad), o.sgd);
    if (!is_finite(bias)) {
      status = kBiasNonFinite;
      return;
    }
    ++epoch;
    if (epoch == o.epochs) status = kExhausted;
  }
};

}  // namespace biasfit
