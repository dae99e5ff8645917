/* Blockwise quantization through the public calls (adamjit_quantize_blockwise and
 * adamjit_dequantize_blockwise, SPEC 3):
 *
 *  - round trips of fp32, fp16 and bf16 values, block sizes 64 .. 4096, the signed map (data
 *    of both signs) and the unsigned map (non-negative data), ragged last blocks and all-zero
 *    blocks. Per block absmax = max |x| exactly; per element the code is the nearest map entry
 *    to x / absmax, the dequantized value is exactly map[code] * absmax (fp32 product, then
 *    rounded to the dtype), and |dequantized - x| stays within a bound derived from the map:
 *    absmax times half the gap between the two map entries around x / absmax, plus fp32
 *    rounding and the output dtype's half ulp. An all-zero block has absmax 0, the code of 0
 *    and dequantizes to exactly 0.
 *  - dequantization of every code against the formula, built-in and custom maps.
 *  - non-finite input: ADAMJIT_ERR_INVALID_VALUE naming the first bad element's index.
 *  - bad arguments: each gets its status and a message naming the field, and leaves every
 *    output buffer as it was (filled with a sentinel before, compared after). */
#include <stdint.h>

#include "tests/halfprec.h"
#include "tests/harness.h"
#include "tests/nearest_oracle.h"

enum { MAPN = ADAMJIT_QMAP_SIZE };
#define MARKER "424242"

static float signed_map[MAPN], unsigned_map[MAPN];

/* --------------------------------------------------------- nearest (oracle) */

/* The most a nearest-entry quantization can move t: half the gap between the entries around
 * t, or the distance to the end entry where t lies beyond it (clamping). */
static double map_error_bound(const float* map, double t) {
  int lo = oracle_bracket(map, t);
  if (lo < 0) return (double)map[0] - t;
  if (lo == MAPN - 1) return t - (double)map[MAPN - 1];
  return 0.5 * ((double)map[lo + 1] - (double)map[lo]);
}

/* Half the spacing of dtype values at magnitude |y| (0 for fp32: counted separately). */
static double half_ulp(adamjit_dtype dt, double y) {
  if (dt == ADAMJIT_F32 || y == 0.0) return 0.0;
  int e;
  frexp(y, &e);
  const int bits = dt == ADAMJIT_F16 ? 11 : 8, min_e = dt == ADAMJIT_F16 ? -13 : -125;
  if (e < min_e) e = min_e;
  return ldexp(1.0, e - bits - 1);
}

/* fp32 unit roundoff. */
#define U32 (0x1p-24)

static const char* map_name(adamjit_qmap m) { return m == ADAMJIT_QMAP_SIGNED ? "signed" : "unsigned"; }

/* ------------------------------------------------------------- round trips */

/* Host values for a round trip, as stored in dtype dt (and what they are worth). */
static void make_data(adamjit_dtype dt, adamjit_qmap which, int bs, int64_t n, test_rng* rng, void* buf) {
  const int64_t blocks = (n + bs - 1) / bs;
  for (int64_t b = 0; b < blocks; b++) {
    int64_t b0 = b * bs, b1 = b0 + bs < n ? b0 + bs : n;
    /* Block scales from 1e-3 to 1e3 (fp16 holds them all). */
    double scale = pow(10.0, 3.0 * test_rng_uniform(rng));
    int kind = (int)(b % 5);
    for (int64_t j = b0; j < b1; j++) {
      double x;
      double r = test_rng_uniform(rng);
      switch (kind) {
        case 1: x = 0.0; break; /* an all-zero block (-0 for the signed map on odd j) */
        case 2: /* magnitudes over six decades: the dense small entries of the map */
          x = copysign(scale * pow(10.0, -6.0 * fabs(test_rng_uniform(rng))), r);
          break;
        case 3: { /* on and around map entries times the block's coming absmax */
          const float* map = which == ADAMJIT_QMAP_SIGNED ? signed_map : unsigned_map;
          int k = (int)(test_rng_next(rng) % MAPN);
          x = scale * map[k] * (r < 0.0 ? 1.0 : 1.0 + 1e-3 * test_rng_uniform(rng));
          if (fabs(x) > scale) x = copysign(scale, x);
          break;
        }
        case 4: x = (j == b0 + (b1 - b0) / 3) ? scale : scale * 1e-2 * r; break; /* one spike */
        default: x = scale * r; break;
      }
      if (kind == 1 && which == ADAMJIT_QMAP_SIGNED && (j & 1)) x = -0.0;
      if (which == ADAMJIT_QMAP_UNSIGNED) x = fabs(x);
      put_elem(dt, buf, j, x);
    }
    /* Kind 3: the absmax is the (rounded) scale, so half its values sit on map entries. */
    if (kind == 3) put_elem(dt, buf, b0, which == ADAMJIT_QMAP_SIGNED && (b & 1) ? -scale : scale);
  }
}

typedef struct {
  long long elements, code_errors, value_errors, bound_errors, f32_errors;
  double worst_ratio; /* largest |dequantized - x| / bound */
} rt_stats;

