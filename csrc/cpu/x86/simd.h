// x86 only (cpu/isa.h includes it where BIASFIT_X86): which of AVX2 and
// AVX-512 this CPU has, the attributes that compile a function for them,
// and relu on their vectors as one instruction. What cpu/x86/epoch_loops.h
// and cpu/x86/param_lanes.h share.
#pragma once

#include <immintrin.h>

#include "core/network.h"

// x86's vector types (__m512, ...) carry __may_alias__, which a template
// argument drops; the kernels never alias through them (loads go through
// memcpy). And the functions that take or return them are always inlined,
// so no call has the vector ABI that -Wpsabi warns of. Both notes would
// only bury real warnings.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#pragma GCC diagnostic ignored "-Wpsabi"

#define BIASFIT_AVX2 __attribute__((target("avx2,fma")))
#define BIASFIT_AVX512 \
  __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")))

namespace biasfit {

// relu on SIMD vectors as x86's max(0, z), which returns its second
// operand when either is NaN or both are zero: z < 0 ? 0 : z exactly, NaN
// and -0 included, in one instruction where the comparison and blend take
// two (the streamed epoch runs 1.5x faster). GCC's builtins, not the
// intrinsics: those carry a target attribute that core/network.h's generic
// inline functions could not inline; a builtin expands in the instruction
// set of the kernel it ends up in. Other compilers keep the generic form.
#if defined(__GNUC__) && !defined(__clang__) && !defined(BIASFIT_NO_RELU_MAX)
template <>
struct Relu<__m512> {
  BIASFIT_HD static __m512 of(__m512 z) {
    return __m512(__builtin_ia32_maxps512_mask(
        __v16sf{}, __v16sf(z), __v16sf{}, __mmask16(-1),
        _MM_FROUND_CUR_DIRECTION));
  }
};
template <>
struct Relu<__m512d> {
  BIASFIT_HD static __m512d of(__m512d z) {
    return __m512d(__builtin_ia32_maxpd512_mask(
        __v8df{}, __v8df(z), __v8df{}, __mmask8(-1), _MM_FROUND_CUR_DIRECTION));
  }
};
template <>
struct Relu<__m256> {
  BIASFIT_HD static __m256 of(__m256 z) {
    return __m256(__builtin_ia32_maxps256(__v8sf{}, __v8sf(z)));
  }
};
#endif

namespace cpu {
namespace x86 {

inline bool has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
inline bool has_avx512() {
  return has_avx2() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512dq");
}

// f() compiled for AVX-512 or AVX2: cpu/isa.h's on_best_isa.
template <typename F>
BIASFIT_AVX512 auto on_avx512(const F& f) {
  return f();
}
template <typename F>
BIASFIT_AVX2 auto on_avx2(const F& f) {
  return f();
}

}  // namespace x86
}  // namespace cpu
}  // namespace biasfit

#pragma GCC diagnostic pop
