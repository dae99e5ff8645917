/* The 8-bit blockwise step written for AVX-512 (F, BW, DQ, VL and VBMI). cpu_adamw8.c
 * includes this file and runs it in place of its portable loops where the CPU has those
 * extensions and the maps are the built-in ones.
 *
 * It computes bit for bit what the portable loops compute: the same fp32 operations in the
 * same order (the file is built with -ffp-contract=off) and the same codes, found another
 * way. The portable loop spends most of its time reading the maps through vector gathers,
 * four per element (two dequantize, two requantize), each as slow as the fp32 divide.
 * Here:
 *  - m dequantizes with in-register byte permutes: the signed map is symmetric about its
 *    exact 0, so the 128 values of codes 128..255 as four byte planes (two registers each)
 *    serve all 256 codes, 64 codes per permute; four unpacks put the bytes back together.
 *  - v (and vmax) dequantize by permutes too: the unsigned map has no symmetry, so each byte
 *    plane takes two permutes (codes below 128, codes from 128) and a blend on the code's top
 *    bit. A gather costs about one load per element whatever its width (zmm, two ymm, four
 *    xmm all timed the same on a 2-core AMD EPYC, Zen 5 (family 26), under KVM), so this
 *    took `adamjit bench` at 1e7 elements on both cores from 5.6-6.2 to 4.85-5.1 ms (at 1e8:
 *    from 56.5-59 to 49.5-53 ms), with the gathers of requantizing still in place.
 *  - Requantizing reads no table through gathers either (see its section): the map's code of
 *    a value comes from the line of its evenly spaced decade, checked against the one exact
 *    threshold above, read from byte planes by permutes. With the two requantize gathers
 *    the step took 5.2-5.3 ms at 1e7 elements on the EPYC, now 3.6-3.8 (`adamjit bench
 *    --sizes 1e7 --variants fp32,8bit-b256`, builds alternated in one session). The step is
 *    bound by its arithmetic: in one-off experiments (edited copies of this file, not kept),
 *    writing the codes without computing them gave 1.9-2.0 ms, and replacing the divide and
 *    square root by multiplies changed nothing.
 *  - Pass two of a block (requantizing) runs interleaved with pass one of the next, so that
 *    the permutes of one overlap the divides of the other; and the arrays are prefetched
 *    (X8_PREFETCH), which lets their loads from memory overlap the arithmetic better than
 *    the hardware prefetchers do. */
#ifndef ADAMJIT_BACKENDS_CPU_ADAMW8_AVX512_H
#define ADAMJIT_BACKENDS_CPU_ADAMW8_AVX512_H

#include <immintrin.h>
#include <pthread.h>
#include <stdlib.h>

#include "backends/cpu/cpu_kernels.h"
#include "backends/cpu/cpu_qsearch.h"

#define X8_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vbmi,prfchw")))
#define X8_INLINE X8_TARGET __attribute__((always_inline)) static inline

/* The largest tile: the largest block, and the tile of block_wise = 0 tensors. */
#define X8_TILE 4096
/* How many elements ahead the arrays are prefetched (params and codes for writing). On a
 * 2-core AVX-512 Xeon, 256..1024 all gave the step at 1e8 elements ~15% over the hardware
 * prefetchers alone; on the 2-core EPYC named above, 256 and 512 timed alike at 1e7 and 1e8
 * elements, 1024 and 2048 a few % slower. */
#define X8_PREFETCH 512
/* Requantizing clamps magnitudes to [2^-31, 2): below all thresholds, and the octaves
 * (exponents 96..127) then fit the 32-entry tables of x8_rq. */
#define X8_MAG_LO (96 << 23)
#define X8_MAG_HI 0x3fffffff
/* The segments of a built-in map (x8_build_rq): its 0, seven decades, its 1. */
#define X8_SEGMENTS 9
/* The estimate's bias, in codes: a segment's line puts its thresholds 0.4 above an integer,
 * its lower boundary (0.3 codes below its first value in the built-in maps) 0.4 below one
 * and the previous segment's last value, where it takes over (0.6 codes below its first),
 * 0.7 below one; rounding moves them by ~1e-4 codes. */
#define X8_BIAS 0.6

/* What requantizing by a map reads (see the requantize section). */
typedef struct x8_rq {
  float oct_bound[32] __attribute__((aligned(64))); /* per octave: where the next segment starts in it, or 4 */
  int32_t oct_seg[32] __attribute__((aligned(64))); /* per octave: the segment of its lowest magnitude */
  float seg_s[16] __attribute__((aligned(64)));     /* per segment: the estimate's line x * s + o */
  float seg_o[16] __attribute__((aligned(64)));
  /* per estimate, byte k of the threshold above it in plane k: the unsigned map's by code;
   * the signed map's, estimates 127..254 by their low 7 bits, for positive values in slots
   * 0..127 and for negative ones (the magnitude of the mirrored threshold) in 128..255 */
  uint8_t t_planes[4][AJ_QMAP_SIZE] __attribute__((aligned(64)));
} x8_rq;

