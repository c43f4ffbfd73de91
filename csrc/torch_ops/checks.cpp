// The input checks of every op (see torch_ops/checks.h), run by each backend's kernel
// before it touches data.
#include "torch_ops/checks.h"

#include <torch/csrc/stable/device.h>

#include <algorithm>
#include <cmath>

#include "cpu/fit_many.h"

namespace biasfit {
namespace {

using torch::headeronly::DeviceType;
using torch::headeronly::IntHeaderOnlyArrayRef;

std::string shape_of(IntHeaderOnlyArrayRef sizes) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) {
    out += (i ? ", " : "") + std::to_string(sizes[i]);
  }
  return out + "]";
}

void check_tensor(const Tensor& t, const char* name) {
  if (!t.defined()) fail(name, " is undefined");
  const ScalarType dtype = t.scalar_type();
  if (dtype != ScalarType::Float && dtype != ScalarType::Double) {
    fail(name, " must be float32 or float64, got ", dtype);
  }
}

void check_same(const Tensor& t, const char* name, const Tensor& ref,
                const char* ref_name) {
  check_tensor(t, name);
  if (t.scalar_type() != ref.scalar_type()) {
    fail(name, " has dtype ", t.scalar_type(), " but ", ref_name,
         " has dtype ", ref.scalar_type(), "; convert both to one");
  }
  if (t.device() != ref.device()) {
    fail(name, " is on ", device_name(t), " but ", ref_name, " is on ",
         device_name(ref), "; move both to one device");
  }
}

}  // namespace

std::string device_name(const Tensor& t) {
  const auto device = t.device();
  std::string name;
  switch (device.type()) {
    case DeviceType::CPU: return "cpu";
    case DeviceType::CUDA: name = "cuda"; break;
    case DeviceType::Meta: return "meta";
    default: name = "device type " + std::to_string(int(device.type()));
  }
  return device.has_index() ? name + ":" + std::to_string(device.index())
                            : name;
}

Tensor new_tensor(const Tensor& like, IntHeaderOnlyArrayRef sizes,
                  std::optional<ScalarType> dtype) {
  return torch::stable::new_empty(like, sizes, dtype);
}

void check_predict_args(const Tensor& inputs, const Tensor& weights,
                        const Tensor& bias) {
  // Empty inputs are fine, as for any torch op: an empty prediction, a loss
  // and gradients of 0. Only a fit needs data (check_fit_data).
  check_tensor(inputs, "inputs");
  check_same(weights, "weights", inputs, "inputs");
  check_same(bias, "bias", inputs, "inputs");
  if (weights.numel() != kNumWeights) {
    fail("weights must hold 6 values (w00, b00, w01, w10, b10, w11), got ",
         weights.numel());
  }
  if (bias.numel() != 1) fail("bias must hold one value, got ", bias.numel());
}

void check_fit_data(const Tensor& inputs) {
  if (inputs.numel() == 0) fail("inputs is empty: a fit needs at least one point");
}

void check_bias_grad_args(const Tensor& grad_out, const Tensor& inputs,
                          const Tensor& weights, const Tensor& bias) {
  check_predict_args(inputs, weights, bias);
  if (!grad_out.defined()) fail("grad_out is undefined");
  if (!(grad_out.sizes() == inputs.sizes())) {
    fail("grad_out has shape ", shape_of(grad_out.sizes()),
         " but inputs has shape ", shape_of(inputs.sizes()));
  }
  if (grad_out.device() != inputs.device()) {
    fail("grad_out is on ", device_name(grad_out), " but inputs is on ",
         device_name(inputs), "; move both to one device");
  }
}

void check_loss_args(const Tensor& inputs, const Tensor& labels,
                     const Tensor& weights, const Tensor& bias) {
  check_predict_args(inputs, weights, bias);
  check_same(labels, "labels", inputs, "inputs");
  if (!(labels.sizes() == inputs.sizes())) {
    fail("labels has shape ", shape_of(labels.sizes()),
         " but inputs has shape ", shape_of(inputs.sizes()),
         "; they must match");
  }
}

