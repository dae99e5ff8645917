/* The state manager: configuration, parameter groups, tensor registration, the step. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/backend.h"
#include "core/block_policy.h"
#include "core/kernel_plan.h"
#include "core/qmap.h"

/* ------------------------------------------------------------ defaults */

void adamjit_hparams_init_default(adamjit_hparams* hp) {
  if (!hp) return;
  hp->lr = 1e-3f;
  hp->beta1 = 0.9f;
  hp->beta2 = 0.999f;
  hp->eps = 1e-8f;
  hp->weight_decay = 1e-2f;
  hp->amsgrad = 0;
}

void adamjit_optimizer_config_init_default(adamjit_optimizer_config* config) {
  if (!config) return;
  memset(config, 0, sizeof *config);
  config->struct_size = sizeof *config;
  adamjit_hparams_init_default(&config->hparams);
  config->optim_bits = 32;
  config->min_8bit_size = 4096;
  config->percentile_clipping = 100;
  config->block_wise = 1;
  config->quant_block_size = 256;
  config->is_paged = 0;
  config->paged_min_elements = 100000;
  config->quant_block_policy = ADAMJIT_BLOCK_POLICY_FIXED;
  config->block_overhead_max = 1.0 / 64;
  config->block_error_max = AJ_BLOCK_ERROR_MAX_DEFAULT;
}

void adamjit_tensor_desc_init_default(adamjit_tensor_desc* desc) {
  if (!desc) return;
  memset(desc, 0, sizeof *desc);
  desc->struct_size = sizeof *desc;
  desc->param_dtype = ADAMJIT_F32;
  desc->grad_dtype = ADAMJIT_F32;
  desc->group = 0;
  desc->optim_bits = ADAMJIT_INHERIT;
  desc->min_8bit_size = ADAMJIT_INHERIT;
  desc->percentile_clipping = ADAMJIT_INHERIT;
  desc->block_wise = ADAMJIT_INHERIT;
  desc->quant_block_size = ADAMJIT_INHERIT;
  desc->is_paged = ADAMJIT_INHERIT;
  desc->quant_block_policy = ADAMJIT_INHERIT;
}

/* ---------------------------------------------------------- validation */

adamjit_status aj_check_hparams(adamjit_context* ctx, const adamjit_hparams* hp) {
  /* Written as !(x >= lo) so that NaN fails every range check. */
  if (!(hp->lr >= 0.0f) || isinf(hp->lr))
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "lr = %g: must be finite and >= 0", (double)hp->lr);
  if (!(hp->beta1 >= 0.0f && hp->beta1 < 1.0f))
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "beta1 = %g: must be in [0, 1)", (double)hp->beta1);
  if (!(hp->beta2 >= 0.0f && hp->beta2 < 1.0f))
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "beta2 = %g: must be in [0, 1)", (double)hp->beta2);
  if (!(hp->eps >= 0.0f) || isinf(hp->eps))
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "eps = %g: must be finite and >= 0", (double)hp->eps);
  if (!(hp->weight_decay >= 0.0f) || isinf(hp->weight_decay))
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "weight_decay = %g: must be finite and >= 0",
                   (double)hp->weight_decay);
  if (hp->amsgrad != 0 && hp->amsgrad != 1)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "amsgrad = %d: must be 0 or 1", hp->amsgrad);
  return ADAMJIT_OK;
}

static int is_pow2(int x) { return x > 0 && (x & (x - 1)) == 0; }

/* Storage options of the config or of one tensor's overrides; `inherit` allows ADAMJIT_INHERIT. */
static adamjit_status check_storage(adamjit_context* ctx, const char* what, int inherit, int bits, int64_t min8,
                                    int pclip, int block_wise, int block, int paged) {
#define SKIP(v) (inherit && (v) == ADAMJIT_INHERIT)
  if (!SKIP(bits) && bits != 32 && bits != 8)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "%s.optim_bits = %d: must be 32 or 8", what, bits);
  if (!SKIP(min8) && min8 < 0)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "%s.min_8bit_size = %lld: must be >= 0", what, (long long)min8);
  if (!SKIP(pclip) && (pclip < 0 || pclip > 100))
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "%s.percentile_clipping = %d: must be in 0..100 (100 = off)", what,
                   pclip);
  if (!SKIP(block_wise) && block_wise != 0 && block_wise != 1)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "%s.block_wise = %d: must be 0 or 1", what, block_wise);
  if (!SKIP(block) && (!is_pow2(block) || block < 64 || block > 4096))
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "%s.quant_block_size = %d: must be a power of two in 64..4096",
                   what, block);
  if (!SKIP(paged) && paged != 0 && paged != 1)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "%s.is_paged = %d: must be 0 or 1", what, paged);
