/* The CUDA backend: device and context choice, memory (device and managed), the module
 * table, and the step. Its kernels are the run-time rendered templates (jit/), compiled by
 * NVRTC for the device's architecture and launched through backends/gpu/ (cuda_device.c);
 * libcuda.so.1 is loaded with dlopen (cuda_driver.c), so a machine without the driver gets
 * BACKEND_UNAVAILABLE with the reason.
 *
 * Memory handles are CUdeviceptr cast through uintptr_t. Every command goes to one stream
 * (the caller's CUstream, or our own non-blocking one), so stream order alone keeps a step
 * correct, and a step enqueues everything without waiting for the device.
 *
 * The CUDA context: the caller's current one when there is one (and it is on the device
 * asked for), else the device's primary context, the one the CUDA runtime and frameworks
 * such as PyTorch use, so pointers from them are valid here. It is pushed around every call
 * (when it is not already current) and popped after, so the library never changes which
 * context is current on the caller's thread, and any thread may use the adamjit context. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cuda/cuda_internal.h"
#include "core/internal.h"
#include "jit/engine.h"
#include "jit/nvrtc.h"
#include "jit/render.h"

/* ------------------------------------------------------------ context-less queries */

static adamjit_status cu_probe(char* why, size_t why_size) {
  adamjit_status st = aj_cuda_available(why, why_size);
  if (st) return st;
  const aj_cuda_api_table* cu = aj_cuda_api();
  int count = 0;
  CUresult r = cu->cuDeviceGetCount(&count);
  if (r != CUDA_SUCCESS) {
    snprintf(why, why_size, "cuDeviceGetCount failed: %s (%d)", aj_cuda_error_name(r), (int)r);
    return aj_cuda_status(r) == ADAMJIT_ERR_DRIVER ? ADAMJIT_ERR_DRIVER : ADAMJIT_ERR_BACKEND_UNAVAILABLE;
  }
  if (count <= 0) {
    snprintf(why, why_size, "the driver (%s) sees no CUDA device", aj_cuda_library());
    return ADAMJIT_ERR_BACKEND_UNAVAILABLE;
  }
  return ADAMJIT_OK;
}

static adamjit_status cu_device_count(int* count, char* why, size_t why_size) {
  adamjit_status st = aj_cuda_available(why, why_size);
  if (st) return st;
  CUresult r = aj_cuda_api()->cuDeviceGetCount(count);
  if (r != CUDA_SUCCESS) {
    snprintf(why, why_size, "cuDeviceGetCount failed: %s (%d)", aj_cuda_error_name(r), (int)r);
    return aj_cuda_status(r);
  }
  return ADAMJIT_OK;
}

/* "sm_90" from the device's compute capability. */
static CUresult device_arch(const aj_cuda_api_table* cu, CUdevice dev, char* arch, size_t size) {
  int major = 0, minor = 0;
  CUresult r = cu->cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev);
  if (r == CUDA_SUCCESS) r = cu->cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev);
  if (r == CUDA_SUCCESS) snprintf(arch, size, "sm_%d%d", major, minor);
  return r;
}

/* "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" */
static CUresult describe_device(const aj_cuda_api_table* cu, int index, char* out, size_t size) {
  CUdevice dev = 0;
  char name[256] = "", arch[16] = "";
  size_t total = 0;
  CUresult r = cu->cuDeviceGet(&dev, index);
  if (r == CUDA_SUCCESS) r = cu->cuDeviceGetName(name, (int)sizeof name, dev);
  if (r == CUDA_SUCCESS) r = device_arch(cu, dev, arch, sizeof arch);
  if (r == CUDA_SUCCESS) r = cu->cuDeviceTotalMem(&total, dev);
  if (r == CUDA_SUCCESS)
    snprintf(out, size, "%s (%s, %.1f GiB)", name, arch, (double)total / (1024.0 * 1024.0 * 1024.0));
  return r;
}

static adamjit_status cu_device_name(int index, char* name, size_t size, char* why, size_t why_size) {
  int count = 0;
  adamjit_status st = cu_device_count(&count, why, why_size);
  if (st) return st;
  if (index < 0 || index >= count) {
    snprintf(why, why_size, "device index %d out of range (%d CUDA devices)", index, count);
    return ADAMJIT_ERR_INVALID_INDEX;
  }
  CUresult r = describe_device(aj_cuda_api(), index, name, size);
  if (r != CUDA_SUCCESS) {
    snprintf(why, why_size, "device %d: %s (%d)", index, aj_cuda_error_name(r), (int)r);
    return aj_cuda_status(r);
  }
  return ADAMJIT_OK;
}

/* ------------------------------------------------------------ current context */

/* Makes the backend's context current for one call, unless it already is. */
typedef struct cu_scope {
  int pushed;
} cu_scope;

