// The CPU loops for every gradient (core/network.h's "every gradient"): the
// parameter gradients summed like the bias gradient (fixed chunks, lanes and
// trees of cpu/reduce.h, in double), the per-point ones written in place.
// Free of torch, like cpu/kernels.h: the ops (torch_ops/cpu_ops.cpp) and the trainer
// (cpu/trainer_params.h) both use it.
#pragma once

#include <cstdint>

#include "core/network.h"
#include "cpu/isa.h"
#include "cpu/kernels.h"
#include "cpu/reduce.h"

#if BIASFIT_X86_HAND_LOOPS
#include "cpu/x86/param_lanes.h"
#endif

namespace biasfit {
namespace cpu {

// fused_loss_grads's points: x and y read through strides (1 when
// contiguous), dy/dx written contiguously where asked (null: not asked).
template <typename T>
struct PointLossAllGrads {
  const T* x;
  int64_t x_stride;
  const T* y;
  int64_t y_stride;
  Weights<T> w;
  T bias;
  T* dy;
  T* dx;
  // Returns the point's squared error; its parameter derivatives go to dp.
  BIASFIT_HD double operator()(int64_t i, double* dp) const {
    T dyv, dxv;
    const double loss = point_loss_all_grads(
        x[i * x_stride], y[i * y_stride], w, bias, dp,
        dy != nullptr ? &dyv : nullptr, dx != nullptr ? &dxv : nullptr);
    if (dy != nullptr) dy[i] = dyv;
    if (dx != nullptr) dx[i] = dxv;
    return loss;
  }
};

// The same for contiguous data with no per-point output: the trainer's
// epochs and fused_loss_grads for parameters alone. No pointer to test per
// point, so the chunk loop has no branch but relu's and vectorizes.
template <typename T>
struct PointLossParamGrads {
  const T* x;
  const T* y;
  Weights<T> w;
  T bias;
  BIASFIT_HD double operator()(int64_t i, double* dp) const {
    return point_loss_all_grads(x[i], y[i], w, bias, dp,
                                static_cast<T*>(nullptr),
                                static_cast<T*>(nullptr));
  }
};

// predict_grads's points: grad_out times d(y_hat)/d(everything).
template <typename T>
struct PointPredictGrads {
  const T* grad_out;
  const T* x;
  Weights<T> w;
  T bias;
  T* dx;
  BIASFIT_HD double operator()(int64_t i, double* dp) const {
    const Forward<T> f = forward(x[i], w, bias);
    const double g = f.z <= T(0) ? 0.0 : double(grad_out[i]);
    double dxd = 0.0;
    backward_point(f, x[i], w, g, dp, dx != nullptr ? &dxd : nullptr);
    if (dx != nullptr) dx[i] = T(dxd);
    return 0.0;
  }
};

// One chunk's running ParamSums: point i adds into lane i % kLanes, and the
// lanes combine in Lanes::finish's tree, so the loss and bias sums are
// fused_loss's bit for bit. The SIMD kernels (cpu/x86/param_lanes.h) fill the
// lanes themselves and finish with the same tail and tree. kParams false:
// only the loss is summed (per-point gradients alone were asked for).
struct ParamLanes {
  double loss[kLanes] = {};
  double grad[kNumParams][kLanes] = {};

  template <bool kParams, typename Point>
  BIASFIT_HD void add(const Point& point, int64_t i, int k) {
    double dp[kNumParams];
    loss[k] += point(i, kParams ? dp : nullptr);
    if (kParams) {
      for (int p = 0; p < kNumParams; ++p) grad[p][k] += dp[p];
    }
  }

