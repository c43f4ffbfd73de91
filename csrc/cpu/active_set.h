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
// pass to count, one to move; stable, so the same order however the points
// are cut into pieces for threads. Chunks, lanes and the combining tree stay
// deterministic_sum's, now over the regrouped points: the sums are
// fused_loss's over that order bit for bit (tests/test_cpu_kernels.py), and
// differ from the original order's only in the order of additions.
//
// Within a chunk the groups then run from low h to high (points within a
// group keep their order), so at any bias the off points come mostly
// first. Every kSpan points the build keeps the chunk's loss lanes as they
// stand with every unit before off (an off point adds y^2, the same at
// every such bias) and the largest h so far: an epoch starts each chunk at
// the last span boundary before which every h + bias <= 0, from those
// lanes, and sums only the rest. The same additions in the same lanes, so
// the same bits as summing the whole chunk; the largest h, not the order,
// is what makes the skip safe.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "cpu/kernels.h"
#include "core/network.h"
#include "cpu/reduce.h"

namespace biasfit {

constexpr int kKeyBits = 12;
constexpr int64_t kBuckets = int64_t(1) << kKeyBits;
// Where an epoch may resume a chunk: every kSpan points (a whole number of
// kLanes steps, so the lanes line up), 1 byte a point of saved lanes.
constexpr int64_t kSpan = 128;
static_assert(kSpan % kLanes == 0 && kChunk % kSpan == 0, "spans tile chunks");

inline int64_t num_spans(int64_t n) { return (n + kSpan - 1) / kSpan; }

inline uint32_t group_of(float h) {
  uint32_t u;
  std::memcpy(&u, &h, sizeof u);
  // Flipping the sign bit of positives and every bit of negatives makes the
  // unsigned order the float order (without a branch: signs are random).
  u ^= uint32_t(int32_t(u) >> 31) | 0x80000000u;
  return u >> (32 - kKeyBits);
}

// One regrouped chunk [begin, end) summed up for ActiveSet: its largest
// and smallest h (of those not NaN), whether one is NaN, and its sums with
// every unit off; per span, the largest h of the chunk up to the span's end
// (+inf from a NaN h on: never skipped) and the chunk's loss lanes at the
// span's start with every unit before it off.
template <typename T>
struct ChunkSummary {
  T top, low;
  bool nan;
  LossGrad off;
};

// The lanes as chunk_sum adds them, point i into lane (i - begin) % kLanes,
// with every unit off: r = -y, so r^2 is y^2 widened and squared, bit for
// bit, and the gradient lanes stay +0.0 (for an h below +inf; past a +inf
// or NaN one, the lanes are never used). At the chunk's end, their tree is
// its sums with every unit off. h's extremes and NaNs are kept per lane
// too: a running max across lanes would be a chain the compiler may not
// reorder. Local arrays and __restrict let the compiler keep every lane in
// vector registers (a store through a double* could otherwise be one to a
// lane), and build compiles the loop for the best instruction set: 175 ->
// 52 us a pass at 1e5 float64 points on the 2-core Xeon with AVX-512, 65
// with AVX2.
template <typename T>
BIASFIT_HD ChunkSummary<T> summarize_chunk(const T* __restrict h,
                                           const T* __restrict y,
                                           int64_t begin, int64_t end,
                                           T* __restrict span_top,
                                           double* __restrict span_lanes) {
  constexpr T kInf = std::numeric_limits<T>::infinity();
  double lanes[kLanes];
  T tops[kLanes], lows[kLanes], nans[kLanes];
  for (int k = 0; k < kLanes; ++k) {
    lanes[k] = 0.0;
    tops[k] = -kInf;
    lows[k] = kInf;
    nans[k] = T(0);
  }
  // Point i into lane k, inlined into both loops below. NaN never wins a
  // comparison, so the extremes are of the other h.
  auto add = [&](int64_t i, int k) {
    const double yk = double(y[i]);
    lanes[k] = add_rn(lanes[k], mul_rn(yk, yk));
    tops[k] = h[i] > tops[k] ? h[i] : tops[k];
    lows[k] = h[i] < lows[k] ? h[i] : lows[k];
    nans[k] = h[i] != h[i] ? T(1) : nans[k];
  };
  bool nan = false;
  T top = -kInf;  // up to the current span's end
  for (int64_t from = begin; from < end; from += kSpan) {
    const int64_t to = std::min(from + kSpan, end);
    double* at = span_lanes + from / kSpan * kLanes;
    for (int k = 0; k < kLanes; ++k) at[k] = lanes[k];
    int64_t i = from;
    for (; i + kLanes <= to; i += kLanes) {
      for (int k = 0; k < kLanes; ++k) add(i + k, k);
    }
    for (int k = 0; i < to; ++i, ++k) add(i, k);
    for (int k = 0; k < kLanes; ++k) {
      top = tops[k] > top ? tops[k] : top;
      nan |= nans[k] != T(0);
    }
    span_top[from / kSpan] = nan ? kInf : top;
  }
  T low = kInf;
  for (int k = 0; k < kLanes; ++k) low = lows[k] < low ? lows[k] : low;
  Lanes all_off;
  for (int k = 0; k < kLanes; ++k) all_off.loss[k] = lanes[k];
  return {top, low, nan, all_off.tree()};
}

template <typename T>
struct ActiveSet {
  T* h = nullptr;               // the points, regrouped (in the caller's
  T* y = nullptr;               // space, which outlives the set)
  std::vector<T> max_h, min_h;  // per chunk; NaN where some h is NaN
  std::vector<LossGrad> off;    // per chunk, its sums with every unit off
  // Per span: the largest h of its chunk up to the span's end (+inf from a
  // NaN h on: never skipped), and the chunk's kLanes loss lanes at the
  // span's start with every unit before it off.
  std::vector<T> span_top;
  std::vector<double> span_lanes;

