// Runs CUDA device code on the CPU, for the tests: the subset of CUDA that
// biasfit's kernels use (csrc/cuda/reduce.cuh, csrc/cuda/kernels.cuh), so
// that g++ compiles those very headers and tests/cuda_emu/harness.cpp runs
// them. Not shipped.
//
// The model: a launch runs its blocks one after another, in an order that
// CUDA_EMU_BLOCK_ORDER picks (shuffle by default: code may not depend on
// it); a block runs as blockDim.x real threads of a reusable pool, so
// ThreadSanitizer sees the races a GPU could have inside a block. Strict
// where CUDA says "undefined": it aborts with a message when
//  - live threads wait at __syncthreads() calls at different places,
//  - a __shfl_down_sync lane's mask leaves it out, names a lane that has
//    exited or waits at another shuffle, or it reads a lane outside the mask,
//  - every live thread of a block waits and none can go on (deadlock), or
//    the block makes no progress for CUDA_EMU_WATCHDOG_S seconds (default
//    120: a thread spinning on memory no one will write).
// Exited threads drop out of __syncthreads(), as on current GPUs.
//
// What it cannot show: races between blocks (they never overlap), missing
// memory fences (__threadfence is a compiler barrier here), the GPU's own
// float behaviour, and speed.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <semaphore>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// Each pool thread sets these before it runs its share of a block.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
// One block runs at a time, so a function's static storage is its block's
// shared memory; the barrier that ends a block orders it for the next one.
#define __shared__ static

#define __syncthreads() ::cuda_emu::syncthreads(__FILE__, __LINE__)
#define __shfl_down_sync(mask, var, delta) \
  ::cuda_emu::shfl_down((mask), (var), (delta), __FILE__, __LINE__)
// Blocks never overlap here, so a fence has nothing to order; it must still
// stop the compiler from moving memory accesses across it.
#define __threadfence() asm volatile("" ::: "memory")

template <typename T>
inline T __ldcg(const T* p) {
  return *p;
}

inline unsigned atomicAdd(unsigned* address, unsigned value) {
  return __atomic_fetch_add(address, value, __ATOMIC_SEQ_CST);
}

namespace cuda_emu {

constexpr int kWarpSize = 32;
constexpr unsigned kMaxThreads = 1024;

[[noreturn]] inline void fail(const char* format, ...) {
  std::fflush(stdout);
  std::fprintf(stderr, "cuda_emu: ");
  va_list args;
  va_start(args, format);
  std::vfprintf(stderr, format, args);
  va_end(args);
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
  std::abort();
}

struct Site {
  const char* file = nullptr;
  int line = 0;
  bool operator==(const Site& o) const {
    return line == o.line && file != nullptr && o.file != nullptr &&
           std::strcmp(file, o.file) == 0;
  }
};

enum class Wait { kRunning, kBarrier, kShuffle, kExited };

struct Warp {
  unsigned arrived = 0, mask = 0;
  Site site;
  uint64_t generation = 0;
  uint64_t in[kWarpSize] = {}, out[kWarpSize] = {};
  unsigned delta[kWarpSize] = {};
  std::condition_variable cv;
};

// The synchronization state of the block that runs now; every access under m.
struct Block {
  std::mutex m;
  std::condition_variable barrier_cv;
  std::unique_ptr<Warp[]> warps{new Warp[kMaxThreads / kWarpSize]};
  Wait wait[kMaxThreads];
  Site where[kMaxThreads];
  int threads = 0, live = 0, running = 0;
  int barrier_arrived = 0;
  Site barrier_site;
  uint64_t barrier_generation = 0;
  uint64_t progress = 0;  // for the watchdog
  bool active = false;
  unsigned index = 0;  // blockIdx.x of the running block

  void reset(int n) {
    threads = live = running = n;
    barrier_arrived = 0;
    for (int t = 0; t < n; ++t) wait[t] = Wait::kRunning;
    for (unsigned w = 0; w < kMaxThreads / kWarpSize; ++w) warps[w].arrived = 0;
  }

  // Where each waiting thread is, grouped by place: for deadlock reports.
  std::string describe() const {
    const auto waits = [&](int t) {
      return wait[t] == Wait::kBarrier || wait[t] == Wait::kShuffle;
    };
    const auto same = [&](int t, int u) {
      return wait[u] == wait[t] && (!waits(t) || where[u] == where[t]);
    };
    std::string out;
    for (int t = 0; t < threads;) {
      int u = t + 1;
      while (u < threads && same(t, u)) ++u;
      char line[512];
      if (waits(t)) {
        std::snprintf(line, sizeof line, "\n  threads %d-%d: waiting at %s %s:%d",
                      t, u - 1,
                      wait[t] == Wait::kBarrier ? "__syncthreads()" : "__shfl_down_sync",
                      where[t].file, where[t].line);
      } else {
        std::snprintf(line, sizeof line, "\n  threads %d-%d: %s", t, u - 1,
                      wait[t] == Wait::kExited ? "exited" : "running");
      }
      out += line;
      t = u;
    }
    return out;
  }

