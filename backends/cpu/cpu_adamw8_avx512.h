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
 *  - Requantizing reads no table through gathers either (see its section): a value's code
 *    is estimated from the top 16 bits of its float by a fixed-point line of its octave,
 *    then checked against the one exact threshold above, read from byte planes by
 *    permutes. With the two requantize gathers the step took 5.2-5.3 ms at 1e7 elements on
 *    the EPYC, with decade lines in fp32 3.6-3.8 (`adamjit bench --sizes 1e7 --variants
 *    fp32,8bit-b256`, builds alternated in one session). The step is bound by its
 *    arithmetic and by how far ahead the core's scheduler looks: in one-off experiments
 *    (edited copies of this file, not kept), writing the codes without computing them gave
 *    1.7-2.5 ms, memory-bound, and replacing the divide and square root by multiplies
 *    changed nothing. The 16-bit estimate (in place of decade lines in fp32) and
 *    requantizing m and v side by side (x8_codes64) took the step from 0.64-0.85 to
 *    0.53-0.54 ns per element on one core, in a scratch harness on an L2-resident tensor;
 *    requantizing in two stages a chunk apart, the estimates in the high bytes of their
 *    lanes, the signed map's comparison with the sign and its lines per half octave from
 *    0.57-0.59 to 0.48-0.50 ms per step (`adamjit bench --sizes 1e6 --threads 1 --variants
 *    8bit-b256 --repeats 41` on one pinned CPU, builds alternated).
 *  - Pass two of a block (requantizing) runs interleaved with pass one of the next, so that
 *    the permutes of one overlap the divides of the other; and the arrays are prefetched
 *    (X8_PREFETCH), which lets their loads from memory overlap the arithmetic better than
 *    the hardware prefetchers do.
 * Per 64 elements with fp32 params the loop runs about 410 instructions: some 240 vector
 * operations (50 of them permutes, which this core runs two per cycle), 113 loads (70 of
 * them the permutes' tables: 32 registers do not hold them all; 16 the compiler's spills)
 * and 26 stores. The core takes about 110 cycles for that (0.47 ns per element at the
 * 3.7 GHz a chain of scalar adds runs at), where those counts put no one unit above about
 * half its rate (estimated: the VM exposes no performance counters); what helped was shorter chains of dependent
 * operations, more independent work in flight and fewer loads. Edited copies of this file
 * in a scratch harness (one core, an L2-resident tensor, interleaved runs) showed where the
 * time goes:
 *  - loads more than operations: with two registers standing in for the 32 threshold tables
 *    (wrong codes, for timing only) the step took 8% less time, with the dequantize tables
 *    too 13% less; whereas removing 12 of the vector operations (the mantissa mask folded
 *    into the lines, the gradient-scale multiply skipped at scale 1, the zero-absmax blend
 *    made a branch) left it unchanged (0.479 ns per element against 0.477);
 *  - but the tables cannot simply stay in registers: requantizing each state of a block in
 *    a loop of its own, after pass one, with its 21 tables meant to stay in registers, was
 *    15% slower (they did not fit beside the loop's values: spills, and no overlap with
 *    pass one's divides);
 *  - not kept either: carrying the values from stage one to stage two (no gain measured),
 *    reading the thresholds in stage one (slower: spills), dequantizing a chunk ahead
 *    through memory (slower: the loads and stores). */
#ifndef ADAMJIT_BACKENDS_CPU_ADAMW8_AVX512_H
#define ADAMJIT_BACKENDS_CPU_ADAMW8_AVX512_H

#include <float.h>
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
/* Requantizing clamps the top halves of magnitudes to those of [2^-31, 2): below all
 * thresholds and above the last, and the octaves (exponents 96..127) then fit 32-entry
 * tables. */
#define X8_TOP_LO (96 << 7)
#define X8_TOP_HI 0x3fff

/* What requantizing by a map reads (see the requantize section). */
typedef struct x8_rq {
  /* per octave k (exponent 96 + k): the estimate's lines (a + b * mantissa) >> 8. The
   * signed map's halves of octaves take one each, in entry 2k (mantissas below 64) and
   * 2k + 1. The unsigned map's octaves take two, as one per half does not fit them all:
   * the first in entry 32 + k, the second in k, which takes over from mantissa split[k] on */
  uint16_t line_a[64] __attribute__((aligned(64)));
  uint16_t line_b[64] __attribute__((aligned(64)));
  uint16_t split[32] __attribute__((aligned(64)));
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
  uint16_t top_words[32] __attribute__((aligned(64)));       /* see x8_top_halves */
  uint8_t words_transposed[64] __attribute__((aligned(64)));  /* see x8_thresholds */
  uint8_t high_bytes[64] __attribute__((aligned(64)));        /* byte e <- the high byte of 16-bit lane e */
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
 * and for the signed map a negative value never takes the code of 0 (-0 does). Here, for
 * 64 values at a time:
 *  1. the top halves of their bits (sign, exponent, 7 mantissa bits), packed 32 to a
 *     vector, give each magnitude an estimate of its code from a line of its octave in
 *     16-bit fixed point, (a + b * mantissa) >> 8, with at most two lines per octave: the
 *     code, or one below, for every float with that top half (x8_verify proves it for all
 *     of them at set-up). Magnitudes are clamped to the top halves of [2^-31, 2): the
 *     estimates of the ends hold for everything beyond them;
 *  2. the threshold above the estimate, read from byte planes by permutes (64 at a time as
 *     in dequantizing), compared exactly with the value's bits: code = estimate + (x >=
 *     threshold), as x > threshold - 1 ulp for the signed map (see below).
 * The lines come from the maps themselves (x8_build_rq fits them to the codes the
 * portable loop gives), not from the shape of the built-in ones.
 * The signed map compares its values' bits, sign included, as unsigned integers with x >
 * entry: its positive half of the table holds the thresholds - 1 ulp, its negative half,
 * which negative values read, the sign bit over the mirrored thresholds' magnitudes, as a
 * tie goes the other way for them (|x| > magnitude), and the sign bit alone above the
 * estimate of 0, which is the sign guard (-0 stays 127); negative values then take the
 * mirrored code 254 - c. Estimates stay below 255 (x8_build_rq), so a NaN, whose bits pass
 * every threshold, takes the code of the largest magnitudes: 255, or 0 negative (its half's
 * top entry is all ones, which no value's bits exceed). */

/* The top halves of 64 values' bits (32-bit lanes xb[0..3], elements 16q..16q+15), as 16-bit
 * lanes: hw[0] elements 0..31, hw[1] 32..63. */
X8_INLINE void x8_top_halves(const __m512i xb[4], __m512i hw[2]) {
  const __m512i odd = _mm512_load_si512(x8.top_words);
  hw[0] = _mm512_permutex2var_epi16(xb[0], odd, xb[1]);
  hw[1] = _mm512_permutex2var_epi16(xb[2], odd, xb[3]);
}

/* Map s's lines (and the unsigned map's splits), loaded once for the two halves of 64
 * values. As memory operands of the permutes, which is what the compiler makes of them
 * otherwise, each half loaded them again, and this loop is short of loads more than of
 * operations (see the top of the file): holding them in registers took the step from 0.501
 * to 0.493 ms (`adamjit bench --sizes 1e6 --threads 1 --variants 8bit-b256 --repeats 41` on
 * one pinned CPU, 20th percentiles of ten runs alternated with the build before). The empty
 * asm hides where the values came from, so that the compiler cannot fold the loads back
 * into the permutes. */
typedef struct x8_lines {
  __m512i a[2], b[2], split;
} x8_lines;

X8_INLINE x8_lines x8_lines_of(int s) {
  const x8_rq* r = &x8.rq[s];
  x8_lines L = {{_mm512_load_si512(r->line_a), _mm512_load_si512(r->line_a + 32)},
                {_mm512_load_si512(r->line_b), _mm512_load_si512(r->line_b + 32)},
                _mm512_load_si512(r->split)};
  __asm__("" : "+v"(L.a[0]), "+v"(L.a[1]), "+v"(L.b[0]), "+v"(L.b[1]));
  if (s) __asm__("" : "+v"(L.split));
  return L;
}

/* Step 1 for 32 top halves w: the estimates, in the high byte of each lane (the low byte
 * holds the line's fraction, which saves the shift: stage two reads the high bytes). The
 * unsigned map clamps w as a signed integer, which puts every negative value on the lowest
 * magnitude, whose estimate is the code of +0 (x8_build_rq). */
X8_INLINE __m512i x8_estimate32(const x8_lines* L, int s, __m512i w) {
  __m512i h = s == 0 ? _mm512_and_si512(w, _mm512_set1_epi16(0x7fff)) : w;
  h = _mm512_min_epi16(_mm512_max_epi16(h, _mm512_set1_epi16(X8_TOP_LO)), _mm512_set1_epi16(X8_TOP_HI));
  __m512i mant = _mm512_and_si512(h, _mm512_set1_epi16(0x7f));
  __m512i idx;
  if (s == 0) {
    idx = _mm512_srli_epi16(h, 6); /* 192..255: the permutes read the low six bits, 2k + half */
  } else {
    __m512i oct = _mm512_srli_epi16(h, 7); /* 96..127: bit 5 is set, the permutes read the low bits */
    __mmask32 second = _mm512_cmpge_epu16_mask(mant, _mm512_permutexvar_epi16(oct, L->split));
    /* the octave's line: entry 32 + k for the first, k for the second (bit 5 cleared) */
    idx = _mm512_mask_sub_epi16(oct, second, oct, _mm512_set1_epi16(32));
  }
  __m512i a = _mm512_permutex2var_epi16(L->a[0], idx, L->a[1]);
  __m512i b = _mm512_permutex2var_epi16(L->b[0], idx, L->b[1]);
  return _mm512_add_epi16(_mm512_mullo_epi16(b, mant), a);
}

/* Step 2's table read: the thresholds of 64 table slots (the high bytes of slot[0], elements
 * 0..31, and slot[1], 32..63) as float bits in four vectors, elements 16q..16q+15. The slots
 * go in transposed as x8_planes_join wants them: byte 16l + 4q + i from element 16q + 4l + i. */
X8_INLINE void x8_thresholds(const x8_rq* r, const __m512i slot[2], __m512i out[4]) {
  __m512i c = _mm512_permutex2var_epi8(slot[0], _mm512_load_si512(x8.words_transposed), slot[1]);
  __mmask64 upper = _mm512_movepi8_mask(c);
  const __m512i* t = (const __m512i*)r->t_planes;
  __m512i b[4];
  for (int k = 0; k < 4; k++) {
    __m512i lo = _mm512_permutex2var_epi8(_mm512_load_si512(t + 4 * k), c, _mm512_load_si512(t + 4 * k + 1));
    __m512i hi = _mm512_permutex2var_epi8(_mm512_load_si512(t + 4 * k + 2), c, _mm512_load_si512(t + 4 * k + 3));
    b[k] = _mm512_mask_blend_epi8(upper, lo, hi);
  }
  x8_planes_join(b, out);
}

/* The estimates of 64 values x[q] (elements 16q..16q+15) as two vectors of 16-bit lanes
 * (elements 0..31, 32..63), and the top halves they came from. */
X8_INLINE void x8_estimates64(int s, const __m512i xb[4], __m512i hw[2], __m512i est[2]) {
  x8_top_halves(xb, hw);
  const x8_lines L = x8_lines_of(s);
  for (int w = 0; w < 2; w++) est[w] = x8_estimate32(&L, s, hw[w]);
}

/* The codes of 64 values x = t[k][0..63] * inv[k] for each of n states k, as 64 bytes in
 * out[k]; state k is quantized by map s0 || k (0: signed, 1: unsigned). It runs in two
 * stages: x8_codes_begin makes the estimates (step 1), x8_codes_end reads the thresholds
 * and compares (step 2), and the step runs them a chunk apart (x8_chunk). Each state's
 * steps form a chain of dependent permutes longer than the core's scheduler looks ahead;
 * the states go through each stage side by side, and the stages of different chunks
 * overlap with pass one's arithmetic, which keeps the core busy. In a scratch harness (one
 * core, an L2-resident tensor, not kept): the two stages within one chunk around pass one
 * 0.52-0.57 ns per element, a chunk apart 0.49-0.52. */
typedef struct x8_estimates {
  __m512i hw[3][2], est[3][2];
} x8_estimates;

/* The states' values as float bits, xb[k][q] elements 16q..16q+15. */
X8_INLINE void x8_scaled(int n, const float* const t[3], const __m512 inv[3], __m512i xb[3][4]) {
#pragma GCC unroll 3
  for (int k = 0; k < n; k++) {
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) xb[k][q] = _mm512_castps_si512(_mm512_mul_ps(_mm512_load_ps(t[k] + 16 * q), inv[k]));
  }
}

X8_INLINE void x8_codes_begin(int n, int s0, const float* const t[3], const __m512 inv[3], x8_estimates* e) {
  __m512i xb[3][4];
  x8_scaled(n, t, inv, xb);
#pragma GCC unroll 3
  for (int k = 0; k < n; k++) x8_estimates64(s0 || k, xb[k], e->hw[k], e->est[k]);
}

/* Stage two: the values again (multiplying anew timed the same as carrying them from stage
 * one, and holds fewer registers), the thresholds above the estimates, the comparisons. */
X8_INLINE void x8_codes_end(int n, int s0, const float* const t[3], const __m512 inv[3], const x8_estimates* e,
                            __m512i out[3]) {
  __m512i xb[3][4], thr[3][4];
  x8_scaled(n, t, inv, xb);
#pragma GCC unroll 3
  for (int k = 0; k < n; k++) {
    const int s = s0 || k;
    __m512i slot[2];
    /* the signed map: negative values read the upper half of the table (the slot's bit 7,
     * the lane's bit 15: the sign) */
    for (int w = 0; w < 2; w++)
      slot[w] = s == 0 ? _mm512_ternarylogic_epi32(e->est[k][w], e->hw[k][w], _mm512_set1_epi16((short)0x8000),
                                                   0xd8 /* c ? b : a */)
                       : e->est[k][w];
    x8_thresholds(&x8.rq[s], slot, thr[k]);
  }
#pragma GCC unroll 3
  for (int k = 0; k < n; k++) {
    const int s = s0 || k;
    __mmask16 step[4];
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++)
      step[q] = s == 0 ? _mm512_cmpgt_epu32_mask(xb[k][q], thr[k][q])
                       : _mm512_cmpge_epi32_mask(xb[k][q], thr[k][q]); /* negative values stay on the code of 0 */
    __m512i code[2];
    for (int w = 0; w < 2; w++) {
      /* in the high bytes, as the estimates */
      code[w] = _mm512_mask_add_epi16(e->est[k][w], _mm512_kunpackw(step[2 * w + 1], step[2 * w]), e->est[k][w],
                                      _mm512_set1_epi16(0x100));
      /* a negative value, stepped by its own table half, takes the mirrored code: 0xfeff -
       * code has 254 - c in its high byte (the low byte borrows nothing) */
      if (s == 0)
        code[w] = _mm512_mask_sub_epi16(code[w], _mm512_movepi16_mask(e->hw[k][w]), _mm512_set1_epi16((short)0xfeff),
                                        code[w]);
    }
    out[k] = _mm512_permutex2var_epi8(code[0], _mm512_load_si512(x8.high_bytes), code[1]);
  }
}