void check_sgd_step_args(const Tensor& param, const Tensor& grad,
                         const std::optional<Tensor>& momentum_buffer) {
  check_tensor(param, "param");
  if (param.numel() != 1) fail("param must hold one value, got ", param.numel());
  check_same(grad, "grad", param, "param");
  if (grad.numel() != 1) fail("grad must hold one value, got ", grad.numel());
  if (momentum_buffer.has_value()) {
    check_same(*momentum_buffer, "momentum_buffer", param, "param");
    if (momentum_buffer->numel() != 1) {
      fail("momentum_buffer must hold one value, got ",
           momentum_buffer->numel());
    }
  }
}

namespace {

void check_seven(const Tensor& t, const char* name) {
  if (t.dim() != 1 || t.numel() != kNumParams) {
    fail(name, " must be 1-D with 7 values (w00, b00, w01, w10, b10, w11, "
         "final_bias), got ", t.numel(), " in ", t.dim(), " dims");
  }
}

void check_trained_optimizer(int64_t trained, int64_t optimizer) {
  if (trained < 0 || trained >= (1 << kNumParams)) {
    fail("trained must be a set of the 7 parameters' bits, 0 to 127, got ",
         trained);
  }
  if (optimizer < 0 || optimizer > 2) {
    fail("optimizer must be 0 (SGD), 1 (Adam) or 2 (AdamW), got ", optimizer);
  }
}

}  // namespace

void check_fit_params_args(const Tensor& inputs, const Tensor& labels,
                           const Tensor& params, int64_t trained,
                           int64_t optimizer) {
  check_tensor(params, "params");
  check_seven(params, "params");
  // fused_loss's checks, with the weights and bias as views of params.
  Tensor all = params;  // narrow takes a non-const reference
  check_loss_args(inputs, labels, torch::stable::narrow(all, 0, 0, kNumWeights),
                  torch::stable::narrow(all, 0, kBiasIndex, 1));
  check_fit_data(inputs);
  check_trained_optimizer(trained, optimizer);
}

void check_params_step_args(const Tensor& params, const Tensor& grads,
                            const Tensor& state, int64_t trained,
                            int64_t optimizer) {
  check_tensor(params, "params");
  check_seven(params, "params");
  check_same(grads, "grads", params, "params");
  check_seven(grads, "grads");
  if (!state.defined()) fail("state is undefined");
  if (state.scalar_type() != ScalarType::Double) {
    fail("state must be float64, got ", state.scalar_type());
  }
  if (state.dim() != 2 || state.size(0) != kNumParams || state.size(1) != 4) {
    fail("state must have shape [7, 4], got ", shape_of(state.sizes()));
  }
  if (state.device() != params.device()) {
    fail("state is on ", device_name(state), " but params is on ",
         device_name(params), "; move both to one device");
  }
  check_trained_optimizer(trained, optimizer);
}

void check_needs(int64_t needs) {
  if (needs < 0 || needs > kNeedAll) {
    fail("needs must be a set of the bits 1 (weights), 2 (bias), 4 (labels), "
         "8 (inputs), i.e. 0 to 15, got ", needs);
  }
}

