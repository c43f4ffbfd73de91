// fit_many's CUDA kernels: K independent fits in one launch, each fit the
// one that cpu/fit_many.h runs on the CPU, with its options, stop rules,
// stall test and outputs (core/many.h), its end of an epoch (core/fit.h's
// FitState::decide, core/fit_params.h's ParamFitState::decide) and its
// points (core/network.h). cuda/launch_many.h queues them.
//
// Each fit sums in the CPU's order (cpu/reduce.h, core/sum_order.h), not the single-fit CUDA
// kernels' grid order: chunks of kChunk points, point i of a chunk into
// lane i % kLanes, the lanes in their fixed tree, the chunks' sums in
// pairwise_total's tree. So each fit's epochs, losses and parameters are
// CPU fit_many's (and fit_fused's) bits, not within CPU_GPU of them. That
// order's parallelism is kLanes running sums a chunk; a fit's team of
// threads takes them:
//
//  - a thread per fit (team 1) below kLanes points: the whole chunk is one
//    tree of fewer than kLanes values, nothing for more threads to share,
//    and many fits fill the GPU (the tutorial's 3 points);
//  - a warp per fit (a block of kWarpSize threads) up to kWarpChunks
//    chunks: its 32 threads are 2 chunks' 16 lanes, all the parallelism
//    those fits have;
//  - a block per fit (kThreads threads) above: 16 chunks' lanes at once.
//
// A team's state (the fit's FitState or ParamFitState and its Track) is
// in shared memory, as cuda/kernels.cuh's one-block fit keeps it: thread 0
// ends each epoch, the others wait at a barrier. Hidden values are computed
// again every epoch (hidden(x) is the same bits whenever it is computed), so
// memory beyond the data is the chunks' sums: O(points / kChunk).
//
// Torch-free, like cuda/kernels.cuh: the test harness (tests/cuda_emu/) runs
// this text on the CPU.
#pragma once

#include <cstdint>

#include "core/fit.h"
#include "core/fit_params.h"
#include "core/many.h"
#include "core/network.h"
#include "core/sum_order.h"
#include "cuda/kernels.cuh"
#include "cuda/kernels_grads.cuh"
#include "cuda/reduce.cuh"

namespace biasfit {
namespace cuda {

enum ManyRoute : int { kRouteThread = 0, kRouteWarp = 1, kRouteBlock = 2 };

// The warp's 32 threads are this many chunks' lanes.
constexpr int64_t kWarpChunks = kWarpSize / kLanes;
// Fits a block of the thread-per-fit route.
constexpr int kFitsPerBlock = 128;
static_assert(kWarpSize % kLanes == 0 && kThreads % kLanes == 0,
              "a team's threads are whole chunks' lanes");

// The route of a fit of n points (see the top of this file).
BIASFIT_HD int many_route(int64_t n) {
  if (n < kLanes) return kRouteThread;
  if (n <= kWarpChunks * kChunk) return kRouteWarp;
  return kRouteBlock;
}

// Where fit k's chunk sums start in the chunk scratch (used only by a fit
// of more than one chunk): cuda/launch_many.h's many_chunk_slots says why
// no two fits' slots meet.
BIASFIT_HD int64_t chunk_base(int64_t begin) { return 2 * (begin / kChunk); }

// Lanes [0, used) combined in Lanes::tree's order (cpu/reduce.h), in place.
// The lanes past `used` hold +0.0 there, which adds nothing to a lane (a lane
// starts at +0.0 and is never -0.0): small_chunk_sum's argument.
template <typename S>
__device__ S lanes_tree(S* lanes, int used) {
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int k = 0; k + width < used; ++k) add_to(lanes[k], lanes[k + width]);
    used = used < width ? used : width;
  }
  return lanes[0];
}

// pairwise_total's tree (cpu/reduce.h) over p[0, count), in place.
template <typename S>
__device__ S pairwise(S* p, int64_t count) {
  for (int64_t size = count; size > 1; size = (size + 1) / 2) {
    for (int64_t i = 0; i < size / 2; ++i) {
      S s = p[2 * i];
      add_to(s, p[2 * i + 1]);
      p[i] = s;
    }
    if (size % 2) p[size / 2] = p[size - 1];
  }
  return p[0];
}

