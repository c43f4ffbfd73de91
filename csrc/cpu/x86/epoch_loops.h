// x86 only: the trainer's epoch, vectorized by hand for AVX-512 and AVX2,
// and every other chunk sum and the hidden buffer compiled for them.
// cpu/kernels.h's sum_chunk and hidden_chunk run these on a CPU that has
// one (cpu/isa.h's kIsa), its portable loops elsewhere; all give the same
// bits.
//
// gcc's own vectorization of chunk_sum widens the floats to double a few
// lanes at a time and runs 2-3x slower. The formulas are still core/network.h's
// (relu, hidden, active_residual), applied to a vector of points at once;
// only the widening to double and the lane sums are written out here. Point
// i + k of a step goes to lane k, as in chunk_sum, and the lanes end in the
// same Lanes::finish tree: the same bits as the baseline, which
// tests/test_cpu_kernels.py checks. The two points they take:
//   PointLossFromHidden<float>: z = h + bias, h computed once per fit;
//   PointLoss<float>: z = hidden(x) + bias, hidden streamed each epoch.
#pragma once

#include <cstdint>
#include <type_traits>

#include "core/network.h"
#include "cpu/isa.h"
#include "cpu/points.h"
#include "cpu/reduce.h"
#include "cpu/x86/simd.h"

// As in cpu/x86/simd.h: x86's vector types as template arguments, and
// always-inlined functions that take them.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#pragma GCC diagnostic ignored "-Wpsabi"

namespace biasfit {
namespace cpu {
namespace x86 {

// One chunk's sum compiled for each instruction set. All add in the same
// lane order, so they give the same bits.
template <typename Point>
BIASFIT_AVX512 LossGrad chunk_avx512(const Point& p, int64_t begin,
                                     int64_t end, const double* start_loss) {
  return chunk_sum(p, begin, end, start_loss);
}

template <typename Point>
BIASFIT_AVX2 LossGrad chunk_avx2(const Point& p, int64_t begin, int64_t end,
                                 const double* start_loss) {
  return chunk_sum(p, begin, end, start_loss);
}

// a + b rounded once; for AVX-512 doubles as a fused multiply-add a * 1 + b:
// the same value bit for bit (a * 1 is exact; signed zeros, infinities and
// NaN come out as from the add), issued to the multiply-add ports instead
// of the adders, which the rest of a float64 trainer step keeps busy (the
// compare, max, subtract and sums). Measured on the Zen 5 EPYC, a float64
// epoch of 1000 points from the hidden buffer: 98 -> 78 ns, or the same
// when the machine is in its slower state (runs of one binary are bimodal
// there). Floats keep the add: their step has the conversions on those
// ports, and the same trick measured 89 -> 89 or 107 ns.
template <typename V>
BIASFIT_HD V add_on_fma_ports(V a, V b) {
  return add_rn(a, b);
}
#if defined(__GNUC__) && !defined(__clang__) && !defined(BIASFIT_NO_FMA_ADD)
template <>
BIASFIT_HD __m512d add_on_fma_ports(__m512d a, __m512d b) {
  return __m512d(__builtin_ia32_vfmaddpd512_mask(
      __v8df(a), splat<__v8df>(1.0), __v8df(b), __mmask8(-1),
      _MM_FROUND_CUR_DIRECTION));
}
#endif

// z = hidden + bias for a vector V of points (of type T), from what a step
// loads at source(): hidden(x) computed once per fit, or x itself (hidden
// streamed). Two types, so that each loop is compiled for one of them.
template <typename V, typename T>
struct ZFromHidden {
  const T* h;
  V bias;

  const T* source() const { return h; }
  BIASFIT_HD V from(V h_loaded) const {
    return add_on_fma_ports(h_loaded, bias);
  }
  BIASFIT_HD V at(int64_t i) const { return from(load_values<V>(h + i)); }
};

template <typename V, typename T>
struct ZFromX {
  const T* x;
  Weights<V> w;
  V bias;

