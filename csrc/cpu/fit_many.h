// K independent fits in one call, free of torch: torch_ops/fit_many_cpu.cpp
// runs it as the fit_many op (biasfit.fit_many).
//
// Each fit is the fit that fit_fused (final_bias alone, SGD) or
// fit(engine="fused") (any other trained parameters, Adam, AdamW) runs on
// that fit's points alone: the same chunks, lanes and trees (cpu/reduce.h),
// the same end of an epoch (core/fit.h's and core/fit_params.h's decide),
// so the same epochs and bits. What differs is what is kept: no history
// (unless asked for, one row a fit), only a few values a fit, so memory
// beyond the data is O(K); and a stall (biasfit/stall.py's test) is decided
// as the epochs go, from the fit's largest hidden value, not afterwards
// from its history. A fit of final_bias alone whose data fit_fused would
// regroup (cpu/plan.h: only fits of kRegroupMinPoints points or more) runs
// through cpu::train itself, so that it sums the regrouped order too.
//
// Threads take fits (blocks of them) from a shared counter; each fit runs
// on one thread, so no sum depends on the thread count.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <utility>
#include <vector>

#include "core/fit.h"
#include "core/fit_params.h"
#include "core/many.h"
#include "cpu/fit_many_lanes.h"
#include "cpu/kernels.h"
#include "cpu/many_stop.h"
#include "cpu/parallel.h"
#include "cpu/plan.h"
#include "cpu/trainer.h"
#include "cpu/trainer_params.h"

