/* The dynamic quantization maps and their exact nearest-code search structures. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "core/qmap.h"

/* torch.linspace(0.1, 1, n) in float32 as ATen's CPU kernel computes it: from the start for
 * the first half and from the end for the second, each a fused multiply-add on the x86-64
 * and aarch64 builds that produced bitsandbytes' maps (testdata column A). */
static float linspace_at(int n, int idx) {
  const float start = 0.1f, end = 1.0f;
  float step = (end - start) / (float)(n - 1);
  if (idx < n / 2) return fmaf(step, (float)idx, start);
  return fmaf(-step, (float)(n - 1 - idx), end);
}

static int cmp_float(const void* a, const void* b) {
  float x = *(const float*)a, y = *(const float*)b;
  return (x > y) - (x < y);
}

void aj_qmap_dynamic_values(int is_signed, float out[AJ_QMAP_SIZE]) {
  int count = 0;
  for (int i = 0; i <= 6; i++) {
    int k_count = is_signed ? 1 << i : 1 << (i + 1);
    float scale = (float)pow(10.0, i - 6); /* a Python float cast to float32 */
    for (int k = 0; k < k_count; k++) {
      float mean = (linspace_at(k_count + 1, k) + linspace_at(k_count + 1, k + 1)) / 2.0f;
      float value = scale * mean;
      out[count++] = value;
      if (is_signed) out[count++] = -value;
    }
  }
  out[count++] = 0.0f;
  out[count++] = 1.0f;
  qsort(out, AJ_QMAP_SIZE, sizeof *out, cmp_float);
}

/* |x - a| as an unevaluated sum hi + lo of doubles, exact for any two floats (Knuth's
 * two-sum: x - a can need more than 53 bits when the exponents are far apart). */
static void exact_distance(float x, float a, double* hi, double* lo) {
  double s = (double)x - (double)a;
  double t = s - (double)x;
  double err = ((double)x - (s - t)) + (-(double)a - t);
  if (s < 0.0 || (s == 0.0 && err < 0.0)) {
    s = -s;
    err = -err;
  }
  *hi = s;
  *lo = err;
}

/* Whether x is at least as close to b as to a, compared exactly. */
static int closer_to_upper(float x, float a, float b) {
  double ha, la, hb, lb;
  exact_distance(x, a, &ha, &la);
  exact_distance(x, b, &hb, &lb);
  return ha != hb ? hb < ha : lb <= la;
}

/* The smallest float whose nearest of {a, b} (a < b) is b, ties going to b: start from the
 * rounded midpoint and step by single floats to the exact boundary. */
static float midpoint_up(float a, float b) {
  float f = (float)(0.5 * (double)a + 0.5 * (double)b);
  while (f > a && closer_to_upper(nextafterf(f, -INFINITY), a, b)) f = nextafterf(f, -INFINITY);
  while (!closer_to_upper(f, a, b)) f = nextafterf(f, INFINITY);
  return f;
}

/* Code of x by counting thresholds (binary search; the last threshold is +Inf). */
static int code_of(const aj_qmap* q, float x) {
  int code = 0;
  for (int step = 128; step > 0; step >>= 1)
    if (q->thresholds[code + step - 1] <= x) code += step;
  return code;
}

void aj_qmap_prepare(aj_qmap* q, const float values[AJ_QMAP_SIZE]) {
  memcpy(q->values, values, sizeof q->values);
  for (int k = 0; k < AJ_QMAP_SIZE - 1; k++) q->thresholds[k] = midpoint_up(values[k], values[k + 1]);
  q->thresholds[AJ_QMAP_SIZE - 1] = INFINITY;
  q->zero_index = -1;
  for (int k = 0; k < AJ_QMAP_SIZE; k++)
    if (values[k] == 0.0f) q->zero_index = k;
  /* A cell is usable when its whole range crosses at most one threshold: then the code of
   * its lowest point plus one comparison of the low 15 mantissa bits (the bits below the
   * cell's) gives the code of every value in it. The first and last cells also collect the
   * clamped magnitudes, whose low bits say nothing, so they must hold no threshold. */
  q->table_ok = 1;
  for (int sign = 0; sign < 2; sign++) {
    for (uint32_t cell = 0; cell < AJ_QCELLS; cell++) {
      uint32_t lo_bits = cell == 0 ? 0u : ((uint32_t)AJ_QEXP_LO << 23) + (cell << (23 - AJ_QCELL_BITS));
      uint32_t hi_bits = ((uint32_t)AJ_QEXP_LO << 23) + ((cell + 1) << (23 - AJ_QCELL_BITS)) - 1;
      if (cell == AJ_QCELLS - 1) hi_bits = 0x7f7fffffu; /* everything up to FLT_MAX */
      float lo, hi;
      uint32_t a = lo_bits | (sign ? 0x80000000u : 0), b = hi_bits | (sign ? 0x80000000u : 0);
      memcpy(&lo, sign ? &b : &a, sizeof lo); /* negative cells: the most negative end is lowest */
      memcpy(&hi, sign ? &a : &b, sizeof hi);
      int c_lo = code_of(q, lo), c_hi = code_of(q, hi);
      int clamped = cell == 0 || cell == AJ_QCELLS - 1;
      if (c_hi - c_lo > 1 || (clamped && c_hi != c_lo)) q->table_ok = 0;
      /* The comparison field: positive cells step up when low >= the threshold's low bits
       * (none: 0xffff, above every 15-bit value); negative cells, where larger x means a
       * smaller magnitude, when low < the threshold's low bits + 1 (none: 0). */
      int field = sign ? 0 : 0xffff;
      if (c_hi == c_lo + 1) {
        uint32_t t_bits;
        memcpy(&t_bits, &q->thresholds[c_lo], sizeof t_bits);
        int t_low = (int)(t_bits & 0x7fffu);
        field = sign ? t_low + 1 : t_low;
      }
      q->table[sign][cell] = (c_lo << 16) | field;
    }
  }
}

static aj_qmap builtin_maps[2];
static pthread_once_t builtin_once = PTHREAD_ONCE_INIT;

static void build_builtin(void) {
  float values[AJ_QMAP_SIZE];
  for (int s = 0; s < 2; s++) {
    aj_qmap_dynamic_values(s, values);
    aj_qmap_prepare(&builtin_maps[s], values);
  }
}

const aj_qmap* aj_qmap_builtin(int is_signed) {
  pthread_once(&builtin_once, build_builtin);
  return &builtin_maps[is_signed ? 1 : 0];
}

adamjit_status aj_qmap_check(adamjit_context* ctx, const float* values, int count) {
  if (!values) return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "custom quantization map is NULL");
  if (count != AJ_QMAP_SIZE)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_SIZE, "custom quantization map has %d entries, expected %d", count,
                   AJ_QMAP_SIZE);
  for (int i = 0; i < AJ_QMAP_SIZE; i++) {
    if (!isfinite(values[i]))
      return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "custom quantization map entry %d is %g, not finite", i,
                     (double)values[i]);
    if (i > 0 && !(values[i] > values[i - 1]))
      return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE,
                     "custom quantization map is not strictly ascending: entry %d (%g) <= entry %d (%g)", i,
                     (double)values[i], i - 1, (double)values[i - 1]);
  }
  return ADAMJIT_OK;
}
