/* The CUDA side of the shared GPU launches (backends/gpu/gpu_step.h): kernels from the
 * module table, cuLaunchKernel with an argument array, everything on the backend's one
 * stream. Nothing here waits for the device except read() and wait(), which are the only
 * calls the interface allows to (a staging chunk still in flight is the one exception:
 * see stage_take). The backend's context is current whenever these run (cuda_backend.c
 * enters it around every backend call). */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cuda/cuda_internal.h"
#include "core/internal.h"

static adamjit_status prepare(adamjit_context* ctx, const aj_variant* v, const char* entry) {
  const cu_module* m = NULL;
  int k = 0;
  return cu_kernel_entry(ctx, v, entry, &m, &k);
}

/* What cuLaunchKernel will read for each argument: a CUdeviceptr and an aj_size are 8
 * bytes, an int 4; the templates declare exactly those types. */
static size_t arg_bytes(const aj_gpu_arg* a) {
  return a->kind == AJ_ARG_MEM ? sizeof(CUdeviceptr) : a->kind == AJ_ARG_U64 ? sizeof(unsigned long long) : sizeof(int);
}

static adamjit_status launch(adamjit_context* ctx, const aj_gpu_launch* l) {
  cu_backend* b = cu_of(ctx);
  const cu_module* m = NULL;
  int k = 0;
  adamjit_status st = cu_kernel_entry(ctx, l->variant, l->entry, &m, &k);
  if (st) return st;
  if (l->n_args < 0 || l->n_args > AJ_GPU_MAX_ARGS)
    return aj_fail(ctx, ADAMJIT_ERR_INTERNAL, "%s: %d kernel arguments", l->what, l->n_args);
  /* cuLaunchKernel reads the argument array by the kernel's own parameter list, so a
   * launcher and a template that disagree would pass garbage instead of failing: refuse. */
  if (m->n_params[k] >= 0) {
    int bad = m->n_params[k] != l->n_args;
    for (int i = 0; i < l->n_args && !bad; i++) bad = m->param_size[k][i] != arg_bytes(&l->args[i]);
    if (bad)
      return aj_fail(ctx, ADAMJIT_ERR_TEMPLATE,
                     "%s: kernel %s takes %d parameters, the launch passes %d (or their sizes differ): does the "
                     "template take the documented arguments?",
                     l->what, m->names[k], m->n_params[k], l->n_args);
  }
  if (l->groups == 0) return ADAMJIT_OK;
  if (l->groups > (size_t)INT_MAX || l->wg <= 0)
    return aj_fail(ctx, ADAMJIT_ERR_UNSUPPORTED, "%s: %zu blocks of %d threads exceed CUDA's grid limits", l->what,
                   l->groups, l->wg);
  CUdeviceptr ptrs[AJ_GPU_MAX_ARGS];
  unsigned long long sizes[AJ_GPU_MAX_ARGS];
  int ints[AJ_GPU_MAX_ARGS];
  void* params[AJ_GPU_MAX_ARGS];
  for (int i = 0; i < l->n_args; i++) {
    const aj_gpu_arg* a = &l->args[i];
    switch (a->kind) {
      case AJ_ARG_MEM:
        ptrs[i] = cu_ptr(a->mem);
        params[i] = &ptrs[i];
        break;
      case AJ_ARG_U64:
        sizes[i] = (unsigned long long)a->u64;
        params[i] = &sizes[i];
        break;
      default:
        ints[i] = (int)a->i32;
        params[i] = &ints[i];
        break;
    }
  }
  /* The values are copied into the launch before cuLaunchKernel returns. */
  CUresult r = b->cu->cuLaunchKernel(m->funcs[k], (unsigned)l->groups, 1, 1, (unsigned)l->wg, 1, 1, 0, b->stream,
                                     params, NULL);
  return aj_cuda_check(ctx, r, l->what);
}

void cu_after_wait(cu_backend* b) {
  for (int i = 0; i < CU_STAGE_CHUNKS; i++) b->stage.pending[i] = 0;
  b->stage.used = 0;
  for (int i = 0; i < b->n_retired; i++) b->cu->cuMemFree(b->retired[i]);
  b->n_retired = 0;
}

adamjit_status cu_wait(adamjit_context* ctx) {
  cu_backend* b = cu_of(ctx);
  adamjit_status st = aj_cuda_check(ctx, b->cu->cuStreamSynchronize(b->stream), "cuStreamSynchronize");
  if (!st) cu_after_wait(b);
  return st;
}

/* Room for `bytes` (<= one chunk) in the staging ring, 16-byte aligned. Leaving a chunk
 * records its event; entering one whose event is still pending waits for it, which only
 * happens when the host is a whole ring of writes ahead of the GPU. */
static adamjit_status stage_take(adamjit_context* ctx, size_t bytes, unsigned char** out) {
  cu_backend* b = cu_of(ctx);
  cu_stage* s = &b->stage;
  size_t at = (s->used + 15) & ~(size_t)15;
  if (at + bytes > CU_STAGE_CHUNK_BYTES) {
    adamjit_status st = aj_cuda_check(ctx, b->cu->cuEventRecord(s->done[s->chunk], b->stream), "cuEventRecord");
    if (st) return st;
    s->pending[s->chunk] = 1;
    s->chunk = (s->chunk + 1) % CU_STAGE_CHUNKS;
    if (s->pending[s->chunk]) {
      st = aj_cuda_check(ctx, b->cu->cuEventSynchronize(s->done[s->chunk]), "cuEventSynchronize (staging)");
      if (st) return st;
      s->pending[s->chunk] = 0;
    }
    at = 0;
  }
  *out = s->host + (size_t)s->chunk * CU_STAGE_CHUNK_BYTES + at;
  s->used = at + bytes;
  return ADAMJIT_OK;
}

