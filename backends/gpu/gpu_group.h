/* Grouped launches: a model's many small tensors updated by one kernel launch per group
 * instead of one each (a launch costs microseconds on a GPU and more on PoCL, while a
 * 1e4-element tensor's update costs less).
 *
 * A group is tensors with the same update kernel (dtypes, flags, block size, launch
 * parameters) whose params share one parent buffer, grads another, m another, v (and vmax)
 * another, and for 8-bit state the codes of m, v, vmax and their absmax one parent each
 * (absmax buffers are small, so they share slabs as well): OpenCL 1.2 kernels reach
 * memory only through their arguments, so the kernel takes the parents and a table of
 * per-tensor offsets (the OpenCL backend carves small buffers from slabs to make that the
 * common case; on CUDA every pointer is in one address space). The grouped kernel is the
 * update's variant with the `multi` flag (kernel_templates/adamw32.lua and adamw8.lua
 * document it). Only unclipped tensors of at most AJ_GPU_MULTI_MAX elements with 32-bit or
 * blockwise 8-bit state are grouped: large tensors amortize their launch, clipping needs
 * per-tensor norms first, and block_wise = 0 is four launches around one tensor's maxima.
 * A grouped 8-bit tensor's work-groups are those it would launch alone, so its blocks,
 * ragged last block and absmax (written in place by each block's owner) are its own; in
 * the OpenCL own-blocks layout (CPU devices) the code table that every such work-group
 * would build is built once per launch by the program's aj_adamw8_table kernel. */
#ifndef ADAMJIT_BACKENDS_GPU_GROUP_H
#define ADAMJIT_BACKENDS_GPU_GROUP_H

#include "backends/gpu/gpu_step.h"
#include "core/kernel_plan.h"

#define AJ_GPU_MULTI_MAX ((int64_t)1 << 20)

/* Buffers of a tensor a grouped kernel reaches: p, g, m, v, vmax, and for 8-bit state
 * absmax1, absmax2, absmax3 (m, v, vmax then being codes). */
#define AJ_GPU_SLOTS 8

typedef struct aj_gpu_groups {
  int* group_of;                     /* per item: its group, or -1 for a launch of its own */
  uint64_t (*offsets)[AJ_GPU_SLOTS]; /* per grouped item: byte offsets of its buffers in their parents */
  int n_groups;
  uint64_t* rows;                    /* host tables, AJ_GPU_ROW or AJ_GPU_ROW8 words per grouped item */
  float* row_scalars;                /* AJ_GPU_ROW floats per grouped item */
} aj_gpu_groups;

/* Words per table row and floats per scalars row of adamw32 (the template reads this
 * layout): first work-group, numel, element offsets of p, g, m, v, vmax, one unused. */
#define AJ_GPU_ROW 8
/* Words per table row of adamw8: first work-group, numel, element offsets of p, g and the
 * codes of m, v, vmax, then block offsets of absmax1, absmax2, absmax3. Its scalars rows
 * are AJ_GPU_ROW floats as adamw32's. */
#define AJ_GPU_ROW8 10

/* The grouped variant of a plan's update (the `multi` flag). */
aj_variant aj_gpu_group_variant(const aj_tensor_plan* plan);

/* Ints of the code table that aj_adamw8_table writes for a grouped adamw8 launch in the
 * opencl dialect's own-blocks layout (kernel_templates/adamw8.lua): 3 * 3073 cells and
 * the flag that says the table cannot serve the maps. */
#define AJ_GPU_CODE_TABLE_INTS (3 * 3073 + 1)

/* Builds (or finds) every kernel a group of v's tensors launches (v from aj_gpu_group_variant). */
adamjit_status aj_gpu_group_prepare(adamjit_context* ctx, const aj_gpu_device* dev, const aj_variant* v);

/* Groups items[n] (plans already made); a device without `locate` groups nothing. */
adamjit_status aj_gpu_form_groups(adamjit_context* ctx, const aj_gpu_device* dev, const aj_step_item* items,
                                  const aj_tensor_plan* plans, int n, aj_gpu_groups* out);
void aj_gpu_groups_free(aj_gpu_groups* g);

/* Enqueues one launch per group (two for adamw8 in the opencl own-blocks layout: its code
 * table to scratch slot 4 first): its table (one row per tensor, layouts above) and
 * per-tensor scalars go to scratch slots 2 and 3
 * (the host copies live in g until aj_gpu_groups_free, after the step's wait). */
adamjit_status aj_gpu_enqueue_groups(adamjit_context* ctx, const aj_gpu_device* dev, aj_gpu_buffers* b,
                                     const aj_step_item* items, const aj_tensor_plan* plans,
                                     const aj_step_scalars* scalars, int n, aj_gpu_groups* g);

#endif
