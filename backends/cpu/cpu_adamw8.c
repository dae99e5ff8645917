/* The 8-bit blockwise AdamW step on the CPU (SPEC 3). Each block is done in two passes over
 * data already in L1: dequantize, update m, v (vmax) and p while taking the block's new
 * absmax, then requantize against it. Built like cpu_adamw32.c (see there). On x86-64 CPUs
 * with AVX-512 the step runs cpu_adamw8_avx512.h's form of these loops instead, with the
 * same results bit for bit and about 3x the speed (README). */
#include "backends/cpu/cpu_kernels.h"
#include "backends/cpu/cpu_qsearch.h"

/* The largest block, and the tile that block_wise = 0 tensors are processed in. */
#define TILE 4096

typedef struct moments {
  float m, v, vmax; /* new values; vmax only with amsgrad */
  uint32_t keep;    /* all ones where the gradient was not finite */
} moments;

/* One tile's codes widened to int (gcc gathers only through signed 32-bit indices), and the
 * gradients, as restrict locals: through the args struct gcc assumes they may alias the
 * param stores and runs the scalar version of the loop. */
typedef struct state8 {
  const void* restrict grad;
  const int* restrict c1;
  const int* restrict c2;
  const int* restrict c3;
} state8;

/* The new moments of tile element j (tensor element i), dequantized with the block's old
 * absmax values. */
static inline __attribute__((always_inline)) moments update_moments(const aj_cpu_adamw8_args* a, state8 s, qview q1,
                                                                    qview q2, size_t i, size_t j, adamjit_dtype gdt,
                                                                    int amsgrad, float A1, float A2, float A3) {
  moments r;
  float graw = load(s.grad, i, gdt);
  r.keep = 0u - nonfinite_bit(graw);
  float g = graw * a->grad_scale;
  float m0 = q1.values[s.c1[j]] * A1;
  float v0 = q2.values[s.c2[j]] * A2;
  r.m = select_f32(r.keep, m0, a->beta1 * m0 + (1.0f - a->beta1) * g);
  r.v = select_f32(r.keep, v0, a->beta2 * v0 + (1.0f - a->beta2) * (g * g));
  r.vmax = r.v;
  if (amsgrad) {
    float x0 = q2.values[s.c3[j]] * A3;
    r.vmax = select_f32(r.keep, x0, r.v > x0 ? r.v : x0);
  }
  return r;
}

/* Widens n codes starting at tensor element b0 into the tile's int arrays. */
static inline __attribute__((always_inline)) void widen(const uint8_t* restrict c, int* restrict out, size_t b0,
                                                        size_t n) {
#pragma omp simd
  for (size_t j = 0; j < n; j++) out[j] = c[b0 + j];
}

/* Requantizes n values against absmax. The signed map's guard: a negative x whose nearest
 * value is the map's exact 0 takes the next code down, so momentum never loses its sign by
 * rounding (a positive x never rounds to a negative value when 0 is in the map). */
static inline __attribute__((always_inline)) void requantize(const float* restrict t, uint8_t* restrict codes,
                                                             size_t n, float absmax, qview q, int use_table,
                                                             int zero_guard) {
  if (absmax == 0.0f) {
    memset(codes, nearest_code(q, 0.0f, use_table), n);
    return;
  }
  /* One reciprocal per block instead of a division per element: x can differ from
   * t / absmax by an ulp, which moves a code only within an ulp of a midpoint (the
   * tolerance SPEC 7 gives codes). */
  const float inv = 1.0f / absmax;
#pragma omp simd
  for (size_t j = 0; j < n; j++) {
    float x = t[j] * inv;
    int c = nearest_code(q, x, use_table);
    if (zero_guard >= 0) c -= (x < 0.0f) & (c == zero_guard);
    codes[j] = (uint8_t)c;
  }
}

static inline __attribute__((always_inline)) uint64_t adamw8_loop(const aj_cpu_adamw8_args* a, size_t begin,
                                                                  size_t end, adamjit_dtype pdt, adamjit_dtype gdt,
                                                                  int amsgrad, int use_table) {
  float tm[TILE], tv[TILE], tx[TILE];
  int i1[TILE], i2[TILE], i3[TILE];
  const qview q1 = qview_of(a->q1), q2 = qview_of(a->q2);
  const state8 st = {a->grad, i1, i2, i3};
  const size_t tile = a->block_wise ? (size_t)a->block_size : TILE;
  const float decay = a->decay, step_size = a->step_size, inv_sqrt_c2 = a->inv_sqrt_c2, eps = a->eps;
  void* restrict param = a->param;
  uint64_t nonfinite = 0;
  for (size_t b0 = begin; b0 < end; b0 += tile) {
    size_t n = b0 + tile < end ? tile : end - b0;
    size_t blk = a->block_wise ? b0 / (size_t)a->block_size : 0;
    float A1 = a->absmax1[blk], A2 = a->absmax2[blk], A3 = amsgrad ? a->absmax3[blk] : 0.0f;
    float mx1 = 0.0f, mx2 = 0.0f, mx3 = 0.0f;
    widen(a->c1, i1, b0, n);
    widen(a->c2, i2, b0, n);
    if (amsgrad) widen(a->c3, i3, b0, n);
    uint32_t bad = 0; /* 32-bit like every other lane value, so gcc keeps full-width vectors */
#pragma omp simd reduction(max : mx1, mx2, mx3) reduction(+ : bad)
    for (size_t j = 0; j < n; j++) {
      size_t i = b0 + j;
      moments r = update_moments(a, st, q1, q2, i, j, gdt, amsgrad, A1, A2, A3);
      float vu = amsgrad ? r.vmax : r.v;
      float p = load(param, i, pdt) * decay;
      p = p - step_size * r.m / (sqrtf(vu) * inv_sqrt_c2 + eps);
      store_param(param, i, pdt, p, r.keep);
      float am = fabsf(r.m);
      tm[j] = r.m;
      tv[j] = r.v;
      tx[j] = r.vmax;
      mx1 = am > mx1 ? am : mx1;
      mx2 = r.v > mx2 ? r.v : mx2;
      mx3 = r.vmax > mx3 ? r.vmax : mx3;
      bad += r.keep & 1u;
    }
    nonfinite += bad;
    if (a->block_wise) {
      a->absmax1[blk] = mx1;
      a->absmax2[blk] = mx2;
      if (amsgrad) a->absmax3[blk] = mx3;
    } else {
      mx1 = a->new_absmax[0];
      mx2 = a->new_absmax[1];
      mx3 = a->new_absmax[2];
    }
    requantize(tm, a->c1 + b0, n, mx1, q1, use_table, a->q1->zero_index);
    requantize(tv, a->c2 + b0, n, mx2, q2, use_table, -1);
    if (amsgrad) requantize(tx, a->c3 + b0, n, mx3, q2, use_table, -1);
  }
  return nonfinite;
}

