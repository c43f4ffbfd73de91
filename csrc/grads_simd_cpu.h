// The all-seven pass (loss and the seven parameter gradient sums) over
// contiguous points, vectorized by hand for AVX2 and AVX-512: gcc keeps
// grads_cpu.h's chunk loop scalar (2-2.7 ns a point a core on the 2-core
// Zen 4 EPYC; this loop 0.85 on AVX-512, 1.3-1.6 on AVX2).
//
// No second copy of the math: network.h's forward, relu and
// loss_param_grads_wide run on GCC vector types, W points at once. The
// forward runs in the data's type (W floats or W doubles), is widened lane by
// lane to W doubles (exact), and the derivatives and sums run in double as
// for a scalar point. Point i still adds into lane i % kLanes (kLanes / W
// vectors of accumulators a step), so the lanes hold exactly what
// grads_cpu.h's scalar loop puts there, and the same tail and tree finish
// them: the same bits, which tests/test_cpu_kernels.py checks per kernel.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "kernels_cpu.h"  // Relu<__m256>
#include "network.h"
#include "reduce_cpu.h"

namespace biasfit {
namespace cpu {

// kBytes: a vector register's width, 32 (AVX2) or 64 (AVX-512). D: that
// many bytes of doubles; F: as many floats as D has doubles, so one load
// widens to one D. x86's own types, so that network.h's relu takes
// kernels_cpu.h's one-instruction max for __m256.
template <int kBytes>
struct Simd;
template <>
struct Simd<64> {
  using D = __m512d;
  using F = __m256;
  static constexpr int kWidth = 8;
};
template <>
struct Simd<32> {
  using D = __m256d;
  using F = __m128;
  static constexpr int kWidth = 4;
};

template <typename V, typename S>
BIASFIT_HD V every_lane(S s) {
  V v;  // lane by lane, which keeps -0 (0 + s would not)
  for (int k = 0; k < int(sizeof(V) / sizeof(S)); ++k) v[k] = s;
  return v;
}

template <typename V, typename S>
BIASFIT_HD V load(const S* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

// Lane-wise conversion to D: float lanes to double (exact), doubles as they
// are. Written as one brace list, which gcc 12 turns into one vcvtps2pd;
// __builtin_convertvector and a loop both give it in halves.
template <typename D>
struct WidenLanes {
  template <typename V>
  BIASFIT_HD D operator()(V v) const {
    return lanes(v, std::make_integer_sequence<int, sizeof(D) / sizeof(double)>{});
  }
  template <typename V, int... k>
  BIASFIT_HD static D lanes(V v, std::integer_sequence<int, k...>) {
    return D{double(v[k])...};
  }
};

// Adds the points of [begin, end) into loss[k] and grad[p][k], k = i %
// kLanes, for whole steps of kLanes points; returns where it stopped (the
// tail, fewer than kLanes points, is the caller's).
template <int kBytes, typename T>
BIASFIT_HD int64_t simd_param_lanes(const T* x, const T* y,
                                    const Weights<T>& w, T bias,
                                    int64_t begin, int64_t end,
                                    double (&loss)[kLanes],
                                    double (&grad)[kNumParams][kLanes]) {
  using D = typename Simd<kBytes>::D;
  using V = std::conditional_t<std::is_same<T, float>::value,
                               typename Simd<kBytes>::F, D>;
  constexpr int kWidth = Simd<kBytes>::kWidth, kSteps = kLanes / kWidth;
  static_assert(kLanes % kWidth == 0, "whole vectors of lanes");
  const WidenLanes<D> to_d;
  const Weights<V> wv{every_lane<V>(w.w00), every_lane<V>(w.b00),
                      every_lane<V>(w.w01), every_lane<V>(w.w10),
                      every_lane<V>(w.b10), every_lane<V>(w.w11)};
  const Weights<D> wd = widen<D>(wv, to_d);
  const V bv = every_lane<V>(bias);
  D loss_acc[kSteps] = {}, grad_acc[kNumParams][kSteps] = {};
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
#pragma GCC unroll 4
    for (int s = 0; s < kSteps; ++s) {
      const V xv = load<V>(x + i + s * kWidth);
      const Forward<V> f = forward(xv, wv, bv);
      const V r = sub_rn(relu(f.z), load<V>(y + i + s * kWidth));
      D dp[kNumParams];
      loss_acc[s] += loss_param_grads_wide(widen<D>(f, to_d), to_d(xv),
                                           to_d(r), wd, dp);
      for (int p = 0; p < kNumParams; ++p) grad_acc[p][s] += dp[p];
    }
  }
  for (int s = 0; s < kSteps; ++s) {
    std::memcpy(loss + s * kWidth, &loss_acc[s], sizeof(D));
    for (int p = 0; p < kNumParams; ++p) {
      std::memcpy(grad[p] + s * kWidth, &grad_acc[p][s], sizeof(D));
    }
  }
  return i;
}

}  // namespace cpu
}  // namespace biasfit
