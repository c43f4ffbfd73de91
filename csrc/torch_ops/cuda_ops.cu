// The CUDA ops: the stable-ABI plumbing around cuda/launch.h. Checks the
// inputs (torch_ops/checks.h, as the CPU ops), turns tensors into pointers, and gives
// cuda/launch.h's host sequences a CudaLauncher: torch's current stream, its
// allocator for scratch memory, and the status poll's CUDA calls. The
// kernels (cuda/kernels.cuh, cuda/reduce.cuh) and the order they are queued
// in (cuda/launch.h) are torch-free headers that the test harness
// (tests/cuda_emu/) also runs, on the CPU.
//
// Nothing here waits for the GPU: scalars such as the bias are read by the
// kernels from device memory, never copied to the host.
#ifndef USE_CUDA
#define USE_CUDA  // declares the CUDA parts of torch's C shim
#endif
#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/macros.h>
#include <torch/csrc/stable/ops.h>

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "torch_ops/checks.h"
#include "core/fit.h"
#include "cuda/launch.h"
#include "cuda/launch_batched.h"
#include "cuda/launch_many.h"
#include "core/network.h"

namespace biasfit {
namespace cuda {
namespace {

static_assert(sizeof(LossGrad) == 2 * sizeof(double),
              "partials are pairs of doubles");
static_assert(sizeof(ParamSums) == (1 + kNumParams) * sizeof(double),
              "ParamSums partials are eight doubles");

// Only reachable by redispatching with CPU tensors: the dispatcher sends a
// call here when any argument is on CUDA, and the checks in torch_ops/checks.cpp have
// already put every argument on inputs' device.
void check_on_cuda(const Tensor& inputs) {
  if (!inputs.is_cuda()) {
    fail("the CUDA kernel got inputs on ", device_name(inputs),
         "; pass CUDA tensors");
  }
}

using torch::stable::accelerator::DeviceGuard;

// torch's current stream on `t`'s device (torch.cuda.current_stream()).
cudaStream_t current_stream(const Tensor& t) {
  void* stream = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(
      aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream));
  return static_cast<cudaStream_t>(stream);
}

// For the status poll's CUDA calls: while another thread captures a CUDA
// graph in global mode, this thread's "unsafe" calls (cudaStreamIsCapturing
// on the legacy stream, event queries, pinned allocations) would fail and
// invalidate that capture. Relaxed mode, for this thread and only around the
// poll's calls, allows them; the previous mode comes back on exit.
class RelaxedCaptureMode {
 public:
  RelaxedCaptureMode() {
    STD_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode_));
  }
  ~RelaxedCaptureMode() { (void)cudaThreadExchangeStreamCaptureMode(&mode_); }
  RelaxedCaptureMode(const RelaxedCaptureMode&) = delete;
  RelaxedCaptureMode& operator=(const RelaxedCaptureMode&) = delete;

 private:
  cudaStreamCaptureMode mode_ = cudaStreamCaptureModeRelaxed;
};

// cuda/launch.h's Launcher on a GPU: every launch on torch's current stream
// of `like`'s device, scratch from torch's (stream-ordered) allocator.
class CudaLauncher {
 public:
  explicit CudaLauncher(const Tensor& like)
      : like_(like), stream_(current_stream(like)) {}
  ~CudaLauncher() {
    if (event_ != nullptr) (void)cudaEventDestroy(event_);  // fine if pending
  }
  CudaLauncher(const CudaLauncher&) = delete;
  CudaLauncher& operator=(const CudaLauncher&) = delete;

  template <typename... Params, typename... Args>
  void launch(void (*kernel)(Params...), int grid, int block,
              const Args&... args) {
    kernel<<<grid, block, 0, stream_>>>(args...);
    STD_CUDA_KERNEL_LAUNCH_CHECK();
  }

  void* scratch(size_t bytes) {
    const int64_t words = int64_t((bytes + 15) / 16) * 2;
    scratch_.push_back(new_tensor(like_, {words}, ScalarType::Long));
    return scratch_.back().mutable_data_ptr();
  }

  // Never under CUDA graph capture, where an event cannot be queried.
  bool poll_start() {
    const RelaxedCaptureMode relaxed;
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    STD_CUDA_CHECK(cudaStreamIsCapturing(stream_, &capture));
    if (capture != cudaStreamCaptureStatusNone) return false;
    host_ = torch::stable::empty(
        {1}, ScalarType::Long, std::nullopt,
        torch::stable::Device(torch::headeronly::DeviceType::CPU),
        /*pin_memory=*/true);
    STD_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
    return true;
  }