  const T* source() const { return x; }
  BIASFIT_HD V from(V x_loaded) const { return add_rn(hidden(x_loaded, w), bias); }
  BIASFIT_HD V at(int64_t i) const { return from(load_values<V>(x + i)); }
};

template <typename V, typename T>
ZFromHidden<V, T> vector_z(const PointLossFromHidden<T>& p) {
  return {p.h, V{} + p.bias};
}
template <typename V, typename T>
ZFromX<V, T> vector_z(const PointLoss<T>& p) {
  return {p.x, broadcast<V>(p.w), V{} + p.bias};
}

// AVX-512: 16 points a step, lanes 0-7 in the *_lo accumulators, 8-15 in
// *_hi, from the first step to the last point: the tail of fewer than 16
// points is one more step under a mask of the lanes it fills (a masked-off
// lane adds nothing, as Lanes::finish's tail leaves it), and Lanes::finish's
// tree runs in registers (lane_tree). Same additions, same bits, without
// storing the lanes and adding the tail and tree one double at a time: that
// cost ~40 ns a chunk, a quarter of a 1000-point epoch.
//
// The gradient adds r under the mask z > 0 (active_residual's test):
// adding nothing and adding +0.0 give the same bits here, since a lane's
// sum starts at +0.0 and so is never -0.0, and the masked add saves two
// conversions a step. It sums r and doubles each lane at the end: doubling
// is exact, so 2 * (a + b) is 2a + 2b bit for bit.
struct Acc512 {
  __m512d loss_lo, loss_hi, half_grad_lo, half_grad_hi;
};

// Lanes::finish's tree, lane k += lane k + w for w = 8, 4, 2, 1, over lanes
// 0-7 in lo and 8-15 in hi.
BIASFIT_AVX512 inline double lane_tree(__m512d lo, __m512d hi) {
  const __m512d s8 = _mm512_add_pd(lo, hi);
  const __m256d s4 = _mm256_add_pd(_mm512_castpd512_pd256(s8),
                                   _mm512_extractf64x4_pd(s8, 1));
  const __m128d s2 = _mm_add_pd(_mm256_castpd256_pd128(s4),
                                _mm256_extractf128_pd(s4, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s2, _mm_unpackhi_pd(s2, s2)));
}

BIASFIT_AVX512 inline LossGrad finish(const Acc512& a) {
  return {lane_tree(a.loss_lo, a.loss_hi),
          lane_tree(_mm512_add_pd(a.half_grad_lo, a.half_grad_lo),
                    _mm512_add_pd(a.half_grad_hi, a.half_grad_hi))};
}

// half_grad + r in the active lanes, or half_grad - s where a step sums
// s = -r (kNegated; see below): the same bits.
template <bool kNegated>
BIASFIT_AVX512 inline __m512d add_active(__m512d half_grad, __mmask8 active,
                                         __m512d r) {
  return kNegated ? _mm512_mask_sub_pd(half_grad, active, half_grad, r)
                  : _mm512_mask_add_pd(half_grad, active, half_grad, r);
}

// Where no z is NaN, a step sums s = -r, one operation where relu(z) - y
// takes two: s = y - z where z > 0 (the active lanes), else y = -(0 - y).
// IEEE rounding is symmetric, so y - z is exactly -(z - y); s * s is r * r
// bit for bit, and half_grad - s is half_grad + r. s and -r can differ
// only in the sign of a zero (an active z equal to y; an inactive z of
// +0 and a y of 0), which neither s * s nor half_grad - s shows: a lane's
// sum is never -0 (Acc512). A NaN z would fail the mask and give y where
// relu gives NaN, hence the kNoNaN test. Measured on the 2-core Xeon, an
// epoch of 2048 float64 points in L1: 0.265 -> 0.24 ns a point; from L2
// (1e5 points) both read ~0.32, the cache's pace.
//
// Adds 8 double points (z their output units' inputs, y their labels) into
// one half of the accumulators, in the lanes of `lanes`.
template <Known kKnown>
BIASFIT_AVX512 inline void add_half(__m512d z, __m512d y, __mmask8 lanes,
                                    __m512d& loss, __m512d& half_grad) {
  constexpr bool kAllOn = kKnown == Known::kAllOn;
  constexpr bool kNegated = kKnown == Known::kNoNaN;
  const __mmask8 active =
      kAllOn ? lanes : _mm512_mask_cmp_pd_mask(lanes, z, __m512d{}, _CMP_NLE_UQ);
  // r, or s = -r where no z is NaN
  const __m512d r = kNegated ? _mm512_mask_sub_pd(y, active, y, z)
                             : sub_rn(kAllOn ? z : relu(z), y);
  loss = _mm512_mask_mov_pd(loss, lanes, add_rn(loss, mul_rn(r, r)));
  half_grad = add_active<kNegated>(half_grad, active, r);
}

// One step of 16 float points (a whole one, or the tail under `lanes`).
// Where no z is NaN it widens s = -r (add_half), and subtracts it.
template <Known kKnown, typename Z>
BIASFIT_AVX512 inline void step_avx512(const Z& zs, const float* y, int64_t i,
                                    __mmask16 lanes, Acc512& a) {
  constexpr bool kAllOn = kKnown == Known::kAllOn;
  constexpr bool kNegated = kKnown == Known::kNoNaN;
  const __m512 z = zs.from(_mm512_maskz_loadu_ps(lanes, zs.source() + i));
  const __m512 yv = _mm512_maskz_loadu_ps(lanes, y + i);
  const __mmask16 active =
      kAllOn ? lanes : _mm512_mask_cmp_ps_mask(lanes, z, __m512{}, _CMP_NLE_UQ);
  const __m512 r = kNegated ? _mm512_mask_sub_ps(yv, active, yv, z)
                            : sub_rn(kAllOn ? z : relu(z), yv);
  const __m512d r_lo = _mm512_cvtps_pd(_mm512_castps512_ps256(r));
  const __m512d r_hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(r, 1));
  // A float squared is exact in double, so the fused multiply-add rounds
  // once, exactly as chunk_sum's loss += r * r.
  a.loss_lo = _mm512_mask3_fmadd_pd(r_lo, r_lo, a.loss_lo, __mmask8(lanes));
  a.loss_hi = _mm512_mask3_fmadd_pd(r_hi, r_hi, a.loss_hi, __mmask8(lanes >> 8));
  a.half_grad_lo = add_active<kNegated>(a.half_grad_lo, __mmask8(active), r_lo);
  a.half_grad_hi = add_active<kNegated>(a.half_grad_hi, __mmask8(active >> 8), r_hi);
}

// The same step of 16 double points: the 16 lanes as two vectors of 8
// doubles. No widening; loss += r * r stays a multiply and an add (a double
// squared is not exact, so a fused multiply-add would round differently).
template <Known kKnown, typename Z>
BIASFIT_AVX512 inline void step_avx512(const Z& zs, const double* y, int64_t i,
                                    __mmask16 lanes, Acc512& a) {
  const __mmask8 lo = __mmask8(lanes), hi = __mmask8(lanes >> 8);
  const __m512d z_lo = zs.from(_mm512_maskz_loadu_pd(lo, zs.source() + i));
  const __m512d z_hi = zs.from(_mm512_maskz_loadu_pd(hi, zs.source() + i + 8));
  add_half<kKnown>(z_lo, _mm512_maskz_loadu_pd(lo, y + i), lo, a.loss_lo,
                   a.half_grad_lo);
  add_half<kKnown>(z_hi, _mm512_maskz_loadu_pd(hi, y + i + 8), hi, a.loss_hi,
                   a.half_grad_hi);
}

// Asks for the cache lines kPrefetchBytes past a step's 16 points of both
// streams. The hardware's own prefetching leaves a hidden-once epoch over
// data in L3 ~10% under a plain loop's speed on the 2-core Xeon (1e6
// float64 points, a C++ harness: 700 -> 633-684 us, the same as the loop);
// 8 KiB ahead did best of 1-8 KiB. A prefetch never faults, so the lines
// past the end cost nothing but the asking.
constexpr int64_t kPrefetchBytes = 8192;
template <typename T>
BIASFIT_HD void prefetch_ahead(const T* a, const T* b) {
  static_assert(kLanes * sizeof(T) % 64 == 0, "whole cache lines a step");
  const char* a_ahead = reinterpret_cast<const char*>(a) + kPrefetchBytes;
  const char* b_ahead = reinterpret_cast<const char*>(b) + kPrefetchBytes;
#ifndef BIASFIT_NO_PREFETCH
  for (size_t line = 0; line < kLanes * sizeof(T); line += 64) {
    __builtin_prefetch(a_ahead + line);
    __builtin_prefetch(b_ahead + line);
  }
#endif
}

// A chunk of the trainer's points (float or double) on AVX-512: its whole
// steps, the tail as one masked step, the lanes' tree.
template <Known kKnown, typename Point>
BIASFIT_AVX512 LossGrad chunk_hand_avx512(const Point& p, int64_t begin,
                                          int64_t end, const double* start_loss) {
  static_assert(kLanes == 16, "16 points a step");
  using V = std::conditional_t<std::is_same_v<decltype(Point::bias), float>,
                               __m512, __m512d>;
  const auto zs = vector_z<V>(p);
  Acc512 a{_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(),
           _mm512_setzero_pd()};
  if (start_loss != nullptr) {
    a.loss_lo = _mm512_loadu_pd(start_loss);
    a.loss_hi = _mm512_loadu_pd(start_loss + 8);
  }
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    prefetch_ahead(zs.source() + i, p.y + i);
    step_avx512<kKnown>(zs, p.y, i, 0xffff, a);
  }
  if (i < end) step_avx512<kKnown>(zs, p.y, i, __mmask16((1u << (end - i)) - 1), a);
  return finish(a);
}

// AVX2: the same 16 lanes as two vectors of 8 floats, lanes 4j..4j+3 in
// accumulator j.
template <typename Point>
BIASFIT_AVX2 LossGrad chunk_f32_avx2(const Point& p, int64_t begin,
                                     int64_t end, const double* start_loss) {
  static_assert(kLanes == 16, "two __m256 of floats per step");
  const auto zs = vector_z<__m256>(p);
  __m256d loss[4], half_grad[4];
  for (int j = 0; j < 4; ++j) {
    half_grad[j] = _mm256_setzero_pd();
    loss[j] = start_loss ? _mm256_loadu_pd(start_loss + 4 * j) : _mm256_setzero_pd();
  }
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    for (int half = 0; half < 2; ++half) {
      const int64_t at = i + 8 * half;
      const __m256 z = zs.at(at);
      const __m256 r = sub_rn(relu(z), _mm256_loadu_ps(p.y + at));
      const __m256 r_active = active_residual(z, r);
      const __m256d r_lo = _mm256_cvtps_pd(_mm256_castps256_ps128(r));
      const __m256d r_hi = _mm256_cvtps_pd(_mm256_extractf128_ps(r, 1));
      loss[2 * half] = _mm256_fmadd_pd(r_lo, r_lo, loss[2 * half]);
      loss[2 * half + 1] = _mm256_fmadd_pd(r_hi, r_hi, loss[2 * half + 1]);
      half_grad[2 * half] += _mm256_cvtps_pd(_mm256_castps256_ps128(r_active));
      half_grad[2 * half + 1] +=
          _mm256_cvtps_pd(_mm256_extractf128_ps(r_active, 1));
    }
  }
  Lanes lanes;
  for (int j = 0; j < 4; ++j) {
    _mm256_storeu_pd(lanes.loss + 4 * j, loss[j]);
    _mm256_storeu_pd(lanes.grad + 4 * j, half_grad[j] + half_grad[j]);
  }
  return lanes.finish(p, i, end);
}

