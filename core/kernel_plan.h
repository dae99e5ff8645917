/* Which run-time kernels a tensor's step launches on a GPU backend (ARCHITECTURE: "at step
 * time core hands each tensor's variant key to the backend"). One place decides it, so the
 * OpenCL and CUDA backends, adamjit_optimizer_kernel_keys and `adamjit bench --jit` agree. */
#ifndef ADAMJIT_CORE_KERNEL_PLAN_H
#define ADAMJIT_CORE_KERNEL_PLAN_H

#include "core/internal.h"
#include "jit/variant.h"

/* Kernels per tensor at most: the gradient norm's partial sums, the clipping epilogue that
 * adds them up, and the update. */
#define AJ_PLAN_MAX 3

typedef struct aj_tensor_plan {
  aj_variant update;   /* adamw32 or adamw8 */
  int clipping;        /* percentile clipping: the two kernels below run first */
  aj_variant sqnorm;   /* squares of the gradient, per work-group partial sums */
  aj_variant clip;     /* sums the partials (fixed order), updates the history, writes the scale */
} aj_tensor_plan;

/* The plan of tensor t (storage fields resolved) stepped with hp in dialect d, at the
 * default launch parameters. The non-finite guard is always on: every step counts them. */
void aj_plan_tensor(const aj_tensor* t, const adamjit_hparams* hp, aj_dialect d, aj_tensor_plan* out);

/* The distinct kernels of a plan, in launch order (up to AJ_PLAN_MAX); returns the count. */
int aj_plan_kernels(const aj_tensor_plan* plan, aj_variant out[AJ_PLAN_MAX]);

#endif
