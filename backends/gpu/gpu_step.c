/* The launches of a GPU step, quantize and dequantize (backends/gpu/gpu_step.h). Argument
 * order and geometry are those documented at the top of each kernel template. */
#include "backends/gpu/gpu_step.h"

#include "backends/gpu/gpu_group.h"

#include <stdlib.h>
#include <string.h>

#include "core/kernel_plan.h"
#include "core/qmap.h"
#include "jit/render.h"

void aj_gpu_buffers_list(aj_gpu_buffers* b, adamjit_mem* slots[AJ_GPU_BUFFER_COUNT], size_t bytes[AJ_GPU_BUFFER_COUNT]) {
  adamjit_mem* s[AJ_GPU_BUFFER_COUNT] = {&b->scalars, &b->counter, &b->clipbad, &b->gscale, &b->newmax,
                                         &b->maps[0], &b->maps[1], &b->maps[2], &b->maps[3]};
  const size_t n[AJ_GPU_BUFFER_COUNT] = {AJ_STEP_SCALAR_COUNT * sizeof(float), sizeof(uint32_t), sizeof(uint32_t),
                                         sizeof(float), 3 * sizeof(float), AJ_QMAP_SIZE * sizeof(float),
                                         AJ_QMAP_SIZE * sizeof(float), AJ_QMAP_SIZE * sizeof(float),
                                         AJ_QMAP_SIZE * sizeof(float)};
  memcpy(slots, s, sizeof s);
  memcpy(bytes, n, sizeof n);
}

static void arg_mem(aj_gpu_launch* l, adamjit_mem m) { l->args[l->n_args++] = (aj_gpu_arg){.kind = AJ_ARG_MEM, .mem = m}; }
static void arg_size(aj_gpu_launch* l, uint64_t x) { l->args[l->n_args++] = (aj_gpu_arg){.kind = AJ_ARG_U64, .u64 = x}; }
static void arg_int(aj_gpu_launch* l, int32_t x) { l->args[l->n_args++] = (aj_gpu_arg){.kind = AJ_ARG_I32, .i32 = x}; }

static aj_gpu_launch launch_of(const aj_variant* v, const char* entry, const char* what) {
  aj_gpu_launch l;
  memset(&l, 0, sizeof l);
  l.variant = v;
  l.entry = entry ? entry : aj_render_kernel_name(v);
  l.wg = v->wg_size;
  l.what = what;
  return l;
}

static size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

/* Work-groups of a kernel covering wg*ept elements per group (adamw32, sqnorm, adamw8 b=0). */
static size_t stream_groups(const aj_variant* v, size_t n) {
  return ceil_div(n, (size_t)v->wg_size * (size_t)v->elems_per_thread);
}

static adamjit_status upload_maps(adamjit_context* ctx, const aj_gpu_device* dev, aj_gpu_buffers* b) {
  if (b->maps_ready) return ADAMJIT_OK;
  const aj_qmap* q[2] = {aj_qmap_builtin(1), aj_qmap_builtin(0)};
  const float* src[4] = {q[0]->values, q[1]->values, q[0]->thresholds, q[1]->thresholds}; /* static: outlive the copy */
  adamjit_status st = ADAMJIT_OK;
  for (int i = 0; i < 4 && !st; i++) st = dev->write(ctx, b->maps[i], src[i], AJ_QMAP_SIZE * sizeof(float));
  b->maps_ready = !st;
  return st;
}

/* The AdamW kernels' arguments up to the absmax buffers ... */
static void args_state(aj_gpu_launch* l, const aj_tensor* t, int amsgrad) {
  arg_mem(l, t->param);
  arg_mem(l, t->grad);
  arg_mem(l, t->m);
  arg_mem(l, t->v);
  if (amsgrad) arg_mem(l, t->vmax);
  if (t->state_bits == 8) {
    arg_mem(l, t->absmax1);
    arg_mem(l, t->absmax2);
    if (amsgrad) arg_mem(l, t->absmax3);
  }
}

