/* The internal interface every backend implements: a table of function pointers that core
 * calls with the context (whose bdata is the backend's own state). Every slot returns a
 * status and leaves its detail in the context with aj_fail(). */
#ifndef ADAMJIT_BACKENDS_BACKEND_H
#define ADAMJIT_BACKENDS_BACKEND_H

#include <stddef.h>

#include "core/internal.h"
#include "core/qmap.h"

/* One tensor's share of a step. */
typedef struct aj_step_item {
  aj_tensor* tensor;  /* buffers, sizes, dtypes, storage; step already holds the new t */
  adamjit_hparams hp; /* of the tensor's group, validated */
  const aj_qmap* qmap1; /* 8-bit state: the signed map of m */
  const aj_qmap* qmap2; /* 8-bit state: the unsigned map of v and vmax */
} aj_step_item;

/* One blockwise quantize or dequantize call, validated by core. */
typedef struct aj_quant_job {
  adamjit_dtype dtype;
  int64_t numel;
  int block_size;
  const aj_qmap* map;
  adamjit_mem x; /* the values: input of quantize, output of dequantize */
  adamjit_mem codes;
  adamjit_mem absmax;
} aj_quant_job;

typedef struct aj_backend_ops {
  adamjit_backend kind;
  /* Whether the backend can run here; on failure the reason goes to why. */
  adamjit_status (*probe)(char* why, size_t why_size);
  /* Optional: whether ADAMJIT_BACKEND_AUTO may pick this (available) backend; NULL = yes.
   * OpenCL says no when its only devices are CPUs: the CPU backend is faster there. */
  int (*auto_ok)(void);
  adamjit_status (*device_count)(int* count, char* why, size_t why_size);
  adamjit_status (*device_name)(int index, char* name, size_t size, char* why, size_t why_size);

  adamjit_status (*init)(adamjit_context* ctx, const adamjit_context_desc* desc);
  void (*shutdown)(adamjit_context* ctx);

  /* Zero-filled memory. paged asks for pageable memory; *kind says what was given. */
  adamjit_status (*mem_alloc)(adamjit_context* ctx, size_t bytes, int paged, adamjit_mem* out,
                              adamjit_memory_kind* kind);
  void (*mem_free)(adamjit_context* ctx, adamjit_mem mem);
  adamjit_status (*mem_write)(adamjit_context* ctx, adamjit_mem dst, size_t offset, const void* src, size_t bytes);
  adamjit_status (*mem_read)(adamjit_context* ctx, void* dst, adamjit_mem src, size_t offset, size_t bytes);
  /* Device-to-device copy, enqueued in order (ranges validated by core). */
  adamjit_status (*mem_copy)(adamjit_context* ctx, adamjit_mem dst, size_t dst_offset, adamjit_mem src,
                             size_t src_offset, size_t bytes);
  /* Checks that user memory holds at least `bytes` where the backend can tell. */
  adamjit_status (*mem_check)(adamjit_context* ctx, adamjit_mem mem, size_t bytes, const char* what);
  adamjit_status (*synchronize)(adamjit_context* ctx);

  /* One AdamW update of every item (32- or 8-bit state). *nonfinite receives the number of
   * skipped non-finite gradient elements; with nonfinite == NULL a GPU backend does not wait
   * for the step and keeps the count until read_nonfinite (valid until the next step on
   * the context). */
  adamjit_status (*step)(adamjit_context* ctx, aj_step_item* items, int n, uint64_t* nonfinite);
  adamjit_status (*read_nonfinite)(adamjit_context* ctx, uint64_t* nonfinite);
  /* Blockwise quantization (SPEC 3); quantize fails with INVALID_VALUE on non-finite input. */
  adamjit_status (*quantize)(adamjit_context* ctx, const aj_quant_job* job);
  adamjit_status (*dequantize)(adamjit_context* ctx, const aj_quant_job* job);

  /* Optional (NULL where the backend has none): the targets adamjit_kernel_build uses by
   * default on this context. cuda_arch: "sm_90" for the context's GPU. opencl_device: the
   * context's opened device (struct aj_cl_device, jit/opencl.h). */
  const char* (*cuda_arch)(adamjit_context* ctx);
  struct aj_cl_device* (*opencl_device)(adamjit_context* ctx);
  /* Optional (NULL: the backend launches no run-time kernels, so nothing is tuned): how
   * the context's device is named in tuning databases (adamjit_tuning_device; core trims
   * the strings). Never fails for want of a driver answer: what cannot be asked is named
   * by what can (see adamjit_tuning_device). */
  adamjit_status (*tuning_identity)(adamjit_context* ctx, adamjit_tuning_device* out);
  /* Optional (NULL: paged state never occupies device memory here, so there is nothing to
   * move; adamjit_optimizer_page_out logs that and succeeds): moves the paged state buffers
   * (m, v, vmax of tensors whose memory is ADAMJIT_MEMORY_PAGED) of tensors[n] to host
   * memory and waits until they are there, so that the device memory they held is free.
   * Their next step brings them back. */
  adamjit_status (*page_out)(adamjit_context* ctx, const aj_tensor* tensors, int n);
} aj_backend_ops;

extern const aj_backend_ops aj_cpu_backend;
extern const aj_backend_ops aj_opencl_backend;
extern const aj_backend_ops aj_cuda_backend; /* only when built (ADAMJIT_HAVE_CUDA) */

/* The table for a backend kind, or NULL if it was not built. */
const aj_backend_ops* aj_backend_lookup(adamjit_backend kind);
/* The backend ADAMJIT_BACKEND_AUTO resolves to: cuda, then opencl, then cpu. */
adamjit_backend aj_backend_auto(void);

#endif
