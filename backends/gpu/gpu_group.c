/* Grouped launches: many small tensors updated by one kernel launch (backends/gpu/gpu_group.h). */
#include "backends/gpu/gpu_group.h"

#include "jit/render.h"

#include <stdlib.h>
#include <stdint.h>
#include <string.h>

/* Where one tensor's buffers live, for matching it with a group. */
typedef struct placed {
  adamjit_mem parent[AJ_GPU_SLOTS]; /* p, g, m, v, vmax, absmax1, absmax2, absmax3 */
  uint64_t offset[AJ_GPU_SLOTS];    /* bytes */
} placed;

/* The tensor's buffers in slot order; NULL where a slot does not apply. */
static void slots_of(const aj_tensor* t, int amsgrad, adamjit_mem out[AJ_GPU_SLOTS]) {
  const int q = t->state_bits == 8;
  const adamjit_mem mems[AJ_GPU_SLOTS] = {t->param, t->grad, t->m, t->v, amsgrad ? t->vmax : NULL,
                                          q ? t->absmax1 : NULL, q ? t->absmax2 : NULL,
                                          q && amsgrad ? t->absmax3 : NULL};
  memcpy(out, mems, sizeof mems);
}

/* Bytes per element of each slot: the table holds offsets in elements (blocks for absmax). */
static void slot_sizes(const aj_tensor* t, size_t out[AJ_GPU_SLOTS]) {
  const size_t state = t->state_bits == 8 ? 1 : 4;
  const size_t sizes[AJ_GPU_SLOTS] = {adamjit_dtype_size(t->param_dtype), adamjit_dtype_size(t->grad_dtype),
                                      state, state, state, 4, 4, 4};
  memcpy(out, sizes, sizeof sizes);
}

aj_variant aj_gpu_group_variant(const aj_tensor_plan* plan) {
  aj_variant v = plan->update;
  v.multi = 1;
  return v;
}

/* The grouped update takes a code table built once per launch (kernel_templates/adamw8.lua). */
static int shared_code_table(const aj_variant* v) {
  return v->family == AJ_KERNEL_ADAMW8 && v->dialect == AJ_DIALECT_OPENCL && v->vec_width == 1;
}

adamjit_status aj_gpu_group_prepare(adamjit_context* ctx, const aj_gpu_device* dev, const aj_variant* v) {
  adamjit_status st = dev->prepare(ctx, v, NULL);
  if (!st && shared_code_table(v)) st = dev->prepare(ctx, v, AJ_KERNEL_NAME_ADAMW8_TABLE);
  return st;
}

static int groupable(const aj_step_item* it, const aj_tensor_plan* plan) {
  const aj_variant* u = &plan->update;
  const int kind = u->family == AJ_KERNEL_ADAMW32 || (u->family == AJ_KERNEL_ADAMW8 && u->block_size > 0);
  return kind && !plan->clipping && it->tensor->numel <= AJ_GPU_MULTI_MAX;
}

static adamjit_status place(adamjit_context* ctx, const aj_gpu_device* dev, const aj_tensor* t, int amsgrad,
                            placed* out) {
  adamjit_mem mems[AJ_GPU_SLOTS];
  slots_of(t, amsgrad, mems);
  memset(out, 0, sizeof *out);
  for (int k = 0; k < AJ_GPU_SLOTS; k++) {
    if (!mems[k]) continue;
    size_t off = 0;
    adamjit_status st = dev->locate(ctx, mems[k], &out->parent[k], &off);
    if (st) return st;
    out->offset[k] = off;
  }
  return ADAMJIT_OK;
}

static int same_home(const placed* a, const placed* b) {
  return memcmp(a->parent, b->parent, sizeof a->parent) == 0;
}

/* Offsets must be whole elements of each buffer's type for the kernel's pointer arithmetic. */
static int aligned(const placed* p, const aj_tensor* t) {
  size_t sizes[AJ_GPU_SLOTS];
  slot_sizes(t, sizes);
  for (int k = 0; k < AJ_GPU_SLOTS; k++)
    if (p->offset[k] % sizes[k]) return 0;
  return 1;
}

