/* The kernels of a tensor's step on a GPU backend (core/kernel_plan.h). */
#include "core/kernel_plan.h"

#include <string.h>

void aj_plan_tensor(const aj_tensor* t, const adamjit_hparams* hp, aj_dialect d, aj_tensor_plan* out) {
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
