/* The CPU backend's element loops. Built with -O3 -fno-math-errno -fno-trapping-math so
 * that gcc vectorizes sqrtf and the selects; IEEE semantics are otherwise kept. Each dtype
 * and amsgrad combination gets its own loop (always_inline + constant arguments), so the
 * fp32 loop carries no conversion code and vectorizes cleanly. */
#include <math.h>
#include <string.h>

#include "backends/cpu/cpu_kernels.h"

/* The loops are bound by the divide and square root at SSE width, so x86-64 builds carry
 * AVX2 and AVX-512 versions too, picked at load time by the CPU (gcc target_clones + ifunc).
 * The file is compiled with -ffp-contract=off, so every version computes bit-identical
 * results: no fused multiply-adds on the newer ones. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define AJ_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define AJ_CPU_CLONES
#endif

static inline uint32_t f2u(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}
static inline float u2f(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t em = h & 0x7fffu;
  /* Placing the half's exponent and mantissa in a float and scaling by 2^112 rebiases the
   * exponent, and handles subnormal halves exactly (they become normal floats). */
  float mag = u2f(em << 13) * 0x1p112f;
  uint32_t bits = em >= 0x7c00u ? ((em << 13) | 0x7f800000u) : f2u(mag); /* Inf and NaN */
  return u2f(bits | sign);
}