adamjit_status aj_gpu_form_groups(adamjit_context* ctx, const aj_gpu_device* dev, const aj_step_item* items,
                                  const aj_tensor_plan* plans, int n, aj_gpu_groups* out) {
  memset(out, 0, sizeof *out);
  out->group_of = malloc((size_t)n * sizeof *out->group_of);
  out->offsets = calloc((size_t)n, sizeof *out->offsets);
  placed* homes = malloc((size_t)n * sizeof *homes);
  int* leader = malloc((size_t)n * sizeof *leader); /* per group: its first item */
  if (!out->group_of || !out->offsets || !homes || !leader) {
    free(homes);
    free(leader);
    aj_gpu_groups_free(out);
    return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "step: out of host memory");
  }
  adamjit_status st = ADAMJIT_OK;
  int* members = calloc((size_t)n, sizeof *members);
  if (!members) st = aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "step: out of host memory");
  for (int i = 0; i < n && !st; i++) {
    out->group_of[i] = -1;
    if (!dev->locate || !groupable(&items[i], &plans[i])) continue;
    st = place(ctx, dev, items[i].tensor, plans[i].update.amsgrad, &homes[i]);
    if (st) break;
    if (!aligned(&homes[i], items[i].tensor)) continue;
    memcpy(out->offsets[i], homes[i].offset, sizeof out->offsets[i]);
    int g = 0;
    for (; g < out->n_groups; g++) {
      int j = leader[g];
      if (aj_variant_equal(&plans[j].update, &plans[i].update) && same_home(&homes[j], &homes[i])) break;
    }
    if (g == out->n_groups) leader[out->n_groups++] = i;
    out->group_of[i] = g;
    members[g]++;
  }
  /* a group of one is an ordinary launch; the others are renumbered 0.. */
  int kept = 0;
  for (int g = 0; g < out->n_groups && !st; g++) leader[g] = members[g] >= 2 ? kept++ : -1;
  for (int i = 0; i < n && !st; i++)
    if (out->group_of[i] >= 0) out->group_of[i] = leader[out->group_of[i]];
  if (!st) out->n_groups = kept;
  free(members);
  free(homes);
  free(leader);
  if (st) aj_gpu_groups_free(out);
  return st;
}

void aj_gpu_groups_free(aj_gpu_groups* g) {
  free(g->group_of);
  free(g->offsets);
  free(g->rows);
  free(g->row_scalars);
  memset(g, 0, sizeof *g);
}

static void arg(aj_gpu_launch* l, aj_gpu_arg a) { l->args[l->n_args++] = a; }

