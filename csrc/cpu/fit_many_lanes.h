// cpu/fit_many.h's fits of final_bias alone by plain SGD (no momentum, no
// weight decay) over fewer points than a chunk's lanes (the tutorial's
// three), kFitLanes fits at once: a vector lane per fit, kLaneGroups groups
// of lanes side by side. Free of torch, written with GCC/Clang vector types,
// compiled for the best instruction set here (cpu/isa.h's on_best_isa).
//
// Every lane gives what fit_bias_small gives for its fit, bit for bit (the
// build never contracts a multiply and an add):
//   the points:  core/network.h's loss_grad_from_hidden, lane-wise;
//   the sums:    cpu/reduce.h's small_chunk_sum, the same tree over kN
//                points;
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
//     doubling is exact, so it commutes with every rounding of the tree;
//   - maximize's sign goes into the lane's -lr: (-lr) (s g) = (s (-lr)) g
//     exactly for s = +-1;
//   - is_finite's v == v is implied by v - v == 0;
//   - double(loss) < tol is compared in T, against tol_in's T;
//   - a stall ends the fit at once: with every unit off the gradient is 0,
//     so the bias, the loss and the stall test's outcome never change again
//     (the fit would run out of epochs and report that stall).
// A lane whose fit ends (rare: once a fit) leaves the vector code: the
// lane's results go out and the next fit takes the lane.
// tests/test_fit_many.py compares the results with fit_fused's, bit for bit.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "core/fit.h"
#include "core/network.h"
#include "cpu/isa.h"
#include "cpu/reduce.h"

namespace biasfit {
namespace cpu {

constexpr int kFitLanes = 8;

// The status of a fit that stalled (biasfit/stall.py): beside core/fit.h's
// FitStatus values; biasfit/many.py reads it as STALLED.
constexpr int64_t kStalled = 7;

template <typename T>
struct FitLaneTypes {
  typedef T V __attribute__((vector_size(kFitLanes * sizeof(T))));
  typedef double D __attribute__((vector_size(kFitLanes * sizeof(double))));
  // A lane mask (what comparing two V gives), and a lane counter, of V's
  // element size: masks and counters then take no conversions.
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> I;
  typedef I M __attribute__((vector_size(kFitLanes * sizeof(T))));
  typedef std::make_unsigned_t<I> U __attribute__((vector_size(kFitLanes * sizeof(T))));
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

// Runs every fit that next() hands out (next(LaneFit&) -> false when none
// is left) and hands each result to done(LaneResult). kN < kLanes points a
// fit, kG groups of kFitLanes lanes. Inlined into each instruction set's
// caller.
template <int kN, int kG, typename T, typename Next, typename Done>
BIASFIT_HD void run_fit_lanes(const Next& next, const Done& done) {
  using V = typename FitLaneTypes<T>::V;
  using D = typename FitLaneTypes<T>::D;
  using M = typename FitLaneTypes<T>::M;
  using U = typename FitLaneTypes<T>::U;
  constexpr int W = kFitLanes;
  // The lanes' state, vectors where every epoch reads it.
  V h[kG][kN], y[kG][kN];
  V b[kG], step[kG], max_h[kG], tol[kG];  // step: T(-lr), signed for maximize
  M active[kG];  // lanes with a fit
  U left[kG];    // the epochs left to each lane's fit, this one included
  // Per lane, read only when its fit ends or stalls.
  int64_t ids[kG][W], started[kG][W];
  int64_t t = 0;  // epochs run by the lanes so far
  int live = 0;   // lanes with a fit
  bool more = true;

  auto set = [](auto& v, int lane, auto value) { v[lane] = value; };
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
      T m = -std::numeric_limits<T>::infinity();
      for (int i = 0; i < kN; ++i) {
        const T hi = hidden(f.x[i], f.w);
        set(h[g][i], l, hi);
        set(y[g][i], l, f.y[i]);
        m = (hi > m || hi != hi) ? hi : m;
      }
      set(max_h[g], l, m);
      set(b[g], l, f.bias);
      set(step[g], l, f.maximize ? -f.neg_lr : f.neg_lr);
      set(tol[g], l, tol_in<T>(f.tol));
      set(active[g], l, -1);
      set(left[g], l, f.epochs);
      ids[g][l] = f.id;
      started[g][l] = first;
      ++live;
      return;
    }
    // An empty lane computes on zeros (never on a left-over NaN or
    // subnormal, which could slow the vector) and reports nothing.
    for (int i = 0; i < kN; ++i) set(h[g][i], l, T(0)), set(y[g][i], l, T(0));
    set(b[g], l, T(0));
    set(max_h[g], l, T(0));
    set(active[g], l, 0);
    set(left[g], l, 0);
  };
  for (int g = 0; g < kG; ++g) {
    for (int l = 0; l < W; ++l) load(g, l, 0);
  }

  const V inf = V{} + std::numeric_limits<T>::infinity();
  while (live > 0) {
    V stepped[kG], loss_t[kG];
    M go[kG];  // the lanes whose fit just steps this epoch
    M event{};
    for (int g = 0; g < kG; ++g) {
      // The points, and small_chunk_sum's lanes and tree over them.
      D loss[kN], grad[kN];
      for (int i = 0; i < kN; ++i) {
        const V z = h[g][i] + b[g];
        // core/network.h's relu and active_residual, written out: its x86
        // forms for this vector width (__m512d's) need AVX-512.
        const V r = (z < V{} ? V{} : z) - y[g][i];
        const D rd = __builtin_convertvector(r, D);
        loss[i] = rd * rd;
        grad[i] = __builtin_convertvector(z <= V{} ? V{} : r, D);
      }
      int used = kN;
      for (int width = kLanes / 2; width > 0; width /= 2) {
        for (int k = 0; k + width < used; ++k) {
          loss[k] += loss[k + width];
          grad[k] += grad[k + width];
        }
        used = used < width ? used : width;
      }
      // core/fit.h's decide, lane-wise: a lane just steps if its loss is
      // finite and not below tol, its step finite, some unit on (no
      // stall) and this is not its fit's last epoch; any other lane with
      // a fit ends here, and the lane-by-lane code below says how.
      const V l_t = __builtin_convertvector(loss[0], V);
      const V s = b[g] + step[g] * __builtin_convertvector(2.0 * grad[0], V);
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
