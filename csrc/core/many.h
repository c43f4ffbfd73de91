// fit_many's pieces that its CPU fits (cpu/fit_many.h) and its CUDA fits
// (cuda/kernels_many.cuh) both need, written once: the settings table's
// columns and a row's options, the data and output pointers, and what a fit
// keeps instead of a history (Track: the last loss and the stall test).
// Free of torch; host and device (BIASFIT_HD).
#pragma once

#include <cmath>
#include <cstdint>

#include "core/fit.h"
#include "core/fit_params.h"
#include "core/network.h"

namespace biasfit {

namespace cpu {
class ManyStop;  // cpu/many_stop.h: Ctrl-C, the CPU's fits' alone
}  // namespace cpu

// The status of a fit that stalled (biasfit/stall.py), beside core/fit.h's
// FitStatus values; biasfit/many.py reads it as STALLED.
constexpr int64_t kStalled = 7;

// The columns of the settings table, float64, one row shared by every fit
// or one row a fit: SGD's, Adam's, the epochs and fit's stop rules (tol, the
// plateau's rtol and patience, and kColMean: 1 for the mean loss, whose
// divisor is each fit's own point count). A flag column is 0 or 1.
enum ManyColumn : int {
  kColLr = 0, kColMomentum, kColDampening, kColNesterov, kColWeightDecay,
  kColMaximize, kColBeta1, kColBeta2, kColEps, kColAmsgrad, kColEpochs,
  kColTol, kColRtol, kColPatience, kColMean, kManyColumns
};

// A row's options for a fit of n points.
BIASFIT_HD ParamFitOptions many_options(const double* row, int64_t trained,
                                        int64_t kind, int64_t n) {
  const double lr = row[kColLr], wd = row[kColWeightDecay];
  const bool maximize = row[kColMaximize] != 0;
  return ParamFitOptions{
      trained, kind,
      SgdOptions{lr, row[kColMomentum], row[kColDampening], wd,
                 row[kColNesterov] != 0, maximize},
      AdamOptions{lr, row[kColBeta1], row[kColBeta2], row[kColEps], wd,
                  row[kColAmsgrad] != 0, maximize, kind == kAdamW},
      int64_t(row[kColEpochs]), row[kColTol], row[kColRtol],
      int64_t(row[kColPatience]), row[kColMean] != 0 ? double(n) : 1.0};
}

// Whether a fit trains final_bias alone by SGD (fit_fused's fit): its
// hidden layer is fixed, and it may stall.
BIASFIT_HD bool bias_only_sgd(int64_t trained, int64_t kind) {
  return trained == (int64_t(1) << kBiasIndex) && kind == kSgd;
}

// The fits' data: fit k's points are [offsets[k], offsets[k + 1]), or,
// without offsets, [k n, (k + 1) n). start: rows of the seven starting
// values (one row for every fit, or one a fit); settings: rows of
// kManyColumns (likewise).
template <typename T>
struct ManyData {
  const T* x;
  const T* y;
  const int64_t* offsets;  // K + 1 values, or null
  int64_t n;               // points a fit without offsets
  int64_t fits;
  const T* start;
  int64_t start_rows;
  const double* settings;
  int64_t settings_rows;
  int64_t trained;  // bit p: parameter p trains (core/fit_params.h)
  int64_t kind;     // OptimizerKind
  cpu::ManyStop* stop = nullptr;  // Ctrl-C (cpu/many_stop.h), or null: never

  BIASFIT_HD int64_t begin(int64_t k) const { return offsets ? offsets[k] : k * n; }
  BIASFIT_HD int64_t end(int64_t k) const { return offsets ? offsets[k + 1] : (k + 1) * n; }
  BIASFIT_HD const T* start_of(int64_t k) const {
    return start + kNumParams * (start_rows == 1 ? 0 : k);
  }
  BIASFIT_HD const double* settings_of(int64_t k) const {
    return settings + kManyColumns * (settings_rows == 1 ? 0 : k);
  }
};

// What each fit gives: its seven final values, its last evaluated loss
// (NaN if it ran no epoch), the epoch it stopped at, its status and the
// parameter that became inf/NaN (-1: none); and, if history is not null,
// its evaluated epochs' losses in a row of history_len, NaN after them.
template <typename T>
struct ManyOut {
  T* params;
  T* loss;
  int64_t* epochs;
  int8_t* status;
  int8_t* bad_param;
  T* history;
  int64_t history_len;
  // With history: each fit's evaluated epochs' final_bias in a row of
  // history_len, NaN after them, and no stall decided: the fits as the ops
  // fit_sgd and fit_params give them (their vmap, biasfit/vmap_fits.py).
  T* biases = nullptr;
  // Every fit through fit_params_one, as the fit_params op runs it (its
  // losses' bits can differ from fit_bias's for final_bias alone by SGD).
  bool params_route = false;
};

// What a fit keeps of its epochs instead of a history: the last loss, and
// biasfit/stall.py's stall test as the epochs go. A fit stalls at the first
// epoch e whose bias turns every unit off (fl(max h + b_e) <= 0) and whose
// step does not go up (b_{e+1} <= b_e), if it then runs out of epochs with a
// last step that did not go up; it ends there: epoch e, bias b_{e+1}, loss
// of epoch e.
// A plain aggregate (a CUDA team keeps one in shared memory): start() makes
// the first one.
template <typename T>
struct Track {
  T* row;          // the fit's history row, or null
  T* bias_row;     // its biases' row (ManyOut::biases), or null
  bool watch;      // whether it can stall: bias-only SGD, may_stall
  T max_h;         // its largest hidden value (NaN if one is NaN)
  T last_loss;     // NaN until an epoch ran
  T last_before;   // the bias its last step started from
  int64_t stall_epoch;  // -1: none yet
  T stall_bias, stall_loss;