static void round_trip(adamjit_context* ctx, adamjit_dtype dt, int bs, adamjit_qmap which, int64_t n,
                       rt_stats* st) {
  const float* map = which == ADAMJIT_QMAP_SIGNED ? signed_map : unsigned_map;
  const size_t es = adamjit_dtype_size(dt);
  const int64_t blocks = (n + bs - 1) / bs;
  test_rng rng = {0x9e3779b97f4a7c15ULL ^ (unsigned long long)(n * 131 + bs * 7 + dt * 3 + which)};
  void* x = test_calloc((size_t)n, es);
  void* y = test_calloc((size_t)n, es);
  float* y32 = test_calloc((size_t)n, sizeof(float));
  uint8_t* codes = test_calloc((size_t)n, 1);
  float* absmax = test_calloc((size_t)blocks, sizeof(float));
  make_data(dt, which, bs, n, &rng, x);

  adamjit_mem mx, mc, ma, my, my32;
  REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)n * es, &mx));
  REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)n, &mc));
  REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)blocks * sizeof(float), &ma)); /* exactly the sizes needed */
  REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)n * es, &my));
  REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)n * sizeof(float), &my32));
  REQUIRE_OK(adamjit_mem_write(ctx, mx, 0, x, (size_t)n * es));

  adamjit_quant_desc d;
  adamjit_quant_desc_init_default(&d);
  d.dtype = dt;
  d.numel = n;
  d.block_size = bs;
  d.map = which;
  CHECK_OK(adamjit_quantize_blockwise(ctx, &d, mx, mc, ma));
  CHECK_OK(adamjit_dequantize_blockwise(ctx, &d, mc, ma, my));
  /* The codes and absmax do not depend on the dtype: dequantize them once more as fp32. */
  adamjit_quant_desc d32 = d;
  d32.dtype = ADAMJIT_F32;
  CHECK_OK(adamjit_dequantize_blockwise(ctx, &d32, mc, ma, my32));
  REQUIRE_OK(adamjit_mem_read(ctx, codes, mc, 0, (size_t)n));
  REQUIRE_OK(adamjit_mem_read(ctx, absmax, ma, 0, (size_t)blocks * sizeof(float)));
  REQUIRE_OK(adamjit_mem_read(ctx, y, my, 0, (size_t)n * es));
  REQUIRE_OK(adamjit_mem_read(ctx, y32, my32, 0, (size_t)n * sizeof(float)));

  const char* dn = adamjit_dtype_name(dt);
  const int zero_code = which == ADAMJIT_QMAP_SIGNED ? 127 : 0;
  int reported = 0;
  for (int64_t b = 0; b < blocks; b++) {
    int64_t b0 = b * bs, b1 = b0 + bs < n ? b0 + bs : n;
    double mxabs = 0.0;
    for (int64_t j = b0; j < b1; j++) mxabs = fmax(mxabs, fabs(get_elem(dt, x, j)));
    const float a = absmax[b];
    CHECK_MSG((double)a == mxabs, "%s %s bs %d block %lld: absmax %.9g, max |x| %.9g", dn, map_name(which), bs,
              (long long)b, (double)a, mxabs);
    for (int64_t j = b0; j < b1; j++) {
      const double xv = get_elem(dt, x, j), yv = get_elem(dt, y, j);
      const int c = codes[j];
      st->elements++;
      int code_ok, value_ok, f32_ok;
      double err = fabs(yv - xv), bound = 0.0;
      if (a == 0.0f) {
        code_ok = c == zero_code;
        value_ok = yv == 0.0 && !signbit(yv) && y32[j] == 0.0f;
        f32_ok = 1;
      } else {
        /* The code is the entry nearest to the fp32 quotient the library divides out, or to
         * the exact quotient (they differ only next to a midpoint). */
        const float tq = (float)xv / a;
        const double t = xv / (double)a;
        code_ok = is_nearest(map, tq, c) || is_nearest(map, t, c);
        /* Dequantized: the fp32 product, then the dtype's rounding to nearest even. */
        const float prod = map[c] * a;
        value_ok = yv == round_to(dt, prod);
        f32_ok = y32[j] == prod;
        /* Bound: the map's half gap around t, scaled; fp32 rounding of the quotient (which
         * may sit across a bracket edge: twice) and of the product (3u, taken as 4u); the
         * dtype's half ulp of the output. */
        bound = (double)a * map_error_bound(map, t) + 4.0 * U32 * (double)a;
        bound += half_ulp(dt, fabs(xv) + bound);
        if (err > bound) st->bound_errors++;
        if (bound > 0.0 && err / bound > st->worst_ratio) st->worst_ratio = err / bound;
      }
      if (!code_ok) st->code_errors++;
      if (!value_ok) st->value_errors++;
      if (!f32_ok) st->f32_errors++;
      if ((!code_ok || !value_ok || !f32_ok || (err > bound && a != 0.0f)) && reported++ < 5)
        fprintf(stderr,
                "%s %s bs %d n %lld: x[%lld] = %.9g (absmax %.9g): code %d (%.9g), dequantized %.9g (fp32 %.9g), "
                "error %.3g, bound %.3g\n",
                dn, map_name(which), bs, (long long)n, (long long)j, xv, (double)a, c, (double)map[c], yv,
                (double)y32[j], err, bound);
    }
  }

  adamjit_mem_free(ctx, mx);
  adamjit_mem_free(ctx, mc);
  adamjit_mem_free(ctx, ma);
  adamjit_mem_free(ctx, my);
  adamjit_mem_free(ctx, my32);
  free(x);
  free(y);
  free(y32);
  free(codes);
  free(absmax);
}

