// The CPU's summing order's two sizes (cpu/reduce.h sums in it): fixed
// chunks of kChunk points, point i of a chunk into lane i % kLanes. Here,
// free of the CPU's loops, because fit_many's CUDA kernels
// (cuda/kernels_many.cuh) sum each fit in this order too.
#pragma once

#include <cstdint>

namespace biasfit {

constexpr int64_t kChunk = int64_t(1) << 14;
// 16 lanes: one AVX-512 vector of floats per step, and enough independent
// accumulators to keep a core's FP adders busy (8 left the trainer's epoch
// latency-bound at 0.5 cycles a point).
constexpr int kLanes = 16;

}  // namespace biasfit
