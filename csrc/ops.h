// What every backend implements, and the input checks they all run first.
// The schemas themselves are in ops.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "fit.h"

namespace biasfit {

// Checks that raise a clear Python error naming the offending argument.
void check_predict_args(const at::Tensor& inputs, const at::Tensor& weights,
                        const at::Tensor& bias);
// predict_bias_grad: predict's arguments plus grad_out of inputs' shape and
// device (its dtype is converted, as autograd may hand another one).
void check_bias_grad_args(const at::Tensor& grad_out, const at::Tensor& inputs,
                          const at::Tensor& weights, const at::Tensor& bias);
void check_loss_args(const at::Tensor& inputs, const at::Tensor& labels,
                     const at::Tensor& weights, const at::Tensor& bias);
void check_fit_args(const at::Tensor& inputs, const at::Tensor& labels,
                    const at::Tensor& weights, const at::Tensor& bias,
                    double lr, double momentum, double dampening,
                    bool nesterov, double weight_decay, int64_t epochs,
                    double tol);
void check_sgd_options(double lr, double momentum, double dampening,
                       bool nesterov, double weight_decay);
void check_sgd_step_args(const at::Tensor& param, const at::Tensor& grad,
                         const std::optional<at::Tensor>& momentum_buffer);

// Whether fused_loss reads inputs and labels in place as 1-D views (slices,
// expand) rather than as contiguous copies: an expanded input of 2^31+ points
// then costs no memory. Contiguous data needs no copy either way.
bool read_as_views(const at::Tensor& inputs, const at::Tensor& labels);

// Result of fit_sgd: (final bias, losses[epochs], biases[epochs],
// info = [epoch, status]).
using FitOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// What every trainer starts from: checked arguments, contiguous data, the
// options, and the outputs allocated on inputs' device in its dtype.
struct FitCall {
  at::Tensor x, y, weights;
  FitOptions opt;
  at::Tensor final_bias, losses, biases, info;
  FitOutputs outputs() const { return {final_bias, losses, biases, info}; }
};
FitCall prepare_fit(const at::Tensor& inputs, const at::Tensor& labels,
                    const at::Tensor& weights, const at::Tensor& bias,
                    double lr, double momentum, double dampening,
                    bool nesterov, double weight_decay, bool maximize,
                    int64_t epochs, double tol);

}  // namespace biasfit
