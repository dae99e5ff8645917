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
 *    took the step there from 1.06 to 0.90 ns per element on one core (data in L2; fp32
 *    params, blocks of 256), and `adamjit bench` at 1e7 elements on both cores from 5.6-6.2
 *    to 4.85-5.1 ms, about the fp32 step's time (at 1e8: from 56.5-59 to 49.5-53 ms).
 *  - Requantizing reads one table entry per element (a gather) from tables derived from the
 *    core one (core/qmap.h, the same cells of exponent and 8 mantissa bits), arranged so that
 *    one integer add of the entry and the value's low bits carries the threshold comparison
 *    into the code byte, with the signed map's sign guard folded in. These two gathers are
 *    now most of the step's time: on the same EPYC, replacing them by plain adds (wrong
 *    codes, to time them) took it from 1.06 to 0.47 ns per element, while shrinking the
 *    tables to 1 KiB changed nothing: they cost the gathers' one load per element, not
 *    cache misses.
 *  - Pass two of a block (requantizing) runs interleaved with pass one of the next, so that
 *    the gathers of one overlap the divides of the other; and the arrays are prefetched
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
/* Cells (core/qmap.h): a magnitude's bits >> X8_CELL_SHIFT; the core table starts at cell
 * X8_CELL_LO and ends at X8_CELL_LO + AJ_QCELLS - 1, the cell of magnitudes >= 2. */
#define X8_CELL_SHIFT (23 - AJ_QCELL_BITS)
#define X8_CELL_LO (AJ_QEXP_LO << AJ_QCELL_BITS)
/* The signed table covers every magnitude below 2 (cells 0..X8_CELLS - 1) for each sign. */
#define X8_CELLS (128 << AJ_QCELL_BITS)

/* Requantize entries hold (code << 16) plus an offset such that adding the value's low bits
 * (the 15 mantissa bits below its cell, complemented for negative values) carries into bit
 * 16 exactly when the value is at or beyond the cell's threshold; the code is then byte 2
 * of the sum. Each entry has its cell's bits << X8_CELL_SHIFT taken off, so that adding the
 * whole (clamped) value instead of its low bits gives the same sum, one masking op less. */
typedef struct x8_tables {
  /* the signed map's values of codes 128..255, byte k of each in plane k */
  uint8_t half_planes[4][AJ_QMAP_SIZE / 2] __attribute__((aligned(64)));
  /* the unsigned map's values of all 256 codes, byte k of each in plane k */
  uint8_t planes[4][AJ_QMAP_SIZE] __attribute__((aligned(64)));
  int32_t signed_rq[2 * X8_CELLS] __attribute__((aligned(64))); /* [negative * X8_CELLS + cell] */
  int32_t unsigned_rq[AJ_QCELLS] __attribute__((aligned(64)));  /* [cell - X8_CELL_LO], positive */
  int32_t unpack_order[16] __attribute__((aligned(64)));        /* see x8_dequantize_signed */
  int zero_code[2];                                            /* the code of 0.0: m, v */
  const aj_qmap* q[2];                                         /* the built-in maps: signed, unsigned */
  int ok;
} x8_tables;

static x8_tables x8;
static pthread_once_t x8_once = PTHREAD_ONCE_INIT;

/* ------------------------------------------------------------------ dequantize */

/* Byte planes b[k] (byte k of each value, in the transposed order of x8_dequantize_signed)
 * put back together into 64 floats, times A, as four vectors of elements 16q..16q+15. */
X8_INLINE void x8_planes_to_floats(const __m512i b[4], __m512 A, __m512 out[4]) {
  __m512i l01 = _mm512_unpacklo_epi8(b[0], b[1]), h01 = _mm512_unpackhi_epi8(b[0], b[1]);
  __m512i l23 = _mm512_unpacklo_epi8(b[2], b[3]), h23 = _mm512_unpackhi_epi8(b[2], b[3]);
  out[0] = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpacklo_epi16(l01, l23)), A);
  out[1] = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpackhi_epi16(l01, l23)), A);
  out[2] = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpacklo_epi16(h01, h23)), A);
  out[3] = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpackhi_epi16(h01, h23)), A);
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

