// Ctrl-C during a long native fit called from Python, for the CPU ops
// (fit_params, fit_many): the Interrupt of cpu/trainer.h.
#pragma once

#include <Python.h>  // limited API

namespace biasfit {

// Python's signal handlers run here, on the calling thread (the op may run
// without the GIL: take it). A handler's exception (KeyboardInterrupt)
// cannot travel through the op, which returns normally: it is cleared, and
// the op reports status kInterrupted for its Python caller to raise. Called
// from C++ with no Python running, it never stops a fit.
inline bool python_signal_pending(void*) {
  if (!Py_IsInitialized()) return false;
  const PyGILState_STATE gil = PyGILState_Ensure();
  const bool raised = PyErr_CheckSignals() != 0;
  if (raised) PyErr_Clear();
  PyGILState_Release(gil);
  return raised;
}

}  // namespace biasfit
