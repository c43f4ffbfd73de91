// The one registration point: op schemas, and the Python module biasfit._C
// whose loading registers them. Backends register their kernels under the
// same names in torch_ops/cpu_ops.cpp and torch_ops/cuda_ops.cu; torch_ops/checks.cpp holds the input checks.
//
// Built against PyTorch's stable ABI (TORCH_TARGET_VERSION, set by setup.py)
// and Python's limited API: one binary serves every torch from the target
// up, and every CPython 3 from the oldest supported.
#include <Python.h>
#include <torch/csrc/stable/library.h>

#include <stdexcept>
#include <string>

#include "torch_ops/checks.h"

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
  // fused_loss with every gradient, in one pass. needs: which to compute, as
  // bits (csrc/core/network.h's GradNeeds): 1 the six weights (weights_grad[6],
  // else empty), 2 final_bias (bias_grad, 0-d: always computed, it is free),
  // 4 the labels, 8 the inputs (inputs' shape each, else empty).
  m.def("fused_loss_grads(Tensor inputs, Tensor labels, Tensor weights, "
        "Tensor bias, int needs) -> (Tensor loss, Tensor weights_grad, "
        "Tensor bias_grad, Tensor labels_grad, Tensor inputs_grad)");
  // fused_loss_grads's sums as float64 [loss, 6 weight grads, bias grad],
  // before rounding: what a process adds to other processes' sums.
  m.def("fused_loss_grads_sums(Tensor inputs, Tensor labels, Tensor weights, "
        "Tensor bias) -> Tensor");
  // predict's backward for every input: sums of grad_out * d y_hat / d
  // (weights, bias), and grad_out * d y_hat / d inputs; needs as above.
  m.def("predict_grads(Tensor grad_out, Tensor inputs, Tensor weights, "
        "Tensor bias, int needs) -> (Tensor weights_grad, Tensor bias_grad, "
        "Tensor inputs_grad)");
  // Every epoch of the tutorial's loop with torch.optim.SGD's update. losses[e]
  // and biases[e] are epoch e's loss and the bias it was evaluated at; only
  // the first info[0] + 1 (converged or failed) or info[0] (exhausted) are
  // written. info = [epoch, status], status as in csrc/core/fit.h. rtol,
  // patience: the plateau stop, divide_by: N for the mean loss (FitOptions).
  m.def("fit_sgd(Tensor inputs, Tensor labels, Tensor weights, Tensor bias, "
        "float lr, float momentum, float dampening, bool nesterov, "
        "float weight_decay, bool maximize, int epochs, float tol, "
        "float rtol=0., int patience=0, float divide_by=1.) -> "
        "(Tensor bias, Tensor losses, Tensor biases, Tensor info)");
  // Every epoch of the loop for any subset of the seven parameters. params:
  // w00, b00, w01, w10, b10, w11, final_bias; trained: bit p set where
  // params[p] trains; optimizer: 0 SGD (lr, momentum, dampening, nesterov,
  // weight_decay, maximize), 1 Adam, 2 AdamW (lr, beta1, beta2, eps,
  // weight_decay, amsgrad, maximize), with torch.optim's update rules.
  // Outputs as fit_sgd's, with info = [epoch, status, the index of the
  // parameter that became inf/NaN or -1].
  m.def("fit_params(Tensor inputs, Tensor labels, Tensor params, int trained, "
        "int optimizer, float lr, float momentum, float dampening, "
        "bool nesterov, float weight_decay, bool maximize, float beta1, "
        "float beta2, float eps, bool amsgrad, int epochs, float tol, "
        "float rtol=0., int patience=0, float divide_by=1.) -> "
        "(Tensor params, Tensor losses, Tensor biases, Tensor info)");
  // One torch.optim.SGD step of a one-value parameter by csrc/core/sgd.h, the
  // fused trainer's own rule: an epoch loop run from Python (the sharded
  // trainer in biasfit/distributed.py) steps with the same bits as fit_sgd.
  // momentum_buffer: None before the first step. CPU tensors.
  m.def("sgd_step(Tensor param, Tensor grad, Tensor? momentum_buffer, "
        "float lr, float momentum, float dampening, bool nesterov, "
        "float weight_decay, bool maximize) -> "
        "(Tensor param, Tensor momentum_buffer)");
  // One step of fit_params's optimizer (csrc/core/sgd.h, core/adam.h) for the seven
  // parameters at once, with fit_params's options: params[p] for each bit p
  // of trained steps with grads[p] (params' dtype), the others are copied.
  // state: float64 [7, 4], per parameter (momentum buffer or exp_avg,
  // exp_avg_sq, max_exp_avg_sq, steps taken), zeros before the first step;
  // the step's new state is returned. An epoch loop run from Python (a
  // sharded fit, biasfit/distributed.py) thus steps with fit_params's bits.
  // CPU tensors.
  m.def("params_step(Tensor params, Tensor grads, Tensor state, int trained, "
        "int optimizer, float lr, float momentum, float dampening, "
        "bool nesterov, float weight_decay, bool maximize, float beta1, "
        "float beta2, float eps, bool amsgrad) -> (Tensor params, Tensor state)");

  // ---- batched: torch.func.vmap's work (biasfit/vmap_rules.py) ----
  // K fits at once, fit k's results bit for bit the unbatched op's on its
  // rows. inputs, labels, grad_out [batch, N]; weights [batch, 6]; bias
  // [batch]; each batch 1 (shared by every fit) or K, the batch's size. The
  // outputs gain a leading K; gradients not asked for are [K, 0].
  m.def("predict_batched(Tensor inputs, Tensor weights, Tensor bias) -> Tensor");
  m.def("fused_loss_batched(Tensor inputs, Tensor labels, Tensor weights, "
        "Tensor bias) -> (Tensor loss, Tensor bias_grad)");
  m.def("fused_loss_sums_batched(Tensor inputs, Tensor labels, Tensor weights, "
        "Tensor bias) -> Tensor");
  m.def("predict_bias_grad_batched(Tensor grad_out, Tensor inputs, "
        "Tensor weights, Tensor bias) -> Tensor");
  m.def("fused_loss_grads_batched(Tensor inputs, Tensor labels, Tensor weights, "
        "Tensor bias, int needs) -> (Tensor loss, Tensor weights_grad, "
        "Tensor bias_grad, Tensor labels_grad, Tensor inputs_grad)");
  m.def("fused_loss_grads_sums_batched(Tensor inputs, Tensor labels, "
        "Tensor weights, Tensor bias) -> Tensor");
  m.def("predict_grads_batched(Tensor grad_out, Tensor inputs, Tensor weights, "
        "Tensor bias, int needs) -> (Tensor weights_grad, Tensor bias_grad, "
        "Tensor inputs_grad)");
}

