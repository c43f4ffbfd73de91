// The CPU kernels' loops over points, around core/network.h's math and
// cpu/reduce.h's deterministic sum. Free of torch: torch_ops/cpu_ops.cpp wraps them as
// stable-ABI ops and direct/direct.cpp calls the trainer (cpu/trainer.h) from
// Python; both compile this same text.
//
// The loops here are portable C++, which the compiler vectorizes for its
// target's baseline (SSE2, NEON, ...). On x86 the hot ones are also
// compiled for AVX2 and AVX-512 (cpu/x86/epoch_loops.h), and cpu/isa.h's
// kIsa picks those the CPU has: the same additions in the same lanes, so
// the same bits everywhere.
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/network.h"
#include "cpu/isa.h"
#include "cpu/points.h"
#include "cpu/reduce.h"

#if BIASFIT_X86
#include "cpu/x86/epoch_loops.h"
#endif

namespace biasfit {
namespace cpu {

constexpr int64_t kElementwiseGrain = int64_t(1) << 15;

// One chunk's sum on the best instruction set, from start_loss's lanes if
// given (chunk_sum). A chunk of fewer points than lanes (the tutorial's
// three) is only the lanes' tail and tree: small_chunk_sum, without the
// vector set-up.
template <typename Point>
LossGrad sum_chunk(const Point& p, int64_t begin, int64_t end,
                   const double* start_loss = nullptr) {
#ifndef BIASFIT_NO_SMALL_CHUNK
  if (end - begin < kLanes && start_loss == nullptr) {
    return small_chunk_sum(p, begin, end);
  }
#endif
#if BIASFIT_X86
  if (kIsa != Isa::kBaseline) return x86::sum_chunk(kIsa, p, begin, end, start_loss);
#endif
  return chunk_sum(p, begin, end, start_loss);
}

template <typename Point>
LossGrad sum_points(const Point& p, int64_t n, int threads) {
  return deterministic_sum(n, threads, [&](int64_t begin, int64_t end) {
    return sum_chunk(p, begin, end);
  });
}

// The trainer's hidden buffer over one chunk, and its smallest h
// (cpu/points.h's hidden_chunk_lanes), on the best instruction set.
template <typename T>
T hidden_chunk(const T* x, T* h, int64_t begin, int64_t end,
               const Weights<T>& w) {
#if BIASFIT_X86
  if (kIsa != Isa::kBaseline) return x86::hidden_chunk(kIsa, x, h, begin, end, w);
#endif
  return hidden_chunk_lanes<typename Vector16<T>::type>(x, h, begin, end, w);
}

// out[i] = f(x[i]) in parallel: predict, and hidden for the trainer.
template <typename T, typename F>
void map_points(const T* x, T* out, int64_t n, int threads, const F& f) {
  const int64_t blocks = (n + kElementwiseGrain - 1) / kElementwiseGrain;
  parallel_items(blocks, threads, [&](int64_t b) {
    const int64_t end = std::min(n, (b + 1) * kElementwiseGrain);
    for (int64_t i = b * kElementwiseGrain; i < end; ++i) out[i] = f(x[i]);
  });
}

}  // namespace cpu
}  // namespace biasfit
