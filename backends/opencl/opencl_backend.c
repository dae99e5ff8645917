/* The OpenCL backend: device choice, memory, and the program table. Its kernels are the
 * run-time rendered templates (jit/), launched by opencl_launch.c; libOpenCL.so.1 is loaded
 * with dlopen (jit/opencl.c), so a machine without OpenCL gets BACKEND_UNAVAILABLE.
 *
 * Memory handles are cl_mem of the backend's context. Every command goes to one in-order
 * queue (the backend's own, or the caller's), so queue order alone keeps a step correct. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/opencl/opencl_internal.h"
#include "core/internal.h"
#include "jit/engine.h"
#include "jit/render.h"

static adamjit_status ocl_probe(char* why, size_t why_size) {
  adamjit_status st = aj_opencl_available(why, why_size);
  if (st) return st;
  int count = 0;
  st = aj_opencl_device_list(NULL, NULL, 0, &count);
  if (st) snprintf(why, why_size, "%s", adamjit_last_error());
  return st;
}

/* AUTO takes OpenCL only for a GPU or accelerator: on a CPU device (PoCL) the CPU backend's
 * own loops are faster, and it is still there with --backend opencl. */
static int ocl_auto_ok(void) {
  int count = 0;
  if (aj_opencl_device_list(NULL, NULL, 0, &count) || count <= 0) return 0;
  aj_cl_device_info* all = calloc((size_t)count, sizeof *all);
  int ok = 0;
  if (all && aj_opencl_device_list(NULL, all, count, &count) == ADAMJIT_OK)
    for (int i = 0; i < count; i++) ok |= (all[i].type & (CL_DEVICE_TYPE_GPU | CL_DEVICE_TYPE_ACCELERATOR)) != 0;
  free(all);
  return ok;
}

static adamjit_status ocl_device_count(int* count, char* why, size_t why_size) {
  adamjit_status st = aj_opencl_device_list(NULL, NULL, 0, count);
  if (st) snprintf(why, why_size, "%s", adamjit_last_error());
  return st;
}

static adamjit_status ocl_device_name(int index, char* name, size_t size, char* why, size_t why_size) {
  int count = 0;
  adamjit_status st = aj_opencl_device_list(NULL, NULL, 0, &count);
  if (st) {
    snprintf(why, why_size, "%s", adamjit_last_error());
    return st;
  }
  if (index < 0 || index >= count) {
    snprintf(why, why_size, "device index %d out of range (%d OpenCL devices)", index, count);
    return ADAMJIT_ERR_INVALID_INDEX;
  }
  aj_cl_device_info* all = calloc((size_t)count, sizeof *all);
  if (!all) {
    snprintf(why, why_size, "out of host memory");
    return ADAMJIT_ERR_OUT_OF_MEMORY;
  }
  st = aj_opencl_device_list(NULL, all, count, &count);
  if (st) snprintf(why, why_size, "%s", adamjit_last_error());
  else snprintf(name, size, "%s (%s, %s)", all[index].name, all[index].platform, all[index].version);
  free(all);
  return st;
}

static void release(ocl_backend* b, cl_mem* m) {
  if (*m) b->cl->clReleaseMemObject(*m);
  *m = NULL;
}

static void ocl_shutdown(adamjit_context* ctx);