  // Called whenever a thread stops running: if none runs, none ever will.
  void check_deadlock() {
    if (running == 0 && live > 0) {
      fail("deadlock in block %u: every live thread waits and none can go on:%s",
           blockIdx.x, describe().c_str());
    }
  }

  void release_barrier() {
    for (int t = 0; t < threads; ++t) {
      if (wait[t] == Wait::kBarrier) wait[t] = Wait::kRunning;
    }
    running += barrier_arrived;
    barrier_arrived = 0;
    ++barrier_generation;
    barrier_cv.notify_all();
  }
};

inline Block& block() {
  static Block b;
  return b;
}

inline void syncthreads(const char* file, int line) {
  Block& b = block();
  const int t = int(threadIdx.x);
  const Site site{file, line};
  std::unique_lock<std::mutex> lock(b.m);
  if (b.barrier_arrived == 0) {
    b.barrier_site = site;
  } else if (!(b.barrier_site == site)) {
    fail("divergent __syncthreads() in block %u: thread %d waits at %s:%d while "
         "other threads wait at %s:%d",
         blockIdx.x, t, file, line, b.barrier_site.file, b.barrier_site.line);
  }
  b.wait[t] = Wait::kBarrier;
  b.where[t] = site;
  ++b.barrier_arrived;
  --b.running;
  ++b.progress;
  if (b.barrier_arrived == b.live) {
    b.release_barrier();
    return;
  }
  b.check_deadlock();
  const uint64_t generation = b.barrier_generation;
  b.barrier_cv.wait(lock, [&] { return b.barrier_generation != generation; });
}

inline uint64_t shuffle_value(const Warp& w, int lane, int warp_base, int threads) {
  const unsigned src = unsigned(lane) + w.delta[lane];
  if (src >= unsigned(kWarpSize)) return w.in[lane];  // past the warp: own value
  if (!(w.mask >> src & 1u) || warp_base + int(src) >= threads) {
    fail("__shfl_down_sync at %s:%d: lane %d reads lane %u, outside the mask 0x%08x",
         w.site.file, w.site.line, lane, src, w.mask);
  }
  return w.in[src];
}

template <typename T>
T shfl_down(unsigned mask, T var, unsigned delta, const char* file, int line) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8,
                "__shfl_down_sync takes a value of up to 8 bytes");
  Block& b = block();
  const int t = int(threadIdx.x), lane = t % kWarpSize, base = t - lane;
  Warp& w = b.warps[t / kWarpSize];
  const Site site{file, line};
  std::unique_lock<std::mutex> lock(b.m);
  if (!(mask >> lane & 1u)) {
    fail("__shfl_down_sync at %s:%d: thread %d (lane %d) calls it with mask "
         "0x%08x, which leaves it out", file, line, t, lane, mask);
  }
  for (int l = 0; l < kWarpSize; ++l) {
    if (!(mask >> l & 1u)) continue;
    if (base + l >= b.threads) {
      fail("__shfl_down_sync at %s:%d: mask 0x%08x names lane %d, which the "
           "block (%d threads) does not have", file, line, mask, l, b.threads);
    }
    if (b.wait[base + l] == Wait::kExited) {
      fail("__shfl_down_sync at %s:%d: lane %d waits for lane %d (mask 0x%08x), "
           "which has exited", file, line, lane, l, mask);
    }
  }
  if (w.arrived == 0) {
    w.mask = mask;
    w.site = site;
  } else if (w.mask != mask || !(w.site == site)) {
    fail("__shfl_down_sync: lanes of warp %d of block %u meet at different "
         "shuffles: lane %d at %s:%d (mask 0x%08x), others at %s:%d (mask 0x%08x)",
         t / kWarpSize, blockIdx.x, lane, file, line, mask, w.site.file,
         w.site.line, w.mask);
  }
  w.in[lane] = 0;
  std::memcpy(&w.in[lane], &var, sizeof(T));
  w.delta[lane] = delta;
  w.arrived |= 1u << lane;
  b.wait[t] = Wait::kShuffle;
  b.where[t] = site;
  --b.running;
  ++b.progress;
  if (w.arrived == w.mask) {
    for (int l = 0; l < kWarpSize; ++l) {
      if (!(mask >> l & 1u)) continue;
      w.out[l] = shuffle_value(w, l, base, b.threads);
      b.wait[base + l] = Wait::kRunning;
      ++b.running;
    }
    w.arrived = 0;
    ++w.generation;
    w.cv.notify_all();
  } else {
    b.check_deadlock();
    const uint64_t generation = w.generation;
    w.cv.wait(lock, [&] { return w.generation != generation; });
  }
  T result;
  std::memcpy(&result, &w.out[lane], sizeof(T));
  return result;
}

