// CPU kernels: loops over points around network.h, sums via reduce_cpu.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "active_set_cpu.h"
#include "fit.h"
#include "network.h"
#include "ops.h"
#include "reduce_cpu.h"

namespace biasfit {
namespace {

constexpr int64_t kElementwiseGrain = int64_t(1) << 15;

// What one point contributes, as small functors that chunk_sum inlines.
template <typename T>
struct PointLoss {  // squared error and its bias derivative
  const T* x;
  const T* y;
  Weights<T> w;
  T bias;
  BIASFIT_HD LossGrad operator()(int64_t i) const {
    return point_loss_grad(x[i], y[i], w, bias);
  }
};

template <typename T>
struct PointLossStrided {  // the same over 1-D views (slices, expand) uncopied
  const T* x;
  int64_t x_stride;
  const T* y;
  int64_t y_stride;
  Weights<T> w;
  T bias;
  BIASFIT_HD LossGrad operator()(int64_t i) const {
    return point_loss_grad(x[i * x_stride], y[i * y_stride], w, bias);
  }
};

template <typename T>
struct PointLossFromHidden {  // the same from a precomputed hidden(x[i])
  const T* h;
  const T* y;
  T bias;
  BIASFIT_HD LossGrad operator()(int64_t i) const {
    return loss_grad_from_hidden(h[i], y[i], bias);
  }
};

template <typename T>
struct PointBiasGrad {  // predict's backward
  const T* grad_out;
  const T* x;
  Weights<T> w;
  T bias;
  BIASFIT_HD LossGrad operator()(int64_t i) const {
    return {0.0, point_bias_grad(x[i], grad_out[i], w, bias)};
  }
};

// BIASFIT_CPU_KERNEL=baseline picks the baseline kernels on any CPU, so the
// tests can compare them with the AVX2 ones bit for bit.
bool baseline_forced() {
  const char* pick = std::getenv("BIASFIT_CPU_KERNEL");
  return pick != nullptr && std::strcmp(pick, "baseline") == 0;
}

// One chunk's sum, compiled twice: for AVX2 (4 doubles / 8 floats a vector)
// and for the baseline x86-64 instruction set, chosen once at run time. Both
// add in the same lane order, so they give the same bits.
template <typename Point>
__attribute__((target("avx2"))) LossGrad chunk_avx2(const Point& p,
                                                    int64_t begin,
                                                    int64_t end) {
  return chunk_sum(p, begin, end);
}

template <typename Point>
LossGrad chunk_baseline(const Point& p, int64_t begin, int64_t end) {
  return chunk_sum(p, begin, end);
}

// The trainer's epoch over float32 data, vectorized by hand: gcc's own
// vectorization of chunk_sum widens the floats to double a few lanes at a
// time and runs 2.2x slower. The formulas are still network.h's, applied to
// 8 points at once; only the widening and the sums are written out here.
// Same lanes and tree as chunk_sum (lanes 0-3 in *_lo, 4-7 in *_hi), so the
// same bits, which tests/test_cpu_kernels.py checks against the baseline.
__attribute__((target("avx2,fma"))) LossGrad chunk_avx2(
    const PointLossFromHidden<float>& p, int64_t begin, int64_t end) {
  static_assert(kLanes == 8, "one __m256 of floats per step");
  const __m256 bias = _mm256_set1_ps(p.bias);
  __m256d loss_lo = _mm256_setzero_pd(), loss_hi = loss_lo;
  __m256d half_grad_lo = loss_lo, half_grad_hi = loss_lo;
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    const __m256 z = _mm256_loadu_ps(p.h + i) + bias;
    const __m256 r = relu(z) - _mm256_loadu_ps(p.y + i);
    const __m256 r_active = active_residual(z, r);
    const __m256d r_lo = _mm256_cvtps_pd(_mm256_castps256_ps128(r));
    const __m256d r_hi = _mm256_cvtps_pd(_mm256_extractf128_ps(r, 1));
    // A float squared is exact in double, so the fused multiply-add rounds
    // once, exactly as chunk_sum's loss += r * r.
    loss_lo = _mm256_fmadd_pd(r_lo, r_lo, loss_lo);
    loss_hi = _mm256_fmadd_pd(r_hi, r_hi, loss_hi);
    // Sums of r, doubled once at the end: doubling is exact, so 2 * (a + b)
    // is 2a + 2b bit for bit.
    half_grad_lo += _mm256_cvtps_pd(_mm256_castps256_ps128(r_active));
    half_grad_hi += _mm256_cvtps_pd(_mm256_extractf128_ps(r_active, 1));
  }
  Lanes lanes;
  _mm256_storeu_pd(lanes.loss, loss_lo);
  _mm256_storeu_pd(lanes.loss + 4, loss_hi);
  _mm256_storeu_pd(lanes.grad, half_grad_lo + half_grad_lo);
  _mm256_storeu_pd(lanes.grad + 4, half_grad_hi + half_grad_hi);
  return lanes.finish(p, i, end);
}

const bool kHasAvx2 = __builtin_cpu_supports("avx2") &&
                      __builtin_cpu_supports("fma") && !baseline_forced();

// BIASFIT_TRAINER_REGROUP=0 makes the trainer sum every chunk of the data in
// its own order each epoch: to measure the regrouping both ways.
bool regrouping_enabled() {
  const char* pick = std::getenv("BIASFIT_TRAINER_REGROUP");
  return pick == nullptr || std::strcmp(pick, "0") != 0;
}

template <typename Point>
LossGrad sum_chunk(const Point& p, int64_t begin, int64_t end) {
  return kHasAvx2 ? chunk_avx2(p, begin, end) : chunk_baseline(p, begin, end);
}

template <typename Point>
LossGrad sum_points(const Point& p, int64_t n) {
  return deterministic_sum(
      n, [&](int64_t begin, int64_t end) { return sum_chunk(p, begin, end); });
}

// When the trainer regroups points (active_set_cpu.h): large enough data that
// an epoch has several chunks to skip, and epochs enough to repay the
// regrouping, whose scatter costs 15-25 full epochs (2-core EPYC, 1e6 and
// 1e7 points; fits of 20 epochs were as fast or faster without it).
constexpr int64_t kRegroupMinChunks = 4;
constexpr int64_t kRegroupMinEpochs = 32;

// The trainer's epochs, all in one OpenMP parallel region: one thread
// combines the chunk sums and steps, and two barriers an epoch replace a
// fork and join. The chunks that must be summed are split evenly among the
// threads; the rest come from `set` (if any). The chunks and the tree that
// combines them are deterministic_sum's, so the sums are the same bits for
// any number of threads.
template <typename T>
void run_epochs(PointLossFromHidden<T> point, int64_t n,
                const ActiveSet<T>* set, FitState<T>& state,
                const FitOptions& opt, T* losses, T* biases) {
  const int64_t chunks = num_chunks(n);
  if (chunks == 1) {
    while (state.status == kRunning) {
      point.bias = state.bias;
      state.end_epoch(sum_chunk(point, 0, n), opt, losses, biases);
    }
    return;
  }
  auto known = [&](int64_t c, T bias) -> const LossGrad* {
    return set != nullptr ? set->known_sums(c, bias) : nullptr;
  };
  std::vector<LossGrad> partials(chunks);
  const int threads =
      at::in_parallel_region()
          ? 1
          : int(std::min<int64_t>(at::get_num_threads(), chunks));
#pragma omp parallel num_threads(threads) firstprivate(point)
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    // state is written only inside `single`, whose closing barrier comes
    // before any thread reads it again.
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
#pragma omp single
      state.end_epoch(pairwise_total(partials), opt, losses, biases);
    }
  }
}