  void poll_copy(const int64_t* status) {
    const RelaxedCaptureMode relaxed;
    // A copy between tensors, pinned and non-blocking: it is queued, and
    // torch's host allocator keeps host_'s memory until it has landed, even
    // if this launcher is gone by then.
    torch::stable::copy_(host_, device_view(status), /*non_blocking=*/true);
    STD_CUDA_CHECK(cudaEventRecord(event_, stream_));
  }

  bool poll_landed() {
    const RelaxedCaptureMode relaxed;
    const cudaError_t err = cudaEventQuery(event_);
    if (err == cudaErrorNotReady) {
      (void)cudaGetLastError();  // not an error; keep it from the next check
      return false;
    }
    STD_CUDA_CHECK(err);
    return true;
  }

  int64_t poll_value() const { return *data_of<int64_t>(host_); }

 private:
  // The one-element view of the scratch tensor that holds `p`.
  Tensor device_view(const int64_t* p) {
    for (Tensor& t : scratch_) {
      const auto* base = static_cast<const int64_t*>(t.data_ptr());
      if (p >= base && p < base + t.numel()) {
        return torch::stable::narrow(t, 0, p - base, 1);
      }
    }
    fail("biasfit internal error: the polled status is not in scratch memory");
  }

  Tensor like_;
  cudaStream_t stream_;
  std::vector<Tensor> scratch_;
  Tensor host_;
  cudaEvent_t event_ = nullptr;
};

// Points i of a and b at a[i * a_step], b[i * b_step]: a step is the
// stride of a 1-D view, 1 for anything contiguous.
template <typename T>
Inputs<T> inputs_of(const Tensor& a, const Tensor& b) {
  const auto step = [](const Tensor& t) {
    return t.dim() == 1 ? t.stride(0) : int64_t(1);
  };
  return {data_of<T>(a), data_of<T>(b), step(a), step(b), a.numel()};
}

Tensor predict_cuda(const Tensor& inputs, const Tensor& weights,
                    const Tensor& bias) {
  check_predict_args(inputs, weights, bias);
  check_on_cuda(inputs);
  const DeviceGuard guard(inputs.get_device_index());
  const Tensor x = torch::stable::contiguous(inputs);
  const Tensor w = torch::stable::contiguous(weights);
  Tensor out = new_tensor(x, x.sizes());
  CudaLauncher launcher(x);
  dispatch_float(x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    predict<T>(launcher, data_of<T>(x), x.numel(), data_of<T>(w),
               data_of<T>(bias), data_of<T>(out));
  });
  return out;
}

// The loss ops' data: as on the CPU, 1-D views are read in place (the same
// points in the same order as a contiguous copy, so the same bits), the
// weights made contiguous.
struct LossData {
  Tensor x, y, w;
};
LossData loss_data(const Tensor& inputs, const Tensor& labels,
                   const Tensor& weights) {
  const bool view = read_as_views(inputs, labels);
  return {view ? inputs : torch::stable::contiguous(inputs),
          view ? labels : torch::stable::contiguous(labels),
          torch::stable::contiguous(weights)};
}

// fused_loss's sums, handed to sink_for(T{}): a LossSink of the data's type
// for fused_loss, of double for fused_loss_sums.
template <typename SinkFor>
void sum_losses(const Tensor& inputs, const Tensor& labels,
                const Tensor& weights, const Tensor& bias,
                const SinkFor& sink_for) {
  check_loss_args(inputs, labels, weights, bias);
  check_on_cuda(inputs);
  const DeviceGuard guard(inputs.get_device_index());
  const LossData data = loss_data(inputs, labels, weights);
  const Tensor &x = data.x, &y = data.y, &w = data.w;
  CudaLauncher launcher(x);
  dispatch_float(x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    sum_points<LossPoint<T>>(launcher, inputs_of<T>(x, y), data_of<T>(w),
                             data_of<T>(bias), sink_for(T{}));
  });
}