static adamjit_status cu_enter(adamjit_context* ctx, cu_scope* s) {
  cu_backend* b = cu_of(ctx);
  s->pushed = 0;
  CUcontext cur = NULL;
  if (b->cu->cuCtxGetCurrent(&cur) == CUDA_SUCCESS && cur == b->context) return ADAMJIT_OK;
  adamjit_status st = aj_cuda_check(ctx, b->cu->cuCtxPushCurrent(b->context), "cuCtxPushCurrent");
  s->pushed = !st;
  return st;
}

static void cu_leave(adamjit_context* ctx, cu_scope* s) {
  if (!s->pushed) return;
  CUcontext popped = NULL;
  cu_of(ctx)->cu->cuCtxPopCurrent(&popped);
  s->pushed = 0;
}

/* ------------------------------------------------------------ init and shutdown */

/* The device the descriptor names: by name substring (ignoring case), else by index. */
static adamjit_status select_device(adamjit_context* ctx, const adamjit_context_desc* desc, CUdevice* out) {
  const aj_cuda_api_table* cu = cu_of(ctx)->cu;
  int count = 0;
  adamjit_status st = aj_cuda_check(ctx, cu->cuDeviceGetCount(&count), "cuDeviceGetCount");
  if (st) return st;
  if (desc->device_name && *desc->device_name) {
    /* a number would read as an index elsewhere; the name field means a name */
    int all_digits = 1;
    for (const char* c = desc->device_name; *c; c++) all_digits &= isdigit((unsigned char)*c) != 0;
    if (all_digits)
      return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE,
                     "adamjit_context_desc.device_name \"%s\" is a number; use device_index", desc->device_name);
    char list[1024] = "";
    for (int i = 0; i < count; i++) {
      char name[256] = "";
      CUdevice dev = 0;
      st = aj_cuda_check(ctx, cu->cuDeviceGet(&dev, i), "cuDeviceGet");
      if (!st) st = aj_cuda_check(ctx, cu->cuDeviceGetName(name, (int)sizeof name, dev), "cuDeviceGetName");
      if (st) return st;
      if (strcasestr(name, desc->device_name)) {
        *out = dev;
        return ADAMJIT_OK;
      }
      size_t used = strlen(list);
      snprintf(list + used, sizeof list - used, "%s%d: %s", i ? ", " : "", i, name);
    }
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "no CUDA device name contains \"%s\" (devices: %s)",
                   desc->device_name, list);
  }
  if (desc->device_index < 0 || desc->device_index >= count)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_INDEX,
                   "adamjit_context_desc.device_index = %d out of range (%d CUDA devices)", desc->device_index, count);
  return aj_cuda_check(ctx, cu->cuDeviceGet(out, desc->device_index), "cuDeviceGet");
}

/* The device of a context (which need not be current). */
static adamjit_status context_device(adamjit_context* ctx, CUcontext c, CUdevice* out) {
  const aj_cuda_api_table* cu = cu_of(ctx)->cu;
  adamjit_status st = aj_cuda_check(ctx, cu->cuCtxPushCurrent(c), "cuCtxPushCurrent");
  if (st) return st;
  st = aj_cuda_check(ctx, cu->cuCtxGetDevice(out), "cuCtxGetDevice");
  CUcontext popped = NULL;
  cu->cuCtxPopCurrent(&popped);
  return st;
}

/* A caller's context that is its device's primary context is retained too, so that this
 * adamjit context keeps it alive however the caller's own references end. Any other
 * context (cuCtxCreate) has no reference count: the caller must keep it for as long as the
 * adamjit context. The primary context is only looked at when it is active: retaining an
 * inactive one would create it. */
static void hold_if_primary(cu_backend* b) {
  const aj_cuda_api_table* cu = b->cu;
  unsigned flags = 0;
  int active = 0;
  CUcontext primary = NULL;
  if (cu->cuDevicePrimaryCtxGetState(b->device, &flags, &active) != CUDA_SUCCESS || !active) return;
  if (cu->cuDevicePrimaryCtxRetain(&primary, b->device) != CUDA_SUCCESS) return;
  if (primary == b->context)
    b->retained_primary = 1;
  else
    cu->cuDevicePrimaryCtxRelease(b->device);
}

