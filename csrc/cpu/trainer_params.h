// The CPU fused trainer for any subset of the seven parameters, with SGD,
// Adam or AdamW (torch.optim's rules: core/sgd.h, core/adam.h), every epoch in one
// call. Free of torch; torch_ops/cpu_ops.cpp runs it as the fit_params op.
//
// An epoch is one pass of cpu/grads.h over the data (loss and the seven
// gradient sums, deterministic), then core/fit_params.h's end of the epoch (the
// CUDA trainer's too): record, stop on a non-finite loss or below tol, step
// every trained parameter, stop on a non-finite parameter; an Interrupt
// (Ctrl-C) is asked every ~100 ms. cpu/trainer.h's shortcuts (hidden(x) once
// per fit, regrouping by hidden value) need a frozen hidden layer;
// fit_params sends a fit of final_bias alone with SGD there (train.py does),
// and does every other fit in full passes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/fit.h"
#include "core/fit_params.h"
#include "cpu/grads.h"
#include "cpu/parallel.h"
#include "cpu/trainer.h"

namespace biasfit {
namespace cpu {

// One chunk's sums at the state's parameters: the all-seven pass, or the
// bias-only one (fused_loss's) when no weight trains.
template <typename T>
ParamSums epoch_chunk(const PointLossParamGrads<T>& point, bool weights,
                      int64_t begin, int64_t end) {
  if (weights) return sum_param_chunk<true>(point, begin, end);
  const LossGrad lg =
      sum_chunk(PointLoss<T>{point.x, point.y, point.w, point.bias}, begin, end);
  return ParamSums{lg.loss, {0, 0, 0, 0, 0, 0, lg.grad}};
}

// The end of one epoch, run by one thread: record, stop test, step, and
// every ~100 ms the interrupt.
template <typename T>
void end_param_epoch(ParamFitState<T>& state, const ParamSums& sums,
                     const ParamFitOptions& opt, History<T>& history,
                     InterruptPoll& poll) {
  history.make_room(state.epoch, opt.epochs);
  state.end_epoch(sums, opt, history.losses.data(), history.biases.data());
  if (state.status == kRunning && poll.due()) state.status = kInterrupted;
}

// A whole fit over x[0..n), y[0..n) (contiguous) from params[7]. Every
// epoch in one parallel region (run_team), as cpu/trainer.h's run_epochs: each
// thread sums its share of the chunks into partials, the calling thread
// combines them in deterministic_sum's tree and steps (it alone may run
// Python's signal handlers for an Interrupt), and two barriers an epoch
// replace a fork and join. The chunks and the tree are deterministic_sum's,
// so the sums are the same bits for any number of threads.
template <typename T>
ParamFitState<T> train_params(const T* x, const T* y, int64_t n,
                              const T* start, const ParamFitOptions& opt,
                              int threads, History<T>& history,
                              Interrupt interrupt = {}) {
  ParamFitState<T> state = ParamFitState<T>::start(start, opt.epochs);
  // Weights' gradients only when a weight trains: else the bias-only sums.
  const bool weights = (opt.trained & ((1 << kNumWeights) - 1)) != 0;
  auto point_at = [&](const ParamFitState<T>& s) {
    return PointLossParamGrads<T>{x, y, Weights<T>::load(s.params),
                                  s.params[kBiasIndex]};
  };
  InterruptPoll poll(interrupt, n);
  const int64_t chunks = num_chunks(n);
  if (chunks <= 1) {
    while (state.status == kRunning) {
      end_param_epoch(state, epoch_chunk(point_at(state), weights, 0, n), opt,
                      history, poll);
    }
    return state;
  }
  std::vector<ParamSums> partials(chunks);
  run_team(threads_for(chunks, threads), [&](const Team& team) {
    const int64_t t = team.thread(), nt = team.size();
    const int64_t mine_from = chunks * t / nt, mine_to = chunks * (t + 1) / nt;
    // state is written only by the master thread between two barriers.
    while (state.status == kRunning) {
      const PointLossParamGrads<T> point = point_at(state);
      for (int64_t c = mine_from; c < mine_to; ++c) {
        const int64_t begin = c * kChunk;
        partials[c] =
            epoch_chunk(point, weights, begin, std::min(begin + kChunk, n));
      }
      team.barrier();
      if (team.is_main()) {
        end_param_epoch(state, pairwise_total(partials), opt, history, poll);
      }
      team.barrier();
    }
  });
  return state;
}

}  // namespace cpu
}  // namespace biasfit
