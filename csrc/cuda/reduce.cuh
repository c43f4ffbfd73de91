// The deterministic sum over points on the GPU, the counterpart of
// cpu/reduce.h.
//
// Every addition happens in an order fixed by n alone, never by the GPU model,
// its number of SMs or block scheduling, so a run gives the same bits every
// time and on every GPU:
//
//  - Points go in groups of kVec<T> consecutive points: 16 bytes of each input
//    array, one 128-bit load when both arrays are dense and 16-byte aligned,
//    else kVec scalar loads of the same points, strided for 1-D views (same
//    points, same order, same bits).
//  - The grid has grid_blocks<T>(n) blocks of kThreads threads, a function of
//    n only. Thread t (t = block * kThreads + thread) adds, in double, groups
//    t, t + S, t + 2S, ... (S = threads in the grid), points in index order.
//  - A block combines its threads in a fixed shuffle tree and writes the
//    result at its own index in `partials`. No atomics anywhere.
//  - finish_kernel, one block, sums the partials the same way: thread t takes
//    partials t, t + kThreads, ... in order, then the same tree.
//
// A sum is of several doubles at once: LossGrad (loss, bias gradient) or
// ParamSums (loss, then the seven parameter gradients). Each of its values
// is added up on its own, in the order above, exactly as if it were summed
// alone: the values never mix, so which others ride along changes no bit.
//
// 64-bit indices throughout: n may exceed 2^31.
//
// Free of torch and of the CUDA runtime API: csrc/torch_ops/cuda_ops.cu compiles it with
// nvcc, and the test harness (tests/cuda_emu/) with g++ over an emulation of
// the few CUDA built-ins it uses, so the tests run this very text.
#pragma once

#include <cstdint>
#include <utility>

#include "core/fit.h"
#include "core/network.h"