int64_t check_batched_args(const Tensor& inputs, const Tensor* labels,
                           const Tensor* grad_out, const Tensor& weights,
                           const Tensor& bias) {
  check_tensor(inputs, "inputs");
  if (inputs.dim() != 2) {
    fail("inputs must be 2-D [batch, points], got shape ", shape_of(inputs.sizes()));
  }
  const int64_t n = inputs.size(1);
  auto rows = [&](const Tensor& t, const char* name) {
    if (t.dim() != 2 || t.size(1) != n) {
      fail(name, " must be 2-D [batch, ", n, "] as inputs, got shape ",
           shape_of(t.sizes()));
    }
  };
  if (labels != nullptr) {
    check_same(*labels, "labels", inputs, "inputs");
    rows(*labels, "labels");
  }
  if (grad_out != nullptr) {
    if (!grad_out->defined()) fail("grad_out is undefined");
    if (grad_out->device() != inputs.device()) {
      fail("grad_out is on ", device_name(*grad_out), " but inputs is on ",
           device_name(inputs), "; move both to one device");
    }
    rows(*grad_out, "grad_out");
  }
  check_same(weights, "weights", inputs, "inputs");
  if (weights.dim() != 2 || weights.size(1) != kNumWeights) {
    fail("weights must be 2-D [batch, 6] (w00, b00, w01, w10, b10, w11), got "
         "shape ", shape_of(weights.sizes()));
  }
  check_same(bias, "bias", inputs, "inputs");
  if (bias.dim() != 1) {
    fail("bias must be 1-D [batch], got shape ", shape_of(bias.sizes()));
  }
  // Broadcasting's rule: every batch size 1 or the one other size.
  int64_t batch = 1;
  const char* batch_name = nullptr;
  auto take = [&](int64_t size, const char* name) {
    if (size == 1) return;
    if (batch_name == nullptr) {
      batch = size;
      batch_name = name;
    } else if (size != batch) {
      fail(name, " has batch size ", size, " but ", batch_name, " has ", batch,
           "; each must be 1 or the same");
    }
  };
  take(inputs.size(0), "inputs");
  if (labels != nullptr) take(labels->size(0), "labels");
  if (grad_out != nullptr) take(grad_out->size(0), "grad_out");
  take(weights.size(0), "weights");
  take(bias.size(0), "bias");
  return batch;
}

bool read_as_views(const Tensor& inputs, const Tensor& labels) {
  return inputs.dim() == 1 &&
         !(inputs.is_contiguous() && labels.is_contiguous());
}

FitCall prepare_fit(const Tensor& inputs, const Tensor& labels,
                    const Tensor& weights, const Tensor& bias, double lr,
                    double momentum, double dampening, bool nesterov,
                    double weight_decay, bool maximize, int64_t epochs,
                    double tol, double rtol, int64_t patience, double divide_by) {
  check_loss_args(inputs, labels, weights, bias);
  check_fit_data(inputs);
  const FitOptions opt{{lr, momentum, dampening, weight_decay, nesterov, maximize},
                       epochs, tol, rtol, patience, divide_by};
  check_fit_options(opt);
  const Tensor x = torch::stable::contiguous(inputs);
  return {x,
          torch::stable::contiguous(labels),
          torch::stable::contiguous(weights),
          opt,
          new_tensor(x, {}),
          new_tensor(x, {epochs}),
          new_tensor(x, {epochs}),
          new_tensor(x, {2}, ScalarType::Long)};
}

ParamFitCall prepare_fit_params(const Tensor& inputs, const Tensor& labels,
                                const Tensor& params, int64_t trained,
                                int64_t optimizer, double lr, double momentum,
                                double dampening, bool nesterov,
                                double weight_decay, bool maximize,
                                double beta1, double beta2, double eps,
                                bool amsgrad, int64_t epochs, double tol,
                                double rtol, int64_t patience,
                                double divide_by) {
  check_fit_params_args(inputs, labels, params, trained, optimizer);
  check_sgd_options(lr, optimizer == kSgd ? momentum : 0.0, dampening,
                    optimizer == kSgd && nesterov, weight_decay);
  if (optimizer != kSgd) check_adam_options(beta1, beta2, eps);
  check_fit_options(FitOptions{{lr, 0, 0, 0, false, false}, epochs, tol, rtol,
                               patience, divide_by});
  const ParamFitOptions opt{
      trained, optimizer,
      SgdOptions{lr, momentum, dampening, weight_decay, nesterov, maximize},
      AdamOptions{lr, beta1, beta2, eps, weight_decay, amsgrad, maximize,
                  optimizer == kAdamW},
      epochs, tol, rtol, patience, divide_by};
  const Tensor x = torch::stable::contiguous(inputs);
  return {x,
          torch::stable::contiguous(labels),
          torch::stable::contiguous(params),
          opt,
          new_tensor(x, {kNumParams}),
          new_tensor(x, {epochs}),
          new_tensor(x, {epochs}),
          new_tensor(x, {3}, ScalarType::Long)};
}

}  // namespace biasfit