#undef SKIP
  return ADAMJIT_OK;
}

static int is_block_policy(int p) {
  return p == ADAMJIT_BLOCK_POLICY_FIXED || p == ADAMJIT_BLOCK_POLICY_MEMORY || p == ADAMJIT_BLOCK_POLICY_ERROR;
}

static adamjit_status check_policy(adamjit_context* ctx, const char* what, int inherit, int policy) {
  if ((inherit && policy == ADAMJIT_INHERIT) || is_block_policy(policy)) return ADAMJIT_OK;
  return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE,
                 "%s.quant_block_policy = %d: must be ADAMJIT_BLOCK_POLICY_FIXED (0), _MEMORY (1) or _ERROR (2)%s", what,
                 policy, inherit ? " or ADAMJIT_INHERIT (-1)" : "");
}

static adamjit_status check_config(adamjit_context* ctx, const adamjit_optimizer_config* c) {
  adamjit_status st = aj_check_hparams(ctx, &c->hparams);
  if (st) return st;
  st = check_storage(ctx, "adamjit_optimizer_config", 0, c->optim_bits, c->min_8bit_size, c->percentile_clipping,
                     c->block_wise, c->quant_block_size, c->is_paged);
  if (st) return st;
  st = check_policy(ctx, "adamjit_optimizer_config", 0, c->quant_block_policy);
  if (st) return st;
  /* Checked whatever the policy, so that a tensor's policy override never meets a bad value. */
  if (!(c->block_overhead_max > 0.0 && c->block_overhead_max <= 1.0))
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "adamjit_optimizer_config.block_overhead_max = %g: must be in (0, 1]",
                   c->block_overhead_max);
  if (!(c->block_error_max > 0.0 && c->block_error_max <= 1.0))
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "adamjit_optimizer_config.block_error_max = %g: must be in (0, 1]",
                   c->block_error_max);
  if (c->paged_min_elements < 0)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "adamjit_optimizer_config.paged_min_elements = %lld: must be >= 0",
                   (long long)c->paged_min_elements);
  return ADAMJIT_OK;
}

static adamjit_status check_tensor_index(const adamjit_optimizer* opt, int index, const char* fn) {
  if (index < 0 || index >= opt->n_tensors)
    return aj_fail(opt->ctx, ADAMJIT_ERR_INVALID_INDEX, "%s: tensor index %d out of range (%d tensors registered)", fn,
                   index, opt->n_tensors);
  return ADAMJIT_OK;
}

static adamjit_status check_group_index(const adamjit_optimizer* opt, int group, const char* fn) {
  if (group < 0 || group >= opt->n_groups)
    return aj_fail(opt->ctx, ADAMJIT_ERR_INVALID_INDEX, "%s: group %d out of range (%d groups)", fn, group,
                   opt->n_groups);
  return ADAMJIT_OK;
}

/* ----------------------------------------------------------- lifetime */

adamjit_status adamjit_optimizer_create(adamjit_context* ctx, const adamjit_optimizer_config* config_in,
                                        adamjit_optimizer** out) {
  AJ_CHECK_NULL(ctx, ctx, "adamjit_optimizer_create", "ctx");
  AJ_CHECK_NULL(ctx, out, "adamjit_optimizer_create", "out");
  *out = NULL;
  adamjit_optimizer_config config;
  adamjit_optimizer_config_init_default(&config);
  if (config_in) {
    adamjit_status st = aj_copy_versioned(ctx, &config, sizeof config, config_in, "adamjit_optimizer_config");
    if (st) return st;
  }
  adamjit_status st = check_config(ctx, &config);
  if (st) return st;
  adamjit_optimizer* opt = calloc(1, sizeof *opt);
  adamjit_hparams* groups = malloc(sizeof *groups);
  if (!opt || !groups) {
    free(opt);
    free(groups);
    return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "adamjit_optimizer_create: out of host memory");
  }
  opt->ctx = ctx;
  opt->config = config;
  opt->groups = groups;
  opt->groups[0] = config.hparams;
  opt->n_groups = 1;
  if (config.is_paged && ctx->kind == ADAMJIT_BACKEND_CPU)
    aj_log(ctx, ADAMJIT_LOG_INFO, "is_paged: paging is a no-op on the CPU backend (state is host memory already)");
  *out = opt;
  return ADAMJIT_OK;
}

