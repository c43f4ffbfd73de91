// The one registration point: op schemas and input checks. Backends register
// their kernels under the same names in cpu.cpp and cuda.cu; python.cpp is
// the Python module.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "network.h"
#include "ops.h"

namespace biasfit {
namespace {

void check_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.defined(), "biasfit: ", name, " is undefined");
  TORCH_CHECK_TYPE(
      t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
      "biasfit: ", name, " must be float32 or float64, got ", t.scalar_type());
}

void check_same(const at::Tensor& t, const char* name, const at::Tensor& ref,
                const char* ref_name) {
  check_tensor(t, name);
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), "biasfit: ", name,
                   " has dtype ", t.scalar_type(), " but ", ref_name,
                   " has dtype ", ref.scalar_type(), "; convert both to one");
  TORCH_CHECK_VALUE(t.device() == ref.device(), "biasfit: ", name, " is on ",
                    t.device(), " but ", ref_name, " is on ", ref.device(),
                    "; move both to one device");
}

}  // namespace

void check_predict_args(const at::Tensor& inputs, const at::Tensor& weights,
                        const at::Tensor& bias) {
  check_tensor(inputs, "inputs");
  TORCH_CHECK_VALUE(inputs.numel() > 0, "biasfit: inputs is empty");
  check_same(weights, "weights", inputs, "inputs");
  check_same(bias, "bias", inputs, "inputs");
  TORCH_CHECK_VALUE(weights.numel() == kNumWeights, "biasfit: weights must "
                    "hold 6 values (w00, b00, w01, w10, b10, w11), got ",
                    weights.numel());
  TORCH_CHECK_VALUE(bias.numel() == 1, "biasfit: bias must hold one value, "
                    "got ", bias.numel());
}

void check_bias_grad_args(const at::Tensor& grad_out, const at::Tensor& inputs,
                          const at::Tensor& weights, const at::Tensor& bias) {
  check_predict_args(inputs, weights, bias);
  TORCH_CHECK_TYPE(grad_out.defined(), "biasfit: grad_out is undefined");
  TORCH_CHECK_VALUE(grad_out.sizes() == inputs.sizes(), "biasfit: grad_out "
                    "has shape ", grad_out.sizes(), " but inputs has shape ",
                    inputs.sizes());
  TORCH_CHECK_VALUE(grad_out.device() == inputs.device(), "biasfit: grad_out "
                    "is on ", grad_out.device(), " but inputs is on ",
                    inputs.device(), "; move both to one device");
}

void check_loss_args(const at::Tensor& inputs, const at::Tensor& labels,
                     const at::Tensor& weights, const at::Tensor& bias) {
  check_predict_args(inputs, weights, bias);
  check_same(labels, "labels", inputs, "inputs");
  TORCH_CHECK_VALUE(labels.sizes() == inputs.sizes(), "biasfit: labels has "
                    "shape ", labels.sizes(), " but inputs has shape ",
                    inputs.sizes(), "; they must match");
}

void check_fit_args(const at::Tensor& inputs, const at::Tensor& labels,
                    const at::Tensor& weights, const at::Tensor& bias,
                    double lr, double momentum, double dampening,
                    bool nesterov, double weight_decay, int64_t epochs,
                    double tol) {
  check_loss_args(inputs, labels, weights, bias);
  check_sgd_options(lr, momentum, dampening, nesterov, weight_decay);
  TORCH_CHECK_VALUE(epochs >= 0, "biasfit: epochs must be >= 0, got ", epochs);
  TORCH_CHECK_VALUE(tol >= 0, "biasfit: tol must be >= 0, got ", tol);
}

void check_sgd_options(double lr, double momentum, double dampening,
                       bool nesterov, double weight_decay) {
  // `!(x >= 0)` also rejects NaN.
  TORCH_CHECK_VALUE(lr >= 0, "biasfit: lr must be >= 0, got ", lr);
  TORCH_CHECK_VALUE(momentum >= 0, "biasfit: momentum must be >= 0, got ",
                    momentum);
  TORCH_CHECK_VALUE(weight_decay >= 0,
                    "biasfit: weight_decay must be >= 0, got ", weight_decay);
  TORCH_CHECK_VALUE(dampening == dampening,
                    "biasfit: dampening must be a number, got NaN");
  TORCH_CHECK_VALUE(!nesterov || (momentum > 0 && dampening == 0),
                    "biasfit: nesterov requires momentum > 0 and dampening "
                    "== 0, got momentum=", momentum, ", dampening=", dampening);
}

void check_sgd_step_args(const at::Tensor& param, const at::Tensor& grad,
                         const std::optional<at::Tensor>& momentum_buffer) {
  check_tensor(param, "param");
  TORCH_CHECK_VALUE(param.numel() == 1, "biasfit: param must hold one value, "
                    "got ", param.numel());
  check_same(grad, "grad", param, "param");
  TORCH_CHECK_VALUE(grad.numel() == 1, "biasfit: grad must hold one value, "
                    "got ", grad.numel());
  if (momentum_buffer.has_value()) {
    check_same(*momentum_buffer, "momentum_buffer", param, "param");
    TORCH_CHECK_VALUE(momentum_buffer->numel() == 1, "biasfit: "
                      "momentum_buffer must hold one value, got ",
                      momentum_buffer->numel());
  }
}

bool read_as_views(const at::Tensor& inputs, const at::Tensor& labels) {
  return inputs.dim() == 1 &&
         !(inputs.is_contiguous() && labels.is_contiguous());
}

FitCall prepare_fit(const at::Tensor& inputs, const at::Tensor& labels,
                    const at::Tensor& weights, const at::Tensor& bias,
                    double lr, double momentum, double dampening,
                    bool nesterov, double weight_decay, bool maximize,
                    int64_t epochs, double tol) {
  check_fit_args(inputs, labels, weights, bias, lr, momentum, dampening,
                 nesterov, weight_decay, epochs, tol);
  const at::Tensor x = inputs.contiguous();
  return {x,
          labels.contiguous(),
          weights.contiguous(),
          {{lr, momentum, dampening, weight_decay, nesterov, maximize},
           epochs, tol},
          at::empty({}, x.options()),
          at::empty({epochs}, x.options()),
          at::empty({epochs}, x.options()),
          at::empty({2}, x.options().dtype(at::kLong))};
}

TORCH_LIBRARY(biasfit, m) {
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
// Without this, a CUDA tensor would meet the dispatcher's generic "could not
// run ... with arguments from the 'CUDA' backend".
void cuda_not_built(const c10::OperatorHandle& op, torch::jit::Stack*) {
  TORCH_CHECK(false, "biasfit: ", op.schema().name(), " got a CUDA tensor, "
              "but this biasfit was built without CUDA. Rebuild it where a "
              "CUDA toolkit and a CUDA build of torch are present: "
              "BIASFIT_CUDA=1 pip install --no-build-isolation .");
}

TORCH_LIBRARY_IMPL(biasfit, CUDA, m) {
  for (const char* name : {"predict", "fused_loss", "fused_loss_sums",
                           "predict_bias_grad", "fit_sgd"}) {
    m.impl(name,
           torch::CppFunction::makeFromBoxedFunction<&cuda_not_built>());
  }
}
#endif

}  // namespace biasfit
