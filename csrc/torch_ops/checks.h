// The ops' input checks, in one place with core/check_options.h, and the few
// helpers every backend's op wrapper uses on stable-ABI tensors. The schemas
// are in torch_ops/ops.cpp.
//
// A failed check throws std::invalid_argument (core/check_options.h's fail),
// which Python sees as a ValueError whose message names the argument: the
// stable ABI carries no other exception type across torch's boundary.
#pragma once

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>

#include "core/check_options.h"
#include "core/fit.h"
#include "core/fit_params.h"
#include "core/network.h"

namespace biasfit {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// "cpu", "cuda:0", "meta": as torch prints a device.
std::string device_name(const Tensor& t);

void check_predict_args(const Tensor& inputs, const Tensor& weights,
                        const Tensor& bias);
// predict_bias_grad: predict's arguments plus grad_out of inputs' shape and
// device (its dtype is converted, as autograd may hand another one).
void check_bias_grad_args(const Tensor& grad_out, const Tensor& inputs,
                          const Tensor& weights, const Tensor& bias);
void check_loss_args(const Tensor& inputs, const Tensor& labels,
                     const Tensor& weights, const Tensor& bias);
// A fit's data: at least one point (the ops above take empty inputs).
void check_fit_data(const Tensor& inputs);
void check_sgd_step_args(const Tensor& param, const Tensor& grad,
                         const std::optional<Tensor>& momentum_buffer);

// fit_params's tensors: inputs and labels as fused_loss's, params the seven
// starting values (w00, b00, w01, w10, b10, w11, final_bias); trained a set
// of their bits (0 to 127); optimizer 0 (SGD), 1 (Adam) or 2 (AdamW).
void check_fit_params_args(const Tensor& inputs, const Tensor& labels,
                           const Tensor& params, int64_t trained,
                           int64_t optimizer);

// params_step's arguments: params as fit_params's, grads 7 values of params'
// dtype, state float64 [7, 4] on params' device; trained and optimizer as
// fit_params's.
void check_params_step_args(const Tensor& params, const Tensor& grads,
                            const Tensor& state, int64_t trained,
                            int64_t optimizer);

// The `needs` argument of fused_loss_grads and predict_grads: a set of
// core/network.h's GradNeeds bits.
void check_needs(int64_t needs);

// fused_loss_grads: (loss, weights_grad, bias_grad, labels_grad,
// inputs_grad); predict_grads: (weights_grad, bias_grad, inputs_grad).
using LossGradsOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;
using PredictGradsOutputs = std::tuple<Tensor, Tensor, Tensor>;

// Whether fused_loss reads inputs and labels in place as 1-D views (slices,
// expand) rather than as contiguous copies: an expanded input of 2^31+ points
// then costs no memory. Contiguous data needs no copy either way.
bool read_as_views(const Tensor& inputs, const Tensor& labels);

// Result of fit_sgd: (final bias, losses[epochs], biases[epochs],
// info = [epoch, status]).
using FitOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor>;

// What every trainer starts from: checked arguments, contiguous data, the
// options, and the outputs allocated on inputs' device in its dtype.
struct FitCall {
  Tensor x, y, weights;
  FitOptions opt;
  Tensor final_bias, losses, biases, info;
  FitOutputs outputs() const { return {final_bias, losses, biases, info}; }
};
FitCall prepare_fit(const Tensor& inputs, const Tensor& labels,
                    const Tensor& weights, const Tensor& bias, double lr,
                    double momentum, double dampening, bool nesterov,
                    double weight_decay, bool maximize, int64_t epochs,
                    double tol, double rtol, int64_t patience, double divide_by);

// fit_params's start on every backend: every argument checked, contiguous
// data and starting params, the options, and the outputs (final params[7],
// losses[epochs], biases[epochs], info[3]) on inputs' device.
struct ParamFitCall {
  Tensor x, y, start;
  ParamFitOptions opt;
  Tensor final_params, losses, biases, info;
  FitOutputs outputs() const { return {final_params, losses, biases, info}; }
};
ParamFitCall prepare_fit_params(const Tensor& inputs, const Tensor& labels,
                                const Tensor& params, int64_t trained,
                                int64_t optimizer, double lr, double momentum,
                                double dampening, bool nesterov,
                                double weight_decay, bool maximize,
                                double beta1, double beta2, double eps,
                                bool amsgrad, int64_t epochs, double tol,
                                double rtol, int64_t patience,
                                double divide_by);

// The batched ops' arguments (torch_ops/batched_cpu.cpp, batched_cuda.cu):
// inputs [Kx, N], labels and grad_out (null where the op has none) [K*, N],
// weights [Kw, 6], bias [Kb], each batch size 1 (shared by every fit) or the
// batch's; N and the batch may be 0. Returns the batch's size.
int64_t check_batched_args(const Tensor& inputs, const Tensor* labels,
                           const Tensor* grad_out, const Tensor& weights,
                           const Tensor& bias);

// f(float{}) or f(double{}) by the (checked) dtype: the ops' one dispatch.
template <typename F>
decltype(auto) dispatch_float(ScalarType dtype, const F& f) {
  if (dtype == ScalarType::Double) return f(double{});
  return f(float{});
}

// A fresh tensor of `sizes` like `like` (device), in `dtype`.
Tensor new_tensor(const Tensor& like, torch::headeronly::IntHeaderOnlyArrayRef sizes,
                  std::optional<ScalarType> dtype = std::nullopt);

template <typename T>
T* data_of(const Tensor& t) {
  return static_cast<T*>(t.mutable_data_ptr());
}

// fit_many's arguments (cpu/fit_many.h), every one before any fit runs:
// inputs and labels float32/float64 of one shape and device, [K, N] with
// offsets empty, or 1-D with offsets int64 [K + 1] rising from 0 to the
// points' count (no empty fit); start [1 or K, 7] in inputs' dtype;
// settings float64 [1 or K, kManyColumns] in core/many.h's columns; trained and
// optimizer as fit_params's. Returns K. check_fit_many_values then reads
// the values (CPU tensors, contiguous): offsets, every point, start and
// every settings row (as fit_params's options), finite where they must be.
int64_t check_fit_many_args(const Tensor& inputs, const Tensor& labels,
                            const Tensor& offsets, const Tensor& start,
                            const Tensor& settings, int64_t trained,
                            int64_t optimizer);
void check_fit_many_values(const Tensor& inputs, const Tensor& labels,
                           const Tensor& offsets, const Tensor& start,
                           const Tensor& settings, int64_t optimizer);

// fit_many's outputs (ops.cpp's schema) on like's device, for both
// backends: params [K, 7], loss [K], epochs int64 [K], status and bad_param
// int8 [K], losses [K, E] with a history (else [K, 0]) and biases [K, E] for
// raw fits (else [K, 0]); E is the most epochs of host_settings' rows (a
// CPU tensor). raw (0, 1 or 2, checked here) keeps a history too.
struct ManyTensors {
  Tensor params, loss, epochs, status, bad, losses, biases;
  bool history;
  int64_t history_len;
};
ManyTensors new_many_outputs(const Tensor& like, int64_t fits,
                             const Tensor& host_settings, bool history, int64_t raw);

}  // namespace biasfit