static adamjit_status ocl_init(adamjit_context* ctx, const adamjit_context_desc* desc) {
  ocl_backend* b = calloc(1, sizeof *b);
  if (!b) return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "opencl backend: out of host memory");
  ctx->bdata = b;
  b->cl = aj_opencl_api();
  adamjit_status st;
  if (desc->queue) {
    st = aj_opencl_device_wrap(ctx, (cl_command_queue)desc->queue, &b->dev);
  } else if (desc->device_name && *desc->device_name) {
    /* a number would be read as an index by the selector; the name field means a name */
    int all_digits = 1;
    for (const char* c = desc->device_name; *c; c++) all_digits &= *c >= '0' && *c <= '9';
    st = all_digits ? aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE,
                              "adamjit_context_desc.device_name \"%s\" is a number; use device_index",
                              desc->device_name)
                    : aj_opencl_device_open(ctx, desc->device_name, &b->dev);
  } else if (desc->device_index != 0) {
    char sel[32];
    snprintf(sel, sizeof sel, "%d", desc->device_index);
    st = aj_opencl_device_open(ctx, sel, &b->dev);
  } else {
    st = aj_opencl_device_open(ctx, NULL, &b->dev); /* $ADAMJIT_OPENCL_DEVICE, else 0 */
  }
  if (!st && b->cl->clGetDeviceInfo(b->dev->device, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof b->max_alloc, &b->max_alloc,
                                    NULL) != CL_SUCCESS)
    b->max_alloc = 0;
  cl_uint align_bits = 0; /* 0 (unknown): no slabs, every buffer its own */
  if (!st && b->cl->clGetDeviceInfo(b->dev->device, CL_DEVICE_MEM_BASE_ADDR_ALIGN, sizeof align_bits, &align_bits, NULL) ==
                 CL_SUCCESS)
    b->sub_align = align_bits / 8;
  adamjit_mem* slots[AJ_GPU_BUFFER_COUNT];
  size_t bytes[AJ_GPU_BUFFER_COUNT];
  aj_gpu_buffers_list(&b->bufs, slots, bytes);
  for (int i = 0; i < AJ_GPU_BUFFER_COUNT && !st; i++) {
    cl_mem m = NULL;
    st = ocl_create_buffer(ctx, CL_MEM_READ_WRITE, bytes[i], &m);
    *slots[i] = m;
  }
  if (st) {
    ocl_shutdown(ctx);
    return st;
  }
  aj_log(ctx, ADAMJIT_LOG_INFO, "opencl backend on %s (%s)", b->dev->info.name, b->dev->info.platform);
  return ADAMJIT_OK;
}

static void ocl_shutdown(adamjit_context* ctx) {
  ocl_backend* b = ocl_of(ctx);
  if (!b) return;
  if (b->dev && b->dev->queue) b->cl->clFinish(b->dev->queue);
  if (b->live_buffers)
    aj_log(ctx, ADAMJIT_LOG_WARN, "opencl backend: %zu buffers were still allocated when the context was destroyed",
           b->live_buffers);
  for (int i = 0; i < b->n_programs; i++) {
    for (int k = 0; k < b->programs[i].n_kernels; k++) b->cl->clReleaseKernel(b->programs[i].kernels[k]);
    b->cl->clReleaseProgram(b->programs[i].program);
  }
  free(b->programs);
  if (b->cl) {
    adamjit_mem* slots[AJ_GPU_BUFFER_COUNT];
    size_t bytes[AJ_GPU_BUFFER_COUNT];
    aj_gpu_buffers_list(&b->bufs, slots, bytes);
    for (int i = 0; i < AJ_GPU_BUFFER_COUNT; i++) release(b, (cl_mem*)slots[i]);
    for (int i = 0; i < AJ_GPU_SCRATCH_SLOTS; i++) release(b, &b->scratch[i].mem);
    ocl_memory_release_all(ctx);
  }
  aj_opencl_device_close(b->dev);
  free(b);
  ctx->bdata = NULL;
}

/* Zero-filled memory. Paged: a buffer in host memory that the device reads in place
 * (CL_MEM_ALLOC_HOST_PTR); on a discrete GPU that is pinned host memory over the bus, on a
 * CPU device (PoCL) the same memory as any buffer. */
static adamjit_status ocl_mem_alloc(adamjit_context* ctx, size_t bytes, int paged, adamjit_mem* out,
                                    adamjit_memory_kind* kind) {
  cl_mem m = NULL;
  adamjit_status st = ocl_memory_alloc(ctx, bytes, paged, &m);
  if (st) return st;
  ocl_of(ctx)->live_buffers++;
  *out = m;
  *kind = paged ? ADAMJIT_MEMORY_PAGED : ADAMJIT_MEMORY_DEVICE;
  return ADAMJIT_OK;
}

static void ocl_mem_free(adamjit_context* ctx, adamjit_mem mem) {
  ocl_backend* b = ocl_of(ctx);
  b->cl->clFinish(b->dev->queue); /* nothing queued may still use it */
  ocl_memory_free(ctx, (cl_mem)mem);
  if (b->live_buffers) b->live_buffers--;
}

/* A cl_mem of this context holding at least `bytes`: a handle that is not a buffer, or
 * belongs to another OpenCL context, is refused before any kernel sees it. */