/* The source is copied into pinned staging before this returns (write_borrows_source = 0),
 * and the device copy is queued behind everything before it. A source larger than a chunk
 * (never inside a step: steps write scalars and 1 KiB maps) is copied synchronously. */
static adamjit_status write_async(adamjit_context* ctx, adamjit_mem dst, const void* src, size_t bytes) {
  cu_backend* b = cu_of(ctx);
  if (bytes == 0) return ADAMJIT_OK;
  if (bytes > CU_STAGE_CHUNK_BYTES) {
    adamjit_status st =
        aj_cuda_check(ctx, b->cu->cuMemcpyHtoDAsync(cu_ptr(dst), src, bytes, b->stream), "cuMemcpyHtoDAsync");
    return st ? st : cu_wait(ctx);
  }
  unsigned char* slot = NULL;
  adamjit_status st = stage_take(ctx, bytes, &slot);
  if (st) return st;
  memcpy(slot, src, bytes);
  return aj_cuda_check(ctx, b->cu->cuMemcpyHtoDAsync(cu_ptr(dst), slot, bytes, b->stream), "cuMemcpyHtoDAsync");
}

/* Waits for everything before it (stream order), through pinned memory when it fits. */
static adamjit_status read_sync(adamjit_context* ctx, void* dst, adamjit_mem src, size_t bytes) {
  cu_backend* b = cu_of(ctx);
  if (bytes == 0) return cu_wait(ctx);
  void* land = bytes <= CU_READBACK_BYTES ? (void*)b->readback : dst;
  adamjit_status st =
      aj_cuda_check(ctx, b->cu->cuMemcpyDtoHAsync(land, cu_ptr(src), bytes, b->stream), "cuMemcpyDtoHAsync");
  if (!st) st = cu_wait(ctx);
  if (!st && land != dst) memcpy(dst, land, bytes);
  return st;
}

static adamjit_status wait_all(adamjit_context* ctx) { return cu_wait(ctx); }

/* Grows a scratch buffer. The old one may still be read by queued kernels, so it is
 * retired and freed at the next wait instead of now (cuMemFree of memory in use is not
 * stream-ordered). */
static adamjit_status scratch(adamjit_context* ctx, int slot, size_t bytes, adamjit_mem* out) {
  cu_backend* b = cu_of(ctx);
  cu_scratch* s = &b->scratch[slot];
  if (s->bytes < bytes) {
    size_t want = bytes < 4096 ? 4096 : bytes;
    if (s->ptr && b->n_retired == b->cap_retired) {
      int cap = b->cap_retired ? 2 * b->cap_retired : 8;
      CUdeviceptr* grown = realloc(b->retired, (size_t)cap * sizeof *grown);
      if (!grown) return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "cuda backend: out of host memory");
      b->retired = grown;
      b->cap_retired = cap;
    }
    CUdeviceptr p = 0;
    adamjit_status st = aj_cuda_check(ctx, b->cu->cuMemAlloc(&p, want), "cuMemAlloc (scratch)");
    if (st) return st;
    if (s->ptr) b->retired[b->n_retired++] = s->ptr;
    s->ptr = p;
    s->bytes = want;
  }
  *out = cu_mem(s->ptr);
  return ADAMJIT_OK;
}

static adamjit_status upload_map(adamjit_context* ctx, const float* values, adamjit_mem* out) {
  cu_backend* b = cu_of(ctx);
  CUdeviceptr p = 0;
  adamjit_status st = aj_cuda_check(ctx, b->cu->cuMemAlloc(&p, 256 * sizeof(float)), "cuMemAlloc (map)");
  if (st) return st;
  st = write_async(ctx, cu_mem(p), values, 256 * sizeof(float));
  if (st) {
    b->cu->cuMemFree(p);
    return st;
  }
  *out = cu_mem(p);
  return ADAMJIT_OK;
}

/* Called after a wait (gpu_step.h), so no queued kernel still reads the map. */
static void release_map(adamjit_context* ctx, adamjit_mem mem) { cu_of(ctx)->cu->cuMemFree(cu_ptr(mem)); }

/* One address space: a grouped launch takes the lowest address of a group as its base. */
static adamjit_status locate(adamjit_context* ctx, adamjit_mem mem, adamjit_mem* parent, size_t* offset) {
  (void)ctx;
  *parent = NULL;
  *offset = (size_t)cu_ptr(mem);
  return ADAMJIT_OK;
}

const aj_gpu_device aj_cuda_gpu_device = {
    .prepare = prepare,
    .launch = launch,
    .write = write_async,
    .read = read_sync,
    .wait = wait_all,
    .scratch = scratch,
    .upload_map = upload_map,
    .release_map = release_map,
    .locate = locate,
    .write_borrows_source = 0,
};
