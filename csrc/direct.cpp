// The Python module biasfit._direct: fit_fused's direct call into the CPU
// trainer (trainer_cpu.h), bypassing the dispatcher.
//
// For the tutorial's three points the op's route (argument boxing, four
// result tensors, .tolist()) would cost more than the whole fit, so Python
// hands over raw pointers to contiguous CPU data it has checked the shape
// of (biasfit/train.py decides when this path applies; everything else goes
// through torch.ops.biasfit.fit_sgd and checks.cpp). It uses no torch type,
// so one build serves every torch; pybind11 ties it to this CPython only.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "check_options.h"
#include "trainer_cpu.h"

namespace biasfit {
namespace {

namespace py = pybind11;

// Ctrl-C during a long fit: the Python signal handler runs here, on the
// calling thread, and leaves KeyboardInterrupt set for the caller to raise.
bool python_signal_pending(void*) {
  py::gil_scoped_acquire gil;
  return PyErr_CheckSignals() != 0;
}

template <typename T>
py::list first_values(const std::vector<T>& values, size_t count) {
  py::list out(count);
  for (size_t i = 0; i < count; ++i) out[i] = double(values[i]);
  return out;
}

template <typename T>
py::tuple fit(uintptr_t x, uintptr_t y, int64_t n, uintptr_t weights,
              double bias, const FitOptions& opt, int threads) {
  cpu::History<T> history;
  FitState<T> state;
  {
    py::gil_scoped_release no_gil;  // a large fit takes seconds
    state = cpu::train(reinterpret_cast<const T*>(x),
                       reinterpret_cast<const T*>(y), n,
                       Weights<T>::load(reinterpret_cast<const T*>(weights)),
                       T(bias), opt, threads, history,
                       {&python_signal_pending, nullptr});
  }
  if (state.status == kInterrupted) throw py::error_already_set();
  // fit.h: a run that stopped at `epoch` evaluated epoch `epoch` too.
  const size_t seen = size_t(state.epoch) + (state.status != kExhausted);
  return py::make_tuple(state.epoch, state.status, double(state.bias),
                        first_values(history.losses, seen),
                        first_values(history.biases, seen));
}

// Returns (epoch, status, final_bias, losses, biases), one loss and bias per
// epoch evaluated. x, y (n values) and weights (6) are addresses of
// contiguous CPU arrays of float64 if is_double, else float32; bias is
// rounded to that type as torch.tensor(bias, dtype=...) rounds it.
py::tuple fit_sgd(uintptr_t x, uintptr_t y, int64_t n, uintptr_t weights,
                  bool is_double, double bias, double lr, double momentum,
                  double dampening, bool nesterov, double weight_decay,
                  bool maximize, int64_t epochs, double tol, int threads) {
  const FitOptions opt{
      {lr, momentum, dampening, weight_decay, nesterov, maximize}, epochs, tol};
  check_fit_options(opt);  // the op's own checks (checks.cpp)
  return is_double ? fit<double>(x, y, n, weights, bias, opt, threads)
                   : fit<float>(x, y, n, weights, bias, opt, threads);
}

}  // namespace
}  // namespace biasfit

PYBIND11_MODULE(_direct, m) {
  m.def("fit_sgd", &biasfit::fit_sgd,
        "the CPU trainer over raw contiguous arrays: (x, y, n, weights, "
        "is_double, bias, lr, momentum, dampening, nesterov, weight_decay, "
        "maximize, epochs, tol, threads) -> (epoch, status, final_bias, "
        "losses, biases)");
}
