/* The run-time kernel engine of a context: render a variant, find its binary in the kernel
 * caches, compile on a miss, store. Internal; one per context, created on first use
 * (aj_context_jit), so a CPU-only user never starts Lua.
 *
 * It ties together jit/render (templates, the context's template_dir), jit/cache (the
 * context's cache_dir) and the two compile drivers with the compile options the library
 * always uses, so every path (a backend's launch, `adamjit kernels`, `adamjit bench --jit`)
 * builds the same binary for the same key:
 *   CUDA:   --fmad=false (no contraction into FMA: the CPU oracle rounds a*b and +c
 *           separately; NVRTC's defaults already give IEEE division and sqrt)
 *   OpenCL: -cl-std=CL1.2, plus -cl-fp32-correctly-rounded-divide-sqrt where the device
 *           supports it (OpenCL's default division and sqrt may be off by ulps);
 *           FP_CONTRACT OFF is in the prelude.
 *
 * Cache keys (jit/cache.h): source = the rendered text, options = the option string above,
 * arch = the requested "sm_XX" (CUDA) or the OpenCL device name + platform + driver version,
 * compiler = "nvrtc X.Y" or the device's OpenCL version (which names the driver, e.g. PoCL and its
 * LLVM) and OpenCL C version. A CUDA entry's binary
 * starts with a small header saying whether it is CUBIN or PTX and for which architecture
 * (a request for a GPU newer than NVRTC falls back to PTX, see jit/nvrtc.h). */
#ifndef ADAMJIT_JIT_ENGINE_H
#define ADAMJIT_JIT_ENGINE_H

#include <stddef.h>

#include "adamjit/adamjit.h"
#include "jit/cache.h"
#include "jit/opencl.h"
#include "jit/variant.h"

typedef struct aj_jit aj_jit;

/* What one build did, for tools and logs. */
typedef struct aj_jit_report {
  aj_cache_where where; /* MISS: compiled now */
  double render_ms;
  double build_ms;      /* compile on a miss; cache read + program creation on a hit */
  size_t source_bytes;
  size_t binary_bytes;
  int is_cubin;         /* CUDA: 1 CUBIN, 0 PTX */
  char target[AJ_CL_STR_LEN]; /* CUDA: the architecture compiled for; OpenCL: the device name */
  char* log;            /* malloc'd compile log on a miss ("" when silent), else NULL */
} aj_jit_report;

/* Frees r->log and resets r. NULL-safe. */
void aj_jit_report_free(aj_jit_report* r);

/* A CUDA binary ready for cuModuleLoadData. */
typedef struct aj_cuda_binary {
  void* data; /* malloc'd; PTX is NUL-terminated and size counts the NUL */
  size_t size;
  int is_cubin;
  char arch[24];
} aj_cuda_binary;
void aj_cuda_binary_free(aj_cuda_binary* b); /* NULL-safe */

/* template_dir and cache_dir as in adamjit_context_desc (NULL: the environment / default). */
adamjit_status aj_jit_create(adamjit_context* ctx, const char* template_dir, const char* cache_dir, aj_jit** out);
void aj_jit_destroy(aj_jit* jit); /* NULL-safe; closes the OpenCL devices it opened */

aj_kernel_cache* aj_jit_cache(aj_jit* jit);

/* Renders v (see jit/render.h); *source is malloc'd. */
adamjit_status aj_jit_render(aj_jit* jit, const aj_variant* v, char** source, size_t* len);

/* The CUDA binary of v (dialect cuda) for arch ("sm_90"): from the caches, else compiled
 * with NVRTC and stored. use_cache = 0 compiles and stores nothing (a cold measurement).
 * report may be NULL. */
adamjit_status aj_jit_cuda(aj_jit* jit, const aj_variant* v, const char* arch, int use_cache, aj_cuda_binary* out,
                           aj_jit_report* report);

/* The built program of v (dialect opencl) on dev: created from a cached binary, else built
 * from source and its binary stored. A cached binary the driver rejects is rebuilt from
 * source. out must be freed with aj_opencl_program_free. */
adamjit_status aj_jit_opencl(aj_jit* jit, aj_cl_device* dev, const aj_variant* v, int use_cache, aj_cl_program* out,
                             aj_jit_report* report);

/* An OpenCL device the engine opens on first use by selector (see aj_opencl_device_open) and
 * keeps until destroyed; for contexts that are not OpenCL contexts (tools compiling for a
 * device). */
adamjit_status aj_jit_opencl_device(aj_jit* jit, const char* selector, aj_cl_device** out);

#endif
