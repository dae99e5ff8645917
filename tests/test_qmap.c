/* The quantization maps (SPEC 3) and the nearest-code search.
 *
 *  1. adamjit_qmap_values gives the built-in signed and unsigned dynamic maps; each entry
 *     agrees with tests/data/dynamic_map_{signed,unsigned}.txt (the reference maps) within 2 ulp, and the
 *     maps have SPEC 3's structure (signed: -0.99297 at 0, 0 at 127, 1 at 255, negatives
 *     mirroring positives; unsigned: 0 at 0, 1 at 255; both strictly ascending).
 *  2. The nearest-code search equals an exact brute-force nearest search on millions of
 *     inputs, through the public quantize call: every block of 4096 holds a 1.0, so its
 *     absmax is exactly 1 and codes[j] = nearest(map, x[j]) with no scaling. The inputs are
 *     floats of [-1, 1] stepped through by their bit patterns (subnormals and -0 included),
 *     the floats around every midpoint between consecutive map entries, and random values.
 *     Both search modes run (a context with ADAMJIT_QUANT_SEARCH_BINARY, one with
 *     ADAMJIT_QUANT_SEARCH_TABLE) and must give identical codes, for both built-in maps and
 *     for custom maps (ADAMJIT_QMAP_CUSTOM), one of them with entries far apart in exponent,
 *     a cluster of adjacent floats and values beyond [-1, 1].
 *
 * The oracle: the map entries bracketing x are found by float comparisons (exact) and their
 * distances |x - map[k]| are compared exactly as double-double values (TwoSum), so it never
 * mistakes a near tie for a tie or the other way round; at an exact tie either neighbour is
 * accepted (SPEC 3). That bracketing oracle is itself checked against a literal linear scan
 * over all 256 entries on a sample of the inputs.
 *
 * The reference maps are read from the directory given as the first argument, else from
 * ADAMJIT_TESTDATA_DIR (tests/data, a copy of the project's shared/testdata). A missing directory is a failure, not a skip. */
#include <stdint.h>

#include "tests/harness.h"
#include "tests/nearest_oracle.h"

#ifndef ADAMJIT_TESTDATA_DIR
#define ADAMJIT_TESTDATA_DIR ""
#endif

enum { MAPN = ADAMJIT_QMAP_SIZE, BLOCK = 4096, MAX_REPORTS = 10 };

static uint32_t bits_of(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static float float_of(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* Distance in ulps between two finite floats (across zero too). */
static int64_t ulp_distance(float a, float b) {
  uint32_t ua = bits_of(a), ub = bits_of(b);
  int64_t ia = (ua & 0x80000000u) ? -(int64_t)(ua & 0x7fffffffu) : (int64_t)ua;
  int64_t ib = (ub & 0x80000000u) ? -(int64_t)(ub & 0x7fffffffu) : (int64_t)ub;
  return ia > ib ? ia - ib : ib - ia;
}

/* ------------------------------------------------------------ reference maps */

/* Reads "index 0xBITS value" lines ('#' lines are comments) into out[256]; 0 on success. */
static int read_reference(const char* dir, const char* file, float out[MAPN]) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, file);
  FILE* f = fopen(path, "r");
  CHECK_MSG(f != NULL,
            "cannot open %s: the reference maps of tests/data are required (a complete checkout has them, "
            "or pass their directory as the first argument)",
            path);
  if (!f) return 1;
  int seen[MAPN] = {0}, count = 0, bad = 0;
  char line[256];
  while (fgets(line, sizeof line, f)) {
    if (line[0] == '#' || line[0] == '\n') continue;
    int index;
    unsigned bits;
    float value;
    if (sscanf(line, "%d %x %g", &index, &bits, &value) != 3 || index < 0 || index >= MAPN || seen[index]) {
      CHECK_MSG(0, "%s: malformed line: %s", path, line);
      bad = 1;
      continue;
    }
    out[index] = float_of(bits);
    /* The decimal column is the same value printed with 9 significant digits. */
    CHECK_MSG(value == out[index], "%s: entry %d: bits 0x%08x and value %s disagree", path, index, bits, line);
    seen[index] = 1;
    count++;
  }
  fclose(f);
  CHECK_MSG(count == MAPN, "%s: %d entries, expected %d", path, count, MAPN);
  return bad || count != MAPN;
}

