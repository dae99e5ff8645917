/* Block size policies: the MEMORY rule, the ERROR policy's first-step measurement, and the
 * resizing of absmax buffers that installs a measured block (see core/block_policy.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/backend.h"
#include "backends/cpu/cpu_elem.h"
#include "backends/cpu/cpu_kernels.h"
#include "core/block_policy.h"

/* Gradient elements per host chunk: a multiple of every block, so the chunks' blocks are the
 * tensor's blocks, and small enough that measuring a huge tensor needs little host memory. */
#define AJ_MEASURE_CHUNK ((size_t)1 << 20)

int aj_block_for_memory(int64_t numel, double overhead_max) {
  for (int k = 0; k < AJ_BLOCK_SIZES; k++) {
    int64_t block = (int64_t)AJ_BLOCK_MIN << k;
    double absmax_bytes = 4.0 * (double)((numel + block - 1) / block);
    if (absmax_bytes <= overhead_max * (double)numel) return (int)block;
  }
  return AJ_BLOCK_MAX;
}

int aj_block_for_error(const double err_m[AJ_BLOCK_SIZES], const double err_v[AJ_BLOCK_SIZES], double error_max) {
  /* The largest qualifying block, not the first past the limit: the error is not monotonic
   * in the block (a block boundary can split an outlier's neighbourhood either way). */
  for (int k = AJ_BLOCK_SIZES - 1; k >= 0; k--)
    if (fmax(err_m[k], err_v[k]) <= error_max) return AJ_BLOCK_MIN << k;
  return AJ_BLOCK_MIN;
}

/* Adds sum (dequantize(quantize(x)) - x)^2 at each block size to sq[]. */
static void round_trip_errors(const float* x, size_t n, const aj_qmap* q, uint8_t* codes, float* absmax, float* deq,
                              double sq[AJ_BLOCK_SIZES]) {
  for (int k = 0; k < AJ_BLOCK_SIZES; k++) {
    int block = AJ_BLOCK_MIN << k;
    /* x is finite (the caller zeroes the rest), so the quantizer cannot stop early. */
    aj_cpu_quantize(x, ADAMJIT_F32, codes, absmax, block, q, q->table_ok, 0, n);
    aj_cpu_dequantize(codes, absmax, deq, ADAMJIT_F32, block, q, 0, n);
    double s = 0.0;
    for (size_t i = 0; i < n; i++) {
      double d = (double)deq[i] - (double)x[i];
      s += d * d;
    }
    sq[k] += s;
  }
}

adamjit_status aj_block_errors(adamjit_context* ctx, const aj_tensor* t, const adamjit_hparams* hp,
                               double err_m[AJ_BLOCK_SIZES], double err_v[AJ_BLOCK_SIZES]) {
  size_t n = (size_t)t->numel;
  size_t chunk = n < AJ_MEASURE_CHUNK ? n : AJ_MEASURE_CHUNK;
  size_t gsize = adamjit_dtype_size(t->grad_dtype);
  void* graw = malloc(chunk * gsize);
  float* m = malloc(chunk * sizeof *m);
  float* v = malloc(chunk * sizeof *v);
  float* deq = malloc(chunk * sizeof *deq);
  uint8_t* codes = malloc(chunk);
  float* absmax = malloc((chunk / AJ_BLOCK_MIN + 1) * sizeof *absmax);
  adamjit_status st = ADAMJIT_OK;
  if (!graw || !m || !v || !deq || !codes || !absmax)
    st = aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY,
                 "adamjit_optimizer_step: out of host memory measuring the quantization error of tensor \"%s\"",
                 t->name);
  const aj_qmap* q1 = aj_qmap_builtin(1);
  const aj_qmap* q2 = aj_qmap_builtin(0);
  const float c1 = 1.0f - hp->beta1, c2 = 1.0f - hp->beta2;
  double sq_m[AJ_BLOCK_SIZES] = {0}, sq_v[AJ_BLOCK_SIZES] = {0}, norm_m = 0.0, norm_v = 0.0;
  for (size_t off = 0; !st && off < n; off += chunk) {
    size_t len = n - off < chunk ? n - off : chunk;
    st = ctx->ops->mem_read(ctx, graw, t->grad, off * gsize, len * gsize);
    if (st) break;
    for (size_t i = 0; i < len; i++) {
      float g = load(graw, i, t->grad_dtype);
      /* As the step skips a non-finite gradient element, so does the measurement; an m or v
       * that overflows is as far from representable as it gets, and is left out likewise. */
      float mi = isfinite(g) ? c1 * g : 0.0f;
      float vi = isfinite(g) ? c2 * g * g : 0.0f;
      m[i] = isfinite(mi) ? mi : 0.0f;
      v[i] = isfinite(vi) ? vi : 0.0f;
      norm_m += (double)m[i] * (double)m[i];
      norm_v += (double)v[i] * (double)v[i];
    }
    round_trip_errors(m, len, q1, codes, absmax, deq, sq_m);
    round_trip_errors(v, len, q2, codes, absmax, deq, sq_v);
  }
  for (int k = 0; !st && k < AJ_BLOCK_SIZES; k++) {
    err_m[k] = norm_m > 0.0 ? sqrt(sq_m[k] / norm_m) : 0.0;
    err_v[k] = norm_v > 0.0 ? sqrt(sq_v[k] / norm_v) : 0.0;
  }
  free(graw);
  free(m);
  free(v);
  free(deq);
  free(codes);
  free(absmax);
  return st;
}