  // The sums of chunk c at `bias` if every unit there is off, else null.
  // fl is monotonic: fl(h + bias) <= fl(max_h + bias) <= 0 for all of c.
  const LossGrad* known_sums(int64_t c, T bias) const {
    return max_h[c] + bias <= T(0) ? &off[c] : nullptr;
  }

  // Where to resume the chunk [begin, end) at `bias`: the first point of
  // the last span whose predecessors in the chunk are all off, and the
  // loss lanes there (null at the chunk's start: all +0.0).
  struct Resume {
    int64_t from;
    const double* loss_lanes;
  };
  Resume resume(int64_t begin, int64_t end, T bias) const {
    const int64_t first = begin / kSpan, spans = num_spans(end - begin);
    // span_top rises along the chunk: find the spans [0, skip) all off.
    int64_t lo = 0, hi = spans - 1;  // skip in [lo, hi]; the last always summed
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (span_top[first + mid - 1] + bias <= T(0)) lo = mid; else hi = mid - 1;
    }
    if (lo == 0) return {begin, nullptr};
    return {begin + lo * kSpan, &span_lanes[(first + lo) * kLanes]};
  }

  // Regroups (h, y) into h_out and y_out, n points each, written whole.
  static ActiveSet build(const T* h, const T* y, int64_t n, int threads,
                         T* h_out, T* y_out) {
    ActiveSet set;
    set.h = h_out;
    set.y = y_out;
    // One piece a thread: the sort is stable, so its order is the same
    // however the points are cut, and more pieces only add counters.
    const int64_t pieces = threads_for(num_chunks(n), threads);
    std::vector<int64_t> next(pieces * kBuckets, 0);
    // The piece's bounds, taken before its loop: in the loop, the stores
    // through the counters could alias the captures, and the division
    // would be redone every point (it was 40% of the build).
    auto piece = [n, pieces](int64_t p) {
      return std::pair<int64_t, int64_t>(n * p / pieces, n * (p + 1) / pieces);
    };
    parallel_items(pieces, threads, [&](int64_t p) {
      int64_t* count = &next[p * kBuckets];
      const auto [begin, end] = piece(p);
      for (int64_t i = begin; i < end; ++i) ++count[group_of(float(h[i]))];
    });
    // Where each (group, piece) starts: groups in order, pieces in order
    // within a group, points in order within a piece.
    int64_t start = 0;
    for (int64_t g = 0; g < kBuckets; ++g) {
      for (int64_t p = 0; p < pieces; ++p) {
        const int64_t count = next[p * kBuckets + g];
        next[p * kBuckets + g] = start;
        start += count;
      }
    }
    parallel_items(pieces, threads, [&](int64_t p) {
      int64_t* to = &next[p * kBuckets];
      const auto [begin, end] = piece(p);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t j = to[group_of(float(h[i]))]++;
        h_out[j] = h[i];
        y_out[j] = y[i];
      }
    });
    const int64_t chunks = num_chunks(n);
    set.max_h.resize(chunks);
    set.min_h.resize(chunks);
    set.off.resize(chunks);
    set.span_top.resize(num_spans(n));
    set.span_lanes.resize(num_spans(n) * kLanes);
    // Every h but +inf and NaN is off at any bias that known_sums or resume
    // lets through; a +inf or NaN h is never skipped.
    parallel_items(chunks, threads, [&](int64_t c) {
      const int64_t begin = c * kChunk, end = std::min(begin + kChunk, n);
      const ChunkSummary<T> s = cpu::on_best_isa([&]() BIASFIT_INLINE_LAMBDA {
        return summarize_chunk(h_out, y_out, begin, end, set.span_top.data(),
                               set.span_lanes.data());
      });
      constexpr T kNaN = std::numeric_limits<T>::quiet_NaN();
      set.max_h[c] = s.nan ? kNaN : s.top;
      set.min_h[c] = s.nan ? kNaN : s.low;
      set.off[c] = s.off;
    });
    return set;
  }
};

}  // namespace biasfit