std::tuple<Tensor, Tensor> fused_loss_cuda(const Tensor& inputs,
                                           const Tensor& labels,
                                           const Tensor& weights,
                                           const Tensor& bias) {
  // Two tensors, not views of one: the schema promises fresh outputs.
  Tensor loss = new_tensor(inputs, {});
  Tensor grad = new_tensor(inputs, {});
  sum_losses(inputs, labels, weights, bias, [&](auto zero) {
    using T = decltype(zero);
    return LossSink<T>{data_of<T>(loss), data_of<T>(grad)};
  });
  return {loss, grad};
}

Tensor fused_loss_sums_cuda(const Tensor& inputs, const Tensor& labels,
                            const Tensor& weights, const Tensor& bias) {
  Tensor sums = new_tensor(inputs, {2}, ScalarType::Double);
  sum_losses(inputs, labels, weights, bias, [&](auto) {
    return LossSink<double>{data_of<double>(sums), data_of<double>(sums) + 1};
  });
  return sums;
}

Tensor predict_bias_grad_cuda(const Tensor& grad_out, const Tensor& inputs,
                              const Tensor& weights, const Tensor& bias) {
  check_bias_grad_args(grad_out, inputs, weights, bias);
  check_on_cuda(inputs);
  const DeviceGuard guard(inputs.get_device_index());
  const Tensor x = torch::stable::contiguous(inputs);
  const Tensor w = torch::stable::contiguous(weights);
  const Tensor g = torch::stable::contiguous(
      torch::stable::to(grad_out, x.scalar_type()));
  Tensor total = new_tensor(x, {});
  CudaLauncher launcher(x);
  dispatch_float(x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    sum_points<BiasGradPoint<T>>(launcher, inputs_of<T>(x, g), data_of<T>(w),
                                 data_of<T>(bias),
                                 GradSink<T>{data_of<T>(total)});
  });
  return total;
}

FitOutputs fit_sgd_cuda(const Tensor& inputs, const Tensor& labels,
                        const Tensor& weights, const Tensor& bias, double lr,
                        double momentum, double dampening, bool nesterov,
                        double weight_decay, bool maximize, int64_t epochs,
                        double tol, double rtol, int64_t patience,
                        double divide_by) {
  const FitCall call =
      prepare_fit(inputs, labels, weights, bias, lr, momentum, dampening,
                  nesterov, weight_decay, maximize, epochs, tol, rtol,
                  patience, divide_by);
  check_on_cuda(call.x);
  const DeviceGuard guard(call.x.get_device_index());
  CudaLauncher launcher(call.x);
  dispatch_float(call.x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    fit<T>(launcher, inputs_of<T>(call.x, call.y), data_of<T>(call.weights),
           data_of<T>(bias), call.opt,
           FitOutputPointers<T>{data_of<T>(call.losses),
                                data_of<T>(call.biases),
                                data_of<T>(call.final_bias),
                                data_of<int64_t>(call.info)});
  });
  return call.outputs();
}

// ---- every gradient ---------------------------------------------------------

// A fresh tensor of inputs' shape where a per-point gradient is asked for,
// else an empty one (the schema's outputs always exist), as torch_ops/cpu_ops.cpp's.
Tensor per_point_grad(const Tensor& like, bool asked) {
  return asked ? new_tensor(like, like.sizes()) : new_tensor(like, {0});
}

LossGradsOutputs fused_loss_grads_cuda(const Tensor& inputs,
                                       const Tensor& labels,
                                       const Tensor& weights,
                                       const Tensor& bias, int64_t needs) {
  check_loss_args(inputs, labels, weights, bias);
  check_needs(needs);
  check_on_cuda(inputs);
  const DeviceGuard guard(inputs.get_device_index());
  const bool want_w = needs & kNeedWeights, want_y = needs & kNeedLabels,
             want_x = needs & kNeedInputs;
  const LossData data = loss_data(inputs, labels, weights);
  const Tensor &x = data.x, &y = data.y, &w = data.w;
  Tensor loss = new_tensor(inputs, {}), bias_grad = new_tensor(inputs, {});
  Tensor weights_grad = new_tensor(inputs, {want_w ? kNumWeights : 0});
  Tensor dy = per_point_grad(inputs, want_y), dx = per_point_grad(inputs, want_x);
  CudaLauncher launcher(x);
  dispatch_float(x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    loss_grads<T>(launcher, inputs_of<T>(x, y), data_of<T>(w),
                  data_of<T>(bias),
                  LossGradsPointers<T>{
                      data_of<T>(loss),
                      want_w ? data_of<T>(weights_grad) : nullptr,
                      data_of<T>(bias_grad), want_y ? data_of<T>(dy) : nullptr,
                      want_x ? data_of<T>(dx) : nullptr});
  });
  return {loss, weights_grad, bias_grad, dy, dx};
}

