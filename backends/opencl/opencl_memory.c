/* OpenCL memory: zero-filled buffers, with small ones carved from slabs.
 *
 * A model has a few huge tensors and many small ones (biases, norms). Each small buffer as
 * its own cl_mem would leave the many small tensors in as many buffers, and OpenCL 1.2 has
 * no pointers between buffers: a kernel can only reach a tensor through an argument. So
 * buffers up to OCL_SMALL_MAX bytes are sub-buffers of OCL_SLAB_SIZE slabs, and a step can
 * hand one kernel the parents plus a table of offsets (backends/gpu). Callers see ordinary
 * cl_mem handles either way.
 *
 * A slab is bump-allocated: freed space is not reused until every sub-buffer of the slab is
 * freed, then the slab itself is released. Optimizer state and a trainer's tensors are
 * allocated once and freed together, which this suits; churn of small buffers wastes at
 * most a slab. */
#include <stdlib.h>
#include <string.h>

#include "backends/opencl/opencl_internal.h"
#include "core/internal.h"

#define OCL_SMALL_MAX ((size_t)1 << 20)
#define OCL_SLAB_SIZE ((size_t)16 << 20)

static adamjit_status alloc_failure(adamjit_context* ctx, cl_int err, const char* call, size_t bytes) {
  return aj_fail(ctx, aj_opencl_status(err), "opencl: cannot allocate %zu bytes (%s: %s)", bytes, call,
                 aj_opencl_error_name(err));
}

adamjit_status ocl_create_buffer(adamjit_context* ctx, cl_mem_flags flags, size_t bytes, cl_mem* out) {
  ocl_backend* b = ocl_of(ctx);
  *out = NULL;
  /* Drivers answer CL_INVALID_BUFFER_SIZE above their limit: to the caller that is memory
   * the device cannot give. */
  if (b->max_alloc && bytes > b->max_alloc)
    return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "opencl: %zu bytes requested, %s allocates at most %llu per buffer",
                   bytes, b->dev->info.name, (unsigned long long)b->max_alloc);
  cl_int err = CL_SUCCESS;
  *out = b->cl->clCreateBuffer(b->dev->context, flags, bytes, NULL, &err);
  if (!*out || err != CL_SUCCESS) {
    *out = NULL;
    return alloc_failure(ctx, err != CL_SUCCESS ? err : CL_OUT_OF_RESOURCES, "clCreateBuffer", bytes);
  }
  return ADAMJIT_OK;
}

static size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

/* A slab with room for `bytes` (aligned), creating one when none has it. */
static adamjit_status slab_for(adamjit_context* ctx, size_t bytes, int paged, ocl_slab** out) {
  ocl_backend* b = ocl_of(ctx);
  for (int i = b->n_slabs; i-- > 0;)
    if (b->slabs[i].paged == paged && b->slabs[i].size - b->slabs[i].used >= bytes) {
      *out = &b->slabs[i];
      return ADAMJIT_OK;
    }
  if (b->n_slabs == b->cap_slabs) {
    int cap = b->cap_slabs ? 2 * b->cap_slabs : 8;
    ocl_slab* grown = realloc(b->slabs, (size_t)cap * sizeof *grown);
    if (!grown) return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "opencl backend: out of host memory");
    b->slabs = grown;
    b->cap_slabs = cap;
  }
  size_t size = OCL_SLAB_SIZE;
  if (b->max_alloc && size > b->max_alloc) size = (size_t)b->max_alloc;
  cl_mem m = NULL;
  adamjit_status st = ocl_create_buffer(ctx, CL_MEM_READ_WRITE | (paged ? CL_MEM_ALLOC_HOST_PTR : 0), size, &m);
  if (st) return st;
  b->slabs[b->n_slabs] = (ocl_slab){m, size, 0, 0, paged};
  *out = &b->slabs[b->n_slabs++];
  return ADAMJIT_OK;
}

