// The CUDA kernels of the ops, over core/network.h's math and cuda/reduce.cuh's
// fixed-order sum: what one point contributes, where a sum ends up, predict,
// and the trainer's kernels. cuda/launch.h queues them; torch_ops/cuda_ops.cu only turns
// tensors into pointers.
//
// Free of torch and of the CUDA runtime API, so that the test harness
// (tests/cuda_emu/) runs this text on the CPU; see cuda/reduce.cuh.
#pragma once

#include <cstdint>

#include "core/fit.h"
#include "core/network.h"
#include "cuda/reduce.cuh"

namespace biasfit {
namespace cuda {

// A point's Extra when it writes nothing per point.
struct NoExtra {};

// Points of fused_loss and of the trainer's epochs: (input, label).
template <typename T>
struct LossPoint {
  using Extra = NoExtra;
  Weights<T> w;
  T bias;
  Extra extra;
  __device__ LossGrad operator()(T x, T y, int64_t) const {
    return point_loss_grad(x, y, w, bias);
  }
};

// Points of predict's backward: (input, grad_out); only .grad is used.
template <typename T>
struct BiasGradPoint {
  using Extra = NoExtra;
  Weights<T> w;
  T bias;
  Extra extra;
  __device__ LossGrad operator()(T x, T g, int64_t) const {
    return {0.0, point_bias_grad(x, g, w, bias)};
  }
};

// The sums take the data's type at the end, as in torch_ops/cpu_ops.cpp.
template <typename T>
struct LossSink {
  using Sum = LossGrad;
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
  using Sum = LossGrad;
  T* grad;
  __device__ bool active() const { return true; }
  __device__ void operator()(const LossGrad& s) const { *grad = T(s.grad); }
};

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

// ---- fit_sgd ----------------------------------------------------------------
//
// The fit's state (bias, momentum buffer, epoch, status) lives on the device
// and FitState::end_epoch runs there, in one thread; the host only queues
// launches (cuda/launch.h says which).

template <typename T>
__device__ void publish(const FitState<T>& state, T* final_bias,
                        int64_t* info) {
  *final_bias = state.bias;
  info[0] = state.epoch;
  info[1] = state.status;
}

// Whether n points take the one-block fit: one block's threads hold every
// point in registers (kGroupsPerThread groups each), and the grid of the
// point sums is that one block too, so both fits sum in the same order.
template <typename T>
BIASFIT_HD bool fits_one_block(int64_t n) {
  return num_groups<T>(n) <= int64_t(kThreads) * kGroupsPerThread;
}

// Every epoch in one launch of one block; the state in shared memory.
// Each thread computes hidden(x) of its points once and keeps it and the
// labels in registers: only the bias changes between epochs, and
// point_loss_grad is loss_grad_from_hidden(hidden(x)), so the sums are
// fused_loss's (thread_sum with first = thread, stride = kThreads: one pass
// of its unrolled loop, groups t, t + kThreads, ... in order), bit for bit.
template <bool kAligned, typename T>
__global__ void __launch_bounds__(kThreads)
    fit_one_block_kernel(Inputs<T> in, const T* __restrict__ weights,
                         const T* __restrict__ bias, FitOptions opt,
                         T* __restrict__ losses, T* __restrict__ biases,
                         T* __restrict__ final_bias, int64_t* __restrict__ info) {
  static_assert(kUnroll == kGroupsPerThread,
                "one pass of thread_sum's unrolled loop covers a thread's groups");
  __shared__ FitState<T> state;
  __shared__ LossGrad smem[kWarps];
  const Weights<T> w = Weights<T>::load(weights);
  const int64_t n = in.n, groups = num_groups<T>(n);
  T h[kGroupsPerThread][kVec<T>], y[kGroupsPerThread][kVec<T>];
#pragma unroll
  for (int u = 0; u < kGroupsPerThread; ++u) {
    const int64_t g = int64_t(threadIdx.x) + int64_t(u) * kThreads;
#pragma unroll
    for (int k = 0; k < kVec<T>; ++k) h[u][k] = y[u][k] = T(0);
    if (g < groups) {
      load_group<kAligned>(in.a, in.a_step, g, n, h[u]);
      load_group<kAligned>(in.b, in.b_step, g, n, y[u]);
    }
#pragma unroll
    for (int k = 0; k < kVec<T>; ++k) h[u][k] = hidden(h[u][k], w);
  }
  if (threadIdx.x == 0) state = FitState<T>::start(*bias, opt.epochs);
  __syncthreads();
  // Every thread reads state before block_sum's barrier; thread 0 writes it
  // only after, and the barrier below publishes the write (and frees smem).
  while (state.status == kRunning) {
    const T b = state.bias;
    LossGrad acc{0.0, 0.0};
#pragma unroll
    for (int u = 0; u < kGroupsPerThread; ++u) {
      const int64_t g = int64_t(threadIdx.x) + int64_t(u) * kThreads;
#pragma unroll
      for (int k = 0; k < kVec<T>; ++k) {
        if (g < groups && g * kVec<T> + k < n) {
          add_to(acc, loss_grad_from_hidden(h[u][k], y[u][k], b));
        }
      }
    }
    const LossGrad sum = block_sum(acc, smem);
    if (threadIdx.x == 0) state.end_epoch(sum, opt, losses, biases);
    __syncthreads();
  }
  if (threadIdx.x == 0) publish(state, final_bias, info);
}

// The multi-block fit's device memory: the state, and the ticket that tells
// the last block of an epoch's launch that every partial is in. What
// fit_epoch_kernel needs of a trainer: its Sum and Options, its point at the
// current state, state.status and state.end_epoch (fit_params's trainer,
// cuda/kernels_params.cuh, is the other one).
template <typename T>
struct FitDeviceState {
  using Sum = LossGrad;
  using Options = FitOptions;
  FitState<T> state;
  unsigned int ticket;