typedef struct x8_tables {
  /* the signed map's values of codes 128..255, byte k of each in plane k */
  uint8_t half_planes[4][AJ_QMAP_SIZE / 2] __attribute__((aligned(64)));
  /* the unsigned map's values of all 256 codes, byte k of each in plane k */
  uint8_t planes[4][AJ_QMAP_SIZE] __attribute__((aligned(64)));
  x8_rq rq[2];                                           /* signed, unsigned */
  int32_t unpack_order[16] __attribute__((aligned(64)));    /* see x8_dequantize_signed */
  int32_t pack_transposed[16] __attribute__((aligned(64))); /* see x8_thresholds */
  const aj_qmap* q[2];                                     /* the built-in maps: signed, unsigned */
  int ok;
} x8_tables;

static x8_tables x8;
static pthread_once_t x8_once = PTHREAD_ONCE_INIT;

/* ------------------------------------------------------------------ dequantize */

/* Byte planes b[k] (byte k of each value, in the transposed order of x8_dequantize_signed)
 * put back together into 64 32-bit values, as four vectors of elements 16q..16q+15. */
X8_INLINE void x8_planes_join(const __m512i b[4], __m512i out[4]) {
  __m512i l01 = _mm512_unpacklo_epi8(b[0], b[1]), h01 = _mm512_unpackhi_epi8(b[0], b[1]);
  __m512i l23 = _mm512_unpacklo_epi8(b[2], b[3]), h23 = _mm512_unpackhi_epi8(b[2], b[3]);
  out[0] = _mm512_unpacklo_epi16(l01, l23);
  out[1] = _mm512_unpackhi_epi16(l01, l23);
  out[2] = _mm512_unpacklo_epi16(h01, h23);
  out[3] = _mm512_unpackhi_epi16(h01, h23);
}

/* The same as floats times A. */
X8_INLINE void x8_planes_to_floats(const __m512i b[4], __m512 A, __m512 out[4]) {
  __m512i v[4];
  x8_planes_join(b, v);
  for (int q = 0; q < 4; q++) out[q] = _mm512_mul_ps(_mm512_castsi512_ps(v[q]), A);
}

/* values[c] * A of the signed map for 64 codes, as four vectors of elements 16q..16q+15.
 * Codes 128..255 take their value directly, codes 0..126 the value of code 254 - c with the
 * sign set (values[126 - j] = -values[128 + j]), code 127 is +0. */
X8_INLINE void x8_dequantize_signed(__m512i codes, __m512 A, __m512 out[4]) {
  /* the unpacks below interleave within 128-bit lanes, so the codes go in transposed by
   * groups of four: element 16q + 4l + i to byte 16l + 4q + i */
  __m512i c = _mm512_permutexvar_epi8(_mm512_load_si512(x8.unpack_order), codes);
  __mmask64 upper = _mm512_movepi8_mask(c);
  __mmask64 nonzero = _mm512_cmpneq_epi8_mask(c, _mm512_set1_epi8(127));
  /* the index into values[128..255] is the low 7 bits: c - 128 above 127, 126 - c below */
  __m512i j = _mm512_mask_sub_epi8(c, ~upper, _mm512_set1_epi8(126), c);
  __m512i b[4];
  for (int k = 0; k < 4; k++) {
    const __m512i* t = (const __m512i*)x8.half_planes[k];
    b[k] = _mm512_maskz_permutex2var_epi8(nonzero, _mm512_load_si512(t), j, _mm512_load_si512(t + 1));
  }
  /* the sign bit, clear in values[128..255], for codes 0..126 */
  b[3] = _mm512_mask_add_epi8(b[3], ~upper & nonzero, b[3], _mm512_set1_epi8((char)0x80));
  x8_planes_to_floats(b, A, out);
}

/* values[c] * A of the unsigned map for 64 codes, in x8_dequantize_signed's order: the map
 * has no symmetry, so each byte plane takes two permutes (codes below 128, codes from 128)
 * and a blend on the code's top bit. */
X8_INLINE void x8_dequantize_unsigned(__m512i codes, __m512 A, __m512 out[4]) {
  __m512i c = _mm512_permutexvar_epi8(_mm512_load_si512(x8.unpack_order), codes);
  __mmask64 upper = _mm512_movepi8_mask(c);
  __m512i b[4];
  for (int k = 0; k < 4; k++) {
    const __m512i* t = (const __m512i*)x8.planes[k];
    __m512i lo = _mm512_permutex2var_epi8(_mm512_load_si512(t), c, _mm512_load_si512(t + 1));
    __m512i hi = _mm512_permutex2var_epi8(_mm512_load_si512(t + 2), c, _mm512_load_si512(t + 3));
    b[k] = _mm512_mask_blend_epi8(upper, lo, hi);
  }
  x8_planes_to_floats(b, A, out);
}

/* ------------------------------------------------------------------ requantize */

