// The direct call's arguments, read from the Python objects themselves:
// tensors through their Python attributes (dtype, is_cpu, shape, stride(),
// data_ptr()), numbers as exact floats, ints and bools. Every check the
// direct call needs before it touches a tensor's memory is here, in one
// place; no address ever comes from the caller.
//
// Only a filter: anything it cannot read as it is (another type, a value
// out of range, CUDA, strides, another dtype) makes it answer "not
// readable", and biasfit/engine.py hands the call to the op
// (torch.ops.biasfit.fit_sgd), whose checks (csrc/torch_ops/checks.cpp)
// name what is wrong. No torch type is used, so _direct stays free of
// torch's ABI. For the tutorial's three points the whole Python side of a
// fit is ~2 us, and each attribute read here ~60 ns.
#pragma once

#include <Python.h>

#include <cfloat>
#include <cmath>
#include <cstdint>

namespace biasfit {

// What the reader compares with, handed over once at import by
// biasfit/engine.py (_direct.setup): torch.Tensor and nn.Parameter, the two
// dtypes, the tutorial's weights as CPU tensors (held for the process), and
// the most epochs a fit may run (engine.py's MAX_EPOCHS), and
// torch.get_num_threads.
struct ReadContext {
  PyObject* tensor_type = nullptr;
  PyObject* parameter_type = nullptr;
  PyObject* float32 = nullptr;
  PyObject* float64 = nullptr;
  const void* tutorial32 = nullptr;
  const void* tutorial64 = nullptr;
  int64_t max_epochs = 0;
  PyObject* num_threads = nullptr;  // torch.get_num_threads, asked every fit
  PyObject *dtype = nullptr, *is_cpu = nullptr, *shape = nullptr,
           *stride = nullptr, *numel = nullptr, *data_ptr = nullptr;
  PyObject* weight_names[6] = {};  // model.py's WEIGHT_NAMES, interned
};

// A readable fit_sgd call, ready for the trainer: the data, the six
// weights' addresses (one array, or one value each), the start bias.
struct FitArgs {
  const void *x, *y;
  const void* weights[6];
  int64_t n;
  bool is_double;
  double bias, lr, momentum, dampening, weight_decay, tol;
  bool nesterov, maximize;
  int64_t epochs;
  // Where the final bias goes when the fit ends without an error (the
  // model's final_bias), or null; of float64 if out_double, else float32.
  void* out = nullptr;
  bool out_double = false;
  // The plateau stop and the reduction (core/fit.h's FitOptions), given
  // after out (kStopArgs), else the tutorial's: off, the summed loss.
  double rtol = 0, divide_by = 1;
  int64_t patience = 0;
};

// The arguments, in fit_fused's order: inputs, labels, weights, bias, lr,
// momentum, dampening, nesterov, weight_decay, maximize, epochs, tol.
constexpr Py_ssize_t kFitArgs = 12;
// After them: out, then optionally rtol, patience, divide_by.
constexpr Py_ssize_t kStopArgs = 3;

namespace read {

inline bool real(PyObject* o, double& out) {
  if (!PyFloat_CheckExact(o)) return false;
  out = PyFloat_AS_DOUBLE(o);
  return true;
}

inline bool flag(PyObject* o, bool& out) {
  if (o != Py_True && o != Py_False) return false;
  out = o == Py_True;
  return true;
}

// o.name (an attribute), compared by identity.
inline bool is(PyObject* o, PyObject* name, PyObject* expected) {
  PyObject* r = PyObject_GetAttr(o, name);
  if (r == nullptr) {
    PyErr_Clear();
    return false;
  }
  const bool same = r == expected;
  Py_DECREF(r);
  return same;
}

inline bool call_int(PyObject* o, PyObject* name, long long& out) {
  PyObject* r = PyObject_CallMethodNoArgs(o, name);
  if (r == nullptr) {
    PyErr_Clear();
    return false;
  }
  out = PyLong_AsLongLong(r);
  Py_DECREF(r);
  if (out == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    return false;
  }
  return true;
}

// torch.Tensor or nn.Parameter exactly, of `dtype` (unless the caller has
// read it: dtype_read), on the CPU.
inline bool cpu_tensor(const ReadContext& c, PyObject* t, PyObject* dtype,
                       bool dtype_read) {
  PyTypeObject* type = Py_TYPE(t);
  if (type != reinterpret_cast<PyTypeObject*>(c.tensor_type) &&
      type != reinterpret_cast<PyTypeObject*>(c.parameter_type)) {
    return false;
  }
  return (dtype_read || is(t, c.dtype, dtype)) && is(t, c.is_cpu, Py_True);
}

inline bool address(const ReadContext& c, PyObject* t, const void*& data) {
  long long ptr;
  if (!call_int(t, c.data_ptr, ptr)) return false;
  data = reinterpret_cast<const void*>(uintptr_t(ptr));
  return true;
}

// A 1-D contiguous CPU tensor of `dtype`: its address and length. shape
// and stride() stand in for dim(), numel() and is_contiguous(): a 1-D
// tensor is contiguous when its stride is 1 or it has one element.
inline bool array(const ReadContext& c, PyObject* t, PyObject* dtype,
                  const void*& data, long long& n, bool dtype_read = false) {
  if (!cpu_tensor(c, t, dtype, dtype_read)) return false;
  PyObject* r = PyObject_GetAttr(t, c.shape);
  if (r == nullptr) {
    PyErr_Clear();
    return false;
  }
  bool ok = PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 1;
  if (ok) {
    n = PyLong_AsLongLong(PyTuple_GET_ITEM(r, 0));
    ok = !(n == -1 && PyErr_Occurred());
    if (!ok) PyErr_Clear();
  }
  Py_DECREF(r);
  if (!ok) return false;
  if (n > 1) {
    r = PyObject_CallMethodNoArgs(t, c.stride);
    if (r == nullptr) {
      PyErr_Clear();
      return false;
    }
    const bool unit = PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 1 &&
                      PyLong_AsLongLong(PyTuple_GET_ITEM(r, 0)) == 1;
    PyErr_Clear();
    Py_DECREF(r);
    if (!unit) return false;
  }
  return address(c, t, data);
}

// A CPU tensor of `dtype` holding one value (any shape): its address.
// numel() rather than shape: no torch.Size is built.
inline bool one(const ReadContext& c, PyObject* t, PyObject* dtype,
                const void*& data, bool dtype_read = false) {
  long long n;
  return cpu_tensor(c, t, dtype, dtype_read) && call_int(t, c.numel, n) && n == 1 &&
         address(c, t, data);
}

// t's dtype where it is float32 or float64, and which.
inline bool float_dtype(const ReadContext& c, PyObject* t, PyObject*& dtype,
                        bool& is_double) {
  dtype = PyObject_GetAttr(t, c.dtype);
  if (dtype == nullptr) {
    PyErr_Clear();
    return false;
  }
  Py_DECREF(dtype);  // compared by address only: c holds both dtypes
  if (dtype != c.float32 && dtype != c.float64) return false;
  is_double = dtype == c.float64;
  return true;
}

// The address of a one-value tensor of float32 or float64, and which.
inline bool one_value(const ReadContext& c, PyObject* t, const void*& data,
                      bool& is_double) {
  PyObject* dtype;
  return float_dtype(c, t, dtype, is_double) && one(c, t, dtype, data, true);
}

// The six weights: None (the tutorial's), a tensor of six values, or a
// module's parameters (model._parameters: a dict holding one-value
// tensors under WEIGHT_NAMES).
inline bool weights(const ReadContext& c, PyObject* w, PyObject* dtype,
                    bool is_double, const void* (&out)[6]) {
  const size_t size = is_double ? sizeof(double) : sizeof(float);
  if (w == Py_None) {
    const char* base = static_cast<const char*>(is_double ? c.tutorial64 : c.tutorial32);
    for (int i = 0; i < 6; ++i) out[i] = base + i * size;
    return true;
  }
  if (PyDict_CheckExact(w)) {
    for (int i = 0; i < 6; ++i) {
      PyObject* t = PyDict_GetItemWithError(w, c.weight_names[i]);  // borrowed
      if (t == nullptr) {
        PyErr_Clear();
        return false;
      }
      if (!one(c, t, dtype, out[i])) return false;
    }
    return true;
  }
  const void* data;
  long long n;
  if (!array(c, w, dtype, data, n) || n != 6) return false;
  for (int i = 0; i < 6; ++i) out[i] = static_cast<const char*>(data) + i * size;
  return true;
}

}  // namespace read

// rtol, patience, divide_by (a float, an int, a float) into `out`, or false.
// Their ranges are checked with the others' by check_fit_options.
inline bool read_stop_args(PyObject* const* a, FitArgs& out) {
  if (!read::real(a[0], out.rtol) || !PyLong_CheckExact(a[1]) ||
      !read::real(a[2], out.divide_by)) {
    return false;
  }
  int overflow = 0;
  out.patience = PyLong_AsLongLongAndOverflow(a[1], &overflow);
  return overflow == 0;
}

// Fills `out` and returns true for a call the trainer may run on the
// objects as they are, else false (no error set). a[kFitArgs], where given,
// is where the final bias goes (None, or a one-value tensor).
inline bool read_fit_args(const ReadContext& c, PyObject* const* a, bool has_out,
                          FitArgs& out) {
  using namespace read;
  if (c.tensor_type == nullptr) return false;
  double* reals[] = {&out.lr, &out.momentum, &out.dampening,
                     &out.weight_decay, &out.tol};
  PyObject* real_args[] = {a[4], a[5], a[6], a[8], a[11]};
  for (int i = 0; i < 5; ++i) {
    if (!real(real_args[i], *reals[i])) return false;
  }
  if (!flag(a[7], out.nesterov) || !flag(a[9], out.maximize) ||
      !PyLong_CheckExact(a[10])) {
    return false;
  }
  int overflow = 0;
  out.epochs = PyLong_AsLongLongAndOverflow(a[10], &overflow);
  // The ranges of train.py's checks: every comparison fails on NaN.
  const double inf = HUGE_VAL;
  if (overflow != 0 || out.epochs < 0 || out.epochs > c.max_epochs ||
      !(out.lr >= 0 && out.lr < inf) || !(out.momentum >= 0 && out.momentum < inf) ||
      !(out.weight_decay >= 0 && out.weight_decay < inf) ||
      !(out.dampening > -inf && out.dampening < inf) || !(out.tol >= 0)) {
    return false;
  }
  // The dtype is the inputs', float32 or float64; read once.
  PyObject* dtype;
  if (!float_dtype(c, a[0], dtype, out.is_double)) return false;
  long long n, m;
  if (!array(c, a[0], dtype, out.x, n, true) || !array(c, a[1], dtype, out.y, m) ||
      n == 0 || n != m || !weights(c, a[2], dtype, out.is_double, out.weights)) {
    return false;
  }
  out.n = n;
  // The start bias: a float, or a one-value tensor (model.final_bias).
  const void* bias_data = nullptr;
  bool bias_double = false;
  if (!real(a[3], out.bias)) {
    if (!one_value(c, a[3], bias_data, bias_double)) return false;
    out.bias = bias_double ? *static_cast<const double*>(bias_data)
                           : double(*static_cast<const float*>(bias_data));
  }
  if (has_out && a[kFitArgs] != Py_None) {
    const void* target = bias_data;  // read already where it is the bias
    out.out_double = bias_double;
    if (a[kFitArgs] != a[3] &&
        !one_value(c, a[kFitArgs], target, out.out_double)) {
      return false;
    }
    out.out = const_cast<void*>(target);
  }
  return std::fabs(out.bias) <= (out.is_double ? DBL_MAX : double(FLT_MAX));
}

}  // namespace biasfit