namespace {
// In a build without CUDA, a CUDA tensor would otherwise meet the
// dispatcher's generic "could not run ... with arguments from the 'CUDA'
// backend". With CUDA, torch_ops/cuda_ops.cu registers every op.
constexpr char kNotBuilt[] =
    " got a CUDA tensor, but this biasfit was built without CUDA. Rebuild it "
    "where a CUDA toolkit and a CUDA build of torch are present: "
    "BIASFIT_CUDA=1 pip install --no-deps --force-reinstall .";
template <const char* kName, const char* kWhy, typename R, typename... Args>
R cuda_refused(Args...) {
  throw std::runtime_error(std::string("biasfit: ") + kName + kWhy);
}

constexpr char kPredict[] = "biasfit::predict";
constexpr char kFusedLoss[] = "biasfit::fused_loss";
constexpr char kFusedLossSums[] = "biasfit::fused_loss_sums";
constexpr char kPredictBiasGrad[] = "biasfit::predict_bias_grad";
constexpr char kFitSgd[] = "biasfit::fit_sgd";
constexpr char kFusedLossGrads[] = "biasfit::fused_loss_grads";
constexpr char kFusedLossGradsSums[] = "biasfit::fused_loss_grads_sums";
constexpr char kPredictGrads[] = "biasfit::predict_grads";
constexpr char kFitParams[] = "biasfit::fit_params";
constexpr char kParamsStep[] = "biasfit::params_step";
constexpr char kPredictBatched[] = "biasfit::predict_batched";
constexpr char kFusedLossBatched[] = "biasfit::fused_loss_batched";
constexpr char kFusedLossSumsBatched[] = "biasfit::fused_loss_sums_batched";
constexpr char kPredictBiasGradBatched[] = "biasfit::predict_bias_grad_batched";
constexpr char kFusedLossGradsBatched[] = "biasfit::fused_loss_grads_batched";
constexpr char kFusedLossGradsSumsBatched[] =
    "biasfit::fused_loss_grads_sums_batched";
constexpr char kPredictGradsBatched[] = "biasfit::predict_grads_batched";
}  // namespace

