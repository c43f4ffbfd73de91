// cpu/fit_many.h's fits of final_bias alone by plain SGD (no momentum, no
// weight decay) over fewer points than fit_fused would regroup, kFitLanes<T>
// fits at once: a vector lane per fit. Fits of fewer than kLanes points (the
// tutorial's three) hold their points in vectors (FewPoints), kLaneGroups
// groups of lanes side by side; larger ones read them from buffers
// (ManyPoints). Free of torch, written with GCC/Clang vector types, compiled
// for the best instruction set here (cpu/isa.h's on_best_isa).
//
// Every lane gives what fit_fused gives for its fit, bit for bit (the build
// never contracts a multiply and an add):
//   the points:  core/network.h's loss_grad_from_hidden, lane-wise;
//   the sums:    cpu/reduce.h's order: small_chunk_sum's tree over kN
//                points, or one chunk's 16 lanes and Lanes::tree;
//   the epoch's end: core/fit.h's decide for these options (stop on a
//                non-finite loss, or below tol; the step b + T(-lr) g; stop
//                on a non-finite bias; stop after the last epoch), and
//                cpu/fit_many.h's Track (the stall test).
// Some steps are written differently for the same bits, to spare the vector
// work of every epoch:
//   - small_chunk_sum's first 0.0 + p is left out: it only turns -0.0 into
//     +0.0, and neither r * r nor an active residual is ever -0.0 (z > 0
//     makes z - y nonzero or +0.0);
//   - the factor 2 of each point's gradient is taken once, after the sum:
//     doubling is exact, so it commutes with every rounding of the tree
//     (it could overflow only where r * r, and so the loss, is inf, and
//     the fit then stops before its step);
//   - maximize's sign goes into the lane's -lr: (-lr) (s g) = (s (-lr)) g
//     exactly for s = +-1;
//   - is_finite's v == v is implied by v - v == 0;
//   - double(loss) < tol is compared in T, against tol_in's T;
//   - a stall ends the fit at once: with every unit off the gradient is 0,
//     so the bias, the loss and the stall test's outcome never change again
//     (the fit would run out of epochs and report that stall).
// A lane whose fit ends (once a fit) leaves the vector code: the lane's
// results go out and the next fit takes the lane.
// tests/test_fit_many.py compares the results with fit_fused's, bit for bit.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "core/fit.h"
#include "core/many.h"
#include "core/network.h"
#include "cpu/isa.h"
#include "cpu/reduce.h"

namespace biasfit {
namespace cpu {

// Lanes a vector holds: 256 bits of T (8 floats or 4 doubles), the
// widest every x86-64 CPU the build dispatches to has (AVX2), and two
// vectors elsewhere; wider generic vectors cost more than they gain.
template <typename T>
constexpr int kFitLanes = 32 / sizeof(T);

template <typename T>
struct FitLaneTypes {
  typedef T V __attribute__((vector_size(kFitLanes<T> * sizeof(T))));
  typedef double D __attribute__((vector_size(kFitLanes<T> * sizeof(double))));
  // A lane mask (what comparing two V gives), and a lane counter, of V's
  // element size: masks and counters then take no conversions.
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> I;
  typedef I M __attribute__((vector_size(kFitLanes<T> * sizeof(T))));
  typedef std::make_unsigned_t<I> U __attribute__((vector_size(kFitLanes<T> * sizeof(T))));
};

// The most epochs a lane's fit may run: its countdown is V's element size.
template <typename T>
constexpr int64_t kLaneMostEpochs =
    std::numeric_limits<typename FitLaneTypes<T>::I>::max();

// One lane's fit, as the lanes' caller hands it over and gets it back.
template <typename T>
struct LaneFit {
  int64_t id;  // the caller's, handed back with the result
  const T* x;  // its kN points
  const T* y;
  Weights<T> w;
  T bias;
  T neg_lr;     // T(-lr)
  bool maximize;
  int64_t epochs;  // 0 to kLaneMostEpochs
  double tol;
};

template <typename T>
struct LaneResult {
  int64_t id;
  T bias, loss;
  int64_t epoch, status;
};

// The least T at or above tol: for any T loss, double(loss) < tol exactly
// when loss < tol_in<T>(tol), so the lanes compare in T (NaN stays NaN).
template <typename T>
T tol_in(double tol) {
  const T t = T(tol);
  return double(t) < tol ? std::nextafter(t, std::numeric_limits<T>::infinity()) : t;
}

// Whether any lane of m is set.
template <typename M>
BIASFIT_HD bool any_lane(M m) {
  int64_t q[sizeof(M) / sizeof(int64_t)];
  __builtin_memcpy(q, &m, sizeof(M));
  int64_t any = 0;
  for (unsigned i = 0; i < sizeof(M) / sizeof(int64_t); ++i) any |= q[i];
  return any != 0;
}

// Lane groups a thread runs side by side. One group's epoch waits on its
// own last step (the bias feeds the next epoch's points), so a single group
// leaves the core idle between its few instructions; independent groups fill
// that wait. benchmarks/fit_many_lanes.cpp measures the choice.
constexpr int kLaneGroups = 4;
// The same for fits of kLanes points or more (ManyPoints), whose epoch is
// long enough to keep the core busy alone.
constexpr int kManyLaneGroups = 1;

// Sets lane l of a vector (state kept in memory: the store is the cheap way).
template <typename Vec, typename E>
BIASFIT_HD void set_lane(Vec& v, int l, E value) {
  v[l] = value;
}

// One epoch's points of a lane group, summed: point i of every lane's fit,
// its loss r * r and active residual (relu'(z) r, before the gradient's
// factor 2) in double. core/network.h's relu and active_residual are written
// out: its x86 forms for these vector widths (__m512d's) need AVX-512.
template <typename T>
struct LanePoint {
  using V = typename FitLaneTypes<T>::V;
  using D = typename FitLaneTypes<T>::D;
  D loss, residual;

