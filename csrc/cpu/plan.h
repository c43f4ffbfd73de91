// How the CPU trainer (cpu/trainer.h) reads its points each epoch, and the
// cost model that picks the way: every tuned constant of the trainer's plans
// sits here.
//
// Only final_bias trains, so hidden(x) is the same every epoch and can be
//   kStream:     computed again every epoch from x (no memory, more work);
//   kHiddenOnce: computed once into a buffer the epochs read (a pass, an
//                allocation and its page faults first);
//   kRegroup:    computed once and the points regrouped by it
//                (cpu/active_set.h), so that epochs skip the points whose
//                output units are off, a span of kSpan at a time;
//   kClosed:     float64 only: hidden once, and a chunk whose output units
//                are all on summed in closed form from its moments
//                (cpu/closed_form.h), a few operations instead of a pass.
// kStream and kHiddenOnce sum the same points in the same chunks, lanes and
// trees: the same bits, fused_loss's at each epoch's bias. kRegroup sums the
// regrouped order: fused_loss's bits over that order. kClosed's sums agree
// with them within 1e-13 but not bit for bit, so the cost model picks it only
// where kAutoClosed says so (off: a fit's epoch losses are fused_loss's bits
// in every plan it picks). BIASFIT_TRAINER_PLAN=stream|once|regroup|closed
// forces one: to measure each, and to opt in to kClosed.
//
// How the constants were measured: each plan forced, interleaved with the
// cost model's pick, on the cells of benchmarks/bench_peers.py's grid (data
// sets tutorial and dense, 1e3-1e6 points, 10-1000 epochs, float32 and
// float64, 1 and 2 threads). benchmarks/audit_paths.py runs that measurement;
// its results, and the machines' figures these values came from, are in
// benchmarks/results/audit/ (NOTES.md). The values are fixed, not read from
// the machine: regrouping sums in another order, so a fit's last bits would
// otherwise depend on the machine it ran on.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>

#include "core/network.h"
#include "cpu/active_set.h"