#ifndef BIASFIT_WITH_CUDA
STABLE_TORCH_LIBRARY_IMPL(biasfit, CUDA, m) {
  m.impl("predict", TORCH_BOX((&cuda_refused<kPredict, kNotBuilt, Tensor,
                                             Tensor, Tensor, Tensor>)));
  m.impl("fused_loss",
         TORCH_BOX((&cuda_refused<kFusedLoss, kNotBuilt, std::tuple<Tensor, Tensor>,
                                  Tensor, Tensor, Tensor, Tensor>)));
  m.impl("fused_loss_sums",
         TORCH_BOX((&cuda_refused<kFusedLossSums, kNotBuilt, Tensor, Tensor,
                                  Tensor, Tensor, Tensor>)));
  m.impl("predict_bias_grad",
         TORCH_BOX((&cuda_refused<kPredictBiasGrad, kNotBuilt, Tensor, Tensor,
                                  Tensor, Tensor, Tensor>)));
  m.impl("fit_sgd",
         TORCH_BOX((&cuda_refused<kFitSgd, kNotBuilt, FitOutputs, Tensor, Tensor,
                                  Tensor, Tensor, double, double, double, bool,
                                  double, bool, int64_t, double, double, int64_t,
                                  double>)));
  m.impl("fused_loss_grads",
         TORCH_BOX((&cuda_refused<kFusedLossGrads, kNotBuilt, LossGradsOutputs,
                                  Tensor, Tensor, Tensor, Tensor, int64_t>)));
  m.impl("fused_loss_grads_sums",
         TORCH_BOX((&cuda_refused<kFusedLossGradsSums, kNotBuilt, Tensor, Tensor,
                                  Tensor, Tensor, Tensor>)));
  m.impl("predict_grads",
         TORCH_BOX((&cuda_refused<kPredictGrads, kNotBuilt, PredictGradsOutputs,
                                  Tensor, Tensor, Tensor, Tensor, int64_t>)));
  m.impl("fit_params",
         TORCH_BOX((&cuda_refused<kFitParams, kNotBuilt, FitOutputs, Tensor,
                                  Tensor, Tensor, int64_t, int64_t, double, double,
                                  double, bool, double, bool, double, double,
                                  double, bool, int64_t, double, double, int64_t,
                                  double>)));
  m.impl("params_step",
         TORCH_BOX((&cuda_refused<kParamsStep, kNotBuilt,
                                  std::tuple<Tensor, Tensor>, Tensor, Tensor, Tensor,
                                  int64_t, int64_t, double, double, double, bool,
                                  double, bool, double, double, double, bool>)));
  // The batched ops (biasfit/vmap_rules.py).
  m.impl("predict_batched",
         TORCH_BOX((&cuda_refused<kPredictBatched, kNotBuilt, Tensor, Tensor,
                                  Tensor, Tensor>)));
  m.impl("fused_loss_batched",
         TORCH_BOX((&cuda_refused<kFusedLossBatched, kNotBuilt,
                                  std::tuple<Tensor, Tensor>, Tensor, Tensor,
                                  Tensor, Tensor>)));
  m.impl("fused_loss_sums_batched",
         TORCH_BOX((&cuda_refused<kFusedLossSumsBatched, kNotBuilt, Tensor,
                                  Tensor, Tensor, Tensor, Tensor>)));
  m.impl("predict_bias_grad_batched",
         TORCH_BOX((&cuda_refused<kPredictBiasGradBatched, kNotBuilt, Tensor,
                                  Tensor, Tensor, Tensor, Tensor>)));
  m.impl("fused_loss_grads_batched",
         TORCH_BOX((&cuda_refused<kFusedLossGradsBatched, kNotBuilt,
                                  LossGradsOutputs, Tensor, Tensor, Tensor,
                                  Tensor, int64_t>)));
  m.impl("fused_loss_grads_sums_batched",
         TORCH_BOX((&cuda_refused<kFusedLossGradsSumsBatched, kNotBuilt, Tensor,
                                  Tensor, Tensor, Tensor, Tensor>)));
  m.impl("predict_grads_batched",
         TORCH_BOX((&cuda_refused<kPredictGradsBatched, kNotBuilt,
                                  PredictGradsOutputs, Tensor, Tensor, Tensor,
                                  Tensor, int64_t>)));
}
#else
namespace {
// params_step steps seven scalars: there is no CUDA kernel in any build, and
// a CUDA tensor gets one line saying so rather than the generic dispatcher error.
constexpr char kNoCudaKernel[] =
    " has no CUDA kernel: it steps seven scalars on the CPU; pass CPU tensors";
}  // namespace
STABLE_TORCH_LIBRARY_IMPL(biasfit, CUDA, m) {
  m.impl("params_step",
         TORCH_BOX((&cuda_refused<kParamsStep, kNoCudaKernel,
                                  std::tuple<Tensor, Tensor>, Tensor, Tensor, Tensor,
                                  int64_t, int64_t, double, double, double, bool,
                                  double, bool, double, double, double, bool>)));
}
#endif

}  // namespace biasfit