// The points the trainer sums (from hidden, or streamed from x) have loops
// written by hand, for points of type T; every other point takes chunk_sum
// compiled per ISA (all of them where cpu/isa.h's BIASFIT_X86_HAND_LOOPS
// is 0: under clang).
template <typename Point, typename T>
constexpr bool kHandWritten = false;
#if BIASFIT_X86_HAND_LOOPS
template <typename T>
constexpr bool kHandWritten<PointLossFromHidden<T>, T> = true;
template <typename T>
constexpr bool kHandWritten<PointLoss<T>, T> = true;
#endif

// What is known of the z of [begin, end) (Known).
template <typename Point>
Known known_of(const Point&, int64_t, int64_t) {
  return Known::kNothing;
}
template <typename T>
Known known_of(const PointLossFromHidden<T>& p, int64_t begin, int64_t end) {
  return p.known_at(begin, end);
}

// One chunk's sum on AVX-512 or AVX2 (isa): the trainer's points by hand,
// the others chunk_sum compiled for it.
template <typename Point>
LossGrad sum_chunk(Isa isa, const Point& p, int64_t begin, int64_t end,
                   const double* start_loss) {
  if (isa == Isa::kAvx512) {
#ifndef BIASFIT_NO_HAND_AVX512
    if constexpr (kHandWritten<Point, float> || kHandWritten<Point, double>) {
      switch (known_of(p, begin, end)) {
        case Known::kAllOn:
          return chunk_hand_avx512<Known::kAllOn>(p, begin, end, start_loss);
        case Known::kNoNaN:
          return chunk_hand_avx512<Known::kNoNaN>(p, begin, end, start_loss);
        default:
          return chunk_hand_avx512<Known::kNothing>(p, begin, end, start_loss);
      }
    }
#endif
    return chunk_avx512(p, begin, end, start_loss);
  }
#ifndef BIASFIT_NO_HAND_AVX2
  if constexpr (kHandWritten<Point, float>) {
    return chunk_f32_avx2(p, begin, end, start_loss);
  }
#endif
  return chunk_avx2(p, begin, end, start_loss);
}

// The hidden buffer's loop (cpu/points.h) on AVX-512's or AVX2's vectors.
template <typename T>
BIASFIT_AVX512 T hidden_chunk_avx512(const T* x, T* h, int64_t begin,
                                     int64_t end, const Weights<T>& w) {
  using V = std::conditional_t<std::is_same_v<T, float>, __m512, __m512d>;
  return hidden_chunk_lanes<V>(x, h, begin, end, w);
}

template <typename T>
BIASFIT_AVX2 T hidden_chunk_avx2(const T* x, T* h, int64_t begin, int64_t end,
                                 const Weights<T>& w) {
  using V = std::conditional_t<std::is_same_v<T, float>, __m256, __m256d>;
  return hidden_chunk_lanes<V>(x, h, begin, end, w);
}

template <typename T>
T hidden_chunk(Isa isa, const T* x, T* h, int64_t begin, int64_t end,
               const Weights<T>& w) {
  return isa == Isa::kAvx512 ? hidden_chunk_avx512(x, h, begin, end, w)
                             : hidden_chunk_avx2(x, h, begin, end, w);
}

}  // namespace x86
}  // namespace cpu
}  // namespace biasfit

#pragma GCC diagnostic pop