namespace biasfit {
namespace cpu {

enum class Plan { kStream, kHiddenOnce, kRegroup, kClosed };

// Costs per point in units of one kHiddenOnce epoch, in three tiers of the
// data's bytes (inputs and labels): in L2, a streamed epoch costs more than
// a buffered one (the hidden layer's arithmetic shows); past L2 both wait on
// L3; past L3 both run at the read pass's speed. The buffer costs a pass, an
// allocation and first-touch page faults, more the larger it is. Regrouping,
// on top of the buffer, is a counting sort: a scatter of a few ns a point
// whatever the tier, where an epoch's cost follows the tier. kClosed's set-up
// is the buffer's and a pass for the moments (about an epoch), and an epoch of
// closed chunks is counted as nothing (a chunk that stops closing costs a
// hidden-once epoch again: the model does not foresee that).
struct PlanCosts {
  double stream_epoch;   // a streamed epoch
  double hidden_setup;   // allocating and filling the hidden buffer
  double regroup_setup;  // the regrouping on top of that
};
constexpr PlanCosts kCachedCosts{1.6, 2.0, 22.0};
constexpr PlanCosts kL3Costs{1.15, 3.5, 24.0};
constexpr PlanCosts kMemoryCosts{1.0, 6.0, 25.0};
// The tiers' bounds on the data's bytes: 2 MiB (a large L2) and 32 MiB.
constexpr int64_t kL2Bytes = int64_t(2) << 20;
constexpr int64_t kL3Bytes = int64_t(32) << 20;

inline const PlanCosts& plan_costs(int64_t data_bytes) {
  if (data_bytes <= kL2Bytes) return kCachedCosts;
  return data_bytes <= kL3Bytes ? kL3Costs : kMemoryCosts;
}

// Regrouping needs spans to skip (cpu/active_set.h), and its counting sort
// zeroes and sums kBuckets counters a piece (one a thread): about
// kRegroupFixedPoints points' worth of work on one thread, whatever the size.
constexpr int64_t kRegroupMinPoints = 2 * kSpan;
constexpr double kRegroupFixedPoints = 16384;

// Whether the cost model may pick kClosed for float64 data whose units are
// all on. Off: kClosed runs only when forced, and every fit's losses are
// fused_loss's bits. On, it made the dense float64 cells of the grid several
// times faster (benchmarks/results/audit/audit.md, the no_closed row).
constexpr bool kAutoClosed = false;

// off_share's samples: at most kOffSamples, a sixteenth of the points below
// 16 * kOffSamples, but at least kMinOffSamples (a sample of 1024 points costs
// as much as a 1000-point fit of 10 epochs, hence the smaller sample of small
// data); kClosableSamples where only kClosed is in question.
constexpr int64_t kOffSamples = 1024;
constexpr int64_t kMinOffSamples = 64;
constexpr int64_t kClosableSamples = 64;

// The share of points whose output unit is off at `bias`, from up to `most`
// evenly spaced points (point j * n / samples): what regrouping can skip, at
// least at the start; none off: what kClosed can close.
template <typename T>
double off_share(const T* x, int64_t n, const Weights<T>& w, T bias,
                 int64_t most = kOffSamples) {
  if (n <= 0) return 0.0;  // (the ops reject empty data before this)
  const int64_t samples =
      std::min({n, most, std::max<int64_t>(kMinOffSamples, n / 16)});
  // j * n / samples without a division a sample: q whole steps and a
  // remainder carried.
  const int64_t q = n / samples, rem = n % samples;
  int64_t off = 0;
  for (int64_t j = 0, at = 0, carry = 0; j < samples; ++j) {
    off += !(add_rn(hidden(x[at], w), bias) > T(0));
    at += q;
    carry += rem;
    if (carry >= samples) {
      carry -= samples;
      ++at;
    }
  }
  return double(off) / double(samples);
}

// The cheapest plan for n points of `bytes` bytes (input and label) over
// `epochs` epochs with a share `off` of output units off at the start;
// `closable`: every sampled point's unit is on (only float64 points close).
inline Plan choose_plan(int64_t n, int64_t bytes, int64_t epochs, double off,
                        bool closable = false) {
  constexpr int64_t kDoubleBytes = 2 * int64_t(sizeof(double));
  if (const char* pick = std::getenv("BIASFIT_TRAINER_PLAN")) {
    if (std::strcmp(pick, "stream") == 0) return Plan::kStream;
    if (std::strcmp(pick, "once") == 0) return Plan::kHiddenOnce;
    if (std::strcmp(pick, "regroup") == 0 && n >= kRegroupMinPoints) {
      return Plan::kRegroup;
    }
    if (std::strcmp(pick, "closed") == 0 && bytes == kDoubleBytes) {
      return Plan::kClosed;
    }
  }
  constexpr double kNever = std::numeric_limits<double>::infinity();
  const PlanCosts& c = plan_costs(n * bytes);
  const double e = double(epochs);
  double stream = e * c.stream_epoch;
  double once = c.hidden_setup + e;
  // Regrouped, an epoch skips the off points but the spans that hold on ones.
  const int64_t spans = num_spans(n);
  const double skipped = std::floor(off * double(spans)) / double(spans);
  double regroup =
      n >= kRegroupMinPoints
          ? c.hidden_setup + c.regroup_setup + kRegroupFixedPoints / double(n) +
                e * (1 - skipped)
          : kNever;
  double closed = kAutoClosed && closable && bytes == kDoubleBytes
                      ? c.hidden_setup + 1
                      : kNever;
  // A build without a plan (benchmarks/audit_paths.py measures each so).
#ifdef BIASFIT_NO_CLOSED
  closed = kNever;
#endif
#ifdef BIASFIT_NO_REGROUP
  regroup = kNever;
#endif
#ifdef BIASFIT_NO_STREAM
  stream = kNever;
#endif
#ifdef BIASFIT_NO_HIDDEN_ONCE
  once = kNever;
#endif
  if (closed < stream && closed < once && closed < regroup) return Plan::kClosed;
  if (stream <= once && stream <= regroup) return Plan::kStream;
  return once <= regroup ? Plan::kHiddenOnce : Plan::kRegroup;
}

// The plan cpu::train runs for a fit of x[0..n) from `bias`. Only a fit that
// would regroup were every unit off needs the share; where kAutoClosed,
// float64 data that might close kClosableSamples points' worth.
template <typename T>
Plan plan_for(const T* x, int64_t n, const Weights<T>& w, T bias,
              int64_t epochs) {
  const int64_t bytes = 2 * int64_t(sizeof(T));
  const bool can_regroup = choose_plan(n, bytes, epochs, 1.0) == Plan::kRegroup;
  const double off = can_regroup ? off_share(x, n, w, bias) : 0.0;
  const bool closable =
      kAutoClosed && std::is_same_v<T, double> &&
      (can_regroup ? off : off_share(x, n, w, bias, kClosableSamples)) == 0.0;
  return choose_plan(n, bytes, epochs, off, closable);
}

// The plan's name, as BIASFIT_TRAINER_PLAN spells it.
inline const char* plan_name(Plan plan) {
  switch (plan) {
    case Plan::kStream: return "stream";
    case Plan::kHiddenOnce: return "once";
    case Plan::kClosed: return "closed";
    default: return "regroup";
  }
}

}  // namespace cpu
}  // namespace biasfit
