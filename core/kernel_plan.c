/* The kernels of a tensor's step on a GPU backend (core/kernel_plan.h). */
#include "core/kernel_plan.h"

#include <string.h>

#include "backends/backend.h"
#include "core/tuning.h"
#include "jit/opencl.h"

/* The update kernel's launch parameters (wg, ept, vec) per dialect and family: the defaults
 * where no override or tuning database entry answers (core/tuning.h). data/tuning/
 * builtin.json holds the same values as architecture-level entries for PoCL and for
 * sm_80/sm_90, so that `adamjit tune` measurements replace them there without touching
 * this code. What ept and vec mean for adamw8 is in jit/variant.h and
 * kernel_templates/adamw8.lua.
 *
 * opencl: measured with PoCL 3.1 on a 2-core AVX-512 VM (`adamjit bench --backend opencl`
 * at 1e7 and 1e8 elements, and per-kernel timings, each against the CPU backend in the
 * same run; the machine was shared, so only differences above ~15% counted):
 *  - adamw32: wg=64, ept=1. PoCL vectorizes across work-items; wg 32..256 with ept 1..2
 *    were within noise of each other; ept 4..16 and wg 512..1024 were 15-45% slower.
 *    vec=1: loads of vec consecutive elements per work-item turn PoCL's contiguous vector
 *    loads into strided ones (measured 20-25% slower), so the template does not do them.
 *  - adamw8 blockwise: vec=1, the "own blocks" layout (a work-item walks whole blocks:
 *    10x to 40x faster on PoCL than the shared-blocks layout, whose barriers and tree
 *    reductions a CPU runs as loops), wg*block = 2^15 elements (the private arrays PoCL
 *    replicates per work-item stay at 256-384 KiB) and ept such that a work-group covers
 *    2^19 elements, where building the group's code table costs ~4% (2^17 for tensors
 *    under 2^21 elements, so that they still spread over several groups, at ~15%). Groups
 *    of 2^17 to 2^21 elements were within noise of each other at blocks 64 to 4096.
 *    (builtin.json's size buckets are decades, so its b=256 entries switch to 2^19 at 1e6
 *    elements rather than at 2^21: the same within noise.)
 * opencl on GPUs and accelerators: the cuda values below (reasoned, like them). The CPU-device
 * values would be wrong there: a work-item walking whole blocks leaves a GPU's lanes idle
 * and diverged, and the own-blocks code table takes 36 KiB of local memory, more than some
 * GPUs have.
 * cuda: reasoned, no GPU was available to measure:
 *  - adamw32: wg=256, ept=4, vec=4: full warps, 1024 elements per block, many blocks in
 *    flight per SM (vec is accepted, loads are scalar).
 *  - adamw8 blockwise: the shared-blocks layout (vec=2: coalesced accesses, a block's
 *    absmax from a tree in shared memory) with wg=256 and ept (blocks per thread, even as
 *    vec must divide it) so that a block of threads covers 1K-4K elements: the 4 KiB map
 *    load is shared by several blocks while a tensor still makes many thread blocks.
 * adamw8 with b=0 keeps aj_variant_init_default's wg=256, ept=4, vec=4 in both dialects. */
/* Whether the OpenCL defaults for CPU devices apply (kernel_plan.h). */
static int opencl_cpu_device(adamjit_context* ctx) {
  if (!ctx || ctx->kind != ADAMJIT_BACKEND_OPENCL || !ctx->ops->opencl_device) return 1;
  const aj_cl_device* dev = ctx->ops->opencl_device(ctx);
  return !dev || (dev->info.type & (CL_DEVICE_TYPE_GPU | CL_DEVICE_TYPE_ACCELERATOR)) == 0;
}

void aj_plan_update_defaults(adamjit_context* ctx, aj_variant* u, int64_t numel) {
  const int cpu_device = u->dialect == AJ_DIALECT_OPENCL && opencl_cpu_device(ctx);
  if (u->family == AJ_KERNEL_ADAMW32) {
    if (cpu_device) {
      u->wg_size = 64;
      u->elems_per_thread = 1;
      u->vec_width = 1;
    } else {
      u->wg_size = 256;
      u->elems_per_thread = 4;
      u->vec_width = 4;
    }
    return;
  }
  if (u->family != AJ_KERNEL_ADAMW8 || u->block_size == 0) return;
  const int block = u->block_size; /* 64..4096 */
  if (cpu_device) {
    const int64_t per_group = numel >= ((int64_t)1 << 21) ? (int64_t)1 << 19 : (int64_t)1 << 17;
    const int wg = block >= (1 << 10) ? 32 : (1 << 15) / block; /* max(32, 2^15 / block) */
    const int64_t ept = per_group / ((int64_t)wg * block);
    u->wg_size = wg;
    u->elems_per_thread = (int)(ept < 1 ? 1 : ept > 16 ? 16 : ept);
    u->vec_width = 1;
  } else {
    const int chunk = block > 256 ? block : 256;
    const int ept = 2048 / chunk;
    u->wg_size = 256;
    u->elems_per_thread = ept < 2 ? 2 : ept > 4 ? 4 : ept;
    u->vec_width = 2;
  }
}

void aj_plan_tensor(adamjit_context* ctx, const aj_tensor* t, const adamjit_hparams* hp, aj_dialect d,
                    aj_tensor_plan* out) {
  memset(out, 0, sizeof *out);
  aj_variant* u = &out->update;
  aj_variant_init_default(u, t->state_bits == 8 ? AJ_KERNEL_ADAMW8 : AJ_KERNEL_ADAMW32);
  u->dialect = d;
  u->param_dtype = t->param_dtype;
  u->grad_dtype = t->grad_dtype;
  if (t->state_bits == 8) u->block_size = t->block_wise ? t->block_size : 0; /* b=0: one absmax per tensor */
  u->amsgrad = hp->amsgrad != 0;
  /* Without decay the kernel multiplies by nothing; with lr * wd == 0 the factor would be
   * exactly 1 anyway, so both kernels give the same bits. */
  u->weight_decay = hp->weight_decay != 0.0f;
  u->clipping = t->percentile < 100;
  u->nonfinite_guard = 1;
  aj_plan_update_defaults(ctx, u, t->numel);
  out->update_level = aj_tuning_apply(ctx, u, t->numel, &out->update_source);

  out->clipping = t->percentile < 100;
  if (out->clipping) {
    aj_variant_init_default(&out->sqnorm, AJ_KERNEL_SQNORM);
    out->sqnorm.dialect = d;
    out->sqnorm.grad_dtype = t->grad_dtype;
    out->sqnorm.nonfinite_guard = 1;
    aj_variant_init_default(&out->clip, AJ_KERNEL_CLIP);
    out->clip.dialect = d;
    out->clip.nonfinite_guard = 1; /* a step with non-finite gradients is not recorded */
  }
}

int aj_plan_kernels(const aj_tensor_plan* plan, aj_variant out[AJ_PLAN_MAX]) {
  int n = 0;
  if (plan->clipping) {
    out[n++] = plan->sqnorm;
    out[n++] = plan->clip;
  }
  out[n++] = plan->update;
  return n;
}
