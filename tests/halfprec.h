/* The tests' own half-precision conversions: IEEE binary16 (fp16) and bfloat16 (bf16) to and
 * from double, rounded to nearest even, written from the formats' definitions.
 *
 * These are the oracle side of the tests and deliberately NOT the library's conversions: a
 * test that used the code under test to build its expectations would check nothing. They
 * handle everything a test may feed them: exact ties (to even), subnormals, overflow to
 * Inf, signed zeros, Inf and NaN. test_adamw32_reference.c checks them (ties, subnormals,
 * the overflow threshold, an fp16 round trip of every finite value, and the compiler's
 * _Float16 where it has one).
 *
 * All functions are static inline so that a test includes this header and uses only what
 * it needs. */
#ifndef ADAMJIT_TESTS_HALFPREC_H
#define ADAMJIT_TESTS_HALFPREC_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "adamjit/adamjit.h"

/* Rounds a double to `bits` significant bits, nearest even (nearbyint() rounds ties to even
 * in the default rounding mode). Below the smallest normal (frexp exponent min_e) the
 * spacing stays that of the smallest binade, which gives the subnormals; beyond `max` the
 * result overflows to Inf. One rounding straight from double, so no double rounding. Zeros
 * (with their sign), Inf and NaN pass through. */
static inline double round_bits(double x, int bits, int min_e, double max) {
  if (x == 0.0 || !isfinite(x)) return x;
  int e;
  frexp(x, &e); /* |x| = f * 2^e, f in [0.5, 1) */
  if (e < min_e) e = min_e;
  double r = ldexp(nearbyint(ldexp(x, bits - e)), e - bits);
  return fabs(r) > max ? copysign(INFINITY, x) : r;
}

/* IEEE binary16: 11 significant bits, smallest normal 2^-14, largest 65504. */
static inline double f16_round(double x) { return round_bits(x, 11, -13, 65504.0); }
/* bfloat16: 8 significant bits, fp32's exponent range. */
static inline double bf16_round(double x) { return round_bits(x, 8, -125, 0x1.fep127); }

/* fp16 bits of x rounded to nearest even; NaN becomes the quiet NaN 0x7e00. */
static inline uint16_t f16_bits(double x) {
  if (isnan(x)) return 0x7e00;
  double r = f16_round(x), a = fabs(r);
  uint16_t sign = signbit(r) ? 0x8000 : 0;
  if (isinf(a)) return sign | 0x7c00;
  if (a < 0x1p-14) return sign | (uint16_t)(a * 0x1p24); /* subnormal: a count of 2^-24 */
  int e;
  double f = frexp(a, &e);
  return (uint16_t)(sign | (unsigned)(e + 14) << 10 | ((unsigned)(f * 2048.0) - 1024u));
}

/* The value of fp16 bits (exact in double). */
static inline double f16_value(uint16_t h) {
  const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  double a = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
  return (h & 0x8000) ? -a : a;
}

/* bf16 bits of x rounded to nearest even: the top half of the fp32 bits of the rounded
 * value (NAN gives the quiet NaN 0x7fc0). */
static inline uint16_t bf16_bits(double x) {
  float f = (float)bf16_round(x); /* exact: the value already fits in 8 bits */
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return (uint16_t)(u >> 16);
}

/* The value of bf16 bits (exact in float and double). */
static inline double bf16_value(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* Stores x rounded to `dt` into element i of a host buffer laid out in that dtype. */
static inline void put_elem(adamjit_dtype dt, void* buf, int64_t i, double x) {
  switch (dt) {
    case ADAMJIT_F32: ((float*)buf)[i] = (float)x; break;
    case ADAMJIT_F16: ((uint16_t*)buf)[i] = f16_bits(x); break;
    case ADAMJIT_BF16: ((uint16_t*)buf)[i] = bf16_bits(x); break;
  }
}

/* The value of element i of a host buffer in dtype `dt` (exact in double, and in float: the
 * fp32 value the library reads). */
static inline double get_elem(adamjit_dtype dt, const void* buf, int64_t i) {
  switch (dt) {
    case ADAMJIT_F32: return ((const float*)buf)[i];
    case ADAMJIT_F16: return f16_value(((const uint16_t*)buf)[i]);
    case ADAMJIT_BF16: return bf16_value(((const uint16_t*)buf)[i]);
  }
  return NAN;
}

/* x rounded to the nearest value of `dt` (ties to even). */
static inline double round_to(adamjit_dtype dt, double x) {
  unsigned char tmp[4];
  put_elem(dt, tmp, 0, x);
  return get_elem(dt, tmp, 0);
}

#endif