  // Adds points [i, end), fewer than kLanes, into lanes 0, 1, ..., then
  // combines the lanes.
  template <bool kParams, typename Point>
  BIASFIT_HD ParamSums finish(const Point& point, int64_t i, int64_t end) {
    for (int k = 0; i < end; ++i, ++k) add<kParams>(point, i, k);
    for (int width = kLanes / 2; width > 0; width /= 2) {
      for (int k = 0; k < width; ++k) {
        loss[k] += loss[k + width];
        for (int p = 0; p < kNumParams; ++p) grad[p][k] += grad[p][k + width];
      }
    }
    ParamSums s;
    s.loss = loss[0];
    for (int p = 0; p < kNumParams; ++p) s.grad[p] = grad[p][0];
    return s;
  }
};

template <bool kParams, typename Point>
BIASFIT_HD ParamSums chunk_param_sums(const Point& point, int64_t begin,
                                      int64_t end) {
  ParamLanes lanes;
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
#pragma omp simd
    for (int k = 0; k < kLanes; ++k) lanes.add<kParams>(point, i + k, k);
  }
  return lanes.finish<kParams>(point, i, end);
}

template <bool kParams, typename Point>
ParamSums param_chunk_baseline(const Point& p, int64_t begin, int64_t end) {
  return chunk_param_sums<kParams>(p, begin, end);
}

#if BIASFIT_X86
// On x86 also compiled for AVX-512 and AVX2, chosen at run time as
// sum_chunk (cpu/isa.h's kIsa); all add in the same order, so they give
// the same bits. The contiguous all-seven points (the trainer's epochs) take
// the hand-vectorized lanes of cpu/x86/param_lanes.h (with GCC); the others
// the compiler's own compilation of the loop.
template <bool kParams, typename Point>
BIASFIT_AVX512 ParamSums param_chunk_avx512(const Point& p, int64_t begin,
                                           int64_t end) {
  return chunk_param_sums<kParams>(p, begin, end);
}

template <bool kParams, typename Point>
BIASFIT_AVX2 ParamSums param_chunk_avx2(const Point& p, int64_t begin,
                                       int64_t end) {
  return chunk_param_sums<kParams>(p, begin, end);
}

#if BIASFIT_X86_HAND_LOOPS
template <bool kParams, typename T>
BIASFIT_AVX512 ParamSums param_chunk_avx512(const PointLossParamGrads<T>& p,
                                           int64_t begin, int64_t end) {
  if (!kParams) return chunk_param_sums<kParams>(p, begin, end);
  ParamLanes lanes;
  const int64_t i = x86::simd_param_lanes<64>(p.x, p.y, p.w, p.bias, begin,
                                              end, lanes.loss, lanes.grad);
  return lanes.finish<kParams>(p, i, end);
}

template <bool kParams, typename T>
BIASFIT_AVX2 ParamSums param_chunk_avx2(const PointLossParamGrads<T>& p,
                                       int64_t begin, int64_t end) {
  if (!kParams) return chunk_param_sums<kParams>(p, begin, end);
  ParamLanes lanes;
  const int64_t i = x86::simd_param_lanes<32>(p.x, p.y, p.w, p.bias, begin,
                                              end, lanes.loss, lanes.grad);
  return lanes.finish<kParams>(p, i, end);
}
#endif  // BIASFIT_X86_HAND_LOOPS
#endif  // BIASFIT_X86

template <bool kParams, typename Point>
ParamSums sum_param_chunk(const Point& p, int64_t begin, int64_t end) {
#if BIASFIT_X86
  switch (kIsa) {
    case Isa::kAvx512: return param_chunk_avx512<kParams>(p, begin, end);
    case Isa::kAvx2: return param_chunk_avx2<kParams>(p, begin, end);
    default: break;
  }
#endif
  return param_chunk_baseline<kParams>(p, begin, end);
}

// The whole sum over n points, deterministic for any thread count. params:
// whether parameter gradients are wanted (else their sums are 0).
template <typename Point>
ParamSums sum_param_grads(const Point& p, int64_t n, bool params,
                          int threads) {
  return deterministic_sum(n, threads, [&](int64_t begin, int64_t end) {
    return params ? sum_param_chunk<true>(p, begin, end)
                  : sum_param_chunk<false>(p, begin, end);
  });
}

}  // namespace cpu
}  // namespace biasfit
