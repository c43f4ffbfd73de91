// fit_fused's plain call, recognized in C: two 1-D contiguous CPU tensors of
// one float dtype, the tutorial's weights (None), float/int/bool settings in
// range, no process group. For the tutorial's three points the Python
// checks that decide this took as long as the whole native fit (~1.5 us of
// attribute lookups and comparisons); here they cost a few method calls.
//
// Only a filter: anything it does not recognize (another type, a value out
// of range, CUDA, strides, a process group) makes it answer "not plain", and
// biasfit/train.py takes its general path, whose checks name what is wrong.
// No torch type is used: tensors are read through their Python methods, so
// _direct stays free of torch's ABI.
#pragma once

#include <Python.h>

#include <cfloat>
#include <cmath>
#include <cstdint>

namespace biasfit {

// What the filter compares with, handed over once by train.py
// (_direct.setup_plain): torch.Tensor, the two dtypes, the cached tutorial
// weights' addresses, torch.distributed.is_initialized (or None), and
// train.py's MAX_EPOCHS.
struct PlainContext {
  PyObject* tensor_type = nullptr;
  int64_t max_epochs = 0;
  PyObject* float32 = nullptr;
  PyObject* float64 = nullptr;
  uintptr_t weights32 = 0, weights64 = 0;
  PyObject* is_initialized = nullptr;
  PyObject *dtype = nullptr, *is_cpu = nullptr,
           *shape = nullptr, *stride = nullptr, *data_ptr = nullptr;
};

// The recognized call, ready for the trainer.
struct PlainArgs {
  uintptr_t x, y, weights;
  int64_t n;
  bool is_double;
  double bias, lr, momentum, dampening, weight_decay, tol;
  bool nesterov, maximize;
  int64_t epochs;
};

// The arguments, in fit_fused's order: inputs, labels, weights, bias, lr,
// momentum, dampening, nesterov, weight_decay, maximize, epochs, tol.
constexpr Py_ssize_t kPlainArgs = 12;

namespace plain {

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

// o.name() as an integer, or false (an exception is cleared: not plain).
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

inline bool call_is(PyObject* o, PyObject* name, PyObject* expected,
                    bool attribute) {
  PyObject* r = attribute ? PyObject_GetAttr(o, name)
                          : PyObject_CallMethodNoArgs(o, name);
  if (r == nullptr) {
    PyErr_Clear();
    return false;
  }
  const bool same = r == expected;
  Py_DECREF(r);
  return same;
}

// The one element of a 1-tuple (torch.Size is a tuple), read from
// attribute `name` of o or returned by its method `name`.
inline bool single(PyObject* o, PyObject* name, bool attribute, long long& out) {
  PyObject* r = attribute ? PyObject_GetAttr(o, name)
                          : PyObject_CallMethodNoArgs(o, name);
  if (r == nullptr) {
    PyErr_Clear();
    return false;
  }
  bool ok = PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 1;
  if (ok) {
    out = PyLong_AsLongLong(PyTuple_GET_ITEM(r, 0));
    ok = !(out == -1 && PyErr_Occurred());
    if (!ok) PyErr_Clear();
  }
  Py_DECREF(r);
  return ok;
}

// A 1-D contiguous CPU tensor of `dtype` (float32 or float64: checked by
// the caller, who may have read it already), its address and length. shape
// and stride() stand in for dim(), numel() and is_contiguous() (a 1-D
// tensor is contiguous when its stride is 1 or it has one element): each
// read costs ~60 ns, and the 3-point fit's whole Python side is ~2 us.
inline bool tensor(const PlainContext& c, PyObject* t, PyObject* dtype,
                   bool dtype_read, uintptr_t& data, long long& n) {
  long long stride, ptr;
  if (Py_TYPE(t) != reinterpret_cast<PyTypeObject*>(c.tensor_type)) return false;
  if ((!dtype_read && !call_is(t, c.dtype, dtype, true)) ||
      !call_is(t, c.is_cpu, Py_True, true) || !single(t, c.shape, true, n) ||
      !single(t, c.stride, false, stride) || (stride != 1 && n > 1) ||
      !call_int(t, c.data_ptr, ptr)) {
    return false;
  }
  data = uintptr_t(ptr);
  return true;
}

}  // namespace plain

// Fills `out` and returns true for a plain call, else false (no error set).
inline bool parse_plain(const PlainContext& c, PyObject* const* a,
                        PlainArgs& out) {
  using namespace plain;
  if (c.tensor_type == nullptr || a[2] != Py_None) return false;
  double* reals[] = {&out.bias, &out.lr, &out.momentum, &out.dampening,
                     &out.weight_decay, &out.tol};
  PyObject* real_args[] = {a[3], a[4], a[5], a[6], a[8], a[11]};
  for (int i = 0; i < 6; ++i) {
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
  PyObject* dtype = PyObject_GetAttr(a[0], c.dtype);
  if (dtype == nullptr) {
    PyErr_Clear();
    return false;
  }
  const bool floating = dtype == c.float32 || dtype == c.float64;
  Py_DECREF(dtype);  // compared by address only: c holds both dtypes
  if (!floating) return false;
  out.is_double = dtype == c.float64;
  if (!(std::fabs(out.bias) <= (out.is_double ? DBL_MAX : double(FLT_MAX)))) {
    return false;
  }
  long long n, m;
  if (!tensor(c, a[0], dtype, true, out.x, n) ||
      !tensor(c, a[1], dtype, false, out.y, m) ||
      n == 0 || n != m) {
    return false;
  }
  out.n = n;
  out.weights = out.is_double ? c.weights64 : c.weights32;
  if (c.is_initialized != Py_None) {  // a process group: the sharded path
    PyObject* r = PyObject_CallNoArgs(c.is_initialized);
    if (r == nullptr) {
      PyErr_Clear();
      return false;
    }
    const bool grouped = r != Py_False;
    Py_DECREF(r);
    if (grouped) return false;
  }
  return true;
}

}  // namespace biasfit
