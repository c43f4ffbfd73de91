// The CPU trainer's points regrouped by hidden value, so that an epoch can
// skip the chunks where the output unit is off at every point.
//
// Only final_bias is trained, so at bias b a point's output unit is off
// exactly when fl(h + b) <= 0 (h = hidden(x), fixed for the fit). An off
// point has r = -y: loss y^2 and gradient 0, the same bits at every such b.
// With points grouped by h, most chunks are all off (or all on) and an
// epoch reads only the chunks whose units can be on: on the benchmark data
// that is ~10% of them over a fit, since the output relu is zero for most
// doses, as in the tutorial.
//
// The grouping is a stable counting sort on the top 12 bits of an
// order-preserving key of float(h) (sign, exponent, 3 mantissa bits): one
// pass to count, one to move, the same order for any thread count. Chunks,
// lanes and the combining tree stay deterministic_sum's, now over the
// regrouped points: the sums are fused_loss's over that order bit for bit
// (tests/test_cpu_kernels.py), and differ from the original order's only in
// the order of additions.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "network.h"
#include "reduce_cpu.h"

namespace biasfit {

constexpr int kKeyBits = 12;
constexpr int64_t kBuckets = int64_t(1) << kKeyBits;
// The points are cut into this many pieces for counting and moving; fixed,
// so the order does not depend on the thread count.
constexpr int64_t kPieces = 16;

inline uint32_t group_of(float h) {
  uint32_t u;
  std::memcpy(&u, &h, sizeof u);
  // Flipping the sign bit of positives and every bit of negatives makes the
  // unsigned order the float order (without a branch: signs are random).
  u ^= uint32_t(int32_t(u) >> 31) | 0x80000000u;
  return u >> (32 - kKeyBits);
}

template <typename T>
struct ActiveSet {
  std::vector<T> h, y;          // the points, regrouped
  std::vector<T> max_h, min_h;  // per chunk; NaN where some h is NaN
  std::vector<LossGrad> off;    // per chunk, its sums with every unit off

  // The sums of chunk c at `bias` if every unit there is off, else null.
  // fl is monotonic: fl(h + bias) <= fl(max_h + bias) <= 0 for all of c.
  const LossGrad* known_sums(int64_t c, T bias) const {
    return max_h[c] + bias <= T(0) ? &off[c] : nullptr;
  }

  // chunk(point, begin, end) sums a range of points at point.bias; point
  // is a PointLossFromHidden, pointed here at the regrouped points.
  template <typename Point, typename ChunkFn>
  static ActiveSet build(const T* h, const T* y, int64_t n, Point point,
                         const ChunkFn& chunk, int threads) {
    ActiveSet set;
    set.h.resize(n);
    set.y.resize(n);
    T* h_out = set.h.data();
    T* y_out = set.y.data();
    auto piece = [n](int64_t p) { return n * p / kPieces; };
    std::vector<int64_t> next(kPieces * kBuckets, 0);
    parallel_items(kPieces, threads, [&](int64_t p) {
      int64_t* count = &next[p * kBuckets];
      for (int64_t i = piece(p); i < piece(p + 1); ++i) {
        ++count[group_of(float(h[i]))];
      }
    });
    // Where each (group, piece) starts: groups in order, pieces in order
    // within a group, points in order within a piece.
    int64_t start = 0;
    for (int64_t g = 0; g < kBuckets; ++g) {
      for (int64_t p = 0; p < kPieces; ++p) {
        const int64_t count = next[p * kBuckets + g];
        next[p * kBuckets + g] = start;
        start += count;
      }
    }
    parallel_items(kPieces, threads, [&](int64_t p) {
      int64_t* to = &next[p * kBuckets];
      for (int64_t i = piece(p); i < piece(p + 1); ++i) {
        const int64_t j = to[group_of(float(h[i]))]++;
        h_out[j] = h[i];
        y_out[j] = y[i];
      }
    });
    const int64_t chunks = num_chunks(n);
    set.max_h.resize(chunks);
    set.min_h.resize(chunks);
    set.off.resize(chunks);
    // At bias -inf every finite h is off (r = -y), as at any bias that
    // known_sums lets through; chunks with an inf or NaN h are never skipped.
    point.h = h_out;
    point.y = y_out;
    point.bias = -std::numeric_limits<T>::infinity();
    parallel_items(chunks, threads, [&](int64_t c) {
      const int64_t begin = c * kChunk, end = std::min(begin + kChunk, n);
      T top = -std::numeric_limits<T>::infinity(), low = -top;
      bool nan = false;
      for (int64_t i = begin; i < end; ++i) {
        nan |= h_out[i] != h_out[i];
        top = h_out[i] > top ? h_out[i] : top;
        low = h_out[i] < low ? h_out[i] : low;
      }
      set.max_h[c] = nan ? std::numeric_limits<T>::quiet_NaN() : top;
      set.min_h[c] = nan ? std::numeric_limits<T>::quiet_NaN() : low;
      set.off[c] = chunk(point, begin, end);
    });
    return set;
  }
};

}  // namespace biasfit
