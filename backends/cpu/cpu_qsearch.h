/* Nearest-code search for the CPU loops. Both forms return exactly the code a brute-force
 * nearest search gives (ties go to the upper code): they count the map's midpoints
 * ("thresholds", see core/qmap.h) that are <= x. Loops take the arrays as plain restrict
 * pointers (a qview), which gcc turns into vector gathers; through the struct it does not. */
#ifndef ADAMJIT_BACKENDS_CPU_QSEARCH_H
#define ADAMJIT_BACKENDS_CPU_QSEARCH_H

#include "backends/cpu/cpu_elem.h"
#include "core/qmap.h"

typedef struct qview {
  const float* restrict values;
  const float* restrict thresholds;
  const int32_t* restrict table; /* [sign * AJ_QCELLS + cell] */
} qview;

static inline qview qview_of(const aj_qmap* q) { return (qview){q->values, q->thresholds, &q->table[0][0]}; }

/* Indices are int throughout: gcc vectorizes table reads with gathers only for signed
 * 32-bit indices. */

/* Branch-free binary search over the 256 thresholds (the last is +Inf), unrolled: gcc
 * vectorizes a loop only when it has no inner loop, and each step is then one gather. */
#define AJ_BINARY_STEP(S) i += (q.thresholds[i + (S)-1] <= x) ? (S) : 0
static inline __attribute__((always_inline)) int code_binary(qview q, float x) {
  int i = 0;
  AJ_BINARY_STEP(128);
  AJ_BINARY_STEP(64);
  AJ_BINARY_STEP(32);
  AJ_BINARY_STEP(16);
  AJ_BINARY_STEP(8);
  AJ_BINARY_STEP(4);
  AJ_BINARY_STEP(2);
  AJ_BINARY_STEP(1);
  return i;
}
#undef AJ_BINARY_STEP

/* The cell of x's sign, exponent and leading 8 mantissa bits holds at most one threshold;
 * the table entry has the cell's first code and where in the low 15 bits that threshold is. */
static inline __attribute__((always_inline)) int code_table(qview q, float x) {
  int u = (int)f2u(x);
  int a = u & 0x7fffffff;
  int e = q.table[((u >> 31) & AJ_QCELLS) + aj_qcell(a)];
  int low = a & 0x7fff, field = e & 0xffff;
  int step = u < 0 ? low < field : low >= field;
  return (e >> 16) + step;
}

static inline __attribute__((always_inline)) int nearest_code(qview q, float x, int use_table) {
  return use_table ? code_table(q, x) : code_binary(q, x);
}

#endif