/* Chooses device, context and stream (see the top of the file). */
static adamjit_status choose_context(adamjit_context* ctx, const adamjit_context_desc* desc) {
  cu_backend* b = cu_of(ctx);
  const aj_cuda_api_table* cu = b->cu;
  const int explicit_device = (desc->device_name && *desc->device_name) || desc->device_index != 0;
  adamjit_status st;
  if (desc->queue) {
    /* Everything runs on the caller's stream, so its context and device are the ones. */
    b->stream = (CUstream)desc->queue;
    st = aj_cuda_check(ctx, cu->cuStreamGetCtx(b->stream, &b->context), "cuStreamGetCtx (adamjit_context_desc.queue)");
    if (!st && !b->context)
      st = aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "adamjit_context_desc.queue: the stream has no CUDA context");
    if (!st) st = context_device(ctx, b->context, &b->device);
    if (!st) {
      b->context_kind = "the stream's";
      hold_if_primary(b);
    }
    if (st || !explicit_device) return st;
    CUdevice want = 0;
    st = select_device(ctx, desc, &want);
    if (!st && want != b->device)
      st = aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE,
                   "adamjit_context_desc.queue is a stream of CUDA device %d, but the descriptor names device %d",
                   (int)b->device, (int)want);
    return st;
  }
  st = select_device(ctx, desc, &b->device);
  if (st) return st;
  CUcontext cur = NULL;
  if (cu->cuCtxGetCurrent(&cur) == CUDA_SUCCESS && cur) {
    CUdevice cur_dev = 0;
    st = aj_cuda_check(ctx, cu->cuCtxGetDevice(&cur_dev), "cuCtxGetDevice (the current context)");
    if (st) return st;
    if (!explicit_device || cur_dev == b->device) {
      b->device = cur_dev;
      b->context = cur;
      b->context_kind = "the caller's current";
      hold_if_primary(b);
      return ADAMJIT_OK;
    }
  }
  st = aj_cuda_check(ctx, cu->cuDevicePrimaryCtxRetain(&b->context, b->device), "cuDevicePrimaryCtxRetain");
  b->retained_primary = !st;
  b->context_kind = "the primary";
  return st;
}

static void cu_shutdown(adamjit_context* ctx);

