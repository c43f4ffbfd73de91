// The CPU kernels' loops over points, around network.h's math and
// reduce_cpu.h's deterministic sum. Free of torch: cpu.cpp wraps them as
// stable-ABI ops and direct.cpp calls the trainer (trainer_cpu.h) from
// Python; both compile this same text.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "network.h"
#include "reduce_cpu.h"

namespace biasfit {
namespace cpu {

constexpr int64_t kElementwiseGrain = int64_t(1) << 15;

// What one point contributes, as small functors that chunk_sum inlines.
template <typename T>
struct PointLoss {  // squared error and its bias derivative
  const T* x;
  const T* y;
  Weights<T> w;
  T bias;
  BIASFIT_HD LossGrad operator()(int64_t i) const {
    return point_loss_grad(x[i], y[i], w, bias);
  }
};

template <typename T>
struct PointLossStrided {  // the same over 1-D views (slices, expand) uncopied
  const T* x;
  int64_t x_stride;
  const T* y;
  int64_t y_stride;
  Weights<T> w;
  T bias;
  BIASFIT_HD LossGrad operator()(int64_t i) const {
    return point_loss_grad(x[i * x_stride], y[i * y_stride], w, bias);
  }
};

template <typename T>
struct PointLossFromHidden {  // the same from a precomputed hidden(x[i])
  const T* h;
  const T* y;
  T bias;
  BIASFIT_HD LossGrad operator()(int64_t i) const {
    return loss_grad_from_hidden(h[i], y[i], bias);
  }
};

template <typename T>
struct PointBiasGrad {  // predict's backward
  const T* grad_out;
  const T* x;
  Weights<T> w;
  T bias;
  BIASFIT_HD LossGrad operator()(int64_t i) const {
    return {0.0, point_bias_grad(x[i], grad_out[i], w, bias)};
  }
};

// BIASFIT_CPU_KERNEL=baseline picks the baseline kernels on any CPU, so the
// tests can compare them with the AVX2 ones bit for bit.
inline bool baseline_forced() {
  const char* pick = std::getenv("BIASFIT_CPU_KERNEL");
  return pick != nullptr && std::strcmp(pick, "baseline") == 0;
}

// One chunk's sum, compiled twice: for AVX2 (4 doubles / 8 floats a vector)
// and for the baseline x86-64 instruction set, chosen once at run time. Both
// add in the same lane order, so they give the same bits.
template <typename Point>
__attribute__((target("avx2"))) LossGrad chunk_avx2(const Point& p,
                                                    int64_t begin,
                                                    int64_t end) {
  return chunk_sum(p, begin, end);
}

template <typename Point>
LossGrad chunk_baseline(const Point& p, int64_t begin, int64_t end) {
  return chunk_sum(p, begin, end);
}

// The trainer's epoch over float32 data, vectorized by hand: gcc's own
// vectorization of chunk_sum widens the floats to double a few lanes at a
// time and runs 2.2x slower. The formulas are still network.h's, applied to
// 8 points at once; only the widening and the sums are written out here.
// Same lanes and tree as chunk_sum (lanes 0-3 in *_lo, 4-7 in *_hi), so the
// same bits, which tests/test_cpu_kernels.py checks against the baseline.
__attribute__((target("avx2,fma"))) inline LossGrad chunk_avx2(
    const PointLossFromHidden<float>& p, int64_t begin, int64_t end) {
  static_assert(kLanes == 8, "one __m256 of floats per step");
  const __m256 bias = _mm256_set1_ps(p.bias);
  __m256d loss_lo = _mm256_setzero_pd(), loss_hi = loss_lo;
  __m256d half_grad_lo = loss_lo, half_grad_hi = loss_lo;
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    const __m256 z = _mm256_loadu_ps(p.h + i) + bias;
    const __m256 r = relu(z) - _mm256_loadu_ps(p.y + i);
    const __m256 r_active = active_residual(z, r);
    const __m256d r_lo = _mm256_cvtps_pd(_mm256_castps256_ps128(r));
    const __m256d r_hi = _mm256_cvtps_pd(_mm256_extractf128_ps(r, 1));
    // A float squared is exact in double, so the fused multiply-add rounds
    // once, exactly as chunk_sum's loss += r * r.
    loss_lo = _mm256_fmadd_pd(r_lo, r_lo, loss_lo);
    loss_hi = _mm256_fmadd_pd(r_hi, r_hi, loss_hi);
    // Sums of r, doubled once at the end: doubling is exact, so 2 * (a + b)
    // is 2a + 2b bit for bit.
    half_grad_lo += _mm256_cvtps_pd(_mm256_castps256_ps128(r_active));
    half_grad_hi += _mm256_cvtps_pd(_mm256_extractf128_ps(r_active, 1));
  }
  Lanes lanes;
  _mm256_storeu_pd(lanes.loss, loss_lo);
  _mm256_storeu_pd(lanes.loss + 4, loss_hi);
  _mm256_storeu_pd(lanes.grad, half_grad_lo + half_grad_lo);
  _mm256_storeu_pd(lanes.grad + 4, half_grad_hi + half_grad_hi);
  return lanes.finish(p, i, end);
}

inline const bool kHasAvx2 = __builtin_cpu_supports("avx2") &&
                             __builtin_cpu_supports("fma") &&
                             !baseline_forced();

template <typename Point>
LossGrad sum_chunk(const Point& p, int64_t begin, int64_t end) {
  return kHasAvx2 ? chunk_avx2(p, begin, end) : chunk_baseline(p, begin, end);
}

template <typename Point>
LossGrad sum_points(const Point& p, int64_t n, int threads) {
  return deterministic_sum(n, threads, [&](int64_t begin, int64_t end) {
    return sum_chunk(p, begin, end);
  });
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
