// The host side of the CUDA ops: which kernels each op queues, in what order,
// with what grid; written once over a Launcher, the one thing that differs
// between the GPU (torch_ops/cuda_ops.cu's CudaLauncher: streams, torch's allocator) and
// the test harness (tests/cuda_emu/emu_launcher.h: threads on the CPU).
//
// A Launcher provides:
//   launch(kernel, grid, block, args...)  queue kernel<<<grid, block>>>(args)
//                                         on the op's stream and check it
//   scratch(bytes)        device memory, 16-byte aligned, uninitialized,
//                         alive as long as the launcher (stream-ordered)
//   poll_start()          set up the status poll; false if it must not run
//                         (e.g. the stream is being captured into a graph)
//   poll_copy(status)     queue a copy of one device int64 to the host and
//                         mark the stream there
//   poll_landed()         whether the last poll_copy has landed (never waits)
//   poll_value()          what it brought
//
// Nothing here waits for the device.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "core/fit.h"
#include "core/fit_params.h"
#include "cuda/kernels.cuh"
#include "cuda/kernels_grads.cuh"
#include "cuda/kernels_params.cuh"
#include "core/network.h"
#include "cuda/reduce.cuh"

namespace biasfit {
namespace cuda {

template <typename T>
bool aligned16(const T* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

// 128-bit loads need dense, 16-byte aligned arrays.
template <typename T>
bool dense_and_aligned(const Inputs<T>& in) {
  return in.a_step == 1 && in.b_step == 1 && aligned16(in.a) &&
         aligned16(in.b);
}

template <typename T, typename Launcher>
void predict(Launcher& l, const T* x, int64_t n, const T* weights,
             const T* bias, T* out) {
  // Elementwise, so the grid only sets how many points a thread takes.
  l.launch(predict_kernel<T>, grid_blocks<T>(n), kThreads, x, n, weights,
           bias, out);
}

// sink(sum over i of point(a[i], b[i], i)): partial sums by block, then one
// block adds them (cuda/reduce.cuh's order), all on the device. extra: the
// point's per-point outputs, if any.
template <typename Point, typename T, typename Sink, typename Launcher>
void sum_points(Launcher& l, const Inputs<T>& in, const T* weights,
                const T* bias, const Sink& sink,
                const typename Point::Extra& extra = {}) {
  using S = SumOf<Point, T>;
  static_assert(std::is_same<S, typename Sink::Sum>::value,
                "the sink takes the points' kind of sum");
  const int blocks = grid_blocks<T>(in.n);
  auto* partials = static_cast<S*>(l.scratch(sizeof(S) * size_t(blocks)));
  const int64_t* no_status = nullptr;
  l.launch(dense_and_aligned(in) ? partial_sums_kernel<true, Point, T>
                                 : partial_sums_kernel<false, Point, T>,
           blocks, kThreads, in, weights, bias, no_status, extra, partials);
  l.launch(finish_kernel<Sink>, 1, kThreads, static_cast<const S*>(partials),
           blocks, sink);
}

// Where fit_sgd writes: losses[epochs], biases[epochs], the final bias, and
// info = [epoch, status].
template <typename T>
struct FitOutputPointers {
  T* losses;
  T* biases;
  T* final_bias;
  int64_t* info;
};

// See StatusPoll.
constexpr int64_t kPollEvery = 64;

// A big epoch budget that converges early would queue millions of no-op
// launches, so every kPollEvery epochs the multi-block fit asks stopped():
// it queues an asynchronous copy of the device status to the host and
// answers true once an earlier copy has landed showing the fit stopped. It
// changes how many no-op epochs are queued, never a result.
template <typename Launcher>
class StatusPoll {
 public:
  StatusPoll(Launcher& l, const int64_t* status) : l_(l), status_(status) {}

  bool stopped() {
    if (!started_) {
      // Set up on first use, so fits too short to poll pay nothing.
      if (disabled_ || !(started_ = l_.poll_start())) {
        disabled_ = true;
        return false;
      }
    }
    if (pending_) {
      if (!l_.poll_landed()) return false;
      pending_ = false;
      if (l_.poll_value() != kRunning) return true;
    }
    l_.poll_copy(status_);
    pending_ = true;
    return false;
  }

 private:
  Launcher& l_;
  const int64_t* status_;
  bool started_ = false, disabled_ = false, pending_ = false;
};

// Queues launch_epoch() once an epoch, up to `epochs`, until a StatusPoll of
// the device `status` shows the fit stopped.
template <typename Launcher, typename LaunchEpoch>
void queue_epochs(Launcher& l, int64_t epochs, const int64_t* status,
                  const LaunchEpoch& launch_epoch) {
  StatusPoll<Launcher> poll(l, status);
  for (int64_t e = 0; e < epochs; ++e) {
    if (e > 0 && e % kPollEvery == 0 && poll.stopped()) break;
    launch_epoch();
  }
}

// fit_sgd. Which of two shapes runs depends on n alone:
//
//  - n fits one block (fits_one_block: up to 1024 groups, e.g. the
//    tutorial's 3 points): ONE launch runs every epoch in a loop inside one
//    block, each thread's points held in registers.
//  - otherwise ONE launch an epoch (fit_epoch_kernel: the block that
//    finishes last ends the epoch), queued back to back between a start
//    and a publish kernel. Each returns at once after the stop, so an epoch
//    after the stop costs only a launch; StatusPoll stops the queueing.
//
// Rejected: a cooperative kernel with a grid-wide sync per epoch (one launch
// for any n) needs its whole grid resident at once, which would tie the block
// count, hence the sum's bits, to the GPU model; a CUDA graph of the epochs
// costs its instantiation (tens of microseconds and up) on every call, where
// the default 100 epochs cost about as much in launches; tail launches from
// the device need relocatable device code, a harder build for torch
// extensions.
template <typename T, typename Launcher>
void fit(Launcher& l, const Inputs<T>& in, const T* weights, const T* bias,
         const FitOptions& opt, const FitOutputPointers<T>& out) {
  const bool aligned = dense_and_aligned(in);
  if (fits_one_block<T>(in.n)) {
    l.launch(aligned ? fit_one_block_kernel<true, T>
                     : fit_one_block_kernel<false, T>,
             1, kThreads, in, weights, bias, opt, out.losses, out.biases,
             out.final_bias, out.info);
    return;
  }
  const int blocks = grid_blocks<T>(in.n);
  auto* state = static_cast<FitDeviceState<T>*>(
      l.scratch(sizeof(FitDeviceState<T>)));
  auto* partials =
      static_cast<LossGrad*>(l.scratch(sizeof(LossGrad) * size_t(blocks)));
  l.launch(fit_start_kernel<T>, 1, 1, bias, opt.epochs, state);
  using Fit = FitDeviceState<T>;
  const auto epoch_kernel = aligned ? fit_epoch_kernel<true, T, Fit>
                                    : fit_epoch_kernel<false, T, Fit>;
  queue_epochs(l, opt.epochs, &state->state.status, [&] {
    l.launch(epoch_kernel, blocks, kThreads, in, weights, state, partials,
             opt, out.losses, out.biases);
  });
  l.launch(fit_publish_kernel<T>, 1, 1,
           static_cast<const FitDeviceState<T>*>(state), out.final_bias,
           out.info);
}

// ---- every gradient ---------------------------------------------------------

// Where fused_loss_grads writes, in the data's type: the loss, weights_grad[6]
// (null unless asked), bias_grad, and per point dy and dx (null unless asked).
template <typename T>
struct LossGradsPointers {
  T* loss;
  T* weights_grad;
  T* bias_grad;
  T* dy;
  T* dx;
};

// fused_loss_grads: one pass of LossGradsPoint; with nothing per point and no
// weight asked for, fused_loss's own pass, exactly as fast (as torch_ops/cpu_ops.cpp).
template <typename T, typename Launcher>
void loss_grads(Launcher& l, const Inputs<T>& in, const T* weights,
                const T* bias, const LossGradsPointers<T>& out) {
  if (out.weights_grad == nullptr && out.dy == nullptr && out.dx == nullptr) {
    sum_points<LossPoint<T>>(l, in, weights, bias,
                             LossSink<T>{out.loss, out.bias_grad});
    return;
  }
  sum_points<LossGradsPoint<T>>(
      l, in, weights, bias,
      ParamGradsSink<T>{out.loss, out.weights_grad, out.bias_grad},
      PointGrads<T>{out.dy, out.dx});
}

// fused_loss_grads_sums: out[8] = float64 [loss, 6 weight grads, bias grad].
template <typename T, typename Launcher>
void loss_grads_sums(Launcher& l, const Inputs<T>& in, const T* weights,
                     const T* bias, double* out) {
  sum_points<LossGradsPoint<T>>(l, in, weights, bias, ParamSumsSink{out},
                                PointGrads<T>{nullptr, nullptr});
}

// predict_grads over in = (inputs, grad_out): weights_grad[6] (null unless
// asked), bias_grad, and dx per point (null unless asked).
template <typename T, typename Launcher>
void predict_grads(Launcher& l, const Inputs<T>& in, const T* weights,
                   const T* bias, T* weights_grad, T* bias_grad, T* dx) {
  sum_points<PredictGradsPoint<T>>(
      l, in, weights, bias, ParamGradsSink<T>{nullptr, weights_grad, bias_grad},
      PointGrads<T>{nullptr, dx});
}

// fit_params: fit's two shapes, chosen by n alone as fit's, with every point
// evaluated in full each epoch (the hidden layer may train).
template <typename T, typename Launcher>
void fit_params(Launcher& l, const Inputs<T>& in, const T* start,
                const ParamFitOptions& opt, const ParamFitOutputs<T>& out) {
  const bool aligned = dense_and_aligned(in);
  if (fits_one_block<T>(in.n)) {
    l.launch(aligned ? fit_params_one_block_kernel<true, T>
                     : fit_params_one_block_kernel<false, T>,
             1, kThreads, in, start, opt, out);
    return;
  }
  using Fit = ParamFitDeviceState<T>;
  const int blocks = grid_blocks<T>(in.n);
  auto* state = static_cast<Fit*>(l.scratch(sizeof(Fit)));
  auto* partials =
      static_cast<ParamSums*>(l.scratch(sizeof(ParamSums) * size_t(blocks)));
  l.launch(fit_params_start_kernel<T>, 1, 1, start, opt.epochs, state);
  const auto epoch_kernel = aligned ? fit_epoch_kernel<true, T, Fit>
                                    : fit_epoch_kernel<false, T, Fit>;
  queue_epochs(l, opt.epochs, &state->state.status, [&] {
    l.launch(epoch_kernel, blocks, kThreads, in, start, state, partials, opt,
             out.losses, out.biases);
  });
  l.launch(fit_params_publish_kernel<T>, 1, 1, static_cast<const Fit*>(state),
           out.final_params, out.info);
}

}  // namespace cuda
}  // namespace biasfit
