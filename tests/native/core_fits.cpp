// The CPU trainers (cpu/trainer.h's train, cpu/trainer_params.h's
// train_params) on fits that cover every plan and dtype, free of torch, so
// that one source runs natively and, cross-compiled, under qemu-aarch64
// (tests/test_native_portable.py). Every result is printed as hex floats
// (%a) and as the bits of each epoch's loss and bias (a checksum), so two
// runs agree only if every bit does. Each fit also runs on 2 and 3 threads,
// which must give the same bits as 1: a difference prints a MISMATCH line
// and the exit status is 1.
//
// The data come from an integer LCG (the same on every machine and C
// library, unlike rand()), as multiples of 2^-23: exact in float and double.
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/trainer.h"
#include "cpu/trainer_params.h"

namespace {

using namespace biasfit;
using cpu::History;

const double kTutorialWeights[6] = {1.7, -0.85, -40.8, 12.6, 0.0, 2.7};
int failures = 0;

struct Lcg {  // Knuth's MMIX constants; the top 31 bits of the state
  uint64_t state;
  uint32_t next() {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return uint32_t(state >> 33);
  }
  double unit() { return double(next() >> 8) * 0x1p-23; }  // [0, 1)
};

template <typename T>
struct Data {
  std::vector<T> x, y;
};

template <typename T>
Data<T> make_data(int64_t n, uint64_t seed) {
  Lcg lcg{seed};
  Data<T> d;
  for (int64_t i = 0; i < n; ++i) {
    d.x.push_back(T(lcg.unit()));
    d.y.push_back(T(lcg.unit()));
  }
  return d;
}

template <typename T>
Data<T> tutorial_data() {
  return {{T(0.0), T(0.5), T(1.0)}, {T(0.0), T(1.0), T(0.0)}};
}

template <typename T>
Weights<T> tutorial_weights() {
  T w[6];
  for (int p = 0; p < 6; ++p) w[p] = T(kTutorialWeights[p]);
  return Weights<T>::load(w);
}

uint64_t bits_of(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}
uint64_t bits_of(double v) {
  uint64_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

// FNV-1a over the bits of every recorded epoch's loss and bias.
template <typename T>
uint64_t history_checksum(const History<T>& h, int64_t recorded) {
  uint64_t sum = 1469598103934665603ULL;
  for (int64_t e = 0; e < recorded && e < int64_t(h.losses.size()); ++e) {
    for (uint64_t b : {bits_of(h.losses[e]), bits_of(h.biases[e])}) {
      sum = (sum ^ b) * 1099511628211ULL;
    }
  }
  return sum;
}

template <typename T>
std::string describe(int64_t status, int64_t epoch, const T* values, int count,
                     const History<T>& h) {
  // Epochs whose loss was recorded: every one run, plus the stopping one.
  const int64_t recorded = status == kExhausted ? epoch : epoch + 1;
  char line[1024];
  int at = std::snprintf(line, sizeof line, "status %" PRId64 " epoch %" PRId64,
                         status, epoch);
  for (int p = 0; p < count; ++p) {
    at += std::snprintf(line + at, sizeof line - at, " %a", double(values[p]));
  }
  const T last = recorded > 0 ? h.losses[recorded - 1] : T(0);
  std::snprintf(line + at, sizeof line - at,
                " last_loss %a bits %" PRIx64 " history %016" PRIx64,
                double(last), bits_of(last), history_checksum(h, recorded));
  return line;
}

// Runs fit(threads) on 1, 2 and 3 threads; prints the first, and a
// MISMATCH line for any other that differs.
template <typename Fit>
void report(const std::string& name, const Fit& fit) {
  const std::string one = fit(1);
  std::printf("%s: %s\n", name.c_str(), one.c_str());
  for (int threads : {2, 3}) {
    const std::string other = fit(threads);
    if (other != one) {
      std::printf("MISMATCH %s on %d threads: %s\n", name.c_str(), threads,
                  other.c_str());
      ++failures;
    }
  }
}

void force_plan(const char* plan) {
  if (plan == nullptr) {
    unsetenv("BIASFIT_TRAINER_PLAN");
  } else {
    setenv("BIASFIT_TRAINER_PLAN", plan, 1);
  }
}

// cpu/trainer.h's train: final_bias alone, SGD.
template <typename T>
void bias_fit(const std::string& name, const Data<T>& d, const Weights<T>& w,
              double bias, const FitOptions& opt, const char* plan) {
  report(name, [&](int threads) {
    force_plan(plan);
    History<T> h;
    const FitState<T> s = cpu::train(d.x.data(), d.y.data(), int64_t(d.x.size()),
                                     w, T(bias), opt, threads, h);
    force_plan(nullptr);
    return describe(s.status, s.epoch, &s.bias, 1, h);
  });
}

// cpu/trainer_params.h's train_params: the trained parameters of `trained`.
template <typename T>
void params_fit(const std::string& name, const Data<T>& d, double bias,
                const ParamFitOptions& opt) {
  T start[kNumParams];
  for (int p = 0; p < 6; ++p) start[p] = T(kTutorialWeights[p]);
  start[kBiasIndex] = T(bias);
  report(name, [&](int threads) {
    History<T> h;
    const ParamFitState<T> s = cpu::train_params(
        d.x.data(), d.y.data(), int64_t(d.x.size()), start, opt, threads, h);
    return describe(s.status, s.epoch, s.params, kNumParams, h);
  });
}

FitOptions sgd(double lr, int64_t epochs, double tol) {
  return {SgdOptions{lr, 0.0, 0.0, 0.0, false, false}, epochs, tol};
}

template <typename T>
void fits(const char* dtype) {
  const std::string t = dtype;
  const Weights<T> w = tutorial_weights<T>();
  // The tutorial: 3 points, lr 0.1, until the loss is under 1e-4.
  bias_fit("tutorial " + t, tutorial_data<T>(), w, 0.0, sgd(0.1, 100, 1e-4),
           nullptr);

  // Every plan, forced, on data of 3 chunks (the threads' split and the
  // pairwise tree) and of one chunk with a tail. Bias -8: the output unit
  // off for about half the points (what regrouping skips); +1: on for all
  // (what the closed form closes, until the fit turns some off).
  const char* plans[] = {nullptr, "stream", "once", "regroup", "closed"};
  for (int64_t n : {int64_t(40000), int64_t(5003)}) {
    const Data<T> d = make_data<T>(n, 25 + uint64_t(n));
    for (double bias : {-8.0, 1.0}) {
      for (const char* plan : plans) {
        char name[128];
        std::snprintf(name, sizeof name, "bias %s n=%" PRId64 " from %g plan %s",
                      dtype, n, bias, plan ? plan : "auto");
        bias_fit(name, d, w, bias, sgd(0.25 / double(n), 30, 0.0), plan);
      }
    }
  }

  // Every parameter: SGD with momentum, Adam, AdamW with amsgrad.
  const Data<T> d = make_data<T>(40000, 7);
  const int64_t all = (1 << kNumParams) - 1;
  const SgdOptions plain{0.1, 0.0, 0.0, 0.0, false, false};
  const AdamOptions no_adam{0.001, 0.9, 0.999, 1e-8, 0.0, false, false, false};
  params_fit("params tutorial sgd " + t, tutorial_data<T>(), 0.0,
             {all, kSgd, {0.01, 0.9, 0.0, 0.0, true, false}, no_adam, 50, 0.0});
  params_fit("params sgd " + t, d, -8.0,
             {all, kSgd, {1e-7, 0.9, 0.0, 1e-4, false, false}, no_adam, 20, 0.0});
  params_fit("params adam " + t, d, -8.0,
             {all, kAdam, plain, {0.01, 0.9, 0.999, 1e-8, 0.0, false, false, false},
              20, 0.0});
  params_fit("params adamw " + t, d, -8.0,
             {all, kAdamW, plain, {0.01, 0.9, 0.999, 1e-8, 0.01, true, false, true},
              20, 0.0});
  params_fit("params bias only " + t, d, -8.0,
             {int64_t(1) << kBiasIndex, kSgd, {0.25 / 40000, 0.0, 0.0, 0.0, false, false},
              no_adam, 30, 0.0});
}

}  // namespace

int main() {
  fits<float>("float32");
  fits<double>("float64");
  if (failures > 0) {
    std::printf("%d results differ with the thread count\n", failures);
    return 1;
  }
  return 0;
}
