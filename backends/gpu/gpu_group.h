/* Grouped launches: a model's many small tensors updated by one kernel launch per group
 * instead of one each (a launch costs microseconds on a GPU and more on PoCL, while a
 * 1e4-element tensor's update costs less).
 *
 * A group is tensors with the same update kernel (dtypes, flags) whose params share one
 * parent buffer, grads another, m another, v (and vmax) another: OpenCL 1.2 kernels reach
 * memory only through their arguments, so the kernel takes the parents and a table of
 * per-tensor offsets (the OpenCL backend carves small buffers from slabs to make that the
 * common case; on CUDA every pointer is in one address space). The grouped kernel is the
 * update's variant with the `multi` flag (kernel_templates/adamw32.lua documents it).
 * Only 32-bit, unclipped tensors of at most AJ_GPU_MULTI_MAX elements are grouped: large
 * tensors amortize their launch, and clipping needs per-tensor norms first. */
#ifndef ADAMJIT_BACKENDS_GPU_GROUP_H
#define ADAMJIT_BACKENDS_GPU_GROUP_H

#include "backends/gpu/gpu_step.h"
#include "core/kernel_plan.h"

#define AJ_GPU_MULTI_MAX ((int64_t)1 << 20)

typedef struct aj_gpu_groups {
  int* group_of;          /* per item: its group, or -1 for a launch of its own */
  uint64_t (*offsets)[5]; /* per grouped item: byte offsets of p, g, m, v, vmax in their parents */
  int n_groups;
  uint64_t* rows;         /* host tables, AJ_GPU_ROW words per grouped item */
  float* row_scalars;     /* AJ_GPU_ROW floats per grouped item */
} aj_gpu_groups;

/* Words per table row and floats per scalars row (the template reads this layout). */
#define AJ_GPU_ROW 8

/* The grouped variant of a plan's update (the `multi` flag). */
aj_variant aj_gpu_group_variant(const aj_tensor_plan* plan);

/* Groups items[n] (plans already made); a device without `locate` groups nothing. */
adamjit_status aj_gpu_form_groups(adamjit_context* ctx, const aj_gpu_device* dev, const aj_step_item* items,
                                  const aj_tensor_plan* plans, int n, aj_gpu_groups* out);
void aj_gpu_groups_free(aj_gpu_groups* g);

/* Enqueues one launch per group: its table (one row per tensor: first work-group, numel,
 * element offsets of p, g, m, v, vmax) and per-tensor scalars go to scratch slots 2 and 3
 * (the host copies live in g until aj_gpu_groups_free, after the step's wait). */
adamjit_status aj_gpu_enqueue_groups(adamjit_context* ctx, const aj_gpu_device* dev, aj_gpu_buffers* b,
                                     const aj_step_item* items, const aj_tensor_plan* plans,
                                     const aj_step_scalars* scalars, int n, aj_gpu_groups* g);

#endif
