/* What every GPU backend launches for a step, a quantize and a dequantize, written once:
 * the kernel sequence (from core's per-tensor plan, core/kernel_plan.h), each kernel's
 * arguments in its template's order, and the launch geometry. A backend (OpenCL, CUDA)
 * supplies a small device interface: build a kernel, enqueue an asynchronous write, launch,
 * read back. Everything is enqueued in order on one queue/stream, so order alone keeps
 * the kernels of a step correct; nothing waits inside a step.
 *
 * A step first prepares (builds) every kernel it will need, so a template or compile error
 * fails the step before anything is enqueued: nothing changed. */
#ifndef ADAMJIT_BACKENDS_GPU_STEP_H
#define ADAMJIT_BACKENDS_GPU_STEP_H

#include "backends/backend.h"
#include "jit/variant.h"

#define AJ_GPU_MAX_ARGS 24
/* Scratch slots: 0 and 1 reduction partials, 2 and 3 a grouped launch's tensor table and
 * per-tensor scalars, 4 a grouped 8-bit launch's code table (backends/gpu/gpu_group.h). */
#define AJ_GPU_SCRATCH_SLOTS 5

typedef enum aj_gpu_arg_kind { AJ_ARG_MEM, AJ_ARG_U64, AJ_ARG_I32 } aj_gpu_arg_kind;

typedef struct aj_gpu_arg {
  aj_gpu_arg_kind kind;
  adamjit_mem mem;  /* AJ_ARG_MEM: a buffer (cl_mem, CUdeviceptr) */
  uint64_t u64;     /* AJ_ARG_U64: an aj_size */
  int32_t i32;      /* AJ_ARG_I32: an int */
} aj_gpu_arg;

/* One kernel launch: `groups` work-groups (blocks) of `wg` work-items (threads). */
typedef struct aj_gpu_launch {
  const aj_variant* variant;
  const char* entry; /* the kernel's name in the variant's program */
  aj_gpu_arg args[AJ_GPU_MAX_ARGS];
  int n_args;
  size_t groups;
  int wg;
  const char* what; /* for messages */
} aj_gpu_launch;

/* The device side a GPU backend gives this module. Every call enqueues in order on the
 * backend's one queue or stream; messages go to the context. */
typedef struct aj_gpu_device {
  /* Builds (or finds) the kernel `entry` of v's program, ahead of launching it. */
  adamjit_status (*prepare)(adamjit_context* ctx, const aj_variant* v, const char* entry);
  adamjit_status (*launch)(adamjit_context* ctx, const aj_gpu_launch* l);
  /* Asynchronous host -> device copy; src stays valid until the next wait. */
  adamjit_status (*write)(adamjit_context* ctx, adamjit_mem dst, const void* src, size_t bytes);
  /* Device -> host copy that waits for everything enqueued before it. */
  adamjit_status (*read)(adamjit_context* ctx, void* dst, adamjit_mem src, size_t bytes);
  /* Waits for everything enqueued. */
  adamjit_status (*wait)(adamjit_context* ctx);
  /* A device buffer of at least `bytes` for scratch slot 0..AJ_GPU_SCRATCH_SLOTS-1 (grown on demand; its old
   * contents need not survive). */
  adamjit_status (*scratch)(adamjit_context* ctx, int slot, size_t bytes, adamjit_mem* out);
  /* A read-only device copy of 256 floats for one call, and its release after a wait. */
  adamjit_status (*upload_map)(adamjit_context* ctx, const float* values, adamjit_mem* out);
  void (*release_map)(adamjit_context* ctx, adamjit_mem mem);
  /* Optional (NULL: no grouped launches): the buffer `mem` lives in and its byte offset
   * there: an OpenCL sub-buffer's parent, or NULL and the address where every pointer is
   * in one address space (CUDA). */
  adamjit_status (*locate)(adamjit_context* ctx, adamjit_mem mem, adamjit_mem* parent, size_t* offset);
  /* 1 when write() reads its source only later (an OpenCL non-blocking write): then a step
   * that reads nothing back waits at its end, since its host scalars are freed. 0 when
   * write() copies the source before returning (CUDA through pinned staging). */
  int write_borrows_source;
} aj_gpu_device;

/* Small device buffers every GPU backend keeps for steps (allocated at context creation). */
typedef struct aj_gpu_buffers {
  adamjit_mem scalars; /* AJ_STEP_SCALAR_COUNT floats, rewritten before each tensor's kernels */
  adamjit_mem counter; /* u32: the step's non-finite gradient count (also quantize's) */
  adamjit_mem clipbad; /* u32: one tensor's non-finite count seen by its norm (clipping rule) */
  adamjit_mem gscale;  /* float: one tensor's clipping scale */
  adamjit_mem newmax;  /* 3 floats: block_wise = 0 maxima */
  adamjit_mem maps[4]; /* 256 floats each: signed values, unsigned values, signed and unsigned midpoints */
  int maps_ready;
} aj_gpu_buffers;

/* The members of b and their sizes in bytes, for the backend to allocate and free. */
#define AJ_GPU_BUFFER_COUNT 9
void aj_gpu_buffers_list(aj_gpu_buffers* b, adamjit_mem* slots[AJ_GPU_BUFFER_COUNT], size_t bytes[AJ_GPU_BUFFER_COUNT]);

/* One step of every item. With nonfinite != NULL it waits at the end and reads the step's
 * non-finite count; with NULL nothing waits and the count stays in b->counter until
 * aj_gpu_read_nonfinite. */
adamjit_status aj_gpu_step(adamjit_context* ctx, const aj_gpu_device* dev, aj_gpu_buffers* b, aj_dialect dialect,
                           aj_step_item* items, int n, uint64_t* nonfinite);
adamjit_status aj_gpu_read_nonfinite(adamjit_context* ctx, const aj_gpu_device* dev, aj_gpu_buffers* b,
                                     uint64_t* nonfinite);

/* Work-groups of an update kernel (adamw32, adamw8 either layout, or a b=0 pass) for a
 * tensor of numel elements launched alone; a grouped launch gives each tensor as many. */
size_t aj_gpu_update_groups(const aj_variant* u, size_t numel);

/* Blockwise quantize / dequantize (waits: quantize reports non-finite input). */
adamjit_status aj_gpu_quantize(adamjit_context* ctx, const aj_gpu_device* dev, aj_gpu_buffers* b, aj_dialect dialect,
                               const aj_quant_job* job, int quantize);

#endif