static void test_round_trips(adamjit_context* ctx) {
  const adamjit_dtype dts[3] = {ADAMJIT_F32, ADAMJIT_F16, ADAMJIT_BF16};
  const int sizes[6] = {64, 128, 256, 1024, 2048, 4096};
  const adamjit_qmap maps[2] = {ADAMJIT_QMAP_SIGNED, ADAMJIT_QMAP_UNSIGNED};
  for (int di = 0; di < 3; di++) {
    for (int mi = 0; mi < 2; mi++) {
      rt_stats st = {0};
      for (int si = 0; si < 6; si++) {
        const int bs = sizes[si];
        /* Whole blocks, a ragged end of a few elements, and one block plus one element. */
        const int64_t ns[3] = {5 * (int64_t)bs, 5 * (int64_t)bs + bs / 2 + 3, (int64_t)bs + 1};
        for (int k = 0; k < 3; k++) round_trip(ctx, dts[di], bs, maps[mi], ns[k], &st);
      }
      const char* dn = adamjit_dtype_name(dts[di]);
      CHECK_MSG(st.code_errors == 0, "%s %s: %lld of %lld codes not the nearest", dn, map_name(maps[mi]),
                st.code_errors, st.elements);
      CHECK_MSG(st.value_errors == 0, "%s %s: %lld of %lld dequantized values not map[code] * absmax", dn,
                map_name(maps[mi]), st.value_errors, st.elements);
      CHECK_MSG(st.f32_errors == 0, "%s %s: %lld of %lld fp32 dequantized values not map[code] * absmax", dn,
                map_name(maps[mi]), st.f32_errors, st.elements);
      CHECK_MSG(st.bound_errors == 0, "%s %s: %lld of %lld errors beyond the map's bound", dn, map_name(maps[mi]),
                st.bound_errors, st.elements);
      printf("%s %s: %lld elements, largest error / bound %.3f\n", dn, map_name(maps[mi]), st.elements,
             st.worst_ratio);
    }
  }
}

/* One element, one block: the tiniest ragged case, and a block of exactly one nonzero. */
static void test_single_element(adamjit_context* ctx) {
  adamjit_mem mx, mc, ma, my;
  REQUIRE_OK(adamjit_mem_alloc(ctx, sizeof(float), &mx));
  REQUIRE_OK(adamjit_mem_alloc(ctx, 1, &mc));
  REQUIRE_OK(adamjit_mem_alloc(ctx, sizeof(float), &ma));
  REQUIRE_OK(adamjit_mem_alloc(ctx, sizeof(float), &my));
  adamjit_quant_desc d;
  adamjit_quant_desc_init_default(&d);
  d.numel = 1;
  const float xs[4] = {-3.75f, 2.5e-30f, 0.0f, 1e30f};
  for (int i = 0; i < 4; i++) {
    float y = 42.0f, a = -1.0f;
    uint8_t c = 0;
    REQUIRE_OK(adamjit_mem_write(ctx, mx, 0, &xs[i], sizeof(float)));
    CHECK_OK(adamjit_quantize_blockwise(ctx, &d, mx, mc, ma));
    CHECK_OK(adamjit_dequantize_blockwise(ctx, &d, mc, ma, my));
    REQUIRE_OK(adamjit_mem_read(ctx, &c, mc, 0, 1));
    REQUIRE_OK(adamjit_mem_read(ctx, &a, ma, 0, sizeof a));
    REQUIRE_OK(adamjit_mem_read(ctx, &y, my, 0, sizeof y));
    CHECK_MSG(a == fabsf(xs[i]), "absmax of {%g}: %g", (double)xs[i], (double)a);
    /* x / |x| = +-1: the map's 1.0 (index 255), or its most negative entry (index 0). */
    int want = xs[i] < 0.0f ? 0 : xs[i] > 0.0f ? 255 : 127;
    CHECK_MSG(c == want, "code of {%g}: %d, expected %d", (double)xs[i], c, want);
    CHECK_MSG(y == signed_map[want] * a, "dequantized {%g}: %.9g", (double)xs[i], (double)y);
  }
  adamjit_mem_free(ctx, mx);
  adamjit_mem_free(ctx, mc);
  adamjit_mem_free(ctx, ma);
  adamjit_mem_free(ctx, my);
}

