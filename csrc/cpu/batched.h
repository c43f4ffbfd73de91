// The ops over a batch of K fits at once (torch.func.vmap's batched work):
// fit k reads row k of each argument, or row 0 of an argument shared by all
// (a row step of 0). Free of torch, like cpu/kernels.h; torch_ops/
// batched_cpu.cpp wraps these as stable-ABI ops.
//
// Each fit's sum is the unbatched op's, bit for bit: the same chunks of
// kChunk points, each summed by the same chunk function (sum_chunk,
// sum_param_chunk), the chunk sums added in the same pairwise tree
// (cpu/reduce.h). Only the order in which (chunk, fit) pieces are computed
// changes, never an addition: any thread count gives the same bits.
//
// Data shared by the batch is read once: the work goes chunk by chunk, and a
// chunk's points stay in cache while a group of fits sums them. With shared
// inputs and weights (a batch of biases or of labels) hidden(x) is computed
// once per chunk and every fit of the group sums from it
// (PointLossFromHidden: the same bits as PointLoss, as in the trainer).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/network.h"
#include "cpu/grads.h"
#include "cpu/kernels.h"
#include "cpu/parallel.h"
#include "cpu/points.h"
#include "cpu/reduce.h"

namespace biasfit {
namespace cpu {

// The batch's arguments: row k of each starts at ptr + k * step (step 0:
// one row shared by every fit). x, y, g: [*, n] points (g: grad_out);
// w: [*, 6]; b: [*].
template <typename T>
struct Batch {
  const T* x = nullptr;
  int64_t x_step = 0;
  const T* y = nullptr;
  int64_t y_step = 0;
  const T* w = nullptr;
  int64_t w_step = 0;
  const T* b = nullptr;
  int64_t b_step = 0;
  const T* g = nullptr;
  int64_t g_step = 0;
  int64_t k = 0;  // fits
  int64_t n = 0;  // points per fit