namespace biasfit {
namespace cpu {

// core/many.h's pieces (shared with the CUDA fits, cuda/kernels_many.cuh),
// by the names this file and torch_ops/ had for them here.
using biasfit::kColLr, biasfit::kColMomentum, biasfit::kColDampening,
      biasfit::kColNesterov, biasfit::kColWeightDecay, biasfit::kColMaximize,
      biasfit::kColBeta1, biasfit::kColBeta2, biasfit::kColEps,
      biasfit::kColAmsgrad, biasfit::kColEpochs, biasfit::kColTol,
      biasfit::kColRtol, biasfit::kColPatience, biasfit::kColMean,
      biasfit::kManyColumns, biasfit::bias_epoch, biasfit::ManyColumn,
      biasfit::ManyData, biasfit::ManyOut, biasfit::many_options,
      biasfit::max_with_nan;

// core/many.h's Track and, on the CPU, Ctrl-C's checks within the fit.
template <typename T>
struct ManyTrack : Track<T> {
  FitStopPoll poll;
  ManyTrack() : Track<T>(Track<T>::start()) {}
};

// One thread's buffers, kept from fit to fit.
template <typename T>
struct ManyScratch {
  std::vector<T> h, chunk_min_h;
  std::vector<T> lane_h, lane_y;  // cpu/fit_many_lanes.h's ManyPoints buffers
  std::vector<LossGrad> partials;
  std::vector<ParamSums> param_partials;
};

// Sum of chunk(begin, end) over [0, n) in deterministic_sum's chunks and
// tree, on this thread.
template <typename Sum, typename Chunk>
Sum serial_sum(int64_t n, std::vector<Sum>& partials, const Chunk& chunk) {
  const int64_t chunks = num_chunks(n);
  if (chunks <= 1) return chunk(0, n);
  partials.resize(chunks);
  for (int64_t c = 0; c < chunks; ++c) {
    partials[c] = chunk(c * kChunk, std::min((c + 1) * kChunk, n));
  }
  return pairwise_total(partials);
}

// fit_bias for a fit of kN < kLanes points: small_chunk_sum (sum_chunk's
// route for them, the same text) with its count known, so the compiler
// unrolls the points and the tree, and the whole epoch inlined (flatten):
// at the tutorial's size the calls, not the arithmetic, would cost most.
template <int kN, typename T>
[[gnu::flatten]] FitState<T> fit_bias_small(const T* x, const T* y,
                                            const Weights<T>& w, T bias,
                                            const FitOptions& o,
                                            ManyTrack<T>& track) {
  T h[kN];
  for (int i = 0; i < kN; ++i) h[i] = hidden(x[i], w);
  if (track.watch) track.max_h = max_with_nan(h, kN);
  PointLossFromHidden<T> point{h, y, T(0)};
  FitState<T> state = FitState<T>::start(bias, o.epochs);
  run_epochs(state, o, kN, track.poll, [&](const FitOptions& span) {
    bias_epoch(state, span, track, [&](T b) {
      point.bias = b;
      return small_chunk_sum(point, 0, kN);
    });
  });
  return state;
}

template <typename T, int... kN>
constexpr auto small_fits(std::integer_sequence<int, kN...>) {
  using Fn = FitState<T> (*)(const T*, const T*, const Weights<T>&, T,
                             const FitOptions&, ManyTrack<T>&);
  return std::array<Fn, sizeof...(kN)>{&fit_bias_small<kN + 1, T>...};
}

// final_bias alone with SGD: cpu::train's kStream/kHiddenOnce epochs (the
// same bits), hidden(x) once into the thread's buffer.
template <typename T>
FitState<T> fit_bias(const T* x, const T* y, int64_t n, const Weights<T>& w,
                     T bias, const FitOptions& o, ManyScratch<T>& s,
                     ManyTrack<T>& track) {
#ifndef BIASFIT_NO_SMALL_CHUNK
  static constexpr auto kSmall =
      small_fits<T>(std::make_integer_sequence<int, kLanes - 1>());
  if (n < kLanes) return kSmall[n - 1](x, y, w, bias, o, track);
#endif
  FitState<T> state = FitState<T>::start(bias, o.epochs);
  if (int64_t(s.h.size()) < n) s.h.resize(n);
  T* h = s.h.data();
  PointLossFromHidden<T> point{h, y, T(0)};
  if (n < kLanes) {
    for (int64_t i = 0; i < n; ++i) h[i] = hidden(x[i], w);
  } else {
    s.chunk_min_h.resize(num_chunks(n));
    for (int64_t c = 0; c < num_chunks(n); ++c) {
      s.chunk_min_h[c] =
          hidden_chunk(x, h, c * kChunk, std::min((c + 1) * kChunk, n), w);
    }
    point.chunk_min_h = s.chunk_min_h.data();
  }
  if (track.watch) track.max_h = max_with_nan(h, n);
  run_epochs(state, o, n, track.poll, [&](const FitOptions& span) {
    bias_epoch(state, span, track, [&](T b) {
      point.bias = b;
      return serial_sum(n, s.partials, [&](int64_t from, int64_t to) {
        return sum_chunk(point, from, to);
      });
    });
  });
  return state;
}

// final_bias alone with SGD where fit_fused would regroup (or run a plan
// forced by BIASFIT_TRAINER_PLAN): cpu::train itself, its history replayed.
template <typename T>
FitState<T> fit_bias_planned(const T* x, const T* y, int64_t n,
                             const Weights<T>& w, T bias, const FitOptions& o,
                             ManyTrack<T>& track) {
  History<T> history;
  const FitState<T> state = train(x, y, n, w, bias, o, 1, history,
                                  {track.poll.stop() ? &FitStopPoll::asked : nullptr,
                                   &track.poll});
  if (track.watch) {
    track.max_h = -std::numeric_limits<T>::infinity();
    for (int64_t i = 0; i < n; ++i) track.max_h = max_with_nan(track.max_h, hidden(x[i], w));
  }
  const int64_t seen =
      state.epoch + (state.status != kExhausted && state.status != kInterrupted);
  for (int64_t e = 0; e < seen; ++e) {
    track.record(e, history.losses[e], history.biases[e]);
    if (e < state.epoch) {
      track.stepped(e, history.biases[e],
                    e + 1 < seen ? history.biases[e + 1] : state.bias);
    }
  }
  return state;
}

// Any other fit: cpu::train_params's epochs on this thread.
template <typename T>
ParamFitState<T> fit_params_one(const T* x, const T* y, int64_t n,
                                const T* start, const ParamFitOptions& o,
                                ManyScratch<T>& s, ManyTrack<T>& track) {
  ParamFitState<T> state = ParamFitState<T>::start(start, o.epochs);
  const bool weights = (o.trained & ((1 << kNumWeights) - 1)) != 0;
  run_epochs(state, o, n, track.poll, [&](const ParamFitOptions& span) {
    const PointLossParamGrads<T> point{x, y, Weights<T>::load(state.params),
                                       state.params[kBiasIndex]};
    const ParamSums sums =
        serial_sum(n, s.param_partials, [&](int64_t b, int64_t e) {
          return epoch_chunk(point, weights, b, e);
        });
    track.record(state.epoch, reduced<T>(sums.loss, o.divide_by),
                 state.params[kBiasIndex]);
    state.decide(sums, span);
  });
  return state;
}

// Fit k, start to end, its results written to out.
template <typename T>
void fit_one(const ManyData<T>& d, int64_t k, bool plans_forced,
             ManyScratch<T>& s, const ManyOut<T>& out) {
  const int64_t begin = d.begin(k), n = d.end(k) - begin;
  const T* x = d.x + begin;
  const T* y = d.y + begin;
  const T* start = d.start_of(k);
  const ParamFitOptions o = many_options(d.settings_of(k), d.trained, d.kind, n);
  ManyTrack<T> track;
  if (out.history != nullptr) track.row = out.history + k * out.history_len;
  if (out.biases != nullptr) track.bias_row = out.biases + k * out.history_len;
  if (d.stop != nullptr && d.stop->requested()) {  // Ctrl-C: not run
    write_fit(out, k, track, start, 0, kInterrupted, -1);
    return;
  }
  T params[kNumParams];
  int64_t epoch, status, bad = -1;
  track.poll = FitStopPoll(d.stop);
  if (!out.params_route && d.trained == (int64_t(1) << kBiasIndex) && d.kind == kSgd) {
    track.watch = out.biases == nullptr && o.sgd.weight_decay == 0 && o.sgd.momentum <= 1;
    const FitOptions fo{o.sgd, o.epochs, o.tol, o.rtol, o.patience, o.divide_by};
    const Weights<T> w = Weights<T>::load(start);
    const T bias = start[kBiasIndex];
    const bool planned =
        (plans_forced || n >= kRegroupMinPoints) &&
        [&] {
          const Plan plan = plan_for(x, n, w, bias, o.epochs);
          return plan != Plan::kStream && plan != Plan::kHiddenOnce;
        }();
    const FitState<T> state = planned
                                  ? fit_bias_planned(x, y, n, w, bias, fo, track)
                                  : fit_bias(x, y, n, w, bias, fo, s, track);
    for (int p = 0; p < kNumParams; ++p) params[p] = start[p];
    params[kBiasIndex] = state.bias;
    epoch = state.epoch;
    status = state.status;
    if (status == kBiasNonFinite) bad = kBiasIndex;
  } else {
    const ParamFitState<T> state = fit_params_one(x, y, n, start, o, s, track);
    for (int p = 0; p < kNumParams; ++p) params[p] = state.params[p];
    epoch = state.epoch;
    status = state.status;
    bad = state.bad_param;
  }
  write_fit(out, k, track, params, epoch, status, bad);
  if (d.stop != nullptr) d.stop->after(track.poll.caller(), n * (out.epochs[k] + 1));
}

// Which vector lanes (cpu/fit_many_lanes.h) fit k runs in, if any: those
// of final_bias alone by plain SGD, the summed loss, no plateau stop, no
// history kept; kFew for fewer than kLanes points, kMany for more where
// fit_fused sums one chunk and never regroups (below kRegroupMinPoints,
// and no plan forced).
enum class LaneKind : int { kNone, kFew, kMany };
template <typename T>
LaneKind lane_kind(const ManyData<T>& d, int64_t k, const ManyOut<T>& out,
                 bool plans_forced) {
  const int64_t n = d.end(k) - d.begin(k);
  if (out.history != nullptr) return LaneKind::kNone;
  if (d.trained != (int64_t(1) << kBiasIndex) || d.kind != kSgd) return LaneKind::kNone;
  const double* row = d.settings_of(k);
  if (!(row[kColMomentum] == 0 && row[kColWeightDecay] == 0 && row[kColRtol] == 0 &&
        row[kColMean] == 0 && row[kColEpochs] <= double(kLaneMostEpochs<T>))) {
    return LaneKind::kNone;
  }
  if (n < kLanes) return LaneKind::kFew;
  return n < kRegroupMinPoints && !plans_forced ? LaneKind::kMany : LaneKind::kNone;
}

// The fits ks[0..count), each of n points, through run(next, done, stop):
// next hands out their starts and settings (none once Ctrl-C is seen), done
// writes their results, stop reports work and says whether to stop.
template <typename T, typename Run>
void run_lane_fits(const ManyData<T>& d, int64_t n, const int64_t* ks, int64_t count,
                   const ManyOut<T>& out, const Run& run) {
  const bool caller = d.stop != nullptr && d.stop->on_caller();
  auto stop = [&](int64_t lane_epochs) {
    return d.stop != nullptr && d.stop->after(caller, lane_epochs * n);
  };
  int64_t i = 0;
  auto next = [&](LaneFit<T>& f) {
    if (i == count || (d.stop != nullptr && d.stop->requested())) return false;
    const int64_t k = ks[i++], begin = d.begin(k);
    const T* start = d.start_of(k);
    const double* row = d.settings_of(k);  // many_options's, the few a lane reads
    f = LaneFit<T>{k, d.x + begin, d.y + begin, Weights<T>::load(start),
                   start[kBiasIndex], T(-row[kColLr]), row[kColMaximize] != 0,
                   int64_t(row[kColEpochs]), row[kColTol]};
    return true;
  };
  // A lane's fit has no history and its stall is decided: write_fit with a
  // Track that holds only the last loss.
  auto done = [&](const LaneResult<T>& r) {
    T params[kNumParams];
    std::copy_n(d.start_of(r.id), kBiasIndex, params);
    params[kBiasIndex] = r.bias;
    Track<T> track = Track<T>::start();
    track.last_loss = r.loss;
    write_fit(out, r.id, track, params, r.epoch, r.status,
              r.status == kBiasNonFinite ? kBiasIndex : -1);
  };
  run(next, done, stop);
}

// The fits ks[0..count), each of kN < kLanes points.
template <int kN, typename T>
void fit_lanes(const ManyData<T>& d, const int64_t* ks, int64_t count,
               const ManyOut<T>& out) {
  run_lane_fits(d, kN, ks, count, out, [&](const auto& next, const auto& done, const auto& stop) {
    FewPoints<kN, kLaneGroups, T> points;
    on_best_isa([&]() BIASFIT_INLINE_LAMBDA {
      run_fit_lanes<kLaneGroups, T>(points, next, done, stop);
    });
  });
}

// The fits ks[0..count), each of n points (LaneKind::kMany).
template <typename T>
void fit_lanes_many(const ManyData<T>& d, int64_t n, const int64_t* ks, int64_t count,
                    const ManyOut<T>& out, ManyScratch<T>& s) {
  constexpr int kG = kManyLaneGroups;
  s.lane_h.resize(size_t(kG * n * kFitLanes<T>));
  s.lane_y.resize(size_t(kG * n * kFitLanes<T>));
  run_lane_fits(d, n, ks, count, out, [&](const auto& next, const auto& done, const auto& stop) {
    ManyPoints<kG, T> points{n, s.lane_h.data(), s.lane_y.data()};
    on_best_isa([&]() BIASFIT_INLINE_LAMBDA {
      run_fit_lanes<kG, T>(points, next, done, stop);
    });
  });
}

template <typename T, int... kN>
constexpr auto lane_runs(std::integer_sequence<int, kN...>) {
  using Fn = void (*)(const ManyData<T>&, const int64_t*, int64_t,
                      const ManyOut<T>&);
  return std::array<Fn, sizeof...(kN)>{&fit_lanes<kN + 1, T>...};
}

// Fits per block a thread takes at once: small enough to share out fits of
// different lengths, large enough that the counter is not contended.
inline int64_t many_block(int64_t fits, int threads) {
  return std::clamp<int64_t>(fits / (int64_t(threads) * 64), 1, 256);
}

// Lane fits a thread gathers before it runs them (fewer at its last block).
constexpr int64_t kLaneBatch = 512;

// Every fit of d, on up to `threads` threads.
template <typename T>
void fit_many(const ManyData<T>& d, const ManyOut<T>& out, int threads) {
  const bool plans_forced = std::getenv("BIASFIT_TRAINER_PLAN") != nullptr;
  const int64_t block = many_block(d.fits, threads);
  const int64_t blocks = (d.fits + block - 1) / block;
  std::atomic<int64_t> next{0};
  static constexpr auto kLaneRuns =
      lane_runs<T>(std::make_integer_sequence<int, kLanes - 1>());
  run_team(threads_for(blocks, threads), [&](const Team&) {
    ManyScratch<T> scratch;
    // Lane fits wait here until there are enough to fill the lanes many
    // times over (or no more blocks): blocks stay small, for sharing out
    // fits of different lengths, and lanes stay full.
    std::vector<int64_t> by_size[kLanes];  // LaneKind::kFew fits of each size
    std::vector<std::pair<int64_t, int64_t>> many;  // LaneKind::kMany fits: (n, k)
    std::vector<int64_t> ks;
    auto run_few = [&](int n) {
      kLaneRuns[n - 1](d, by_size[n].data(), int64_t(by_size[n].size()), out);
      by_size[n].clear();
    };
    auto run_many = [&]() {
      // Fits of one size share lanes; a size with fewer fits than a
      // group's lanes runs them one by one.
      std::sort(many.begin(), many.end());
      for (size_t i = 0; i < many.size();) {
        size_t j = i;
        ks.clear();
        while (j < many.size() && many[j].first == many[i].first) ks.push_back(many[j++].second);
        if (ks.size() >= size_t(kFitLanes<T>)) {
          fit_lanes_many(d, many[i].first, ks.data(), int64_t(ks.size()), out, scratch);
        } else {
          for (int64_t k : ks) fit_one(d, k, plans_forced, scratch, out);
        }
        i = j;
      }
      many.clear();
    };
    for (int64_t b; (b = next.fetch_add(1, std::memory_order_relaxed)) < blocks;) {
      const int64_t to = std::min(d.fits, (b + 1) * block);
      for (int64_t k = b * block; k < to; ++k) {
#ifndef BIASFIT_NO_FIT_LANES
        const int64_t n = d.end(k) - d.begin(k);
        const LaneKind lanes = lane_kind(d, k, out, plans_forced);
        if (lanes == LaneKind::kFew) {
          by_size[n].push_back(k);
          if (by_size[n].size() >= size_t(kLaneBatch)) run_few(int(n));
          continue;
        }
        if (lanes == LaneKind::kMany) {
          many.emplace_back(n, k);
          if (many.size() >= size_t(kLaneBatch)) run_many();
          continue;
        }
#endif
        fit_one(d, k, plans_forced, scratch, out);
      }
    }
    for (int n = 1; n < kLanes; ++n) {
      if (!by_size[n].empty()) run_few(n);
    }
    run_many();
  });
}

}  // namespace cpu
}  // namespace biasfit