static adamjit_status ocl_mem_check(adamjit_context* ctx, adamjit_mem mem, size_t bytes, const char* what) {
  ocl_backend* b = ocl_of(ctx);
  /* Under the ICD loader every OpenCL object begins with its driver's dispatch table, and
   * the loader follows it without checks: a host pointer passed as a cl_mem would crash
   * inside clGetMemObjectInfo. Objects of our driver share our context's table. */
  if (*(void* const*)mem != *(void* const*)b->dev->context)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "%s: not an OpenCL buffer of %s", what, b->dev->info.platform);
  cl_mem_object_type type = 0;
  cl_context owner = NULL;
  size_t size = 0;
  cl_int err = b->cl->clGetMemObjectInfo((cl_mem)mem, CL_MEM_TYPE, sizeof type, &type, NULL);
  if (err == CL_SUCCESS) err = b->cl->clGetMemObjectInfo((cl_mem)mem, CL_MEM_CONTEXT, sizeof owner, &owner, NULL);
  if (err == CL_SUCCESS) err = b->cl->clGetMemObjectInfo((cl_mem)mem, CL_MEM_SIZE, sizeof size, &size, NULL);
  if (err != CL_SUCCESS || type != CL_MEM_OBJECT_BUFFER)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "%s: not an OpenCL buffer (%s)", what,
                   err != CL_SUCCESS ? aj_opencl_error_name(err) : "an image");
  if (owner != b->dev->context)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "%s: a buffer of another OpenCL context", what);
  if (size < bytes)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_SIZE, "%s: %zu bytes needed but the buffer holds %zu", what, bytes, size);
  return ADAMJIT_OK;
}

static adamjit_status ocl_mem_write(adamjit_context* ctx, adamjit_mem dst, size_t offset, const void* src,
                                    size_t bytes) {
  ocl_backend* b = ocl_of(ctx);
  cl_int err = b->cl->clEnqueueWriteBuffer(b->dev->queue, (cl_mem)dst, CL_TRUE, offset, bytes, src, 0, NULL, NULL);
  return aj_opencl_check(ctx, err, "clEnqueueWriteBuffer");
}

static adamjit_status ocl_mem_read(adamjit_context* ctx, void* dst, adamjit_mem src, size_t offset, size_t bytes) {
  ocl_backend* b = ocl_of(ctx);
  cl_int err = b->cl->clEnqueueReadBuffer(b->dev->queue, (cl_mem)src, CL_TRUE, offset, bytes, dst, 0, NULL, NULL);
  return aj_opencl_check(ctx, err, "clEnqueueReadBuffer");
}

static adamjit_status ocl_mem_copy(adamjit_context* ctx, adamjit_mem dst, size_t dst_offset, adamjit_mem src,
                                   size_t src_offset, size_t bytes) {
  ocl_backend* b = ocl_of(ctx);
  cl_int err = b->cl->clEnqueueCopyBuffer(b->dev->queue, (cl_mem)src, (cl_mem)dst, src_offset, dst_offset, bytes, 0,
                                          NULL, NULL);
  return aj_opencl_check(ctx, err, "clEnqueueCopyBuffer");
}

static adamjit_status ocl_synchronize(adamjit_context* ctx) {
  ocl_backend* b = ocl_of(ctx);
  return aj_opencl_check(ctx, b->cl->clFinish(b->dev->queue), "clFinish");
}

/* The entry points of a program: the family's kernel (jit/render.h), and for adamw8 with one
 * absmax per tensor (b=0) the three kernels of its other passes (kernel_templates/adamw8.lua). */
static int program_entries(const aj_variant* v, const char** names) {
  const int n = aj_render_kernel_names(v, names, OCL_MAX_ENTRIES);
  return n > OCL_MAX_ENTRIES ? OCL_MAX_ENTRIES : n < 0 ? 0 : n;
}