Tensor fused_loss_grads_sums_cuda(const Tensor& inputs, const Tensor& labels,
                                  const Tensor& weights, const Tensor& bias) {
  check_loss_args(inputs, labels, weights, bias);
  check_on_cuda(inputs);
  const DeviceGuard guard(inputs.get_device_index());
  const LossData data = loss_data(inputs, labels, weights);
  const Tensor &x = data.x, &y = data.y, &w = data.w;
  Tensor sums = new_tensor(inputs, {1 + kNumParams}, ScalarType::Double);
  CudaLauncher launcher(x);
  dispatch_float(x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    loss_grads_sums<T>(launcher, inputs_of<T>(x, y), data_of<T>(w),
                       data_of<T>(bias), data_of<double>(sums));
  });
  return sums;
}

PredictGradsOutputs predict_grads_cuda(const Tensor& grad_out,
                                       const Tensor& inputs,
                                       const Tensor& weights,
                                       const Tensor& bias, int64_t needs) {
  check_bias_grad_args(grad_out, inputs, weights, bias);
  check_needs(needs);
  check_on_cuda(inputs);
  const DeviceGuard guard(inputs.get_device_index());
  const bool want_w = needs & kNeedWeights, want_x = needs & kNeedInputs;
  const Tensor x = torch::stable::contiguous(inputs);
  const Tensor w = torch::stable::contiguous(weights);
  const Tensor g = torch::stable::contiguous(
      torch::stable::to(grad_out, x.scalar_type()));
  Tensor weights_grad = new_tensor(x, {want_w ? kNumWeights : 0});
  Tensor bias_grad = new_tensor(x, {});
  Tensor dx = per_point_grad(x, want_x);
  CudaLauncher launcher(x);
  dispatch_float(x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    predict_grads<T>(launcher, inputs_of<T>(x, g), data_of<T>(w),
                     data_of<T>(bias),
                     want_w ? data_of<T>(weights_grad) : nullptr,
                     data_of<T>(bias_grad), want_x ? data_of<T>(dx) : nullptr);
  });
  return {weights_grad, bias_grad, dx};
}

FitOutputs fit_params_cuda(const Tensor& inputs, const Tensor& labels,
                           const Tensor& params, int64_t trained,
                           int64_t optimizer, double lr, double momentum,
                           double dampening, bool nesterov,
                           double weight_decay, bool maximize, double beta1,
                           double beta2, double eps, bool amsgrad,
                           int64_t epochs, double tol, double rtol,
                           int64_t patience, double divide_by) {
  const ParamFitCall call = prepare_fit_params(
      inputs, labels, params, trained, optimizer, lr, momentum, dampening,
      nesterov, weight_decay, maximize, beta1, beta2, eps, amsgrad, epochs, tol,
      rtol, patience, divide_by);
  check_on_cuda(call.x);
  const DeviceGuard guard(call.x.get_device_index());
  CudaLauncher launcher(call.x);
  dispatch_float(call.x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    fit_params<T>(launcher, inputs_of<T>(call.x, call.y),
                  data_of<T>(call.start), call.opt,
                  ParamFitOutputs<T>{data_of<T>(call.losses),
                                     data_of<T>(call.biases),
                                     data_of<T>(call.final_params),
                                     data_of<int64_t>(call.info)});
  });
  return call.outputs();
}

}  // namespace
}  // namespace cuda

STABLE_TORCH_LIBRARY_IMPL(biasfit, CUDA, m) {
  m.impl("predict", TORCH_BOX(&cuda::predict_cuda));
  m.impl("fused_loss", TORCH_BOX(&cuda::fused_loss_cuda));
  m.impl("fused_loss_sums", TORCH_BOX(&cuda::fused_loss_sums_cuda));
  m.impl("predict_bias_grad", TORCH_BOX(&cuda::predict_bias_grad_cuda));
  m.impl("fit_sgd", TORCH_BOX(&cuda::fit_sgd_cuda));
  m.impl("fused_loss_grads", TORCH_BOX(&cuda::fused_loss_grads_cuda));
  m.impl("fused_loss_grads_sums", TORCH_BOX(&cuda::fused_loss_grads_sums_cuda));
  m.impl("predict_grads", TORCH_BOX(&cuda::predict_grads_cuda));
  m.impl("fit_params", TORCH_BOX(&cuda::fit_params_cuda));
}

