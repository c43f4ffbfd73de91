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
#include "cpu/plan.h"

namespace biasfit {
namespace cpu {

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
  // The epochs recorded so far, as an Interrupt sees them (a progress report).
  int64_t evaluated = 0;

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
  history.evaluated = state.epoch;
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

// A whole fit over x[0..n), y[0..n) (contiguous) from `bias`, reading the
// points as plan_for (cpu/plan.h) decides. The hidden buffer is kept in the
// data's dtype, exactly as the per-epoch evaluation rounds it.
template <typename T>
FitState<T> train(const T* x, const T* y, int64_t n, const Weights<T>& w,
                  T bias, const FitOptions& opt, int threads,
                  History<T>& history, Interrupt interrupt = {}) {
  FitState<T> state = FitState<T>::start(bias, opt.epochs);
  InterruptPoll poll(interrupt, n);
  const Plan plan = plan_for(x, n, w, bias, opt.epochs);
  constexpr bool kDouble = std::is_same_v<T, double>;
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
  // get trimmed, and first touches of pages cost a third of a regrouped fit
  // (benchmarks/results/audit/NOTES.md).
  // Not value-initialized: hidden_chunk writes the first n elements (and
  // gives each chunk's smallest h: where every unit of a chunk is on, its
  // loop skips the relu and the mask, cpu/kernels.h), build the other 2n.
  const bool regroup = plan == Plan::kRegroup;
  const int64_t stride = (n + kLanes - 1) / kLanes * kLanes;  // whole steps
  const std::unique_ptr<T[]> scratch(new T[regroup ? 3 * stride : n]);
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