static adamjit_status cu_init(adamjit_context* ctx, const adamjit_context_desc* desc) {
  cu_backend* b = calloc(1, sizeof *b);
  if (!b) return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "cuda backend: out of host memory");
  ctx->bdata = b;
  b->cu = aj_cuda_api();
  if (!b->cu) {
    char why[AJ_ERR_LEN];
    aj_cuda_available(why, sizeof why);
    free(b);
    ctx->bdata = NULL;
    return aj_fail(ctx, ADAMJIT_ERR_BACKEND_UNAVAILABLE, "CUDA is unavailable: %s", why);
  }
  adamjit_status st = choose_context(ctx, desc);
  cu_scope scope = {0};
  if (!st) st = cu_enter(ctx, &scope);
  const aj_cuda_api_table* cu = b->cu;
  if (!st) {
    b->ordinal = (int)b->device;
    st = aj_cuda_check(ctx, device_arch(cu, b->device, b->arch, sizeof b->arch), "cuDeviceGetAttribute");
  }
  if (!st)
    st = aj_cuda_check(ctx,
                       cu->cuDeviceGetAttribute(&b->concurrent_managed, CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS,
                                                b->device),
                       "cuDeviceGetAttribute");
  if (!st) st = aj_cuda_check(ctx, cu->cuDeviceGetName(b->name, (int)sizeof b->name, b->device), "cuDeviceGetName");
  if (!st && !b->stream) {
    /* Non-blocking: the legacy default stream that other code may use does not serialize us. */
    st = aj_cuda_check(ctx, cu->cuStreamCreate(&b->stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
    b->own_stream = !st;
  }
  adamjit_mem* slots[AJ_GPU_BUFFER_COUNT];
  size_t bytes[AJ_GPU_BUFFER_COUNT];
  aj_gpu_buffers_list(&b->bufs, slots, bytes);
  for (int i = 0; i < AJ_GPU_BUFFER_COUNT && !st; i++) {
    CUdeviceptr p = 0;
    st = aj_cuda_check(ctx, cu->cuMemAlloc(&p, bytes[i]), "cuMemAlloc (step buffers)");
    *slots[i] = cu_mem(p);
  }
  void* host = NULL;
  if (!st)
    st = aj_cuda_check(ctx, cu->cuMemAllocHost(&host, CU_STAGE_CHUNKS * CU_STAGE_CHUNK_BYTES),
                       "cuMemAllocHost (staging)");
  b->stage.host = host;
  for (int i = 0; i < CU_STAGE_CHUNKS && !st; i++)
    st = aj_cuda_check(ctx, cu->cuEventCreate(&b->stage.done[i], CU_EVENT_DISABLE_TIMING), "cuEventCreate");
  host = NULL;
  if (!st) st = aj_cuda_check(ctx, cu->cuMemAllocHost(&host, CU_READBACK_BYTES), "cuMemAllocHost (read-back)");
  b->readback = host;
  cu_leave(ctx, &scope);
  if (st) {
    /* keep the reason: shutdown's own calls must not overwrite it */
    char why[AJ_ERR_LEN];
    snprintf(why, sizeof why, "%s", ctx->err);
    cu_shutdown(ctx);
    snprintf(ctx->err, sizeof ctx->err, "%s", why);
    return st;
  }
  if (b->concurrent_managed && !cu->cuMemPrefetchAsync)
    aj_log(ctx, ADAMJIT_LOG_INFO,
           "cuda backend: the driver (CUDA %d.%d) has no cuMemPrefetchAsync with locations: paged state migrates on "
           "demand",
           cu->driver_version / 1000, cu->driver_version % 1000 / 10);
  aj_log(ctx, ADAMJIT_LOG_INFO, "cuda backend on device %d, %s (%s), driver CUDA %d.%d, %s context, %s stream",
         b->ordinal, b->name, b->arch, cu->driver_version / 1000, cu->driver_version % 1000 / 10, b->context_kind,
         b->own_stream ? "its own" : "the caller's");
  return ADAMJIT_OK;
}

static void cu_shutdown(adamjit_context* ctx) {
  cu_backend* b = cu_of(ctx);
  if (!b) return;
  const aj_cuda_api_table* cu = b->cu;
  cu_scope scope = {0};
  if (b->context && cu_enter(ctx, &scope) == ADAMJIT_OK) {
    if (b->stream) cu->cuStreamSynchronize(b->stream);
    if (b->live_buffers)
      aj_log(ctx, ADAMJIT_LOG_WARN, "cuda backend: %zu buffers were still allocated when the context was destroyed",
             b->live_buffers);
    for (int i = 0; i < b->n_modules; i++) cu->cuModuleUnload(b->modules[i].module);
    adamjit_mem* slots[AJ_GPU_BUFFER_COUNT];
    size_t bytes[AJ_GPU_BUFFER_COUNT];
    aj_gpu_buffers_list(&b->bufs, slots, bytes);
    for (int i = 0; i < AJ_GPU_BUFFER_COUNT; i++)
      if (*slots[i]) cu->cuMemFree(cu_ptr(*slots[i]));
    for (int i = 0; i < AJ_GPU_SCRATCH_SLOTS; i++)
      if (b->scratch[i].ptr) cu->cuMemFree(b->scratch[i].ptr);
    cu_after_wait(b); /* frees retired scratch */
    for (int i = 0; i < CU_STAGE_CHUNKS; i++)
      if (b->stage.done[i]) cu->cuEventDestroy(b->stage.done[i]);
    if (b->stage.host) cu->cuMemFreeHost(b->stage.host);
    if (b->readback) cu->cuMemFreeHost(b->readback);
    if (b->own_stream) cu->cuStreamDestroy(b->stream);
    cu_leave(ctx, &scope);
  }
  if (b->retained_primary) cu->cuDevicePrimaryCtxRelease(b->device);
  free(b->modules);
  free(b->retired);
  free(b);
  ctx->bdata = NULL;
}

/* ------------------------------------------------------------ memory */

static size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

/* Zero-filled memory. Paged: managed memory (SPEC 5), never more than the device has free,
 * so that paged state never pushes the device into oversubscription by itself. The fill is
 * waited for: the memory may be used on another stream right after (adamjit_mem_alloc). */
static adamjit_status cu_mem_alloc(adamjit_context* ctx, size_t bytes, int paged, adamjit_mem* out,
                                   adamjit_memory_kind* kind) {
  cu_backend* b = cu_of(ctx);
  const aj_cuda_api_table* cu = b->cu;
  cu_scope scope;
  adamjit_status st = cu_enter(ctx, &scope);
  if (st) return st;
  CUdeviceptr p = 0;
  if (paged) {
    size_t free_bytes = 0, total = 0;
    st = aj_cuda_check(ctx, cu->cuMemGetInfo(&free_bytes, &total), "cuMemGetInfo");
    if (!st && align_up(bytes, 2u << 20) > free_bytes)
      st = aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY,
                   "cuda: paged state of %zu bytes: device %d has only %zu of %zu bytes free (managed memory is never "
                   "allocated beyond the device's free memory)",
                   bytes, b->ordinal, free_bytes, total);
    if (!st)
      st = aj_cuda_check(ctx, cu->cuMemAllocManaged(&p, bytes, CU_MEM_ATTACH_GLOBAL), "cuMemAllocManaged");
  } else {
    st = aj_cuda_check(ctx, cu->cuMemAlloc(&p, bytes), "cuMemAlloc");
  }
  if (st) {
    cu_leave(ctx, &scope);
    char detail[AJ_ERR_LEN]; /* ctx->err cannot be both the message and an argument */
    snprintf(detail, sizeof detail, "%s", ctx->err);
    return aj_fail(ctx, st, "cuda: cannot allocate %zu bytes (%s)", bytes, detail);
  }
  st = aj_cuda_check(ctx, cu->cuMemsetD8Async(p, 0, bytes, b->stream), "cuMemsetD8Async");
  if (!st) st = cu_wait(ctx);
  if (st) {
    cu->cuMemFree(p);
  } else {
    b->live_buffers++;
    *out = cu_mem(p);
    *kind = paged ? ADAMJIT_MEMORY_PAGED : ADAMJIT_MEMORY_DEVICE;
  }
  cu_leave(ctx, &scope);
  return st;
}

