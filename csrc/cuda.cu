// CUDA kernels: the ops of cpu.cpp over the same math (network.h, sgd.h,
// fit.h) and the same input checks (ops.cpp); sums via reduce_cuda.cuh.
//
// Every launch goes on torch's current stream of the inputs' device, and
// nothing here waits for the GPU: scalars such as the bias are read by the
// kernels from device memory, never copied to the host. Host code uses only
// torch's stable ABI, as the CPU ops do.
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

#include "checks.h"
#include "fit.h"
#include "network.h"
#include "reduce_cuda.cuh"

namespace biasfit {
namespace cuda {
namespace {

static_assert(sizeof(LossGrad) == 2 * sizeof(double),
              "partials are allocated as pairs of doubles");

// Only reachable by redispatching with CPU tensors: the dispatcher sends a
// call here when any argument is on CUDA, and the checks in checks.cpp have
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

template <typename T>
bool aligned16(const T* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

// Points i of a and b at a[i * a_step], b[i * b_step]: a step is the
// stride of a 1-D view, 1 for anything contiguous.
template <typename T>
Inputs<T> inputs_of(const Tensor& a, const Tensor& b) {
  const auto step = [](const Tensor& t) {
    return t.dim() == 1 ? t.stride(0) : int64_t(1);
  };
  return {data_of<T>(a), data_of<T>(b), step(a), step(b), a.numel()};
}

// 128-bit loads need dense, 16-byte aligned arrays.
template <typename T>
bool dense_and_aligned(const Inputs<T>& in) {
  return in.a_step == 1 && in.b_step == 1 && aligned16(in.a) &&
         aligned16(in.b);
}

LossGrad* partials_of(Tensor& t) {
  return reinterpret_cast<LossGrad*>(data_of<double>(t));
}

// Scratch for one pass: grid_blocks(n) partial (loss, grad) pairs.
template <typename T>
Tensor new_partials(const Tensor& like, int64_t n) {
  return new_tensor(like, {2 * int64_t(grid_blocks<T>(n))}, ScalarType::Double);
}

// Points of fused_loss and of the trainer's epochs: (input, label).
template <typename T>
struct LossPoint {
  Weights<T> w;
  T bias;
  __device__ LossGrad operator()(T x, T y) const {
    return point_loss_grad(x, y, w, bias);
  }
};

// Points of predict's backward: (input, grad_out); only .grad is used.
template <typename T>
struct BiasGradPoint {
  Weights<T> w;
  T bias;
  __device__ LossGrad operator()(T x, T g) const {
    return {0.0, point_bias_grad(x, g, w, bias)};
  }
};

// The sums take the data's type at the end, as in cpu.cpp.
template <typename T>
struct LossSink {
  T* loss;
  T* grad;
  __device__ bool active() const { return true; }
  __device__ void operator()(const LossGrad& s) const {
    *loss = T(s.loss);
    *grad = T(s.grad);
  }
};

template <typename T>
struct GradSink {
  T* grad;
  __device__ bool active() const { return true; }
  __device__ void operator()(const LossGrad& s) const { *grad = T(s.grad); }
};

// The trainer's end of an epoch; a no-op once the fit has stopped.
template <typename T>
struct EpochSink {
  FitState<T>* state;
  FitOptions opt;
  T* losses;
  T* biases;
  __device__ bool active() const { return state->status == kRunning; }
  __device__ void operator()(const LossGrad& s) const {
    state->end_epoch(s, opt, losses, biases);
  }
};

// First pass of the sum of point(a[i], b[i]), choosing the load width.
template <typename Point, typename T>
void launch_partials(const Inputs<T>& in, const T* weights, const T* bias,
                     const int64_t* status, LossGrad* partials,
                     cudaStream_t stream) {
  auto kernel = dense_and_aligned(in) ? partial_sums_kernel<true, Point, T>
                                      : partial_sums_kernel<false, Point, T>;
  kernel<<<grid_blocks<T>(in.n), kThreads, 0, stream>>>(in, weights, bias,
                                                        status, partials);
  STD_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename Sink>
void launch_finish(const LossGrad* partials, int count, const Sink& sink,
                   cudaStream_t stream) {
  finish_kernel<<<1, kThreads, 0, stream>>>(partials, count, sink);
  STD_CUDA_KERNEL_LAUNCH_CHECK();
}

// Both passes: sink(sum over i of point(a[i], b[i])), all on the device.
template <typename Point, typename T, typename Sink>
void sum_points(const Inputs<T>& in, const T* weights, const T* bias,
                const Sink& sink, const Tensor& like) {
  const cudaStream_t stream = current_stream(like);
  Tensor partials = new_partials<T>(like, in.n);
  launch_partials<Point>(in, weights, bias, nullptr, partials_of(partials),
                         stream);
  launch_finish(partials_of(partials), grid_blocks<T>(in.n), sink, stream);
}

// ---- predict ----------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kThreads)
    predict_kernel(const T* __restrict__ x, int64_t n,
                   const T* __restrict__ weights, const T* __restrict__ bias,
                   T* __restrict__ out) {
  const Weights<T> w = Weights<T>::load(weights);
  const T b = *bias;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += stride) {
    out[i] = predict(x[i], w, b);
  }
}

Tensor predict_cuda(const Tensor& inputs, const Tensor& weights,
                        const Tensor& bias) {
  check_predict_args(inputs, weights, bias);
  check_on_cuda(inputs);
  const DeviceGuard guard(inputs.get_device_index());
  const Tensor x = torch::stable::contiguous(inputs);
  const Tensor w = torch::stable::contiguous(weights);
  Tensor out = new_tensor(x, x.sizes());
  dispatch_float(x.scalar_type(), [&](auto zero) {
    using scalar_t = decltype(zero);
    // Elementwise, so the grid only sets how many points a thread takes.
    predict_kernel<<<grid_blocks<scalar_t>(x.numel()), kThreads, 0,
                     current_stream(x)>>>(
        data_of<scalar_t>(x), x.numel(), data_of<scalar_t>(w),
        data_of<scalar_t>(bias), data_of<scalar_t>(out));
    STD_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// ---- fused_loss and predict_bias_grad ---------------------------------------

// fused_loss's sums, handed to sink_for(scalar_t{}): a LossSink of the
// data's type for fused_loss, of double for fused_loss_sums.
template <typename SinkFor>
void sum_losses(const Tensor& inputs, const Tensor& labels,
                const Tensor& weights, const Tensor& bias,
                const SinkFor& sink_for) {
  check_loss_args(inputs, labels, weights, bias);
  check_on_cuda(inputs);
  const DeviceGuard guard(inputs.get_device_index());
  // As on the CPU, 1-D views are read in place; the same points in the same
  // order as a contiguous copy, so the same bits.
  const bool view = read_as_views(inputs, labels);
  const Tensor x = view ? inputs : torch::stable::contiguous(inputs);
  const Tensor y = view ? labels : torch::stable::contiguous(labels);
  const Tensor w = torch::stable::contiguous(weights);
  dispatch_float(x.scalar_type(), [&](auto zero) {
    using scalar_t = decltype(zero);
    sum_points<LossPoint<scalar_t>>(
        inputs_of<scalar_t>(x, y), data_of<scalar_t>(w),
        data_of<scalar_t>(bias), sink_for(scalar_t{}), x);
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

Tensor fused_loss_sums_cuda(const Tensor& inputs,
                                const Tensor& labels,
                                const Tensor& weights,
                                const Tensor& bias) {
  Tensor sums = new_tensor(inputs, {2}, ScalarType::Double);
  sum_losses(inputs, labels, weights, bias, [&](auto) {
    return LossSink<double>{data_of<double>(sums),
                            data_of<double>(sums) + 1};
  });
  return sums;
}

Tensor predict_bias_grad_cuda(const Tensor& grad_out,
                                  const Tensor& inputs,
                                  const Tensor& weights,
                                  const Tensor& bias) {
  check_bias_grad_args(grad_out, inputs, weights, bias);
  check_on_cuda(inputs);
  const DeviceGuard guard(inputs.get_device_index());
  const Tensor x = torch::stable::contiguous(inputs);
  const Tensor w = torch::stable::contiguous(weights);
  const Tensor g = torch::stable::contiguous(
      torch::stable::to(grad_out, x.scalar_type()));
  Tensor total = new_tensor(x, {});
  dispatch_float(x.scalar_type(), [&](auto zero) {
    using scalar_t = decltype(zero);
    sum_points<BiasGradPoint<scalar_t>>(
        inputs_of<scalar_t>(x, g), data_of<scalar_t>(w),
        data_of<scalar_t>(bias),
        GradSink<scalar_t>{data_of<scalar_t>(total)}, x);
  });
  return total;
}

// ---- fit_sgd -----------------------------------------------------------------
//
// No host round-trip per epoch: the bias, momentum buffer, epoch count and
// status live in a FitState<T> on the device, FitState::end_epoch runs in one
// device thread, losses and biases are written where they end up, and the
// host only queues launches. Only the outputs, once, come back (Python's
// .tolist()). Which of two shapes runs depends on n alone:
//
//  - n fits one block (grid_blocks == 1: up to 1024 groups, e.g. the
//    tutorial's 3 points): ONE launch runs every epoch in a loop inside one
//    block, with the state in shared memory. Its per-epoch sum is that
//    block's sum, the same additions as fused_loss at the same bias.
//  - otherwise, each epoch is partial_sums_kernel + finish_kernel with an
//    EpochSink, all launched back to back. Each reads the device status first
//    and returns at once when it is no longer kRunning, so an epoch after the
//    stop costs only a launch.
//
// Rejected: a cooperative kernel with a grid-wide sync per epoch (one launch
// for any n) needs its whole grid resident at once, which would tie the block
// count, hence the sum's bits, to the GPU model; a CUDA graph of the epochs
// costs its instantiation (tens of microseconds and up) on every call, where
// the default 100 epochs cost about as much in launches; tail launches from
// the device need relocatable device code, a harder build for torch
// extensions.
//
// A big epoch budget that converges early would still queue millions of
// no-op launches, so every kPollEvery epochs the host also queues an
// asynchronous copy of the status into pinned memory and stops queueing once
// an earlier copy has landed (cudaEventQuery: it never waits) and shows the
// fit stopped. That changes how many no-op epochs are queued, never a result.

constexpr int64_t kPollEvery = 64;

template <typename T>
__device__ void publish(const FitState<T>& state, T* final_bias,
                        int64_t* info) {
  *final_bias = state.bias;
  info[0] = state.epoch;
  info[1] = state.status;
}

template <bool kAligned, typename T>
__global__ void __launch_bounds__(kThreads)
    fit_one_block_kernel(Inputs<T> in, const T* __restrict__ weights,
                         const T* __restrict__ bias, FitOptions opt,
                         T* __restrict__ losses, T* __restrict__ biases,
                         T* __restrict__ final_bias, int64_t* __restrict__ info) {
  __shared__ FitState<T> state;
  __shared__ LossGrad smem[kWarps];
  const Weights<T> w = Weights<T>::load(weights);
  if (threadIdx.x == 0) state = FitState<T>::start(*bias, opt.epochs);
  __syncthreads();
  // Every thread reads state before block_sum's barrier; thread 0 writes it
  // only after, and the barrier below publishes the write (and frees smem).
  while (state.status == kRunning) {
    const LossPoint<T> point{w, state.bias};
    const LossGrad sum = block_sum(
        thread_sum<kAligned>(in, point, threadIdx.x, kThreads), smem);
    if (threadIdx.x == 0) state.end_epoch(sum, opt, losses, biases);
    __syncthreads();
  }
  if (threadIdx.x == 0) publish(state, final_bias, info);
}

template <typename T>
__global__ void fit_start_kernel(const T* __restrict__ bias, int64_t epochs,
                                 FitState<T>* __restrict__ state) {
  *state = FitState<T>::start(*bias, epochs);
}

template <typename T>
__global__ void fit_publish_kernel(const FitState<T>* __restrict__ state,
                                   T* __restrict__ final_bias,
                                   int64_t* __restrict__ info) {
  publish(*state, final_bias, info);
}

// See kPollEvery. stopped() never waits for the GPU.
class StatusPoll {
 public:
  StatusPoll(Tensor status, cudaStream_t stream)
      : status_(std::move(status)), stream_(stream) {}
  ~StatusPoll() {
    if (event_ != nullptr) (void)cudaEventDestroy(event_);  // fine if pending
  }
  StatusPoll(const StatusPoll&) = delete;
  StatusPoll& operator=(const StatusPoll&) = delete;

  bool stopped() {
    if (event_ == nullptr && !start()) return false;
    if (pending_) {
      const cudaError_t err = cudaEventQuery(event_);
      if (err == cudaErrorNotReady) {
        (void)cudaGetLastError();  // not an error; keep it from the next check
        return false;
      }
      STD_CUDA_CHECK(err);
      pending_ = false;
      if (*data_of<int64_t>(host_) != kRunning) return true;
    }
    // Pinned and non-blocking: the copy is queued, and torch's host allocator
    // keeps host_'s memory until it has landed.
    torch::stable::copy_(host_, status_, /*non_blocking=*/true);
    STD_CUDA_CHECK(cudaEventRecord(event_, stream_));
    pending_ = true;
    return false;
  }

 private:
  // Set up on first use, so fits too short to poll pay nothing. Never under
  // CUDA graph capture, where an event cannot be queried.
  bool start() {
    if (disabled_) return false;
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    STD_CUDA_CHECK(cudaStreamIsCapturing(stream_, &capture));
    if (capture != cudaStreamCaptureStatusNone) {
      disabled_ = true;
      return false;
    }
    host_ = torch::stable::empty({1}, ScalarType::Long, std::nullopt,
                                 torch::stable::Device(torch::headeronly::DeviceType::CPU),
                                 /*pin_memory=*/true);
    STD_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
    return true;
  }

  Tensor status_, host_;
  cudaStream_t stream_;
  cudaEvent_t event_ = nullptr;
  bool disabled_ = false;
  bool pending_ = false;
};

// The multi-block shape: per-epoch launches (see above).
template <typename T>
void fit_multi_block(const FitCall& call, const Tensor& bias) {
  const cudaStream_t stream = current_stream(call.x);
  const int64_t n = call.x.numel();
  // The state as int64 words, so its status is a plain int64 element.
  static_assert(offsetof(FitState<T>, status) % sizeof(int64_t) == 0,
                "FitState::status must be 8-byte aligned");
  constexpr int64_t kWords =
      (sizeof(FitState<T>) + sizeof(int64_t) - 1) / sizeof(int64_t);
  Tensor words = new_tensor(call.x, {kWords}, ScalarType::Long);
  auto* state = reinterpret_cast<FitState<T>*>(data_of<int64_t>(words));
  Tensor partials = new_partials<T>(call.x, n);
  const Inputs<T> in = inputs_of<T>(call.x, call.y);

  fit_start_kernel<<<1, 1, 0, stream>>>(data_of<T>(bias), call.opt.epochs,
                                        state);
  STD_CUDA_KERNEL_LAUNCH_CHECK();
  StatusPoll poll(
      torch::stable::narrow(words, 0,
                            offsetof(FitState<T>, status) / sizeof(int64_t), 1),
      stream);
  const EpochSink<T> sink{state, call.opt, data_of<T>(call.losses),
                          data_of<T>(call.biases)};
  for (int64_t e = 0; e < call.opt.epochs; ++e) {
    if (e > 0 && e % kPollEvery == 0 && poll.stopped()) break;
    launch_partials<LossPoint<T>>(in, data_of<T>(call.weights),
                                  &state->bias, &state->status,
                                  partials_of(partials), stream);
    launch_finish(partials_of(partials), grid_blocks<T>(n), sink, stream);
  }
  fit_publish_kernel<<<1, 1, 0, stream>>>(state, data_of<T>(call.final_bias),
                                          data_of<int64_t>(call.info));
  STD_CUDA_KERNEL_LAUNCH_CHECK();
}

// The one-block shape: a single launch (see above).
template <typename T>
void fit_one_block(const FitCall& call, const Tensor& bias) {
  const cudaStream_t stream = current_stream(call.x);
  const Inputs<T> in = inputs_of<T>(call.x, call.y);
  auto kernel = dense_and_aligned(in) ? fit_one_block_kernel<true, T>
                                      : fit_one_block_kernel<false, T>;
  kernel<<<1, kThreads, 0, stream>>>(
      in, data_of<T>(call.weights), data_of<T>(bias),
      call.opt, data_of<T>(call.losses), data_of<T>(call.biases),
      data_of<T>(call.final_bias), data_of<int64_t>(call.info));
  STD_CUDA_KERNEL_LAUNCH_CHECK();
}

FitOutputs fit_sgd_cuda(const Tensor& inputs, const Tensor& labels,
                        const Tensor& weights, const Tensor& bias,
                        double lr, double momentum, double dampening,
                        bool nesterov, double weight_decay, bool maximize,
                        int64_t epochs, double tol) {
  const FitCall call =
      prepare_fit(inputs, labels, weights, bias, lr, momentum, dampening,
                  nesterov, weight_decay, maximize, epochs, tol);
  check_on_cuda(call.x);
  const DeviceGuard guard(call.x.get_device_index());
  dispatch_float(call.x.scalar_type(), [&](auto zero) {
    using scalar_t = decltype(zero);
    if (grid_blocks<scalar_t>(call.x.numel()) == 1) {
      fit_one_block<scalar_t>(call, bias);
    } else {
      fit_multi_block<scalar_t>(call, bias);
    }
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
}

}  // namespace biasfit
