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
  /* where update's launch parameters came from (core/tuning.h): the level, and the
   * database's path, "built-in" or "" (valid while the context lives) */
  adamjit_tuning_level update_level;
  const char* update_source;
  int clipping;        /* percentile clipping: the two kernels below run first */
  aj_variant sqnorm;   /* squares of the gradient, per work-group partial sums */
  aj_variant clip;     /* sums the partials (fixed order), updates the history, writes the scale */
} aj_tensor_plan;

/* The plan of tensor t (storage fields resolved) stepped with hp in dialect d. The update
 * kernel's launch parameters are the per-dialect defaults, replaced by the context's
 * override or tuning databases when ctx is a context of dialect d (ctx may be NULL: the
 * defaults). sqnorm and clip always launch at their defaults: they read the gradient once
 * and are a small part of a clipped step. The non-finite guard is always on: every step
 * counts them. */
void aj_plan_tensor(adamjit_context* ctx, const aj_tensor* t, const adamjit_hparams* hp, aj_dialect d,
                    aj_tensor_plan* out);

/* Sets an update kernel's launch parameters to the library's defaults for its dialect,
 * the context's device and a tensor of numel elements: level DEFAULT of the tuning lookup.
 * adamw32 and blockwise adamw8 only; adamw8 with b=0 and other families keep
 * aj_variant_init_default's. OpenCL has two sets, for CPU devices (PoCL) and for GPUs and
 * accelerators; without an OpenCL context (ctx NULL or of another backend, e.g. kernel keys
 * asked of a CPU context) the CPU-device set, that of the device every CI machine has. */
void aj_plan_update_defaults(adamjit_context* ctx, aj_variant* u, int64_t numel);

/* The distinct kernels of a plan, in launch order (up to AJ_PLAN_MAX); returns the count. */
int aj_plan_kernels(const aj_tensor_plan* plan, aj_variant out[AJ_PLAN_MAX]);

#endif
