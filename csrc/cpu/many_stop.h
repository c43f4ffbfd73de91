// Ctrl-C in fit_many (cpu/fit_many.h): one stop shared by the team's threads.
//
// Only the thread that called fit_many may run Python's signal handlers (the
// Interrupt of cpu/trainer.h); it asks about every 100 ms of its work and
// raises the shared flag, which every thread reads between fits and every
// ~64k points' worth of epochs within a fit: a relaxed load, never a lock.
// A fit that sees the flag stops with status kInterrupted; one not yet begun
// does not run.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>

#include "cpu/trainer.h"

namespace biasfit {
namespace cpu {

class ManyStop {
 public:
  explicit ManyStop(Interrupt interrupt)
      : interrupt_(interrupt),
        caller_(std::this_thread::get_id()),
        last_(std::chrono::steady_clock::now()) {}

  // Whether the fits are to stop: any thread, any time.
  bool requested() const { return stopped_.load(std::memory_order_relaxed); }

  // Whether this thread is the calling thread (the one that asks Python).
  bool on_caller() const { return std::this_thread::get_id() == caller_; }

  // After some work on this thread: the calling thread asks the Interrupt
  // if 100 ms have passed since it last did; then requested().
  bool check(bool caller) {
    if (caller && interrupt_.requested != nullptr && !requested()) {
      const auto now = std::chrono::steady_clock::now();
      if (now - last_ >= std::chrono::milliseconds(100)) {
        last_ = now;
        if (interrupt_.requested(interrupt_.context)) {
          stopped_.store(true, std::memory_order_relaxed);
        }
      }
    }
    return requested();
  }

  // The lane path's (and the team loop's) call: `points_epochs` more work
  // done on this thread; the calling thread reads the clock once per ~64k
  // of them (an epoch over n points costs about n nanoseconds or more).
  bool after(bool caller, int64_t points_epochs) {
    if (!caller) return requested();
    caller_work_ += points_epochs;
    if (caller_work_ < kEvery) return requested();
    caller_work_ = 0;
    return check(true);
  }

  // Points' worth of epochs between two checks within a fit.
  static constexpr int64_t kEvery = int64_t(1) << 16;

 private:
  Interrupt interrupt_;
  std::thread::id caller_;
  std::chrono::steady_clock::time_point last_;  // the caller's alone
  int64_t caller_work_ = 0;                     // likewise
  std::atomic<bool> stopped_{false};
};

// One fit's view of the stop: whether it has one, and asks from the
// calling thread.
class FitStopPoll {
 public:
  FitStopPoll() = default;
  explicit FitStopPoll(ManyStop* stop)
      : stop_(stop), caller_(stop != nullptr && stop->on_caller()) {}

  bool active() const { return stop_ != nullptr; }
  bool caller() const { return caller_; }
  ManyStop* stop() const { return stop_; }
  bool check() { return stop_->check(caller_); }

  // As cpu/trainer.h's Interrupt, for a fit run through cpu::train (whose own
  // InterruptPoll calls it every ~100 ms). context: the FitStopPoll.
  static bool asked(void* context) {
    return static_cast<FitStopPoll*>(context)->check();
  }

 private:
  ManyStop* stop_ = nullptr;
  bool caller_ = false;
};

// A fit's epochs, epoch(options) each, until it stops: a fit that may run
// past kEvery points' worth of epochs runs in spans of that many, with
// options.epochs cut to the span's end and the stop checked between spans.
// A span's end is an epoch count the fit then runs on from, as if its
// options had never been cut (core/fit.h's kExhausted at epochs, nothing
// else): so no epoch pays for a check, and the bits are the same.
template <typename State, typename Options, typename Epoch>
void run_epochs(State& state, const Options& o, int64_t n, FitStopPoll& poll,
                const Epoch& epoch) {
  const int64_t points = std::max<int64_t>(n, 1);
  if (!poll.active() || o.epochs <= ManyStop::kEvery / points) {
    while (state.status == kRunning) epoch(o);
    return;
  }
  const int64_t span = std::max<int64_t>(1, ManyStop::kEvery / points);
  Options cut = o;
  while (state.status == kRunning) {
    cut.epochs = std::min(o.epochs, state.epoch + span);
    while (state.status == kRunning) epoch(cut);
    if (state.status == kExhausted && state.epoch < o.epochs) {
      state.status = poll.check() ? kInterrupted : kRunning;
    }
  }
}

}  // namespace cpu
}  // namespace biasfit