template <typename T>
Weights<T> load_weights(const at::Tensor& w) {
  return Weights<T>::load(w.contiguous().data_ptr<T>());
}

template <typename T>
T load_bias(const at::Tensor& b) {
  return *b.data_ptr<T>();
}

// out[i] = f(x[i]) in parallel: predict, and hidden for the trainer.
template <typename T, typename F>
void map_points(const T* x, T* out, int64_t n, const F& f) {
  at::parallel_for(0, n, kElementwiseGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) out[i] = f(x[i]);
  });
}

at::Tensor predict_cpu(const at::Tensor& inputs, const at::Tensor& weights,
                       const at::Tensor& bias) {
  check_predict_args(inputs, weights, bias);
  const at::Tensor x = inputs.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "biasfit::predict", [&] {
    const Weights<scalar_t> w = load_weights<scalar_t>(weights);
    const scalar_t b = load_bias<scalar_t>(bias);
    map_points(x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), x.numel(),
               [&](scalar_t xi) { return predict(xi, w, b); });
  });
  return out;
}

// fused_loss's double sums, before any rounding to the data's dtype.
LossGrad checked_loss_grad_sum(const at::Tensor& inputs,
                               const at::Tensor& labels,
                               const at::Tensor& weights,
                               const at::Tensor& bias) {
  check_loss_args(inputs, labels, weights, bias);
  // Contiguous data takes the vectorized path; 1-D views are read in place
  // (an expanded tensor of 2^31+ elements costs no memory); anything else is
  // made contiguous first.
  const bool strided = read_as_views(inputs, labels);
  const at::Tensor x = strided ? inputs : inputs.contiguous();
  const at::Tensor y = strided ? labels : labels.contiguous();
  LossGrad sum{};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "biasfit::fused_loss", [&] {
    const Weights<scalar_t> w = load_weights<scalar_t>(weights);
    const scalar_t b = load_bias<scalar_t>(bias);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    sum = strided ? sum_points(PointLossStrided<scalar_t>{xp, x.stride(0), yp,
                                                          y.stride(0), w, b},
                               x.numel())
                  : sum_points(PointLoss<scalar_t>{xp, yp, w, b}, x.numel());
  });
  return sum;
}