/* Builds v's program and creates its kernels; on failure nothing is added. */
static adamjit_status load_program(adamjit_context* ctx, const aj_variant* v, ocl_program** out) {
  ocl_backend* b = ocl_of(ctx);
  if (b->n_programs == b->cap_programs) {
    int cap = b->cap_programs ? 2 * b->cap_programs : 16;
    ocl_program* grown = realloc(b->programs, (size_t)cap * sizeof *grown);
    if (!grown) return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "opencl backend: out of host memory");
    b->programs = grown;
    b->cap_programs = cap;
  }
  aj_jit* jit = NULL;
  adamjit_status st = aj_context_jit(ctx, &jit);
  aj_cl_program prog;
  memset(&prog, 0, sizeof prog);
  if (!st) st = aj_jit_opencl(jit, b->dev, v, 1, &prog, NULL);
  if (st) return st;
  ocl_program p;
  memset(&p, 0, sizeof p);
  p.variant = *v;
  p.n_kernels = program_entries(v, p.names);
  char key[AJ_VARIANT_TEXT_MAX];
  aj_variant_format(v, key, sizeof key);
  for (int k = 0; k < p.n_kernels && !st; k++) {
    cl_int err = CL_SUCCESS;
    p.kernels[k] = b->cl->clCreateKernel(prog.program, p.names[k], &err);
    if (!p.kernels[k] || err != CL_SUCCESS) {
      p.kernels[k] = NULL;
      st = aj_fail(ctx, ADAMJIT_ERR_TEMPLATE, "%s: the program has no kernel %s (%s): was the template edited?", key,
                   p.names[k], aj_opencl_error_name(err));
      break;
    }
    size_t max_wg = 0;
    err = b->cl->clGetKernelWorkGroupInfo(p.kernels[k], b->dev->device, CL_KERNEL_WORK_GROUP_SIZE, sizeof max_wg,
                                          &max_wg, NULL);
    if (err == CL_SUCCESS && max_wg < (size_t)v->wg_size)
      st = aj_fail(ctx, ADAMJIT_ERR_UNSUPPORTED, "%s: %s runs at most %zu work-items per group on %s, the key asks %d",
                   key, p.names[k], max_wg, b->dev->info.name, v->wg_size);
  }
  if (st) {
    for (int k = 0; k < p.n_kernels; k++)
      if (p.kernels[k]) b->cl->clReleaseKernel(p.kernels[k]);
    aj_opencl_program_free(&prog);
    return st;
  }
  p.program = prog.program;
  prog.program = NULL; /* kept by the table */
  aj_opencl_program_free(&prog);
  b->programs[b->n_programs] = p;
  *out = &b->programs[b->n_programs++];
  return ADAMJIT_OK;
}

adamjit_status ocl_kernel(adamjit_context* ctx, const aj_variant* v, const char* entry, cl_kernel* out) {
  ocl_backend* b = ocl_of(ctx);
  if (!entry) entry = aj_render_kernel_name(v);
  ocl_program* p = NULL;
  for (int i = 0; i < b->n_programs && !p; i++)
    if (aj_variant_equal(&b->programs[i].variant, v)) p = &b->programs[i];
  if (!p) {
    adamjit_status st = load_program(ctx, v, &p);
    if (st) return st;
  }
  for (int k = 0; k < p->n_kernels; k++)
    if (strcmp(p->names[k], entry) == 0) {
      *out = p->kernels[k];
      return ADAMJIT_OK;
    }
  return aj_fail(ctx, ADAMJIT_ERR_INTERNAL, "opencl backend: no entry %s in the program of %s", entry,
                 aj_kernel_family_name(v->family));
}

static struct aj_cl_device* ocl_device_of(adamjit_context* ctx) { return ocl_of(ctx)->dev; }

/* cl_nv_device_attribute_query (not in every cl_ext.h) */
#define AJ_CL_DEVICE_COMPUTE_CAPABILITY_MAJOR_NV 0x4000
#define AJ_CL_DEVICE_COMPUTE_CAPABILITY_MINOR_NV 0x4001

/* NVIDIA's "sm_XY" where the driver tells it: the same architecture name as the CUDA
 * backend's, so one measurement campaign's vocabulary serves both dialects' entries. */