/* Dequantization alone: every code with a few absmax values, built-in and custom maps, each
 * dtype; exactly map[code] * absmax rounded to the dtype. */
static void test_dequantize_formula(adamjit_context* ctx) {
  enum { BS = 256, BLOCKS = 4, N = BS * BLOCKS };
  float custom[MAPN];
  for (int k = 0; k < MAPN; k++) {
    double t = (k - 100) / 120.0;
    custom[k] = (float)(2.0 * t * t * t + 0.05 * t); /* ascending, beyond [-1, 1] */
  }
  const float absmax[BLOCKS] = {1.0f, 3.0e-3f, 0.0f, 7.5e4f};
  uint8_t codes[N];
  for (int j = 0; j < N; j++) codes[j] = (uint8_t)(j * 7 + j / BS);
  adamjit_mem mc, ma, my;
  REQUIRE_OK(adamjit_mem_alloc(ctx, N, &mc));
  REQUIRE_OK(adamjit_mem_alloc(ctx, sizeof absmax, &ma));
  REQUIRE_OK(adamjit_mem_alloc(ctx, N * sizeof(float), &my));
  REQUIRE_OK(adamjit_mem_write(ctx, mc, 0, codes, N));
  REQUIRE_OK(adamjit_mem_write(ctx, ma, 0, absmax, sizeof absmax));
  const adamjit_qmap maps[3] = {ADAMJIT_QMAP_SIGNED, ADAMJIT_QMAP_UNSIGNED, ADAMJIT_QMAP_CUSTOM};
  const float* values[3] = {signed_map, unsigned_map, custom};
  for (int mi = 0; mi < 3; mi++) {
    for (int dt = ADAMJIT_F32; dt <= ADAMJIT_BF16; dt++) {
      adamjit_quant_desc d;
      adamjit_quant_desc_init_default(&d);
      d.dtype = (adamjit_dtype)dt;
      d.numel = N;
      d.block_size = BS;
      d.map = maps[mi];
      d.custom_map = maps[mi] == ADAMJIT_QMAP_CUSTOM ? custom : NULL;
      d.custom_map_size = maps[mi] == ADAMJIT_QMAP_CUSTOM ? MAPN : 0;
      unsigned char out[N * sizeof(float)];
      CHECK_OK(adamjit_dequantize_blockwise(ctx, &d, mc, ma, my));
      REQUIRE_OK(adamjit_mem_read(ctx, out, my, 0, (size_t)N * adamjit_dtype_size(d.dtype)));
      long long bad = 0;
      for (int j = 0; j < N; j++) {
        /* 7.5e4 overflows fp16 for the larger entries: rounding to the dtype gives Inf there. */
        double want = round_to(d.dtype, values[mi][codes[j]] * absmax[j / BS]);
        double got = get_elem(d.dtype, out, j);
        if (!(got == want) && bad++ < 3)
          fprintf(stderr, "map %d %s: code %d absmax %g: %.9g, expected %.9g\n", mi, adamjit_dtype_name(d.dtype),
                  codes[j], (double)absmax[j / BS], got, want);
      }
      CHECK_MSG(bad == 0, "map %d %s: %lld dequantized values differ from map[code] * absmax", mi,
                adamjit_dtype_name(d.dtype), bad);
    }
  }
  /* The custom map also through quantize: codes nearest to x / absmax. */
  {
    enum { M = 1000 };
    float x[M];
    uint8_t c[M];
    float a[8];
    test_rng rng = {77};
    for (int j = 0; j < M; j++) x[j] = (float)(2.0 * test_rng_uniform(&rng));
    adamjit_mem mx, ma8;
    REQUIRE_OK(adamjit_mem_alloc(ctx, sizeof x, &mx));
    REQUIRE_OK(adamjit_mem_alloc(ctx, sizeof a, &ma8));
    REQUIRE_OK(adamjit_mem_write(ctx, mx, 0, x, sizeof x));
    adamjit_quant_desc d;
    adamjit_quant_desc_init_default(&d);
    d.numel = M;
    d.block_size = 128;
    d.map = ADAMJIT_QMAP_CUSTOM;
    d.custom_map = custom;
    d.custom_map_size = MAPN;
    CHECK_OK(adamjit_quantize_blockwise(ctx, &d, mx, mc, ma8));
    REQUIRE_OK(adamjit_mem_read(ctx, c, mc, 0, M));
    REQUIRE_OK(adamjit_mem_read(ctx, a, ma8, 0, sizeof a));
    long long bad = 0;
    for (int j = 0; j < M; j++) {
      float q = x[j] / a[j / 128];
      if (!is_nearest(custom, q, c[j]) && !is_nearest(custom, (double)x[j] / a[j / 128], c[j])) bad++;
    }
    CHECK_MSG(bad == 0, "custom map: %lld codes not the nearest", bad);
    adamjit_mem_free(ctx, mx);
    adamjit_mem_free(ctx, ma8);
  }
  adamjit_mem_free(ctx, mc);
  adamjit_mem_free(ctx, ma);
  adamjit_mem_free(ctx, my);
}

