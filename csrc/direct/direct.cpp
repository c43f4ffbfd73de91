// The Python module biasfit._direct: the direct call into the CPU trainer
// (cpu/trainer.h) for the bias-only SGD fit, bypassing the dispatcher, and
// core/fit.h's FitStatus values as module constants, which Python reads.
//
// For the tutorial's three points the op's route (argument boxing, four
// result tensors, .tolist()) would cost more than the whole fit, so the
// trainer is called here on the tensors themselves, read and checked by
// direct/read_args.h; whatever it cannot read as it is goes to
// torch.ops.biasfit.fit_sgd (biasfit/engine.py decides nothing more). It
// uses no torch type, so one build serves every torch; pybind11 ties it to
// this CPython only.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <utility>

#include "core/check_options.h"
#include "core/fit.h"
#include "core/many.h"
#include "direct/read_args.h"
#include "cpu/trainer.h"
namespace biasfit {
namespace {

namespace py = pybind11;

// set_progress's callable, or null: progress(epoch, loss, bias) of the last
// epoch recorded, about every 100 ms of a fit (the command line's bar).
PyObject* progress_hook = nullptr;

// Every ~100 ms of a fit (cpu/trainer.h's InterruptPoll), on the calling
// thread: the progress report, then Ctrl-C: the Python signal handler runs
// here and leaves KeyboardInterrupt set for the caller to raise (as does an
// exception in the report). context: the fit's History<T>.
template <typename T>
bool poll_python(void* context) {
  py::gil_scoped_acquire gil;
  const auto& history = *static_cast<const cpu::History<T>*>(context);
  if (progress_hook != nullptr && history.evaluated > 0) {
    const size_t e = size_t(history.evaluated - 1);
    PyObject* r = PyObject_CallFunction(progress_hook, "Ldd", static_cast<long long>(e),
                                        double(history.losses[e]),
                                        double(history.biases[e]));
    if (r == nullptr) return true;
    Py_DECREF(r);
  }
  return PyErr_CheckSignals() != 0;
}

void set_progress(py::object hook) {
  Py_XDECREF(progress_hook);
  progress_hook = hook.is_none() ? nullptr : hook.inc_ref().ptr();
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
py::tuple fit(const FitArgs& a, const FitOptions& opt, int threads) {
  cpu::History<T> history;
  FitState<T> state;
  T w[6];
  for (int i = 0; i < 6; ++i) w[i] = *static_cast<const T*>(a.weights[i]);
  auto run = [&] {
    state = cpu::train(static_cast<const T*>(a.x), static_cast<const T*>(a.y), a.n,
                       Weights<T>::load(w), T(a.bias), opt, threads, history,
                       {&poll_python<T>, &history});
  };
  // A large fit takes seconds: other Python threads run meanwhile. A small
  // one (the tutorial's: microseconds) keeps the GIL, whose release and
  // retaking would cost a tenth of it.
  if (double(a.n) * double(opt.epochs) > 1e5) {
    py::gil_scoped_release no_gil;
    run();
  } else {
    run();
  }
  if (state.status == kInterrupted) throw py::error_already_set();
  // As `out.data.fill_(final_bias)` would: rounded to out's dtype, nearest.
  if (a.out != nullptr && (state.status == kConverged || state.status == kExhausted ||
                           state.status == kPlateau)) {
    if (a.out_double) {
      *static_cast<double*>(a.out) = double(state.bias);
    } else {
      *static_cast<float*>(a.out) = float(state.bias);
    }
  }
  // core/fit.h: a run that stopped at `epoch` evaluated epoch `epoch` too.
  const size_t seen = size_t(state.epoch) + (state.status != kExhausted);
  return py::make_tuple(state.epoch, state.status, double(state.bias),
                        first_values(history.losses, seen),
                        packed_values(history.biases, seen),
                        history.first_zero_grad);
}

ReadContext context;

// Hands over what read_fit_args compares with (direct/read_args.h); once,
// at import. The tutorial's weights are read like any weights argument, and
// held for the process, so their memory outlives every fit.
void setup(py::object tensor_type, py::object parameter_type,
           py::object float32, py::object float64, py::object tutorial32,
           py::object tutorial64, py::tuple weight_names, int64_t max_epochs,
           py::object num_threads) {
  ReadContext c;
  c.num_threads = num_threads.ptr();
  c.tensor_type = tensor_type.ptr();
  c.parameter_type = parameter_type.ptr();
  c.float32 = float32.ptr();
  c.float64 = float64.ptr();
  c.max_epochs = max_epochs;
  for (auto [slot, name] : {std::pair{&c.dtype, "dtype"}, {&c.is_cpu, "is_cpu"},
                            {&c.shape, "shape"}, {&c.stride, "stride"},
                            {&c.numel, "numel"}, {&c.data_ptr, "data_ptr"}}) {
    *slot = PyUnicode_InternFromString(name);
  }
  if (weight_names.size() != 6) throw std::invalid_argument("six weight names");
  for (int i = 0; i < 6; ++i) {
    PyObject* name = weight_names[i].ptr();
    Py_INCREF(name);
    PyUnicode_InternInPlace(&name);
    c.weight_names[i] = name;
  }
  long long n64, n32;
  if (!read::array(c, tutorial64.ptr(), c.float64, c.tutorial64, n64) ||
      !read::array(c, tutorial32.ptr(), c.float32, c.tutorial32, n32) ||
      n64 != 6 || n32 != 6) {
    throw std::invalid_argument(
        "the tutorial weights must be 1-D contiguous CPU tensors of 6 values, "
        "float64 then float32");
  }
  // Kept for the process: the reader compares with them by address.
  for (py::object* o : {&tensor_type, &parameter_type, &float32, &float64,
                        &tutorial32, &tutorial64, &num_threads}) {
    o->inc_ref();
  }
  context = c;
}

// fit_sgd(inputs, labels, weights, bias, lr, momentum, dampening, nesterov,
// weight_decay, maximize, epochs, tol[, out[, rtol, patience, divide_by]])
// -> (epoch, status,
// final_bias, losses, biases, first_zero_grad), or None where
// direct/read_args.h cannot read the arguments as they are. One loss (a
// list) and bias (packed float64 bytes) per epoch evaluated, and the first
// epoch whose gradient sum was exactly 0 with no unit known on (-1: none).
// out (None or a one-value float tensor: a model's final_bias) receives the
// final bias when the fit ends converged or exhausted, written in place as
// `out.data.fill_(final_bias)` would (a stall is decided later, in Python,
// which then writes the bias it stopped at).
// A raw METH_FASTCALL function: pybind11's casting of 13 arguments alone
// cost about a tenth of the tutorial's fit.
PyObject* fit_sgd(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  FitArgs a;
  if ((nargs != kFitArgs && nargs != kFitArgs + 1 && nargs != kFitArgs + 1 + kStopArgs) ||
      !read_fit_args(context, args, nargs > kFitArgs, a) ||
      (nargs > kFitArgs + 1 && !read_stop_args(args + kFitArgs + 1, a))) {
    Py_RETURN_NONE;
  }
  PyObject* count = PyObject_CallNoArgs(context.num_threads);
  if (count == nullptr) return nullptr;
  const int threads = int(PyLong_AsLong(count));
  Py_DECREF(count);
  if (threads == -1 && PyErr_Occurred()) return nullptr;
  try {
    const FitOptions opt{{a.lr, a.momentum, a.dampening, a.weight_decay,
                          a.nesterov, a.maximize},
                         a.epochs,
                         a.tol,
                         a.rtol,
                         a.patience,
                         a.divide_by};
    check_fit_options(opt);  // the op's own checks (torch_ops/checks.cpp)
    py::tuple out = a.is_double ? fit<double>(a, opt, threads)
                                : fit<float>(a, opt, threads);
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

PyMethodDef methods[] = {
    {"fit_sgd", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&fit_sgd)),
     METH_FASTCALL,
     "the CPU trainer on the tensors themselves: (inputs, labels, weights (None, "
     "6 values or a module's _parameters), bias (float or one-value tensor), lr, "
     "momentum, dampening, nesterov, weight_decay, maximize, epochs, tol"
     "[, out: a one-value tensor to receive the final bias[, rtol, patience, divide_by]]) -> (epoch, status, final_bias, losses, packed float64 biases, "
     "first_zero_grad), or None where they cannot be read as they are"},
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
  m.def("setup", &biasfit::setup,
        "what fit_sgd compares with: (torch.Tensor, nn.Parameter, torch.float32, "
        "torch.float64, the tutorial's weights as float32 and float64 CPU tensors, "
        "the six weight names, the most epochs a fit may run, "
        "torch.get_num_threads: the trainer's threads)");
  if (PyModule_AddFunctions(m.ptr(), biasfit::methods) != 0) {
    throw pybind11::error_already_set();
  }
  // core/fit.h's FitStatus, the one definition of the codes every trainer
  // (the direct call, the ops) reports.
  m.attr("RUNNING") = int64_t(biasfit::kRunning);
  m.attr("CONVERGED") = int64_t(biasfit::kConverged);
  m.attr("EXHAUSTED") = int64_t(biasfit::kExhausted);
  m.attr("LOSS_NONFINITE") = int64_t(biasfit::kLossNonFinite);
  m.attr("BIAS_NONFINITE") = int64_t(biasfit::kBiasNonFinite);
  m.attr("INTERRUPTED") = int64_t(biasfit::kInterrupted);
  m.attr("PLATEAU") = int64_t(biasfit::kPlateau);
  m.attr("STALLED") = int64_t(biasfit::kStalled);  // fit_many's (core/many.h)
  m.def("set_progress", &biasfit::set_progress,
        "progress(epoch, loss, bias), called about every 0.1 s of a fit_sgd call "
        "with the last epoch recorded; None: no reports");
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