static inline uint16_t f32_to_f16(float f) {
  uint32_t x = f2u(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  uint32_t h;
  if (x > 0x7f800000u) {
    h = 0x7e00u; /* NaN stays a (quiet) NaN */
  } else if (x >= 0x477ff000u) {
    h = 0x7c00u; /* >= 65520 rounds to Inf */
  } else if (x >= 0x38800000u) {
    /* normal half: round to nearest even at bit 13, then rebias the exponent by 112 */
    uint32_t r = x + 0xfffu + ((x >> 13) & 1u);
    h = (r - 0x38000000u) >> 13;
  } else {
    /* subnormal half: adding 0.5 puts the 2^-24 unit at the float's last mantissa bit, so
     * the FPU's own round-to-nearest-even does the rounding */
    h = f2u(u2f(x) + 0.5f) - 0x3f000000u;
  }
  return (uint16_t)(sign | h);
}

static inline float bf16_to_f32(uint16_t h) { return u2f((uint32_t)h << 16); }

static inline uint16_t f32_to_bf16(float f) {
  uint32_t x = f2u(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x0040u);
  return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

static inline __attribute__((always_inline)) float load(const void* base, size_t i, adamjit_dtype dt) {
  if (dt == ADAMJIT_F32) return ((const float*)base)[i];
  if (dt == ADAMJIT_F16) return f16_to_f32(((const uint16_t*)base)[i]);
  return bf16_to_f32(((const uint16_t*)base)[i]);
}

/* Bitwise select: keep (all ones) takes old, zero takes new. Written with integer masks, not
 * `?:`, because gcc turns a conditional into control flow that blocks vectorization. */
static inline float select_f32(uint32_t keep, float old, float new_value) {
  return u2f((f2u(old) & keep) | (f2u(new_value) & ~keep));
}

/* Stores p, or leaves the element as it was where keep is set (a non-finite gradient). */
static inline __attribute__((always_inline)) void store_param(void* base, size_t i, adamjit_dtype dt, float p,
                                                              uint32_t keep) {
  if (dt == ADAMJIT_F32) {
    float* q = (float*)base;
    q[i] = select_f32(keep, q[i], p);
  } else {
    uint16_t* q = (uint16_t*)base;
    uint16_t h = dt == ADAMJIT_F16 ? f32_to_f16(p) : f32_to_bf16(p);
    q[i] = (uint16_t)((q[i] & keep) | (h & ~keep));
  }
}

static inline __attribute__((always_inline)) uint64_t adamw32_loop(const aj_cpu_adamw32_args* a, size_t begin,
                                                                   size_t end, adamjit_dtype pdt, adamjit_dtype gdt,
                                                                   int amsgrad) {
  /* Locals with restrict: the element arrays never overlap, and gcc must not reload the
   * pointers from *a after every store. */
  void* restrict param = a->param;
  const void* restrict grad = a->grad;
  float* restrict m = a->m;
  float* restrict v = a->v;
  float* restrict vmax = a->vmax;
  const float b1 = a->beta1, b2 = a->beta2, one_b1 = 1.0f - a->beta1, one_b2 = 1.0f - a->beta2;
  const float eps = a->eps, decay = a->decay, step_size = a->step_size, inv_sqrt_c2 = a->inv_sqrt_c2;
  const float scale = a->grad_scale;
  uint64_t nonfinite = 0;
#pragma omp simd reduction(+ : nonfinite)
  for (size_t i = begin; i < end; i++) {
    float graw = load(grad, i, gdt);
    uint32_t bad = (f2u(graw) & 0x7f800000u) == 0x7f800000u;
    uint32_t keep = 0u - bad;
    float g = graw * scale;
    float m0 = m[i], v0 = v[i];
    float m1 = b1 * m0 + one_b1 * g;
    float v1 = b2 * v0 + one_b2 * (g * g);
    float vu = v1;
    if (amsgrad) {
      float vm0 = vmax[i];
      vu = v1 > vm0 ? v1 : vm0;
      vmax[i] = select_f32(keep, vm0, vu);
    }
    float p0 = load(param, i, pdt);
    float p = p0 * decay;
    p = p - step_size * m1 / (sqrtf(vu) * inv_sqrt_c2 + eps);
    m[i] = select_f32(keep, m0, m1);
    v[i] = select_f32(keep, v0, v1);
    store_param(param, i, pdt, p, keep);
    nonfinite += (uint64_t)bad;
  }
  return nonfinite;
}

#define AJ_DISPATCH_AMSGRAD(P, G)                                                          \
  return a->vmax ? adamw32_loop(a, begin, end, P, G, 1) : adamw32_loop(a, begin, end, P, G, 0)
#define AJ_DISPATCH_GRAD(P)                                                   \
  switch (a->grad_dtype) {                                                    \
    case ADAMJIT_F32: AJ_DISPATCH_AMSGRAD(P, ADAMJIT_F32);                    \
    case ADAMJIT_F16: AJ_DISPATCH_AMSGRAD(P, ADAMJIT_F16);                    \
    case ADAMJIT_BF16: AJ_DISPATCH_AMSGRAD(P, ADAMJIT_BF16);                  \
  }                                                                           \
  break

AJ_CPU_CLONES uint64_t aj_cpu_adamw32(const aj_cpu_adamw32_args* a, size_t begin, size_t end) {
  switch (a->param_dtype) {
    case ADAMJIT_F32: AJ_DISPATCH_GRAD(ADAMJIT_F32);
    case ADAMJIT_F16: AJ_DISPATCH_GRAD(ADAMJIT_F16);
    case ADAMJIT_BF16: AJ_DISPATCH_GRAD(ADAMJIT_BF16);
  }
  return 0; /* dtypes are validated at registration */
}

static inline __attribute__((always_inline)) double sumsq_loop(const void* grad, adamjit_dtype dt, size_t begin,
                                                               size_t end, uint64_t* nonfinite) {
  double s = 0.0;
  uint64_t bad_count = 0;
#pragma omp simd reduction(+ : s, bad_count)
  for (size_t i = begin; i < end; i++) {
    float g = load(grad, i, dt);
    uint32_t bad = (f2u(g) & 0x7f800000u) == 0x7f800000u;
    double d = (double)select_f32(0u - bad, 0.0f, g);
    s += d * d;
    bad_count += bad;
  }
  *nonfinite = bad_count;
  return s;
}

AJ_CPU_CLONES double aj_cpu_grad_sumsq(const void* grad, adamjit_dtype dtype, size_t begin, size_t end,
                                       uint64_t* nonfinite) {
  switch (dtype) {
    case ADAMJIT_F32: return sumsq_loop(grad, ADAMJIT_F32, begin, end, nonfinite);
    case ADAMJIT_F16: return sumsq_loop(grad, ADAMJIT_F16, begin, end, nonfinite);
    case ADAMJIT_BF16: return sumsq_loop(grad, ADAMJIT_BF16, begin, end, nonfinite);
  }
  *nonfinite = 0;
  return 0.0;
}
