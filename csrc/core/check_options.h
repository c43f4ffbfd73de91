// The checks of the ops' non-tensor arguments, free of torch so that the
// direct Python call (direct/direct.cpp) runs the very same ones as the ops
// (torch_ops/checks.cpp). A failed check throws std::invalid_argument, which Python
// sees as a ValueError whose message names the argument.
#pragma once

#include <cmath>
#include <cstdint>
#include <sstream>
#include <stdexcept>

#include "core/fit.h"

namespace biasfit {

template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  std::ostringstream message;
  message << "biasfit: ";
  (message << ... << args);
  throw std::invalid_argument(message.str());
}

inline void check_sgd_options(double lr, double momentum, double dampening,
                              bool nesterov, double weight_decay) {
  // `!(x >= 0)` also rejects NaN.
  if (!(lr >= 0)) fail("lr must be >= 0, got ", lr);
  if (!(momentum >= 0)) fail("momentum must be >= 0, got ", momentum);
  if (!(weight_decay >= 0)) {
    fail("weight_decay must be >= 0, got ", weight_decay);
  }
  if (dampening != dampening) fail("dampening must be a number, got NaN");
  if (nesterov && !(momentum > 0 && dampening == 0)) {
    fail("nesterov requires momentum > 0 and dampening == 0, got momentum=",
         momentum, ", dampening=", dampening);
  }
}

inline void check_adam_options(double beta1, double beta2, double eps) {
  // torch.optim.Adam's own checks.
  if (!(beta1 >= 0 && beta1 < 1)) fail("beta1 must be in [0, 1), got ", beta1);
  if (!(beta2 >= 0 && beta2 < 1)) fail("beta2 must be in [0, 1), got ", beta2);
  if (!(eps >= 0)) fail("eps must be >= 0, got ", eps);
}

// The plateau stop's and the reduction's (core/fit.h's FitOptions).
inline void check_stop_options(double rtol, int64_t patience, double divide_by) {
  if (!(rtol >= 0 && rtol < 1)) fail("rtol must be in [0, 1), got ", rtol);
  if (rtol > 0 && patience < 1) fail("patience must be >= 1, got ", patience);
  if (!(divide_by >= 1 && divide_by < HUGE_VAL)) {
    fail("divide_by must be a finite number >= 1, got ", divide_by);
  }
}

inline void check_fit_options(const FitOptions& o) {
  check_sgd_options(o.sgd.lr, o.sgd.momentum, o.sgd.dampening, o.sgd.nesterov,
                    o.sgd.weight_decay);
  if (o.epochs < 0) fail("epochs must be >= 0, got ", o.epochs);
  if (!(o.tol >= 0)) fail("tol must be >= 0, got ", o.tol);
  check_stop_options(o.rtol, o.patience, o.divide_by);
}

}  // namespace biasfit
