// The host side of the batched CUDA ops: which kernels of
// cuda/kernels_batched.cuh each queues, over cuda/launch.h's Launcher.
// Nothing here waits for the device.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "cuda/kernels_batched.cuh"
#include "cuda/launch.h"

namespace biasfit {
namespace cuda {

// The launches' grids stay within CUDA's 2^31 - 1 blocks (and the
// emulation's int): fits go in groups of at most this many blocks a launch.
constexpr int64_t kMaxBatchBlocks = int64_t(1) << 30;

template <typename T>
bool rows_aligned(const T* p, int64_t row) {
  return aligned16(p) && (row * int64_t(sizeof(T))) % 16 == 0;
}

// f(first_fit, fits) for groups of fits of per_fit blocks each.
template <typename F>
void in_groups(int64_t fits, int per_fit, const F& f) {
  const int64_t per_launch = std::max<int64_t>(1, kMaxBatchBlocks / per_fit);
  for (int64_t k0 = 0; k0 < fits; k0 += per_launch) f(k0, std::min(per_launch, fits - k0));
}

// predict of `fits` fits: out [fits, n].
template <typename T, typename Launcher>
void batched_predict(Launcher& l, const BatchInputs<T>& in, int64_t fits, T* out) {
  const int per_fit = grid_blocks<T>(in.n);
  in_groups(fits, per_fit, [&](int64_t k0, int64_t count) {
    l.launch(batched_predict_kernel<T>, int(count * per_fit), kThreads, in, k0, per_fit,
             out);
  });
}

// rows.at(k)(sum over i of point_k(a_k[i], b_k[i], i)) for every fit k: the
// unbatched sum_points' grid per fit, then one finishing block per fit.
// extra: the points' per-point outputs ([fits, n] rows), if any.
template <typename Point, typename T, typename Rows, typename Launcher>
void batched_sum_points(Launcher& l, const BatchInputs<T>& in, int64_t fits,
                        const Rows& rows, const typename Point::Extra& extra = {}) {
  using S = SumOf<Point, T>;
  if (fits == 0) return;
  const int per_fit = grid_blocks<T>(in.n);
  auto* partials = static_cast<S*>(l.scratch(sizeof(S) * size_t(fits * per_fit)));
  // The same bits either way (cuda/reduce.cuh's load_group).
  const bool aligned = rows_aligned(in.a, in.a_row) && rows_aligned(in.b, in.b_row);
  in_groups(fits, per_fit, [&](int64_t k0, int64_t count) {
    l.launch(aligned ? batched_partial_sums_kernel<true, Point, T>
                     : batched_partial_sums_kernel<false, Point, T>,
             int(count * per_fit), kThreads, in, k0, per_fit, extra, partials);
  });
  in_groups(fits, 1, [&](int64_t k0, int64_t count) {
    l.launch(batched_finish_kernel<Rows>, int(count), kThreads,
             static_cast<const S*>(partials), per_fit, k0, rows);
  });
}

// fused_loss_grads of every fit, as cuda/launch.h's loss_grads: fused_loss's
// points when nothing but the bias is asked, every gradient's otherwise.
// dy, dx: [fits, n] where asked (else null).
template <typename T, typename Launcher>
void batched_loss_grads(Launcher& l, const BatchInputs<T>& in, int64_t fits, T* loss,
                        T* weights_grad, T* bias_grad, T* dy, T* dx) {
  if (weights_grad == nullptr && dy == nullptr && dx == nullptr) {
    batched_sum_points<LossPoint<T>>(l, in, fits, LossRows<T>{loss, bias_grad, 1});
    return;
  }
  batched_sum_points<LossGradsPoint<T>>(l, in, fits,
                                        ParamGradsRows<T>{loss, weights_grad, bias_grad},
                                        PointGrads<T>{dy, dx});
}

}  // namespace cuda
}  // namespace biasfit