static void cu_mem_free(adamjit_context* ctx, adamjit_mem mem) {
  cu_backend* b = cu_of(ctx);
  cu_scope scope;
  if (cu_enter(ctx, &scope)) return;
  cu_wait(ctx); /* nothing queued may still use it */
  if (b->cu->cuMemFree(cu_ptr(mem)) == CUDA_SUCCESS && b->live_buffers) b->live_buffers--;
  cu_leave(ctx, &scope);
}

/* The bytes from p to the end of its allocation, when p is CUDA memory the device can
 * address: cuMemAlloc and managed memory (cuMemGetAddressRange), else a range the virtual
 * memory API mapped (cuMemMap, what allocators with expandable segments hand out), which
 * cuMemGetAddressRange need not know; for those the driver reports the reserved range, so
 * the check there is as good as the caller's mapping. 0 when p is none of those (a host
 * pointer). Booleans come back in an int: the driver writes one byte or four. */
static size_t bytes_from(const aj_cuda_api_table* cu, CUdeviceptr p) {
  CUdeviceptr base = 0;
  size_t size = 0;
  if (cu->cuMemGetAddressRange(&base, &size, p) == CUDA_SUCCESS && p >= base && p - base < size)
    return size - (size_t)(p - base);
  int mapped = 0;
  base = 0;
  size = 0;
  if (cu->cuPointerGetAttribute(&mapped, CU_POINTER_ATTRIBUTE_MAPPED, p) == CUDA_SUCCESS && mapped &&
      cu->cuPointerGetAttribute(&base, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, p) == CUDA_SUCCESS &&
      cu->cuPointerGetAttribute(&size, CU_POINTER_ATTRIBUTE_RANGE_SIZE, p) == CUDA_SUCCESS && p >= base &&
      p - base < size)
    return size - (size_t)(p - base);
  return 0;
}

/* CUDA memory holding at least `bytes` from the handle on, on this context's device: a
 * host pointer, a pointer past its allocation's end, or another device's memory is
 * refused before any kernel sees it. */
static adamjit_status cu_mem_check(adamjit_context* ctx, adamjit_mem mem, size_t bytes, const char* what) {
  cu_backend* b = cu_of(ctx);
  const aj_cuda_api_table* cu = b->cu;
  cu_scope scope;
  adamjit_status st = cu_enter(ctx, &scope);
  if (st) return st;
  CUdeviceptr p = cu_ptr(mem);
  size_t avail = bytes_from(cu, p);
  if (avail == 0) {
    st = aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE,
                 "%s: 0x%llx is not CUDA device memory (a host pointer? on the CUDA backend params and grads are "
                 "CUdeviceptr)",
                 what, (unsigned long long)p);
  } else if (avail < bytes) {
    st = aj_fail(ctx, ADAMJIT_ERR_INVALID_SIZE, "%s: %zu bytes needed but its allocation holds %zu from 0x%llx", what,
                 bytes, avail, (unsigned long long)p);
  } else {
    int managed = 0, ordinal = -1;
    if (cu->cuPointerGetAttribute(&managed, CU_POINTER_ATTRIBUTE_IS_MANAGED, p) != CUDA_SUCCESS) managed = 0;
    if (!managed && cu->cuPointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, p) == CUDA_SUCCESS &&
        ordinal >= 0 && ordinal != b->ordinal)
      st = aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "%s: memory of CUDA device %d, but this context runs on device %d",
                   what, ordinal, b->ordinal);
  }
  cu_leave(ctx, &scope);
  return st;
}

static adamjit_status cu_mem_write(adamjit_context* ctx, adamjit_mem dst, size_t offset, const void* src,
                                   size_t bytes) {
  cu_backend* b = cu_of(ctx);
  cu_scope scope;
  adamjit_status st = cu_enter(ctx, &scope);
  if (st) return st;
  st = aj_cuda_check(ctx, b->cu->cuMemcpyHtoDAsync(cu_ptr(dst) + offset, src, bytes, b->stream), "cuMemcpyHtoDAsync");
  if (!st) st = cu_wait(ctx);
  cu_leave(ctx, &scope);
  return st;
}