// ---- batched: torch.func.vmap's ops (cuda/launch_batched.h) ----------------

namespace cuda {
namespace {

// The batched ops' arguments, checked (torch_ops/checks.cpp, as the CPU's),
// contiguous, on inputs' device: b is labels, or grad_out in the data's dtype.
struct CudaBatch {
  int64_t k, n;
  Tensor x, y, w, b;

  template <typename T>
  BatchInputs<T> rows() const {
    const auto row = [](const Tensor& t, int64_t width) {
      return t.size(0) == 1 ? int64_t(0) : width;
    };
    return {data_of<T>(x), data_of<T>(y), row(x, n), row(y, n), n,
            data_of<T>(w), row(w, kNumWeights), data_of<T>(b), row(b, 1)};
  }
  Tensor out(std::initializer_list<int64_t> sizes,
             std::optional<ScalarType> dtype = std::nullopt) const {
    return new_tensor(x, torch::headeronly::IntHeaderOnlyArrayRef(sizes), dtype);
  }
};

// The checks, before the device guard (as the unbatched ops'): the batch's size.
int64_t checked_batch(const Tensor& inputs, const Tensor* labels,
                      const Tensor* grad_out, const Tensor& weights,
                      const Tensor& bias) {
  const int64_t k = check_batched_args(inputs, labels, grad_out, weights, bias);
  check_on_cuda(inputs);
  return k;
}

CudaBatch cuda_batch(int64_t k, const Tensor& inputs, const Tensor* labels,
                     const Tensor* grad_out, const Tensor& weights,
                     const Tensor& bias) {
  const Tensor x = torch::stable::contiguous(inputs);
  const Tensor y = labels != nullptr
                       ? torch::stable::contiguous(*labels)
                       : grad_out != nullptr
                             ? torch::stable::contiguous(
                                   torch::stable::to(*grad_out, x.scalar_type()))
                             : x;
  return {k, inputs.size(1), x, y, torch::stable::contiguous(weights),
          torch::stable::contiguous(bias)};
}

Tensor predict_batched_cuda(const Tensor& inputs, const Tensor& weights,
                            const Tensor& bias) {
  const int64_t k = checked_batch(inputs, nullptr, nullptr, weights, bias);
  const DeviceGuard guard(inputs.get_device_index());
  const CudaBatch t = cuda_batch(k, inputs, nullptr, nullptr, weights, bias);
  Tensor out = t.out({t.k, t.n});
  CudaLauncher launcher(t.x);
  dispatch_float(t.x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    batched_predict<T>(launcher, t.rows<T>(), t.k, data_of<T>(out));
  });
  return out;
}

std::tuple<Tensor, Tensor> fused_loss_batched_cuda(const Tensor& inputs,
                                                   const Tensor& labels,
                                                   const Tensor& weights,
                                                   const Tensor& bias) {
  const int64_t k = checked_batch(inputs, &labels, nullptr, weights, bias);
  const DeviceGuard guard(inputs.get_device_index());
  const CudaBatch t = cuda_batch(k, inputs, &labels, nullptr, weights, bias);
  Tensor loss = t.out({t.k}), grad = t.out({t.k});
  CudaLauncher launcher(t.x);
  dispatch_float(t.x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    batched_sum_points<LossPoint<T>>(launcher, t.rows<T>(), t.k,
                                     LossRows<T>{data_of<T>(loss), data_of<T>(grad), 1});
  });
  return {loss, grad};
}

Tensor fused_loss_sums_batched_cuda(const Tensor& inputs, const Tensor& labels,
                                    const Tensor& weights, const Tensor& bias) {
  const int64_t k = checked_batch(inputs, &labels, nullptr, weights, bias);
  const DeviceGuard guard(inputs.get_device_index());
  const CudaBatch t = cuda_batch(k, inputs, &labels, nullptr, weights, bias);
  Tensor sums = t.out({t.k, 2}, ScalarType::Double);
  CudaLauncher launcher(t.x);
  dispatch_float(t.x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    double* out = data_of<double>(sums);
    batched_sum_points<LossPoint<T>>(launcher, t.rows<T>(), t.k,
                                     LossRows<double>{out, out + 1, 2});
  });
  return sums;
}

