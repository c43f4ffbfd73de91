// Runs biasfit's CUDA ops on the CPU: csrc/cuda/launch.h's host sequences,
// unchanged, over the emulation (cuda_emu.h, emu_launcher.h). Driven by
// tests/emu_harness.py, one op a process:
//
//   harness OP dir=D dtype=f32|f64 key=value...
//
// Arrays come from and go to raw files in D (a.bin, b.bin in; out_*.bin);
// a view of a.bin is a_off elements in with a step of a_step (b likewise),
// from a 64-byte aligned start. Scalars are C hex floats (Python's
// float.hex()). Prints what the host sequence did: "launches=L polls=P".
#include "cuda_emu.h"
#include "emu_launcher.h"
#include "misuse_kernels.h"

#include <sys/mman.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "cuda/launch.h"
#include "cuda/launch_batched.h"

namespace {

using biasfit::FitOptions;
using biasfit::LossGrad;
using cuda_emu::EmuLauncher;
using cuda_emu::fail;
namespace bc = biasfit::cuda;

struct Args {
  std::map<std::string, std::string> kv;
  std::string get(const std::string& k) const {
    const auto it = kv.find(k);
    if (it == kv.end()) fail("harness: missing argument %s", k.c_str());
    return it->second;
  }
  std::string get(const std::string& k, const std::string& dflt) const {
    const auto it = kv.find(k);
    return it == kv.end() ? dflt : it->second;
  }
  int64_t i(const std::string& k, int64_t dflt = 0) const {
    return std::strtoll(get(k, std::to_string(dflt)).c_str(), nullptr, 10);
  }
  double d(const std::string& k) const { return std::strtod(get(k).c_str(), nullptr); }
};

// A file's bytes in 64-byte aligned memory that lives to the end.
char* read_file(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) fail("harness: cannot open %s", path.c_str());
  std::fseek(f, 0, SEEK_END);
  const long size = std::ftell(f);
  std::fseek(f, 0, SEEK_SET);
  char* p = static_cast<char*>(std::aligned_alloc(64, size_t(size) / 64 * 64 + 64));
  if (std::fread(p, 1, size_t(size), f) != size_t(size)) fail("harness: short read");
  std::fclose(f);
  return p;
}

void write_file(const std::string& path, const void* p, size_t bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr || std::fwrite(p, 1, bytes, f) != bytes) {
    fail("harness: cannot write %s", path.c_str());
  }
  std::fclose(f);
}

template <typename T>
bc::Inputs<T> inputs(const Args& a, const std::string& dir) {
  const T* x = reinterpret_cast<const T*>(read_file(dir + "/a.bin")) + a.i("a_off");
  const T* y = reinterpret_cast<const T*>(read_file(dir + "/b.bin")) + a.i("b_off");
  return {x, y, a.i("a_step", 1), a.i("b_step", 1), a.i("n")};
}

template <typename T>
void weights_and_bias(const Args& a, T* w, T* bias) {
  std::string s = a.get("w");
  for (int k = 0; k < 6; ++k) {
    char* end = nullptr;
    w[k] = T(std::strtod(s.c_str(), &end));
    s = *end == ',' ? std::string(end + 1) : std::string();
  }
  *bias = T(a.d("bias"));
}

FitOptions fit_options(const Args& a) {
  // rtol, patience, divide_by: the plateau stop and the mean (defaults: off, sum).
  return {{a.d("lr"), a.d("momentum"), a.d("dampening"), a.d("weight_decay"),
           a.i("nesterov") != 0, a.i("maximize") != 0},
          a.i("epochs"),
          a.d("tol"),
          std::strtod(a.get("rtol", "0").c_str(), nullptr),
          a.i("patience"),
          std::strtod(a.get("divide_by", "1").c_str(), nullptr)};
}

