// cpu/fit_many.h's fits of final_bias alone by plain SGD (no momentum, no
// weight decay) over fewer points than a chunk's lanes (the tutorial's
// three), kFitLanes fits at once: a vector lane per fit. Free of torch, written
// with GCC/Clang vector types, compiled for the best instruction set here
// (cpu/isa.h's on_best_isa).
//
// Every lane does what fit_bias_small does for its fit, in the same order
// and rounding (the build never contracts a multiply and an add):
//   the points:  core/network.h's loss_grad_from_hidden, lane-wise;
//   the sums:    cpu/reduce.h's small_chunk_sum (each point's lane starts
//                from 0.0 + its value, then the same tree over kN points);
//   the epoch's end: core/fit.h's decide for these options (stop on a
//                non-finite loss, or below tol; the step b + T(-lr) g; stop
//                on a non-finite bias; stop after the last epoch), and
//                cpu/fit_many.h's Track (the stall test).
// A lane whose fit ends (rare: once a fit) leaves the vector code: the
// lane's results go out and the next fit takes the lane.
// tests/test_fit_many.py compares the results with fit_fused's, bit for bit.
#pragma once

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
  typedef int64_t M __attribute__((vector_size(kFitLanes * sizeof(int64_t))));
  // A mask of V's element size, for a select between two V.
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> I;
  typedef I MV __attribute__((vector_size(kFitLanes * sizeof(T))));
};

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
  int64_t epochs;
  double tol;
};

template <typename T>
struct LaneResult {
  int64_t id;
  T bias, loss;
  int64_t epoch, status;
};

// Whether any lane of m is set, by halving (no lane-by-lane extraction).
template <typename M>
BIASFIT_HD bool any_lane(M m) {
  typedef int64_t M4 __attribute__((vector_size(4 * sizeof(int64_t))));
  typedef int64_t M2 __attribute__((vector_size(2 * sizeof(int64_t))));
  const M4 m4 = __builtin_shufflevector(m, m, 0, 1, 2, 3) |
                __builtin_shufflevector(m, m, 4, 5, 6, 7);
  const M2 m2 = __builtin_shufflevector(m4, m4, 0, 1) |
                __builtin_shufflevector(m4, m4, 2, 3);
  return (m2[0] | m2[1]) != 0;
}