static adamjit_status cu_mem_read(adamjit_context* ctx, void* dst, adamjit_mem src, size_t offset, size_t bytes) {
  cu_backend* b = cu_of(ctx);
  cu_scope scope;
  adamjit_status st = cu_enter(ctx, &scope);
  if (st) return st;
  st = aj_cuda_check(ctx, b->cu->cuMemcpyDtoHAsync(dst, cu_ptr(src) + offset, bytes, b->stream), "cuMemcpyDtoHAsync");
  if (!st) st = cu_wait(ctx);
  cu_leave(ctx, &scope);
  return st;
}

/* Enqueued on the stream like a kernel: no wait (adamjit_context_synchronize waits). */
static adamjit_status cu_mem_copy(adamjit_context* ctx, adamjit_mem dst, size_t dst_offset, adamjit_mem src,
                                  size_t src_offset, size_t bytes) {
  cu_backend* b = cu_of(ctx);
  cu_scope scope;
  adamjit_status st = cu_enter(ctx, &scope);
  if (st) return st;
  st = aj_cuda_check(ctx,
                     b->cu->cuMemcpyDtoDAsync(cu_ptr(dst) + dst_offset, cu_ptr(src) + src_offset, bytes, b->stream),
                     "cuMemcpyDtoDAsync");
  cu_leave(ctx, &scope);
  return st;
}

static adamjit_status cu_synchronize(adamjit_context* ctx) {
  cu_scope scope;
  adamjit_status st = cu_enter(ctx, &scope);
  if (st) return st;
  st = cu_wait(ctx);
  cu_leave(ctx, &scope);
  return st;
}

/* ------------------------------------------------------------ modules */

/* Loads v's module and finds its kernels; on failure nothing is added. */
static adamjit_status load_module(adamjit_context* ctx, const aj_variant* v, cu_module** out) {
  cu_backend* b = cu_of(ctx);
  const aj_cuda_api_table* cu = b->cu;
  if (b->n_modules == b->cap_modules) {
    int cap = b->cap_modules ? 2 * b->cap_modules : 16;
    cu_module* grown = realloc(b->modules, (size_t)cap * sizeof *grown);
    if (!grown) return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "cuda backend: out of host memory");
    b->modules = grown;
    b->cap_modules = cap;
  }
  aj_jit* jit = NULL;
  aj_cuda_binary bin;
  memset(&bin, 0, sizeof bin);
  adamjit_status st = aj_context_jit(ctx, &jit);
  if (!st) st = aj_jit_cuda(jit, v, b->arch, 1, &bin, NULL);
  if (st) return st;
  char key[AJ_VARIANT_TEXT_MAX];
  aj_variant_format(v, key, sizeof key);
  cu_module m;
  memset(&m, 0, sizeof m);
  m.variant = *v;
  CUresult r = cu->cuModuleLoadData(&m.module, bin.data);
  if (r != CUDA_SUCCESS) {
    st = aj_cuda_check(ctx, r, "cuModuleLoadData");
    char detail[AJ_ERR_LEN]; /* ctx->err cannot be both the message and an argument */
    snprintf(detail, sizeof detail, "%s", ctx->err);
    /* An NVRTC newer than the driver is the usual cause: say what was loaded, and by whom */
    int nv_major = 0, nv_minor = 0;
    int newer = aj_nvrtc_version(&nv_major, &nv_minor) == ADAMJIT_OK &&
                nv_major * 1000 + nv_minor * 10 > cu->driver_version;
    char hint[160] = "";
    if (newer)
      snprintf(hint, sizeof hint,
               " (NVRTC %d.%d is newer than the driver: update the driver, or point ADAMJIT_NVRTC_LIBRARY at an "
               "NVRTC no newer than CUDA %d.%d)",
               nv_major, nv_minor, cu->driver_version / 1000, cu->driver_version % 1000 / 10);
    st = aj_fail(ctx, st, "%s: the driver (CUDA %d.%d) cannot load the %s for %s: %s%s", key, cu->driver_version / 1000,
                 cu->driver_version % 1000 / 10, bin.is_cubin ? "CUBIN" : "PTX", bin.arch, detail, hint);
    aj_cuda_binary_free(&bin);
    return st;
  }
  aj_cuda_binary_free(&bin);
  m.n_funcs = aj_render_kernel_names(v, m.names, CU_MAX_ENTRIES);
  if (m.n_funcs <= 0 || m.n_funcs > CU_MAX_ENTRIES)
    st = aj_fail(ctx, ADAMJIT_ERR_INTERNAL, "%s: no kernel names for this variant", key);
  for (int k = 0; k < m.n_funcs && !st; k++) {
    r = cu->cuModuleGetFunction(&m.funcs[k], m.module, m.names[k]);
    if (r != CUDA_SUCCESS) {
      st = aj_fail(ctx, ADAMJIT_ERR_TEMPLATE, "%s: the module has no kernel %s (%s): was the template edited?", key,
                   m.names[k], aj_cuda_error_name(r));
      break;
    }
    int max_threads = 0;
    if (cu->cuFuncGetAttribute(&max_threads, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, m.funcs[k]) == CUDA_SUCCESS &&
        max_threads < v->wg_size)
      st = aj_fail(ctx, ADAMJIT_ERR_UNSUPPORTED, "%s: %s runs at most %d threads per block on %s, the key asks %d", key,
                   m.names[k], max_threads, b->name, v->wg_size);
    /* The parameter list, for the launch's check (cuda_device.c): indices until the driver
     * says there is no such parameter. */
    m.n_params[k] = -1;
    if (cu->cuFuncGetParamInfo) {
      int n = 0;
      size_t offset = 0, size = 0;
      while (n <= AJ_GPU_MAX_ARGS && cu->cuFuncGetParamInfo(m.funcs[k], (size_t)n, &offset, &size) == CUDA_SUCCESS) {
        if (n < AJ_GPU_MAX_ARGS) m.param_size[k][n] = (unsigned char)(size < 255 ? size : 255);
        n++;
      }
      m.n_params[k] = n;
    }
  }
  if (st) {
    cu->cuModuleUnload(m.module);
    return st;
  }
  b->modules[b->n_modules] = m;
  *out = &b->modules[b->n_modules++];
  return ADAMJIT_OK;
}