// The ops of every gradient. out.bin: loss_grads [loss, 6 weight grads,
// bias grad] in T (0 where not asked); loss_grads_sums the 8 float64 sums;
// predict_grads [6 weight grads, bias grad] in T. out_dy.bin, out_dx.bin:
// the per-point gradients where asked (needs, core/network.h's GradNeeds bits).
template <typename T>
void run_grads_op(const std::string& op, const Args& a, EmuLauncher& l,
                  const T* w, const T* bias) {
  const std::string dir = a.get("dir");
  const bc::Inputs<T> in = inputs<T>(a, dir);
  const int64_t needs = a.i("needs", biasfit::kNeedAll);
  std::vector<T> out(8, T(0)), dy(size_t(in.n), T(0)), dx(size_t(in.n), T(0));
  T* want_dy = needs & biasfit::kNeedLabels ? dy.data() : nullptr;
  T* want_dx = needs & biasfit::kNeedInputs ? dx.data() : nullptr;
  if (op == "loss_grads") {
    T* wg = needs & biasfit::kNeedWeights ? &out[1] : nullptr;
    bc::loss_grads<T>(l, in, w, bias, {&out[0], wg, &out[7], want_dy, want_dx});
  } else if (op == "predict_grads") {
    T* wg = needs & biasfit::kNeedWeights ? &out[0] : nullptr;
    bc::predict_grads<T>(l, in, w, bias, wg, &out[6], want_dx);
    out.resize(7);
  } else {
    double sums[8];
    bc::loss_grads_sums<T>(l, in, w, bias, sums);
    write_file(dir + "/out.bin", sums, sizeof sums);
    return;
  }
  write_file(dir + "/out.bin", out.data(), sizeof(T) * out.size());
  if (want_dy != nullptr) write_file(dir + "/out_dy.bin", dy.data(), sizeof(T) * dy.size());
  if (want_dx != nullptr) write_file(dir + "/out_dx.bin", dx.data(), sizeof(T) * dx.size());
}

// fit_params from params p (7 hex floats), as the op's arguments.
template <typename T>
void run_fit_params(const Args& a, EmuLauncher& l) {
  const std::string dir = a.get("dir");
  const bc::Inputs<T> in = inputs<T>(a, dir);
  T start[7];
  std::string s = a.get("p");
  for (int k = 0; k < 7; ++k) {
    char* end = nullptr;
    start[k] = T(std::strtod(s.c_str(), &end));
    s = *end == ',' ? std::string(end + 1) : std::string();
  }
  const int64_t kind = a.i("kind");
  const biasfit::ParamFitOptions opt{
      a.i("trained"), kind,
      {a.d("lr"), a.d("momentum"), a.d("dampening"), a.d("weight_decay"),
       a.i("nesterov") != 0, a.i("maximize") != 0},
      {a.d("lr"), a.d("beta1"), a.d("beta2"), a.d("eps"), a.d("weight_decay"),
       a.i("amsgrad") != 0, a.i("maximize") != 0, kind == biasfit::kAdamW},
      a.i("epochs"), a.d("tol")};
  std::vector<T> losses(size_t(opt.epochs)), biases(size_t(opt.epochs));
  T params[7] = {};
  int64_t info[3] = {-2, -2, -2};
  bc::fit_params<T>(l, in, start, opt, {losses.data(), biases.data(), params, info});
  write_file(dir + "/out_losses.bin", losses.data(), sizeof(T) * losses.size());
  write_file(dir + "/out_biases.bin", biases.data(), sizeof(T) * biases.size());
  write_file(dir + "/out_params.bin", params, sizeof params);
  write_file(dir + "/out_info.bin", info, sizeof info);
}

