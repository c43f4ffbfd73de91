// Arithmetic that rounds every multiply and add on its own, on the GPU as on
// the CPU, so the network's math (core/network.h, core/sgd.h, core/fit.h) gives the same
// bits on both whatever the build flags.
//
// The CPU build and the emulated-GPU test harness compile with
// -ffp-contract=off, where `a * b + c` already rounds twice. nvcc's
// --fmad=false does the same for the GPU, but a flag is easily lost (a JIT
// build, another build system, a refactor of setup.py). On the device these
// functions are the round-to-nearest intrinsics (__fmul_rn, __dadd_rn, ...),
// which nvcc never contracts into an FMA, flag or no flag. On the host they
// are plain operators, generic in T so that the CPU kernels' SIMD vector
// types (__m256 and friends) go through the same formulas.
#pragma once

// Always inlined: the CPU kernels compile the same loop for several
// instruction sets (torch_ops/cpu_ops.cpp), and only inlined code takes on the caller's.
#if defined(__CUDACC__)
#define BIASFIT_HD __host__ __device__ __forceinline__
#else
#define BIASFIT_HD inline __attribute__((always_inline))
#endif

#if defined(__CUDA_ARCH__)
#include <type_traits>
#endif

namespace biasfit {

#if defined(__CUDA_ARCH__)
// Device pass: float and double only (no vector types on the GPU).
template <typename T>
constexpr bool kIsFloat = std::is_same<T, float>::value;

template <typename T>
__device__ __forceinline__ T mul_rn(T a, T b) {
  static_assert(kIsFloat<T> || std::is_same<T, double>::value, "float or double");
  if constexpr (kIsFloat<T>) return __fmul_rn(a, b); else return __dmul_rn(a, b);
}
template <typename T>
__device__ __forceinline__ T add_rn(T a, T b) {
  static_assert(kIsFloat<T> || std::is_same<T, double>::value, "float or double");
  if constexpr (kIsFloat<T>) return __fadd_rn(a, b); else return __dadd_rn(a, b);
}
template <typename T>
__device__ __forceinline__ T sub_rn(T a, T b) {
  static_assert(kIsFloat<T> || std::is_same<T, double>::value, "float or double");
  if constexpr (kIsFloat<T>) return __fsub_rn(a, b); else return __dsub_rn(a, b);
}
template <typename T>
__device__ __forceinline__ T div_rn(T a, T b) {
  static_assert(kIsFloat<T> || std::is_same<T, double>::value, "float or double");
  if constexpr (kIsFloat<T>) return __fdiv_rn(a, b); else return __ddiv_rn(a, b);
}
template <typename T>
__device__ __forceinline__ T sqrt_rn(T a) {
  static_assert(kIsFloat<T> || std::is_same<T, double>::value, "float or double");
  if constexpr (kIsFloat<T>) return __fsqrt_rn(a); else return __dsqrt_rn(a);
}
#else
template <typename T>
BIASFIT_HD T div_rn(T a, T b) { return a / b; }
// IEEE sqrt, correctly rounded on the host as on the device.
BIASFIT_HD float sqrt_rn(float a) { return __builtin_sqrtf(a); }
BIASFIT_HD double sqrt_rn(double a) { return __builtin_sqrt(a); }
template <typename T>
BIASFIT_HD T mul_rn(T a, T b) { return a * b; }
template <typename T>
BIASFIT_HD T add_rn(T a, T b) { return a + b; }
template <typename T>
BIASFIT_HD T sub_rn(T a, T b) { return a - b; }
#endif

}  // namespace biasfit