// The sum of point(i) over [0, n) in the CPU's order, valid in thread 0 of
// the team: kTeam 1, one thread alone; else the block, every thread calling
// it (it holds barriers). lanes: kTeam sums of shared memory (unused for
// kTeam 1); chunks: the fit's chunk slots (used with more than one chunk).
template <int kTeam, typename S, typename Point>
__device__ S team_sum(const Point& point, int64_t n, S* lanes, S* chunks) {
  const int64_t count = (n + kChunk - 1) / kChunk;
  if (kTeam == 1) {
    for (int64_t c = 0; c < count; ++c) {
      const int64_t from = c * kChunk, to = from + kChunk < n ? from + kChunk : n;
      S lane[kLanes];
      for (int k = 0; k < kLanes; ++k) lane[k] = S{};
      for (int64_t i = from; i < to; ++i) add_to(lane[(i - from) % kLanes], point(i));
      const S sum = lanes_tree(lane, int(to - from < kLanes ? to - from : kLanes));
      if (count == 1) return sum;
      chunks[c] = sum;
    }
    return pairwise(chunks, count);
  }
  constexpr int kSlots = kTeam / kLanes;
  const int t = threadIdx.x, slot = t / kLanes, lane = t % kLanes;
  S single{};
  for (int64_t c0 = 0; c0 < count; c0 += kSlots) {
    const int64_t c = c0 + slot, from = c * kChunk;
    const int64_t to = from + kChunk < n ? from + kChunk : n;
    S acc{};
    if (c < count) {
      for (int64_t i = from + lane; i < to; i += kLanes) add_to(acc, point(i));
    }
    lanes[t] = acc;
    __syncthreads();
    if (lane == 0 && c < count) {
      const S sum = lanes_tree(lanes + slot * kLanes,
                               int(to - from < kLanes ? to - from : kLanes));
      if (count == 1) single = sum; else chunks[c] = sum;
    }
    __syncthreads();  // the lanes are free again; the chunk sums are in
  }
  if (t != 0) return S{};
  return count == 1 ? single : pairwise(chunks, count);
}

// Fit k's points, by index, at the parameters of an epoch.
template <typename T>
struct ManyBiasPoint {  // final_bias alone: fused_loss's point
  const T* x;
  const T* y;
  Weights<T> w;
  T bias;
  __device__ LossGrad operator()(int64_t i) const { return point_loss_grad(x[i], y[i], w, bias); }
};
template <typename T>
struct ManyParamsPoint {  // every gradient: fused_loss_grads_sums's point
  const T* x;
  const T* y;
  LossGradsPoint<T> p;
  __device__ ParamSums operator()(int64_t i) const { return p(x[i], y[i], i); }
};

// A team's fit state, in shared memory (kTeam > 1) or the thread's own.
template <typename T>
struct ManyFit {
  FitState<T> bias;       // final_bias alone by SGD
  ParamFitState<T> all;   // anything else
  Track<T> track;
  T max_h;                // the team's largest hidden value, gathered
};

// The team's largest hidden value over fit k's points (max_with_nan's,
// whose outcome no order changes), valid in thread 0.
template <int kTeam, typename T>
__device__ T team_max_h(const T* x, int64_t n, const Weights<T>& w, T* gather) {
  const int t = kTeam == 1 ? 0 : int(threadIdx.x);
  T m = -T(INFINITY);
  for (int64_t i = t; i < n; i += kTeam) m = max_with_nan(m, hidden(x[i], w));
  if (kTeam == 1) return m;
  gather[t] = m;
  __syncthreads();
  if (t == 0) {
    for (int j = 1; j < kTeam; ++j) m = max_with_nan(m, gather[j]);
  }
  __syncthreads();
  return m;
}