static int nv_arch(ocl_backend* b, char* out, size_t size) {
  size_t n = 0;
  cl_device_id d = b->dev->device;
  if (b->cl->clGetDeviceInfo(d, CL_DEVICE_EXTENSIONS, 0, NULL, &n) != CL_SUCCESS || n == 0) return 0;
  char* ext = malloc(n + 1);
  int ok = ext && b->cl->clGetDeviceInfo(d, CL_DEVICE_EXTENSIONS, n, ext, NULL) == CL_SUCCESS;
  if (ok) {
    ext[n] = '\0';
    ok = strstr(ext, "cl_nv_device_attribute_query") != NULL;
  }
  free(ext);
  cl_uint major = 0, minor = 0;
  ok = ok &&
       b->cl->clGetDeviceInfo(d, AJ_CL_DEVICE_COMPUTE_CAPABILITY_MAJOR_NV, sizeof major, &major, NULL) == CL_SUCCESS &&
       b->cl->clGetDeviceInfo(d, AJ_CL_DEVICE_COMPUTE_CAPABILITY_MINOR_NV, sizeof minor, &minor, NULL) == CL_SUCCESS &&
       major > 0;
  if (ok) snprintf(out, size, "sm_%u%u", (unsigned)major, (unsigned)minor);
  return ok;
}

/* Truncating copy: identity fields are shorter than the driver strings' buffers. */
static void copy_text(char* dst, size_t size, const char* src) {
  size_t n = strnlen(src, size - 1);
  memcpy(dst, src, n);
  dst[n] = '\0';
}

/* Other devices have no architecture name OpenCL reports; the platform (which names the
 * driver family: PoCL, Intel, AMD ...) and the device type stand in for it. */
static adamjit_status ocl_tuning_identity(adamjit_context* ctx, adamjit_tuning_device* out) {
  ocl_backend* b = ocl_of(ctx);
  const aj_cl_device_info* info = &b->dev->info;
  snprintf(out->dialect, sizeof out->dialect, "opencl");
  copy_text(out->vendor, sizeof out->vendor, info->vendor);
  copy_text(out->device, sizeof out->device, info->name);
  if (!nv_arch(b, out->architecture, sizeof out->architecture)) {
    const char* type = (info->type & CL_DEVICE_TYPE_GPU)           ? "gpu"
                       : (info->type & CL_DEVICE_TYPE_CPU)         ? "cpu"
                       : (info->type & CL_DEVICE_TYPE_ACCELERATOR) ? "accelerator"
                                                                   : "other";
    char arch[AJ_CL_STR_LEN + 16];
    snprintf(arch, sizeof arch, "%s %s", info->platform, type);
    copy_text(out->architecture, sizeof out->architecture, arch);
  }
  return ADAMJIT_OK;
}

static adamjit_status ocl_step(adamjit_context* ctx, aj_step_item* items, int n, uint64_t* nonfinite) {
  return aj_gpu_step(ctx, &aj_opencl_gpu_device, &ocl_of(ctx)->bufs, AJ_DIALECT_OPENCL, items, n, nonfinite);
}

static adamjit_status ocl_read_nonfinite(adamjit_context* ctx, uint64_t* nonfinite) {
  return aj_gpu_read_nonfinite(ctx, &aj_opencl_gpu_device, &ocl_of(ctx)->bufs, nonfinite);
}

static adamjit_status ocl_quantize(adamjit_context* ctx, const aj_quant_job* job) {
  return aj_gpu_quantize(ctx, &aj_opencl_gpu_device, &ocl_of(ctx)->bufs, AJ_DIALECT_OPENCL, job, 1);
}

static adamjit_status ocl_dequantize(adamjit_context* ctx, const aj_quant_job* job) {
  return aj_gpu_quantize(ctx, &aj_opencl_gpu_device, &ocl_of(ctx)->bufs, AJ_DIALECT_OPENCL, job, 0);
}

const aj_backend_ops aj_opencl_backend = {
    .kind = ADAMJIT_BACKEND_OPENCL,
    .probe = ocl_probe,
    .auto_ok = ocl_auto_ok,
    .device_count = ocl_device_count,
    .device_name = ocl_device_name,
    .init = ocl_init,
    .shutdown = ocl_shutdown,
    .mem_alloc = ocl_mem_alloc,
    .mem_free = ocl_mem_free,
    .mem_write = ocl_mem_write,
    .mem_read = ocl_mem_read,
    .mem_copy = ocl_mem_copy,
    .mem_check = ocl_mem_check,
    .synchronize = ocl_synchronize,
    .step = ocl_step,
    .read_nonfinite = ocl_read_nonfinite,
    .quantize = ocl_quantize,
    .dequantize = ocl_dequantize,
    .opencl_device = ocl_device_of,
    .tuning_identity = ocl_tuning_identity,
};