// ---- fit_many: K independent fits in one call (cpu/fit_many.h) ----------
namespace biasfit {
STABLE_TORCH_LIBRARY_FRAGMENT(biasfit, m) {
  // inputs, labels: [K, N] (offsets empty), or 1-D with offsets int64 [K + 1]
  // (fit k: points offsets[k] to offsets[k + 1]); start: [1 or K, 7] starting
  // values; settings: float64 [1 or K, 12], cpu/fit_many.h's columns (lr,
  // momentum, dampening, nesterov, weight_decay, maximize, beta1, beta2,
  // eps, amsgrad, epochs, tol); trained, optimizer as fit_params's. Per fit:
  // final params [K, 7], last loss [K], epochs [K], status int8 [K]
  // (core/fit.h's, or 7: stalled), bad_param int8 [K]; losses [K, E] (E the
  // most epochs, NaN after a fit's last) if history, else [K, 0]. raw: 0
  // fit_many's fits; 1 or 2: as fit_sgd (1) or fit_params (2) gives each
  // (their vmap): no stall decided, history kept, and biases [K, E] each
  // evaluated epoch's final_bias (else [K, 0]). Ctrl-C (from Python) stops
  // the fits: status 5 for every fit.
  m.def("fit_many(Tensor inputs, Tensor labels, Tensor offsets, Tensor start, "
        "Tensor settings, int trained, int optimizer, bool history, "
        "int raw=0) -> (Tensor params, Tensor loss, Tensor epochs, "
        "Tensor status, Tensor bad_param, Tensor losses, Tensor biases)");
}
// A CUDA build registers its CUDA kernel in torch_ops/cuda_ops.cu.
#ifndef BIASFIT_WITH_CUDA
namespace {
constexpr char kFitMany[] = "biasfit::fit_many";
}  // namespace
STABLE_TORCH_LIBRARY_IMPL(biasfit, CUDA, m) {
  m.impl("fit_many",
         TORCH_BOX((&cuda_refused<kFitMany, kNotBuilt,
                                  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                             Tensor>,
                                  Tensor, Tensor, Tensor, Tensor, Tensor, int64_t,
                                  int64_t, bool, int64_t>)));
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
