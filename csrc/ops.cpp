// The one registration point: op schemas, and the Python module biasfit._C
// whose loading registers them. Backends register their kernels under the
// same names in cpu.cpp and cuda.cu; checks.cpp holds the input checks.
//
// Built against PyTorch's stable ABI (TORCH_TARGET_VERSION, set by setup.py)
// and Python's limited API: one binary serves every torch from the target
// up, and every CPython 3 from the oldest supported.
#include <Python.h>
#include <torch/csrc/stable/library.h>

#include <stdexcept>
#include <string>

#include "checks.h"

namespace biasfit {

STABLE_TORCH_LIBRARY(biasfit, m) {
  // y_hat for every input, same shape as inputs.
  m.def("predict(Tensor inputs, Tensor weights, Tensor bias) -> Tensor");
  // One pass: total squared error and its derivative w.r.t. bias (0-d each).
  m.def("fused_loss(Tensor inputs, Tensor labels, Tensor weights, "
        "Tensor bias) -> (Tensor loss, Tensor bias_grad)");
  // fused_loss's two sums as float64 [loss, bias_grad], before rounding to
  // the data's dtype: what a process adds to other processes' sums.
  m.def("fused_loss_sums(Tensor inputs, Tensor labels, Tensor weights, "
        "Tensor bias) -> Tensor");
  // sum(grad_out * d y_hat / d bias): predict's backward.
  m.def("predict_bias_grad(Tensor grad_out, Tensor inputs, Tensor weights, "
        "Tensor bias) -> Tensor");
  // Every epoch of the tutorial's loop with torch.optim.SGD's update. losses[e]
  // and biases[e] are epoch e's loss and the bias it was evaluated at; only
  // the first info[0] + 1 (converged or failed) or info[0] (exhausted) are
  // written. info = [epoch, status], status as in csrc/fit.h.
  m.def("fit_sgd(Tensor inputs, Tensor labels, Tensor weights, Tensor bias, "
        "float lr, float momentum, float dampening, bool nesterov, "
        "float weight_decay, bool maximize, int epochs, float tol) -> "
        "(Tensor bias, Tensor losses, Tensor biases, Tensor info)");
  // One torch.optim.SGD step of a one-value parameter by csrc/sgd.h, the
  // fused trainer's own rule: an epoch loop run from Python (the sharded
  // trainer in biasfit/distributed.py) steps with the same bits as fit_sgd.
  // momentum_buffer: None before the first step. CPU tensors.
  m.def("sgd_step(Tensor param, Tensor grad, Tensor? momentum_buffer, "
        "float lr, float momentum, float dampening, bool nesterov, "
        "float weight_decay, bool maximize) -> "
        "(Tensor param, Tensor momentum_buffer)");
}

#ifndef BIASFIT_WITH_CUDA
namespace {
// Without these, a CUDA tensor would meet the dispatcher's generic "could
// not run ... with arguments from the 'CUDA' backend".
template <const char* kName, typename R, typename... Args>
R cuda_not_built(Args...) {
  throw std::runtime_error(
      std::string("biasfit: ") + kName + " got a CUDA tensor, but this "
      "biasfit was built without CUDA. Rebuild it where a CUDA toolkit and a "
      "CUDA build of torch are present: BIASFIT_CUDA=1 pip install --no-deps "
      "--force-reinstall .");
}

constexpr char kPredict[] = "biasfit::predict";
constexpr char kFusedLoss[] = "biasfit::fused_loss";
constexpr char kFusedLossSums[] = "biasfit::fused_loss_sums";
constexpr char kPredictBiasGrad[] = "biasfit::predict_bias_grad";
constexpr char kFitSgd[] = "biasfit::fit_sgd";
}  // namespace

STABLE_TORCH_LIBRARY_IMPL(biasfit, CUDA, m) {
  m.impl("predict", TORCH_BOX((&cuda_not_built<kPredict, Tensor, Tensor,
                                               Tensor, Tensor>)));
  m.impl("fused_loss",
         TORCH_BOX((&cuda_not_built<kFusedLoss, std::tuple<Tensor, Tensor>,
                                    Tensor, Tensor, Tensor, Tensor>)));
  m.impl("fused_loss_sums",
         TORCH_BOX((&cuda_not_built<kFusedLossSums, Tensor, Tensor, Tensor,
                                    Tensor, Tensor>)));
  m.impl("predict_bias_grad",
         TORCH_BOX((&cuda_not_built<kPredictBiasGrad, Tensor, Tensor, Tensor,
                                    Tensor, Tensor>)));
  m.impl("fit_sgd",
         TORCH_BOX((&cuda_not_built<kFitSgd, FitOutputs, Tensor, Tensor,
                                    Tensor, Tensor, double, double, double,
                                    bool, double, bool, int64_t, double>)));
}
#endif

}  // namespace biasfit

#ifdef BIASFIT_WITH_CUDA
constexpr long kWithCuda = 1;
#else
constexpr long kWithCuda = 0;
#endif

// biasfit._C: loading it runs the registrations above. Its constants say what
// was built: WITH_CUDA, and TORCH_TARGET, the oldest torch it runs with.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {
      PyModuleDef_HEAD_INIT, "biasfit._C",
      "biasfit's native ops (torch.ops.biasfit), on torch's stable ABI.", -1,
      nullptr};
  PyObject* m = PyModule_Create(&module);
  if (m == nullptr) return nullptr;
  if (PyModule_AddIntConstant(m, "WITH_CUDA", kWithCuda) < 0 ||
      PyModule_AddStringConstant(m, "TORCH_TARGET", BIASFIT_TORCH_TARGET) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