  BIASFIT_HD LanePoint(V h, V y, V b) {
    const V z = h + b;
    const V r = (z < V{} ? V{} : z) - y;
    const D rd = __builtin_convertvector(r, D);
    loss = rd * rd;
    residual = __builtin_convertvector(z <= V{} ? V{} : r, D);
  }
};

// The points of fits of kN < kLanes points (the tutorial's three), held in
// vectors: small_chunk_sum's lanes (point i in lane i) and tree.
template <int kN, int kG, typename T>
struct FewPoints {
  using V = typename FitLaneTypes<T>::V;
  using D = typename FitLaneTypes<T>::D;
  V h[kG][kN], y[kG][kN];

  // Lane l of group g takes fit f's hidden values and labels; returns the
  // largest hidden value (core/many.h's max_with_nan).
  BIASFIT_HD T load(int g, int l, const LaneFit<T>& f) {
    T m = -std::numeric_limits<T>::infinity();
    for (int i = 0; i < kN; ++i) {
      const T hi = hidden(f.x[i], f.w);
      set_lane(h[g][i], l, hi);
      set_lane(y[g][i], l, f.y[i]);
      m = max_with_nan(m, hi);
    }
    return m;
  }
  BIASFIT_HD void clear(int g, int l) {
    for (int i = 0; i < kN; ++i) set_lane(h[g][i], l, T(0)), set_lane(y[g][i], l, T(0));
  }
  BIASFIT_HD void sums(int g, V b, D& loss, D& residual) const {
    D l[kN], r[kN];
    for (int i = 0; i < kN; ++i) {
      const LanePoint<T> p(h[g][i], y[g][i], b);
      l[i] = p.loss, r[i] = p.residual;
    }
    int used = kN;
    for (int width = kLanes / 2; width > 0; width /= 2) {
      for (int k = 0; k + width < used; ++k) {
        l[k] += l[k + width];
        r[k] += r[k + width];
      }
      used = used < width ? used : width;
    }
    loss = l[0], residual = r[0];
  }
};

// The points of fits of n points, kLanes <= n < kChunk (one chunk), in
// buffers of [kG][n][kFitLanes<T>] (point i of every lane's fit side by side):
// cpu/reduce.h's chunk order, point i into lane i % kLanes, each lane from
// +0.0, then Lanes::tree. Lanes are summed two at a time, so that their
// accumulators stay in registers.
template <int kG, typename T>
struct ManyPoints {
  using V = typename FitLaneTypes<T>::V;
  using D = typename FitLaneTypes<T>::D;
  int64_t n;
  T* h;  // kG * n * kFitLanes<T> values each
  T* y;