// Fit k, start to end, by a team of kTeam threads (thread 0 writes out).
template <int kTeam, typename T>
__device__ void many_fit(const ManyData<T>& d, const ManyOut<T>& out, int64_t k,
                         ManyFit<T>& f, LossGrad* lane_sums, ParamSums* lane_param_sums,
                         T* gather, void* chunk_scratch) {
  const int t = kTeam == 1 ? 0 : int(threadIdx.x);
  const int64_t begin = d.begin(k), n = d.end(k) - begin;
  const T* x = d.x + begin;
  const T* y = d.y + begin;
  const T* start = d.start_of(k);
  const ParamFitOptions o = many_options(d.settings_of(k), d.trained, d.kind, n);
  const int64_t base = chunk_base(begin);
  T* row = out.history != nullptr ? out.history + k * out.history_len : nullptr;
  T* bias_row = out.biases != nullptr ? out.biases + k * out.history_len : nullptr;
  T params[kNumParams];
  if (!out.params_route && bias_only_sgd(d.trained, d.kind)) {
    const FitOptions fo{o.sgd, o.epochs, o.tol, o.rtol, o.patience, o.divide_by};
    const Weights<T> w = Weights<T>::load(start);
    const bool watch = out.biases == nullptr && may_stall(o.sgd);
    const T max_h = watch ? team_max_h<kTeam>(x, n, w, gather) : T(0);
    if (t == 0) {
      f.track = Track<T>::start(row, watch, max_h);
      f.track.bias_row = bias_row;
      f.bias = FitState<T>::start(start[kBiasIndex], o.epochs);
    }
    if (kTeam > 1) __syncthreads();
    auto* chunks = static_cast<LossGrad*>(chunk_scratch) + base;
    while (f.bias.status == kRunning) {
      const ManyBiasPoint<T> point{x, y, w, f.bias.bias};
      const LossGrad sum = team_sum<kTeam>(point, n, lane_sums, chunks);
      if (t == 0) bias_epoch(f.bias, fo, f.track, [&](T) { return sum; });
      if (kTeam > 1) __syncthreads();
    }
    if (t != 0) return;
    for (int p = 0; p < kNumParams; ++p) params[p] = start[p];
    params[kBiasIndex] = f.bias.bias;
    const int64_t status = f.bias.status;
    write_fit(out, k, f.track, params, f.bias.epoch, status,
              status == kBiasNonFinite ? int64_t(kBiasIndex) : int64_t(-1));
    return;
  }
  const bool weights = (o.trained & ((1 << kNumWeights) - 1)) != 0;
  if (t == 0) {
    f.track = Track<T>::start(row);
    f.track.bias_row = bias_row;
    f.all = ParamFitState<T>::start(start, o.epochs);
  }
  if (kTeam > 1) __syncthreads();
  while (f.all.status == kRunning) {
    const Weights<T> w = Weights<T>::load(f.all.params);
    const T b = f.all.params[kBiasIndex];
    ParamSums sum;
    // As the CPU's epoch_chunk: fused_loss's pass when no weight trains.
    if (weights) {
      const ManyParamsPoint<T> point{x, y, LossGradsPoint<T>{w, b, {nullptr, nullptr}}};
      sum = team_sum<kTeam>(point, n, lane_param_sums,
                            static_cast<ParamSums*>(chunk_scratch) + base);
    } else {
      const LossGrad lg = team_sum<kTeam>(ManyBiasPoint<T>{x, y, w, b}, n, lane_sums,
                                          static_cast<LossGrad*>(chunk_scratch) + base);
      sum = ParamSums{lg.loss, {0, 0, 0, 0, 0, 0, lg.grad}};
    }
    if (t == 0) {
      f.track.record(f.all.epoch, reduced<T>(sum.loss, o.divide_by), b);
      f.all.decide(sum, o);
    }
    if (kTeam > 1) __syncthreads();
  }
  if (t != 0) return;
  write_fit(out, k, f.track, f.all.params, f.all.epoch, f.all.status, f.all.bad_param);
}

// A thread per fit: fits [first, first + gridDim.x * kFitsPerBlock). With
// `forced` false, a fit whose route is not the thread route is left to the
// other kernels.
template <typename T>
__global__ void __launch_bounds__(kFitsPerBlock)
    many_thread_kernel(ManyData<T> d, ManyOut<T> out, int64_t first, bool forced,
                       void* chunk_scratch) {
  const int64_t k = first + int64_t(blockIdx.x) * kFitsPerBlock + threadIdx.x;
  if (k >= d.fits) return;
  if (!forced && many_route(d.end(k) - d.begin(k)) != kRouteThread) return;
  ManyFit<T> f;
  many_fit<1, T>(d, out, k, f, nullptr, nullptr, nullptr, chunk_scratch);
}

// A team of kTeam threads (a block) per fit: fit first + blockIdx.x. With
// `forced` false, only the fits of this team's route.
template <int kTeam, typename T>
__global__ void __launch_bounds__(kTeam)
    many_team_kernel(ManyData<T> d, ManyOut<T> out, int64_t first, bool forced,
                     void* chunk_scratch) {
  const int64_t k = first + blockIdx.x;
  const int route = kTeam == kThreads ? kRouteBlock : kRouteWarp;
  if (!forced && many_route(d.end(k) - d.begin(k)) != route) return;
  __shared__ ManyFit<T> f;
  __shared__ LossGrad lane_sums[kTeam];
  __shared__ ParamSums lane_param_sums[kTeam];
  __shared__ T gather[kTeam];
  many_fit<kTeam>(d, out, k, f, lane_sums, lane_param_sums, gather, chunk_scratch);
}

}  // namespace cuda
}  // namespace biasfit
