// Kernels that break CUDA's rules on purpose: the harness must refuse each
// with a clear message rather than run it (tests/test_cuda_emu_strict.py).
#pragma once

namespace misuse {

// Half the block waits at one barrier, half at another.
__global__ void divergent_barrier() {
  if (threadIdx.x < 64) {
    __syncthreads();
  } else {
    __syncthreads();
  }
}

// A shuffle inside a branch that half of each warp skips, then a barrier:
// the shuffling lanes wait for lanes that wait at the barrier (on a GPU,
// a hang or garbage).
__global__ void divergent_shuffle() {
  double v = threadIdx.x;
  if (threadIdx.x % 32 < 16) v += __shfl_down_sync(0xffffffffu, v, 1);
  __syncthreads();
}

// The lanes the mask names leave the kernel without shuffling.
__global__ void shuffle_with_exited_lanes() {
  if (threadIdx.x % 32 >= 16) return;
  double v = threadIdx.x;
  v += __shfl_down_sync(0xffffffffu, v, 1);
}

// A mask of the low half, read from across it: lane 15 reads lane 23.
__global__ void shuffle_outside_mask() {
  if (threadIdx.x % 32 >= 16) return;
  double v = threadIdx.x;
  v += __shfl_down_sync(0x0000ffffu, v, 8);
}

// Thread 0 waits for a flag that no thread ever sets: only the watchdog
// can tell.
__global__ void spin_forever(volatile int* flag) {
  if (threadIdx.x == 0) {
    while (*flag == 0) {
    }
  }
}

}  // namespace misuse