// A thread has returned from the kernel.
inline void thread_exit() {
  Block& b = block();
  const int t = int(threadIdx.x), lane = t % kWarpSize;
  std::unique_lock<std::mutex> lock(b.m);
  const Warp& w = b.warps[t / kWarpSize];
  if (w.arrived != 0 && (w.mask >> lane & 1u)) {
    fail("thread %d of block %u exits while its warp waits for it at "
         "__shfl_down_sync %s:%d (mask 0x%08x)",
         t, blockIdx.x, w.site.file, w.site.line, w.mask);
  }
  b.wait[t] = Wait::kExited;
  --b.live;
  --b.running;
  ++b.progress;
  if (b.barrier_arrived > 0 && b.barrier_arrived == b.live) {
    b.release_barrier();
  } else {
    b.check_deadlock();
  }
}

// Threads made once and reused for every block of every launch.
class Pool {
 public:
  static Pool& get() {
    static Pool pool;
    return pool;
  }

  // Runs body() in threads 0..threads-1 of one block; returns when all have.
  void run_block(int threads, dim3 grid, dim3 block_dim, unsigned block_index,
                 const std::function<void()>& body) {
    while (int(workers_.size()) < threads) add_worker();
    job_ = {&body, grid, block_dim, block_index};
    remaining_.store(threads);
    for (int t = 0; t < threads; ++t) workers_[t]->start.release();
    done_.acquire();
  }

 private:
  struct Job {
    const std::function<void()>* body;
    dim3 grid, block;
    unsigned index;
  };
  struct Worker {
    std::binary_semaphore start{0};
    std::thread thread;
  };

  Pool() : watchdog_([this] { watch(); }) {}
  ~Pool() {
    stop_ = true;
    for (auto& w : workers_) w->start.release();
    for (auto& w : workers_) w->thread.join();
    watchdog_stop_.release();
    watchdog_.join();
  }

  void add_worker() {
    auto w = std::make_unique<Worker>();
    const unsigned index = unsigned(workers_.size());
    Worker* raw = w.get();
    w->thread = std::thread([this, raw, index] {
      for (;;) {
        raw->start.acquire();
        if (stop_) return;
        threadIdx = uint3{index, 0, 0};
        blockIdx = uint3{job_.index, 0, 0};
        blockDim = job_.block;
        gridDim = job_.grid;
        (*job_.body)();
        thread_exit();
        if (remaining_.fetch_sub(1) == 1) done_.release();
      }
    });
    workers_.push_back(std::move(w));
  }

  // Aborts when the running block has made no progress for too long.
  void watch() {
    const char* env = std::getenv("CUDA_EMU_WATCHDOG_S");
    const double limit = env != nullptr ? std::atof(env) : 120.0;
    uint64_t last = ~uint64_t(0);
    double still = 0;
    while (!watchdog_stop_.try_acquire_for(std::chrono::milliseconds(250))) {
      Block& b = block();
      std::lock_guard<std::mutex> lock(b.m);
      if (!b.active || b.progress != last) {
        last = b.progress;
        still = 0;
        continue;
      }
      still += 0.25;
      if (still >= limit) {
        fail("watchdog: block %u made no progress for %.1f s (a thread spinning "
             "on memory no other thread writes?):%s",
             b.index, still, b.describe().c_str());
      }
    }
  }

  std::vector<std::unique_ptr<Worker>> workers_;
  Job job_{};
  std::atomic<int> remaining_{0};
  std::binary_semaphore done_{0};
  bool stop_ = false;
  std::binary_semaphore watchdog_stop_{0};
  std::thread watchdog_;
};

// What cudaGetLastError would say after a launch.
enum Error { kSuccess = 0, kInvalidConfiguration = 9 };

// kernel<<<grid, block>>>(...) as body(): blocks one after another.
inline Error launch(dim3 grid, dim3 block_dim, const std::function<void()>& body) {
  if (block_dim.x < 1 || block_dim.x > kMaxThreads || block_dim.y != 1 ||
      block_dim.z != 1 || grid.x < 1 || grid.x > 0x7fffffffu || grid.y != 1 ||
      grid.z != 1) {
    return kInvalidConfiguration;  // 1-D launches only, within CUDA's limits
  }
  std::vector<unsigned> order(grid.x);
  std::iota(order.begin(), order.end(), 0u);
  const char* how = std::getenv("CUDA_EMU_BLOCK_ORDER");
  if (how == nullptr || std::strcmp(how, "shuffle") == 0) {
    const char* seed = std::getenv("CUDA_EMU_SEED");
    std::mt19937 rng(seed != nullptr ? unsigned(std::atoi(seed)) : 1u);
    std::shuffle(order.begin(), order.end(), rng);
  } else if (std::strcmp(how, "reverse") == 0) {
    std::reverse(order.begin(), order.end());
  } else if (std::strcmp(how, "forward") != 0) {
    fail("CUDA_EMU_BLOCK_ORDER must be forward, reverse or shuffle, not %s", how);
  }
  Block& b = block();
  for (const unsigned index : order) {
    {
      std::lock_guard<std::mutex> lock(b.m);
      b.reset(int(block_dim.x));
      b.active = true;
      b.index = index;
    }
    Pool::get().run_block(int(block_dim.x), grid, block_dim, index, body);
    std::lock_guard<std::mutex> lock(b.m);
    b.active = false;
  }
  return kSuccess;
}

}  // namespace cuda_emu