adamjit_status aj_gpu_enqueue_groups(adamjit_context* ctx, const aj_gpu_device* dev, aj_gpu_buffers* b,
                                     const aj_step_item* items, const aj_tensor_plan* plans,
                                     const aj_step_scalars* scalars, int n, aj_gpu_groups* g) {
  if (g->n_groups == 0) return ADAMJIT_OK;
  g->rows = calloc((size_t)n * AJ_GPU_ROW8, sizeof *g->rows);
  g->row_scalars = calloc((size_t)n * AJ_GPU_ROW, sizeof *g->row_scalars);
  if (!g->rows || !g->row_scalars) return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "step: out of host memory");
  int used = 0;
  for (int grp = 0; grp < g->n_groups; grp++) {
    int first = -1, count = 0;
    uint64_t lowest[AJ_GPU_SLOTS];
    for (int k = 0; k < AJ_GPU_SLOTS; k++) lowest[k] = UINT64_MAX;
    for (int i = 0; i < n; i++)
      if (g->group_of[i] == grp) {
        if (first < 0) first = i;
        count++;
        for (int k = 0; k < AJ_GPU_SLOTS; k++)
          lowest[k] = g->offsets[i][k] < lowest[k] ? g->offsets[i][k] : lowest[k];
      }
    const aj_tensor* t0 = items[first].tensor;
    const aj_variant v = aj_gpu_group_variant(&plans[first]);
    const int q = v.family == AJ_KERNEL_ADAMW8;
    const size_t row_words = q ? AJ_GPU_ROW8 : AJ_GPU_ROW;
    /* Bases: the shared parents; in one address space (parent NULL) the group's lowest
     * address, so that offsets stay small and non-negative. */
    adamjit_mem mems[AJ_GPU_SLOTS], base[AJ_GPU_SLOTS];
    size_t elem[AJ_GPU_SLOTS];
    slots_of(t0, v.amsgrad, mems);
    slot_sizes(t0, elem);
    adamjit_status st = ADAMJIT_OK;
    for (int k = 0; k < AJ_GPU_SLOTS && !st; k++) {
      size_t off = 0;
      base[k] = NULL;
      if (!mems[k]) continue;
      st = dev->locate(ctx, mems[k], &base[k], &off);
      if (!st && !base[k]) base[k] = (adamjit_mem)(uintptr_t)lowest[k];
      else lowest[k] = 0;
    }
    if (st) return st;
    uint64_t groups = 0;
    uint64_t* rows = g->rows + (size_t)used * AJ_GPU_ROW8;
    float* sc = g->row_scalars + (size_t)used * AJ_GPU_ROW;
    int r = 0;
    for (int i = 0; i < n; i++) {
      if (g->group_of[i] != grp) continue;
      uint64_t* row = rows + (size_t)r * row_words;
      row[0] = groups;
      row[1] = (uint64_t)items[i].tensor->numel;
      for (int k = 0; k < (q ? AJ_GPU_SLOTS : 5); k++)
        row[2 + k] = mems[k] ? (g->offsets[i][k] - lowest[k]) / elem[k] : 0;
      memcpy(sc + (size_t)r * AJ_GPU_ROW, &scalars[i], sizeof scalars[i]);
      /* the work-groups the tensor would launch alone, so that each covers only its blocks */
      groups += aj_gpu_update_groups(&v, (size_t)items[i].tensor->numel);
      r++;
    }
    adamjit_mem table = NULL, table_scalars = NULL;
    st = dev->scratch(ctx, 2, (size_t)count * row_words * sizeof *rows, &table);
    if (!st) st = dev->write(ctx, table, rows, (size_t)count * row_words * sizeof *rows);
    if (!st) st = dev->scratch(ctx, 3, (size_t)count * AJ_GPU_ROW * sizeof *sc, &table_scalars);
    if (!st) st = dev->write(ctx, table_scalars, sc, (size_t)count * AJ_GPU_ROW * sizeof *sc);
    if (st) return st;
    adamjit_mem tabs = NULL;
    if (shared_code_table(&v)) {
      st = dev->scratch(ctx, 4, AJ_GPU_CODE_TABLE_INTS * sizeof(int32_t), &tabs);
      if (st) return st;
      aj_gpu_launch t;
      memset(&t, 0, sizeof t);
      t.variant = &v;
      t.entry = AJ_KERNEL_NAME_ADAMW8_TABLE;
      t.wg = v.wg_size; /* the fill's split of the cells is that of the update's own build */
      t.what = "adamw8 grouped code table";
      arg(&t, (aj_gpu_arg){.kind = AJ_ARG_MEM, .mem = tabs});
      arg(&t, (aj_gpu_arg){.kind = AJ_ARG_MEM, .mem = b->maps[2]});
      arg(&t, (aj_gpu_arg){.kind = AJ_ARG_MEM, .mem = b->maps[3]});
      t.groups = 1;
      st = dev->launch(ctx, &t);
      if (st) return st;
    }
    aj_gpu_launch l;
    memset(&l, 0, sizeof l);
    l.variant = &v;
    l.entry = aj_render_kernel_name(&v);
    l.wg = v.wg_size;
    l.what = q ? "adamw8 grouped" : "adamw32 grouped";
    for (int k = 0; k < AJ_GPU_SLOTS; k++)
      if (mems[k]) arg(&l, (aj_gpu_arg){.kind = AJ_ARG_MEM, .mem = base[k]});
    if (q)
      for (int k = 0; k < 4; k++) arg(&l, (aj_gpu_arg){.kind = AJ_ARG_MEM, .mem = b->maps[k]});
    if (tabs) arg(&l, (aj_gpu_arg){.kind = AJ_ARG_MEM, .mem = tabs});
    arg(&l, (aj_gpu_arg){.kind = AJ_ARG_MEM, .mem = table_scalars});
    if (v.nonfinite_guard) arg(&l, (aj_gpu_arg){.kind = AJ_ARG_MEM, .mem = b->counter});
    arg(&l, (aj_gpu_arg){.kind = AJ_ARG_MEM, .mem = table});
    arg(&l, (aj_gpu_arg){.kind = AJ_ARG_U64, .u64 = (uint64_t)count});
    l.groups = (size_t)groups;
    st = dev->launch(ctx, &l);
    if (st) return st;
    used += count;
  }
  return ADAMJIT_OK;
}