std::tuple<at::Tensor, at::Tensor> fused_loss_cpu(const at::Tensor& inputs,
                                                  const at::Tensor& labels,
                                                  const at::Tensor& weights,
                                                  const at::Tensor& bias) {
  const LossGrad sum = checked_loss_grad_sum(inputs, labels, weights, bias);
  at::Tensor loss = at::empty({}, inputs.options());
  at::Tensor grad = at::empty({}, inputs.options());
  AT_DISPATCH_FLOATING_TYPES(inputs.scalar_type(), "biasfit::fused_loss", [&] {
    // The sums are double; the results take the data's dtype like any op
    // (a float32 sum past FLT_MAX becomes inf, which fit reports).
    *loss.data_ptr<scalar_t>() = scalar_t(sum.loss);
    *grad.data_ptr<scalar_t>() = scalar_t(sum.grad);
  });
  return {loss, grad};
}

at::Tensor fused_loss_sums_cpu(const at::Tensor& inputs,
                               const at::Tensor& labels,
                               const at::Tensor& weights,
                               const at::Tensor& bias) {
  const LossGrad sum = checked_loss_grad_sum(inputs, labels, weights, bias);
  at::Tensor out = at::empty({2}, inputs.options().dtype(at::kDouble));
  out.data_ptr<double>()[0] = sum.loss;
  out.data_ptr<double>()[1] = sum.grad;
  return out;
}

at::Tensor predict_bias_grad_cpu(const at::Tensor& grad_out,
                                 const at::Tensor& inputs,
                                 const at::Tensor& weights,
                                 const at::Tensor& bias) {
  check_bias_grad_args(grad_out, inputs, weights, bias);
  const at::Tensor x = inputs.contiguous();
  const at::Tensor g = grad_out.to(x.scalar_type()).contiguous();
  at::Tensor total = at::empty({}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "biasfit::predict_bias_grad",
                             [&] {
    const PointBiasGrad<scalar_t> point{
        g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
        load_weights<scalar_t>(weights), load_bias<scalar_t>(bias)};
    *total.data_ptr<scalar_t>() = scalar_t(sum_points(point, x.numel()).grad);
  });
  return total;
}