// The batched ops (cuda/launch_batched.h): a.bin [*, n], b.bin [*, n],
// w.bin [*, 6], bias.bin [*] in T, row k of each at k * its *_row elements
// (0: shared); `fits` fits. out.bin: predict [fits, n]; loss and
// predict_bias_grad [fits, 2] (loss, grad) in T; loss_sums [fits, 2] and
// loss_grads_sums [fits, 8] in float64; loss_grads [fits, 8] (loss, 6
// weight grads, bias grad) and predict_grads [fits, 7] in T, 0 where not
// asked; out_dy.bin, out_dx.bin [fits, n] where asked (needs).
template <typename T>
void run_batched(const std::string& op, const Args& a, EmuLauncher& l) {
  const std::string dir = a.get("dir");
  auto file = [&](const char* name) {
    return reinterpret_cast<const T*>(read_file(dir + "/" + name));
  };
  const int64_t fits = a.i("fits"), n = a.i("n");
  const size_t K = size_t(fits), KN = size_t(fits * n);
  const bc::BatchInputs<T> in{file("a.bin"), file("b.bin"), a.i("a_row"), a.i("b_row"),
                              n, file("w.bin"), a.i("w_row"), file("bias.bin"),
                              a.i("bias_row")};
  const int64_t needs = a.i("needs", biasfit::kNeedAll);
  std::vector<T> dy(KN), dx(KN);
  T* want_dy = needs & biasfit::kNeedLabels ? dy.data() : nullptr;
  T* want_dx = needs & biasfit::kNeedInputs ? dx.data() : nullptr;
  auto write = [&](const char* name, const auto& v) {
    write_file(dir + "/" + name, v.data(), sizeof(v[0]) * v.size());
  };
  if (op == "batched_predict") {
    std::vector<T> out(KN);
    bc::batched_predict<T>(l, in, fits, out.data());
    write("out.bin", out);
  } else if (op == "batched_loss" || op == "batched_predict_bias_grad") {
    std::vector<T> out(2 * K, T(0));
    if (op == "batched_loss") {
      bc::batched_sum_points<bc::LossPoint<T>>(
          l, in, fits, bc::LossRows<T>{out.data(), out.data() + 1, 2});
    } else {
      std::vector<T> grad(K);
      bc::batched_sum_points<bc::BiasGradPoint<T>>(l, in, fits,
                                                   bc::GradRows<T>{grad.data()});
      for (size_t k = 0; k < K; ++k) out[2 * k + 1] = grad[k];  // (0, grad)
    }
    write("out.bin", out);
  } else if (op == "batched_loss_sums" || op == "batched_loss_grads_sums") {
    const bool all = op == "batched_loss_grads_sums";
    std::vector<double> out((all ? 8 : 2) * K);
    if (all) {
      bc::batched_sum_points<bc::LossGradsPoint<T>>(l, in, fits,
                                                    bc::ParamSumsRows{out.data()},
                                                    bc::PointGrads<T>{nullptr, nullptr});
    } else {
      bc::batched_sum_points<bc::LossPoint<T>>(
          l, in, fits, bc::LossRows<double>{out.data(), out.data() + 1, 2});
    }
    write("out.bin", out);
  } else if (op == "batched_loss_grads") {
    std::vector<T> loss(K), wg(6 * K, T(0)), bg(K), out;
    bc::batched_loss_grads<T>(l, in, fits, loss.data(),
                              needs & biasfit::kNeedWeights ? wg.data() : nullptr,
                              bg.data(), want_dy, want_dx);
    for (int64_t k = 0; k < fits; ++k) {
      out.push_back(loss[size_t(k)]);
      out.insert(out.end(), wg.begin() + 6 * k, wg.begin() + 6 * k + 6);
      out.push_back(bg[size_t(k)]);
    }
    write("out.bin", out);
  } else if (op == "batched_predict_grads") {
    std::vector<T> wg(6 * K, T(0)), bg(K), out;
    bc::batched_sum_points<bc::PredictGradsPoint<T>>(
        l, in, fits,
        bc::ParamGradsRows<T>{nullptr, needs & biasfit::kNeedWeights ? wg.data() : nullptr,
                              bg.data()},
        bc::PointGrads<T>{nullptr, want_dx});
    for (int64_t k = 0; k < fits; ++k) {
      out.insert(out.end(), wg.begin() + 6 * k, wg.begin() + 6 * k + 6);
      out.push_back(bg[size_t(k)]);
    }
    write("out.bin", out);
  } else {
    fail("harness: unknown op %s", op.c_str());
  }
  if (want_dy != nullptr) write("out_dy.bin", dy);
  if (want_dx != nullptr) write("out_dx.bin", dx);
}

template <typename T>
void run_op(const std::string& op, const Args& a, EmuLauncher& l) {
  if (op.rfind("batched_", 0) == 0) return run_batched<T>(op, a, l);
  const std::string dir = a.get("dir");
  T w[6], bias;
  weights_and_bias(a, w, &bias);
  if (op == "predict") {
    const bc::Inputs<T> in = inputs<T>(a, dir);
    std::vector<T> out(size_t(in.n));
    bc::predict<T>(l, in.a, in.n, w, &bias, out.data());
    write_file(dir + "/out.bin", out.data(), sizeof(T) * out.size());
  } else if (op == "fused_loss" || op == "predict_bias_grad") {
    const bc::Inputs<T> in = inputs<T>(a, dir);
    T out[2] = {T(0), T(0)};
    if (op == "fused_loss") {
      bc::sum_points<bc::LossPoint<T>>(l, in, w, &bias, bc::LossSink<T>{&out[0], &out[1]});
    } else {
      bc::sum_points<bc::BiasGradPoint<T>>(l, in, w, &bias, bc::GradSink<T>{&out[1]});
    }
    write_file(dir + "/out.bin", out, sizeof out);
  } else if (op == "fused_loss_sums") {
    const bc::Inputs<T> in = inputs<T>(a, dir);
    double out[2] = {0, 0};
    bc::sum_points<bc::LossPoint<T>>(l, in, w, &bias, bc::LossSink<double>{&out[0], &out[1]});
    write_file(dir + "/out.bin", out, sizeof out);
  } else if (op == "fit") {
    const bc::Inputs<T> in = inputs<T>(a, dir);
    const FitOptions opt = fit_options(a);
    std::vector<T> losses(size_t(opt.epochs)), biases(size_t(opt.epochs));
    T final_bias = T(0);
    int64_t info[2] = {-1, -1};
    bc::fit<T>(l, in, w, &bias, opt, {losses.data(), biases.data(), &final_bias, info});
    write_file(dir + "/out_losses.bin", losses.data(), sizeof(T) * losses.size());
    write_file(dir + "/out_biases.bin", biases.data(), sizeof(T) * biases.size());
    write_file(dir + "/out_bias.bin", &final_bias, sizeof(T));
    write_file(dir + "/out_info.bin", info, sizeof info);
  } else if (op == "loss_grads" || op == "loss_grads_sums" ||
             op == "predict_grads") {
    run_grads_op<T>(op, a, l, w, &bias);
  } else if (op == "fit_params") {
    run_fit_params<T>(a, l);
  } else {
    fail("harness: unknown op %s", op.c_str());
  }
}

