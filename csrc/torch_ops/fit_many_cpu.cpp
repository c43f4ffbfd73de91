// The fit_many op on the CPU: checks (torch_ops/checks.cpp), then
// cpu/fit_many.h's fits. Registered here, beside torch_ops/cpu_ops.cpp's
// ops, in a second CPU block of the namespace.
#include "torch_ops/python_signals.h"  // first: it includes Python.h (Ctrl-C)

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <tuple>

#include "cpu/fit_many.h"
#include "torch_ops/checks.h"

namespace biasfit {
namespace {

// (params [K, 7], loss [K], epochs int64 [K], status int8 [K], bad_param
// int8 [K], losses [K, E] or [K, 0], biases [K, E] (raw) or [K, 0])
using ManyOutputs =
    std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

ManyOutputs fit_many_cpu(Tensor inputs, Tensor labels, Tensor offsets,
                         Tensor start, Tensor settings, int64_t trained,
                         int64_t optimizer, bool history, int64_t raw) {
  const int64_t fits = check_fit_many_args(inputs, labels, offsets, start,
                                           settings, trained, optimizer);
  const Tensor x = torch::stable::contiguous(inputs);
  const Tensor y = torch::stable::contiguous(labels);
  const Tensor o = torch::stable::contiguous(offsets);
  const Tensor s = torch::stable::contiguous(start);
  const Tensor set = torch::stable::contiguous(settings);
  check_fit_many_values(x, y, o, s, set, optimizer);
  const ManyTensors t = new_many_outputs(x, fits, set, history, raw);
  cpu::ManyStop stop({&python_signal_pending});
  dispatch_float(x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const cpu::ManyData<T> d{
        data_of<T>(x), data_of<T>(y),
        o.numel() ? static_cast<const int64_t*>(o.const_data_ptr()) : nullptr,
        x.dim() == 2 ? x.size(1) : 0, fits, data_of<T>(s), s.size(0),
        static_cast<const double*>(set.const_data_ptr()), set.size(0), trained,
        optimizer, &stop};
    const cpu::ManyOut<T> out{data_of<T>(t.params), data_of<T>(t.loss),
                              data_of<int64_t>(t.epochs), data_of<int8_t>(t.status),
                              data_of<int8_t>(t.bad),
                              t.history ? data_of<T>(t.losses) : nullptr, t.history_len,
                              raw ? data_of<T>(t.biases) : nullptr, raw == 2};
    cpu::fit_many(d, out, int(torch::stable::get_num_threads()));
  });
  // Ctrl-C: every fit says so (those stopped and those never run), for
  // biasfit/many.py to raise KeyboardInterrupt.
  if (stop.requested()) {
    std::fill_n(data_of<int8_t>(t.status), fits, int8_t(kInterrupted));
  }
  return {t.params, t.loss, t.epochs, t.status, t.bad, t.losses, t.biases};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(biasfit, CPU, m) {
  m.impl("fit_many", TORCH_BOX(&fit_many_cpu));
}

}  // namespace biasfit
