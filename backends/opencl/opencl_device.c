/* The OpenCL side of the shared GPU launches (backends/gpu/gpu_step.h): kernels from the
 * program table, arguments by clSetKernelArg, everything on the backend's in-order queue. */
#include <string.h>

#include "backends/opencl/opencl_internal.h"
#include "core/internal.h"

static adamjit_status prepare(adamjit_context* ctx, const aj_variant* v, const char* entry) {
  cl_kernel k;
  return ocl_kernel(ctx, v, entry, &k);
}

static adamjit_status launch(adamjit_context* ctx, const aj_gpu_launch* l) {
  ocl_backend* b = ocl_of(ctx);
  cl_kernel k = NULL;
  adamjit_status st = ocl_kernel(ctx, l->variant, l->entry, &k);
  if (st) return st;
  for (int i = 0; i < l->n_args; i++) {
    const aj_gpu_arg* a = &l->args[i];
    cl_mem m = (cl_mem)a->mem;
    cl_ulong u = (cl_ulong)a->u64;
    cl_int x = (cl_int)a->i32;
    cl_int err = a->kind == AJ_ARG_MEM   ? b->cl->clSetKernelArg(k, (cl_uint)i, sizeof m, &m)
                 : a->kind == AJ_ARG_U64 ? b->cl->clSetKernelArg(k, (cl_uint)i, sizeof u, &u)
                                         : b->cl->clSetKernelArg(k, (cl_uint)i, sizeof x, &x);
    if (err != CL_SUCCESS)
      return aj_fail(ctx, ADAMJIT_ERR_TEMPLATE, "%s: argument %d: %s (does the template take the documented arguments?)",
                     l->what, i, aj_opencl_error_name(err));
  }
  size_t global = l->groups * (size_t)l->wg, local = (size_t)l->wg;
  cl_int err = b->cl->clEnqueueNDRangeKernel(b->dev->queue, k, 1, NULL, &global, &local, 0, NULL, NULL);
  return aj_opencl_check(ctx, err, l->what);
}

static adamjit_status write_async(adamjit_context* ctx, adamjit_mem dst, const void* src, size_t bytes) {
  ocl_backend* b = ocl_of(ctx);
  return aj_opencl_check(
      ctx, b->cl->clEnqueueWriteBuffer(b->dev->queue, (cl_mem)dst, CL_FALSE, 0, bytes, src, 0, NULL, NULL),
      "clEnqueueWriteBuffer");
}

static adamjit_status read_sync(adamjit_context* ctx, void* dst, adamjit_mem src, size_t bytes) {
  ocl_backend* b = ocl_of(ctx);
  return aj_opencl_check(
      ctx, b->cl->clEnqueueReadBuffer(b->dev->queue, (cl_mem)src, CL_TRUE, 0, bytes, dst, 0, NULL, NULL),
      "clEnqueueReadBuffer");
}

static adamjit_status wait_all(adamjit_context* ctx) {
  ocl_backend* b = ocl_of(ctx);
  return aj_opencl_check(ctx, b->cl->clFinish(b->dev->queue), "clFinish");
}

static adamjit_status scratch(adamjit_context* ctx, int slot, size_t bytes, adamjit_mem* out) {
  ocl_backend* b = ocl_of(ctx);
  ocl_scratch* s = &b->scratch[slot];
  if (s->bytes < bytes) {
    size_t want = bytes < 4096 ? 4096 : bytes;
    cl_int err = CL_SUCCESS;
    cl_mem m = b->cl->clCreateBuffer(b->dev->context, CL_MEM_READ_WRITE, want, NULL, &err);
    if (!m || err != CL_SUCCESS)
      return aj_opencl_check(ctx, err != CL_SUCCESS ? err : CL_OUT_OF_RESOURCES, "clCreateBuffer (scratch)");
    if (s->mem) b->cl->clReleaseMemObject(s->mem); /* queued kernels keep their own reference */
    s->mem = m;
    s->bytes = want;
  }
  *out = s->mem;
  return ADAMJIT_OK;
}

static adamjit_status upload_map(adamjit_context* ctx, const float* values, adamjit_mem* out) {
  ocl_backend* b = ocl_of(ctx);
  cl_int err = CL_SUCCESS;
  cl_mem m = b->cl->clCreateBuffer(b->dev->context, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, 256 * sizeof(float),
                                   (void*)values, &err);
  if (!m || err != CL_SUCCESS)
    return aj_opencl_check(ctx, err != CL_SUCCESS ? err : CL_OUT_OF_RESOURCES, "clCreateBuffer (map)");
  *out = m;
  return ADAMJIT_OK;
}

static adamjit_status locate(adamjit_context* ctx, adamjit_mem mem, adamjit_mem* parent, size_t* offset) {
  cl_mem p = NULL;
  adamjit_status st = ocl_memory_locate(ctx, (cl_mem)mem, &p, offset);
  *parent = p;
  return st;
}

static void release_map(adamjit_context* ctx, adamjit_mem mem) { ocl_of(ctx)->cl->clReleaseMemObject((cl_mem)mem); }

const aj_gpu_device aj_opencl_gpu_device = {
    .prepare = prepare,
    .launch = launch,
    .write = write_async,
    .read = read_sync,
    .wait = wait_all,
    .scratch = scratch,
    .upload_map = upload_map,
    .release_map = release_map,
    .locate = locate,
    .write_borrows_source = 1,
};