static void free_state(adamjit_context* ctx, aj_tensor* t) {
  adamjit_mem* bufs[] = {&t->m, &t->v, &t->vmax, &t->absmax1, &t->absmax2, &t->absmax3, &t->gnorm};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
    if (*bufs[i]) ctx->ops->mem_free(ctx, *bufs[i]);
    *bufs[i] = NULL;
  }
}

/* One state (m, v or vmax) of t: fp32 values, or codes plus per-block absmax. Codes may be
 * paged; absmax never is (SPEC 5). On failure nothing is allocated. */
static adamjit_status alloc_one_state(adamjit_context* ctx, aj_tensor* t, adamjit_mem* values, adamjit_mem* absmax,
                                      adamjit_memory_kind* kind) {
  size_t n = (size_t)t->numel;
  if (t->state_bits == 32) return ctx->ops->mem_alloc(ctx, n * sizeof(float), t->paged, values, kind);
  adamjit_memory_kind small;
  adamjit_status st = ctx->ops->mem_alloc(ctx, n, t->paged, values, kind);
  if (st) return st;
  st = ctx->ops->mem_alloc(ctx, (size_t)aj_tensor_blocks(t) * sizeof(float), 0, absmax, &small);
  if (st) {
    ctx->ops->mem_free(ctx, *values);
    *values = NULL;
  }
  return st;
}

void adamjit_optimizer_destroy(adamjit_optimizer* opt) {
  if (!opt) return;
  for (int i = 0; i < opt->n_tensors; i++) free_state(opt->ctx, &opt->tensors[i]);
  free(opt->tensors);
  free(opt->groups);
  free(opt);
}

void aj_step_scalars_compute(const adamjit_hparams* hp, uint64_t t, aj_step_scalars* out) {
  double c1 = 1.0 - pow((double)hp->beta1, (double)t);
  double c2 = 1.0 - pow((double)hp->beta2, (double)t);
  out->beta1 = hp->beta1;
  out->beta2 = hp->beta2;
  out->eps = hp->eps;
  out->decay = 1.0f - hp->lr * hp->weight_decay;
  out->step_size = (float)((double)hp->lr / c1);
  out->inv_sqrt_c2 = (float)(1.0 / sqrt(c2));
}

/* ------------------------------------------------------------- groups */

adamjit_status adamjit_optimizer_add_group(adamjit_optimizer* opt, const adamjit_hparams* hp, int* group) {
  AJ_CHECK_NULL(NULL, opt, "adamjit_optimizer_add_group", "opt");
  AJ_CHECK_NULL(opt->ctx, hp, "adamjit_optimizer_add_group", "hp");
  AJ_CHECK_NULL(opt->ctx, group, "adamjit_optimizer_add_group", "group");
  adamjit_status st = aj_check_hparams(opt->ctx, hp);
  if (st) return st;
  adamjit_hparams* groups = realloc(opt->groups, (size_t)(opt->n_groups + 1) * sizeof *groups);
  if (!groups) return aj_fail(opt->ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "adamjit_optimizer_add_group: out of host memory");
  opt->groups = groups;
  opt->groups[opt->n_groups] = *hp;
  *group = opt->n_groups++;
  return ADAMJIT_OK;
}

adamjit_status adamjit_optimizer_group_count(const adamjit_optimizer* opt, int* count) {
  AJ_CHECK_NULL(NULL, opt, "adamjit_optimizer_group_count", "opt");
  AJ_CHECK_NULL(opt->ctx, count, "adamjit_optimizer_group_count", "count");
  *count = opt->n_groups;
  return ADAMJIT_OK;
}

adamjit_status adamjit_optimizer_get_group(const adamjit_optimizer* opt, int group, adamjit_hparams* hp) {
  AJ_CHECK_NULL(NULL, opt, "adamjit_optimizer_get_group", "opt");
  AJ_CHECK_NULL(opt->ctx, hp, "adamjit_optimizer_get_group", "hp");
  adamjit_status st = check_group_index(opt, group, "adamjit_optimizer_get_group");
  if (st) return st;
  *hp = opt->groups[group];
  return ADAMJIT_OK;
}

adamjit_status adamjit_optimizer_set_group(adamjit_optimizer* opt, int group, const adamjit_hparams* hp) {
  AJ_CHECK_NULL(NULL, opt, "adamjit_optimizer_set_group", "opt");
  AJ_CHECK_NULL(opt->ctx, hp, "adamjit_optimizer_set_group", "hp");
  adamjit_status st = check_group_index(opt, group, "adamjit_optimizer_set_group");
  if (st) return st;
  st = aj_check_hparams(opt->ctx, hp);
  if (st) return st;
  opt->groups[group] = *hp;
  return ADAMJIT_OK;
}