  BIASFIT_HD const T* at(const T* buffer, int g, int64_t i) const {
    return buffer + (g * n + i) * kFitLanes<T>;
  }
  BIASFIT_HD static V load_vector(const T* p) {
    V v;
    __builtin_memcpy(&v, p, sizeof(V));
    return v;
  }
  BIASFIT_HD T load(int g, int l, const LaneFit<T>& f) {
    T m = -std::numeric_limits<T>::infinity();
    for (int64_t i = 0; i < n; ++i) {
      const T hi = hidden(f.x[i], f.w);
      h[(g * n + i) * kFitLanes<T> + l] = hi;
      y[(g * n + i) * kFitLanes<T> + l] = f.y[i];
      m = max_with_nan(m, hi);
    }
    return m;
  }
  BIASFIT_HD void clear(int g, int l) {
    for (int64_t i = 0; i < n; ++i) {
      h[(g * n + i) * kFitLanes<T> + l] = T(0);
      y[(g * n + i) * kFitLanes<T> + l] = T(0);
    }
  }
  // A lane group's accumulators by halves of 4 doubles: a vector of 8
  // doubles would be lowered to memory traffic when a loop carries it
  // (GCC, AVX2).
  typedef double D4 __attribute__((vector_size(4 * sizeof(double))));
  static constexpr int kHalves = sizeof(D) / sizeof(D4);  // 2 for float, 1 for double
  template <int kHalf>
  BIASFIT_HD static D4 half(V v) {
    const D d = __builtin_convertvector(v, D);
    if constexpr (kHalves == 1) {
      return d;
    } else if constexpr (kHalf == 0) {
      return __builtin_shufflevector(d, d, 0, 1, 2, 3);
    } else {
      return __builtin_shufflevector(d, d, 4, 5, 6, 7);
    }
  }
  BIASFIT_HD static D join(const D4* halves) {
    if constexpr (kHalves == 1) {
      return halves[0];
    } else {
      return __builtin_shufflevector(halves[0], halves[1], 0, 1, 2, 3, 4, 5, 6, 7);
    }
  }
  // Point i of the group's fits into the lanes' accumulators, by halves.
  BIASFIT_HD void add(int g, int64_t i, V b, D4* l, D4* r) const {
    const V z = load_vector(at(h, g, i)) + b;
    const V q = (z < V{} ? V{} : z) - load_vector(at(y, g, i));
    const V a = z <= V{} ? V{} : q;
    const D4 q0 = half<0>(q);
    l[0] += q0 * q0;
    r[0] += half<0>(a);
    if constexpr (kHalves == 2) {
      const D4 q1 = half<1>(q);
      l[1] += q1 * q1;
      r[1] += half<1>(a);
    }
  }
  BIASFIT_HD void sums(int g, V b, D& loss, D& residual) const {
    D l[kLanes], r[kLanes];
    for (int j = 0; j < kLanes; j += 2) {
      D4 l0[kHalves] = {}, l1[kHalves] = {}, r0[kHalves] = {}, r1[kHalves] = {};
      int64_t i = j;
      for (; i + 1 < n; i += kLanes) {
        add(g, i, b, l0, r0);
        add(g, i + 1, b, l1, r1);
      }
      if (i < n) add(g, i, b, l0, r0);
      l[j] = join(l0), l[j + 1] = join(l1);
      r[j] = join(r0), r[j + 1] = join(r1);
    }
    for (int width = kLanes / 2; width > 0; width /= 2) {
      for (int k = 0; k < width; ++k) {
        l[k] += l[k + width];
        r[k] += r[k + width];
      }
    }
    loss = l[0], residual = r[0];
  }
};

// Epochs of a lane runner between two calls of its stop (Ctrl-C).
constexpr int64_t kLanePollEpochs = 1024;

// Runs every fit that next() hands out (next(LaneFit&) -> false when none
// is left), kG groups of kFitLanes<T> lanes over `points` (FewPoints or
// ManyPoints), and hands each result to done(LaneResult). Every
// kLanePollEpochs epochs it calls stop(lane_epochs run since), and returns
// at once if that says so (cpu/many_stop.h: the fits left have no result).
// Inlined into each instruction set's caller.
template <int kG, typename T, typename Points, typename Next, typename Done,
          typename Stop>
BIASFIT_HD void run_fit_lanes(Points& points, const Next& next, const Done& done,
                              const Stop& stop) {
  using V = typename FitLaneTypes<T>::V;
  using D = typename FitLaneTypes<T>::D;
  using M = typename FitLaneTypes<T>::M;
  using U = typename FitLaneTypes<T>::U;
  constexpr int W = kFitLanes<T>;
  // The lanes' state, vectors where every epoch reads it.
  V b[kG], step[kG], max_h[kG], tol[kG];  // step: T(-lr), signed for maximize
  M active[kG];  // lanes with a fit
  U left[kG];    // the epochs left to each lane's fit, this one included
  // Per lane, read only when its fit ends.
  int64_t ids[kG][W], started[kG][W];
  int64_t t = 0;  // epochs run by the lanes so far
  int live = 0;   // lanes with a fit
  bool more = true;

  // Loads the next fit into lane l of group g, its first epoch the lanes'
  // epoch `first`, or empties the lane; a fit of 0 epochs ends at once
  // (exhausted, its loss NaN).
  auto load = [&](int g, int l, int64_t first) {
    LaneFit<T> f;
    while (more && (more = next(f))) {
      if (f.epochs == 0) {
        done(LaneResult<T>{f.id, f.bias, std::numeric_limits<T>::quiet_NaN(), 0,
                           kExhausted});
        continue;
      }
      set_lane(max_h[g], l, points.load(g, l, f));
      set_lane(b[g], l, f.bias);
      set_lane(step[g], l, f.maximize ? -f.neg_lr : f.neg_lr);
      set_lane(tol[g], l, tol_in<T>(f.tol));
      set_lane(active[g], l, -1);
      set_lane(left[g], l, f.epochs);
      ids[g][l] = f.id;
      started[g][l] = first;
      ++live;
      return;
    }
    // An empty lane computes on zeros (never on a left-over NaN or
    // subnormal, which could slow the vector) and reports nothing.
    points.clear(g, l);
    set_lane(b[g], l, T(0));
    set_lane(max_h[g], l, T(0));
    set_lane(active[g], l, 0);
    set_lane(left[g], l, 0);
  };
  for (int g = 0; g < kG; ++g) {
    for (int l = 0; l < W; ++l) load(g, l, 0);
  }

  const V inf = V{} + std::numeric_limits<T>::infinity();
  while (live > 0) {
    if (t % kLanePollEpochs == kLanePollEpochs - 1 && stop(kLanePollEpochs * kG * W)) return;
    V stepped[kG], loss_t[kG];
    M go[kG];  // the lanes whose fit just steps this epoch
    M event{};
    for (int g = 0; g < kG; ++g) {
      D loss, residual;
      points.sums(g, b[g], loss, residual);
      // core/fit.h's decide, lane-wise: a lane just steps if its loss is
      // finite and not below tol, its step finite, some unit on (no
      // stall) and this is not its fit's last epoch; any other lane with
      // a fit ends here, and the lane-by-lane code below says how.
      const V l_t = __builtin_convertvector(loss, V);
      const V s = b[g] + step[g] * __builtin_convertvector(2.0 * residual, V);
      const M keep = (l_t >= tol[g]) & (l_t < inf) & (s - s == V{}) &
                     ~(max_h[g] + b[g] <= V{}) & (left[g] != 1);
      go[g] = active[g] & keep;
      event |= active[g] & ~keep;
      left[g] -= 1;
      loss_t[g] = l_t;
      stepped[g] = s;
    }
    if (__builtin_expect(!any_lane(event), 1)) {
      for (int g = 0; g < kG; ++g) b[g] = go[g] ? stepped[g] : b[g];
      ++t;
      continue;
    }
    // Some lanes' fits end at this epoch: those lanes one by one, in
    // decide's order of tests. A lane refilled here starts at the next
    // epoch, t + 1.
    for (int g = 0; g < kG; ++g) {
      const V before = b[g];
      b[g] = go[g] ? stepped[g] : b[g];
      const M ends = active[g] & ~go[g];
      if (!any_lane(ends)) continue;
      for (int l = 0; l < W; ++l) {
        if (!ends[l]) continue;
        const T loss = loss_t[g][l], after = stepped[g][l];
        const int64_t epoch = t - started[g][l];
        LaneResult<T> r{ids[g][l], after, loss, epoch, kExhausted};
        if (!is_finite(loss)) {
          r.bias = before[l], r.status = kLossNonFinite;
        } else if (loss < tol[g][l]) {
          r.bias = before[l], r.status = kConverged;
        } else if (!is_finite(after)) {
          r.status = kBiasNonFinite;
        } else if (max_h[g][l] + before[l] <= T(0)) {
          r.status = kStalled;
        } else {
          r.epoch = epoch + 1;  // ran out of epochs
        }
        done(r);
        --live;
        load(g, l, t + 1);
      }
    }
    ++t;
  }
}

}  // namespace cpu
}  // namespace biasfit