  BIASFIT_HD static Track start(T* row = nullptr, bool watch = false, T max_h = T(0)) {
    return {row, nullptr, watch, max_h, T(NAN), T(0), -1, T(0), T(0)};
  }

  // bias: the final_bias the epoch's loss was taken at (kept in raw
  // fits' bias_row, which come with a history row).
  BIASFIT_HD void record(int64_t epoch, T loss, T bias) {
    last_loss = loss;
    if (row != nullptr) {
      row[epoch] = loss;
      if (bias_row != nullptr) bias_row[epoch] = bias;
    }
  }
  BIASFIT_HD void stepped(int64_t epoch, T before, T after) {
    last_before = before;
    if (watch && stall_epoch < 0 && add_rn(max_h, before) <= T(0) &&
        after <= before) {
      stall_epoch = epoch;
      stall_bias = after;
      stall_loss = last_loss;
    }
  }
  // Whether a fit that ended with `status` at bias `final` stalled.
  BIASFIT_HD bool stalled(int64_t status, T final) const {
    return watch && status == kExhausted && stall_epoch >= 0 &&
           final <= last_before;
  }
};

// Whether a fit of final_bias alone by SGD with these options can stall
// (Track::watch): biasfit/stall.py's may_stall.
BIASFIT_HD bool may_stall(const SgdOptions& o) {
  return o.weight_decay == 0 && o.momentum <= 1;
}

// torch's max over hidden values: NaN wins. (The running form, for loops
// that see one value at a time.)
template <typename T>
BIASFIT_HD T max_with_nan(T m, T h) {
  return (h > m || h != h) ? h : m;
}
template <typename T>
BIASFIT_HD T max_with_nan(const T* h, int64_t n) {
  T m = -T(INFINITY);
  for (int64_t i = 0; i < n; ++i) m = max_with_nan(m, h[i]);
  return m;
}

// One epoch of a fit of final_bias alone, from hidden h, and its end.
template <typename T, typename Sums>
BIASFIT_HD void bias_epoch(FitState<T>& state, const FitOptions& o,
                           Track<T>& track, const Sums& sums_at) {
  const LossGrad sums = sums_at(state.bias);
  const int64_t epoch = state.epoch;
  const T before = state.bias;
  track.record(epoch, reduced<T>(sums.loss, o.divide_by), before);
  state.decide(sums, o);
  if (state.epoch > epoch) track.stepped(epoch, before, state.bias);
}

// What a fit reports once it ended (fit k of out): its seven values, its
// status and epoch with Track's stall applied, and its history row's tail.
template <typename T>
BIASFIT_HD void write_fit(const ManyOut<T>& out, int64_t k, const Track<T>& track,
                          const T* params, int64_t epoch, int64_t status,
                          int64_t bad) {
  T* to = out.params + kNumParams * k;
  for (int p = 0; p < kNumParams; ++p) to[p] = params[p];
  T loss = track.last_loss;
  if (track.stalled(status, params[kBiasIndex])) {
    status = kStalled;
    epoch = track.stall_epoch;
    to[kBiasIndex] = track.stall_bias;
    loss = track.stall_loss;
  }
  out.loss[k] = loss;
  out.epochs[k] = epoch;
  out.status[k] = int8_t(status);
  out.bad_param[k] = int8_t(bad);
  const int64_t seen = epoch + (status != kExhausted && status != kInterrupted);
  T* const rows[2] = {track.row, track.bias_row};
  for (T* row : rows) {
    if (row == nullptr) continue;
    for (int64_t e = seen < out.history_len ? seen : out.history_len;
         e < out.history_len; ++e) {
      row[e] = T(NAN);
    }
  }
}

}  // namespace biasfit