// ---- fit_many -----------------------------------------------------------

namespace biasfit {
namespace {

// Rows of `t` ([1 or fits, width], of dtype `dtype`), or a failure naming it.
void check_rows(const Tensor& t, const char* name, int64_t fits, int64_t width,
                const char* what) {
  if (!t.defined()) fail(name, " is undefined");
  if (t.dim() != 2 || t.size(1) != width ||
      (t.size(0) != 1 && t.size(0) != fits)) {
    fail(name, " must have shape [1, ", width, "] (shared) or [", fits, ", ",
         width, "] (one row a fit: ", what, "), got ", shape_of(t.sizes()));
  }
}

template <typename T>
void check_finite(const T* v, int64_t n, const char* name) {
  // By blocks without an early exit, which the compiler vectorizes (v - v
  // is 0 exactly for finite v); a block with a bad value is searched again
  // for the first one.
  constexpr int64_t kBlock = 1024;
  for (int64_t from = 0; from < n; from += kBlock) {
    const int64_t to = std::min(n, from + kBlock);
    bool finite = true;
    for (int64_t i = from; i < to; ++i) finite &= v[i] - v[i] == T(0);
    if (finite) continue;
    for (int64_t i = from; i < to; ++i) {
      if (!std::isfinite(v[i])) fail(name, " holds a non-finite value (", v[i], ") at ", i);
    }
  }
}

}  // namespace

int64_t check_fit_many_args(const Tensor& inputs, const Tensor& labels,
                            const Tensor& offsets, const Tensor& start,
                            const Tensor& settings, int64_t trained,
                            int64_t optimizer) {
  check_tensor(inputs, "inputs");
  check_same(labels, "labels", inputs, "inputs");
  if (!(labels.sizes() == inputs.sizes())) {
    fail("labels has shape ", shape_of(labels.sizes()), " but inputs has shape ",
         shape_of(inputs.sizes()), "; they must match");
  }
  if (!offsets.defined()) fail("offsets is undefined");
  if (offsets.scalar_type() != ScalarType::Long) {
    fail("offsets must be int64, got ", offsets.scalar_type());
  }
  int64_t fits;
  if (offsets.numel() == 0) {
    if (inputs.dim() != 2 || inputs.size(0) < 1 || inputs.size(1) < 1) {
      fail("inputs must be [K, N] with K, N >= 1 when no offsets are given, got ",
           shape_of(inputs.sizes()));
    }
    fits = inputs.size(0);
  } else {
    if (inputs.dim() != 1) {
      fail("inputs must be 1-D with offsets, got ", shape_of(inputs.sizes()));
    }
    if (offsets.dim() != 1 || offsets.numel() < 2) {
      fail("offsets must be 1-D with K + 1 >= 2 values, got ", shape_of(offsets.sizes()));
    }
    fits = offsets.numel() - 1;
  }
  check_tensor(start, "start");
  check_same(start, "start", inputs, "inputs");
  check_rows(start, "start", fits, kNumParams, "w00, b00, w01, w10, b10, w11, final_bias");
  check_rows(settings, "settings", fits, cpu::kManyColumns, "cpu/fit_many.h's columns");
  if (settings.scalar_type() != ScalarType::Double) {
    fail("settings must be float64, got ", settings.scalar_type());
  }
  check_trained_optimizer(trained, optimizer);
  return fits;
}

void check_fit_many_values(const Tensor& inputs, const Tensor& labels,
                           const Tensor& offsets, const Tensor& start,
                           const Tensor& settings, int64_t optimizer) {
  const int64_t points = inputs.numel();
  if (offsets.numel() != 0) {
    const int64_t* o = static_cast<const int64_t*>(offsets.const_data_ptr());
    const int64_t fits = offsets.numel() - 1;
    if (o[0] != 0) fail("offsets must start at 0, got ", o[0]);
    for (int64_t k = 0; k < fits; ++k) {
      if (o[k + 1] <= o[k]) {
        fail("offsets must rise (fit ", k, " is [", o[k], ", ", o[k + 1], "): ",
             o[k + 1] == o[k] ? "an empty group" : "out of order", ")");
      }
    }
    if (o[fits] != points) {
      fail("offsets must end at the points' count ", points, ", got ", o[fits]);
    }
  }
  dispatch_float(inputs.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    check_finite(static_cast<const T*>(inputs.const_data_ptr()), points, "inputs");
    check_finite(static_cast<const T*>(labels.const_data_ptr()), points, "labels");
    check_finite(static_cast<const T*>(start.const_data_ptr()), start.numel(), "start");
  });
  const double* rows = static_cast<const double*>(settings.const_data_ptr());
  for (int64_t r = 0; r < settings.size(0); ++r) {
    const double* row = rows + r * cpu::kManyColumns;
    try {
      const ParamFitOptions o = cpu::many_options(row, 0, optimizer, 1);
      check_sgd_options(o.sgd.lr, optimizer == kSgd ? o.sgd.momentum : 0.0,
                        o.sgd.dampening, optimizer == kSgd && o.sgd.nesterov,
                        o.sgd.weight_decay);
      if (optimizer != kSgd) check_adam_options(o.adam.beta1, o.adam.beta2, o.adam.eps);
      const double epochs = row[cpu::kColEpochs];
      if (!(epochs >= 0 && epochs <= 2147483647.0 && epochs == std::floor(epochs))) {
        fail("epochs must be an integer in [0, 2**31 - 1], got ", epochs);
      }
      if (!(o.tol >= 0)) fail("tol must be >= 0, got ", o.tol);
      const double patience = row[cpu::kColPatience];
      if (!(patience >= 0 && patience <= 2147483647.0 && patience == std::floor(patience))) {
        fail("patience must be a whole number of epochs, got ", patience);
      }
      check_stop_options(o.rtol, o.patience, o.divide_by);
      for (int c : {cpu::kColNesterov, cpu::kColMaximize, cpu::kColAmsgrad, cpu::kColMean}) {
        if (row[c] != 0 && row[c] != 1) fail("a flag column must be 0 or 1, got ", row[c]);
      }
    } catch (const std::invalid_argument& e) {
      if (settings.size(0) == 1) throw;  // shared: the message names it
      fail("fit ", r, ": ", std::string(e.what()).substr(9));
    }
  }
}

ManyTensors new_many_outputs(const Tensor& like, int64_t fits,
                             const Tensor& host_settings, bool history, int64_t raw) {
  if (raw < 0 || raw > 2) fail("raw must be 0, 1 or 2, got ", raw);
  history = history || raw != 0;
  int64_t history_len = 0;
  if (history) {
    const double* rows = static_cast<const double*>(host_settings.const_data_ptr());
    for (int64_t r = 0; r < host_settings.size(0); ++r) {
      history_len = std::max(history_len, int64_t(rows[r * kManyColumns + kColEpochs]));
    }
  }
  return {new_tensor(like, {fits, kNumParams}),
          new_tensor(like, {fits}),
          new_tensor(like, {fits}, ScalarType::Long),
          new_tensor(like, {fits}, ScalarType::Char),
          new_tensor(like, {fits}, ScalarType::Char),
          new_tensor(like, {fits, history_len}),
          new_tensor(like, {fits, raw ? history_len : 0}),
          history,
          history_len};
}

}  // namespace biasfit
