// The deterministic sum over points on the CPU.
//
// Points are cut into fixed chunks of kChunk; inside a chunk, point i adds into
// lane i % kLanes (independent accumulators, which the compiler keeps in vector
// registers), and the lanes are combined in a fixed tree. Chunk sums are stored
// by chunk index and added in a fixed pairwise tree. Threads only decide who
// computes which chunk, never the order of any addition, so every thread
// count gives the same bits.
//
// Free of torch: the stable-ABI ops (torch_ops/cpu_ops.cpp) and the direct Python call
// (direct/direct.cpp) both use it, each passing the thread count torch would use.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/network.h"
#include "core/sum_order.h"
#include "cpu/parallel.h"

namespace biasfit {

// kChunk and kLanes: core/sum_order.h (the GPU's fit_many sums this order too).

inline int64_t num_chunks(int64_t n) { return (n + kChunk - 1) / kChunk; }

// One chunk's running sums: point i adds into lane i % kLanes, and the lanes
// are combined in a fixed tree. Kernels that vectorize by hand (torch_ops/cpu_ops.cpp) fill
// the lanes themselves and finish with the same tail and tree.
struct Lanes {
  double loss[kLanes] = {};
  double grad[kLanes] = {};

  // Adds points [i, end), fewer than kLanes, into lanes 0, 1, ..., then
  // combines the lanes.
  template <typename Point>
  BIASFIT_HD LossGrad finish(const Point& point, int64_t i, int64_t end) {
    for (int k = 0; i < end; ++i, ++k) {
      const LossGrad p = point(i);
      loss[k] += p.loss;
      grad[k] += p.grad;
    }
    return tree();
  }

  // The lanes combined in the fixed tree (which overwrites them).
  BIASFIT_HD LossGrad tree() {
    for (int width = kLanes / 2; width > 0; width /= 2) {
      for (int k = 0; k < width; ++k) {
        loss[k] += loss[k + width];
        grad[k] += grad[k + width];
      }
    }
    return {loss[0], grad[0]};
  }
};

// Sum of point(i) for i in [begin, end), point(i) -> LossGrad. Inlined into
// each per-instruction-set kernel in torch_ops/cpu_ops.cpp.
//
// start_loss, if not null: the 16 loss lanes to start from instead of +0.0
// (the grad lanes start at +0.0 as ever): a regrouped chunk resumes there
// after a prefix of points whose output units are all off (cpu/active_set.h).
template <typename Point>
BIASFIT_HD LossGrad chunk_sum(const Point& point, int64_t begin, int64_t end,
                              const double* start_loss = nullptr) {
  Lanes lanes;
  if (start_loss != nullptr) {
    for (int k = 0; k < kLanes; ++k) lanes.loss[k] = start_loss[k];
  }
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    // Forced: gcc's cost model otherwise keeps short point functions (the
    // trainer's) scalar, with branches that mispredict on real data.
#pragma omp simd
    for (int k = 0; k < kLanes; ++k) {
      const LossGrad p = point(i + k);
      lanes.loss[k] += p.loss;
      lanes.grad[k] += p.grad;
    }
  }
  return lanes.finish(point, i, end);
}

// chunk_sum of a chunk of fewer points than lanes (the tutorial's three),
// with the same bits and a fraction of the work: lane k holds point k alone
// and the empty lanes hold +0.0, which adds nothing to a lane (a lane starts
// at +0.0, so it is never -0.0, and x + 0.0 == x for every other x, NaN and
// inf included). So the tree makes only its additions between filled lanes.
template <typename Point>
BIASFIT_HD LossGrad small_chunk_sum(const Point& point, int64_t begin,
                                    int64_t end) {
  double loss[kLanes], grad[kLanes];
  int used = int(end - begin);
  if (used <= 0) return {0.0, 0.0};
  for (int k = 0; k < used; ++k) {
    const LossGrad p = point(begin + k);
    loss[k] = 0.0 + p.loss;  // as a lane's first addition
    grad[k] = 0.0 + p.grad;
  }
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int k = 0; k + width < used; ++k) {
      loss[k] += loss[k + width];
      grad[k] += grad[k + width];
    }
    used = used < width ? used : width;
  }
  return {loss[0], grad[0]};
}

// Sum of two partial sums, field by field: what pairwise_total adds.
inline LossGrad add_sums(const LossGrad& a, const LossGrad& b) {
  return {a.loss + b.loss, a.grad + b.grad};
}
inline ParamSums add_sums(const ParamSums& a, const ParamSums& b) {
  ParamSums s;
  s.loss = a.loss + b.loss;
  for (int p = 0; p < kNumParams; ++p) s.grad[p] = a.grad[p] + b.grad[p];
  return s;
}

// Adds the chunk sums pairwise in a fixed tree ((p0+p1)+(p2+p3))+...: as
// deterministic as a running sum, but its rounding error grows with
// log2(chunks) rather than chunks, which matters past 2^31 points (131072
// chunks). Overwrites `partials`. Sum: LossGrad or ParamSums.
template <typename Sum>
Sum pairwise_total(std::vector<Sum>& partials) {
  for (size_t size = partials.size(); size > 1; size = (size + 1) / 2) {
    for (size_t i = 0; i < size / 2; ++i) {
      partials[i] = add_sums(partials[2 * i], partials[2 * i + 1]);
    }
    if (size % 2) partials[size / 2] = partials[size - 1];
  }
  return partials[0];
}

// Sum over [0, n) of chunk(begin, end), which sums one chunk (a LossGrad or
// a ParamSums).
template <typename ChunkFn>
auto deterministic_sum(int64_t n, int threads, const ChunkFn& chunk)
    -> decltype(chunk(int64_t(0), int64_t(0))) {
  using Sum = decltype(chunk(int64_t(0), int64_t(0)));
  const int64_t chunks = num_chunks(n);
  if (chunks <= 1) return chunk(0, n);  // n = 0 too: an empty chunk
  std::vector<Sum> partials(chunks);
  parallel_items(chunks, threads, [&](int64_t c) {
    const int64_t begin = c * kChunk;
    partials[c] = chunk(begin, std::min(begin + kChunk, n));
  });
  return pairwise_total(partials);
}

}  // namespace biasfit