  __device__ LossPoint<T> point(const T* weights) const {
    return {Weights<T>::load(weights), state.bias, {}};
  }
};

template <typename T>
__global__ void fit_start_kernel(const T* __restrict__ bias, int64_t epochs,
                                 FitDeviceState<T>* __restrict__ fit) {
  fit->state = FitState<T>::start(*bias, epochs);
  fit->ticket = 0;
}

// One epoch of the multi-block fit in one launch: every block writes its
// partial sum as partial_sums_kernel does, then takes a ticket; the block
// that takes the last one sums the partials in finish_kernel's order
// (sum_partials) and ends the epoch. Which block is last varies from run to
// run; the partials' order, hence the bits, never does. A no-op once the fit
// has stopped: every block reads the status before any block can take the
// last ticket, and only that block writes the state.
template <bool kAligned, typename T, typename Fit>
__global__ void __launch_bounds__(kThreads)
    fit_epoch_kernel(Inputs<T> in, const T* __restrict__ weights, Fit* fit,
                     typename Fit::Sum* partials, typename Fit::Options opt,
                     T* __restrict__ losses, T* __restrict__ biases) {
  using S = typename Fit::Sum;
  if (fit->state.status != kRunning) return;
  __shared__ S smem[kWarps];
  __shared__ bool last;
  const auto point = fit->point(weights);
  const int64_t first = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  const S sum = block_sum(thread_sum<kAligned>(in, point, first, stride), smem);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = sum;
    __threadfence();  // the partial is visible before the ticket is taken
    last = atomicAdd(&fit->ticket, 1u) == gridDim.x - 1;
  }
  // Also block_sum's "barrier before reuse": smem is summed into again below.
  __syncthreads();
  if (!last) return;
  __threadfence();  // every block's partial, seen through its ticket
  const S total = sum_partials(partials, int(gridDim.x), smem);
  if (threadIdx.x == 0) {
    fit->state.end_epoch(total, opt, losses, biases);
    fit->ticket = 0;  // for the next epoch's launch
  }
}

template <typename T>
__global__ void fit_publish_kernel(const FitDeviceState<T>* __restrict__ fit,
                                   T* __restrict__ final_bias,
                                   int64_t* __restrict__ info) {
  publish(fit->state, final_bias, info);
}

}  // namespace cuda
}  // namespace biasfit