/* ------------------------------------------------------------ tensors */

uint64_t aj_tensor_state_bytes(const aj_tensor* t, int amsgrad) {
  uint64_t n = (uint64_t)t->numel;
  /* m and v (and vmax): fp32 values, or one code byte each plus an fp32 absmax per block.
   * The two 1 KiB maps are shared by all tensors and not counted here. */
  uint64_t per_state = t->state_bits == 32 ? n * sizeof(float) : n + (uint64_t)aj_tensor_blocks(t) * sizeof(float);
  uint64_t bytes = 2 * per_state;
  if (amsgrad) bytes += per_state;
  if (t->percentile < 100) bytes += AJ_CLIP_HISTORY * sizeof(float);
  return bytes;
}

#define RESOLVE(override, inherited) ((override) == ADAMJIT_INHERIT ? (inherited) : (override))

/* Fills the storage fields of t from the config and the descriptor's overrides; the block
 * of an ERROR-policy tensor is the provisional one (its first step measures). */
static void resolve_storage(const adamjit_optimizer* opt, const adamjit_tensor_desc* d, aj_tensor* t) {
  const adamjit_optimizer_config* c = &opt->config;
  int bits = RESOLVE(d->optim_bits, c->optim_bits);
  int64_t min8 = RESOLVE(d->min_8bit_size, c->min_8bit_size);
  t->percentile = RESOLVE(d->percentile_clipping, c->percentile_clipping);
  t->block_wise = RESOLVE(d->block_wise, c->block_wise);
  t->block_size = RESOLVE(d->quant_block_size, c->quant_block_size);
  t->paged = RESOLVE(d->is_paged, c->is_paged) && t->numel >= c->paged_min_elements;
  t->state_bits = (bits == 8 && t->numel >= min8) ? 8 : 32;
  /* A policy has a block to choose only for 8-bit block-wise state without an explicit size. */
  int policy = RESOLVE(d->quant_block_policy, c->quant_block_policy);
  if (t->state_bits != 8 || !t->block_wise || d->quant_block_size != ADAMJIT_INHERIT) policy = ADAMJIT_BLOCK_POLICY_FIXED;
  t->block_policy = policy;
  t->block_pending = policy == ADAMJIT_BLOCK_POLICY_ERROR;
  if (policy == ADAMJIT_BLOCK_POLICY_MEMORY) t->block_size = aj_block_for_memory(t->numel, c->block_overhead_max);
}

/* with_memory = 0 checks a description without buffers (adamjit_optimizer_kernel_keys). */
static adamjit_status check_tensor_desc(const adamjit_optimizer* opt, const adamjit_tensor_desc* d, const char* fn,
                                        int with_memory) {
  adamjit_context* ctx = opt->ctx;
  if (with_memory) {
    AJ_CHECK_NULL(ctx, d->param, fn, "desc.param");
    AJ_CHECK_NULL(ctx, d->grad, fn, "desc.grad");
  }
  if (d->numel <= 0 || (uint64_t)d->numel > SIZE_MAX / sizeof(float) / 4)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_SIZE, "%s: desc.numel = %lld is out of range", fn, (long long)d->numel);
  if (!adamjit_dtype_name(d->param_dtype))
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_DTYPE, "%s: desc.param_dtype = %d is not a dtype", fn, (int)d->param_dtype);
  if (!adamjit_dtype_name(d->grad_dtype))
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_DTYPE, "%s: desc.grad_dtype = %d is not a dtype", fn, (int)d->grad_dtype);
  adamjit_status st = check_group_index(opt, d->group, fn);
  if (st) return st;
  st = check_storage(ctx, "adamjit_tensor_desc", 1, d->optim_bits, d->min_8bit_size, d->percentile_clipping,
                     d->block_wise, d->quant_block_size, d->is_paged);
  if (!st) st = check_policy(ctx, "adamjit_tensor_desc", 1, d->quant_block_policy);
  if (st || !with_memory) return st;
  st = ctx->ops->mem_check(ctx, d->param, (size_t)d->numel * adamjit_dtype_size(d->param_dtype), "desc.param");
  if (st) return st;
  return ctx->ops->mem_check(ctx, d->grad, (size_t)d->numel * adamjit_dtype_size(d->grad_dtype), "desc.grad");
}

