// The CPU trainer's closed form for float64 chunks whose output units are
// all on.
//
// Only final_bias trains, so at bias b a point whose output unit is on has
// r = (h + b) - y with h = hidden(x) fixed for the fit. Over a chunk where
// every unit is on, with d = h - y, its mean m and M2 = sum (d - m)^2:
//
//   loss = sum r^2 = M2 + count (m + b)^2     grad = 2 sum r = 2 count (m + b)
//
// Both terms of the loss are >= 0, so nothing cancels (the expanded
// sum d^2 + 2 b sum d + count b^2 would, near a fit): an epoch costs a few
// operations a chunk instead of a pass over its points.
//
// Not bit for bit: the per-point sum rounds h + b and then - y at every
// point (as eager PyTorch does), an error of up to u (|h + b| + |y|) in
// each r (u = 2^-53); the closed form rounds d, m, M2 and the two terms
// instead, an error of the same size. Over a chunk those move the loss by
// at most about 2 u M sum |r| <= 2 u M sqrt(count loss), M the largest
// |h + b| + |y|. So a chunk is closed only where its RMS residual
// sqrt(loss / count) is at least 4 u M / kClosedTolerance: the two sums
// then agree within kClosedTolerance relative whatever the data. Near an
// exact fit (labels the network gives, no noise) that is never, and the
// chunk is summed point by point. On the benchmark's dense data the
// measured gap is ~1e-15 (tests/test_trainer_plan.py holds it to 1e-13).
// float32 points are not summed this way: they round h + b and r in
// float32, as eager PyTorch does, and the closed form would not.
//
// A chunk is all on at b exactly when fl(min h + b) > 0 (fl is monotonic,
// and a sum of doubles rounds to 0 only when it is 0). A chunk with an inf
// or NaN h or y is never closed (its sums must come out inf or NaN).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "cpu/kernels.h"
#include "core/network.h"
#include "cpu/reduce.h"

namespace biasfit {
namespace cpu {

// The relative gap allowed between a closed chunk's loss and its per-point
// sum: half the 1e-12 that fit_fused promises against the autograd engine
// in float64 (README), the other half being the order of the additions.
constexpr double kClosedTolerance = 5e-13;

class OnChunks {
 public:
  // From the fit's hidden values h and labels y: per chunk, one pass for
  // the smallest h and one for the sums of e = d - k and e^2, with k the
  // mean of d at 16 evenly spaced points of the chunk (a shift close to the
  // mean keeps M2 = sum e^2 - (sum e)^2 / count from cancelling). Each
  // chunk's sums run in sum_chunk's fixed lanes and tree: the same bits for
  // any thread count and instruction set.
  static OnChunks build(const double* h, const double* y, int64_t n,
                        int threads) {
    OnChunks set;
    set.chunks_.resize(num_chunks(n));
    parallel_items(num_chunks(n), threads, [&](int64_t c) {
      const int64_t begin = c * kChunk, end = std::min(begin + kChunk, n);
      const int64_t count = end - begin;
      const Extremes x = on_best_isa([&]() BIASFIT_INLINE_LAMBDA {
        return extremes(h, y, begin, end);
      });
      double k = 0.0;
      const int64_t samples = std::min<int64_t>(count, 16);
      for (int64_t j = 0; j < samples; ++j) {
        const int64_t i = begin + j * count / samples;
        k += h[i] - y[i];
      }
      k /= double(samples);
      const LossGrad e = sum_chunk(Shifted{h, y, k}, begin, end);
      Moments& m = set.chunks_[c];
      m.count = double(count);
      m.min_h = x.low;
      m.max_h = x.top;
      m.max_abs_y = x.y_top;
      m.mean = k + e.loss / m.count;
      m.m2 = std::max(0.0, e.grad - e.loss * (e.loss / m.count));
      // inf or NaN anywhere in h or y makes a sum inf or NaN; such a chunk
      // is summed point by point, so that its sums come out inf or NaN.
      m.closable = std::isfinite(e.loss) && std::isfinite(e.grad) &&
                   std::isfinite(k) && std::isfinite(x.low);
    });
    set.max_h_ = -std::numeric_limits<double>::infinity();
    for (const Moments& m : set.chunks_) {
      set.max_h_ = m.max_h > set.max_h_ ? m.max_h : set.max_h_;
    }
    return set;
  }

