/* Internal state of the core: contexts, optimizers, per-tensor records. Not installed. */
#ifndef ADAMJIT_CORE_INTERNAL_H
#define ADAMJIT_CORE_INTERNAL_H

#include <stdarg.h>
#include <stdint.h>

#include "adamjit/adamjit.h"

struct aj_backend_ops;

#define AJ_ERR_LEN 4096
#define AJ_NAME_LEN 64
#define AJ_CLIP_HISTORY 100

struct adamjit_context {
  adamjit_backend kind;
  const struct aj_backend_ops* ops;
  void* bdata; /* the backend's own context */
  int device_index;
  int num_threads;
  adamjit_log_fn log_fn;
  void* log_user;
  adamjit_log_level log_level;
  int quant_search; /* ADAMJIT_QUANT_SEARCH_* */
  char* cache_dir;    /* copies of the desc's directories (NULL: default) */
  char* template_dir;
  struct aj_jit* jit; /* run-time kernels, created on first use (aj_context_jit) */
  char* tuning_db;    /* the user overlay database: desc.tuning_db, else $ADAMJIT_TUNING_DB; NULL: none */
  int use_tuning;     /* 0: databases are not consulted (overrides still are) */
  struct aj_tuning* tuning; /* overrides and loaded databases (core/tuning.c), made on first use */
  char err[AJ_ERR_LEN];
};

/* One registered tensor and the optimizer state that core owns for it. */
typedef struct aj_tensor {
  adamjit_mem param;
  adamjit_mem grad;
  int64_t numel;
  adamjit_dtype param_dtype;
  adamjit_dtype grad_dtype;
  int group;
  char name[AJ_NAME_LEN];
  /* storage, resolved from the optimizer config and the tensor's overrides */
  int state_bits;      /* 32 or 8 */
  int block_wise;
  int block_size;      /* the quantization block at 8 bits (one absmax per tensor when
                          block_wise = 0: see aj_tensor_blocks) */
  int block_policy;    /* ADAMJIT_BLOCK_POLICY_* that chose block_size (FIXED when explicit or
                          not 8-bit block-wise) */
  int block_pending;   /* ERROR policy: block_size is provisional until the first step measures
                          (core/block_policy.h); only ever set while step = 0 */
  int percentile;      /* 100 = off */
  int paged;           /* paging requested and numel >= paged_min_elements */
  adamjit_memory_kind memory;
  /* state buffers in backend memory: numel floats each at 32 bits; at 8 bits numel codes
   * each (bitsandbytes' state1/state2/state3) with one absmax float per block */
  adamjit_mem m;
  adamjit_mem v;
  adamjit_mem vmax;    /* NULL until amsgrad is used */
  adamjit_mem absmax1; /* 8-bit only: absmax of m, v and vmax per block */
  adamjit_mem absmax2;
  adamjit_mem absmax3;
  adamjit_mem gnorm;   /* AJ_CLIP_HISTORY floats of squared norms when percentile < 100 */
  uint64_t step;
  int vmax_fresh; /* set while a step allocates vmax, so a failure can undo exactly that */
} aj_tensor;

struct adamjit_optimizer {
  adamjit_context* ctx;
  adamjit_optimizer_config config;
  adamjit_hparams* groups;
  int n_groups;
  aj_tensor* tensors;
  int n_tensors;
  uint64_t last_nonfinite;
  int nonfinite_pending; /* the last step's count is still with the backend (read_nonfinite) */
};

/* Records the detail in ctx (or the thread's message when ctx is NULL), logs it at ERROR
 * level and returns st. */
adamjit_status aj_fail(adamjit_context* ctx, adamjit_status st, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The context's run-time kernel engine (jit/engine.h), created on first use. */
adamjit_status aj_context_jit(adamjit_context* ctx, struct aj_jit** out);

adamjit_status aj_failv(adamjit_context* ctx, adamjit_status st, const char* fmt, va_list ap);
/* In a public entry point fn: returns ADAMJIT_ERR_NULL_ARGUMENT naming `what` unless cond. */
#define AJ_CHECK_NULL(ctx, cond, fn, what) \
  if (!(cond)) return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "%s: %s is NULL", fn, what)
void aj_log(adamjit_context* ctx, adamjit_log_level level, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
void aj_clear_error(adamjit_context* ctx);

/* The per-step scalars of one tensor's update at step t (SPEC 2's form
 * p = p*decay - step_size*m / (sqrt(v)*inv_sqrt_c2 + eps)), with the bias corrections in
 * double. Every backend uses these, so all compute from the same rounded values; the
 * kernels' scalar buffer (jit/render.h AJ_STEP_*) has this layout. */
typedef struct aj_step_scalars {
  float beta1, beta2, eps;
  float decay;       /* 1 - lr * weight_decay */
  float step_size;   /* lr / (1 - beta1^t) */
  float inv_sqrt_c2; /* 1 / sqrt(1 - beta2^t) */
} aj_step_scalars;
void aj_step_scalars_compute(const adamjit_hparams* hp, uint64_t t, aj_step_scalars* out);

/* Validates hyperparameters; the message names the first bad field. */
adamjit_status aj_check_hparams(adamjit_context* ctx, const adamjit_hparams* hp);

/* Copies a caller's versioned struct over defaults: the first min(struct_size, size) bytes
 * are taken from src. Fails on a struct_size smaller than the struct_size field itself or
 * larger than this library knows. */
adamjit_status aj_copy_versioned(adamjit_context* ctx, void* dst, size_t size, const void* src, const char* what);

/* Bytes of optimizer state a tensor owns, derived from its storage fields. */
uint64_t aj_tensor_state_bytes(const aj_tensor* t, int amsgrad);
/* Number of absmax blocks of an 8-bit tensor. */
static inline int64_t aj_tensor_blocks(const aj_tensor* t) {
  return t->block_wise ? (t->numel + t->block_size - 1) / t->block_size : 1;
}

/* Percentile clipping (SPEC 4): records the squared norm `sq` (of the finite elements) of
 * step `step` (>= 1) in the history and returns the gradient scale. A step whose gradient
 * had non-finite elements is not recorded (see clipping.c). */
float aj_clip_scale(float history[AJ_CLIP_HISTORY], uint64_t step, int percentile, float sq, int had_nonfinite);

#endif