/* Allocates the zeroed state buffers of t (zero codes with zero absmax decode to 0); on
 * failure nothing stays allocated. */
static adamjit_status alloc_state(adamjit_context* ctx, aj_tensor* t, int amsgrad) {
  adamjit_memory_kind kind = ADAMJIT_MEMORY_DEVICE;
  adamjit_status st = alloc_one_state(ctx, t, &t->m, &t->absmax1, &kind);
  if (!st) st = alloc_one_state(ctx, t, &t->v, &t->absmax2, &kind);
  if (!st && amsgrad) st = alloc_one_state(ctx, t, &t->vmax, &t->absmax3, &kind);
  if (!st && t->percentile < 100) {
    adamjit_memory_kind small; /* the history is tiny and never paged */
    st = ctx->ops->mem_alloc(ctx, AJ_CLIP_HISTORY * sizeof(float), 0, &t->gnorm, &small);
  }
  if (st) {
    free_state(ctx, t);
    return st;
  }
  t->memory = kind;
  return ADAMJIT_OK;
}

adamjit_status adamjit_optimizer_add_tensor(adamjit_optimizer* opt, const adamjit_tensor_desc* desc_in, int* index) {
  AJ_CHECK_NULL(NULL, opt, "adamjit_optimizer_add_tensor", "opt");
  AJ_CHECK_NULL(opt->ctx, desc_in, "adamjit_optimizer_add_tensor", "desc");
  AJ_CHECK_NULL(opt->ctx, index, "adamjit_optimizer_add_tensor", "index");
  adamjit_tensor_desc d;
  adamjit_tensor_desc_init_default(&d);
  adamjit_status st = aj_copy_versioned(opt->ctx, &d, sizeof d, desc_in, "adamjit_tensor_desc");
  if (st) return st;
  st = check_tensor_desc(opt, &d, "adamjit_optimizer_add_tensor", 1);
  if (st) return st;

  aj_tensor t;
  memset(&t, 0, sizeof t);
  t.param = d.param;
  t.grad = d.grad;
  t.numel = d.numel;
  t.param_dtype = d.param_dtype;
  t.grad_dtype = d.grad_dtype;
  t.group = d.group;
  if (d.name)
    snprintf(t.name, sizeof t.name, "%s", d.name);
  else
    snprintf(t.name, sizeof t.name, "tensor %d", opt->n_tensors);
  resolve_storage(opt, &d, &t);

  aj_tensor* tensors = realloc(opt->tensors, (size_t)(opt->n_tensors + 1) * sizeof *tensors);
  if (!tensors) return aj_fail(opt->ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "adamjit_optimizer_add_tensor: out of host memory");
  opt->tensors = tensors;
  st = alloc_state(opt->ctx, &t, opt->groups[t.group].amsgrad);
  if (st) return st;
  opt->tensors[opt->n_tensors] = t;
  *index = opt->n_tensors++;
  return ADAMJIT_OK;
}

adamjit_status adamjit_optimizer_tensor_count(const adamjit_optimizer* opt, int* count) {
  AJ_CHECK_NULL(NULL, opt, "adamjit_optimizer_tensor_count", "opt");
  AJ_CHECK_NULL(opt->ctx, count, "adamjit_optimizer_tensor_count", "count");
  *count = opt->n_tensors;
  return ADAMJIT_OK;
}

adamjit_status adamjit_optimizer_set_tensor_memory(adamjit_optimizer* opt, int index, adamjit_mem param,
                                                   adamjit_mem grad) {
  const char* fn = "adamjit_optimizer_set_tensor_memory";
  AJ_CHECK_NULL(NULL, opt, fn, "opt");
  AJ_CHECK_NULL(opt->ctx, param, fn, "param");
  AJ_CHECK_NULL(opt->ctx, grad, fn, "grad");
  adamjit_status st = check_tensor_index(opt, index, fn);
  if (st) return st;
  aj_tensor* t = &opt->tensors[index];
  st = opt->ctx->ops->mem_check(opt->ctx, param, (size_t)t->numel * adamjit_dtype_size(t->param_dtype), "param");
  if (!st)
    st = opt->ctx->ops->mem_check(opt->ctx, grad, (size_t)t->numel * adamjit_dtype_size(t->grad_dtype), "grad");
  if (st) return st;
  t->param = param;
  t->grad = grad;
  return ADAMJIT_OK;
}

/* --------------------------------------------------------------- step */

