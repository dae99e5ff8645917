/* The OpenCL backend's own state, shared by its context/memory part (opencl_backend.c) and
 * its device interface for the shared GPU launches (opencl_device.c, backends/gpu/). */
#ifndef ADAMJIT_BACKENDS_OPENCL_INTERNAL_H
#define ADAMJIT_BACKENDS_OPENCL_INTERNAL_H

#include "backends/backend.h"
#include "backends/gpu/gpu_step.h"
#include "jit/opencl.h"
#include "jit/variant.h"

/* Kernels of one program: the entry points a family's program defines (adamw8 with b=0
 * has four). */
#define OCL_MAX_ENTRIES 4

typedef struct ocl_program {
  aj_variant variant;
  cl_program program;
  const char* names[OCL_MAX_ENTRIES];
  cl_kernel kernels[OCL_MAX_ENTRIES];
  int n_kernels;
} ocl_program;

/* A device buffer the backend owns as scratch, grown on demand. */
typedef struct ocl_scratch {
  cl_mem mem;
  size_t bytes;
} ocl_scratch;

/* Small buffers are carved from slabs as sub-buffers (opencl_memory.c), so that the many
 * small tensors of a model share a few parent buffers and can be updated by one launch. */
typedef struct ocl_slab {
  cl_mem mem;
  size_t size, used;
  size_t live; /* sub-buffers handed out and not yet freed */
  int paged;
} ocl_slab;

typedef struct ocl_backend {
  aj_cl_device* dev;
  const aj_opencl_api_table* cl;
  ocl_program* programs;
  int n_programs, cap_programs;
  size_t live_buffers; /* from mem_alloc, for the warning at destroy */
  cl_ulong max_alloc;  /* CL_DEVICE_MAX_MEM_ALLOC_SIZE */
  aj_gpu_buffers bufs; /* the step's small buffers (cl_mem) */
  ocl_slab* slabs;
  int n_slabs, cap_slabs;
  size_t sub_align; /* CL_DEVICE_MEM_BASE_ADDR_ALIGN in bytes: sub-buffer origins */
  ocl_scratch scratch[AJ_GPU_SCRATCH_SLOTS];
} ocl_backend;

static inline ocl_backend* ocl_of(adamjit_context* ctx) { return (ocl_backend*)ctx->bdata; }

/* The kernel `entry` (NULL: the family's kernel) of variant v's program, built on first use
 * through the context's jit engine and caches. */
adamjit_status ocl_kernel(adamjit_context* ctx, const aj_variant* v, const char* entry, cl_kernel* out);

/* Memory (opencl_memory.c): zero-filled buffers, small ones from slabs; free; and where a
 * buffer lives (its parent buffer and byte offset; itself and 0 when it has no parent). */
adamjit_status ocl_memory_alloc(adamjit_context* ctx, size_t bytes, int paged, cl_mem* out);
void ocl_memory_free(adamjit_context* ctx, cl_mem mem);
void ocl_memory_release_all(adamjit_context* ctx);
adamjit_status ocl_memory_locate(adamjit_context* ctx, cl_mem mem, cl_mem* parent, size_t* offset);
adamjit_status ocl_create_buffer(adamjit_context* ctx, cl_mem_flags flags, size_t bytes, cl_mem* out);

/* The device interface the shared GPU launches use (opencl_device.c). */
extern const aj_gpu_device aj_opencl_gpu_device;

#endif
