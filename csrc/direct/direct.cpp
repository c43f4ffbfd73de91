// The Python module biasfit._direct: fit_fused's direct call into the CPU
// trainer (cpu/trainer.h), bypassing the dispatcher.
//
// For the tutorial's three points the op's route (argument boxing, four
// result tensors, .tolist()) would cost more than the whole fit, so Python
// hands over raw pointers to contiguous CPU data it has checked the shape
// of (biasfit/train.py decides when this path applies; everything else goes
// through torch.ops.biasfit.fit_sgd and torch_ops/checks.cpp). It uses no torch type,
// so one build serves every torch; pybind11 ties it to this CPython only.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <utility>

#include "core/check_options.h"
#include "direct/plain_call.h"
#include "cpu/trainer.h"

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

// The same as packed float64 bytes: no Python float per value, and bytes
// are not tracked by Python's garbage collector, whose passes over the
// small fit's lists showed up as a tenth of its time. fit_fused unpacks the
// biases only for a callback or a stall check.
template <typename T>
py::bytes packed_values(const std::vector<T>& values, size_t count) {
  std::vector<double> wide(values.begin(), values.begin() + count);
  return py::bytes(reinterpret_cast<const char*>(wide.data()),
                   count * sizeof(double));
}

template <typename T>
py::tuple fit(uintptr_t x, uintptr_t y, int64_t n, uintptr_t weights,
              double bias, const FitOptions& opt, int threads) {
  cpu::History<T> history;
  FitState<T> state;
  auto run = [&] {
    state = cpu::train(reinterpret_cast<const T*>(x),
                       reinterpret_cast<const T*>(y), n,
                       Weights<T>::load(reinterpret_cast<const T*>(weights)),
                       T(bias), opt, threads, history,
                       {&python_signal_pending, nullptr});
  };
  // A large fit takes seconds: other Python threads run meanwhile. A small
  // one (the tutorial's: microseconds) keeps the GIL, whose release and
  // retaking would cost a tenth of it.
  if (double(n) * double(opt.epochs) > 1e5) {
    py::gil_scoped_release no_gil;
    run();
  } else {
    run();
  }
  if (state.status == kInterrupted) throw py::error_already_set();
  // core/fit.h: a run that stopped at `epoch` evaluated epoch `epoch` too.
  const size_t seen = size_t(state.epoch) + (state.status != kExhausted);
  return py::make_tuple(state.epoch, state.status, double(state.bias),
                        first_values(history.losses, seen),
                        packed_values(history.biases, seen),
                        history.first_zero_grad);
}

// Returns (epoch, status, final_bias, losses, biases, first_zero_grad), one
// loss (a list) and bias (packed float64 bytes) per epoch evaluated, and the first epoch whose gradient sum
// was exactly 0 (-1: none). x, y (n values) and weights (6) are addresses of
// contiguous CPU arrays of float64 if is_double, else float32; bias is
// rounded to that type as torch.tensor(bias, dtype=...) rounds it.
py::tuple fit_sgd(uintptr_t x, uintptr_t y, int64_t n, uintptr_t weights,
                  bool is_double, double bias, double lr, double momentum,
                  double dampening, bool nesterov, double weight_decay,
                  bool maximize, int64_t epochs, double tol, int threads) {
  const FitOptions opt{
      {lr, momentum, dampening, weight_decay, nesterov, maximize}, epochs, tol};
  check_fit_options(opt);  // the op's own checks (torch_ops/checks.cpp)
  return is_double ? fit<double>(x, y, n, weights, bias, opt, threads)
                   : fit<float>(x, y, n, weights, bias, opt, threads);
}

PlainContext plain_context;

// Hands over what parse_plain compares with (direct/plain_call.h); once, at import.
void setup_plain(py::object tensor_type, py::object float32, py::object float64,
                 uintptr_t weights32, uintptr_t weights64,
                 py::object is_initialized, int64_t max_epochs) {
  PlainContext& c = plain_context;
  c.max_epochs = max_epochs;
  c.tensor_type = tensor_type.release().ptr();  // kept for the process
  c.float32 = float32.release().ptr();
  c.float64 = float64.release().ptr();
  c.weights32 = weights32;
  c.weights64 = weights64;
  c.is_initialized = is_initialized.release().ptr();
  for (auto [slot, name] : {std::pair{&c.dtype, "dtype"}, {&c.is_cpu, "is_cpu"},
                            {&c.shape, "shape"}, {&c.stride, "stride"},
                            {&c.data_ptr, "data_ptr"}}) {
    *slot = PyUnicode_InternFromString(name);
  }
}