/* The sum whose byte 2 is the signed map's code of x, sign guard included. */
X8_INLINE __m512i x8_code_signed(__m512 x) {
  __m512i sign = _mm512_srai_epi32(_mm512_castps_si512(x), 31);
  /* |x| clamped below 2 (a NaN becomes the bound as well: min_ps returns its second
   * operand when the first is NaN); the sign still picks the half of the table */
  __m512i a = _mm512_castps_si512(_mm512_min_ps(_mm512_abs_ps(x), _mm512_castsi512_ps(_mm512_set1_epi32(0x3fffffff))));
  __m512i idx = _mm512_ternarylogic_epi32(_mm512_srli_epi32(a, X8_CELL_SHIFT), sign, _mm512_set1_epi32(X8_CELLS),
                                          0xf8 /* a | (b & c) */);
  __m512i low = _mm512_ternarylogic_epi32(a, sign, _mm512_set1_epi32(0x7fff), 0x78 /* a ^ (b & c) */);
  return _mm512_add_epi32(_mm512_i32gather_epi32(idx, x8.signed_rq, 4), low);
}

/* The same for the unsigned map, where every negative value has the code of +0 (checked
 * when the table is built): the bits are clamped as signed integers, which puts negative
 * values (-0 and negative NaN too) on the lowest cell and positive NaN on the highest, the
 * codes the core table gives them. */
X8_INLINE __m512i x8_code_unsigned(__m512 x) {
  __m512i u = _mm512_castps_si512(x);
  u = _mm512_max_epi32(u, _mm512_set1_epi32(AJ_QEXP_LO << 23));
  u = _mm512_min_epi32(u, _mm512_set1_epi32((AJ_QEXP_HI + 1) << 23));
  /* indexed by the absolute cell: the table's base moved down by X8_CELL_LO entries */
  const void* base = (const void*)((uintptr_t)x8.unsigned_rq - (uintptr_t)X8_CELL_LO * sizeof(int32_t));
  return _mm512_add_epi32(_mm512_i32gather_epi32(_mm512_srli_epi32(u, X8_CELL_SHIFT), base, 4), u);
}

/* State s's code sum: m by the signed map, v and vmax by the unsigned one. */
X8_INLINE __m512i x8_code(int s, __m512 x) { return s == 0 ? x8_code_signed(x) : x8_code_unsigned(x); }

/* Stores 64 codes, byte 2 of s[0..3] (elements 16q..16q+15), or the zero code where is_zero. */
X8_INLINE void x8_store_codes(const __m512i s[4], uint8_t* codes, __m512i zero, __mmask64 is_zero, __mmask64 km) {
  const __m512i lo_idx = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0x7e7a7672, 0x6e6a6662, 0x5e5a5652, 0x4e4a4642,
                                          0x3e3a3632, 0x2e2a2622, 0x1e1a1612, 0x0e0a0602);
  const __m512i hi_idx = _mm512_set_epi32(0x7e7a7672, 0x6e6a6662, 0x5e5a5652, 0x4e4a4642, 0x3e3a3632, 0x2e2a2622,
                                          0x1e1a1612, 0x0e0a0602, 0, 0, 0, 0, 0, 0, 0, 0);
  __m512i lo = _mm512_permutex2var_epi8(s[0], lo_idx, s[1]);
  __m512i hi = _mm512_permutex2var_epi8(s[2], hi_idx, s[3]);
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

X8_INLINE void x8_requantize64(const x8_pending* pd, int s, size_t j) {
  __m512i sum[4];
#pragma GCC unroll 4
  for (int q = 0; q < 4; q++) sum[q] = x8_code(s, _mm512_mul_ps(_mm512_load_ps(pd->t[s] + j + 16 * q), pd->inv[s]));
  const __m512i zero = _mm512_set1_epi8((char)x8.zero_code[s != 0]);
  x8_store_codes(sum, pd->codes[s] + j, zero, pd->is_zero[s], x8_mask64(pd->n - j));
}

