// What one point contributes to a sum over points, as small functors that
// chunk_sum (cpu/reduce.h) inlines, and the helpers of loops that take W
// points at once as a vector (any GCC/Clang vector type: x86's, or the
// portable one cpu/kernels.h's baseline uses): loading them, broadcasting
// the weights, the hidden buffer's loop. Portable; cpu/kernels.h runs them,
// cpu/x86/epoch_loops.h too.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "core/network.h"
#include "cpu/reduce.h"

namespace biasfit {
namespace cpu {

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

// What a chunk's loop knows of its points' z = h + bias, from
// PointLossFromHidden's chunk_min_h (known_at):
//   kAllOn: every z > 0, so relu(z) is z and relu'(z) is 1;
//   kNoNaN: no z is NaN, so the residual can be formed under the mask
//     z > 0 instead of through the relu (add_half);
//   kNothing: the loop takes relu(z) as core/network.h does, NaN and all.
enum class Known { kNothing, kNoNaN, kAllOn };

template <typename T>
struct PointLossFromHidden {  // the same from a precomputed hidden(x[i])
  const T* h;
  const T* y;
  T bias;
  // Optional: the smallest h of each kChunk chunk of h (NaN if it has a
  // NaN). Where fl(min + bias) > 0 every output unit of the chunk is on,
  // relu(z) is z and relu'(z) is 1, and the AVX-512 loops skip both: the
  // same values, three fewer operations in eleven (known_at).
  const T* chunk_min_h = nullptr;
  BIASFIT_HD LossGrad operator()(int64_t i) const {
    return loss_grad_from_hidden(h[i], y[i], bias);
  }
  // What chunk_min_h tells of the z of [begin, end), inside one chunk:
  // every unit on where fl(min + bias) > 0; no z NaN where the chunk has
  // no NaN h (its min is not NaN) and the bias is finite (an h of +-inf
  // plus it stays an infinity).
  Known known_at(int64_t begin, int64_t end) const {
    const int64_t c = begin / kChunk;
    if (chunk_min_h == nullptr || (end - 1) / kChunk != c) return Known::kNothing;
#ifndef BIASFIT_NO_ALL_ON
    if (add_rn(chunk_min_h[c], bias) > T(0)) return Known::kAllOn;
#endif
#ifdef BIASFIT_NO_NEGATED
    return Known::kNothing;
#endif
    return !std::isnan(chunk_min_h[c]) && std::isfinite(bias) ? Known::kNoNaN
                                                               : Known::kNothing;
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

// 16 bytes of T as a GCC/Clang vector: what every CPU of a 64-bit target
// has (SSE2 on x86-64, NEON on aarch64), for the portable loops.
template <typename T>
struct Vector16;
template <>
struct Vector16<float> {
  typedef float type __attribute__((vector_size(16)));
};
template <>
struct Vector16<double> {
  typedef double type __attribute__((vector_size(16)));
};

// As many values as V holds, from any address: compiles to one unaligned
// vector load inside each instruction set's loop.
template <typename V, typename T>
BIASFIT_HD V load_values(const T* at) {
  V v;
  __builtin_memcpy(&v, at, sizeof v);
  return v;
}

template <typename V, typename T>
BIASFIT_HD Weights<V> broadcast(const Weights<T>& w) {
  auto all = [](T v) { return V{} + v; };
  return {all(w.w00), all(w.b00), all(w.w01), all(w.w10), all(w.b10), all(w.w11)};
}

// The trainer's hidden buffer: // h[i] = hidden(x[i]) over one chunk's points, returning their smallest h,
// or NaN where some h is inf or NaN (h - h is then NaN, and so is any sum
// of such terms): the buffer and PointLossFromHidden::chunk_min_h in one
// pass. core/network.h's hidden on W points at once rounds every point as the
// scalar hidden does (no FMA), so the buffer's bits do not depend on the
// instruction set.
template <typename V, typename T>
BIASFIT_HD T hidden_chunk_lanes(const T* x, T* h, int64_t begin, int64_t end,
                                const Weights<T>& w) {
  constexpr int kWidth = sizeof(V) / sizeof(T);
  const Weights<V> wv = broadcast<V>(w);
  V low = V{} + std::numeric_limits<T>::infinity(), probe = V{};
  int64_t i = begin;
  for (; i + kWidth <= end; i += kWidth) {
    const V v = hidden(load_values<V>(x + i), wv);
    __builtin_memcpy(h + i, &v, sizeof v);
    low = v < low ? v : low;
    probe += v - v;
  }
  T lows[kWidth], probes[kWidth];
  __builtin_memcpy(lows, &low, sizeof low);
  __builtin_memcpy(probes, &probe, sizeof probe);
  T least = std::numeric_limits<T>::infinity(), nan_probe = T(0);
  for (int k = 0; k < kWidth; ++k) {
    least = lows[k] < least ? lows[k] : least;
    nan_probe += probes[k];
  }
  for (; i < end; ++i) {
    h[i] = hidden(x[i], w);
    least = h[i] < least ? h[i] : least;
    nan_probe += h[i] - h[i];
  }
  return nan_probe == T(0) ? least : std::numeric_limits<T>::quiet_NaN();
}

}  // namespace cpu
}  // namespace biasfit
