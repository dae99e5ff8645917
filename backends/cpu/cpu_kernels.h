/* The CPU backend's element loops, shared between its step driver and its kernels file. */
#ifndef ADAMJIT_BACKENDS_CPU_KERNELS_H
#define ADAMJIT_BACKENDS_CPU_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "adamjit/adamjit.h"
#include "core/qmap.h"

/* Everything one 32-bit AdamW update of a tensor range needs; scalars precomputed per step. */
typedef struct aj_cpu_adamw32_args {
  void* param;
  const void* grad;
  adamjit_dtype param_dtype;
  adamjit_dtype grad_dtype;
  float* m;
  float* v;
  float* vmax;       /* NULL unless amsgrad */
  float beta1;
  float beta2;
  float eps;
  float decay;       /* 1 - lr * weight_decay */
  float step_size;   /* lr / (1 - beta1^t) */
  float inv_sqrt_c2; /* 1 / sqrt(1 - beta2^t) */
  float grad_scale;  /* percentile clipping; 1 when off */
} aj_cpu_adamw32_args;

/* Updates elements [begin, end); returns how many gradient elements were NaN or Inf (those
 * elements keep their param and state). */
uint64_t aj_cpu_adamw32(const aj_cpu_adamw32_args* a, size_t begin, size_t end);

/* Sum of squares, in double, of the finite gradient elements in [begin, end); the number of
 * non-finite ones goes to *nonfinite. */
double aj_cpu_grad_sumsq(const void* grad, adamjit_dtype dtype, size_t begin, size_t end, uint64_t* nonfinite);

/* One 8-bit blockwise AdamW update (SPEC 3). Codes index qmap1 (m) and qmap2 (v, vmax). */
typedef struct aj_cpu_adamw8_args {
  void* param;
  const void* grad;
  adamjit_dtype param_dtype;
  adamjit_dtype grad_dtype;
  uint8_t* c1;       /* m codes */
  uint8_t* c2;       /* v codes */
  uint8_t* c3;       /* vmax codes; NULL unless amsgrad */
  float* absmax1;    /* per block; with block_wise = 0 one value, read-only here (see below) */
  float* absmax2;
  float* absmax3;
  const aj_qmap* q1;
  const aj_qmap* q2;
  int block_size;    /* elements per absmax block (block_wise) */
  int block_wise;
  float new_absmax[3]; /* block_wise = 0: the tensor's new absmax of m, v, vmax (pass one) */
  int use_table;     /* nearest-code search: table or binary (identical results) */
  float beta1;
  float beta2;
  float eps;
  float decay;
  float step_size;
  float inv_sqrt_c2;
  float grad_scale;
} aj_cpu_adamw8_args;

/* Updates elements [begin, end), which start on a block boundary. With block_wise it
 * computes each block's new absmax and stores it; without, it quantizes against
 * a->new_absmax and leaves absmax1..3 to the caller (other ranges still read the old ones).
 * Returns the number of non-finite gradient elements (whose param and m, v, vmax values are
 * kept: they are requantized only as their block's absmax moves). */
uint64_t aj_cpu_adamw8(const aj_cpu_adamw8_args* a, size_t begin, size_t end);
/* aj_cpu_adamw8 with the portable loops only. aj_cpu_adamw8 runs an AVX-512 form instead
 * (cpu_adamw8_avx512.h) where the CPU has AVX-512 F/BW/DQ/VL/VBMI and the maps are the
 * built-in ones; the two give bit-identical results (tests/test_cpu_adamw8_paths.c
 * compares them through these two functions). The environment variable ADAMJIT_CPU_AVX512=0,
 * set before the first 8-bit step, keeps the whole process on the portable loops (to
 * compare speeds: `ADAMJIT_CPU_AVX512=0 adamjit bench`). */
uint64_t aj_cpu_adamw8_portable(const aj_cpu_adamw8_args* a, size_t begin, size_t end);
/* Whether aj_cpu_adamw8 runs the AVX-512 form (for the built-in maps) in this process. */
int aj_cpu_adamw8_avx512_active(void);

/* Pass one of block_wise = 0: the maxima of |m|, |v| and vmax that [begin, end) would get. */
void aj_cpu_adamw8_absmax(const aj_cpu_adamw8_args* a, size_t begin, size_t end, float out[3]);

/* Blockwise quantization of [begin, end) (block aligned) of x; returns the index of the first
 * non-finite element, or end if there is none. */
size_t aj_cpu_quantize(const void* x, adamjit_dtype dtype, uint8_t* codes, float* absmax, int block_size,
                       const aj_qmap* q, int use_table, size_t begin, size_t end);
void aj_cpu_dequantize(const uint8_t* codes, const float* absmax, void* out, adamjit_dtype dtype, int block_size,
                       const aj_qmap* q, size_t begin, size_t end);

#endif