  const T* xk(int64_t i) const { return x + i * x_step; }
  const T* yk(int64_t i) const { return y + i * y_step; }
  const T* gk(int64_t i) const { return g + i * g_step; }
  Weights<T> wk(int64_t i) const { return Weights<T>::load(w + i * w_step); }
  T bk(int64_t i) const { return b[i * b_step]; }
};

// Fits a work item takes in one chunk: few enough that the items keep every
// thread busy, many enough that a chunk's points (and its hidden buffer)
// serve a group of fits while in cache. Changes no bit.
inline int64_t fits_per_item(int64_t fits, int64_t chunks, int threads) {
  constexpr int64_t kMaxGroup = 64;
  const int64_t want_items = 4 * int64_t(std::max(threads, 1));
  const int64_t groups_per_chunk = std::max<int64_t>(
      (fits + kMaxGroup - 1) / kMaxGroup, (want_items + chunks - 1) / chunks);
  const int64_t groups = std::min(fits, groups_per_chunk);
  return (fits + groups - 1) / groups;
}

// out[k] = the sum over chunks of fit k, added as deterministic_sum adds
// them. group(k0, k1, begin, end, put) sums chunk [begin, end) for fits
// [k0, k1), handing each fit's chunk sum to put(k, sum). n == 0: every sum
// is zero (a sum over no points).
template <typename Sum, typename Group>
void batched_sums(int64_t fits, int64_t n, int threads, const Group& group,
                  Sum* out) {
  if (fits == 0) return;
  if (n == 0) {
    std::fill(out, out + fits, Sum{});
    return;
  }
  const int64_t chunks = num_chunks(n);
  // Under two chunks' points in all, a parallel region costs more than the
  // work (as the unbatched ops' single chunk runs on the calling thread).
  if (fits * n < 2 * kChunk) threads = 1;
  const int64_t per_item = fits_per_item(fits, chunks, threads);
  const int64_t groups = (fits + per_item - 1) / per_item;
  std::vector<Sum> partials(size_t(fits * chunks));
  // Chunk-major: a thread's contiguous items share their chunks.
  parallel_items(chunks * groups, threads, [&](int64_t item) {
    const int64_t c = item / groups, k0 = (item % groups) * per_item;
    const int64_t begin = c * kChunk;
    group(k0, std::min(fits, k0 + per_item), begin, std::min(n, begin + kChunk),
          [&](int64_t k, const Sum& s) { partials[size_t(k * chunks + c)] = s; });
  });
  // Each fit's chunk sums in the unbatched op's tree: little work, on the
  // calling thread.
  std::vector<Sum> mine(static_cast<size_t>(chunks));
  for (int64_t k = 0; k < fits; ++k) {
    std::copy(partials.begin() + k * chunks, partials.begin() + (k + 1) * chunks,
              mine.begin());
    out[k] = pairwise_total(mine);
  }
}

// fused_loss's sums (loss, bias gradient) of every fit.
template <typename T>
void batched_loss(const Batch<T>& a, int threads, LossGrad* out) {
  const bool shared_hidden = a.x_step == 0 && a.w_step == 0;
  batched_sums<LossGrad>(a.k, a.n, threads, [&](int64_t k0, int64_t k1,
                                                int64_t begin, int64_t end,
                                                const auto& put) {
    if (shared_hidden && k1 - k0 > 1) {
      // hidden(x) of this chunk once, indexed from 0: the chunk's lanes are
      // counted from its start either way, and its smallest h is
      // PointLossFromHidden's chunk 0.
      std::vector<T> h(size_t(end - begin));
      const T least = hidden_chunk(a.x + begin, h.data(), 0, end - begin, a.wk(0));
      for (int64_t k = k0; k < k1; ++k) {
        put(k, sum_chunk(PointLossFromHidden<T>{h.data(), a.yk(k) + begin, a.bk(k),
                                                &least},
                         0, end - begin));
      }
      return;
    }
    for (int64_t k = k0; k < k1; ++k) {
      put(k, sum_chunk(PointLoss<T>{a.xk(k), a.yk(k), a.wk(k), a.bk(k)}, begin, end));
    }
  }, out);
}

// fused_loss_grads's sums (loss and the seven parameters' gradients) of
// every fit; dy, dx: [k, n] per-point gradients where asked (else null).
// The points are the unbatched op's choice: the branch-free ones when
// nothing is written per point.
template <typename T>
void batched_loss_grads(const Batch<T>& a, T* dy, T* dx, int threads,
                        ParamSums* out) {
  batched_sums<ParamSums>(a.k, a.n, threads, [&](int64_t k0, int64_t k1,
                                                 int64_t begin, int64_t end,
                                                 const auto& put) {
    for (int64_t k = k0; k < k1; ++k) {
      if (dy == nullptr && dx == nullptr) {
        put(k, sum_param_chunk<true>(
                   PointLossParamGrads<T>{a.xk(k), a.yk(k), a.wk(k), a.bk(k)},
                   begin, end));
      } else {
        put(k, sum_param_chunk<true>(
                   PointLossAllGrads<T>{a.xk(k), 1, a.yk(k), 1, a.wk(k), a.bk(k),
                                        dy != nullptr ? dy + k * a.n : nullptr,
                                        dx != nullptr ? dx + k * a.n : nullptr},
                   begin, end));
      }
    }
  }, out);
}

// predict_bias_grad's sums: sum(g * d y_hat / d bias) of every fit (.grad).
template <typename T>
void batched_bias_grad(const Batch<T>& a, int threads, LossGrad* out) {
  batched_sums<LossGrad>(a.k, a.n, threads, [&](int64_t k0, int64_t k1,
                                                int64_t begin, int64_t end,
                                                const auto& put) {
    for (int64_t k = k0; k < k1; ++k) {
      put(k, sum_chunk(PointBiasGrad<T>{a.gk(k), a.xk(k), a.wk(k), a.bk(k)}, begin,
                       end));
    }
  }, out);
}

// predict_grads's sums of every fit, and dx [k, n] where asked (else null).
template <typename T>
void batched_predict_grads(const Batch<T>& a, T* dx, int threads,
                           ParamSums* out) {
  batched_sums<ParamSums>(a.k, a.n, threads, [&](int64_t k0, int64_t k1,
                                                 int64_t begin, int64_t end,
                                                 const auto& put) {
    for (int64_t k = k0; k < k1; ++k) {
      put(k, sum_param_chunk<true>(
                 PointPredictGrads<T>{a.gk(k), a.xk(k), a.wk(k), a.bk(k),
                                      dx != nullptr ? dx + k * a.n : nullptr},
                 begin, end));
    }
  }, out);
}

// out[k, i] = predict(x_k[i]) of every fit, in blocks of kElementwiseGrain.
template <typename T>
void batched_predict(const Batch<T>& a, T* out, int threads) {
  const int64_t blocks = (a.n + kElementwiseGrain - 1) / kElementwiseGrain;
  parallel_items(a.k * blocks, threads, [&](int64_t item) {
    const int64_t k = item / blocks, begin = (item % blocks) * kElementwiseGrain;
    const int64_t end = std::min(a.n, begin + kElementwiseGrain);
    const T* x = a.xk(k);
    const Weights<T> w = a.wk(k);
    const T b = a.bk(k);
    T* o = out + k * a.n;
    for (int64_t i = begin; i < end; ++i) o[i] = predict(x[i], w, b);
  });
}

}  // namespace cpu
}  // namespace biasfit
