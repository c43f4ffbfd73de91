// The CUDA kernels of the batched ops (torch.func.vmap's work): K fits in one
// launch, fit k reading row k of each argument (or row 0 of one shared by
// all: a row step of 0). Torch-free, like cuda/kernels.cuh; cuda/
// launch_batched.h queues them.
//
// Each fit's sums are the unbatched op's bit for bit: fit k gets
// grid_blocks(n) blocks, as the unbatched sum's whole grid, and block b of
// fit k sums what block b of that grid sums (thread_sum with the same first
// and stride), then a finishing block per fit adds its partials in
// finish_kernel's order. The grid is one-dimensional: fit k's blocks are
// blocks [k * per_fit, (k + 1) * per_fit) of the launch.
#pragma once

#include <cstdint>

#include "core/network.h"
#include "cuda/kernels.cuh"
#include "cuda/kernels_grads.cuh"
#include "cuda/reduce.cuh"

namespace biasfit {
namespace cuda {

// The batch's arguments: row k of a starts at a + k * a_row (b, weights and
// bias likewise); n points a fit.
template <typename T>
struct BatchInputs {
  const T* a;
  const T* b;
  int64_t a_row;
  int64_t b_row;
  int64_t n;
  const T* weights;
  int64_t w_row;
  const T* bias;
  int64_t bias_row;

  __device__ Inputs<T> fit(int64_t k) const {
    return {a + k * a_row, b + k * b_row, 1, 1, n};
  }
};

// A point's per-point outputs for fit k: none, or row k of [K, n] outputs.
__device__ inline NoExtra extra_of(const NoExtra& e, int64_t, int64_t) { return e; }
template <typename T>
__device__ PointGrads<T> extra_of(const PointGrads<T>& e, int64_t k, int64_t n) {
  return {e.dy != nullptr ? e.dy + k * n : nullptr,
          e.dx != nullptr ? e.dx + k * n : nullptr};
}

// Fits [first_fit, first_fit + gridDim.x / per_fit), each over per_fit
// blocks: partials[k * per_fit + b] = block b's share of fit k's sum, as
// partial_sums_kernel writes block b's of the unbatched grid.
template <bool kAligned, typename Point, typename T>
__global__ void __launch_bounds__(kThreads)
    batched_partial_sums_kernel(BatchInputs<T> in, int64_t first_fit, int per_fit,
                                typename Point::Extra extra,
                                SumOf<Point, T>* __restrict__ partials) {
  using S = SumOf<Point, T>;
  __shared__ S smem[kWarps];
  const int64_t k = first_fit + blockIdx.x / per_fit;
  const int64_t block = blockIdx.x % per_fit;
  const Point point{Weights<T>::load(in.weights + k * in.w_row),
                    in.bias[k * in.bias_row], extra_of(extra, k, in.n)};
  const int64_t first = block * kThreads + threadIdx.x;
  const int64_t stride = int64_t(per_fit) * kThreads;
  const S sum = block_sum(thread_sum<kAligned>(in.fit(k), point, first, stride), smem);
  if (threadIdx.x == 0) partials[k * per_fit + block] = sum;
}

// Fit first_fit + blockIdx.x's total of its per_fit partials, in
// finish_kernel's order, handed to rows.at(k).
template <typename Rows>
__global__ void __launch_bounds__(kThreads)
    batched_finish_kernel(const typename Rows::Sum* __restrict__ partials,
                          int per_fit, int64_t first_fit, Rows rows) {
  using S = typename Rows::Sum;
  __shared__ S smem[kWarps];
  const int64_t k = first_fit + blockIdx.x;
  const S total = sum_partials(partials + k * per_fit, per_fit, smem);
  if (threadIdx.x == 0) rows.at(k)(total);
}

// predict of fits [first_fit, ...): out[k * n + i], each fit over per_fit
// blocks (elementwise: the grid changes no value).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    batched_predict_kernel(BatchInputs<T> in, int64_t first_fit, int per_fit,
                           T* __restrict__ out) {
  const int64_t k = first_fit + blockIdx.x / per_fit;
  const Weights<T> w = Weights<T>::load(in.weights + k * in.w_row);
  const T b = in.bias[k * in.bias_row];
  const T* x = in.a + k * in.a_row;
  T* o = out + k * in.n;
  const int64_t stride = int64_t(per_fit) * kThreads;
  for (int64_t i = int64_t(blockIdx.x % per_fit) * kThreads + threadIdx.x; i < in.n;
       i += stride) {
    o[i] = predict(x[i], w, b);
  }
}

// ---- where each fit's sums go: the unbatched sinks at row k ----------------

// fused_loss: loss[k], grad[k] (T) or fused_loss_sums: out[2k], out[2k + 1]
// (double): a LossSink of `step`-apart rows.
template <typename U>
struct LossRows {
  using Sum = LossGrad;
  U* loss;
  U* grad;
  int64_t step;
  __device__ LossSink<U> at(int64_t k) const { return {loss + k * step, grad + k * step}; }
};

// predict_bias_grad: grad[k].
template <typename T>
struct GradRows {
  using Sum = LossGrad;
  T* grad;
  __device__ GradSink<T> at(int64_t k) const { return {grad + k}; }
};

// fused_loss_grads and predict_grads: loss[k] (if asked), weights_grad[k, 6]
// (if asked), bias_grad[k].
template <typename T>
struct ParamGradsRows {
  using Sum = ParamSums;
  T* loss;
  T* weights_grad;
  T* bias_grad;
  __device__ ParamGradsSink<T> at(int64_t k) const {
    return {loss != nullptr ? loss + k : nullptr,
            weights_grad != nullptr ? weights_grad + k * kNumWeights : nullptr,
            bias_grad + k};
  }
};

// fused_loss_grads_sums: out[k, 8].
struct ParamSumsRows {
  using Sum = ParamSums;
  double* out;
  __device__ ParamSumsSink at(int64_t k) const { return {out + k * (1 + kNumParams)}; }
};

}  // namespace cuda
}  // namespace biasfit