void aj_block_changes_free(adamjit_context* ctx, aj_block_changes* ch) {
  for (int i = 0; i < ch->n; i++)
    for (int s = 0; s < 3; s++)
      if (ch->c[i].absmax[s]) ctx->ops->mem_free(ctx, ch->c[i].absmax[s]);
  free(ch->c);
  memset(ch, 0, sizeof *ch);
}

adamjit_status aj_block_measure(adamjit_optimizer* opt, aj_block_changes* out) {
  adamjit_context* ctx = opt->ctx;
  memset(out, 0, sizeof *out);
  int pending = 0;
  for (int i = 0; i < opt->n_tensors; i++) pending += opt->tensors[i].block_pending;
  if (!pending) return ADAMJIT_OK;
  out->c = calloc((size_t)pending, sizeof *out->c);
  if (!out->c) return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "adamjit_optimizer_step: out of host memory");
  adamjit_status st = ADAMJIT_OK;
  for (int i = 0; i < opt->n_tensors && !st; i++) {
    aj_tensor* t = &opt->tensors[i];
    if (!t->block_pending) continue;
    aj_block_change* c = &out->c[out->n++];
    c->tensor = i;
    c->old_block = t->block_size;
    double err_m[AJ_BLOCK_SIZES], err_v[AJ_BLOCK_SIZES];
    st = aj_block_errors(ctx, t, &opt->groups[t->group], err_m, err_v);
    if (st) break;
    for (int k = 0; k < AJ_BLOCK_SIZES; k++) c->err[k] = fmax(err_m[k], err_v[k]);
    c->new_block = aj_block_for_error(err_m, err_v, opt->config.block_error_max);
    if (c->new_block == c->old_block) continue;
    /* The state is still all zeros, so only the absmax arrays change size; codes under a zero
     * absmax decode to 0 whatever they hold, and the step rewrites every code. */
    size_t bytes = (size_t)((t->numel + c->new_block - 1) / c->new_block) * sizeof(float);
    int states = t->vmax ? 3 : 2;
    for (int s = 0; s < states && !st; s++) {
      adamjit_memory_kind kind; /* absmax is never paged, as at registration */
      st = ctx->ops->mem_alloc(ctx, bytes, 0, &c->absmax[s], &kind);
    }
  }
  if (st) aj_block_changes_free(ctx, out);
  return st;
}

/* Exchanges the tensor's absmax buffers and block with those of the change. */
static void swap_block(aj_tensor* t, aj_block_change* c, int to_new) {
  if (c->new_block != c->old_block) {
    adamjit_mem* slots[3] = {&t->absmax1, &t->absmax2, &t->absmax3};
    for (int s = 0; s < 3; s++) {
      if (!c->absmax[s]) continue;
      adamjit_mem held = *slots[s];
      *slots[s] = c->absmax[s];
      c->absmax[s] = held;
    }
  }
  t->block_size = to_new ? c->new_block : c->old_block;
  t->block_pending = !to_new;
}

void aj_block_apply(adamjit_optimizer* opt, aj_block_changes* ch) {
  for (int i = 0; i < ch->n; i++) {
    aj_block_change* c = &ch->c[i];
    aj_tensor* t = &opt->tensors[c->tensor];
    swap_block(t, c, 1);
    char errs[AJ_BLOCK_SIZES * 24] = "";
    size_t len = 0;
    for (int k = 0; k < AJ_BLOCK_SIZES && len < sizeof errs; k++)
      len += (size_t)snprintf(errs + len, sizeof errs - len, "%s%d:%.4g", k ? " " : "", AJ_BLOCK_MIN << k, c->err[k]);
    aj_log(opt->ctx, ADAMJIT_LOG_INFO,
           "block policy error: tensor \"%s\" (%lld elements) gets block %d (provisional %d); relative error, the "
           "larger of m and v, per block: %s; limit %g",
           t->name, (long long)t->numel, c->new_block, c->old_block, errs, opt->config.block_error_max);
  }
}

void aj_block_revert(adamjit_optimizer* opt, aj_block_changes* ch) {
  for (int i = 0; i < ch->n; i++) swap_block(&opt->tensors[ch->c[i].tensor], &ch->c[i], 0);
}