/* Pass two of the pending block from element j on, alone. */
X8_INLINE void x8_flush(const x8_pending* pd, int amsgrad, size_t j) {
  for (; j < pd->n; j += 64) {
    x8_requantize64(pd, 0, j);
    x8_requantize64(pd, 1, j);
    if (amsgrad) x8_requantize64(pd, 2, j);
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
  __m512i S[3][4];
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
    /* the pending block's codes, 16 at a time between this block's divides */
    if (requant)
      for (int s = 0; s < 2 + amsgrad; s++)
        S[s][q] = x8_code(s, _mm512_mul_ps(_mm512_load_ps(pd.t[s] + jj), pd.inv[s]));
  }
  if (requant)
    for (int s = 0; s < 2 + amsgrad; s++)
      x8_store_codes(S[s], pd.codes[s] + j, _mm512_set1_epi8((char)x8.zero_code[s != 0]), pd.is_zero[s], ~0ull);
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

/* The entry of a cell whose codes are c0 below the threshold and c1 (c0 or c0 + 1) at and
 * beyond it (toward larger magnitudes when positive, toward 0 when negative); field is
 * where the threshold is in the low 15 bits as the core table has it (positive: the
 * threshold's low bits; negative: its low bits + 1). The cell's bits are taken off. */
static int x8_entry(int negative, uint32_t cell, int c0, int c1, int field, int32_t* out) {
  uint32_t e = ((uint32_t)c0 << 16) - (cell << X8_CELL_SHIFT);
  if (negative) e += 0x8000u; /* the complemented low bits reach 0x7fff at most */
  if (c1 != c0) {
    if (c1 != c0 + 1) return 0;
    /* positive: carry when low >= field; negative: when 0x7fff - low >= 0x8000 - field */
    e += negative ? (uint32_t)field : 0x10000u - (uint32_t)field;
  }
  *out = (int32_t)e;
  return 1;
}

/* The signed table: the core table's cells, and below them (magnitudes < 2^(AJ_QEXP_LO-127),
 * all with one code) cells of the same code, except that -0 (the negative half's first
 * value) keeps the code of 0 where the guard moves every other negative value off it. */
static int x8_build_signed(const aj_qmap* q, int guard) {
  int ok = 1;
  for (int neg = 0; neg < 2; neg++) {
    for (uint32_t cell = 0; cell < X8_CELLS; cell++) {
      uint32_t core = cell < X8_CELL_LO ? 0 : cell - X8_CELL_LO;
      int32_t e = q->table[neg][core];
      int c0 = e >> 16, field = e & 0xffff;
      int c1 = c0 + (neg ? field != 0 : field != 0xffff);
      if (neg && guard >= 0) { /* a negative value never takes the code of the exact 0 */
        c0 -= c0 == guard;
        c1 -= c1 == guard;
      }
      if (cell < X8_CELL_LO && c1 != c0) ok = 0; /* the core's first cell holds no threshold */
      if (neg && cell == 0 && guard >= 0) {
        /* low 0 (-0) has the code of 0, the rest of the cell c0 */
        c1 = nearest_code(qview_of(q), 0.0f, 1);
        field = 1;
      }
      ok &= x8_entry(neg, cell, c0, c1, field, &x8.signed_rq[neg * X8_CELLS + cell]);
    }
  }
  return ok;
}

/* The unsigned table: positive cells only, for a map where every negative value has the
 * code of the lowest positive cell. */
static int x8_build_unsigned(const aj_qmap* q) {
  int ok = (q->table[0][0] & 0xffff) == 0xffff;
  for (int c = 0; c < AJ_QCELLS; c++) {
    int32_t e = q->table[0][c];
    int c0 = e >> 16, field = e & 0xffff;
    ok &= q->table[1][c] == (q->table[0][0] & ~0xffff); /* negative: no threshold, that code */
    ok &= x8_entry(0, (uint32_t)(X8_CELL_LO + c), c0, c0 + (field != 0xffff), field, &x8.unsigned_rq[c]);
  }
  return ok;
}

/* The requantize path's codes of 16 values (s = 0: signed map, 1: unsigned). */
X8_TARGET static void x8_codes_of(int s, const float x[16], uint8_t out[16]) {
  __m512i sum[4] = {x8_code(s, _mm512_loadu_ps(x)), _mm512_setzero_si512(), _mm512_setzero_si512(),
                    _mm512_setzero_si512()};
  x8_store_codes(sum, out, _mm512_setzero_si512(), 0, 0xffff);
}

/* The code the portable loop gives x, sign guard included. */
static int x8_reference(const aj_qmap* q, float x, int guard) {
  int c = nearest_code(qview_of(q), x, 1);
  return c - (guard >= 0 && x < 0.0f && c == guard);
}

/* Compares the derived tables with the core table at both ends of every cell, around every
 * threshold, and at special values (zeros, subnormals, 1, 2, the largest float, infinities,
 * NaNs; both signs): any disagreement leaves the portable loop in charge. */
static int x8_check(int s, const aj_qmap* q, int guard) {
  static const uint32_t special[] = {0x00000000u, 0x00000001u, 0x00007fffu, 0x00008000u, 0x007fffffu,
                                     0x00800000u, 0x3f7fffffu, 0x3f800000u, 0x3fffffffu, 0x40000000u,
                                     0x7f7fffffu, 0x7f800000u, 0x7f800001u, 0x7fc00000u, 0x7fffffffu};
  enum { N_SPECIAL = sizeof special / sizeof special[0], MAX_POINTS = 2 * N_SPECIAL + 2 * AJ_QCELLS * 5 };
  uint32_t* pts = malloc(MAX_POINTS * sizeof *pts);
  if (!pts) return 0;
  size_t n = 0;
  for (size_t i = 0; i < N_SPECIAL; i++) {
    pts[n++] = special[i];
    pts[n++] = special[i] | 0x80000000u;
  }
  for (uint32_t neg = 0; neg < 2; neg++) {
    for (uint32_t c = 0; c < AJ_QCELLS; c++) {
      uint32_t lo = ((uint32_t)X8_CELL_LO + c) << X8_CELL_SHIFT, hi = lo + (1u << X8_CELL_SHIFT) - 1;
      uint32_t sign = neg << 31;
      pts[n++] = sign | lo;
      pts[n++] = sign | hi;
      uint32_t t = f2u(q->thresholds[(q->table[neg][c] >> 16) & 0xff]) & 0x7fffffffu;
      if (t > lo && t <= hi) { /* the cell's threshold and its neighbours */
        pts[n++] = sign | t;
        pts[n++] = sign | (t - 1);
        if (t < hi) pts[n++] = sign | (t + 1);
      }
    }
  }
  int ok = 1;
  for (size_t i = 0; i < n && ok; i += 16) {
    float x[16];
    uint8_t got[16];
    for (size_t k = 0; k < 16; k++) x[k] = u2f(pts[i + k < n ? i + k : i]);
    x8_codes_of(s, x, got);
    for (size_t k = 0; k < 16; k++) ok &= got[k] == (uint8_t)x8_reference(q, x[k], guard);
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
    for (int q = 0; q < 4; q++)
      x8.unpack_order[4 * l + q] = (int32_t)((uint32_t)(16 * q + 4 * l) * 0x01010101u + 0x03020100u);
  /* the signed map must mirror about its exact 0 at 127 */
  int ok = f2u(q1->values[127]) == 0u;
  for (int j = 0; j < AJ_QMAP_SIZE / 2; j++) {
    if (j < 127) ok &= f2u(q1->values[126 - j]) == (f2u(q1->values[128 + j]) ^ 0x80000000u);
    for (int k = 0; k < 4; k++) x8.half_planes[k][j] = (uint8_t)(f2u(q1->values[128 + j]) >> (8 * k));
  }
  for (int j = 0; j < AJ_QMAP_SIZE; j++)
    for (int k = 0; k < 4; k++) x8.planes[k][j] = (uint8_t)(f2u(q2->values[j]) >> (8 * k));
  x8.zero_code[0] = nearest_code(qview_of(q1), 0.0f, 1);
  x8.zero_code[1] = nearest_code(qview_of(q2), 0.0f, 1);
  x8.ok = ok && q1->table_ok && q2->table_ok && x8_build_signed(q1, q1->zero_index) && x8_build_unsigned(q2) &&
          x8_check(0, q1, q1->zero_index) && x8_check(1, q2, -1);
}

/* Whether x8_adamw8 can run a's update: an AVX-512 CPU, the built-in maps, blocks of whole
 * 64-element chunks. */
static int x8_usable(const aj_cpu_adamw8_args* a) {
  pthread_once(&x8_once, x8_prepare);
  return x8.ok && a->q1 == x8.q[0] && a->q2 == x8.q[1] &&
         (!a->block_wise || (a->block_size % 64 == 0 && a->block_size <= X8_TILE));
}

#endif