Tensor predict_bias_grad_batched_cuda(const Tensor& grad_out, const Tensor& inputs,
                                      const Tensor& weights, const Tensor& bias) {
  const int64_t k = checked_batch(inputs, nullptr, &grad_out, weights, bias);
  const DeviceGuard guard(inputs.get_device_index());
  const CudaBatch t = cuda_batch(k, inputs, nullptr, &grad_out, weights, bias);
  Tensor grad = t.out({t.k});
  CudaLauncher launcher(t.x);
  dispatch_float(t.x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    batched_sum_points<BiasGradPoint<T>>(launcher, t.rows<T>(), t.k,
                                         GradRows<T>{data_of<T>(grad)});
  });
  return grad;
}

LossGradsOutputs fused_loss_grads_batched_cuda(const Tensor& inputs,
                                               const Tensor& labels,
                                               const Tensor& weights,
                                               const Tensor& bias, int64_t needs) {
  check_needs(needs);
  const int64_t k = checked_batch(inputs, &labels, nullptr, weights, bias);
  const DeviceGuard guard(inputs.get_device_index());
  const CudaBatch t = cuda_batch(k, inputs, &labels, nullptr, weights, bias);
  const bool want_w = needs & kNeedWeights, want_y = needs & kNeedLabels,
             want_x = needs & kNeedInputs;
  Tensor loss = t.out({t.k}), bias_grad = t.out({t.k});
  Tensor weights_grad = t.out({t.k, want_w ? kNumWeights : 0});
  Tensor dy = t.out({t.k, want_y ? t.n : 0}), dx = t.out({t.k, want_x ? t.n : 0});
  CudaLauncher launcher(t.x);
  dispatch_float(t.x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    batched_loss_grads<T>(launcher, t.rows<T>(), t.k, data_of<T>(loss),
                          want_w ? data_of<T>(weights_grad) : nullptr,
                          data_of<T>(bias_grad), want_y ? data_of<T>(dy) : nullptr,
                          want_x ? data_of<T>(dx) : nullptr);
  });
  return {loss, weights_grad, bias_grad, dy, dx};
}

Tensor fused_loss_grads_sums_batched_cuda(const Tensor& inputs, const Tensor& labels,
                                          const Tensor& weights, const Tensor& bias) {
  const int64_t k = checked_batch(inputs, &labels, nullptr, weights, bias);
  const DeviceGuard guard(inputs.get_device_index());
  const CudaBatch t = cuda_batch(k, inputs, &labels, nullptr, weights, bias);
  Tensor sums = t.out({t.k, 1 + kNumParams}, ScalarType::Double);
  CudaLauncher launcher(t.x);
  dispatch_float(t.x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    batched_sum_points<LossGradsPoint<T>>(launcher, t.rows<T>(), t.k,
                                          ParamSumsRows{data_of<double>(sums)},
                                          PointGrads<T>{nullptr, nullptr});
  });
  return sums;
}

PredictGradsOutputs predict_grads_batched_cuda(const Tensor& grad_out,
                                               const Tensor& inputs,
                                               const Tensor& weights,
                                               const Tensor& bias, int64_t needs) {
  check_needs(needs);
  const int64_t k = checked_batch(inputs, nullptr, &grad_out, weights, bias);
  const DeviceGuard guard(inputs.get_device_index());
  const CudaBatch t = cuda_batch(k, inputs, nullptr, &grad_out, weights, bias);
  const bool want_w = needs & kNeedWeights, want_x = needs & kNeedInputs;
  Tensor weights_grad = t.out({t.k, want_w ? kNumWeights : 0});
  Tensor bias_grad = t.out({t.k}), dx = t.out({t.k, want_x ? t.n : 0});
  CudaLauncher launcher(t.x);
  dispatch_float(t.x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    batched_sum_points<PredictGradsPoint<T>>(
        launcher, t.rows<T>(), t.k,
        ParamGradsRows<T>{nullptr, want_w ? data_of<T>(weights_grad) : nullptr,
                          data_of<T>(bias_grad)},
        PointGrads<T>{nullptr, want_x ? data_of<T>(dx) : nullptr});
  });
  return {weights_grad, bias_grad, dx};
}

}  // namespace
}  // namespace cuda