static void check_against_reference(const char* dir, adamjit_qmap which, const char* file) {
  float ref[MAPN], map[MAPN];
  if (read_reference(dir, file, ref)) return;
  REQUIRE_OK(adamjit_qmap_values(which, map, MAPN));
  int worst = -1;
  int64_t worst_d = 0;
  for (int k = 0; k < MAPN; k++) {
    int64_t d = ulp_distance(map[k], ref[k]);
    CHECK_MSG(d <= 2, "%s entry %d: built %.9g (0x%08x), reference %.9g (0x%08x): %lld ulp apart", file, k,
              (double)map[k], bits_of(map[k]), (double)ref[k], bits_of(ref[k]), (long long)d);
    if (d > worst_d) worst_d = d, worst = k;
  }
  if (worst >= 0) printf("%s: largest difference %lld ulp at entry %d\n", file, (long long)worst_d, worst);
  else printf("%s: all 256 entries identical\n", file);
}

static int strictly_ascending(const float* m) {
  for (int k = 1; k < MAPN; k++)
    if (!(m[k] > m[k - 1])) return 0;
  return 1;
}

/* SPEC 3's structure of the built-in maps, and adamjit_qmap_values' argument checks. */
static void test_structure(void) {
  float s[MAPN], u[MAPN];
  REQUIRE_OK(adamjit_qmap_values(ADAMJIT_QMAP_SIGNED, s, MAPN));
  REQUIRE_OK(adamjit_qmap_values(ADAMJIT_QMAP_UNSIGNED, u, MAPN));

  CHECK(strictly_ascending(s));
  CHECK(s[127] == 0.0f && !signbit(s[127]));
  CHECK(s[255] == 1.0f);
  CHECK_MSG(fabs((double)s[0] - -0.99296875) < 1e-6, "signed map starts at %.9g", (double)s[0]);
  /* 127 negatives mirroring the 127 positives below 1.0. */
  int mirror = 1;
  for (int j = 0; j < 127; j++) mirror &= s[126 - j] == -s[128 + j];
  CHECK_MSG(mirror, "signed map: negatives are not the mirrored positives");
  CHECK(s[126] < 0.0f && s[128] > 0.0f);

  CHECK(strictly_ascending(u));
  CHECK(u[0] == 0.0f && !signbit(u[0]));
  CHECK(u[255] == 1.0f);
  CHECK(u[1] > 0.0f && u[254] < 1.0f);

  /* Smallest entries: 10^-6 times the first linspace means (SPEC 3). */
  CHECK_MSG(fabs((double)s[128] - 0.55e-6) < 1e-12, "smallest positive signed entry %.9g", (double)s[128]);
  CHECK_MSG(fabs((double)u[1] - 0.325e-6) < 1e-12, "smallest positive unsigned entry %.9g", (double)u[1]);

  /* Argument checks: status, a message naming the problem, and out untouched. */
  float out[MAPN];
  for (int k = 0; k < MAPN; k++) out[k] = 42.0f;
  CHECK_STATUS(adamjit_qmap_values(ADAMJIT_QMAP_SIGNED, NULL, MAPN), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK_MSG(strstr(adamjit_last_error(), "out") != NULL, "message: %s", adamjit_last_error());
  CHECK_STATUS(adamjit_qmap_values(ADAMJIT_QMAP_SIGNED, out, MAPN - 1), ADAMJIT_ERR_INVALID_SIZE);
  CHECK_MSG(strstr(adamjit_last_error(), "count") != NULL, "message: %s", adamjit_last_error());
  CHECK_STATUS(adamjit_qmap_values(ADAMJIT_QMAP_UNSIGNED, out, 0), ADAMJIT_ERR_INVALID_SIZE);
  CHECK_STATUS(adamjit_qmap_values(ADAMJIT_QMAP_CUSTOM, out, MAPN), ADAMJIT_ERR_INVALID_VALUE);
  CHECK_MSG(strstr(adamjit_last_error(), "map") != NULL, "message: %s", adamjit_last_error());
  CHECK_STATUS(adamjit_qmap_values((adamjit_qmap)7, out, MAPN), ADAMJIT_ERR_INVALID_VALUE);
  int untouched = 1;
  for (int k = 0; k < MAPN; k++) untouched &= out[k] == 42.0f;
  CHECK_MSG(untouched, "a failed adamjit_qmap_values wrote to out");

  /* The context option that picks the search mode is validated. */
  adamjit_context_desc d;
  adamjit_context_desc_init_default(&d);
  CHECK(d.quant_search == ADAMJIT_QUANT_SEARCH_AUTO);
  d.backend = ADAMJIT_BACKEND_CPU;
  d.quant_search = 3;
  adamjit_context* ctx = (adamjit_context*)&d; /* any non-NULL value: must become NULL */
  CHECK_STATUS(adamjit_context_create(&d, &ctx), ADAMJIT_ERR_INVALID_VALUE);
  CHECK(ctx == NULL);
  CHECK_MSG(strstr(adamjit_last_error(), "quant_search") != NULL, "message: %s", adamjit_last_error());
}

/* ------------------------------------------------------------------- oracle */

/* The same by a linear scan over every entry (checks the bracketing above). */
static void nearest_linear(const float* map, float x, int* first, int* second) {
  int best = 0, other = 0;
  dd bd = exact_abs_diff(x, map[0]);
  for (int k = 1; k < MAPN; k++) {
    dd d = exact_abs_diff(x, map[k]);
    int c = dd_cmp(d, bd);
    if (c < 0) best = other = k, bd = d;
    else if (c == 0) other = k;
  }
  *first = best;
  *second = other;
}

/* --------------------------------------------------------------- the sweep */

/* Inputs are gathered into blocks of BLOCK - 1 values plus one 1.0, and CALL_BLOCKS blocks
 * go to one quantize call (a custom map is validated and prepared once per call). */
enum { CALL_BLOCKS = 32, CALL_MAX = CALL_BLOCKS * BLOCK };

typedef struct {
  const char* name;
  const float* map;
  adamjit_quant_desc desc;
  adamjit_context* ctx[2]; /* binary, table */
  adamjit_mem x[2], codes[2], absmax[2];
  float host[CALL_MAX];
  uint8_t got[2][CALL_MAX];
  float absmax_got[CALL_BLOCKS];
  int blocks_done; /* complete blocks in host[] */
  int fill;        /* inputs in the current block so far */
  int ones_at;     /* where the next block's 1.0 goes */
  long long blocks, values, mismatches, mode_mismatches, oracle_mismatches, linear_checked;
  int code_of_one_first, code_of_one_second;
} sweep;

/* Puts the 1.0 that makes the current block's absmax exactly 1 at a varying position. */
static void close_block(sweep* s) {
  float* blk = &s->host[(size_t)s->blocks_done * BLOCK];
  int at = s->ones_at % (s->fill + 1);
  memmove(&blk[at + 1], &blk[at], (size_t)(s->fill - at) * sizeof(float));
  blk[at] = 1.0f;
  s->ones_at = (s->ones_at * 1103 + 2411) % BLOCK;
}

static void check_value(sweep* s, size_t j) {
  float x = s->host[j];
  int c0 = s->got[0][j], c1 = s->got[1][j];
  if (c0 != c1) {
    if (s->mode_mismatches++ < MAX_REPORTS)
      fprintf(stderr, "%s: x = %.9g (0x%08x): binary search code %d, table code %d\n", s->name, (double)x,
              bits_of(x), c0, c1);
  }
  int a, b;
  if (x == 1.0f) a = s->code_of_one_first, b = s->code_of_one_second;
  else nearest_bracket(s->map, x, &a, &b);
  /* Every 61st input also against the linear scan over all entries. */
  if (j % 61 == 0) {
    int la, lb;
    nearest_linear(s->map, x, &la, &lb);
    s->linear_checked++;
    if ((la != a || lb != b) && s->oracle_mismatches++ < MAX_REPORTS)
      fprintf(stderr, "%s: oracle disagreement at x = %.9g: bracket %d/%d, linear %d/%d\n", s->name, (double)x, a,
              b, la, lb);
  }
  for (int m = 0; m < 2; m++) {
    int c = s->got[m][j];
    if (c != a && c != b && s->mismatches++ < MAX_REPORTS)
      fprintf(stderr, "%s (%s search): x = %.9g (0x%08x): code %d (%.9g), nearest %d (%.9g)%s; neighbours %.9g %.9g\n",
              s->name, m ? "table" : "binary", (double)x, bits_of(x), c, (double)s->map[c], a, (double)s->map[a],
              a != b ? " or its tie" : "", a > 0 ? (double)s->map[a - 1] : NAN,
              a < MAPN - 1 ? (double)s->map[a + 1] : NAN);
  }
}

/* Quantizes the gathered blocks (the last one may be short: a ragged end) in both modes. */
static void flush(sweep* s) {
  if (s->fill > 0) close_block(s);
  size_t n = (size_t)s->blocks_done * BLOCK + (s->fill > 0 ? (size_t)s->fill + 1 : 0);
  int nblocks = s->blocks_done + (s->fill > 0);
  if (n == 0) return;
  s->desc.numel = (int64_t)n;
  for (int m = 0; m < 2; m++) {
    REQUIRE_OK(adamjit_mem_write(s->ctx[m], s->x[m], 0, s->host, n * sizeof(float)));
    CHECK_OK(adamjit_quantize_blockwise(s->ctx[m], &s->desc, s->x[m], s->codes[m], s->absmax[m]));
    REQUIRE_OK(adamjit_mem_read(s->ctx[m], s->got[m], s->codes[m], 0, n));
    REQUIRE_OK(adamjit_mem_read(s->ctx[m], s->absmax_got, s->absmax[m], 0, (size_t)nblocks * sizeof(float)));
    for (int b = 0; b < nblocks; b++)
      CHECK_MSG(s->absmax_got[b] == 1.0f, "%s: block absmax %.9g, expected 1", s->name, (double)s->absmax_got[b]);
  }
  for (size_t j = 0; j < n; j++) check_value(s, j);
  s->values += (long long)n;
  s->blocks += nblocks;
  s->blocks_done = 0;
  s->fill = 0;
}

static void feed(sweep* s, float x) {
  if (!(x >= -1.0f && x <= 1.0f)) return; /* absmax 1: only [-1, 1] (this also drops NaN) */
  s->host[(size_t)s->blocks_done * BLOCK + (size_t)s->fill++] = x;
  if (s->fill == BLOCK - 1) {
    close_block(s);
    s->fill = 0;
    if (++s->blocks_done == CALL_BLOCKS) flush(s);
  }
}

static void run_sweep(adamjit_context* ctx[2], const char* name, adamjit_qmap which, const float* map,
                      uint32_t stride, uint32_t offset, unsigned long long seed) {
  sweep* s = test_calloc(1, sizeof *s);
  s->name = name;
  s->map = map;
  adamjit_quant_desc_init_default(&s->desc);
  s->desc.dtype = ADAMJIT_F32;
  s->desc.block_size = BLOCK;
  s->desc.map = which;
  if (which == ADAMJIT_QMAP_CUSTOM) {
    s->desc.custom_map = map;
    s->desc.custom_map_size = MAPN;
  }
  s->ones_at = 17;
  nearest_linear(map, 1.0f, &s->code_of_one_first, &s->code_of_one_second);
  for (int m = 0; m < 2; m++) {
    s->ctx[m] = ctx[m];
    REQUIRE_OK(adamjit_mem_alloc(ctx[m], CALL_MAX * sizeof(float), &s->x[m]));
    REQUIRE_OK(adamjit_mem_alloc(ctx[m], CALL_MAX, &s->codes[m]));
    REQUIRE_OK(adamjit_mem_alloc(ctx[m], CALL_BLOCKS * sizeof(float), &s->absmax[m]));
  }

  /* 1. Floats of [-1, 1] by bit pattern, both signs, with a stride (zero and subnormals at
   *    the bottom, 1.0 at the top). */
  const uint32_t one = 0x3f800000u;
  for (uint32_t u = offset; u <= one; u += stride) {
    feed(s, float_of(u));
    feed(s, float_of(u | 0x80000000u));
  }
  feed(s, 0.0f);
  feed(s, -0.0f);
  feed(s, float_of(1)); /* the smallest subnormal */
  feed(s, -float_of(1));
  feed(s, float_of(0x00800000u)); /* the smallest normal */
  feed(s, nextafterf(1.0f, 0.0f));
  feed(s, -1.0f);

  /* 2. Around every midpoint of consecutive entries: the floats nearest below, at and above
   *    the exact midpoint, and two more on each side. */
  for (int k = 0; k + 1 < MAPN; k++) {
    float f = (float)(0.5 * (double)map[k] + 0.5 * (double)map[k + 1]); /* within an ulp */
    float lo = f, hi = f;
    for (int i = 0; i < 3; i++) {
      lo = nextafterf(lo, -INFINITY);
      hi = nextafterf(hi, INFINITY);
    }
    for (float v = lo; v <= hi; v = nextafterf(v, INFINITY)) feed(s, v);
    /* Each map entry itself and its neighbours. */
    feed(s, nextafterf(map[k], -INFINITY));
    feed(s, map[k]);
    feed(s, nextafterf(map[k], INFINITY));
  }

  /* 3. Random values: uniform in [-1, 1] and log-uniform magnitudes down to 1e-12. */
  test_rng rng = {seed};
  for (int i = 0; i < 150000; i++) {
    feed(s, (float)test_rng_uniform(&rng));
    double mag = pow(10.0, -12.0 * (0.5 + 0.5 * test_rng_uniform(&rng)));
    feed(s, (float)(test_rng_uniform(&rng) < 0.0 ? -mag : mag));
  }
  flush(s); /* the ragged last block */

  CHECK_MSG(s->mismatches == 0, "%s: %lld of %lld codes are not the nearest", name, s->mismatches, s->values);
  CHECK_MSG(s->mode_mismatches == 0, "%s: binary and table search differ on %lld of %lld values", name,
            s->mode_mismatches, s->values);
  CHECK_MSG(s->oracle_mismatches == 0, "%s: the test's two oracles disagree %lld times", name, s->oracle_mismatches);
  printf("%s: %lld values in %lld blocks, %lld also against a linear scan\n", name, s->values, s->blocks,
         s->linear_checked);

  for (int m = 0; m < 2; m++) {
    adamjit_mem_free(ctx[m], s->x[m]);
    adamjit_mem_free(ctx[m], s->codes[m]);
    adamjit_mem_free(ctx[m], s->absmax[m]);
  }
  free(s);
}

/* A smooth non-uniform map, asymmetric around its 0 (at index 120), reaching beyond [-1, 1]. */
static void custom_cubic(float m[MAPN]) {
  for (int k = 0; k < MAPN; k++) {
    double t = (k - 120) / 128.0;
    m[k] = (float)(1.4 * t * t * t + 0.15 * t);
  }
}

/* A hostile map: an arithmetic run below -1 into the negatives, negative powers of two down to
 * -2^-100, 0, then 2^-60 directly followed by 0.5 (an exponent gap wider than a double's
 * significand), a run of adjacent floats from 0.5 (midpoints that are not floats, many per
 * table cell), and a geometric run up to 2.5. */
static void custom_hostile(float m[MAPN]) {
  int n = 0;
  for (int k = 0; k < 100; k++) m[n++] = -1.2f + 0.011f * (float)k;
  for (int k = 0; k < 20; k++) m[n++] = -ldexpf(1.0f, -10 - k);
  m[n++] = -ldexpf(1.0f, -100);
  m[n++] = 0.0f;
  m[n++] = ldexpf(1.0f, -60);
  float c = 0.5f;
  for (int k = 0; k < 8; k++, c = nextafterf(c, INFINITY)) m[n++] = c;
  int rest = MAPN - n;
  for (int j = 1; j <= rest; j++) m[n++] = (float)(0.51 * pow(2.5 / 0.51, (double)(j - 1) / (rest - 1)));
}

int main(int argc, char** argv) {
  const char* dir = argc > 1 ? argv[1] : ADAMJIT_TESTDATA_DIR;
  if (!dir[0]) {
    CHECK_MSG(0, "no testdata directory: build with ADAMJIT_TESTDATA_DIR or pass it as the first argument");
  } else {
    check_against_reference(dir, ADAMJIT_QMAP_SIGNED, "dynamic_map_signed.txt");
    check_against_reference(dir, ADAMJIT_QMAP_UNSIGNED, "dynamic_map_unsigned.txt");
  }
  test_structure();

  adamjit_context* ctx[2];
  const int modes[2] = {ADAMJIT_QUANT_SEARCH_BINARY, ADAMJIT_QUANT_SEARCH_TABLE};
  for (int m = 0; m < 2; m++) {
    adamjit_context_desc d;
    adamjit_context_desc_init_default(&d);
    d.backend = ADAMJIT_BACKEND_CPU;
    d.quant_search = modes[m];
    REQUIRE_OK(adamjit_context_create(&d, &ctx[m]));
  }

  float signed_map[MAPN], unsigned_map[MAPN], cubic[MAPN], hostile[MAPN];
  REQUIRE_OK(adamjit_qmap_values(ADAMJIT_QMAP_SIGNED, signed_map, MAPN));
  REQUIRE_OK(adamjit_qmap_values(ADAMJIT_QMAP_UNSIGNED, unsigned_map, MAPN));
  custom_cubic(cubic);
  custom_hostile(hostile);
  CHECK(strictly_ascending(cubic) && cubic[0] < -1.0f && cubic[MAPN - 1] > 1.0f && cubic[120] == 0.0f);
  CHECK(strictly_ascending(hostile) && hostile[0] < -1.0f && hostile[MAPN - 1] > 1.0f);

  /* Different strides and offsets so the maps see different floats. */
  run_sweep(ctx, "signed map", ADAMJIT_QMAP_SIGNED, signed_map, 997, 0, 1);
  run_sweep(ctx, "unsigned map", ADAMJIT_QMAP_UNSIGNED, unsigned_map, 997, 499, 2);
  run_sweep(ctx, "custom cubic map", ADAMJIT_QMAP_CUSTOM, cubic, 2999, 373, 3);
  run_sweep(ctx, "custom hostile map", ADAMJIT_QMAP_CUSTOM, hostile, 2999, 1877, 4);

  adamjit_context_destroy(ctx[0]);
  adamjit_context_destroy(ctx[1]);
  return test_finish("test_qmap");
}
