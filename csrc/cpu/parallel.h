// The CPU code's threads: all it uses from OpenMP, in one place, with a
// std::thread fallback for compilers without it (Apple's clang; setup.py
// builds without -fopenmp when the compiler refuses it, or BIASFIT_OPENMP=0).
//
//   threads_for(count, threads)     how many threads a loop over count items uses
//   parallel_items(count, threads, fn)  fn(i) for every i, split among threads
//   run_team(threads, body)         body(team) on each thread of a team, whose
//                                   team.barrier() waits for all of them
//
// Which thread runs which piece never changes a result: every sum here is
// cut into fixed chunks and combined in a fixed order (cpu/reduce.h), so the
// OpenMP build, the fallback and any thread count give the same bits.
#pragma once

#include <algorithm>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#else
#include <atomic>
#include <system_error>
#include <thread>
#include <vector>
#endif

namespace biasfit {

#ifdef _OPENMP

// Inside a parallel region already (OpenMP's: ours, or torch's).
inline bool in_parallel_region() { return omp_in_parallel(); }

// One thread of run_team's team.
class Team {
 public:
  Team(int thread, int size) : thread_(thread), size_(size) {}
  int thread() const { return thread_; }
  int size() const { return size_; }
  bool is_main() const { return thread_ == 0; }  // omp master: the caller
  void barrier() const {
#pragma omp barrier
  }

 private:
  int thread_, size_;
};

template <typename Body>
void run_team(int threads, const Body& body) {
#pragma omp parallel num_threads(threads)
  {
    const Team team(omp_get_thread_num(), omp_get_num_threads());
    body(team);
  }
}

#else  // no OpenMP: std::thread

namespace parallel_detail {
inline thread_local bool in_team = false;

// A barrier for a team that is busy between waits (an epoch's chunks): it
// spins, yielding, instead of sleeping, as OpenMP's does at first. size is
// set before any thread waits.
struct SpinBarrier {
  int size = 1;
  std::atomic<int> arrived{0};
  std::atomic<unsigned> generation{0};

  void wait() {
    const unsigned gen = generation.load(std::memory_order_acquire);
    if (arrived.fetch_add(1, std::memory_order_acq_rel) + 1 == size) {
      arrived.store(0, std::memory_order_relaxed);
      generation.fetch_add(1, std::memory_order_acq_rel);
      return;
    }
    while (generation.load(std::memory_order_acquire) == gen) {
      std::this_thread::yield();
    }
  }
};
}  // namespace parallel_detail

inline bool in_parallel_region() { return parallel_detail::in_team; }

class Team {
 public:
  Team(int thread, int size, parallel_detail::SpinBarrier* barrier)
      : thread_(thread), size_(size), barrier_(barrier) {}
  int thread() const { return thread_; }
  int size() const { return size_; }
  bool is_main() const { return thread_ == 0; }
  void barrier() const {
    if (barrier_ != nullptr) barrier_->wait();
  }

 private:
  int thread_, size_;
  parallel_detail::SpinBarrier* barrier_;
};

// The caller is thread 0. The team is as large as the threads that could be
// started (OpenMP too may give fewer than asked): the helpers wait until
// that size is known.
template <typename Body>
void run_team(int threads, const Body& body) {
  if (threads <= 1) {
    body(Team(0, 1, nullptr));
    return;
  }
  parallel_detail::SpinBarrier barrier;
  std::atomic<int> size{0};
  std::vector<std::thread> helpers;
  auto helper = [&](int t) {
    int n;
    while ((n = size.load(std::memory_order_acquire)) == 0) std::this_thread::yield();
    parallel_detail::in_team = true;
    body(Team(t, n, &barrier));
  };
  try {
    for (int t = 1; t < threads; ++t) helpers.emplace_back(helper, t);
  } catch (const std::system_error&) {  // fewer threads than asked
  }
  const int n = int(helpers.size()) + 1;
  barrier.size = n;
  size.store(n, std::memory_order_release);
  const bool was_in_team = parallel_detail::in_team;
  parallel_detail::in_team = n > 1;
  body(Team(0, n, &barrier));
  parallel_detail::in_team = was_in_team;
  for (std::thread& h : helpers) h.join();
}

#endif  // _OPENMP

// How many threads a parallel loop over `count` items uses: none extra
// inside another parallel region, never more than there are items.
inline int threads_for(int64_t count, int threads) {
  if (in_parallel_region() || threads < 1) return 1;
  return int(std::min<int64_t>(threads, count < 1 ? 1 : count));
}

// fn(i) for every i in [0, count), on up to `threads` threads, each a
// contiguous block (OpenMP's static schedule). Only independent items:
// which thread runs an item never changes a result.
template <typename Fn>
void parallel_items(int64_t count, int threads, const Fn& fn) {
  const int team = threads_for(count, threads);
  if (team == 1) {  // no parallel region: for small data it costs more than the work
    for (int64_t i = 0; i < count; ++i) fn(i);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel for num_threads(team) schedule(static)
  for (int64_t i = 0; i < count; ++i) fn(i);
#else
  run_team(team, [&](const Team& t) {
    const int64_t from = count * t.thread() / t.size();
    const int64_t to = count * (t.thread() + 1) / t.size();
    for (int64_t i = from; i < to; ++i) fn(i);
  });
#endif
}

}  // namespace biasfit