STABLE_TORCH_LIBRARY_IMPL(biasfit, CUDA, m) {
  m.impl("predict_batched", TORCH_BOX(&cuda::predict_batched_cuda));
  m.impl("fused_loss_batched", TORCH_BOX(&cuda::fused_loss_batched_cuda));
  m.impl("fused_loss_sums_batched", TORCH_BOX(&cuda::fused_loss_sums_batched_cuda));
  m.impl("predict_bias_grad_batched", TORCH_BOX(&cuda::predict_bias_grad_batched_cuda));
  m.impl("fused_loss_grads_batched", TORCH_BOX(&cuda::fused_loss_grads_batched_cuda));
  m.impl("fused_loss_grads_sums_batched",
         TORCH_BOX(&cuda::fused_loss_grads_sums_batched_cuda));
  m.impl("predict_grads_batched", TORCH_BOX(&cuda::predict_grads_batched_cuda));
}

}  // namespace biasfit

// ---- fit_many: K fits in one call (cuda/launch_many.h) ----------------------

namespace biasfit {
namespace cuda {
namespace {

// (params [K, 7], loss [K], epochs int64 [K], status int8 [K], bad_param
// int8 [K], losses [K, E] or [K, 0], biases [K, E] (raw) or [K, 0]), as
// torch_ops/fit_many_cpu.cpp's. (No Ctrl-C check: the GPU runs every fit
// in one launch a route.)
using ManyOutputs =
    std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// The CPU op's checks, every one before any fit runs, read on host copies
// (the data's too: its values are checked finite); offsets and settings may
// come on either device (biasfit.fit_many makes them on the CPU). The only
// place fit_many waits for the device.
ManyOutputs fit_many_cuda(Tensor inputs, Tensor labels, Tensor offsets, Tensor start,
                          Tensor settings, int64_t trained, int64_t optimizer,
                          bool history, int64_t raw) {
  const int64_t fits = check_fit_many_args(inputs, labels, offsets, start, settings,
                                           trained, optimizer);
  check_on_cuda(inputs);
  const DeviceGuard guard(inputs.get_device_index());
  const torch::stable::Device cpu(torch::headeronly::DeviceType::CPU);
  const auto on = [](const Tensor& t, torch::stable::Device d) {
    return torch::stable::contiguous(torch::stable::to(t, d));
  };
  const Tensor host_o = on(offsets, cpu), host_set = on(settings, cpu);
  check_fit_many_values(on(inputs, cpu), on(labels, cpu), host_o, on(start, cpu), host_set,
                        optimizer);
  const Tensor x = torch::stable::contiguous(inputs);
  const Tensor y = torch::stable::contiguous(labels);
  const Tensor o = on(offsets, inputs.device());
  const Tensor s = torch::stable::contiguous(start);
  const Tensor set = on(settings, inputs.device());
  const ManyTensors t = new_many_outputs(x, fits, host_set, history, raw);
  CudaLauncher launcher(x);
  dispatch_float(x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const ManyData<T> d{data_of<T>(x), data_of<T>(y),
                        o.numel() ? data_of<int64_t>(o) : nullptr,
                        x.dim() == 2 ? x.size(1) : 0, fits, data_of<T>(s), s.size(0),
                        data_of<double>(set), set.size(0), trained, optimizer};
    const ManyOut<T> out{data_of<T>(t.params), data_of<T>(t.loss), data_of<int64_t>(t.epochs),
                         data_of<int8_t>(t.status), data_of<int8_t>(t.bad),
                         t.history ? data_of<T>(t.losses) : nullptr, t.history_len,
                         raw ? data_of<T>(t.biases) : nullptr, raw == 2};
    fit_many<T>(launcher, d, out, x.numel(),
                host_o.numel() ? data_of<int64_t>(host_o) : nullptr);
  });
  return {t.params, t.loss, t.epochs, t.status, t.bad, t.losses, t.biases};
}

}  // namespace
}  // namespace cuda

STABLE_TORCH_LIBRARY_IMPL(biasfit, CUDA, m) {
  m.impl("fit_many", TORCH_BOX(&cuda::fit_many_cuda));
}

}  // namespace biasfit