// fit_fused(inputs, labels, weights, bias, lr, momentum, dampening,
// nesterov, weight_decay, maximize, epochs, tol, threads) for a plain call
// (direct/plain_call.h): fit_sgd's tuple, or None for any other call. A raw
// METH_FASTCALL function: pybind11's casting of 13 arguments alone cost
// about a tenth of the tutorial's fit.
PyObject* fit_plain(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  PlainArgs a;
  if (nargs != kPlainArgs + 1 || !PyLong_CheckExact(args[kPlainArgs]) ||
      !parse_plain(plain_context, args, a)) {
    Py_RETURN_NONE;
  }
  const int threads = int(PyLong_AsLong(args[kPlainArgs]));
  try {
    const FitOptions opt{{a.lr, a.momentum, a.dampening, a.weight_decay,
                          a.nesterov, a.maximize},
                         a.epochs,
                         a.tol};
    check_fit_options(opt);  // nesterov's conditions, as fit_sgd
    py::tuple out = a.is_double
                        ? fit<double>(a.x, a.y, a.n, a.weights, a.bias, opt, threads)
                        : fit<float>(a.x, a.y, a.n, a.weights, a.bias, opt, threads);
    return out.release().ptr();
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (const std::invalid_argument& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

PyMethodDef plain_methods[] = {
    {"fit_plain", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&fit_plain)),
     METH_FASTCALL,
     "fit_fused's plain call (direct/plain_call.h): (inputs, labels, weights, bias, "
     "lr, momentum, dampening, nesterov, weight_decay, maximize, epochs, tol, "
     "threads) -> fit_sgd's tuple, or None"},
    {nullptr, nullptr, 0, nullptr}};

// The CPU trainer's plan for a fit (cpu/plan.h's choose_plan): what the
// tests check the cost model by.
const char* trainer_plan(int64_t n, int64_t bytes, int64_t epochs,
                         double off_share, bool closable) {
  return cpu::plan_name(cpu::choose_plan(n, bytes, epochs, off_share, closable));
}

// The plan cpu::train runs for a fit of x from `bias` over `epochs` epochs
// (cpu/plan.h's plan_for): which order the tests expect its sums in. x and
// weights are contiguous 1-D float32 or float64 buffers (numpy arrays).
template <typename T>
const char* plan_of(const py::buffer_info& x, const py::buffer_info& w,
                    double bias, int64_t epochs) {
  return cpu::plan_name(cpu::plan_for(static_cast<const T*>(x.ptr), x.size,
                                      Weights<T>::load(static_cast<const T*>(w.ptr)),
                                      T(bias), epochs));
}

const char* trainer_plan_of(py::buffer x, py::buffer weights, double bias,
                            int64_t epochs) {
  const py::buffer_info xi = x.request(), wi = weights.request();
  const bool is_double = xi.format == py::format_descriptor<double>::format();
  const bool is_float = xi.format == py::format_descriptor<float>::format();
  const auto contiguous = [](const py::buffer_info& b) {
    return b.ndim == 1 && (b.shape[0] < 2 || b.strides[0] == b.itemsize);
  };
  if (!(is_double || is_float) || wi.format != xi.format || wi.size != 6 ||
      !contiguous(xi) || !contiguous(wi) || xi.size < 1) {
    throw std::invalid_argument(
        "trainer_plan_of: x and weights (6 values) must be contiguous 1-D "
        "buffers of one dtype, float32 or float64");
  }
  return is_double ? plan_of<double>(xi, wi, bias, epochs)
                   : plan_of<float>(xi, wi, bias, epochs);
}

}  // namespace
}  // namespace biasfit

PYBIND11_MODULE(_direct, m) {
  m.def("fit_sgd", &biasfit::fit_sgd,
        "the CPU trainer over raw contiguous arrays: (x, y, n, weights, "
        "is_double, bias, lr, momentum, dampening, nesterov, weight_decay, "
        "maximize, epochs, tol, threads) -> (epoch, status, final_bias, "
        "losses, biases, first_zero_grad)");
  m.def("setup_plain", &biasfit::setup_plain,
        "what fit_plain compares with: (torch.Tensor, torch.float32, "
        "torch.float64, tutorial weights' addresses (float32, float64), "
        "torch.distributed.is_initialized or None, the most epochs a fit may "
        "run)");
  if (PyModule_AddFunctions(m.ptr(), biasfit::plain_methods) != 0) {
    throw pybind11::error_already_set();
  }
  m.def("trainer_plan", &biasfit::trainer_plan,
        "the CPU trainer's plan (stream, once, regroup, closed) for (n, bytes "
        "per point, epochs, share of units off at the start, float64 points "
        "all on at the start)",
        pybind11::arg("n"), pybind11::arg("bytes"), pybind11::arg("epochs"),
        pybind11::arg("off_share"), pybind11::arg("closable") = false);
  m.def("trainer_plan_of", &biasfit::trainer_plan_of,
        "the plan the CPU trainer runs for a fit of x (a contiguous float32 or "
        "float64 buffer) with weights (6 values, x's dtype) from bias over "
        "epochs epochs",
        pybind11::arg("x"), pybind11::arg("weights"), pybind11::arg("bias"),
        pybind11::arg("epochs"));
}
