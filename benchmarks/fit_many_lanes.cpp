// How many groups of vector lanes fit_many's lanes should run side by side
// (csrc/cpu/fit_many_lanes.h's kLaneGroups): K tutorial fits of final_bias
// (the tutorial's 3 points, a start bias in [-2, 2] each, SGD lr 0.1, stop
// at loss < 1e-4 or 100 epochs) on one thread, for 1, 2, 4 and 8 groups,
// interleaved; prints each one's median rate. Torch-free, from the repo root:
//
//   g++ -std=c++17 -O3 -ffp-contract=off -fno-trapping-math -Icsrc \
//       benchmarks/fit_many_lanes.cpp -o /tmp/fit_many_lanes && /tmp/fit_many_lanes 100000
//
// Every choice must give the same fits (the program checks) before its time
// counts. Results: benchmarks/results/many/results.md.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "cpu/fit_many_lanes.h"

using namespace biasfit;
using namespace biasfit::cpu;

struct Fits {
  std::vector<float> x, y, b0, bias, loss;
  std::vector<int64_t> epochs, status;
};

template <int kG>
double run(Fits& f, int64_t K) {
  const Weights<float> w{1.7f, -0.85f, -40.8f, 12.6f, 0.0f, 2.7f};
  int64_t i = 0;
  auto next = [&](LaneFit<float>& lf) {
    if (i == K) return false;
    lf = LaneFit<float>{i, &f.x[3 * i], &f.y[3 * i], w, f.b0[i], -0.1f, false, 100, 1e-4};
    ++i;
    return true;
  };
  auto done = [&](const LaneResult<float>& r) {
    f.bias[r.id] = r.bias, f.loss[r.id] = r.loss;
    f.epochs[r.id] = r.epoch, f.status[r.id] = r.status;
  };
  const auto t0 = std::chrono::steady_clock::now();
  FewPoints<3, kG, float> points;
  auto never = [](int64_t) { return false; };
  on_best_isa([&]() BIASFIT_INLINE_LAMBDA { run_fit_lanes<kG, float>(points, next, done, never); });
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int main(int argc, char** argv) {
  const int64_t K = argc > 1 ? std::atoll(argv[1]) : 100000;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 7;
  Fits f;
  f.x.resize(3 * K), f.y.resize(3 * K), f.b0.resize(K);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-2, 2);
  for (int64_t k = 0; k < K; ++k) {
    f.x[3 * k] = 0, f.x[3 * k + 1] = 0.5f, f.x[3 * k + 2] = 1;
    f.y[3 * k] = 0, f.y[3 * k + 1] = 1, f.y[3 * k + 2] = 0;
    f.b0[k] = u(rng);
  }
  constexpr int kChoices = 4;
  const int groups[kChoices] = {1, 2, 4, 8};
  double (*runs[kChoices])(Fits&, int64_t) = {&run<1>, &run<2>, &run<4>, &run<8>};
  std::vector<double> times[kChoices];
  Fits first;
  double epochs = 0;
  for (int r = 0; r < rounds; ++r) {
    for (int c = 0; c < kChoices; ++c) {
      Fits out = f;
      out.bias.assign(K, 0), out.loss.assign(K, 0);
      out.epochs.assign(K, -1), out.status.assign(K, -1);
      times[c].push_back(runs[c](out, K));
      if (r == 0 && c == 0) {
        first = out;
        for (int64_t e : out.epochs) epochs += double(e);
      } else if (out.bias != first.bias || out.epochs != first.epochs ||
                 out.status != first.status) {
        std::printf("%d groups give other fits\n", groups[c]);
        return 1;
      }
    }
  }
  std::printf("K = %lld tutorial fits, %.2f epochs a fit, 1 thread, median of %d:\n",
              (long long)K, epochs / K, rounds);
  for (int c = 0; c < kChoices; ++c) {
    std::sort(times[c].begin(), times[c].end());
    const double t = times[c][times[c].size() / 2];
    std::printf("  %d group(s) of %d lanes: %.3g fits/s, %.2f ns a fit-epoch\n", groups[c],
                kFitLanes<float>, K / t, t / epochs * 1e9);
  }
  return 0;
}
