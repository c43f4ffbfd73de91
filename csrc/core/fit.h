// The tutorial's epoch loop, minus the pass over the data: what a trainer does
// with one epoch's summed loss and gradient. Shared by the CPU and CUDA
// trainers so both stop, step and fail at the same epoch as biasfit.fit's
// autograd engine:
//
//   loss = epoch loss (rounded to T, as the autograd engine's loss tensor;
//          the sums divided by divide_by first: N for the mean loss)
//   if loss is inf/NaN: fail at this epoch
//   if loss < tol:      converged, stop before stepping
//   if the loss has plateaued (rtol, patience): stop before stepping
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
  kPlateau = 6,       // the loss plateaued at epoch `epoch`, no step taken there
};

// The defaults of the fields after tol are the tutorial's loop: the summed
// loss, no plateau stop.
struct FitOptions {
  SgdOptions sgd;
  int64_t epochs;
  double tol;
  double rtol = 0;        // plateau stop (Plateau below), off at 0
  int64_t patience = 0;
  double divide_by = 1;   // the loss and gradient sums over this: 1 sum, N mean
};

// The plateau stop: with rtol > 0, a fit stops once its loss has not fallen
// below its lowest so far by more than rtol times that lowest for `patience`
// epochs in a row (the loss floor of noisy data is far above any absolute
// tol). A plain aggregate: trainers keep it in CUDA shared memory.
struct Plateau {
  double best;   // the lowest loss so far
  int64_t wait;  // epochs since it last fell by more than rtol; -1: no epoch yet

  BIASFIT_HD static Plateau start() { return {0.0, -1}; }

  // Takes one epoch's loss: whether the fit has plateaued there. (The
  // _rn intrinsics: nvcc must not fuse the product into the difference.)
  BIASFIT_HD bool reached(double loss, double rtol, int64_t patience) {
    if (!(rtol > 0)) return false;
    if (wait < 0 || sub_rn(best, loss) > mul_rn(rtol, best)) {
      best = loss;
      wait = 0;
      return false;
    }
    return ++wait >= patience;
  }
};

// An epoch's sum (loss or gradient) as the fit uses it: over divide_by (an
// exact no-op at 1), rounded to T once.
template <typename T>
BIASFIT_HD T reduced(double sum, double divide_by) {
  return T(div_rn(sum, divide_by));
}

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

// stop_before_step with the plateau stop of o (FitOptions, ParamFitOptions).
template <typename T, typename Options>
BIASFIT_HD int64_t stop_or_plateau(T loss, const Options& o, Plateau& plateau) {
  const int64_t status = stop_before_step(loss, o.tol);
  if (status == kRunning && plateau.reached(double(loss), o.rtol, o.patience)) {
    return kPlateau;
  }
  return status;
}

template <typename T>
struct FitState {
  T bias;
  SgdState<T> sgd;
  int64_t epoch;   // epochs completed so far (= steps taken while running)
  int64_t status;
  Plateau plateau;

  BIASFIT_HD static FitState start(T bias, int64_t epochs) {
    return {bias, SgdState<T>{T(0), false}, 0,
            epochs > 0 ? int64_t(kRunning) : int64_t(kExhausted), Plateau::start()};
  }

  // Consumes one epoch's sums; records its loss and the bias it was taken at.
  BIASFIT_HD void end_epoch(const LossGrad& sum, const FitOptions& o,
                            T* losses, T* biases) {
    losses[epoch] = reduced<T>(sum.loss, o.divide_by);
    biases[epoch] = bias;
    decide(sum, o);
  }

  // end_epoch without the record: the stop test and the step (a trainer
  // that keeps no history, cpu/fit_many.h, calls this alone).
  BIASFIT_HD void decide(const LossGrad& sum, const FitOptions& o) {
    status = stop_or_plateau(reduced<T>(sum.loss, o.divide_by), o, plateau);
    if (status != kRunning) return;
    bias = sgd.step(bias, reduced<T>(sum.grad, o.divide_by), o.sgd);
    if (!is_finite(bias)) {
      status = kBiasNonFinite;
      return;
    }
    ++epoch;
    if (epoch == o.epochs) status = kExhausted;
  }
};

}  // namespace biasfit
