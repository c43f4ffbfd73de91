// The Python module biasfit._C: importing it loads this library, whose static
// initializers register the ops (ops.cpp, cpu.cpp, cuda.cu), plus one call
// for biasfit.fit_fused.
//
// fit_fused calls fit_sgd from here rather than as torch.ops.biasfit.fit_sgd:
// for the tutorial's three points that route's generic argument parsing and
// four result tensors took ~8 us of a ~10 us fit. This still goes through the
// dispatcher (so every backend and every check in ops.cpp applies) and only
// hands back plain Python numbers.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/extension.h>

#include "ops.h"

namespace biasfit {
namespace {

using FitSgdSignature = FitOutputs(const at::Tensor&, const at::Tensor&,
                                   const at::Tensor&, const at::Tensor&,
                                   double, double, double, bool, double, bool,
                                   int64_t, double);

template <typename T>
pybind11::list first_values(const at::Tensor& t, int64_t count) {
  const T* values = t.data_ptr<T>();
  pybind11::list out(count);
  for (int64_t i = 0; i < count; ++i) out[i] = double(values[i]);
  return out;
}

// fit_sgd from a starting bias given as a number (rounded to the data's
// dtype as torch.tensor(bias, dtype=...) rounds it). Returns (epoch, status,
// final_bias, losses, biases) with one loss and bias per epoch evaluated.
pybind11::tuple fit_sgd_to_python(const at::Tensor& inputs,
                                  const at::Tensor& labels,
                                  const at::Tensor& weights, double bias,
                                  double lr, double momentum, double dampening,
                                  bool nesterov, double weight_decay,
                                  bool maximize, int64_t epochs, double tol) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("biasfit::fit_sgd", "")
                             .typed<FitSgdSignature>();
  FitOutputs outputs;
  {
    pybind11::gil_scoped_release no_gil;  // a large fit takes seconds
    outputs = op.call(inputs, labels, weights,
                      at::scalar_tensor(bias, inputs.options()), lr, momentum,
                      dampening, nesterov, weight_decay, maximize, epochs, tol);
  }
  const at::Tensor final_bias = std::get<0>(outputs).cpu();
  const at::Tensor losses = std::get<1>(outputs).cpu();
  const at::Tensor biases = std::get<2>(outputs).cpu();
  const at::Tensor info = std::get<3>(outputs).cpu();
  const int64_t epoch = info.data_ptr<int64_t>()[0];
  const int64_t status = info.data_ptr<int64_t>()[1];
  // fit.h: a run that stopped at `epoch` evaluated epoch `epoch` too.
  const int64_t seen = status == kExhausted ? epoch : epoch + 1;
  pybind11::list loss_list, bias_list;
  double final_value = 0.0;
  AT_DISPATCH_FLOATING_TYPES(losses.scalar_type(), "biasfit::fit_sgd", [&] {
    loss_list = first_values<scalar_t>(losses, seen);
    bias_list = first_values<scalar_t>(biases, seen);
    final_value = double(*final_bias.data_ptr<scalar_t>());
  });
  return pybind11::make_tuple(epoch, status, final_value, loss_list,
                              bias_list);
}

}  // namespace
}  // namespace biasfit

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fit_sgd", &biasfit::fit_sgd_to_python,
        "torch.ops.biasfit.fit_sgd with a float starting bias, returning "
        "(epoch, status, final_bias, losses, biases) as Python values");
}