static adamjit_status carve(adamjit_context* ctx, size_t bytes, int paged, cl_mem* out) {
  ocl_backend* b = ocl_of(ctx);
  size_t room = align_up(bytes, b->sub_align);
  ocl_slab* s = NULL;
  adamjit_status st = slab_for(ctx, room, paged, &s);
  if (st) return st;
  cl_buffer_region region = {s->used, bytes};
  cl_int err = CL_SUCCESS;
  cl_mem m = b->cl->clCreateSubBuffer(s->mem, CL_MEM_READ_WRITE, CL_BUFFER_CREATE_TYPE_REGION, &region, &err);
  if (!m || err != CL_SUCCESS) return alloc_failure(ctx, err != CL_SUCCESS ? err : CL_OUT_OF_RESOURCES, "clCreateSubBuffer", bytes);
  s->used += room;
  s->live++;
  *out = m;
  return ADAMJIT_OK;
}

adamjit_status ocl_memory_alloc(adamjit_context* ctx, size_t bytes, int paged, cl_mem* out) {
  ocl_backend* b = ocl_of(ctx);
  cl_mem m = NULL;
  adamjit_status st = bytes <= OCL_SMALL_MAX && b->sub_align
                          ? carve(ctx, bytes, paged, &m)
                          : ocl_create_buffer(ctx, CL_MEM_READ_WRITE | (paged ? CL_MEM_ALLOC_HOST_PTR : 0), bytes, &m);
  if (st) return st;
  static const cl_uchar zero = 0;
  cl_int err = b->cl->clEnqueueFillBuffer(b->dev->queue, m, &zero, 1, 0, bytes, 0, NULL, NULL);
  /* The first use of a buffer is where drivers find out whether they can back it. */
  if (err == CL_SUCCESS) err = b->cl->clFinish(b->dev->queue);
  if (err != CL_SUCCESS) {
    ocl_memory_free(ctx, m);
    return alloc_failure(ctx, err, "clEnqueueFillBuffer", bytes);
  }
  *out = m;
  return ADAMJIT_OK;
}

adamjit_status ocl_memory_locate(adamjit_context* ctx, cl_mem mem, cl_mem* parent, size_t* offset) {
  ocl_backend* b = ocl_of(ctx);
  cl_mem p = NULL;
  size_t off = 0;
  cl_int err = b->cl->clGetMemObjectInfo(mem, CL_MEM_ASSOCIATED_MEMOBJECT, sizeof p, &p, NULL);
  if (err == CL_SUCCESS && p) err = b->cl->clGetMemObjectInfo(mem, CL_MEM_OFFSET, sizeof off, &off, NULL);
  if (err != CL_SUCCESS) return aj_opencl_check(ctx, err, "clGetMemObjectInfo");
  *parent = p ? p : mem;
  *offset = p ? off : 0;
  return ADAMJIT_OK;
}

void ocl_memory_free(adamjit_context* ctx, cl_mem mem) {
  ocl_backend* b = ocl_of(ctx);
  cl_mem parent = NULL;
  size_t offset = 0;
  int slab = -1;
  if (ocl_memory_locate(ctx, mem, &parent, &offset) == ADAMJIT_OK && parent != mem)
    for (int i = 0; i < b->n_slabs && slab < 0; i++)
      if (b->slabs[i].mem == parent) slab = i;
  b->cl->clReleaseMemObject(mem);
  if (slab < 0 || --b->slabs[slab].live) return;
  /* its last sub-buffer: the slab goes (the queue keeps it alive for commands still queued) */
  b->cl->clReleaseMemObject(b->slabs[slab].mem);
  b->slabs[slab] = b->slabs[--b->n_slabs];
}

void ocl_memory_release_all(adamjit_context* ctx) {
  ocl_backend* b = ocl_of(ctx);
  for (int i = 0; i < b->n_slabs; i++) b->cl->clReleaseMemObject(b->slabs[i].mem);
  free(b->slabs);
  b->slabs = NULL;
  b->n_slabs = b->cap_slabs = 0;
}
