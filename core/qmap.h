/* Quantization maps: the dynamic maps of SPEC 3, and the search structures that find the
 * nearest code of a value exactly (equal to a brute-force nearest search on every float). */
#ifndef ADAMJIT_CORE_QMAP_H
#define ADAMJIT_CORE_QMAP_H

#include <stdint.h>

#include "adamjit/adamjit.h"

#define AJ_QMAP_SIZE 256
/* Table search: cells of 2^-AJ_QCELL_BITS of an octave over the octaves [2^(AJ_QEXP_LO-127), 2) */
#define AJ_QCELL_BITS 8
#define AJ_QEXP_LO 100
#define AJ_QEXP_HI 127
#define AJ_QCELLS (((AJ_QEXP_HI - AJ_QEXP_LO + 1) << AJ_QCELL_BITS) + 1)

typedef struct aj_qmap {
  float values[AJ_QMAP_SIZE];     /* ascending */
  /* thresholds[k]: the smallest float whose nearest value is values[k+1] or above (ties go
   * up); thresholds[255] = +Inf. The code of x is the number of thresholds <= x. */
  float thresholds[AJ_QMAP_SIZE];
  /* Per sign and magnitude cell (exponent and 8 leading mantissa bits): the code of the
   * cell's lowest value << 16, and in the low 16 bits where the cell's one threshold lies in
   * the remaining 15 mantissa bits (see aj_qmap_prepare). Usable when every cell holds at
   * most one threshold (table_ok): one table read, no threshold read. */
  int32_t table[2][AJ_QCELLS]; /* int32: gcc emits vector gathers only for signed 32-bit indices */
  int table_ok;
  int zero_index; /* the index of an exact 0.0 in the map, or -1 */
} aj_qmap;

/* Builds the signed (index 127 = 0, 255 = 1) or unsigned (0 = 0, 255 = 1) dynamic map of
 * SPEC 3 in float32 arithmetic as bitsandbytes does. */
void aj_qmap_dynamic_values(int is_signed, float out[AJ_QMAP_SIZE]);

/* Prepares the search structures of a map of 256 strictly ascending finite values. */
void aj_qmap_prepare(aj_qmap* q, const float values[AJ_QMAP_SIZE]);

/* The two built-in maps, prepared once (thread-safe). */
const aj_qmap* aj_qmap_builtin(int is_signed);

/* Checks a user map: 256 strictly ascending finite values. */
adamjit_status aj_qmap_check(adamjit_context* ctx, const float* values, int count);

/* Table cell of a non-negative float's bits (magnitudes below the table range share cell 0,
 * magnitudes at or above 2 the last cell). Signed int arithmetic throughout, so that a
 * vectorized caller can feed the result to a gather. */
static inline int aj_qcell(int abs_bits) {
  const int lo = AJ_QEXP_LO << 23, hi = (AJ_QEXP_HI + 1) << 23;
  int a = abs_bits < lo ? lo : abs_bits;
  a = a > hi ? hi : a;
  return (a - lo) >> (23 - AJ_QCELL_BITS);
}

#endif
