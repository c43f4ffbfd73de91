// The CPU fused trainer: every epoch of a fit in one call, free of torch.
// torch_ops/cpu_ops.cpp runs it as the fit_sgd op; direct/direct.cpp calls it from Python with
// raw pointers, which is what keeps the tutorial's 3-point fit fast.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <vector>

#include "cpu/active_set.h"
#include "core/fit.h"
#include "cpu/kernels.h"
#include "cpu/closed_form.h"
#include "cpu/parallel.h"

namespace biasfit {
namespace cpu {

// How a fit reads its points each epoch. Only final_bias trains, so
// hidden(x) is the same every epoch and can be
//   kStream:     computed again every epoch from x (no memory, more work);
//   kHiddenOnce: computed once into a buffer the epochs read (a pass and an
//                allocation first: on a fresh buffer the page faults alone
//                cost ~1.7 ns a point on the 2-core EPYC VM, 5-6 epochs);
//   kRegroup:    computed once and the points regrouped by it
//                (cpu/active_set.h), so that epochs skip the points whose
//                output units are off, a span of 128 at a time;
//   kClosed:     float64 only: hidden once, and a chunk whose output
//                units are all on summed in closed form from its moments
//                (cpu/closed_form.h), a few operations instead of a pass.
// Every plan sums the same points in the same chunks, lanes and trees, so
// kStream and kHiddenOnce give the same bits; kRegroup sums the regrouped
// order, and kClosed agrees with them within 1e-13. choose_plan picks the
// cheapest by the cost model below; BIASFIT_TRAINER_PLAN=stream|once|
// regroup|closed forces one (to measure each).
enum class Plan { kStream, kHiddenOnce, kRegroup, kClosed };

// Costs per point in units of one kHiddenOnce epoch, measured by forcing
// each plan with BIASFIT_TRAINER_PLAN, interleaved, on bench_peers.py's
// data sets, in three tiers of the data's size (inputs and labels):
//   in L2 (up to kL2Bytes; 1e5 points): a streamed epoch costs ~1.6 hidden-once ones (the
//   hidden layer's arithmetic shows: 2.0 for float64 on a 2-core Xeon), the
//   buffer ~2 (Zen 4, float32, and the Xeon);
//   past L2, up to 32 MB (1e6 points): both kinds of epoch wait on L3 and
//   differ by ~15%; the buffer costs ~3.5 (2-core Intel Xeon, float32 and
//   float64: streamed 10-epoch fits 5-7% faster, hidden-once 100-epoch
//   ones 5% faster);
//   past that (1e7 points, 80 MB): a streamed epoch runs as fast as a
//   hidden-once one (both at the read pass's speed); the buffer costs ~6
//   epochs, mostly first-touch page faults (Zen 4; 1.5 us a 4 KiB page on
//   the Xeon VM).
// Regrouping, on top of the buffer, costs ~15-25 epochs (2-core Xeon VM,
// tutorial data, 1 thread, a C++ harness; float64 / float32): in L2 (1e5
// points) 22 / 19, in L3 (1e6) 19 / 24, in memory (1e7 float32) 14, and 25
// on a Zen 4 past L2 (kept for memory: the Zen's was not measured again).
// It is a counting sort, a scatter of a few ns a point whatever the tier,
// where an epoch's cost follows the tier. So a regrouped fit of 100 epochs
// with half its units off runs 1.2-3x faster than a hidden-once one (1e3
// to 1e6 points), one of 50 epochs 1.3-1.9x (1e4 to 1e6 points; as fast at
// 1e3 and 1e5), one of 30 epochs at 1e5 float64 points 1.6x slower: the
// model, which counts only the units off at the start, is the cautious one.
// kClosed's set-up is the hidden buffer's and a pass for the moments (about
// an epoch), and an epoch of closed chunks a few operations each, counted
// as nothing. (A chunk that stops closing, as the bias turns some of its
// units off or the fit nears an exact one, costs a hidden-once epoch again:
// the model does not foresee that.)
struct PlanCosts {
  double stream_epoch;   // a streamed epoch
  double hidden_setup;   // allocating and filling the hidden buffer
  double regroup_setup;  // the regrouping on top of that
};
constexpr PlanCosts kCachedCosts{1.6, 2.0, 22.0};
constexpr PlanCosts kL3Costs{1.15, 3.5, 24.0};
constexpr PlanCosts kMemoryCosts{1.0, 6.0, 25.0};
// The tiers' bounds on the data's bytes: 2 MiB, the Xeon's L2 (Zen 4 and
// 5 have 1 MiB), and 32 MiB. Fixed, not read from the machine: a plan
// that regroups sums in another order, so a fit's last bits would depend
// on the machine's cache sizes.
constexpr int64_t kL2Bytes = int64_t(2) << 20;
constexpr int64_t kL3Bytes = int64_t(32) << 20;

inline const PlanCosts& plan_costs(int64_t data_bytes) {
  if (data_bytes <= kL2Bytes) return kCachedCosts;
  return data_bytes <= kL3Bytes ? kL3Costs : kMemoryCosts;
}

// Regrouping needs spans to skip (cpu/active_set.h), and its counting sort
// zeroes and sums kBuckets counters a piece (one a thread): about
// kRegroupFixedPoints points' worth of work on one thread (5 us), whatever
// the size.
constexpr int64_t kRegroupMinPoints = 2 * kSpan;
constexpr double kRegroupFixedPoints = 16384;

// The share of points whose output unit is off at `bias`, from up to
// `most` evenly spaced points (point j * n / samples; a sixteenth of the
// points below 16384, but at least 64): what regrouping can skip, at least
// at the start; none off: what kClosed can close. A few us for 1024 points:
// as much as a whole 1000-point fit of 10 epochs, hence the smaller sample
// of small data.
template <typename T>
double off_share(const T* x, int64_t n, const Weights<T>& w, T bias,
                 int64_t most = 1024) {
  if (n <= 0) return 0.0;  // (the ops reject empty data before this)
  const int64_t samples =
      std::min({n, most, std::max<int64_t>(64, n / 16)});
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

// `closable`: every sampled point's output unit is on at the start; only
// float64 points (16 bytes a point) close.
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
  const PlanCosts& c = plan_costs(n * bytes);
  const double e = double(epochs);
  const double stream = e * c.stream_epoch;
  const double once = c.hidden_setup + e;
  // Regrouped, an epoch skips the off points but the spans that hold on ones.
  const int64_t spans = num_spans(n);
  const double skipped = std::floor(off * double(spans)) / double(spans);
  const double regroup =
      n >= kRegroupMinPoints
          ? c.hidden_setup + c.regroup_setup + kRegroupFixedPoints / double(n) +
                e * (1 - skipped)
          : once + 1;
  const double closed =
      closable && bytes == kDoubleBytes ? c.hidden_setup + 1 : stream + 1;
  if (closed < stream && closed < once && closed < regroup) return Plan::kClosed;
  if (stream <= once && stream <= regroup) return Plan::kStream;
  return once <= regroup ? Plan::kHiddenOnce : Plan::kRegroup;
}

// Each epoch's loss and the bias it was taken at, grown as the fit goes: a
// budget of 10^18 epochs that converges after 34 allocates for 34.
template <typename T>
struct History {
  std::vector<T> losses, biases;
  // The first epoch whose gradient sum was exactly 0, or -1: every output
  // unit off gives 0, so a fit can only have stalled (train.py) from there.
  int64_t first_zero_grad = -1;
  // Where a plan knows the fit's largest hidden value: a zero gradient
  // with some unit on (fl(max_h + bias) > 0) cannot be a stall and is not
  // counted. Closed chunks give exact zeros at a fit's optimum, and the
  // stall test is a pass over the inputs in Python.
  double max_h = -std::numeric_limits<double>::infinity();