adamjit_status cu_kernel_entry(adamjit_context* ctx, const aj_variant* v, const char* entry, const cu_module** module,
                               int* index) {
  cu_backend* b = cu_of(ctx);
  if (!entry) entry = aj_render_kernel_name(v);
  cu_module* m = NULL;
  for (int i = 0; i < b->n_modules && !m; i++)
    if (aj_variant_equal(&b->modules[i].variant, v)) m = &b->modules[i];
  if (!m) {
    adamjit_status st = load_module(ctx, v, &m);
    if (st) return st;
  }
  for (int k = 0; entry && k < m->n_funcs; k++)
    if (strcmp(m->names[k], entry) == 0) {
      *module = m;
      *index = k;
      return ADAMJIT_OK;
    }
  return aj_fail(ctx, ADAMJIT_ERR_INTERNAL, "cuda backend: no entry %s in the module of %s", entry ? entry : "(null)",
                 aj_kernel_family_name(v->family));
}

/* ------------------------------------------------------------ steps */

/* Bytes of one of a tensor's state buffers (m, v or vmax): fp32 values or 8-bit codes. */
static size_t state_buffer_bytes(const aj_tensor* t) {
  return (size_t)t->numel * (t->state_bits == 32 ? sizeof(float) : 1);
}

/* Enqueues the migration of every paged state buffer of tensors[n] to `loc`. Nothing when
 * the device cannot prefetch managed memory (no concurrent managed access) or the driver
 * lacks the location form: managed memory then moves on demand, with the same results. */
static adamjit_status prefetch_paged(adamjit_context* ctx, const aj_tensor* const* tensors, int n, CUmemLocation loc,
                                     int* done) {
  cu_backend* b = cu_of(ctx);
  *done = 0;
  if (!b->concurrent_managed || !b->cu->cuMemPrefetchAsync) return ADAMJIT_OK;
  for (int i = 0; i < n; i++) {
    const aj_tensor* t = tensors[i];
    if (t->memory != ADAMJIT_MEMORY_PAGED) continue;
    const adamjit_mem bufs[3] = {t->m, t->v, t->vmax};
    for (int k = 0; k < 3; k++) {
      if (!bufs[k]) continue;
      adamjit_status st =
          aj_cuda_check(ctx, b->cu->cuMemPrefetchAsync(cu_ptr(bufs[k]), state_buffer_bytes(t), loc, 0, b->stream),
                        "cuMemPrefetchAsync");
      if (st) return st;
      (*done)++;
    }
  }
  return ADAMJIT_OK;
}

static adamjit_status cu_step(adamjit_context* ctx, aj_step_item* items, int n, uint64_t* nonfinite) {
  cu_backend* b = cu_of(ctx);
  cu_scope scope;
  adamjit_status st = cu_enter(ctx, &scope);
  if (st) return st;
  /* Paged state moves to the device ahead of the kernels, on the same stream; a prefetch
   * changes no value, so a step that fails later has still changed nothing. */
  const aj_tensor** tensors = malloc((size_t)n * sizeof *tensors);
  if (!tensors) st = aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "step: out of host memory");
  for (int i = 0; i < n && !st; i++) tensors[i] = items[i].tensor;
  int moved = 0;
  CUmemLocation to_device = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = b->ordinal};
  if (!st) st = prefetch_paged(ctx, tensors, n, to_device, &moved);
  free(tensors);
  if (!st) st = aj_gpu_step(ctx, &aj_cuda_gpu_device, &b->bufs, AJ_DIALECT_CUDA, items, n, nonfinite);
  cu_leave(ctx, &scope);
  return st;
}