/* Ends what ensure_vmax began: undo = 1 frees the running maxima it allocated. */
static void settle_vmax(adamjit_optimizer* opt, int undo) {
  adamjit_context* ctx = opt->ctx;
  for (int j = 0; j < opt->n_tensors; j++) {
    aj_tensor* t = &opt->tensors[j];
    if (undo && t->vmax_fresh) {
      ctx->ops->mem_free(ctx, t->vmax);
      t->vmax = NULL;
      if (t->absmax3) ctx->ops->mem_free(ctx, t->absmax3);
      t->absmax3 = NULL;
    }
    t->vmax_fresh = 0;
  }
}

/* Gives every tensor of an amsgrad group its running maximum; all or nothing. The new ones
 * stay marked (vmax_fresh) until settle_vmax, so that the rest of the step's preparation
 * can still undo them. */
static adamjit_status ensure_vmax(adamjit_optimizer* opt) {
  adamjit_status st = ADAMJIT_OK;
  for (int i = 0; i < opt->n_tensors && !st; i++) {
    aj_tensor* t = &opt->tensors[i];
    if (!opt->groups[t->group].amsgrad || t->vmax) continue;
    adamjit_memory_kind kind;
    st = alloc_one_state(opt->ctx, t, &t->vmax, &t->absmax3, &kind);
    if (!st) t->vmax_fresh = 1;
  }
  if (st) settle_vmax(opt, 1);
  return st;
}

adamjit_status adamjit_optimizer_step(adamjit_optimizer* opt, uint64_t* nonfinite_count) {
  AJ_CHECK_NULL(NULL, opt, "adamjit_optimizer_step", "opt");
  adamjit_context* ctx = opt->ctx;
  for (int g = 0; g < opt->n_groups; g++) { /* fields may have been edited in place by a caller's bug */
    adamjit_status st = aj_check_hparams(ctx, &opt->groups[g]);
    if (st) return st;
  }
  if (opt->n_tensors == 0) {
    opt->last_nonfinite = 0;
    opt->nonfinite_pending = 0;
    if (nonfinite_count) *nonfinite_count = 0;
    return ADAMJIT_OK;
  }
  aj_step_item* items = malloc((size_t)opt->n_tensors * sizeof *items);
  if (!items) return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "adamjit_optimizer_step: out of host memory");
  /* Everything that can fail before the update runs comes first (the running maxima, then
   * the ERROR policy's measurement, which resizes absmax3 too), so that a failure leaves
   * every tensor as it was. */
  aj_block_changes blocks;
  adamjit_status st = ensure_vmax(opt);
  if (!st) {
    st = aj_block_measure(opt, &blocks);
    settle_vmax(opt, st != ADAMJIT_OK);
  }
  if (st) {
    free(items);
    return st;
  }
  aj_block_apply(opt, &blocks);
  for (int i = 0; i < opt->n_tensors; i++) {
    aj_tensor* t = &opt->tensors[i];
    t->step++;
    items[i].tensor = t;
    items[i].hp = opt->groups[t->group];
    items[i].qmap1 = aj_qmap_builtin(1);
    items[i].qmap2 = aj_qmap_builtin(0);
  }
  uint64_t nonfinite = 0;
  /* Without a place for the count, a GPU backend need not wait for the step: the count is
   * read when asked for (adamjit_optimizer_last_nonfinite). */
  st = ctx->ops->step(ctx, items, opt->n_tensors, nonfinite_count ? &nonfinite : NULL);
  free(items);
  if (st) {
    for (int i = 0; i < opt->n_tensors; i++) opt->tensors[i].step--;
    aj_block_revert(opt, &blocks); /* measured again by the next try */
  }
  aj_block_changes_free(ctx, &blocks);
  if (st) return st;
  opt->last_nonfinite = nonfinite;
  opt->nonfinite_pending = nonfinite_count == NULL;
  if (nonfinite_count) *nonfinite_count = nonfinite;
  return ADAMJIT_OK;
}

adamjit_status adamjit_optimizer_last_nonfinite(adamjit_optimizer* opt, uint64_t* count) {
  AJ_CHECK_NULL(NULL, opt, "adamjit_optimizer_last_nonfinite", "opt");
  AJ_CHECK_NULL(opt->ctx, count, "adamjit_optimizer_last_nonfinite", "count");
  if (opt->nonfinite_pending) {
    adamjit_status st = opt->ctx->ops->read_nonfinite(opt->ctx, &opt->last_nonfinite);
    if (st) return st;
    opt->nonfinite_pending = 0;
  }
  *count = opt->last_nonfinite;
  return ADAMJIT_OK;
}