  void make_room(int64_t epoch, int64_t epochs) {
    if (epoch < int64_t(losses.size())) return;
    const int64_t grown = std::max<int64_t>(64, 2 * int64_t(losses.size()));
    losses.resize(std::min(epochs, grown));
    biases.resize(losses.size());
  }
};

// Asked every ~100 ms whether to stop (Ctrl-C in Python); null: never.
struct Interrupt {
  bool (*requested)(void* context) = nullptr;
  void* context = nullptr;
};

// Calls an Interrupt about every 100 ms without reading the clock every
// epoch: an epoch over n points costs about n nanoseconds or more, so the
// clock is read once per ~64k points' worth of epochs.
class InterruptPoll {
 public:
  InterruptPoll(Interrupt interrupt, int64_t n)
      : interrupt_(interrupt),
        every_(std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(n, 1))),
        last_(std::chrono::steady_clock::now()) {}

  bool due() {
    if (interrupt_.requested == nullptr || ++count_ < every_) return false;
    count_ = 0;
    const auto now = std::chrono::steady_clock::now();
    if (now - last_ < std::chrono::milliseconds(100)) return false;
    last_ = now;
    return interrupt_.requested(interrupt_.context);
  }

 private:
  Interrupt interrupt_;
  int64_t every_, count_ = 0;
  std::chrono::steady_clock::time_point last_;
};

// The end of one epoch, run by one thread: record, stop test, step.
template <typename T>
void end_epoch(FitState<T>& state, const LossGrad& sums, const FitOptions& opt,
               History<T>& history, InterruptPoll& poll) {
  history.make_room(state.epoch, opt.epochs);
  if (sums.grad == 0 && history.first_zero_grad < 0 &&
      !(history.max_h + double(state.bias) > 0)) {
    history.first_zero_grad = state.epoch;
  }
  state.end_epoch(sums, opt, history.losses.data(), history.biases.data());
  if (state.status == kRunning && poll.due()) state.status = kInterrupted;
}

// The trainer's epochs, all in one parallel region (run_team): the calling
// thread combines the chunk sums and steps (it alone may run Python's
// signal handlers for an Interrupt), and two barriers an epoch replace a
// fork and join. The chunks that must be summed are split evenly among the
// threads; the rest come from known(c, bias), an optional LossGrad (a
// regrouped set's off chunks, or kClosed's on ones). The chunks and the tree that
// combines them are deterministic_sum's, so the sums are the same bits for
// any number of threads.
// sum(point, begin, end) sums a chunk that known left: sum_chunk, or a
// regrouped set's resumed sum.
template <typename T, typename Point, typename Known, typename Sum>
void run_epochs(Point point, int64_t n, const Known& known, const Sum& sum,
                FitState<T>& state, const FitOptions& opt, int threads,
                History<T>& history, InterruptPoll& poll) {
  const int64_t chunks = num_chunks(n);
  if (chunks == 1) {
    while (state.status == kRunning) {
      point.bias = state.bias;
      const std::optional<LossGrad> sums = known(0, point.bias);
      end_epoch(state, sums ? *sums : sum(point, 0, n), opt, history, poll);
    }
    return;
  }
  std::vector<LossGrad> partials(chunks);
  run_team(threads_for(chunks, threads), [&](const Team& team) {
    Point point_here = point;  // each thread its own copy (firstprivate)
    Point& point = point_here;
    const int64_t t = team.thread(), nt = team.size();
    // state is written only by the master thread between two barriers.
    while (state.status == kRunning) {
      point.bias = state.bias;
      int64_t todo = 0;
      for (int64_t c = 0; c < chunks; ++c) todo += !known(c, point.bias);
      const int64_t mine_from = todo * t / nt, mine_to = todo * (t + 1) / nt;
      for (int64_t c = 0, j = 0; c < chunks; ++c) {
        if (const std::optional<LossGrad> sums = known(c, point.bias)) {
          if (c % nt == t) partials[c] = *sums;
        } else {
          if (j >= mine_from && j < mine_to) {
            const int64_t begin = c * kChunk;
            partials[c] = sum(point, begin, std::min(begin + kChunk, n));
          }
          ++j;
        }
      }
      team.barrier();
      if (team.is_main()) end_epoch(state, pairwise_total(partials), opt, history, poll);
      team.barrier();
    }
  });
}

// Buffers the epochs read, aligned to cache lines (train's scratch).
constexpr std::align_val_t kCacheLine{64};
struct CacheLineDelete {
  void operator()(void* p) const { ::operator delete[](p, kCacheLine); }
};

// A whole fit over x[0..n), y[0..n) (contiguous) from `bias`, reading the
// points as choose_plan decides. The hidden buffer is kept in the data's
// dtype, exactly as the per-epoch evaluation rounds it.
template <typename T>
FitState<T> train(const T* x, const T* y, int64_t n, const Weights<T>& w,
                  T bias, const FitOptions& opt, int threads,
                  History<T>& history, Interrupt interrupt = {}) {
  FitState<T> state = FitState<T>::start(bias, opt.epochs);
  InterruptPoll poll(interrupt, n);
  // Only a fit that would regroup were every unit off needs the share (a
  // sample of 1024 points costs a few us, as much as a 1000-point fit of 10
  // epochs); float64 data that might close, 64 points' worth.
  const bool can_regroup =
      choose_plan(n, 2 * sizeof(T), opt.epochs, 1.0) == Plan::kRegroup;
  const double off = can_regroup ? off_share(x, n, w, bias) : 0.0;
  constexpr bool kDouble = std::is_same_v<T, double>;
  const bool closable =
      kDouble && (can_regroup ? off : off_share(x, n, w, bias, 64)) == 0.0;
  const Plan plan = choose_plan(n, 2 * sizeof(T), opt.epochs, off, closable);
  auto nothing_known = [](int64_t, T) { return std::optional<LossGrad>(); };
  auto whole = [](const auto& point, int64_t begin, int64_t end) {
    return sum_chunk(point, begin, end);
  };
  if (plan == Plan::kStream) {
    run_epochs(PointLoss<T>{x, y, w, T(0)}, n, nothing_known, whole, state, opt,
               threads, history, poll);
    return state;
  }

  // The fit's scratch in one block: hidden(x), then for a regrouped fit
  // its h and y. One block of one size is what malloc hands back to the
  // next fit of that size without fresh pages; three blocks freed together
  // get trimmed, and a first touch of a page costs ~1.5 us (~0.9 ms of
  // page faults a fit at 1e5 float64 points, a third of a regrouped fit).
  // Not value-initialized: hidden_chunk writes the first n elements (and
  // gives each chunk's smallest h: where every unit of a chunk is on, its
  // loop skips the relu and the mask, cpu/kernels.h), build the other 2n.
  // Each array starts on a cache line. malloc promises 16 bytes, and
  // whether a block lands on a line depends on the heap's state (a fresh
  // mmap'd block never does); off a line, every vector load of an epoch
  // spans two. With the labels aligned, as torch allocates them, an epoch
  // of 1e5 float64 points from L2 takes 0.26-0.28 ns a point instead of
  // 0.28-0.30 (2-core Xeon, C++ harness, 5 interleaved pairs).
  const bool regroup = plan == Plan::kRegroup;
  const int64_t stride = (n + kLanes - 1) / kLanes * kLanes;  // 64-byte multiples
  const std::unique_ptr<T[], CacheLineDelete> scratch(static_cast<T*>(
      ::operator new[](sizeof(T) * (regroup ? 3 * stride : n), kCacheLine)));
  T* hidden_x = scratch.get();
  std::vector<T> chunk_min_h(num_chunks(n));
  parallel_items(num_chunks(n), threads, [&](int64_t c) {
    const int64_t begin = c * kChunk, end = std::min(begin + kChunk, n);
    chunk_min_h[c] = hidden_chunk(x, hidden_x, begin, end, w);
  });
  PointLossFromHidden<T> point{hidden_x, y, T(0)};
  std::optional<ActiveSet<T>> set;
  if (regroup) {
    set = ActiveSet<T>::build(point.h, point.y, n, threads, hidden_x + stride,
                              hidden_x + 2 * stride);
    point.h = set->h;
    point.y = set->y;
    // The chunks hold other points now: their smallest h is the set's
    // (NaN flagged; an h of +inf, unlike in hidden_chunk, is not, and
    // needs not be: relu(inf + bias) is inf with the relu or without).
    chunk_min_h = set->min_h;
  }
  point.chunk_min_h = chunk_min_h.data();
  if constexpr (kDouble) {
    if (plan == Plan::kClosed) {
      const OnChunks on = OnChunks::build(point.h, point.y, n, threads);
      history.max_h = on.max_h();
      run_epochs(point, n, [&](int64_t c, T b) { return on.sums(c, b); },
                 whole, state, opt, threads, history, poll);
      return state;
    }
  }
  if (!set) {
    run_epochs(point, n, nothing_known, whole, state, opt, threads, history, poll);
    return state;
  }
  run_epochs(point, n,
             [&](int64_t c, T b) {
               const LossGrad* off_sums = set->known_sums(c, b);
               return off_sums ? std::optional<LossGrad>(*off_sums) : std::nullopt;
             },
             [&](const PointLossFromHidden<T>& p, int64_t begin, int64_t end) {
               const auto at = set->resume(begin, end, p.bias);
               return sum_chunk(p, at.from, end, at.loss_lanes);
             },
             state, opt, threads, history, poll);
  return state;
}

}  // namespace cpu
}  // namespace biasfit
