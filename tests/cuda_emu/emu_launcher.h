// csrc/cuda/launch.h's Launcher for the emulation (cuda_emu.h): what the
// host sequences ask of the CUDA runtime, done on the CPU. The "stream" runs
// each launch to the end before the next (CUDA's stream order, trivially);
// a copy lands at once but its "event" reports ready only after
// `event_delay` queries, so the status poll's not-yet-landed path runs too;
// `capturing` plays a stream under graph capture (no poll).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <vector>

#include "cuda_emu.h"

namespace cuda_emu {

class EmuLauncher {
 public:
  int event_delay = 0;
  bool capturing = false;
  // What the host sequence did, for the tests.
  int64_t launches = 0, polls = 0;

  EmuLauncher() = default;
  EmuLauncher(const EmuLauncher&) = delete;
  EmuLauncher& operator=(const EmuLauncher&) = delete;
  ~EmuLauncher() {
    for (void* p : scratch_) std::free(p);
  }

  template <typename... Params, typename... Args>
  void launch(void (*kernel)(Params...), int grid, int block,
              const Args&... args) {
    ++launches;
    // The arguments converted to the kernel's parameters once, as a launch
    // does; each thread's call then copies them, as its parameters.
    const std::tuple<std::decay_t<Params>...> params(args...);
    const Error err =
        cuda_emu::launch(dim3(unsigned(grid)), dim3(unsigned(block)),
                         [&] { std::apply(kernel, params); });
    // What STD_CUDA_KERNEL_LAUNCH_CHECK makes of cudaGetLastError().
    if (err != kSuccess) {
      fail("kernel launch failed: error %d (grid %d, block %d)", int(err), grid,
           block);
    }
  }

  // cudaMalloc'd memory is not cleared: all ones (NaN as float or double)
  // makes a read before a write show up in the sums.
  void* scratch(size_t bytes) {
    const size_t rounded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
    std::memset(p, 0xff, rounded == 0 ? 64 : rounded);
    scratch_.push_back(p);
    return p;
  }

  bool poll_start() { return !capturing; }
  void poll_copy(const int64_t* status) {
    ++polls;
    host_ = *status;
    queries_left_ = event_delay;
  }
  bool poll_landed() {
    if (queries_left_ == 0) return true;
    --queries_left_;
    return false;
  }
  int64_t poll_value() const { return host_; }

 private:
  std::vector<void*> scratch_;
  int64_t host_ = -1;
  int queries_left_ = 0;
};

}  // namespace cuda_emu