namespace biasfit {
namespace cuda {

constexpr int kWarpSize = 32;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarpSize;
// Caps the grid (and the partials) while leaving several resident blocks per
// SM on any current GPU; bigger inputs loop (grid-stride).
constexpr int kMaxBlocks = 4096;
// Groups a thread gets before the grid grows, so small inputs use few blocks.
constexpr int64_t kGroupsPerThread = 4;
// Groups a thread loads before it adds any: loads in flight hide latency.
constexpr int kUnroll = 4;

// What block_sum's two-level tree assumes: whole warps (a partial warp would
// shuffle with lanes that do not exist), and one warp enough to hold every
// warp's sum for the second level.
static_assert(kThreads % kWarpSize == 0, "kThreads must be whole warps");
static_assert(kWarps <= kWarpSize, "the second level sums kWarps values in one warp");
static_assert(kThreads <= 1024, "CUDA's limit on threads per block");

template <typename T>
constexpr int kVec = 16 / int(sizeof(T));

template <typename T>
BIASFIT_HD int64_t num_groups(int64_t n) {
  return (n + kVec<T> - 1) / kVec<T>;
}

template <typename T>
inline int grid_blocks(int64_t n) {
  const int64_t per_block = kThreads * kGroupsPerThread;
  const int64_t blocks = (num_groups<T>(n) + per_block - 1) / per_block;
  return int(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

template <typename T>
struct alignas(16) Pack {
  T v[kVec<T>];
};

// f(a's value, b's value) for each value of a sum, in a fixed order: the
// one place that knows a sum's fields.
template <typename F>
__device__ __forceinline__ void each_value(LossGrad& a, const LossGrad& b,
                                           const F& f) {
  f(a.loss, b.loss);
  f(a.grad, b.grad);
}

template <typename F>
__device__ __forceinline__ void each_value(ParamSums& a, const ParamSums& b,
                                           const F& f) {
  f(a.loss, b.loss);
#pragma unroll
  for (int p = 0; p < kNumParams; ++p) f(a.grad[p], b.grad[p]);
}

template <typename S>
__device__ __forceinline__ void add_to(S& acc, const S& p) {
  each_value(acc, p, [](double& a, const double& b) { a = add_rn(a, b); });
}

// Group g of `a` (point i at a[i * step]): its kVec points, or for the last
// group those below n (the rest are never added, see thread_sum). kAligned:
// step is 1 and `a` 16-byte aligned.
template <bool kAligned, typename T>
__device__ __forceinline__ void load_group(const T* __restrict__ a,
                                           int64_t step, int64_t g, int64_t n,
                                           T (&out)[kVec<T>]) {
  const int64_t first = g * kVec<T>;
  if (kAligned && first + kVec<T> <= n) {
    const Pack<T> p = reinterpret_cast<const Pack<T>*>(a)[g];
#pragma unroll
    for (int k = 0; k < kVec<T>; ++k) out[k] = p.v[k];
  } else {
#pragma unroll
    for (int k = 0; k < kVec<T>; ++k) {
      out[k] = first + k < n ? a[(first + k) * step] : T(0);
    }
  }
}

// Two input arrays, each read at element i * step (step 0: an expanded view).
template <typename T>
struct Inputs {
  const T* a;
  const T* b;
  int64_t a_step;
  int64_t b_step;
  int64_t n;
};

// What point(a[i], b[i], i) returns: the kind of sum (LossGrad, ParamSums).
template <typename Point, typename T>
using SumOf = decltype(std::declval<const Point&>()(T(), T(), int64_t()));

// One thread's share: point(a[i], b[i], i) over groups first, first +
// stride, ... The unrolled loads only change when loads are issued, not the
// order of the additions, which is that of the plain grid-stride loop. (i
// is for points that also write per-point outputs.)
template <bool kAligned, typename T, typename Point>
__device__ __forceinline__ SumOf<Point, T> thread_sum(const Inputs<T>& in,
                                                      const Point& point,
                                                      int64_t first,
                                                      int64_t stride) {
  using S = SumOf<Point, T>;
  const T* __restrict__ a = in.a;
  const T* __restrict__ b = in.b;
  const int64_t n = in.n;
  const int64_t groups = num_groups<T>(n);
  S acc{};
  for (int64_t g0 = first; g0 < groups; g0 += kUnroll * stride) {
    T av[kUnroll][kVec<T>] = {}, bv[kUnroll][kVec<T>] = {};
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t g = g0 + u * stride;
      if (g < groups) {
        load_group<kAligned>(a, in.a_step, g, n, av[u]);
        load_group<kAligned>(b, in.b_step, g, n, bv[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t g = g0 + u * stride;
#pragma unroll
      for (int k = 0; k < kVec<T>; ++k) {
        const int64_t i = g * kVec<T> + k;
        if (g < groups && i < n) add_to(acc, point(av[u][k], bv[u][k], i));
      }
    }
  }
  return acc;
}

// Lane 0 ends with the warp's sum, always combined in the same tree (each
// value by its own shuffles).
template <typename S>
__device__ __forceinline__ S warp_sum(S v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    each_value(v, v, [offset](double& a, const double& b) {
      a = add_rn(b, __shfl_down_sync(0xffffffffu, b, offset));
    });
  }
  return v;
}

// The block's sum, valid in thread 0. All kThreads threads must call it; a
// caller that calls it again must __syncthreads() first (`smem` is reused).
template <typename S>
__device__ __forceinline__ S block_sum(S v, S* smem) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  v = warp_sum(v);
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarps ? smem[lane] : S{};
    v = warp_sum(v);
  }
  return v;
}

// First pass: partials[block] = this block's share of sum point(a[i], b[i]).
// Point is built from the weights and *bias read on the device (the trainer's
// bias changes every epoch without the host seeing it). A non-null `status`
// that is no longer kRunning (the trainer has stopped) makes it a no-op.
// Point::Extra: what a point needs besides the weights and bias (per-point
// outputs); an empty struct for the sums alone.
template <bool kAligned, typename Point, typename T>
__global__ void __launch_bounds__(kThreads)
    partial_sums_kernel(Inputs<T> in, const T* __restrict__ weights,
                        const T* bias, const int64_t* status,
                        typename Point::Extra extra,
                        SumOf<Point, T>* __restrict__ partials) {
  using S = SumOf<Point, T>;
  if (status != nullptr && *status != kRunning) return;
  __shared__ S smem[kWarps];
  const Point point{Weights<T>::load(weights), *bias, extra};
  const int64_t first = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  const S sum = block_sum(thread_sum<kAligned>(in, point, first, stride), smem);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// The second pass's order, in every thread of one block: thread t adds
// partials t, t + kThreads, ... in order, then block_sum's tree; valid in
// thread 0. The loads bypass L1 (__ldcg): fit_epoch_kernel reads partials
// that other blocks of the same launch have just written.
template <typename S>
__device__ __forceinline__ S sum_partials(const S* partials, int count,
                                          S* smem) {
  S acc{};
  for (int i = threadIdx.x; i < count; i += kThreads) {
    S p;
    each_value(p, partials[i], [](double& to, const double& from) {
      to = __ldcg(&from);
    });
    add_to(acc, p);
  }
  return block_sum(acc, smem);
}

// Second pass, one block of kThreads: hands the total of `count` partials to
// sink (in thread 0), unless sink.active() is false. Sink::Sum: the kind of
// sum it takes.
template <typename Sink>
__global__ void __launch_bounds__(kThreads)
    finish_kernel(const typename Sink::Sum* __restrict__ partials, int count,
                  Sink sink) {
  using S = typename Sink::Sum;
  if (!sink.active()) return;
  __shared__ S smem[kWarps];
  const S total = sum_partials(partials, count, smem);
  if (threadIdx.x == 0) sink(total);
}

}  // namespace cuda
}  // namespace biasfit
