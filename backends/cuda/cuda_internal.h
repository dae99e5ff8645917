/* The CUDA backend's own state, shared by its context/memory part (cuda_backend.c) and its
 * device interface for the shared GPU launches (cuda_device.c, backends/gpu/). */
#ifndef ADAMJIT_BACKENDS_CUDA_INTERNAL_H
#define ADAMJIT_BACKENDS_CUDA_INTERNAL_H

#include <stdint.h>

#include "backends/backend.h"
#include "backends/cuda/cuda_driver.h"
#include "backends/gpu/gpu_step.h"
#include "jit/variant.h"

/* Kernels of one module: the entry points a family's program defines (adamw8 with b=0 has
 * four, see aj_render_kernel_names). */
#define CU_MAX_ENTRIES 4

typedef struct cu_module {
  aj_variant variant;
  CUmodule module;
  const char* names[CU_MAX_ENTRIES]; /* static strings from jit/render */
  CUfunction funcs[CU_MAX_ENTRIES];
  int n_funcs;
  /* Each kernel's parameter count and sizes (cuFuncGetParamInfo), checked at launch;
   * n_params = -1 where the driver cannot say. */
  int n_params[CU_MAX_ENTRIES];
  unsigned char param_size[CU_MAX_ENTRIES][AJ_GPU_MAX_ARGS];
} cu_module;

/* A device buffer the backend owns as scratch, grown on demand. */
typedef struct cu_scratch {
  CUdeviceptr ptr;
  size_t bytes;
} cu_scratch;

/* Pinned host memory that asynchronous writes copy their source into, so that the caller's
 * source may change as soon as write() returns and the copy still overlaps the GPU's work
 * (cuMemcpyHtoDAsync from pageable memory would stage synchronously). A ring of chunks:
 * when a chunk is left, an event is recorded after its last copy, and the chunk is reused
 * only once that event has completed. A wait on the stream makes every chunk free again. */
#define CU_STAGE_CHUNKS 4
#define CU_STAGE_CHUNK_BYTES ((size_t)64 * 1024)
typedef struct cu_stage {
  unsigned char* host; /* CU_STAGE_CHUNKS * CU_STAGE_CHUNK_BYTES, cuMemAllocHost */
  CUevent done[CU_STAGE_CHUNKS];
  int pending[CU_STAGE_CHUNKS]; /* done[i] was recorded and may not have completed */
  int chunk;                    /* the chunk being filled */
  size_t used;                  /* bytes used in it */
} cu_stage;

/* Bytes of pinned memory that small reads land in before they are copied out. */
#define CU_READBACK_BYTES ((size_t)4096)

typedef struct cu_backend {
  const aj_cuda_api_table* cu;
  CUdevice device;
  int ordinal;            /* the device's index, for messages and CUmemLocation */
  CUcontext context;      /* the primary context (retained) or the caller's */
  int retained_primary;   /* release the primary context at shutdown */
  const char* context_kind; /* for the log: "the primary", "the caller's current", "the stream's" */
  CUstream stream;        /* the caller's (desc->queue) or our own */
  int own_stream;
  int concurrent_managed; /* CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS: managed memory can be prefetched */
  char name[256];
  char arch[16];          /* "sm_90": what NVRTC compiles for */
  cu_module* modules;
  int n_modules, cap_modules;
  size_t live_buffers;    /* from mem_alloc, for the warning at destroy */
  aj_gpu_buffers bufs;    /* the step's small buffers (CUdeviceptr through uintptr_t) */
  cu_scratch scratch[AJ_GPU_SCRATCH_SLOTS];
  /* Scratch buffers replaced while kernels may still read them: freed at the next wait. */
  CUdeviceptr* retired;
  int n_retired, cap_retired;
  cu_stage stage;
  unsigned char* readback; /* CU_READBACK_BYTES pinned */
} cu_backend;

static inline cu_backend* cu_of(adamjit_context* ctx) { return (cu_backend*)ctx->bdata; }

/* adamjit_mem on CUDA is a CUdeviceptr cast through uintptr_t. */
static inline CUdeviceptr cu_ptr(adamjit_mem m) { return (CUdeviceptr)(uintptr_t)m; }
static inline adamjit_mem cu_mem(CUdeviceptr p) { return (adamjit_mem)(uintptr_t)p; }

/* The kernel `entry` (NULL: the family's kernel) of variant v's module, loaded on first use
 * through the context's jit engine and caches: the module and the entry's index in it
 * (module->funcs[index]). The pointer is valid until the next module is loaded. The
 * context must be current. */
adamjit_status cu_kernel_entry(adamjit_context* ctx, const aj_variant* v, const char* entry, const cu_module** module,
                               int* index);

/* What a wait on the stream makes reusable: staging chunks, retired scratch. Call only
 * after the stream has been synchronized. */
void cu_after_wait(cu_backend* b);

/* cuStreamSynchronize, then cu_after_wait. */
adamjit_status cu_wait(adamjit_context* ctx);

/* The device interface the shared GPU launches use (cuda_device.c). */
extern const aj_gpu_device aj_cuda_gpu_device;

#endif
