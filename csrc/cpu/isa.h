// The instruction sets the CPU loops are compiled for, chosen once at run
// time. Every CPU runs the portable loops (plain C++ that the compiler
// vectorizes for the baseline of its target: SSE2 on x86-64, NEON on
// aarch64); on x86 the hot loops are also compiled for AVX2 and AVX-512
// (cpu/x86/), and the best one the CPU has runs. All add the same numbers
// in the same lanes and trees, so every choice gives the same bits.
//
// BIASFIT_CPU_KERNEL=baseline or =avx2 picks a lower one on any CPU that has
// it, so the tests can compare every variant with the others bit for bit.
#pragma once

#include <cstdlib>
#include <cstring>

// The one test for x86 (32- or 64-bit): the code under cpu/x86/ compiles
// only there.
#if defined(__x86_64__) || defined(__i386__)
#define BIASFIT_X86 1
#else
#define BIASFIT_X86 0
#endif

// x86's loops vectorized by hand (the trainer's epochs in
// cpu/x86/epoch_loops.h, cpu/x86/param_lanes.h) use GCC's builtins and pass
// AVX vectors from functions compiled for AVX2 or AVX-512 to core/network.h's
// generic inline ones; clang (14) refuses both (the builtins' target check,
// and an ABI check though the calls are always inlined). So under clang
// their points take the portable loops compiled for AVX2 and AVX-512: the
// same bits at the compiler's own vectorization.
#if BIASFIT_X86 && defined(__GNUC__) && !defined(__clang__)
#define BIASFIT_X86_HAND_LOOPS 1
#else
#define BIASFIT_X86_HAND_LOOPS 0
#endif

#if BIASFIT_X86
#include "cpu/x86/simd.h"
#endif

namespace biasfit {
namespace cpu {

enum class Isa { kBaseline, kAvx2, kAvx512 };

inline Isa pick_isa() {
#if BIASFIT_X86
  const bool avx2 = x86::has_avx2(), avx512 = x86::has_avx512();
#else
  const bool avx2 = false, avx512 = false;
#endif
  const char* pick = std::getenv("BIASFIT_CPU_KERNEL");
  if (pick != nullptr && std::strcmp(pick, "baseline") == 0) return Isa::kBaseline;
  if (pick != nullptr && std::strcmp(pick, "avx2") == 0) {
    return avx2 ? Isa::kAvx2 : Isa::kBaseline;
  }
  return avx512 ? Isa::kAvx512 : avx2 ? Isa::kAvx2 : Isa::kBaseline;
}

inline const Isa kIsa = pick_isa();

// f() compiled for the best instruction set here (kIsa). f is a lambda
// marked BIASFIT_INLINE_LAMBDA, so that its body is compiled inside each
// of cpu/x86/simd.h's on_avx512 and on_avx2, as core/network.h's inline
// functions are inside the kernels; a lambda not inlined would run as the
// baseline's code whatever the CPU.
#define BIASFIT_INLINE_LAMBDA __attribute__((always_inline))
template <typename F>
auto on_best_isa(const F& f) {
#if BIASFIT_X86
  switch (kIsa) {
    case Isa::kAvx512: return x86::on_avx512(f);
    case Isa::kAvx2: return x86::on_avx2(f);
    default: break;
  }
#endif
  return f();
}

}  // namespace cpu
}  // namespace biasfit