/* The portable loop's code of x is the number of the map's thresholds <= x (core/qmap.h),
 * and for the signed map a negative value never takes the code of 0 (-0 does). Each built-in
 * map is, above its 0, seven decades of evenly spaced values and then 1.0 (SPEC 3): nine
 * segments, the 0 alone, the decades, the 1. Here, for 16 values at a time:
 *  1. the magnitude, clamped to [2^-31, 2), and its segment: its octave indexes 32-entry
 *     tables of the segment at the octave's start and the one place inside the octave where
 *     the next segment's line takes over (the segment's last value), compared exactly;
 *  2. an estimate of the code from the segment's line, |x| * s + o truncated: the code or
 *     one below (x8_verify proves it at set-up);
 *  3. the threshold above the estimate, read from byte planes by permutes (64 at a time as
 *     in dequantizing) and compared exactly: code = estimate + (|x| >= threshold).
 * Negative values of the signed map read their own half of the threshold table: the
 * mirrored thresholds' magnitudes + 1 ulp, as a tie goes the other way for them, and 0 + 1
 * ulp above the estimate of 0, which is the sign guard (-0 is made +0 first); they then take
 * the mirrored code 254 - c. */

/* The clamped magnitude bits of x (step 1). For the unsigned map the bits are clamped as
 * signed integers, which puts every negative value (-0 and negative NaN too) on the lowest
 * magnitude, whose code is that of +0 (checked at set-up), and positive NaN on the highest. */
X8_INLINE __m512i x8_magnitude(int s, __m512i xb) {
  __m512i a = s == 0 ? _mm512_and_si512(xb, _mm512_set1_epi32(0x7fffffff)) : xb;
  return _mm512_min_epi32(_mm512_max_epi32(a, _mm512_set1_epi32(X8_MAG_LO)), _mm512_set1_epi32(X8_MAG_HI));
}

/* Steps 1 and 2: the code estimate of 16 clamped magnitudes, the true code or one below. */
X8_INLINE __m512i x8_estimate(const x8_rq* r, __m512i ab) {
  __m512 a = _mm512_castsi512_ps(ab);
  __m512i oct = _mm512_srli_epi32(ab, 23); /* 96..127: the permutes read its low 5 bits */
  __m512 bound = _mm512_permutex2var_ps(_mm512_load_ps(r->oct_bound), oct, _mm512_load_ps(r->oct_bound + 16));
  __m512i seg = _mm512_permutex2var_epi32(_mm512_load_si512(r->oct_seg), oct, _mm512_load_si512(r->oct_seg + 16));
  seg = _mm512_mask_add_epi32(seg, _mm512_cmp_ps_mask(a, bound, _CMP_GE_OQ), seg, _mm512_set1_epi32(1));
  __m512 pos = _mm512_fmadd_ps(a, _mm512_permutexvar_ps(seg, _mm512_load_ps(r->seg_s)),
                               _mm512_permutexvar_ps(seg, _mm512_load_ps(r->seg_o)));
  return _mm512_cvttps_epi32(pos);
}

/* Step 3's table read: the thresholds of 64 table slots (four vectors, elements 16q..16q+15),
 * as float bits in the same order. The slots' low bytes go in transposed as x8_planes_join
 * wants them: byte 16l + 4q + i from element 4l + i of slot[q]. */
X8_INLINE void x8_thresholds(int s, const __m512i slot[4], __m512i out[4]) {
  const __m512i idx = _mm512_load_si512(x8.pack_transposed);
  __m512i c = _mm512_mask_blend_epi8(0xff00ff00ff00ff00ull, _mm512_permutex2var_epi8(slot[0], idx, slot[1]),
                                     _mm512_permutex2var_epi8(slot[2], idx, slot[3]));
  __mmask64 upper = _mm512_movepi8_mask(c);
  const __m512i* t = (const __m512i*)x8.rq[s].t_planes;
  __m512i b[4];
  for (int k = 0; k < 4; k++) {
    __m512i lo = _mm512_permutex2var_epi8(_mm512_load_si512(t + 4 * k), c, _mm512_load_si512(t + 4 * k + 1));
    __m512i hi = _mm512_permutex2var_epi8(_mm512_load_si512(t + 4 * k + 2), c, _mm512_load_si512(t + 4 * k + 3));
    b[k] = _mm512_mask_blend_epi8(upper, lo, hi);
  }
  x8_planes_join(b, out);
}

/* The codes of 64 values x = t[0..63] * inv, each in the low byte of its lane. */
X8_INLINE void x8_codes64(int s, const float* t, __m512 inv, __m512i code[4]) {
  const x8_rq* r = &x8.rq[s];
  const __m512i one = _mm512_set1_epi32(1);
  __m512i xb[4], ab[4], est[4], slot[4], thr[4];
#pragma GCC unroll 4
  for (int q = 0; q < 4; q++) {
    __m512 x = _mm512_mul_ps(_mm512_load_ps(t + 16 * q), inv);
    /* -0 + 0 = +0: the only negative value that keeps the signed map's code of 0 is positive */
    xb[q] = _mm512_castps_si512(s == 0 ? _mm512_add_ps(x, _mm512_setzero_ps()) : x);
    ab[q] = x8_magnitude(s, xb[q]);
    est[q] = x8_estimate(r, ab[q]);
    /* the signed map: negative values read the upper half of the table (bit 7: the sign) */
    slot[q] = s == 0 ? _mm512_ternarylogic_epi32(est[q], _mm512_srli_epi32(xb[q], 24), _mm512_set1_epi32(0x80),
                                                 0xd8 /* c ? b : a */)
                     : est[q];
  }
  x8_thresholds(s, slot, thr);
#pragma GCC unroll 4
  for (int q = 0; q < 4; q++) {
    if (s != 0) {
      code[q] = _mm512_mask_add_epi32(est[q], _mm512_cmpge_epi32_mask(ab[q], thr[q]), est[q], one);
      continue;
    }
    /* a negative value, stepped by its own table half, takes the mirrored code */
    __m512i c = _mm512_mask_add_epi32(est[q], _mm512_cmpge_epi32_mask(ab[q], thr[q]), est[q], one);
    code[q] = _mm512_mask_sub_epi32(c, _mm512_movepi32_mask(xb[q]), _mm512_set1_epi32(254), c);
  }
}

