// x86 and GCC only (cpu/grads.h includes it where BIASFIT_X86_HAND_LOOPS):
// the all-seven pass
// (loss and the seven parameter gradient sums) over contiguous points,
// vectorized by hand for AVX2 and AVX-512: gcc keeps
// cpu/grads.h's chunk loop scalar (2-2.7 ns a point a core on the 2-core
// Zen 4 EPYC; this loop 0.85 on AVX-512, 1.3-1.6 on AVX2; on the Zen 5
// EPYC, float data, 0.46 with the forward on 8 floats, 0.41 on 16).
//
// No second copy of the math: core/network.h's forward, relu and
// loss_param_grads_wide run on GCC vector types, W points at once. The
// forward runs in the data's type (W floats or W doubles), is widened lane by
// lane to W doubles (exact), and the derivatives and sums run in double as
// for a scalar point. Point i still adds into lane i % kLanes (kLanes / W
// vectors of accumulators a step), so the lanes hold exactly what
// cpu/grads.h's scalar loop puts there, and the same tail and tree finish
// them: the same bits, which tests/test_cpu_kernels.py checks per kernel.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "core/network.h"
#include "cpu/reduce.h"
#include "cpu/x86/simd.h"  // Relu<__m256>, intrinsics

// As in cpu/x86/simd.h: x86's vector types as template arguments, and
// always-inlined functions that take them.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#pragma GCC diagnostic ignored "-Wpsabi"