FitOutputs fit_sgd_cpu(const at::Tensor& inputs, const at::Tensor& labels,
                       const at::Tensor& weights, const at::Tensor& bias,
                       double lr, double momentum, double dampening,
                       bool nesterov, double weight_decay, bool maximize,
                       int64_t epochs, double tol) {
  const FitCall call =
      prepare_fit(inputs, labels, weights, bias, lr, momentum, dampening,
                  nesterov, weight_decay, maximize, epochs, tol);
  const int64_t n = call.x.numel();
  // The frozen weights make hidden(x[i]) the same every epoch: computed once
  // here, each epoch reads hidden and labels (as many bytes as inputs and
  // labels) and does a third of the arithmetic. hidden is kept in the data's
  // dtype, exactly as the per-epoch evaluation would round it.
  at::Tensor hidden_x = at::empty({n}, call.x.options());
  AT_DISPATCH_FLOATING_TYPES(call.x.scalar_type(), "biasfit::fit_sgd", [&] {
    const Weights<scalar_t> w = load_weights<scalar_t>(call.weights);
    scalar_t* h = hidden_x.data_ptr<scalar_t>();
    map_points(call.x.data_ptr<scalar_t>(), h, n,
               [&](scalar_t xi) { return hidden(xi, w); });
    PointLossFromHidden<scalar_t> point{h, call.y.data_ptr<scalar_t>(),
                                        scalar_t(0)};
    std::optional<ActiveSet<scalar_t>> set;
    if (num_chunks(n) >= kRegroupMinChunks && epochs >= kRegroupMinEpochs &&
        regrouping_enabled()) {
      set = ActiveSet<scalar_t>::build(point.h, point.y, n, point,
                                       sum_chunk<PointLossFromHidden<scalar_t>>);
      point.h = set->h.data_ptr<scalar_t>();
      point.y = set->y.data_ptr<scalar_t>();
      hidden_x = at::Tensor();  // regrouped: the original order is done with
    }
    auto state = FitState<scalar_t>::start(load_bias<scalar_t>(bias), epochs);
    run_epochs(point, n, set ? &*set : nullptr, state, call.opt,
               call.losses.data_ptr<scalar_t>(),
               call.biases.data_ptr<scalar_t>());
    *call.final_bias.data_ptr<scalar_t>() = state.bias;
    call.info.data_ptr<int64_t>()[0] = state.epoch;
    call.info.data_ptr<int64_t>()[1] = state.status;
  });
  return call.outputs();
}

std::tuple<at::Tensor, at::Tensor> sgd_step_cpu(
    const at::Tensor& param, const at::Tensor& grad,
    const std::optional<at::Tensor>& momentum_buffer, double lr,
    double momentum, double dampening, bool nesterov, double weight_decay,
    bool maximize) {
  check_sgd_step_args(param, grad, momentum_buffer);
  check_sgd_options(lr, momentum, dampening, nesterov, weight_decay);
  const SgdOptions opt{lr, momentum, dampening, weight_decay, nesterov,
                       maximize};
  at::Tensor new_param, new_buf;
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "biasfit::sgd_step", [&] {
    const bool has_buf = momentum_buffer.has_value();
    SgdState<scalar_t> state{
        has_buf ? load_bias<scalar_t>(momentum_buffer->contiguous())
                : scalar_t(0),
        has_buf};
    const scalar_t p = state.step(load_bias<scalar_t>(param.contiguous()),
                                  load_bias<scalar_t>(grad.contiguous()), opt);
    new_param = at::empty(param.sizes(), param.options());
    new_buf = at::empty(param.sizes(), param.options());
    *new_param.data_ptr<scalar_t>() = p;
    *new_buf.data_ptr<scalar_t>() = state.buf;
  });
  return {new_param, new_buf};
}

}  // namespace

TORCH_LIBRARY_IMPL(biasfit, CPU, m) {
  m.impl("predict", &predict_cpu);
  m.impl("fused_loss", &fused_loss_cpu);
  m.impl("fused_loss_sums", &fused_loss_sums_cpu);
  m.impl("predict_bias_grad", &predict_bias_grad_cpu);
  m.impl("fit_sgd", &fit_sgd_cpu);
  m.impl("sgd_step", &sgd_step_cpu);
}

}  // namespace biasfit
