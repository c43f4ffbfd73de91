// The host side of fit_many on the GPU: which of cuda/kernels_many.cuh's
// kernels it queues, over cuda/launch.h's Launcher. One launch a route (at
// most three, each in groups of at most kMaxBatchBlocks blocks), every fit
// start to end inside it: no poll, no launch an epoch. Nothing here waits
// for the device.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/many.h"
#include "cuda/kernels_many.cuh"
#include "cuda/launch.h"
#include "cuda/launch_batched.h"

namespace biasfit {
namespace cuda {

// The chunk sums' scratch, in sums: a fit of more than one chunk takes
// num_chunks(n) slots from 2 floor(begin / kChunk) on (kernels_many.cuh's
// chunk_base: for such a fit floor(end / C) - floor(begin / C) >= floor(n /
// C) >= 1 and num_chunks(n) <= 2 floor(n / C), so no two fits' slots meet);
// a fit of one chunk takes none. O(points / kChunk), never O(K).
inline int64_t many_chunk_slots(int64_t points) { return 2 * (points / kChunk) + 1; }

// Every fit of d. points: the data's length; host_offsets: d's offsets as
// the host sees them (null: unknown, and every route's kernel is queued, each
// fit run by its own route's); forced_route >= 0 runs every fit by that
// route whatever its size (for the tests: each route on any data).
template <typename T, typename Launcher>
void fit_many(Launcher& l, const ManyData<T>& d, const ManyOut<T>& out,
              int64_t points, const int64_t* host_offsets, int forced_route = -1) {
  bool present[3] = {false, false, false};
  if (forced_route >= 0) {
    present[forced_route] = true;
  } else if (d.offsets == nullptr) {
    present[many_route(d.n)] = true;
  } else if (host_offsets != nullptr) {
    for (int64_t k = 0; k < d.fits; ++k) {
      present[many_route(host_offsets[k + 1] - host_offsets[k])] = true;
    }
  } else {
    present[0] = present[1] = present[2] = true;
  }
  const bool forced = forced_route >= 0;
  void* chunks = l.scratch(sizeof(ParamSums) * size_t(many_chunk_slots(points)));
  if (present[kRouteThread]) {
    const int64_t blocks = (d.fits + kFitsPerBlock - 1) / kFitsPerBlock;
    in_groups(blocks, 1, [&](int64_t b0, int64_t count) {
      l.launch(many_thread_kernel<T>, int(count), kFitsPerBlock, d, out,
               b0 * kFitsPerBlock, forced, chunks);
    });
  }
  if (present[kRouteWarp]) {
    in_groups(d.fits, 1, [&](int64_t k0, int64_t count) {
      l.launch(many_team_kernel<kWarpSize, T>, int(count), kWarpSize, d, out, k0,
               forced, chunks);
    });
  }
  if (present[kRouteBlock]) {
    in_groups(d.fits, 1, [&](int64_t k0, int64_t count) {
      l.launch(many_team_kernel<kThreads, T>, int(count), kThreads, d, out, k0,
               forced, chunks);
    });
  }
}

}  // namespace cuda
}  // namespace biasfit