/* ------------------------------------------------------------- non-finite */

static void check_nonfinite(adamjit_context* ctx, adamjit_dtype dt, int64_t n, int nbad, const int64_t* where,
                            const double* what, int64_t first) {
  const size_t es = adamjit_dtype_size(dt);
  void* x = test_calloc((size_t)n, es);
  test_rng rng = {(unsigned long long)n + 5};
  for (int64_t j = 0; j < n; j++) put_elem(dt, x, j, test_rng_uniform(&rng));
  for (int i = 0; i < nbad; i++) put_elem(dt, x, where[i], what[i]);
  adamjit_mem mx, mc, ma;
  REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)n * es, &mx));
  REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)n, &mc));
  REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)(n + 255) / 256 * sizeof(float), &ma));
  REQUIRE_OK(adamjit_mem_write(ctx, mx, 0, x, (size_t)n * es));
  adamjit_quant_desc d;
  adamjit_quant_desc_init_default(&d);
  d.dtype = dt;
  d.numel = n;
  CHECK_STATUS(adamjit_quantize_blockwise(ctx, &d, mx, mc, ma), ADAMJIT_ERR_INVALID_VALUE);
  /* The message names the first bad element: its index, and no later one. */
  const char* msg = adamjit_context_last_error(ctx);
  char idx[32];
  snprintf(idx, sizeof idx, "%lld", (long long)first);
  CHECK_MSG(strstr(msg, idx) != NULL, "%s, n %lld: message \"%s\" does not name element %s", adamjit_dtype_name(dt),
            (long long)n, msg, idx);
  for (int i = 0; i < nbad; i++) {
    if (where[i] == first) continue;
    snprintf(idx, sizeof idx, "%lld", (long long)where[i]);
    CHECK_MSG(strstr(msg, idx) == NULL, "message \"%s\" names %s, not the first bad element", msg, idx);
  }
  adamjit_mem_free(ctx, mx);
  adamjit_mem_free(ctx, mc);
  adamjit_mem_free(ctx, ma);
  free(x);
}

static void test_nonfinite(adamjit_context* ctx) {
  for (int dt = ADAMJIT_F32; dt <= ADAMJIT_BF16; dt++) {
    const int64_t w1[1] = {777};
    const double nan1[1] = {NAN}, inf1[1] = {INFINITY}, ninf1[1] = {-INFINITY};
    check_nonfinite(ctx, (adamjit_dtype)dt, 5000, 1, w1, nan1, 777);
    check_nonfinite(ctx, (adamjit_dtype)dt, 5000, 1, w1, inf1, 777);
    const int64_t wlast[1] = {4999}; /* the last element of a ragged last block */
    check_nonfinite(ctx, (adamjit_dtype)dt, 5000, 1, wlast, ninf1, 4999);
    const int64_t w0[1] = {0};
    check_nonfinite(ctx, (adamjit_dtype)dt, 1, 1, w0, nan1, 0);
  }
  /* Several bad elements over a tensor large enough for parallel chunks: the first is named. */
  const int64_t w[3] = {250001, 40003, 181003};
  const double v[3] = {NAN, INFINITY, -INFINITY};
  check_nonfinite(ctx, ADAMJIT_F32, 300000, 3, w, v, 40003);
  const int64_t wl[2] = {299999, 299998};
  check_nonfinite(ctx, ADAMJIT_BF16, 300000, 2, wl, v, 299998);
}

/* ---------------------------------------------------------------- bad inputs */

enum { BN = 1000, BBS = 256, BBLOCKS = 4 };

typedef struct {
  adamjit_context* ctx;
  adamjit_mem x, codes, absmax, out;                    /* right sizes */
  adamjit_mem x_small, codes_small, absmax_small, x_half; /* too small for BN / BBLOCKS */
  adamjit_mem* all[8];
  size_t size[8];
  unsigned char* before[8];
  float custom[MAPN];
} bad_fixture;

static void snapshot(bad_fixture* f, int take) {
  for (int i = 0; i < 8; i++) {
    unsigned char* now = test_calloc(f->size[i], 1);
    REQUIRE_OK(adamjit_mem_read(f->ctx, now, *f->all[i], 0, f->size[i]));
    if (take) {
      free(f->before[i]);
      f->before[i] = now;
    } else {
      CHECK_MSG(memcmp(now, f->before[i], f->size[i]) == 0, "buffer %d changed by a failed call", i);
      free(now);
    }
  }
}

