/* Element access for the CPU loops: dtype loads and stores with round-to-nearest-even,
 * bitwise selects, and the per-CPU clones. Everything is inline so that each loop that
 * includes this is specialized by its constant dtype arguments. */
#ifndef ADAMJIT_BACKENDS_CPU_ELEM_H
#define ADAMJIT_BACKENDS_CPU_ELEM_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "adamjit/adamjit.h"

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

/* Stores v as dtype, rounded to nearest even. */
static inline __attribute__((always_inline)) void store(void* base, size_t i, adamjit_dtype dt, float v) {
  if (dt == ADAMJIT_F32)
    ((float*)base)[i] = v;
  else
    ((uint16_t*)base)[i] = dt == ADAMJIT_F16 ? f32_to_f16(v) : f32_to_bf16(v);
}

/* 1 for NaN and +-Inf: all exponent bits set. */
static inline uint32_t nonfinite_bit(float x) { return (f2u(x) & 0x7f800000u) == 0x7f800000u; }

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

#endif