  // The largest h of the fit, NaNs aside (a NaN h makes the loss NaN, which
  // ends a fit before any stall): every output unit is off exactly when
  // fl(max_h() + bias) <= 0.
  double max_h() const { return max_h_; }

  // Chunk c's sums at `bias` if every unit there is on and its residuals
  // are large enough to close (above), else nothing.
  std::optional<LossGrad> sums(int64_t c, double bias) const {
    const Moments& m = chunks_[c];
    if (!m.closable || !(m.min_h + bias > 0.0)) return std::nullopt;
    const double s = m.mean + bias;
    const LossGrad closed{m.m2 + m.count * (s * s), 2.0 * (m.count * s)};
    constexpr double kScale = 4 * std::numeric_limits<double>::epsilon() / 2 /
                              kClosedTolerance;  // 4 u / tolerance
    const double widest = std::max(std::fabs(m.min_h + bias),
                                   std::fabs(m.max_h + bias)) + m.max_abs_y;
    const double rms_floor = kScale * widest;
    if (!(closed.loss >= m.count * rms_floor * rms_floor)) return std::nullopt;
    return closed;
  }

  // A chunk's smallest and largest h and largest |y| (NaNs aside: NaN never
  // wins a comparison), kept per lane so that the loop vectorizes: build
  // compiles it for the best instruction set. (An omp simd reduction here
  // came out as scalar loads of computed addresses, ~3 ns a point: two
  // thirds of a closed 10-epoch fit's time at 1e5 float64 points.)
  struct Extremes {
    double low, top, y_top;
  };
  BIASFIT_HD static Extremes extremes(const double* __restrict h,
                                      const double* __restrict y,
                                      int64_t begin, int64_t end) {
    constexpr double kInf = std::numeric_limits<double>::infinity();
    double lows[kLanes], tops[kLanes], y_tops[kLanes];
    for (int k = 0; k < kLanes; ++k) {
      lows[k] = kInf;
      tops[k] = -kInf;
      y_tops[k] = 0.0;
    }
    auto add = [&](int64_t i, int k) {
      lows[k] = h[i] < lows[k] ? h[i] : lows[k];
      tops[k] = h[i] > tops[k] ? h[i] : tops[k];
      const double y_size = std::fabs(y[i]);
      y_tops[k] = y_size > y_tops[k] ? y_size : y_tops[k];
    };
    int64_t i = begin;
    for (; i + kLanes <= end; i += kLanes) {
      for (int k = 0; k < kLanes; ++k) add(i + k, k);
    }
    for (int k = 0; i < end; ++i, ++k) add(i, k);
    Extremes x{kInf, -kInf, 0.0};
    for (int k = 0; k < kLanes; ++k) {
      x.low = lows[k] < x.low ? lows[k] : x.low;
      x.top = tops[k] > x.top ? tops[k] : x.top;
      x.y_top = y_tops[k] > x.y_top ? y_tops[k] : x.y_top;
    }
    return x;
  }

  // sum_chunk's point for the sums of e = (h - y) - k (loss) and e^2 (grad).
  struct Shifted {
    const double* h;
    const double* y;
    double k;
    BIASFIT_HD LossGrad operator()(int64_t i) const {
      const double e = (h[i] - y[i]) - k;
      return {e, e * e};
    }
  };

 private:
  struct Moments {
    double count, min_h, max_h, max_abs_y, mean, m2;
    bool closable;
  };
  std::vector<Moments> chunks_;
  double max_h_;
};

}  // namespace cpu
}  // namespace biasfit