// Past 2^31 points at real, distinct addresses: x and y are mapped as zero
// pages (untouched pages cost no memory) with data written at both ends, so
// a 32-bit index anywhere reads the wrong point or faults. x = 0 everywhere
// and bias 1 make every y_hat 1; y is 1 on the first 4096 points, 3 from
// 2^31 on, 0 between, so every term is a small integer and the sums are
// exact in any order.
void run_big(const Args& a, EmuLauncher& l) {
  const int64_t n = a.i("n"), head = int64_t(1) << 31, front = 4096;
  const size_t bytes = sizeof(float) * size_t(n);
  auto map = [&] {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) fail("harness: mmap of %zu bytes failed", bytes);
    return static_cast<float*>(p);
  };
  float* x = map();
  float* y = map();
  for (int64_t i = 0; i < front; ++i) y[i] = 1.0f;
  for (int64_t i = head; i < n; ++i) y[i] = 3.0f;
  const float w[6] = {1.7f, -0.85f, -40.8f, 12.6f, 0.0f, 2.7f};
  const float bias = 1.0f;
  const bc::Inputs<float> in{x, y, 1, 1, n};
  double sums[2] = {0, 0};
  bc::sum_points<bc::LossPoint<float>>(l, in, w, &bias,
                                       bc::LossSink<double>{&sums[0], &sums[1]});
  // One epoch of the multi-block fit over the same points.
  const FitOptions opt{{0.0, 0.0, 0.0, 0.0, false, false}, 1, 0.0};
  float loss = 0, seen_bias = 0, final_bias = 0;
  int64_t info[2] = {-1, -1};
  bc::fit<float>(l, in, w, &bias, opt, {&loss, &seen_bias, &final_bias, info});
  std::printf("loss=%.17g grad=%.17g fit_loss=%.17g info=%lld,%lld\n", sums[0],
              sums[1], double(loss), (long long)info[0], (long long)info[1]);
}

void run_misuse(const std::string& op, EmuLauncher& l) {
  if (op == "misuse_divergent_barrier") l.launch(misuse::divergent_barrier, 2, 128);
  if (op == "misuse_divergent_shuffle") l.launch(misuse::divergent_shuffle, 1, 64);
  if (op == "misuse_shuffle_exited") l.launch(misuse::shuffle_with_exited_lanes, 1, 32);
  if (op == "misuse_shuffle_outside_mask") l.launch(misuse::shuffle_outside_mask, 1, 32);
  if (op == "misuse_spin") {
    static int flag = 0;
    l.launch(misuse::spin_forever, 1, 32, &flag);
  }
  if (op == "misuse_block_too_big") l.launch(misuse::divergent_barrier, 1, 2048);
  std::printf("misuse %s ran to the end\n", op.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) fail("usage: harness OP key=value...");
  const std::string op = argv[1];
  Args a;
  for (int k = 2; k < argc; ++k) {
    const std::string s = argv[k];
    const size_t eq = s.find('=');
    if (eq == std::string::npos) fail("harness: expected key=value, got %s", argv[k]);
    a.kv[s.substr(0, eq)] = s.substr(eq + 1);
  }
  EmuLauncher l;
  l.event_delay = int(a.i("event_delay"));
  l.capturing = a.i("capturing") != 0;
  if (op.rfind("misuse_", 0) == 0) {
    run_misuse(op, l);
  } else if (op == "big") {
    run_big(a, l);
  } else if (a.get("dtype") == "f64") {
    run_op<double>(op, a, l);
  } else {
    run_op<float>(op, a, l);
  }
  std::printf("launches=%lld polls=%lld\n", (long long)l.launches, (long long)l.polls);
  return 0;
}