/* ------------------------------------------------------------ queries */

adamjit_status adamjit_optimizer_tensor_info(const adamjit_optimizer* opt, int index, adamjit_tensor_info* info) {
  const char* fn = "adamjit_optimizer_tensor_info";
  AJ_CHECK_NULL(NULL, opt, fn, "opt");
  AJ_CHECK_NULL(opt->ctx, info, fn, "info");
  adamjit_status st = check_tensor_index(opt, index, fn);
  if (st) return st;
  size_t given = info->struct_size;
  if (given < sizeof(size_t) || given > sizeof *info)
    return aj_fail(opt->ctx, ADAMJIT_ERR_INVALID_SIZE, "%s: info->struct_size = %zu, expected sizeof(adamjit_tensor_info) = %zu",
                   fn, given, sizeof *info);
  const aj_tensor* t = &opt->tensors[index];
  adamjit_tensor_info full;
  memset(&full, 0, sizeof full);
  full.numel = t->numel;
  full.param_dtype = t->param_dtype;
  full.grad_dtype = t->grad_dtype;
  full.group = t->group;
  full.state_bits = t->state_bits;
  full.quant_block_size = t->state_bits == 8 ? (t->block_wise ? t->block_size : t->numel) : 0;
  full.percentile_clipping = t->percentile;
  full.amsgrad = t->vmax != NULL;
  full.memory = t->memory;
  full.state_bytes = aj_tensor_state_bytes(t, t->vmax != NULL);
  full.step = t->step;
  snprintf(full.name, sizeof full.name, "%s", t->name);
  full.quant_block_policy = t->block_policy;
  /* A caller built against an older, smaller struct gets the fields it knows. */
  full.struct_size = given;
  memcpy(info, &full, given);
  return ADAMJIT_OK;
}

adamjit_status adamjit_optimizer_state_bytes(const adamjit_optimizer* opt, uint64_t* bytes) {
  AJ_CHECK_NULL(NULL, opt, "adamjit_optimizer_state_bytes", "opt");
  AJ_CHECK_NULL(opt->ctx, bytes, "adamjit_optimizer_state_bytes", "bytes");
  uint64_t total = 0;
  for (int i = 0; i < opt->n_tensors; i++) total += aj_tensor_state_bytes(&opt->tensors[i], opt->tensors[i].vmax != NULL);
  *bytes = total;
  return ADAMJIT_OK;
}

/* Dequantizes 8-bit state on the host: value = map[code] * absmax[block]. */
static adamjit_status read_quantized(adamjit_context* ctx, const aj_tensor* t, adamjit_mem codes, adamjit_mem absmax,
                                     int is_signed, float* dst) {
  size_t n = (size_t)t->numel, blocks = (size_t)aj_tensor_blocks(t);
  uint8_t* c = malloc(n);
  float* a = malloc(blocks * sizeof *a);
  adamjit_status st = c && a ? ADAMJIT_OK : aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "read_state: out of host memory");
  if (!st) st = ctx->ops->mem_read(ctx, c, codes, 0, n);
  if (!st) st = ctx->ops->mem_read(ctx, a, absmax, 0, blocks * sizeof *a);
  if (!st) {
    const float* map = aj_qmap_builtin(is_signed)->values;
    size_t per_block = t->block_wise ? (size_t)t->block_size : n;
    for (size_t i = 0; i < n; i++) dst[i] = map[c[i]] * a[i / per_block];
  }
  free(c);
  free(a);
  return st;
}