/* ... and the rest: [newmax or partial (adamw8 b=0)], [maps], scalars, [gscale], [nonfinite], n. */
static void args_tail(const aj_gpu_buffers* b, aj_gpu_launch* l, const aj_variant* v, adamjit_mem extra, size_t n) {
  if (extra) arg_mem(l, extra);
  if (v->family == AJ_KERNEL_ADAMW8)
    for (int i = 0; i < 4; i++) arg_mem(l, b->maps[i]);
  arg_mem(l, b->scalars);
  if (v->clipping) arg_mem(l, b->gscale);
  if (v->nonfinite_guard) arg_mem(l, b->counter);
  arg_size(l, n);
}

static int whole_tensor(const aj_variant* u) { return u->family == AJ_KERNEL_ADAMW8 && u->block_size == 0; }

/* Every kernel a plan launches, built before the step enqueues anything. */
static adamjit_status prepare_plan(adamjit_context* ctx, const aj_gpu_device* dev, const aj_tensor_plan* p) {
  adamjit_status st = dev->prepare(ctx, &p->update, NULL);
  if (!st && whole_tensor(&p->update)) {
    st = dev->prepare(ctx, &p->update, "aj_adamw8_absmax");
    if (!st) st = dev->prepare(ctx, &p->update, "aj_adamw8_reduce");
    if (!st) st = dev->prepare(ctx, &p->update, "aj_adamw8_commit");
  }
  if (!st && p->clipping) {
    st = dev->prepare(ctx, &p->sqnorm, NULL);
    if (!st) st = dev->prepare(ctx, &p->clip, NULL);
  }
  return st;
}

/* Percentile clipping of one tensor on the device: per-group partial sums of the squared
 * finite gradient elements, then one work-group adds them in a fixed order, updates the
 * history and writes the scale (kernel_templates/clip.lua). A 1e8-element tensor leaves
 * about 1e5 partials: a few hundred additions per work-item of that one group. */
static adamjit_status enqueue_clip(adamjit_context* ctx, const aj_gpu_device* dev, aj_gpu_buffers* b,
                                   const aj_tensor* t, const aj_tensor_plan* p) {
  static const uint32_t zero = 0;
  size_t n = (size_t)t->numel, count = stream_groups(&p->sqnorm, n);
  adamjit_mem part = NULL;
  adamjit_status st = dev->write(ctx, b->clipbad, &zero, sizeof zero);
  if (!st) st = dev->scratch(ctx, 0, count * sizeof(float), &part);
  if (st) return st;
  aj_gpu_launch l = launch_of(&p->sqnorm, NULL, "sqnorm");
  arg_mem(&l, t->grad);
  arg_mem(&l, part);
  arg_mem(&l, b->clipbad);
  arg_size(&l, n);
  l.groups = count;
  st = dev->launch(ctx, &l);
  if (st) return st;
  aj_gpu_launch c = launch_of(&p->clip, NULL, "clip");
  arg_mem(&c, part);
  arg_mem(&c, t->gnorm);
  arg_mem(&c, b->gscale);
  arg_mem(&c, b->clipbad);
  arg_size(&c, count);
  arg_size(&c, t->step);
  arg_int(&c, t->percentile);
  c.groups = 1;
  return dev->launch(ctx, &c);
}

