// The CPU fused trainer: every epoch of a fit in one call, free of torch.
// cpu.cpp runs it as the fit_sgd op; direct.cpp calls it from Python with
// raw pointers, which is what keeps the tutorial's 3-point fit fast.
#pragma once

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include "active_set_cpu.h"
#include "fit.h"
#include "kernels_cpu.h"

namespace biasfit {
namespace cpu {

// BIASFIT_TRAINER_REGROUP=0 makes the trainer sum every chunk of the data in
// its own order each epoch: to measure the regrouping both ways.
inline bool regrouping_enabled() {
  const char* pick = std::getenv("BIASFIT_TRAINER_REGROUP");
  return pick == nullptr || std::strcmp(pick, "0") != 0;
}

// When the trainer regroups points (active_set_cpu.h): large enough data that
// an epoch has several chunks to skip, and epochs enough to repay the
// regrouping, whose scatter costs 15-25 full epochs (2-core EPYC, 1e6 and
// 1e7 points; fits of 20 epochs were as fast or faster without it).
constexpr int64_t kRegroupMinChunks = 4;
constexpr int64_t kRegroupMinEpochs = 32;

// Each epoch's loss and the bias it was taken at, grown as the fit goes: a
// budget of 10^18 epochs that converges after 34 allocates for 34.
template <typename T>
struct History {
  std::vector<T> losses, biases;

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
  state.end_epoch(sums, opt, history.losses.data(), history.biases.data());
  if (state.status == kRunning && poll.due()) state.status = kInterrupted;
}

// The trainer's epochs, all in one OpenMP parallel region: the calling
// thread combines the chunk sums and steps (it alone may run Python's
// signal handlers for an Interrupt), and two barriers an epoch replace a
// fork and join. The chunks that must be summed are split evenly among the
// threads; the rest come from `set` (if any). The chunks and the tree that
// combines them are deterministic_sum's, so the sums are the same bits for
// any number of threads.
template <typename T>
void run_epochs(PointLossFromHidden<T> point, int64_t n,
                const ActiveSet<T>* set, FitState<T>& state,
                const FitOptions& opt, int threads, History<T>& history,
                InterruptPoll& poll) {
  const int64_t chunks = num_chunks(n);
  if (chunks == 1) {
    while (state.status == kRunning) {
      point.bias = state.bias;
      end_epoch(state, sum_chunk(point, 0, n), opt, history, poll);
    }
    return;
  }
  auto known = [&](int64_t c, T bias) -> const LossGrad* {
    return set != nullptr ? set->known_sums(c, bias) : nullptr;
  };
  std::vector<LossGrad> partials(chunks);
#pragma omp parallel num_threads(threads_for(chunks, threads)) firstprivate(point)
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    // state is written only by the master thread between two barriers.
    while (state.status == kRunning) {
      point.bias = state.bias;
      int64_t todo = 0;
      for (int64_t c = 0; c < chunks; ++c) todo += known(c, point.bias) == nullptr;
      const int64_t mine_from = todo * t / nt, mine_to = todo * (t + 1) / nt;
      for (int64_t c = 0, j = 0; c < chunks; ++c) {
        if (const LossGrad* sums = known(c, point.bias)) {
          if (c % nt == t) partials[c] = *sums;
        } else {
          if (j >= mine_from && j < mine_to) {
            const int64_t begin = c * kChunk;
            partials[c] = sum_chunk(point, begin, std::min(begin + kChunk, n));
          }
          ++j;
        }
      }
#pragma omp barrier
#pragma omp master
      end_epoch(state, pairwise_total(partials), opt, history, poll);
#pragma omp barrier
    }
  }
}

// A whole fit over x[0..n), y[0..n) (contiguous) from `bias`. The frozen
// weights make hidden(x[i]) the same every epoch: computed once here, each
// epoch reads hidden and labels (as many bytes as inputs and labels) and
// does a third of the arithmetic. hidden is kept in the data's dtype,
// exactly as the per-epoch evaluation would round it.
template <typename T>
FitState<T> train(const T* x, const T* y, int64_t n, const Weights<T>& w,
                  T bias, const FitOptions& opt, int threads,
                  History<T>& history, Interrupt interrupt = {}) {
  std::vector<T> hidden_x(n);
  map_points(x, hidden_x.data(), n, threads,
             [&](T xi) { return hidden(xi, w); });
  PointLossFromHidden<T> point{hidden_x.data(), y, T(0)};
  std::optional<ActiveSet<T>> set;
  if (num_chunks(n) >= kRegroupMinChunks && opt.epochs >= kRegroupMinEpochs &&
      regrouping_enabled()) {
    set = ActiveSet<T>::build(point.h, point.y, n, point,
                              sum_chunk<PointLossFromHidden<T>>, threads);
    point.h = set->h.data();
    point.y = set->y.data();
    std::vector<T>().swap(hidden_x);  // regrouped: the original order is done
  }
  FitState<T> state = FitState<T>::start(bias, opt.epochs);
  InterruptPoll poll(interrupt, n);
  run_epochs(point, n, set ? &*set : nullptr, state, opt, threads, history,
             poll);
  return state;
}

}  // namespace cpu
}  // namespace biasfit
