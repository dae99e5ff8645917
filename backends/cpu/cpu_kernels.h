/* The CPU backend's element loops, shared between its step driver and its kernels file. */
#ifndef ADAMJIT_BACKENDS_CPU_KERNELS_H
#define ADAMJIT_BACKENDS_CPU_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "adamjit/adamjit.h"

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

#endif