/* 8-bit AdamW with one absmax per tensor: maxima pass, fold, update against them, commit. */
static adamjit_status enqueue_whole_tensor(adamjit_context* ctx, const aj_gpu_device* dev, aj_gpu_buffers* b,
                                           const aj_tensor* t, const aj_variant* u) {
  size_t n = (size_t)t->numel, groups = stream_groups(u, n);
  adamjit_mem part = NULL;
  adamjit_status st = dev->scratch(ctx, 0, 3 * groups * sizeof(float), &part);
  if (st) return st;
  aj_gpu_launch a = launch_of(u, "aj_adamw8_absmax", "adamw8 maxima");
  args_state(&a, t, u->amsgrad);
  args_tail(b, &a, u, part, n);
  a.groups = groups;
  st = dev->launch(ctx, &a);
  if (st) return st;
  aj_gpu_launch r = launch_of(u, "aj_adamw8_reduce", "adamw8 maxima fold");
  arg_mem(&r, part);
  arg_mem(&r, b->newmax);
  arg_size(&r, groups);
  r.groups = 1;
  st = dev->launch(ctx, &r);
  if (st) return st;
  aj_gpu_launch up = launch_of(u, NULL, "adamw8 update");
  args_state(&up, t, u->amsgrad);
  args_tail(b, &up, u, b->newmax, n);
  up.groups = groups;
  st = dev->launch(ctx, &up);
  if (st) return st;
  aj_gpu_launch c = launch_of(u, "aj_adamw8_commit", "adamw8 absmax commit");
  arg_mem(&c, t->absmax1);
  arg_mem(&c, t->absmax2);
  if (u->amsgrad) arg_mem(&c, t->absmax3);
  arg_mem(&c, b->newmax);
  c.groups = 1;
  c.wg = 1;
  return dev->launch(ctx, &c);
}

size_t aj_gpu_update_groups(const aj_variant* u, size_t numel) {
  /* adamw8 blockwise, the two layouts of kernel_templates/adamw8.lua: vec = 1, a group
   * covers wg * ept whole blocks; vec > 1, ept chunks of max(wg, block) elements. */
  const size_t wg = (size_t)u->wg_size, ept = (size_t)u->elems_per_thread, block = (size_t)u->block_size;
  return u->family != AJ_KERNEL_ADAMW8 || block == 0 ? stream_groups(u, numel)
         : u->vec_width == 1                        ? ceil_div(ceil_div(numel, block), wg * ept)
                                                    : ceil_div(numel, ept * (wg > block ? wg : block));
}

static adamjit_status enqueue_update(adamjit_context* ctx, const aj_gpu_device* dev, aj_gpu_buffers* b,
                                     const aj_tensor* t, const aj_variant* u) {
  if (whole_tensor(u)) return enqueue_whole_tensor(ctx, dev, b, t, u);
  aj_gpu_launch l = launch_of(u, NULL, aj_kernel_family_name(u->family));
  args_state(&l, t, u->amsgrad);
  args_tail(b, &l, u, NULL, (size_t)t->numel);
  l.groups = aj_gpu_update_groups(u, (size_t)t->numel);
  return dev->launch(ctx, &l);
}

adamjit_status aj_gpu_step(adamjit_context* ctx, const aj_gpu_device* dev, aj_gpu_buffers* b, aj_dialect dialect,
                           aj_step_item* items, int n, uint64_t* nonfinite) {
  aj_tensor_plan* plans = malloc((size_t)n * sizeof *plans);
  aj_step_scalars* scalars = malloc((size_t)n * sizeof *scalars);
  adamjit_status st =
      plans && scalars ? ADAMJIT_OK : aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "step: out of host memory");
  int any8 = 0;
  for (int i = 0; i < n && !st; i++) {
    const aj_tensor* t = items[i].tensor;
    aj_plan_tensor(ctx, t, &items[i].hp, dialect, &plans[i]);
    aj_step_scalars_compute(&items[i].hp, t->step, &scalars[i]);
    any8 |= t->state_bits == 8;
  }
  /* many small tensors: one launch per group (backends/gpu/gpu_group.h) */
  aj_gpu_groups groups;
  memset(&groups, 0, sizeof groups);
  if (!st) st = aj_gpu_form_groups(ctx, dev, items, plans, n, &groups);
  for (int i = 0; i < n && !st; i++) {
    if (groups.group_of[i] < 0) {
      st = prepare_plan(ctx, dev, &plans[i]);
    } else {
      aj_variant mv = aj_gpu_group_variant(&plans[i]);
      st = aj_gpu_group_prepare(ctx, dev, &mv);
    }
  }
  static const uint32_t zero = 0;
  if (!st && any8) st = upload_maps(ctx, dev, b);
  if (!st) st = dev->write(ctx, b->counter, &zero, sizeof zero);
  for (int i = 0; i < n && !st; i++) {
    const aj_tensor* t = items[i].tensor;
    if (groups.group_of[i] >= 0) continue;
    /* in order: this write lands after the previous tensor's kernels have read the buffer */
    st = dev->write(ctx, b->scalars, &scalars[i], sizeof scalars[i]);
    if (!st && plans[i].clipping) st = enqueue_clip(ctx, dev, b, t, &plans[i]);
    if (!st) st = enqueue_update(ctx, dev, b, t, &plans[i].update);
  }
  if (!st) st = aj_gpu_enqueue_groups(ctx, dev, b, items, plans, scalars, n, &groups);
  if (!st) {
    int grouped = 0;
    for (int i = 0; i < n; i++) grouped += groups.group_of[i] >= 0;
    aj_log(ctx, ADAMJIT_LOG_DEBUG, "step: %d tensors, %d of them in %d grouped launches", n, grouped,
           groups.n_groups);
  }
  /* The host scalars must outlive their copies: a backend whose writes read the source
   * later waits here unless the count's read-back already did. */
  if (!st && nonfinite) {
    st = aj_gpu_read_nonfinite(ctx, dev, b, nonfinite);
  } else if (st || dev->write_borrows_source) {
    adamjit_status w = dev->wait(ctx);
    if (!st) st = w;
  }
  aj_gpu_groups_free(&groups);
  free(plans);
  free(scalars);
  return st;
}