/* Both stages at once. */
X8_INLINE void x8_codes64(int n, int s0, const float* const t[3], const __m512 inv[3], __m512i out[3]) {
  x8_estimates e;
  x8_codes_begin(n, s0, t, inv, &e);
  x8_codes_end(n, s0, t, inv, &e, out);
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

/* Pass two of 64 elements of the pending block, in two stages (x8_codes_begin, _end). */
X8_INLINE void x8_requant_begin(const x8_pending* pd, int amsgrad, size_t j, x8_estimates* e) {
  const float* const t[3] = {pd->t[0] + j, pd->t[1] + j, pd->t[2] + j};
  x8_codes_begin(2 + amsgrad, 0, t, pd->inv, e);
}

/* Stores the codes of 64 elements of every state, or the zero code where its absmax is 0. */
X8_INLINE void x8_requant_end(const x8_pending* pd, int amsgrad, size_t j, __mmask64 km, const x8_estimates* e) {
  const float* const t[3] = {pd->t[0] + j, pd->t[1] + j, pd->t[2] + j};
  __m512i code[3];
  x8_codes_end(2 + amsgrad, 0, t, pd->inv, e, code);
  for (int s = 0; s < 2 + amsgrad; s++) {
    const __m512i zero = _mm512_set1_epi8((char)(s == 0 ? 127 : 0)); /* the code of 0.0 (x8_prepare checks) */
    _mm512_mask_storeu_epi8(pd->codes[s] + j, km, _mm512_mask_blend_epi8(pd->is_zero[s], code[s], zero));
  }
}

X8_INLINE void x8_requantize64(const x8_pending* pd, int amsgrad, size_t j, __mmask64 km) {
  x8_estimates e;
  x8_requant_begin(pd, amsgrad, j, &e);
  x8_requant_end(pd, amsgrad, j, km, &e);
}

/* Pass two of the pending block from element j on, alone. */
X8_INLINE void x8_flush(const x8_pending* pd, int amsgrad, size_t j) {
  for (; j < pd->n; j += 64) x8_requantize64(pd, amsgrad, j, x8_mask64(pd->n - j));
}

/* Pass one of elements [j, j + 64) of the block at b0, valid where km is set (all of them when
 * full, which lets the compiler drop the masks), and with requant, pass two of the pending
 * block, which is a whole one: of a full chunk, stage two of elements [j - 64, j) (from j =
 * 64 on) and stage one of [j, j + 64) into e, which x8_loop finishes after the last; of
 * another, both stages of [j, j + 64). */
X8_INLINE void x8_chunk(const x8_io io, const x8_consts c, x8_block* bl, const x8_pending pd, size_t b0, size_t j,
                        __mmask64 km, int full, int requant, adamjit_dtype pdt, adamjit_dtype gdt, int amsgrad,
                        x8_estimates* e) {
  const size_t psize = pdt == ADAMJIT_F32 ? 4 : 2, gsize = gdt == ADAMJIT_F32 ? 4 : 2;
  const size_t ahead = b0 + j + X8_PREFETCH;
  for (size_t l = 0; l < psize; l++) _mm_prefetch((const char*)io.param + ahead * psize + 64 * l, _MM_HINT_ET0);
  for (size_t l = 0; l < gsize; l++) _mm_prefetch((const char*)io.grad + ahead * gsize + 64 * l, _MM_HINT_T0);
  for (int s = 0; s < 2 + amsgrad; s++) _mm_prefetch((const char*)(io.codes[s] + ahead), _MM_HINT_ET0);

  if (requant && full) {
    if (j) x8_requant_end(&pd, amsgrad, j - 64, ~0ull, e);
    x8_requant_begin(&pd, amsgrad, j, e);
  }
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
  if (requant && !full) x8_requantize64(&pd, amsgrad, j, ~0ull);
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
    x8_estimates e;
    if (requant) {
      for (; j + 64 <= n; j += 64) x8_chunk(io, c, &bl, pd, b0, j, ~0ull, 1, 1, pdt, gdt, amsgrad, &e);
      if (j) x8_requant_end(&pd, amsgrad, j - 64, ~0ull, &e);
    }
    for (; j < n; j += 64) x8_chunk(io, c, &bl, pd, b0, j, x8_mask64(n - j), 0, requant, pdt, gdt, amsgrad, &e);
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

static int imax(int a, int b) { return a > b ? a : b; }
static int imin(int a, int b) { return a < b ? a : b; }
static long lmax(long a, long b) { return a > b ? a : b; }
static long lmin(long a, long b) { return a < b ? a : b; }

/* The code the portable loop gives x, sign guard included. */
static int x8_reference(const aj_qmap* q, float x, int guard) {
  int c = nearest_code(qview_of(q), x, 1);
  return c - (guard >= 0 && x < 0.0f && c == guard);
}

/* What the estimate of x must reach: its code for a positive x (and every value of the
 * unsigned map), the mirrored code 254 - c for a negative x of the signed map (s = 0). */
static int x8_target(int s, const aj_qmap* q, int guard, float x) {
  int c = x8_reference(q, x, guard);
  return s == 0 && signbit(x) ? 254 - c : c;
}

/* The estimates a top half h of a magnitude may have (0x3000..0x3fff): the target, or one
 * below, of every value that takes h's estimate, the clamped ones included, either sign. */
static void x8_allowed(int s, const aj_qmap* q, int guard, uint32_t h, int* lo, int* hi) {
  const float a0 = h == X8_TOP_LO ? 0.0f : u2f(h << 16), a1 = h == X8_TOP_HI ? FLT_MAX : u2f(h << 16 | 0xffffu);
  /* targets grow with the magnitude on either side */
  *lo = x8_target(s, q, guard, a1) - 1;
  *hi = x8_target(s, q, guard, a0);
  if (s == 0) {
    *lo = imax(*lo, x8_target(s, q, guard, -a1) - 1);
    *hi = imin(*hi, x8_target(s, q, guard, -a0));
  }
  *hi = imin(*hi, AJ_QMAP_SIZE - 2); /* below 255: see the requantize section */
}

static long x8_floor_div(long a, long b) { return a / b - (a % b != 0 && a < 0); }

/* A line (a + b * m) >> 8 within [lo[m], hi[m]] for every m in [m0, m1), a and b 16-bit and
 * the sum below 2^16. For each pair i < j, b * (j - i) must lie within the ranges' difference
 * (256 lo[j] - (256 hi[i] + 255), 256 hi[j] + 255 - 256 lo[i]); for a fixed b, a then exists
 * where every pair's ranges for a meet (Helly, in one dimension), the range a >= 0 too. */
static int x8_fit(const int* lo, const int* hi, int m0, int m1, uint16_t* a, uint16_t* b) {
  long bmin = 0, bmax = 65535;
  for (int i = m0; i < m1; i++) {
    if (lo[i] > hi[i]) return 0;
    for (int j = i + 1; j < m1; j++) {
      bmin = lmax(bmin, -x8_floor_div(256L * hi[i] + 255 - 256L * lo[j], j - i));
      bmax = lmin(bmax, x8_floor_div(256L * hi[j] + 255 - 256L * lo[i], j - i));
    }
  }
  if (bmin > bmax) return 0;
  long amin = 0, amax = 65535;
  for (int m = m0; m < m1; m++) {
    amin = lmax(amin, 256L * lo[m] - bmin * m);
    amax = lmin(amax, 256L * hi[m] + 255 - bmin * m);
  }
  if (amin > amax) return 0;
  *a = (uint16_t)amin;
  *b = (uint16_t)bmin;
  return 1;
}

/* The requantize tables of map s (0: signed, whose 0 is code 127; 1: unsigned, 0 at code 0).
 * The signed map: a line per half octave. The unsigned one: per octave, the longest first
 * piece of mantissas that one line fits, then the rest with a second. Returns 0 where
 * these lines do not fit the map. */
static int x8_build_rq(int s, const aj_qmap* q, int guard) {
  x8_rq* r = &x8.rq[s];
  memset(r, 0, sizeof *r);
  for (int k = 0; k < 32; k++) {
    int lo[128], hi[128];
    for (int m = 0; m < 128; m++) x8_allowed(s, q, guard, (uint32_t)(X8_TOP_LO + 128 * k + m), &lo[m], &hi[m]);
    if (s == 0) {
      if (!x8_fit(lo, hi, 0, 64, &r->line_a[2 * k], &r->line_b[2 * k]) ||
          !x8_fit(lo, hi, 64, 128, &r->line_a[2 * k + 1], &r->line_b[2 * k + 1]))
        return 0;
      continue;
    }
    int good = 0, bad = 129; /* the first piece [0, good) fits, [0, bad) does not */
    uint16_t a, b;
    while (bad - good > 1) {
      int mid = (good + bad) / 2;
      if (x8_fit(lo, hi, 0, mid, &a, &b))
        good = mid;
      else
        bad = mid;
    }
    if (!x8_fit(lo, hi, 0, good, &r->line_a[32 + k], &r->line_b[32 + k]) ||
        !x8_fit(lo, hi, good, 128, &r->line_a[k], &r->line_b[k]))
      return 0;
    r->split[k] = (uint16_t)good;
  }
  /* the signed map compares x > entry (see the requantize section): positive values with
   * the threshold - 1 ulp; negative ones, where |x| > the mirrored threshold's magnitude,
   * with the sign bit over that magnitude, and from the estimate of 0 every nonzero one */
  const int zero = s == 0 ? 127 : 0, top = AJ_QMAP_SIZE - 1;
  for (int c = zero; c < top + (s != 0); c++) { /* signed estimates stay below the top code */
    uint32_t t[2] = {f2u(q->thresholds[c]), 0xffffffffu};
    if (s == 0) {
      if (t[0] == 0u || t[0] >= 0x80000000u) return 0; /* a positive threshold > +0 */
      t[0] -= 1u;
      if (253 - c >= 0) t[1] = 0x80000000u | (f2u(q->thresholds[253 - c]) & 0x7fffffffu);
      if (c == zero) t[1] = 0x80000000u;
    }
    for (int neg = 0; neg < 1 + (s == 0); neg++)
      for (int k = 0; k < 4; k++) r->t_planes[k][s == 0 ? neg * 128 + (c & 127) : c] = (uint8_t)(t[neg] >> (8 * k));
  }
  return 1;
}

/* The requantize path's codes of 64 values (s = 0: signed map, 1: unsigned). */
X8_TARGET static void x8_codes_of(int s, const float x[64], uint8_t out[64]) {
  const float* const t[3] = {x, x, x};
  const __m512 one[3] = {_mm512_set1_ps(1.0f), _mm512_set1_ps(1.0f), _mm512_set1_ps(1.0f)};
  __m512i code[3];
  x8_codes64(1, s, t, one, code);
  _mm512_storeu_si512(out, code[0]);
}

/* Its estimates of the same. */
X8_TARGET static void x8_estimates_of(int s, const float x[64], int32_t est[64]) {
  __m512i xb[4], hw[2], e[2];
  for (int q = 0; q < 4; q++) xb[q] = _mm512_castps_si512(_mm512_load_ps(x + 16 * q));
  x8_estimates64(s, xb, hw, e);
  for (int w = 0; w < 2; w++) {
    const __m512i hi = _mm512_srli_epi16(e[w], 8);
    _mm512_storeu_si512(est + 32 * w, _mm512_cvtepu16_epi32(_mm512_castsi512_si256(hi)));
    _mm512_storeu_si512(est + 32 * w + 16, _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(hi, 1)));
  }
}

/* Proves the requantize path of map s equal to the portable loop on every float.
 *  1. Every finite float's estimate is its target or one below: the estimate depends on
 *     the top half only, and the targets of the floats sharing one grow from one end of
 *     their range to the other, so checking both ends of all 2^16 ranges covers them.
 *  2. The exact comparison with the threshold above the estimate then gives the code:
 *     checked on both sides of every threshold (of either sign), the values, octave
 *     boundaries and specials (zeros, subnormals, 1, 2, huge, infinities, NaNs). */
static int x8_verify(int s, const aj_qmap* q, int guard) {
  static const uint32_t special[] = {0x00000000u, 0x00000001u, 0x00007fffu, 0x00008000u, 0x007fffffu,
                                     0x00800000u, 0x3f7fffffu, 0x3f800000u, 0x3fffffffu, 0x40000000u,
                                     0x7f7fffffu, 0x7f800000u, 0x7f800001u, 0x7fc00000u, 0x7fffffffu};
  enum { N_SPECIAL = sizeof special / sizeof special[0], MAX_POINTS = 2 * (N_SPECIAL + 5 * AJ_QMAP_SIZE + 2 * 33) };
  float x[64] __attribute__((aligned(64)));
  uint8_t got[64];
  int32_t est[64];
  int ok = 1;
  for (uint32_t h0 = 0; h0 < 0x10000u && ok; h0 += 64) {
    for (uint32_t k = 0; k < 64; k++) x[k] = u2f((h0 + k) << 16);
    x8_estimates_of(s, x, est);
    for (uint32_t k = 0; k < 64; k++) {
      const uint32_t h = h0 + k;
      if ((h & 0x7f80u) == 0x7f80u) continue; /* infinities and NaNs: in step 2 */
      int t0 = x8_target(s, q, guard, x[k]), t1 = x8_target(s, q, guard, u2f(h << 16 | 0xffffu));
      ok &= est[k] >= imax(t0, t1) - 1 && est[k] <= imin(t0, t1);
    }
  }
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
      pts[n++] = sb | (v - (v > 0));
      pts[n++] = sb | v;
    }
    for (uint32_t e = 96; e <= 128; e++) {
      pts[n++] = sb | (e << 23);
      pts[n++] = sb | ((e << 23) - 1);
    }
  }
  for (size_t i = 0; i < n && ok; i += 64) {
    for (size_t k = 0; k < 64; k++) x[k] = u2f(pts[i + k < n ? i + k : i]);
    x8_codes_of(s, x, got);
    for (size_t k = 0; k < 64; k++) ok &= got[k] == (uint8_t)x8_reference(q, x[k], guard);
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
      /* byte 16l + 4q + i <- the high byte of 16-bit lane 16q + 4l + i (of 64 in two vectors) */
      for (int i = 0; i < 4; i++) x8.words_transposed[16 * l + 4 * q + i] = (uint8_t)(2 * (16 * q + 4 * l + i) + 1);
    }
  for (int e = 0; e < 32; e++) x8.top_words[e] = (uint16_t)(2 * e + 1);
  for (int e = 0; e < 64; e++) x8.high_bytes[e] = (uint8_t)(2 * e + 1);
  /* the signed map must mirror about its exact 0 at 127 */
  int ok = f2u(q1->values[127]) == 0u;
  for (int j = 0; j < AJ_QMAP_SIZE / 2; j++) {
    if (j < 127) ok &= f2u(q1->values[126 - j]) == (f2u(q1->values[128 + j]) ^ 0x80000000u);
    for (int k = 0; k < 4; k++) x8.half_planes[k][j] = (uint8_t)(f2u(q1->values[128 + j]) >> (8 * k));
  }
  for (int j = 0; j < AJ_QMAP_SIZE; j++)
    for (int k = 0; k < 4; k++) x8.planes[k][j] = (uint8_t)(f2u(q2->values[j]) >> (8 * k));
  ok &= q1->zero_index == 127 && nearest_code(qview_of(q1), 0.0f, 1) == 127 && nearest_code(qview_of(q2), 0.0f, 1) == 0;
  x8.ok = ok && q1->table_ok && q2->table_ok && x8_build_rq(0, q1, q1->zero_index) && x8_build_rq(1, q2, -1) &&
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