/* A known failure whose message carries MARKER, so a stale message never passes a check. */
static void plant(bad_fixture* f) {
  adamjit_quant_desc d;
  adamjit_quant_desc_init_default(&d);
  d.numel = BN;
  d.block_size = 424242;
  adamjit_status st = adamjit_quantize_blockwise(f->ctx, &d, f->x, f->codes, f->absmax);
  if (st != ADAMJIT_ERR_INVALID_VALUE || !strstr(adamjit_context_last_error(f->ctx), MARKER)) {
    fprintf(stderr, "cannot plant the marker message\n");
    exit(1);
  }
  float tmp[MAPN];
  if (adamjit_qmap_values((adamjit_qmap)424242, tmp, MAPN) == ADAMJIT_OK || !strstr(adamjit_last_error(), MARKER)) {
    fprintf(stderr, "cannot plant the marker message (no context)\n");
    exit(1);
  }
}

static void check_failure(adamjit_status got, adamjit_status want, const char* msg, const char* needle,
                          const char* needle2, const char* call, int line) {
  test_checks++;
  int ok = got == want && msg && !strstr(msg, MARKER) &&
           (strstr(msg, needle) != NULL || (needle2 && strstr(msg, needle2) != NULL));
  if (!ok) {
    test_failures++;
    fprintf(stderr, "%s:%d: %s: status %s (expected %s), message \"%s\" (expected it to name \"%s\"%s%s)\n",
            __FILE__, line, call, adamjit_status_string(got), adamjit_status_string(want), msg ? msg : "(null)",
            needle, needle2 ? " or " : "", needle2 ? needle2 : "");
  }
}