/* Stores 64 codes, the low bytes of c[0..3] (elements 16q..16q+15), or the zero code where
 * is_zero. */
X8_INLINE void x8_store_codes(const __m512i c[4], uint8_t* codes, __m512i zero, __mmask64 is_zero, __mmask64 km) {
  const __m512i lo_idx = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0x7c787470, 0x6c686460, 0x5c585450, 0x4c484440,
                                          0x3c383430, 0x2c282420, 0x1c181410, 0x0c080400);
  const __m512i hi_idx = _mm512_set_epi32(0x7c787470, 0x6c686460, 0x5c585450, 0x4c484440, 0x3c383430, 0x2c282420,
                                          0x1c181410, 0x0c080400, 0, 0, 0, 0, 0, 0, 0, 0);
  __m512i lo = _mm512_permutex2var_epi8(c[0], lo_idx, c[1]);
  __m512i hi = _mm512_permutex2var_epi8(c[2], hi_idx, c[3]);
  __m512i out = _mm512_mask_blend_epi8(0xffffffff00000000ull, lo, hi);
  _mm512_mask_storeu_epi8(codes, km, _mm512_mask_blend_epi8(is_zero, out, zero));
}

/* ------------------------------------------------------------------ params and gradients */

/* Loads 16 elements as fp32. f16 goes through vcvtph2ps: exact, except that it quiets a
 * signalling NaN, which changes nothing here (a NaN gradient is skipped, a NaN param is
 * multiplied first, which quiets it on either path). */