static adamjit_status cu_read_nonfinite(adamjit_context* ctx, uint64_t* nonfinite) {
  cu_scope scope;
  adamjit_status st = cu_enter(ctx, &scope);
  if (st) return st;
  st = aj_gpu_read_nonfinite(ctx, &aj_cuda_gpu_device, &cu_of(ctx)->bufs, nonfinite);
  cu_leave(ctx, &scope);
  return st;
}

static adamjit_status quantize_either(adamjit_context* ctx, const aj_quant_job* job, int quantize) {
  cu_scope scope;
  adamjit_status st = cu_enter(ctx, &scope);
  if (st) return st;
  st = aj_gpu_quantize(ctx, &aj_cuda_gpu_device, &cu_of(ctx)->bufs, AJ_DIALECT_CUDA, job, quantize);
  cu_leave(ctx, &scope);
  return st;
}

static adamjit_status cu_quantize(adamjit_context* ctx, const aj_quant_job* job) {
  return quantize_either(ctx, job, 1);
}

static adamjit_status cu_dequantize(adamjit_context* ctx, const aj_quant_job* job) {
  return quantize_either(ctx, job, 0);
}

static const char* cu_arch(adamjit_context* ctx) { return cu_of(ctx)->arch; }

/* The vendor is fixed and the architecture is what NVRTC compiles for; both were learned at
 * init, so this asks the driver nothing. */
static adamjit_status cu_tuning_identity(adamjit_context* ctx, adamjit_tuning_device* out) {
  cu_backend* b = cu_of(ctx);
  snprintf(out->dialect, sizeof out->dialect, "cuda");
  snprintf(out->vendor, sizeof out->vendor, "NVIDIA");
  snprintf(out->architecture, sizeof out->architecture, "%s", b->arch);
  snprintf(out->device, sizeof out->device, "%s", b->name);
  return ADAMJIT_OK;
}

/* adamjit_optimizer_page_out: paged state to host memory, waited for, so that the device
 * memory it held is free when this returns. */
static adamjit_status cu_page_out(adamjit_context* ctx, const aj_tensor* tensors, int n) {
  cu_backend* b = cu_of(ctx);
  if (!b->concurrent_managed || !b->cu->cuMemPrefetchAsync) {
    aj_log(ctx, ADAMJIT_LOG_INFO,
           "page_out: %s cannot prefetch managed memory (%s); paged state moves to the host when the host needs it",
           b->name, b->concurrent_managed ? "the driver has no cuMemPrefetchAsync with locations"
                                          : "no concurrent managed access");
    return ADAMJIT_OK;
  }
  cu_scope scope;
  adamjit_status st = cu_enter(ctx, &scope);
  if (st) return st;
  const aj_tensor** list = malloc((size_t)(n > 0 ? n : 1) * sizeof *list);
  if (!list) st = aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "page_out: out of host memory");
  for (int i = 0; i < n && !st; i++) list[i] = &tensors[i];
  int moved = 0;
  CUmemLocation to_host = {.type = CU_MEM_LOCATION_TYPE_HOST, .id = 0};
  if (!st) st = prefetch_paged(ctx, list, n, to_host, &moved);
  free(list);
  if (!st) st = cu_wait(ctx);
  if (!st) aj_log(ctx, ADAMJIT_LOG_DEBUG, "page_out: %d paged state buffers moved to host memory", moved);
  cu_leave(ctx, &scope);
  return st;
}

const aj_backend_ops aj_cuda_backend = {
    .kind = ADAMJIT_BACKEND_CUDA,
    .probe = cu_probe,
    .device_count = cu_device_count,
    .device_name = cu_device_name,
    .init = cu_init,
    .shutdown = cu_shutdown,
    .mem_alloc = cu_mem_alloc,
    .mem_free = cu_mem_free,
    .mem_write = cu_mem_write,
    .mem_read = cu_mem_read,
    .mem_copy = cu_mem_copy,
    .mem_check = cu_mem_check,
    .synchronize = cu_synchronize,
    .step = cu_step,
    .read_nonfinite = cu_read_nonfinite,
    .quantize = cu_quantize,
    .dequantize = cu_dequantize,
    .cuda_arch = cu_arch,
    .tuning_identity = cu_tuning_identity,
    .page_out = cu_page_out,
};
