// The deterministic sum over points on the GPU, the counterpart of
// reduce_cpu.h.
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
// 64-bit indices throughout: n may exceed 2^31.
//
// Free of torch and of the CUDA runtime API: csrc/cuda.cu compiles it with
// nvcc, and the test harness (tests/cuda_emu/) with g++ over an emulation of
// the few CUDA built-ins it uses, so the tests run this very text.
#pragma once

#include <cstdint>

#include "fit.h"
#include "network.h"

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

__device__ __forceinline__ void add_to(LossGrad& acc, const LossGrad& p) {
  acc.loss = add_rn(acc.loss, p.loss);
  acc.grad = add_rn(acc.grad, p.grad);
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

// One thread's share: point(a[i], b[i]) over groups first, first + stride, ...
// The unrolled loads only change when loads are issued, not the order of
// the additions, which is that of the plain grid-stride loop.
template <bool kAligned, typename T, typename Point>
__device__ __forceinline__ LossGrad thread_sum(const Inputs<T>& in,
                                               const Point& point,
                                               int64_t first, int64_t stride) {
  const T* __restrict__ a = in.a;
  const T* __restrict__ b = in.b;
  const int64_t n = in.n;
  const int64_t groups = num_groups<T>(n);
  LossGrad acc{0.0, 0.0};
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
        if (g < groups && g * kVec<T> + k < n) {
          add_to(acc, point(av[u][k], bv[u][k]));
        }
      }
    }
  }
  return acc;
}

// Lane 0 ends with the warp's sum, always combined in the same tree.
__device__ __forceinline__ LossGrad warp_sum(LossGrad v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v.loss = add_rn(v.loss, __shfl_down_sync(0xffffffffu, v.loss, offset));
    v.grad = add_rn(v.grad, __shfl_down_sync(0xffffffffu, v.grad, offset));
  }
  return v;
}

// The block's sum, valid in thread 0. All kThreads threads must call it; a
// caller that calls it again must __syncthreads() first (`smem` is reused).
__device__ __forceinline__ LossGrad block_sum(LossGrad v, LossGrad* smem) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  v = warp_sum(v);
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarps ? smem[lane] : LossGrad{0.0, 0.0};
    v = warp_sum(v);
  }
  return v;
}

// First pass: partials[block] = this block's share of sum point(a[i], b[i]).
// Point is built from the weights and *bias read on the device (the trainer's
// bias changes every epoch without the host seeing it). A non-null `status`
// that is no longer kRunning (the trainer has stopped) makes it a no-op.
template <bool kAligned, typename Point, typename T>
__global__ void __launch_bounds__(kThreads)
    partial_sums_kernel(Inputs<T> in, const T* __restrict__ weights,
                        const T* bias, const int64_t* status,
                        LossGrad* __restrict__ partials) {
  if (status != nullptr && *status != kRunning) return;
  __shared__ LossGrad smem[kWarps];
  const Point point{Weights<T>::load(weights), *bias};
  const int64_t first = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  const LossGrad sum =
      block_sum(thread_sum<kAligned>(in, point, first, stride), smem);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// The second pass's order, in every thread of one block: thread t adds
// partials t, t + kThreads, ... in order, then block_sum's tree; valid in
// thread 0. The loads bypass L1 (__ldcg): fit_epoch_kernel reads partials
// that other blocks of the same launch have just written.
__device__ __forceinline__ LossGrad sum_partials(const LossGrad* partials,
                                                 int count, LossGrad* smem) {
  LossGrad acc{0.0, 0.0};
  for (int i = threadIdx.x; i < count; i += kThreads) {
    add_to(acc, LossGrad{__ldcg(&partials[i].loss), __ldcg(&partials[i].grad)});
  }
  return block_sum(acc, smem);
}

// Second pass, one block of kThreads: hands the total of `count` partials to
// sink (in thread 0), unless sink.active() is false.
template <typename Sink>
__global__ void __launch_bounds__(kThreads)
    finish_kernel(const LossGrad* __restrict__ partials, int count, Sink sink) {
  if (!sink.active()) return;
  __shared__ LossGrad smem[kWarps];
  const LossGrad total = sum_partials(partials, count, smem);
  if (threadIdx.x == 0) sink(total);
}

}  // namespace cuda
}  // namespace biasfit