/* The call must fail with `want`, say `needle` (or `alt`), and leave every buffer as it was. */
#define BAD2(f, call, want, needle, alt)                                                              \
  do {                                                                                                \
    plant(f);                                                                                         \
    adamjit_status st_ = (call);                                                                      \
    check_failure(st_, want, adamjit_context_last_error((f)->ctx), needle, alt, #call, __LINE__);     \
    snapshot(f, 0);                                                                                   \
  } while (0)
#define BAD(f, call, want, needle) BAD2(f, call, want, needle, NULL)
/* The same for a call without a context: the detail is in adamjit_last_error(). */
#define BAD_NOCTX(f, call, want, needle)                                                              \
  do {                                                                                                \
    plant(f);                                                                                         \
    adamjit_status st_ = (call);                                                                      \
    check_failure(st_, want, adamjit_last_error(), needle, NULL, #call, __LINE__);                    \
    snapshot(f, 0);                                                                                   \
  } while (0)

static void fill(adamjit_context* ctx, adamjit_mem m, size_t bytes, unsigned char byte) {
  unsigned char* tmp = test_calloc(bytes, 1);
  memset(tmp, byte, bytes);
  REQUIRE_OK(adamjit_mem_write(ctx, m, 0, tmp, bytes));
  free(tmp);
}

static void test_bad_inputs(adamjit_context* ctx) {
  bad_fixture* f = test_calloc(1, sizeof *f);
  f->ctx = ctx;
  adamjit_mem* mems[8] = {&f->x, &f->codes, &f->absmax, &f->out, &f->x_small, &f->codes_small, &f->absmax_small,
                          &f->x_half};
  const size_t sizes[8] = {BN * 4, BN, BBLOCKS * 4, BN * 4, BN * 4 - 1, BN - 1, (BBLOCKS - 1) * 4, BN * 2};
  for (int i = 0; i < 8; i++) {
    f->all[i] = mems[i];
    f->size[i] = sizes[i];
    REQUIRE_OK(adamjit_mem_alloc(ctx, sizes[i], mems[i]));
    fill(ctx, *mems[i], sizes[i], (unsigned char)(0xA5 + i)); /* sentinels */
  }
  /* x holds valid values, so a call fails only for the reason under test. */
  float xv[BN];
  for (int j = 0; j < BN; j++) xv[j] = 0.01f * (float)(j % 97) - 0.3f;
  REQUIRE_OK(adamjit_mem_write(ctx, f->x, 0, xv, sizeof xv));
  REQUIRE_OK(adamjit_mem_write(ctx, f->x_small, 0, xv, BN * 4 - 1));
  uint16_t xh[BN];
  for (int j = 0; j < BN; j++) put_elem(ADAMJIT_F16, xh, j, xv[j]);
  REQUIRE_OK(adamjit_mem_write(ctx, f->x_half, 0, xh, sizeof xh));
  for (int k = 0; k < MAPN; k++) f->custom[k] = (float)(k - 128) / 100.0f;
  snapshot(f, 1);

  adamjit_quant_desc good;
  adamjit_quant_desc_init_default(&good);
  good.numel = BN;
  good.block_size = BBS;
  adamjit_quant_desc d;
#define RESET() (d = good)

  /* NULL handles and buffers. */
  RESET();
  BAD_NOCTX(f, adamjit_quantize_blockwise(NULL, &d, f->x, f->codes, f->absmax), ADAMJIT_ERR_NULL_ARGUMENT, "ctx");
  BAD_NOCTX(f, adamjit_dequantize_blockwise(NULL, &d, f->codes, f->absmax, f->out), ADAMJIT_ERR_NULL_ARGUMENT,
            "ctx");
  BAD(f, adamjit_quantize_blockwise(ctx, NULL, f->x, f->codes, f->absmax), ADAMJIT_ERR_NULL_ARGUMENT, "desc");
  BAD(f, adamjit_dequantize_blockwise(ctx, NULL, f->codes, f->absmax, f->out), ADAMJIT_ERR_NULL_ARGUMENT, "desc");
  BAD(f, adamjit_quantize_blockwise(ctx, &d, NULL, f->codes, f->absmax), ADAMJIT_ERR_NULL_ARGUMENT, " x");
  BAD(f, adamjit_quantize_blockwise(ctx, &d, f->x, NULL, f->absmax), ADAMJIT_ERR_NULL_ARGUMENT, "codes");
  BAD(f, adamjit_quantize_blockwise(ctx, &d, f->x, f->codes, NULL), ADAMJIT_ERR_NULL_ARGUMENT, "absmax");
  BAD(f, adamjit_dequantize_blockwise(ctx, &d, NULL, f->absmax, f->out), ADAMJIT_ERR_NULL_ARGUMENT, "codes");
  BAD(f, adamjit_dequantize_blockwise(ctx, &d, f->codes, NULL, f->out), ADAMJIT_ERR_NULL_ARGUMENT, "absmax");
  BAD(f, adamjit_dequantize_blockwise(ctx, &d, f->codes, f->absmax, NULL), ADAMJIT_ERR_NULL_ARGUMENT, "out");

  /* The descriptor. */
  RESET();
  d.struct_size = 0;
  BAD(f, adamjit_quantize_blockwise(ctx, &d, f->x, f->codes, f->absmax), ADAMJIT_ERR_INVALID_SIZE, "struct_size");
  d.struct_size = sizeof d + 8;
  BAD(f, adamjit_dequantize_blockwise(ctx, &d, f->codes, f->absmax, f->out), ADAMJIT_ERR_INVALID_SIZE,
      "struct_size");
  const int bad_blocks[5] = {100, 32, 8192, 0, -256};
  for (int i = 0; i < 5; i++) {
    RESET();
    d.block_size = bad_blocks[i];
    BAD(f, adamjit_quantize_blockwise(ctx, &d, f->x, f->codes, f->absmax), ADAMJIT_ERR_INVALID_VALUE, "block_size");
    BAD(f, adamjit_dequantize_blockwise(ctx, &d, f->codes, f->absmax, f->out), ADAMJIT_ERR_INVALID_VALUE,
        "block_size");
  }
  RESET();
  d.numel = 0; /* the default: there is none */
  BAD(f, adamjit_quantize_blockwise(ctx, &d, f->x, f->codes, f->absmax), ADAMJIT_ERR_INVALID_SIZE, "numel");
  BAD(f, adamjit_dequantize_blockwise(ctx, &d, f->codes, f->absmax, f->out), ADAMJIT_ERR_INVALID_SIZE, "numel");
  d.numel = -5;
  BAD(f, adamjit_quantize_blockwise(ctx, &d, f->x, f->codes, f->absmax), ADAMJIT_ERR_INVALID_SIZE, "numel");
  RESET();
  d.dtype = (adamjit_dtype)9;
  BAD(f, adamjit_quantize_blockwise(ctx, &d, f->x, f->codes, f->absmax), ADAMJIT_ERR_INVALID_DTYPE, "dtype");
  BAD(f, adamjit_dequantize_blockwise(ctx, &d, f->codes, f->absmax, f->out), ADAMJIT_ERR_INVALID_DTYPE, "dtype");
  RESET();
  d.map = (adamjit_qmap)5;
  BAD(f, adamjit_quantize_blockwise(ctx, &d, f->x, f->codes, f->absmax), ADAMJIT_ERR_INVALID_VALUE, "map");

  /* Custom maps. */
  RESET();
  d.map = ADAMJIT_QMAP_CUSTOM;
  d.custom_map = NULL;
  d.custom_map_size = MAPN;
  BAD(f, adamjit_quantize_blockwise(ctx, &d, f->x, f->codes, f->absmax), ADAMJIT_ERR_NULL_ARGUMENT, "custom");
  BAD(f, adamjit_dequantize_blockwise(ctx, &d, f->codes, f->absmax, f->out), ADAMJIT_ERR_NULL_ARGUMENT, "custom");
  d.custom_map = f->custom;
  d.custom_map_size = MAPN - 1;
  BAD(f, adamjit_quantize_blockwise(ctx, &d, f->x, f->codes, f->absmax), ADAMJIT_ERR_INVALID_SIZE, "custom");
  BAD(f, adamjit_dequantize_blockwise(ctx, &d, f->codes, f->absmax, f->out), ADAMJIT_ERR_INVALID_SIZE, "custom");
  d.custom_map_size = MAPN + 1;
  BAD(f, adamjit_quantize_blockwise(ctx, &d, f->x, f->codes, f->absmax), ADAMJIT_ERR_INVALID_SIZE, "custom");
  d.custom_map_size = 0; /* the default */
  BAD(f, adamjit_quantize_blockwise(ctx, &d, f->x, f->codes, f->absmax), ADAMJIT_ERR_INVALID_SIZE, "custom");
  d.custom_map_size = MAPN;
  {
    float m[MAPN];
    memcpy(m, f->custom, sizeof m);
    d.custom_map = m;
    m[200] = m[199]; /* equal neighbours: not strictly ascending */
    BAD(f, adamjit_quantize_blockwise(ctx, &d, f->x, f->codes, f->absmax), ADAMJIT_ERR_INVALID_VALUE, "ascending");
    m[200] = m[199] - 0.5f; /* descending */
    BAD(f, adamjit_dequantize_blockwise(ctx, &d, f->codes, f->absmax, f->out), ADAMJIT_ERR_INVALID_VALUE,
        "ascending");
    memcpy(m, f->custom, sizeof m);
    m[37] = NAN;
    BAD(f, adamjit_quantize_blockwise(ctx, &d, f->x, f->codes, f->absmax), ADAMJIT_ERR_INVALID_VALUE, "custom");
    m[37] = f->custom[37];
    m[255] = INFINITY;
    BAD(f, adamjit_quantize_blockwise(ctx, &d, f->x, f->codes, f->absmax), ADAMJIT_ERR_INVALID_VALUE, "custom");
    m[255] = f->custom[255];
    /* The repaired map works (and writes codes: take a fresh snapshot after). */
    CHECK_OK(adamjit_quantize_blockwise(ctx, &d, f->x, f->codes, f->absmax));
    snapshot(f, 1);
  }

  /* Buffers from adamjit_mem_alloc that are too small for numel. */
  RESET();
  BAD(f, adamjit_quantize_blockwise(ctx, &d, f->x_small, f->codes, f->absmax), ADAMJIT_ERR_INVALID_SIZE, "values");
  BAD(f, adamjit_quantize_blockwise(ctx, &d, f->x_half, f->codes, f->absmax), ADAMJIT_ERR_INVALID_SIZE, "values");
  BAD(f, adamjit_quantize_blockwise(ctx, &d, f->x, f->codes_small, f->absmax), ADAMJIT_ERR_INVALID_SIZE, "codes");
  BAD(f, adamjit_quantize_blockwise(ctx, &d, f->x, f->codes, f->absmax_small), ADAMJIT_ERR_INVALID_SIZE, "absmax");
  BAD2(f, adamjit_dequantize_blockwise(ctx, &d, f->codes, f->absmax, f->x_small), ADAMJIT_ERR_INVALID_SIZE, "out",
       "values");
  BAD(f, adamjit_dequantize_blockwise(ctx, &d, f->codes_small, f->absmax, f->out), ADAMJIT_ERR_INVALID_SIZE,
      "codes");
  BAD(f, adamjit_dequantize_blockwise(ctx, &d, f->codes, f->absmax_small, f->out), ADAMJIT_ERR_INVALID_SIZE,
      "absmax");
  /* One more element than the buffers hold. */
  d.numel = BN + 1;
  BAD(f, adamjit_quantize_blockwise(ctx, &d, f->x, f->codes, f->absmax), ADAMJIT_ERR_INVALID_SIZE, "values");
  d.numel = BBLOCKS * BBS + 1; /* 1025 values do not fit in 4000 bytes... */
  d.dtype = ADAMJIT_F16;       /* ...but 2050 bytes do; the codes (1000 bytes) do not */
  BAD(f, adamjit_quantize_blockwise(ctx, &d, f->x, f->codes, f->absmax), ADAMJIT_ERR_INVALID_SIZE, "codes");
  d.numel = BN;
  d.block_size = 64; /* 16 blocks, 4 absmax */
  BAD(f, adamjit_quantize_blockwise(ctx, &d, f->x_half, f->codes, f->absmax), ADAMJIT_ERR_INVALID_SIZE, "absmax");
  /* The same half-size buffer is enough for fp16 values with 256-element blocks. */
  d.block_size = BBS;
  CHECK_OK(adamjit_quantize_blockwise(ctx, &d, f->x_half, f->codes, f->absmax));
  CHECK_OK(adamjit_dequantize_blockwise(ctx, &d, f->codes, f->absmax, f->x_half));

  for (int i = 0; i < 8; i++) {
    adamjit_mem_free(ctx, *mems[i]);
    free(f->before[i]);
  }
  free(f);
#undef RESET
}

int main(void) {
  REQUIRE_OK(adamjit_qmap_values(ADAMJIT_QMAP_SIGNED, signed_map, MAPN));
  REQUIRE_OK(adamjit_qmap_values(ADAMJIT_QMAP_UNSIGNED, unsigned_map, MAPN));
  adamjit_context* ctx = test_cpu_context();
  test_round_trips(ctx);
  test_single_element(ctx);
  test_dequantize_formula(ctx);
  test_nonfinite(ctx);
  test_bad_inputs(ctx);
  adamjit_context_destroy(ctx);
  return test_finish("test_quantize");
}
