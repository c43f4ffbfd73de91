// fit_params's CUDA kernels: the whole fit of any subset of the seven
// parameters (SGD, Adam, AdamW), its state (core/fit_params.h's ParamFitState,
// the CPU trainer's end of an epoch) on the device, as fit_sgd's
// (cuda/kernels.cuh). Unlike fit_sgd's, an epoch may change the hidden
// layer, so each epoch evaluates every point in full (LossGradsPoint).
// Torch-free; cuda/launch.h queues these.
#pragma once

#include <cstdint>

#include "core/fit_params.h"
#include "cuda/kernels.cuh"
#include "cuda/kernels_grads.cuh"
#include "core/network.h"
#include "cuda/reduce.cuh"

namespace biasfit {
namespace cuda {

// Where fit_params writes: losses[epochs], biases[epochs], final_params[7],
// info = [epoch, status, bad_param].
template <typename T>
struct ParamFitOutputs {
  T* losses;
  T* biases;
  T* final_params;
  int64_t* info;
};

template <typename T>
__device__ void publish(const ParamFitState<T>& state, T* final_params,
                        int64_t* info) {
  for (int p = 0; p < kNumParams; ++p) final_params[p] = state.params[p];
  info[0] = state.epoch;
  info[1] = state.status;
  info[2] = state.bad_param;
}

// An epoch's points at the state's parameters: loss and seven gradients.
template <typename T>
__device__ LossGradsPoint<T> epoch_point(const ParamFitState<T>& state) {
  return {Weights<T>::load(state.params), state.params[kBiasIndex],
          {nullptr, nullptr}};
}

// Every epoch in one launch of one block, the state in shared memory, each
// thread's points (kGroupsPerThread groups) in registers: thread_sum's
// order with first = thread, stride = kThreads (one pass of its unrolled
// loop), so each epoch's sums are fused_loss_grads_sums's bit for bit.
template <bool kAligned, typename T>
__global__ void __launch_bounds__(kThreads)
    fit_params_one_block_kernel(Inputs<T> in, const T* __restrict__ start,
                                ParamFitOptions opt, ParamFitOutputs<T> out) {
  static_assert(kUnroll == kGroupsPerThread,
                "one pass of thread_sum's unrolled loop covers a thread's groups");
  __shared__ ParamFitState<T> state;
  __shared__ ParamSums smem[kWarps];
  const int64_t n = in.n, groups = num_groups<T>(n);
  T x[kGroupsPerThread][kVec<T>], y[kGroupsPerThread][kVec<T>];
#pragma unroll
  for (int u = 0; u < kGroupsPerThread; ++u) {
    const int64_t g = int64_t(threadIdx.x) + int64_t(u) * kThreads;
#pragma unroll
    for (int k = 0; k < kVec<T>; ++k) x[u][k] = y[u][k] = T(0);
    if (g < groups) {
      load_group<kAligned>(in.a, in.a_step, g, n, x[u]);
      load_group<kAligned>(in.b, in.b_step, g, n, y[u]);
    }
  }
  if (threadIdx.x == 0) state = ParamFitState<T>::start(start, opt.epochs);
  __syncthreads();
  // Every thread reads state before block_sum's barrier; thread 0 writes it
  // only after, and the barrier below publishes the write (and frees smem).
  while (state.status == kRunning) {
    const LossGradsPoint<T> point = epoch_point(state);
    ParamSums acc{};
#pragma unroll
    for (int u = 0; u < kGroupsPerThread; ++u) {
      const int64_t g = int64_t(threadIdx.x) + int64_t(u) * kThreads;
#pragma unroll
      for (int k = 0; k < kVec<T>; ++k) {
        const int64_t i = g * kVec<T> + k;
        if (g < groups && i < n) add_to(acc, point(x[u][k], y[u][k], i));
      }
    }
    const ParamSums sum = block_sum(acc, smem);
    if (threadIdx.x == 0) state.end_epoch(sum, opt, out.losses, out.biases);
    __syncthreads();
  }
  if (threadIdx.x == 0) publish(state, out.final_params, out.info);
}

// The multi-block fit's device memory, for cuda/kernels.cuh's
// fit_epoch_kernel (one launch an epoch, the last block ends it).
template <typename T>
struct ParamFitDeviceState {
  using Sum = ParamSums;
  using Options = ParamFitOptions;
  ParamFitState<T> state;
  unsigned int ticket;

  // The parameters are the state's; fit_epoch_kernel's `weights` is unused.
  __device__ LossGradsPoint<T> point(const T*) const {
    return epoch_point(state);
  }
};

template <typename T>
__global__ void fit_params_start_kernel(const T* __restrict__ start,
                                        int64_t epochs,
                                        ParamFitDeviceState<T>* __restrict__ fit) {
  fit->state = ParamFitState<T>::start(start, epochs);
  fit->ticket = 0;
}

template <typename T>
__global__ void fit_params_publish_kernel(
    const ParamFitDeviceState<T>* __restrict__ fit,
    T* __restrict__ final_params, int64_t* __restrict__ info) {
  publish(fit->state, final_params, info);
}

}  // namespace cuda
}  // namespace biasfit