#define AJ8_SEARCH(P, G, AMS) \
  return a->use_table ? adamw8_loop(a, begin, end, P, G, AMS, 1) : adamw8_loop(a, begin, end, P, G, AMS, 0)
#define AJ8_AMSGRAD(P, G)    \
  if (a->c3) AJ8_SEARCH(P, G, 1); \
  AJ8_SEARCH(P, G, 0)
#define AJ8_GRAD(P)                                   \
  switch (a->grad_dtype) {                            \
    case ADAMJIT_F32: AJ8_AMSGRAD(P, ADAMJIT_F32);    \
    case ADAMJIT_F16: AJ8_AMSGRAD(P, ADAMJIT_F16);    \
    case ADAMJIT_BF16: AJ8_AMSGRAD(P, ADAMJIT_BF16);  \
  }                                                   \
  break

AJ_CPU_CLONES uint64_t aj_cpu_adamw8_portable(const aj_cpu_adamw8_args* a, size_t begin, size_t end) {
  switch (a->param_dtype) {
    case ADAMJIT_F32: AJ8_GRAD(ADAMJIT_F32);
    case ADAMJIT_F16: AJ8_GRAD(ADAMJIT_F16);
    case ADAMJIT_BF16: AJ8_GRAD(ADAMJIT_BF16);
  }
  return 0; /* dtypes are validated at registration */
}

/* The AVX-512 form: compiled for its own target (function attributes) and chosen at run
 * time, so the library still runs on any x86-64. */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#include "backends/cpu/cpu_adamw8_avx512.h"
#define AJ_HAVE_AVX512_STEP 1
#endif

uint64_t aj_cpu_adamw8(const aj_cpu_adamw8_args* a, size_t begin, size_t end) {
#ifdef AJ_HAVE_AVX512_STEP
  if (x8_usable(a)) return x8_adamw8(a, begin, end);
#endif
  return aj_cpu_adamw8_portable(a, begin, end);
}

int aj_cpu_adamw8_avx512_active(void) {
#ifdef AJ_HAVE_AVX512_STEP
  pthread_once(&x8_once, x8_prepare);
  return x8.ok;
#else
  return 0;
#endif
}

static inline __attribute__((always_inline)) void absmax_loop(const aj_cpu_adamw8_args* a, size_t begin, size_t end,
                                                              adamjit_dtype gdt, int amsgrad, float out[3]) {
  int i1[TILE], i2[TILE], i3[TILE];
  const qview q1 = qview_of(a->q1), q2 = qview_of(a->q2);
  const state8 st = {a->grad, i1, i2, i3};
  float A1 = a->absmax1[0], A2 = a->absmax2[0], A3 = amsgrad ? a->absmax3[0] : 0.0f;
  float mx1 = 0.0f, mx2 = 0.0f, mx3 = 0.0f;
  for (size_t b0 = begin; b0 < end; b0 += TILE) {
    size_t n = b0 + TILE < end ? TILE : end - b0;
    widen(a->c1, i1, b0, n);
    widen(a->c2, i2, b0, n);
    if (amsgrad) widen(a->c3, i3, b0, n);
#pragma omp simd reduction(max : mx1, mx2, mx3)
    for (size_t j = 0; j < n; j++) {
      moments r = update_moments(a, st, q1, q2, b0 + j, j, gdt, amsgrad, A1, A2, A3);
      float am = fabsf(r.m);
      mx1 = am > mx1 ? am : mx1;
      mx2 = r.v > mx2 ? r.v : mx2;
      mx3 = r.vmax > mx3 ? r.vmax : mx3;
    }
  }
  out[0] = mx1;
  out[1] = mx2;
  out[2] = mx3;
}

AJ_CPU_CLONES void aj_cpu_adamw8_absmax(const aj_cpu_adamw8_args* a, size_t begin, size_t end, float out[3]) {
  int ams = a->c3 != NULL;
  switch (a->grad_dtype) {
    case ADAMJIT_F32: ams ? absmax_loop(a, begin, end, ADAMJIT_F32, 1, out) : absmax_loop(a, begin, end, ADAMJIT_F32, 0, out); break;
    case ADAMJIT_F16: ams ? absmax_loop(a, begin, end, ADAMJIT_F16, 1, out) : absmax_loop(a, begin, end, ADAMJIT_F16, 0, out); break;
    case ADAMJIT_BF16: ams ? absmax_loop(a, begin, end, ADAMJIT_BF16, 1, out) : absmax_loop(a, begin, end, ADAMJIT_BF16, 0, out); break;
  }
}