X8_INLINE __m512 x8_load(const void* base, size_t i, __mmask16 k, adamjit_dtype dt) {
  if (dt == ADAMJIT_F32) return _mm512_maskz_loadu_ps(k, (const float*)base + i);
  __m256i h = _mm256_maskz_loadu_epi16(k, (const uint16_t*)base + i);
  if (dt == ADAMJIT_F16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* Stores p where ok, rounded to nearest even as cpu_elem.h's f32_to_f16 / f32_to_bf16 do,
 * NaN included. */
X8_INLINE void x8_store_param(void* base, size_t i, __mmask16 ok, __m512 p, adamjit_dtype dt) {
  if (dt == ADAMJIT_F32) {
    _mm512_mask_storeu_ps((float*)base + i, ok, p);
    return;
  }
  __mmask16 nan = _mm512_cmp_ps_mask(p, p, _CMP_UNORD_Q);
  __m256i h;
  if (dt == ADAMJIT_F16) {
    h = _mm512_cvtps_ph(p, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    /* a NaN keeps its sign and becomes 0x7e00: (h & 0x8000) | 0x7e00 */
    __m256i canonical = _mm256_ternarylogic_epi32(h, _mm256_set1_epi16((short)0x8000), _mm256_set1_epi16(0x7e00), 0xea);
    h = _mm256_mask_mov_epi16(h, nan, canonical);
  } else {
    __m512i x = _mm512_castps_si512(p);
    __m512i hi = _mm512_srli_epi32(x, 16);
    __m512i r = _mm512_add_epi32(x, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(hi, _mm512_set1_epi32(1))));
    r = _mm512_mask_or_epi32(_mm512_srli_epi32(r, 16), nan, hi, _mm512_set1_epi32(0x40));
    h = _mm512_cvtepi32_epi16(r);
  }
  _mm256_mask_storeu_epi16((uint16_t*)base + i, ok, h);
}

/* ------------------------------------------------------------------ the step */

/* The step's scalars as vectors. */
typedef struct x8_consts {
  __m512 b1, ob1, b2, ob2, decay, step, isc2, eps, scale;
} x8_consts;

/* The arrays, in locals: the vector stores may alias anything, so fields read through the
 * args struct would be reloaded after every one of them. */
typedef struct x8_io {
  void* param;
  const void* grad;
  const uint8_t* codes[3]; /* m, v, vmax */
} x8_io;

/* Pass one of a block in progress: its old absmax values, its tiles and running maxima. */
typedef struct x8_block {
  __m512 A[3];
  float* t[3];
  __m512 mx[3];
  uint64_t nonfinite;
} x8_block;

/* Pass two of a block, waiting for the next block's pass one to run alongside. */
typedef struct x8_pending {
  const float* t[3];    /* m, v, vmax of the block */
  uint8_t* codes[3];
  __m512 inv[3];        /* 1 / absmax */
  __mmask64 is_zero[3]; /* all ones where the absmax is 0: every code is the zero code */
  size_t n;
} x8_pending;

static inline __mmask64 x8_mask64(size_t left) { return left >= 64 ? ~0ull : (1ull << left) - 1; }

X8_INLINE void x8_pend(x8_pending* pd, int s, const float* t, uint8_t* codes, float absmax) {
  pd->t[s] = t;
  pd->codes[s] = codes;
  pd->inv[s] = _mm512_set1_ps(1.0f / absmax);
  pd->is_zero[s] = absmax == 0.0f ? ~0ull : 0ull;
}

X8_INLINE void x8_requantize64(const x8_pending* pd, int s, size_t j, __mmask64 km) {
  __m512i code[4];
  x8_codes64(s != 0, pd->t[s] + j, pd->inv[s], code);
  const __m512i zero = _mm512_set1_epi8((char)(s == 0 ? 127 : 0)); /* the code of 0.0 (x8_prepare checks) */
  x8_store_codes(code, pd->codes[s] + j, zero, pd->is_zero[s], km);
}

/* Pass two of the pending block from element j on, alone. */
X8_INLINE void x8_flush(const x8_pending* pd, int amsgrad, size_t j) {
  for (; j < pd->n; j += 64) {
    for (int s = 0; s < 2 + amsgrad; s++) x8_requantize64(pd, s, j, x8_mask64(pd->n - j));
  }
}

/* Pass one of elements [j, j + 64) of the block at b0, valid where km is set (all of them when
 * full, which lets the compiler drop the masks), and with requant, pass two of the same 64
 * elements of the pending block, which is a whole one. */
X8_INLINE void x8_chunk(const x8_io io, const x8_consts c, x8_block* bl, const x8_pending pd, size_t b0, size_t j,
                        __mmask64 km, int full, int requant, adamjit_dtype pdt, adamjit_dtype gdt, int amsgrad) {
  const size_t psize = pdt == ADAMJIT_F32 ? 4 : 2, gsize = gdt == ADAMJIT_F32 ? 4 : 2;
  const size_t ahead = b0 + j + X8_PREFETCH;
  for (size_t l = 0; l < psize; l++) _mm_prefetch((const char*)io.param + ahead * psize + 64 * l, _MM_HINT_ET0);
  for (size_t l = 0; l < gsize; l++) _mm_prefetch((const char*)io.grad + ahead * gsize + 64 * l, _MM_HINT_T0);
  for (int s = 0; s < 2 + amsgrad; s++) _mm_prefetch((const char*)(io.codes[s] + ahead), _MM_HINT_ET0);

  __m512 M0[4], V0[4], X0[4];
  x8_dequantize_signed(_mm512_maskz_loadu_epi8(km, io.codes[0] + b0 + j), bl->A[0], M0);
  x8_dequantize_unsigned(_mm512_maskz_loadu_epi8(km, io.codes[1] + b0 + j), bl->A[1], V0);
  if (amsgrad) x8_dequantize_unsigned(_mm512_maskz_loadu_epi8(km, io.codes[2] + b0 + j), bl->A[2], X0);
#pragma GCC unroll 4
  for (int q = 0; q < 4; q++) {
    const size_t jj = j + 16 * (size_t)q, i = b0 + jj;
    const __mmask16 k = full ? (__mmask16)0xffff : (__mmask16)(km >> (16 * q));
    __m512 graw = x8_load(io.grad, i, k, gdt);
    __mmask16 bad = _mm512_fpclass_ps_mask(graw, 0x99); /* NaN or +-Inf (lanes past k load 0) */
    __mmask16 ok = (__mmask16)(k & ~bad);
    if (bad) bl->nonfinite += (uint64_t)__builtin_popcount(bad);
    __m512 g = _mm512_mul_ps(graw, c.scale);
    __m512 m0 = M0[q];
    __m512 v0 = V0[q];
    /* where the gradient is not finite the old values stay (merge masking) */
    __m512 m = _mm512_mask_add_ps(m0, ok, _mm512_mul_ps(c.b1, m0), _mm512_mul_ps(c.ob1, g));
    __m512 v = _mm512_mask_add_ps(v0, ok, _mm512_mul_ps(c.b2, v0), _mm512_mul_ps(c.ob2, _mm512_mul_ps(g, g)));
    __m512 vu = v;
    if (amsgrad) {
      __m512 x0 = X0[q];
      vu = _mm512_mask_max_ps(x0, ok, v, x0); /* max_ps(a, b) is a > b ? a : b */
      _mm512_store_ps(bl->t[2] + jj, vu);
      bl->mx[2] = full ? _mm512_max_ps(vu, bl->mx[2]) : _mm512_mask_max_ps(bl->mx[2], k, vu, bl->mx[2]);
    }
    __m512 p = _mm512_mul_ps(x8_load(io.param, i, k, pdt), c.decay);
    __m512 den = _mm512_add_ps(_mm512_mul_ps(_mm512_sqrt_ps(vu), c.isc2), c.eps);
    p = _mm512_sub_ps(p, _mm512_div_ps(_mm512_mul_ps(c.step, m), den));
    x8_store_param(io.param, i, ok, p, pdt);
    _mm512_store_ps(bl->t[0] + jj, m);
    _mm512_store_ps(bl->t[1] + jj, v);
    __m512 am = _mm512_abs_ps(m);
    bl->mx[0] = full ? _mm512_max_ps(am, bl->mx[0]) : _mm512_mask_max_ps(bl->mx[0], k, am, bl->mx[0]);
    bl->mx[1] = full ? _mm512_max_ps(v, bl->mx[1]) : _mm512_mask_max_ps(bl->mx[1], k, v, bl->mx[1]);
  }
  /* the pending block's codes of the same 64 elements */
  if (requant)
    for (int s = 0; s < 2 + amsgrad; s++) x8_requantize64(&pd, s, j, ~0ull);
}

X8_INLINE uint64_t x8_loop(const aj_cpu_adamw8_args* a, size_t begin, size_t end, adamjit_dtype pdt,
                           adamjit_dtype gdt, int amsgrad) {
  /* two tiles per state: one being written by pass one, one being requantized */
  float tiles[2][3][X8_TILE] __attribute__((aligned(64)));
  const size_t tile = a->block_wise ? (size_t)a->block_size : X8_TILE;
  const x8_consts c = {_mm512_set1_ps(a->beta1),       _mm512_set1_ps(1.0f - a->beta1), _mm512_set1_ps(a->beta2),
                       _mm512_set1_ps(1.0f - a->beta2), _mm512_set1_ps(a->decay),       _mm512_set1_ps(a->step_size),
                       _mm512_set1_ps(a->inv_sqrt_c2),  _mm512_set1_ps(a->eps),         _mm512_set1_ps(a->grad_scale)};
  const x8_io io = {a->param, a->grad, {a->c1, a->c2, a->c3}};
  x8_pending pd;
  memset(&pd, 0, sizeof pd); /* n = 0: nothing pending before the first block */
  x8_block bl;
  bl.nonfinite = 0;
  int cur = 0;
  for (size_t b0 = begin; b0 < end; b0 += tile, cur ^= 1) {
    const size_t n = b0 + tile < end ? tile : end - b0;
    const size_t blk = a->block_wise ? b0 / (size_t)a->block_size : 0;
    bl.A[0] = _mm512_set1_ps(a->absmax1[blk]);
    bl.A[1] = _mm512_set1_ps(a->absmax2[blk]);
    bl.A[2] = _mm512_set1_ps(amsgrad ? a->absmax3[blk] : 0.0f);
    for (int s = 0; s < 3; s++) {
      bl.t[s] = tiles[cur][s];
      bl.mx[s] = _mm512_setzero_ps();
    }
    const int requant = pd.n > 0;
    size_t j = 0;
    /* whole chunks with a block pending (all but the first block) take the fast form; the
     * first block and a short last chunk the general one */
    if (requant)
      for (; j + 64 <= n; j += 64) x8_chunk(io, c, &bl, pd, b0, j, ~0ull, 1, 1, pdt, gdt, amsgrad);
    for (; j < n; j += 64) x8_chunk(io, c, &bl, pd, b0, j, x8_mask64(n - j), 0, requant, pdt, gdt, amsgrad);
    if (requant) x8_flush(&pd, amsgrad, j); /* the rest of the pending block where this one is shorter */
    float mx[3] = {0.0f, 0.0f, 0.0f};
    for (int s = 0; s < 2 + amsgrad; s++) mx[s] = _mm512_reduce_max_ps(bl.mx[s]);
    if (a->block_wise) {
      a->absmax1[blk] = mx[0];
      a->absmax2[blk] = mx[1];
      if (amsgrad) a->absmax3[blk] = mx[2];
    } else {
      memcpy(mx, a->new_absmax, sizeof mx);
    }
    x8_pend(&pd, 0, bl.t[0], a->c1 + b0, mx[0]);
    x8_pend(&pd, 1, bl.t[1], a->c2 + b0, mx[1]);
    if (amsgrad) x8_pend(&pd, 2, bl.t[2], a->c3 + b0, mx[2]);
    pd.n = n;
  }
  x8_flush(&pd, amsgrad, 0);
  return bl.nonfinite;
}

#define X8_AMSGRAD(P, G) return a->c3 ? x8_loop(a, begin, end, P, G, 1) : x8_loop(a, begin, end, P, G, 0)
#define X8_GRAD(P)                                  \
  switch (a->grad_dtype) {                          \
    case ADAMJIT_F32: X8_AMSGRAD(P, ADAMJIT_F32);   \
    case ADAMJIT_F16: X8_AMSGRAD(P, ADAMJIT_F16);   \
    case ADAMJIT_BF16: X8_AMSGRAD(P, ADAMJIT_BF16); \
  }                                                 \
  break

X8_TARGET static uint64_t x8_adamw8(const aj_cpu_adamw8_args* a, size_t begin, size_t end) {
  switch (a->param_dtype) {
    case ADAMJIT_F32: X8_GRAD(ADAMJIT_F32);
    case ADAMJIT_F16: X8_GRAD(ADAMJIT_F16);
    case ADAMJIT_BF16: X8_GRAD(ADAMJIT_BF16);
  }
  return 0;
}

#undef X8_GRAD
#undef X8_AMSGRAD

/* ------------------------------------------------------------------ set-up */

/* The requantize tables of map s (0: signed, whose 0 is code 127; 1: unsigned, 0 at code 0).
 * Segments: the 0; the decades above it, of 1, 2, 4 ... 64 codes (signed) or 2 ... 128
 * (unsigned), evenly spaced (SPEC 3); the 1.0 at code 255. Returns 0 where the map is not
 * shaped so (x8_verify then has the last word anyway). */
static int x8_build_rq(int s, const aj_qmap* q) {
  x8_rq* r = &x8.rq[s];
  const int zero = s == 0 ? 127 : 0, top = AJ_QMAP_SIZE - 1;
  const int first = (top - zero - 1) / 127; /* the first decade's length: 1 or 2 */
  if (first < 1 || first * 127 != top - zero - 1) return 0;
  int c0[X8_SEGMENTS], n[X8_SEGMENTS];
  c0[0] = zero;
  n[0] = 1;
  for (int d = 1; d < X8_SEGMENTS - 1; d++) {
    c0[d] = c0[d - 1] + n[d - 1];
    n[d] = first << (d - 1);
  }
  c0[X8_SEGMENTS - 1] = top;
  n[X8_SEGMENTS - 1] = 1;
  memset(r, 0, sizeof *r);
  for (int d = 0; d < X8_SEGMENTS; d++) {
    if (n[d] == 1) { /* one code (the 0: its own; others: the one below, whose threshold is its start) */
      r->seg_o[d] = (float)(d == 0 ? c0[d] + 0.5 : c0[d] - 0.5);
    } else { /* the thresholds between its codes land X8_BIAS below an integer + 1 */
      double v0 = q->values[c0[d]], h = (q->values[c0[d] + n[d] - 1] - v0) / (n[d] - 1);
      r->seg_s[d] = (float)(1.0 / h);
      r->seg_o[d] = (float)(c0[d] + 0.5 - X8_BIAS - v0 / h);
    }
  }
  /* Per octave [2^(e-127), 2^(e-126)), e = 96..127: the segment at its start and where the
   * next one starts in it. A segment's line is taken from its first value on (the previous
   * segment's last value: there the line of the next gives that code or the one below, the
   * previous one's line would overshoot it up to the boundary threshold, 1.5 codes on). */
  int ok = 1;
  for (int k = 0; k < 32; k++) {
    float lo = ldexpf(1.0f, k - 31), hi = 2.0f * lo;
    int d = 0;
    while (d < X8_SEGMENTS - 1 && q->values[c0[d] + n[d] - 1] <= lo) d++;
    r->oct_seg[k] = d;
    r->oct_bound[k] = 4.0f;
    if (d < X8_SEGMENTS - 1 && q->values[c0[d] + n[d] - 1] < hi) {
      r->oct_bound[k] = q->values[c0[d] + n[d] - 1];
      ok &= d + 1 == X8_SEGMENTS - 1 || q->values[c0[d + 1] + n[d + 1] - 1] >= hi; /* one switch at most */
    }
  }
  /* negative values step where |x| > the mirrored threshold's magnitude: its bits + 1 here;
   * from the estimate of 0 every nonzero one does (the guard: -0 arrives as +0) */
  for (int c = zero; c < top + (s != 0); c++) { /* signed estimates stay below the top code */
    uint32_t t[2] = {f2u(q->thresholds[c]), 0x7f800001u};
    if (s == 0 && 253 - c >= 0) t[1] = (f2u(q->thresholds[253 - c]) & 0x7fffffffu) + 1u;
    if (s == 0 && c == zero) t[1] = 1u;
    for (int neg = 0; neg < 1 + (s == 0); neg++)
      for (int k = 0; k < 4; k++) r->t_planes[k][s == 0 ? neg * 128 + (c & 127) : c] = (uint8_t)(t[neg] >> (8 * k));
  }
  return ok;
}

/* The code the portable loop gives x, sign guard included. */
static int x8_reference(const aj_qmap* q, float x, int guard) {
  int c = nearest_code(qview_of(q), x, 1);
  return c - (guard >= 0 && x < 0.0f && c == guard);
}

/* The requantize path's codes and estimates of 64 values (s = 0: signed map, 1: unsigned). */
X8_TARGET static void x8_codes_of(int s, const float x[64], uint8_t out[64], int32_t est[64]) {
  __m512i code[4];
  x8_codes64(s, x, _mm512_set1_ps(1.0f), code);
  x8_store_codes(code, out, _mm512_setzero_si512(), 0, ~0ull);
  for (int q = 0; q < 4; q++) {
    __m512i xb = _mm512_castps_si512(_mm512_load_ps(x + 16 * q));
    _mm512_storeu_si512(est + 16 * q, x8_estimate(&x8.rq[s], x8_magnitude(s, xb)));
  }
}

static uint32_t x8_clamp_magnitude(int s, uint32_t u) {
  int32_t a = (int32_t)(s == 0 ? u & 0x7fffffffu : u);
  return (uint32_t)(a < X8_MAG_LO ? X8_MAG_LO : a > X8_MAG_HI ? X8_MAG_HI : a);
}

/* Proves the requantize path of map s equal to the portable loop on every float. Between
 * two consecutive points checked here, the true code of the clamped magnitude a (for a
 * nonzero negative value of the signed map: 254 - its code, guard included) and a's
 * segment are constant, and the estimate, a truncated a * s + o with s >= 0, cannot go
 * down: it is checked to be the code or one below at both ends, so it is that
 * everywhere between, and the exact threshold comparison gives the code. The points: both
 * sides of every threshold (of either sign), value and octave boundary, and specials (zeros,
 * subnormals, 1, 2, huge, infinities, NaNs), each with both signs; their final codes are
 * compared as well. */
static int x8_verify(int s, const aj_qmap* q, int guard) {
  static const uint32_t special[] = {0x00000000u, 0x00000001u, 0x00007fffu, 0x00008000u, 0x007fffffu,
                                     0x00800000u, 0x3f7fffffu, 0x3f800000u, 0x3fffffffu, 0x40000000u,
                                     0x7f7fffffu, 0x7f800000u, 0x7f800001u, 0x7fc00000u, 0x7fffffffu};
  enum { N_SPECIAL = sizeof special / sizeof special[0], MAX_POINTS = 2 * (N_SPECIAL + 5 * AJ_QMAP_SIZE + 2 * 33) };
  uint32_t* pts = malloc(MAX_POINTS * sizeof *pts);
  if (!pts) return 0;
  size_t n = 0;
  for (uint32_t sign = 0; sign < 2; sign++) {
    const uint32_t sb = sign << 31;
    for (size_t i = 0; i < N_SPECIAL; i++) pts[n++] = sb | special[i];
    for (int c = 0; c < AJ_QMAP_SIZE - 1; c++) {
      uint32_t t = f2u(q->thresholds[c]) & 0x7fffffffu, v = f2u(q->values[c + 1]) & 0x7fffffffu;
      pts[n++] = sb | (t - 1);
      pts[n++] = sb | t;
      pts[n++] = sb | (t + 1);
      pts[n++] = sb | (v - (v > 0)); /* the values: where segments switch lines */
      pts[n++] = sb | v;
    }
    for (uint32_t e = 96; e <= 128; e++) {
      pts[n++] = sb | (e << 23);
      pts[n++] = sb | ((e << 23) - 1);
    }
  }
  int ok = 1;
  for (size_t i = 0; i < n && ok; i += 64) {
    float x[64] __attribute__((aligned(64)));
    uint8_t got[64];
    int32_t est[64];
    for (size_t k = 0; k < 64; k++) x[k] = u2f(pts[i + k < n ? i + k : i]);
    x8_codes_of(s, x, got, est);
    for (size_t k = 0; k < 64; k++) {
      ok &= got[k] == (uint8_t)x8_reference(q, x[k], guard);
      /* the code before the sign's handling: a negative value's mirrored */
      float a = u2f(x8_clamp_magnitude(s, f2u(x[k])));
      int code = s == 0 && signbit(x[k]) && x[k] != 0.0f ? 254 - x8_reference(q, -a, guard)
                                                        : nearest_code(qview_of(q), a, 1);
      ok &= est[k] == code || est[k] == code - 1;
    }
  }
  free(pts);
  return ok;
}

static void x8_prepare(void) {
  const char* env = getenv("ADAMJIT_CPU_AVX512");
  if (env && strcmp(env, "0") == 0) return; /* x8.ok stays 0 */
  if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512vbmi")))
    return;
  const aj_qmap* q1 = x8.q[0] = aj_qmap_builtin(1);
  const aj_qmap* q2 = x8.q[1] = aj_qmap_builtin(0);
  for (int l = 0; l < 4; l++)
    for (int q = 0; q < 4; q++) {
      x8.unpack_order[4 * l + q] = (int32_t)((uint32_t)(16 * q + 4 * l) * 0x01010101u + 0x03020100u);
      /* bytes 16l + 4q + i <- low byte of element 4l + i of est[q & 1] (bit 6: the second) */
      x8.pack_transposed[4 * l + q] = (int32_t)((uint32_t)(((q & 1) << 6) + 16 * l) * 0x01010101u + 0x0c080400u);
    }
  /* the signed map must mirror about its exact 0 at 127 */
  int ok = f2u(q1->values[127]) == 0u;
  for (int j = 0; j < AJ_QMAP_SIZE / 2; j++) {
    if (j < 127) ok &= f2u(q1->values[126 - j]) == (f2u(q1->values[128 + j]) ^ 0x80000000u);
    for (int k = 0; k < 4; k++) x8.half_planes[k][j] = (uint8_t)(f2u(q1->values[128 + j]) >> (8 * k));
  }
  for (int j = 0; j < AJ_QMAP_SIZE; j++)
    for (int k = 0; k < 4; k++) x8.planes[k][j] = (uint8_t)(f2u(q2->values[j]) >> (8 * k));
  ok &= q1->zero_index == 127 && nearest_code(qview_of(q1), 0.0f, 1) == 127 && nearest_code(qview_of(q2), 0.0f, 1) == 0;
  x8.ok = ok && q1->table_ok && q2->table_ok && x8_build_rq(0, q1) && x8_build_rq(1, q2) &&
          x8_verify(0, q1, q1->zero_index) && x8_verify(1, q2, -1);
}

/* Whether x8_adamw8 can run a's update: an AVX-512 CPU, the built-in maps, blocks of whole
 * 64-element chunks. */
static int x8_usable(const aj_cpu_adamw8_args* a) {
  pthread_once(&x8_once, x8_prepare);
  return x8.ok && a->q1 == x8.q[0] && a->q2 == x8.q[1] &&
         (!a->block_wise || (a->block_size % 64 == 0 && a->block_size <= X8_TILE));
}

#endif