adamjit_status adamjit_optimizer_read_state(adamjit_optimizer* opt, int index, adamjit_state_kind which, float* dst,
                                            int64_t count) {
  const char* fn = "adamjit_optimizer_read_state";
  AJ_CHECK_NULL(NULL, opt, fn, "opt");
  AJ_CHECK_NULL(opt->ctx, dst, fn, "dst");
  adamjit_status st = check_tensor_index(opt, index, fn);
  if (st) return st;
  aj_tensor* t = &opt->tensors[index];
  if (count != t->numel)
    return aj_fail(opt->ctx, ADAMJIT_ERR_INVALID_SIZE, "%s: count = %lld but tensor \"%s\" has %lld elements", fn,
                   (long long)count, t->name, (long long)t->numel);
  adamjit_mem src, absmax;
  switch (which) {
    case ADAMJIT_STATE_EXP_AVG: src = t->m, absmax = t->absmax1; break;
    case ADAMJIT_STATE_EXP_AVG_SQ: src = t->v, absmax = t->absmax2; break;
    case ADAMJIT_STATE_MAX_EXP_AVG_SQ:
      src = t->vmax, absmax = t->absmax3;
      if (!src)
        return aj_fail(opt->ctx, ADAMJIT_ERR_INVALID_VALUE,
                       "%s: tensor \"%s\" has no max_exp_avg_sq (its group has not stepped with amsgrad)", fn, t->name);
      break;
    default:
      return aj_fail(opt->ctx, ADAMJIT_ERR_INVALID_VALUE, "%s: which = %d is not a state kind", fn, (int)which);
  }
  if (t->state_bits == 32) return opt->ctx->ops->mem_read(opt->ctx, dst, src, 0, (size_t)t->numel * sizeof(float));
  return read_quantized(opt->ctx, t, src, absmax, which == ADAMJIT_STATE_EXP_AVG, dst);
}

adamjit_status adamjit_optimizer_kernel_keys(const adamjit_optimizer* opt, const adamjit_tensor_desc* desc_in,
                                             const char* dialect, char (*keys)[ADAMJIT_KERNEL_KEY_MAX], int max,
                                             int* count) {
  const char* fn = "adamjit_optimizer_kernel_keys";
  AJ_CHECK_NULL(NULL, opt, fn, "opt");
  AJ_CHECK_NULL(opt->ctx, desc_in, fn, "desc");
  AJ_CHECK_NULL(opt->ctx, dialect, fn, "dialect");
  AJ_CHECK_NULL(opt->ctx, count, fn, "count");
  if (max < 0 || (max > 0 && !keys))
    return aj_fail(opt->ctx, ADAMJIT_ERR_INVALID_SIZE, "%s: max = %d with keys %s", fn, max, keys ? "given" : "NULL");
  aj_dialect d;
  if (strcmp(dialect, "opencl") == 0)
    d = AJ_DIALECT_OPENCL;
  else if (strcmp(dialect, "cuda") == 0)
    d = AJ_DIALECT_CUDA;
  else
    return aj_fail(opt->ctx, ADAMJIT_ERR_INVALID_VALUE, "%s: dialect \"%s\" (expected opencl or cuda)", fn, dialect);
  adamjit_tensor_desc desc;
  adamjit_tensor_desc_init_default(&desc);
  adamjit_status st = aj_copy_versioned(opt->ctx, &desc, sizeof desc, desc_in, "adamjit_tensor_desc");
  if (!st) st = check_tensor_desc(opt, &desc, fn, 0);
  if (st) return st;
  aj_tensor t;
  memset(&t, 0, sizeof t);
  t.numel = desc.numel;
  t.param_dtype = desc.param_dtype;
  t.grad_dtype = desc.grad_dtype;
  resolve_storage(opt, &desc, &t);
  aj_tensor_plan plan;
  aj_plan_tensor(opt->ctx, &t, &opt->groups[desc.group], d, &plan);
  aj_variant v[AJ_PLAN_MAX];
  int n = aj_plan_kernels(&plan, v);
  for (int i = 0; i < n; i++) {
    st = aj_variant_check(opt->ctx, &v[i]);
    if (st) return st;
  }
  for (int i = 0; i < n && i < max; i++) aj_variant_format(&v[i], keys[i], ADAMJIT_KERNEL_KEY_MAX);
  *count = n;
  return ADAMJIT_OK;
}

/* ------------------------------------------------------------- paging */

adamjit_status adamjit_optimizer_page_out(adamjit_optimizer* opt) {
  AJ_CHECK_NULL(NULL, opt, "adamjit_optimizer_page_out", "opt");
  adamjit_context* ctx = opt->ctx;
  int paged = 0;
  for (int i = 0; i < opt->n_tensors; i++) paged += opt->tensors[i].memory == ADAMJIT_MEMORY_PAGED;
  if (!paged) {
    aj_log(ctx, ADAMJIT_LOG_INFO, "adamjit_optimizer_page_out: no tensor has paged state; nothing to move");
    return ADAMJIT_OK;
  }
  if (!ctx->ops->page_out) {
    aj_log(ctx, ADAMJIT_LOG_INFO,
           "adamjit_optimizer_page_out: a no-op on the %s backend (its paged state does not occupy device memory)",
           adamjit_backend_name(ctx->kind));
    return ADAMJIT_OK;
  }
  return ctx->ops->page_out(ctx, opt->tensors, opt->n_tensors);
}