adamjit_status aj_gpu_read_nonfinite(adamjit_context* ctx, const aj_gpu_device* dev, aj_gpu_buffers* b,
                                     uint64_t* nonfinite) {
  uint32_t count = 0;
  adamjit_status st = dev->read(ctx, &count, b->counter, sizeof count);
  if (!st) *nonfinite = count;
  return st;
}

adamjit_status aj_gpu_quantize(adamjit_context* ctx, const aj_gpu_device* dev, aj_gpu_buffers* b, aj_dialect dialect,
                               const aj_quant_job* job, int quantize) {
  aj_variant v;
  aj_variant_init_default(&v, quantize ? AJ_KERNEL_QUANTIZE : AJ_KERNEL_DEQUANTIZE);
  v.dialect = dialect;
  v.param_dtype = job->dtype;
  v.block_size = job->block_size;
  v.nonfinite_guard = quantize;
  adamjit_status st = dev->prepare(ctx, &v, NULL);
  if (st) return st;
  /* the map: a built-in one from the context's buffers, a custom one uploaded for this call */
  adamjit_mem map = NULL, owned = NULL;
  for (int s = 0; s < 2 && !map; s++)
    if (job->map == aj_qmap_builtin(s == 0)) {
      st = upload_maps(ctx, dev, b);
      map = b->maps[(quantize ? 2 : 0) + s];
    }
  if (!map && !st) {
    st = dev->upload_map(ctx, quantize ? job->map->thresholds : job->map->values, &owned);
    map = owned;
  }
  static const uint32_t zero = 0;
  if (!st && quantize) st = dev->write(ctx, b->counter, &zero, sizeof zero);
  if (!st) {
    aj_gpu_launch l = launch_of(&v, NULL, quantize ? "quantize" : "dequantize");
    if (quantize) {
      arg_mem(&l, job->x);
      arg_mem(&l, job->codes);
      arg_mem(&l, job->absmax);
      arg_mem(&l, map);
      arg_mem(&l, b->counter);
    } else {
      arg_mem(&l, job->codes);
      arg_mem(&l, job->absmax);
      arg_mem(&l, map);
      arg_mem(&l, job->x);
    }
    arg_size(&l, (uint64_t)job->numel);
    l.groups = ceil_div((size_t)job->numel, (size_t)job->block_size);
    st = dev->launch(ctx, &l);
  }
  uint64_t bad = 0;
  if (!st && quantize) st = aj_gpu_read_nonfinite(ctx, dev, b, &bad);
  else dev->wait(ctx);
  if (owned) dev->release_map(ctx, owned);
  if (!st && bad)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE,
                   "adamjit_quantize_blockwise: x holds %llu non-finite values (their blocks were left unchanged)",
                   (unsigned long long)bad);
  return st;
}
