// Runs fit_many's CUDA kernels (csrc/cuda/kernels_many.cuh, queued by
// cuda/launch_many.h) on the CPU over the emulation, as harness.cpp runs the
// other ops. Driven by tests/test_cuda_emu_many.py:
//
//   harness_many dir=D dtype=f32|f64 fits=K n=N points=P offsets=0|1
//                start_rows=R settings_rows=S trained=B kind=O
//                history_len=E route=-1|0|1|2 [raw=0|1|2]
//
// In D: x.bin, y.bin (P values), offsets.bin (K + 1 int64, if offsets=1),
// start.bin (R x 7), settings.bin (S x kManyColumns float64). Out:
// out_params.bin, out_loss.bin, out_epochs.bin, out_status.bin,
// out_bad.bin, out_history.bin, out_biases.bin (raw: the op's raw fits). Prints "launches=L".
#include "cuda_emu.h"
#include "emu_launcher.h"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "cuda/launch_many.h"

namespace {

using cuda_emu::fail;

std::vector<char> read_all(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) fail("harness_many: cannot open %s", path.c_str());
  std::fseek(f, 0, SEEK_END);
  const long size = std::ftell(f);
  std::fseek(f, 0, SEEK_SET);
  std::vector<char> bytes(size_t(size) + 64);
  if (std::fread(bytes.data(), 1, size_t(size), f) != size_t(size)) fail("harness_many: short read");
  std::fclose(f);
  return bytes;
}

void write_all(const std::string& path, const void* p, size_t bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr || std::fwrite(p, 1, bytes, f) != bytes) {
    fail("harness_many: cannot write %s", path.c_str());
  }
  std::fclose(f);
}

template <typename T>
void run(std::map<std::string, std::string>& a, cuda_emu::EmuLauncher& l) {
  auto i = [&](const char* k) {
    return a.count(k) ? std::strtoll(a.at(k).c_str(), nullptr, 10) : 0LL;
  };
  const std::string dir = a.at("dir");
  const int64_t fits = i("fits"), points = i("points"), history_len = i("history_len");
  const std::vector<char> x = read_all(dir + "/x.bin"), y = read_all(dir + "/y.bin");
  const std::vector<char> start = read_all(dir + "/start.bin");
  const std::vector<char> settings = read_all(dir + "/settings.bin");
  std::vector<char> offsets;
  if (i("offsets") != 0) offsets = read_all(dir + "/offsets.bin");
  const int64_t* o = offsets.empty() ? nullptr : reinterpret_cast<const int64_t*>(offsets.data());
  const biasfit::ManyData<T> d{
      reinterpret_cast<const T*>(x.data()), reinterpret_cast<const T*>(y.data()), o,
      i("n"), fits, reinterpret_cast<const T*>(start.data()), i("start_rows"),
      reinterpret_cast<const double*>(settings.data()), i("settings_rows"), i("trained"),
      i("kind")};
  std::vector<T> params(static_cast<size_t>(fits) * biasfit::kNumParams), loss(static_cast<size_t>(fits));
  const int64_t raw = i("raw");
  std::vector<T> history(size_t(fits * history_len) + 1), biases(size_t(fits * history_len) + 1);
  std::vector<int64_t> epochs(static_cast<size_t>(fits));
  std::vector<int8_t> status(static_cast<size_t>(fits)), bad(static_cast<size_t>(fits));
  const biasfit::ManyOut<T> out{params.data(), loss.data(), epochs.data(), status.data(),
                                bad.data(), history_len > 0 ? history.data() : nullptr,
                                history_len, raw ? biases.data() : nullptr, raw == 2};
  biasfit::cuda::fit_many(l, d, out, points, i("host_offsets") != 0 ? o : nullptr,
                          int(i("route")));
  write_all(dir + "/out_params.bin", params.data(), sizeof(T) * params.size());
  write_all(dir + "/out_loss.bin", loss.data(), sizeof(T) * loss.size());
  write_all(dir + "/out_epochs.bin", epochs.data(), sizeof(int64_t) * epochs.size());
  write_all(dir + "/out_status.bin", status.data(), status.size());
  write_all(dir + "/out_bad.bin", bad.data(), bad.size());
  write_all(dir + "/out_history.bin", history.data(), sizeof(T) * size_t(fits * history_len));
  write_all(dir + "/out_biases.bin", biases.data(), sizeof(T) * size_t(raw ? fits * history_len : 0));
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> a;
  for (int k = 1; k < argc; ++k) {
    const std::string s = argv[k];
    const size_t eq = s.find('=');
    if (eq == std::string::npos) fail("harness_many: expected key=value, got %s", argv[k]);
    a[s.substr(0, eq)] = s.substr(eq + 1);
  }
  cuda_emu::EmuLauncher l;
  if (a.at("dtype") == "f64") run<double>(a, l); else run<float>(a, l);
  std::printf("launches=%lld\n", (long long)l.launches);
  return 0;
}
