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
#include <limits>
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

// One fit's checks: every kEvery / n epochs (none without a stop).
class FitStopPoll {
 public:
  FitStopPoll() = default;
  FitStopPoll(ManyStop* stop, int64_t n)
      : stop_(stop),
        caller_(stop != nullptr && stop->on_caller()),
        every_(stop == nullptr ? std::numeric_limits<int64_t>::max()
                               : std::max<int64_t>(1, ManyStop::kEvery /
                                                          std::max<int64_t>(n, 1))) {}

  // Called once an epoch: whether the fit is to stop now.
  bool due() {
    if (++count_ < every_) return false;
    count_ = 0;
    return stop_->check(caller_);
  }

  ManyStop* stop() const { return stop_; }
  bool caller() const { return caller_; }

  // As cpu/trainer.h's Interrupt, for a fit run through cpu::train (whose own
  // InterruptPoll calls it every ~100 ms). context: the FitStopPoll.
  static bool asked(void* context) {
    const FitStopPoll& p = *static_cast<const FitStopPoll*>(context);
    return p.stop_->check(p.caller_);
  }

 private:
  ManyStop* stop_ = nullptr;
  bool caller_ = false;
  int64_t every_ = std::numeric_limits<int64_t>::max();
  int64_t count_ = 0;
};

}  // namespace cpu
}  // namespace biasfit