namespace biasfit {
namespace cpu {
namespace x86 {

// kBytes: a vector register's width, 32 (AVX2) or 64 (AVX-512). D: that
// many bytes of doubles. x86's own types, so that core/network.h's relu takes
// cpu/x86/simd.h's one-instruction max.
template <int kBytes>
struct Simd;
// F: the floats a float forward runs on, one or two D's worth (kParts):
// AVX-512 runs it on 16 floats, a whole zmm, and widens each half to its D
// (half the forward's instructions of 8 floats a time, which left half of
// each zmm unused); AVX2 on as many floats as D has doubles, for the
// reason its kGroup below gives.
template <>
struct Simd<64> {
  using D = __m512d;
  using F = __m512;
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
// part<P>(v): lanes P * W .. P * W + W - 1 of a wider v (W: D's doubles),
// an extract and a vcvtps2pd.
template <typename D>
struct WidenLanes {
  static constexpr int kW = sizeof(D) / sizeof(double);
  template <typename V>
  BIASFIT_HD D operator()(V v) const {
    return part<0>(v);
  }
  template <int P, typename V>
  BIASFIT_HD static D part(V v) {
    return lanes<P * kW>(v, std::make_integer_sequence<int, kW>{});
  }
  template <int kFrom, typename V, int... k>
  BIASFIT_HD static D lanes(V v, std::integer_sequence<int, k...>) {
    return D{double(v[kFrom + k])...};
  }
};

// The per-ISA pieces the loop below needs beyond core/network.h's operators, as
// GCC builtins for the reason cpu/x86/simd.h gives for its relu (they expand
// in the instruction set of the kernel they are inlined into).
//   positive_part<P>(v): per lane !(v <= 0) (true for NaN, PyTorch's relu'), for v of the
//                     data's type before any widening, in the lanes of
//                     part P of the forward's vector: a mask for mul_where.
//   active_part<P>(a, h): relu'(a) as such a mask, given h = relu(a)
//                     widened (h <= 0 is a <= 0 for every a, core/network.h's
//                     test): from whichever is cheaper.
//   mul_where(m,a,b): a * b where m, else +0.0: core/network.h's
//                     `c ? D{} : mul_rn(a, b)` with m = !c.
//   fma(a, b, c):     a * b + c rounded once.
// AVX-512 keeps the masks in mask registers, so a test costs one compare of
// floats and no widening, and the zeroing rides on the multiply. AVX2 has no
// mask registers: a mask is a vector of all-ones or zero lanes, widened from
// floats by sign extension (exact), and zeroing is an and.
template <int kBytes>
struct Lanewise;
template <>
struct Lanewise<64> {
  using D = __m512d;
  using Mask = __mmask8;
  BIASFIT_HD static __mmask16 positive(__m512 v) {
    return __builtin_ia32_cmpps512_mask(__v16sf(v), __v16sf{}, _CMP_NLE_UQ,
                                        __mmask16(-1),
                                        _MM_FROUND_CUR_DIRECTION);
  }
  BIASFIT_HD static Mask positive(__m512d v) {
    return __builtin_ia32_cmppd512_mask(__v8df(v), __v8df{}, _CMP_NLE_UQ,
                                        Mask(-1), _MM_FROUND_CUR_DIRECTION);
  }
  // Part P's lanes of a test on the forward's (wider) vectors.
  template <int P>
  BIASFIT_HD static Mask positive_part(__m512 v) {
    return Mask(positive(v) >> (8 * P));
  }
  template <int P>
  BIASFIT_HD static Mask positive_part(__m512d v) {
    static_assert(P == 0, "a double forward is one part");
    return positive(v);
  }
  template <int P, typename V>
  BIASFIT_HD static Mask active_part(V a, D) { return positive_part<P>(a); }
  BIASFIT_HD static D mul_where(Mask m, D a, D b) {
    return D(__builtin_ia32_mulpd512_mask(__v8df(a), __v8df(b), __v8df{}, m,
                                          _MM_FROUND_CUR_DIRECTION));
  }
  BIASFIT_HD static D fma(D a, D b, D c) {
    return D(__builtin_ia32_vfmaddpd512_mask(__v8df(a), __v8df(b), __v8df(c),
                                             Mask(-1),
                                             _MM_FROUND_CUR_DIRECTION));
  }
};
template <>
struct Lanewise<32> {
  using D = __m256d;
  using Mask = __v4di;
  BIASFIT_HD static Mask positive(__m128 v) {
    return __builtin_convertvector(~(v <= __m128{}), __v4di);
  }
  BIASFIT_HD static Mask positive(__m256d v) { return ~(v <= __m256d{}); }
  template <int P, typename V>
  BIASFIT_HD static Mask positive_part(V v) {
    static_assert(P == 0, "AVX2's forward is one part");
    return positive(v);
  }
  // The widened h, which the loop has anyway: one compare, no widening of
  // the mask.
  template <int P, typename V>
  BIASFIT_HD static Mask active_part(V, D h) { return positive(h); }
  BIASFIT_HD static D mul_where(Mask m, D a, D b) {
    return D(m & __v4di(mul_rn(a, b)));
  }
  BIASFIT_HD static D fma(D a, D b, D c) {
    return D(__builtin_ia32_vfmaddpd256(__v4df(a), __v4df(b), __v4df(c)));
  }
};

// Adds the points of [begin, end) into loss[k] and grad[p][k], k = i %
// kLanes, for whole steps of kLanes points; returns where it stopped (the
// tail, fewer than kLanes points, is the caller's).
//
// The derivatives are core/network.h's loss_param_grads_wide (through
// backward_wide) spelled out for these registers, in the same operations:
//   g = z > 0 ? 2 r : 0,   d0 = a0 > 0 ? g w01 : 0,   d1 = a1 > 0 ? g w11 : 0
//   loss += r r,  W00 += d0 x,  B00 += d0,  W01 += g h0,
//                 W10 += d1 x,  B10 += d1,  W11 += g h1,  bias += g
// Two differences, both the same bits:
// - the tests run on the forward's values in the data's type (z > 0 on
//   the float z is the widened z > 0, and a0 > 0 is core/network.h's
//   relu(a0) > 0 for every a0), so z, a0 and a1 are never widened (AVX2
//   tests the widened h0, h1 instead: Lanewise::active_part);
// - for float data, r r, g h0 and g h1 are products of two floats (g = 2 r
//   is one doubled), exact in double (24 + 24 significant bits < 53), so
//   rounding the product and then the sum is rounding the sum once: a fused
//   multiply-add, one instruction for two. Not so for d0 x and d1 x
//   (d0 = g w01 has up to 48 bits) nor for double data, which keep the
//   multiply and the add.
template <int kBytes, typename T>
BIASFIT_HD int64_t simd_param_lanes(const T* x, const T* y,
                                    const Weights<T>& w, T bias,
                                    int64_t begin, int64_t end,
                                    double (&loss)[kLanes],
                                    double (&grad)[kNumParams][kLanes]) {
  using L = Lanewise<kBytes>;
  using D = typename Simd<kBytes>::D;
  constexpr bool kFloat = std::is_same<T, float>::value;
  // V: the forward's vectors, kParts D's worth of points each (Simd::F).
  using V = std::conditional_t<kFloat, typename Simd<kBytes>::F, D>;
  constexpr int kWidth = Simd<kBytes>::kWidth, kSteps = kLanes / kWidth;
  constexpr int kParts = int(sizeof(V) / sizeof(T)) / kWidth;
  static_assert(kLanes % kWidth == 0, "whole vectors of lanes");
  static_assert(kParts == 1 || kParts == 2, "one or two parts a forward");
  const WidenLanes<D> to_d;
  const Weights<V> wv{every_lane<V>(w.w00), every_lane<V>(w.b00),
                      every_lane<V>(w.w01), every_lane<V>(w.w10),
                      every_lane<V>(w.b10), every_lane<V>(w.w11)};
  const Weights<D> wd = widen<D>(wv, to_d);
  const V bv = every_lane<V>(bias);
  const D two = splat<D>(2.0);
  // acc + a b, a b exact for float data (above).
  auto add_product = [](D acc, D a, D b) {
    if constexpr (kFloat) return L::fma(a, b, acc);
    else return add_rn(acc, mul_rn(a, b));
  };
  // The lanes' 8 sums are 8 kLanes / kWidth vectors: 16 of AVX-512's 32
  // registers, but 32 ymm where AVX2 has 16, which spilled every sum to the
  // stack each point. So AVX2 makes one pass over the chunk (in L2 after
  // the first) per vector of lanes, kGroup vectors of lanes a pass: a lane
  // still adds its own points in their order, so the same bits, and the
  // passes were ~10% faster than the spills for float data. Not for double
  // data (twice the bytes a pass): the trainer's epochs at N = 1e6 took
  // 1.6x as long, so double data keeps one pass.
  constexpr int kGroup = kBytes == 64 || !kFloat ? kSteps : 1;
  static_assert(kSteps % kGroup == 0 && kGroup % kParts == 0,
                "whole groups of lanes, whole forwards a group");
  const int64_t stop = begin + (end - begin) / kLanes * kLanes;
  for (int s0 = 0; s0 < kSteps; s0 += kGroup) {
    D loss_acc[kGroup] = {}, grad_acc[kNumParams][kGroup] = {};
    for (int64_t i = begin; i < stop; i += kLanes) {
#pragma GCC unroll 4
      for (int s1 = 0; s1 < kGroup; s1 += kParts) {
        const int64_t at = i + (s0 + s1) * kWidth;
        const V xv = load<V>(x + at);
        const Forward<V> f = forward(xv, wv, bv);
        const V r = sub_rn(relu(f.z), load<V>(y + at));
        // Part P of the forward's points: lanes s1 + P. Inlined by force:
        // as a call gcc kept the accumulators in memory, 16 stores a step.
        auto add_part = [&](auto part) __attribute__((always_inline)) {
          constexpr int P = decltype(part)::value;
          const int s = s1 + P;
          const D xd = to_d.template part<P>(xv), rd = to_d.template part<P>(r),
                  h0 = to_d.template part<P>(f.h0),
                  h1 = to_d.template part<P>(f.h1);
          const D g = L::mul_where(L::template positive_part<P>(f.z), two, rd);
          const D d0 =
              L::mul_where(L::template active_part<P>(f.a0, h0), g, wd.w01);
          const D d1 =
              L::mul_where(L::template active_part<P>(f.a1, h1), g, wd.w11);
          loss_acc[s] = add_product(loss_acc[s], rd, rd);
          grad_acc[W00][s] = add_rn(grad_acc[W00][s], mul_rn(d0, xd));
          grad_acc[B00][s] = add_rn(grad_acc[B00][s], d0);
          grad_acc[W01][s] = add_product(grad_acc[W01][s], g, h0);
          grad_acc[W10][s] = add_rn(grad_acc[W10][s], mul_rn(d1, xd));
          grad_acc[B10][s] = add_rn(grad_acc[B10][s], d1);
          grad_acc[W11][s] = add_product(grad_acc[W11][s], g, h1);
          grad_acc[kBiasIndex][s] = add_rn(grad_acc[kBiasIndex][s], g);
        };
        add_part(std::integral_constant<int, 0>{});
        if constexpr (kParts == 2) add_part(std::integral_constant<int, 1>{});
      }
    }
    for (int s = 0; s < kGroup; ++s) {
      std::memcpy(loss + (s0 + s) * kWidth, &loss_acc[s], sizeof(D));
      for (int p = 0; p < kNumParams; ++p) {
        std::memcpy(grad[p] + (s0 + s) * kWidth, &grad_acc[p][s], sizeof(D));
      }
    }
  }
  return stop;
}

}  // namespace x86
}  // namespace cpu
}  // namespace biasfit

#pragma GCC diagnostic pop