// Runs every fit that next() hands out (next(LaneFit&) -> false when none
// is left) and hands each result to done(LaneResult). kN < kLanes points a
// fit. Inlined into each instruction set's caller.
template <int kN, typename T, typename Next, typename Done>
BIASFIT_HD void run_fit_lanes(const Next& next, const Done& done) {
  using V = typename FitLaneTypes<T>::V;
  using D = typename FitLaneTypes<T>::D;
  using M = typename FitLaneTypes<T>::M;
  using MV = typename FitLaneTypes<T>::MV;
  constexpr int W = kFitLanes;
  // The lanes' state, vectors where every epoch reads it.
  V h[kN], y[kN];
  V b{}, neg_lr{}, max_h{}, sign{};
  D tol{};
  M open{};     // lanes with a fit whose stall is still to be found
  M active{};   // lanes with a fit
  for (int i = 0; i < kN; ++i) h[i] = y[i] = V{};
  // Per lane, read only when its fit ends or stalls.
  int64_t ids[W] = {}, started[W] = {}, epochs[W] = {}, stall_epoch[W];
  T stall_bias[W] = {}, stall_loss[W] = {}, last_before[W] = {};
  int64_t t = 0;          // epochs run by the lanes so far
  int64_t next_end = std::numeric_limits<int64_t>::max();
  bool more = true;

  auto set = [](auto& v, int lane, auto value) { v[lane] = value; };
  // Loads the next fit into `lane`, its first epoch the lanes' epoch
  // `first`, or empties the lane; a fit of 0 epochs ends at once
  // (exhausted, its loss NaN).
  auto load = [&](int lane, int64_t first) {
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
        set(h[i], lane, hi);
        set(y[i], lane, f.y[i]);
        m = (hi > m || hi != hi) ? hi : m;
      }
      set(max_h, lane, m);
      set(b, lane, f.bias);
      set(neg_lr, lane, f.neg_lr);
      set(sign, lane, f.maximize ? T(-1) : T(1));
      set(tol, lane, f.tol);
      set(open, lane, int64_t(-1));
      set(active, lane, int64_t(-1));
      ids[lane] = f.id;
      started[lane] = first;
      epochs[lane] = f.epochs;
      stall_epoch[lane] = -1;
      return;
    }
    set(active, lane, int64_t(0));
    set(open, lane, int64_t(0));
    epochs[lane] = 0;
  };
  auto end_of = [&]() {
    int64_t e = std::numeric_limits<int64_t>::max();
    for (int l = 0; l < W; ++l) {
      if (active[l] && started[l] + epochs[l] < e) e = started[l] + epochs[l];
    }
    return e;
  };
  for (int l = 0; l < W; ++l) load(l, 0);
  next_end = end_of();

  static_assert(kFitLanes == 8, "any_lane halves 8 lanes");
  while (any_lane(active)) {
    // The points, and small_chunk_sum's lanes and tree over them.
    D loss[kN], grad[kN];
    for (int i = 0; i < kN; ++i) {
      const V z = h[i] + b;
      // core/network.h's relu, written out: its x86 forms for this
      // vector width (__m512d's) need AVX-512.
      const V r = (z < V{} ? V{} : z) - y[i];
      const D rd = __builtin_convertvector(r, D);
      loss[i] = D{} + rd * rd;
      const V active_r = z > V{} ? r : V{};
      grad[i] = D{} + 2.0 * __builtin_convertvector(active_r, D);
    }
    int used = kN;
    for (int width = kLanes / 2; width > 0; width /= 2) {
      for (int k = 0; k + width < used; ++k) {
        loss[k] += loss[k + width];
        grad[k] += grad[k + width];
      }
      used = used < width ? used : width;
    }
    // core/fit.h's decide, lane-wise.
    const V loss_t = __builtin_convertvector(loss[0], V);
    const M finite = __builtin_convertvector(
        (loss_t == loss_t) & (loss_t - loss_t == V{}), M);
    const M converged = __builtin_convertvector(loss_t, D) < tol;
    const M stops = active & (~finite | converged);
    const V grad_t = sign * __builtin_convertvector(grad[0], V);
    const V stepped = b + neg_lr * grad_t;
    const M steps = active & ~stops;
    const M bad = steps & __builtin_convertvector(
                              ~((stepped == stepped) & (stepped - stepped == V{})), M);
    const M stalls = steps & ~bad & open &
                     __builtin_convertvector((max_h + b <= V{}) & (stepped <= b), M);
    const bool event = t + 1 == next_end || any_lane(stops | bad | stalls);
    if (__builtin_expect(!event, 1)) {
      b = __builtin_convertvector(steps, MV) != 0 ? stepped : b;
      ++t;
      continue;
    }
    // Some lane's fit ends or stalls at this epoch: lane by lane. A lane
    // refilled here starts at the next epoch, t + 1.
    for (int l = 0; l < W; ++l) {
      if (!active[l]) continue;
      const int64_t epoch = t - started[l];
      if (stops[l] || bad[l]) {
        const int64_t status = !finite[l] ? kLossNonFinite
                               : stops[l] ? kConverged : kBiasNonFinite;
        done(LaneResult<T>{ids[l], stops[l] ? b[l] : stepped[l], loss_t[l], epoch,
                           status});
        load(l, t + 1);
        continue;
      }
      if (stalls[l]) {
        stall_epoch[l] = epoch;
        stall_bias[l] = stepped[l];
        stall_loss[l] = loss_t[l];
        set(open, l, int64_t(0));
      }
      last_before[l] = b[l];
      set(b, l, stepped[l]);
      if (epoch + 1 == epochs[l]) {
        const bool stalled = stall_epoch[l] >= 0 && stepped[l] <= last_before[l];
        done(stalled ? LaneResult<T>{ids[l], stall_bias[l], stall_loss[l], stall_epoch[l],
                                     kStalled}
                     : LaneResult<T>{ids[l], stepped[l], loss_t[l], epochs[l], kExhausted});
        load(l, t + 1);
      }
    }
    ++t;
    next_end = end_of();
  }
}

}  // namespace cpu
}  // namespace biasfit
