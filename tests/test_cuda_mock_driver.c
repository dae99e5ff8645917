/* A stand-in for libcuda.so.1, so that the CUDA backend's host side runs on machines
 * without a GPU (test_cuda_mock.c loads it through $ADAMJIT_CUDA_LIBRARY). Written from the
 * semantics <cuda.h> documents, strict where the real driver is strict and where a bug in
 * the backend would otherwise go unseen:
 *  - entry points only through cuGetProcAddress_v2, which refuses versions newer than the
 *    driver and says VERSION_NOT_SUFFICIENT for entries newer than the version asked for;
 *  - every call that needs a context fails with CUDA_ERROR_INVALID_CONTEXT when none is
 *    current on the calling thread (a thread-local context stack);
 *  - "device memory" is host memory, but asynchronous work is really deferred: copies,
 *    fills and launches queue on their stream and run only when the stream or an event
 *    recorded on it is synchronized. A host buffer reused before its copy ran, or memory
 *    freed while work on it is queued, shows up (the latter is counted);
 *  - kernels are not executed: a launch is checked (grid, block, a known function, a
 *    live stream) and counted.
 * Counters and the thread's current context are exported for the test (ajmock_state).
 * Behaviour switches, read from the environment: AJMOCK_DRIVER_VERSION (default 13000), AJMOCK_DEVICES
 * (1), AJMOCK_CONCURRENT (1: concurrent managed access), AJMOCK_TOTAL_MB (1024),
 * AJMOCK_PARAM_INFO (0; 1: cuFuncGetParamInfo reports two 8-byte parameters per kernel). */
#include <cuda.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

struct CUctx_st {
  int device;
};
struct CUstream_st {
  struct CUctx_st* ctx;
  struct op* ops;
  size_t n_ops, cap_ops, done; /* ops[0, done) have run */
};
struct CUevent_st {
  struct CUstream_st* stream;
  size_t seq; /* the stream's op count when recorded */
};
struct CUmod_st {
  int functions;
};
struct CUfunc_st {
  char name[128];
};

typedef enum op_kind { OP_COPY, OP_FILL, OP_LAUNCH, OP_PREFETCH } op_kind;
typedef struct op {
  op_kind kind;
  void* dst;
  const void* src;
  size_t bytes;
  unsigned char value;
  int host_source; /* a host -> device copy: its source must not change before it runs */
  uint64_t hash;   /* of the source when it was enqueued */
} op;

typedef struct alloc {
  uintptr_t base;
  size_t size;
  int managed;
  int pinned_host;
} alloc;

/* What the test reads back. */
typedef struct ajmock_counters {
  long syncs;            /* cuStreamSynchronize + cuEventSynchronize */
  long launches;         /* kernels run (when their stream was synchronized) */
  long launches_queued;  /* cuLaunchKernel calls */
  long prefetch_device, prefetch_host;
  long managed_allocs;   /* cuMemAllocManaged calls that succeeded */
  long live_device;      /* cuMemAlloc/cuMemAllocManaged not yet freed */
  long live_pinned;      /* cuMemAllocHost not yet freed */
  long live_streams, live_events, live_modules;
  long primary_refs;     /* cuDevicePrimaryCtxRetain minus Release */
  long free_while_queued; /* cuMemFree of memory that queued work still uses */
  long bad_calls;        /* calls the real driver would refuse (see the counters' uses) */
  long stale_sources;    /* host -> device copies whose source changed before they ran */
  int abi_requested;     /* the highest version cuGetProcAddress was asked for */
  struct CUstream_st* last_launch_stream;
  size_t device_bytes;
} ajmock_counters;

static ajmock_counters counters;
static struct CUctx_st primary = {0};
static __thread CUcontext ctx_stack[16];
static __thread int ctx_depth;
static alloc allocs[8192];
static int n_allocs;
static int driver_version = 13000, n_devices = 1, concurrent = 1, param_info = 0;
static size_t total_bytes = (size_t)1024 << 20;

EXPORT ajmock_counters* ajmock_state(void) { return &counters; }
EXPORT CUcontext ajmock_current(void) { return ctx_depth ? ctx_stack[ctx_depth - 1] : NULL; }

static int env_int(const char* name, int fallback) {
  const char* v = getenv(name);
  return v && *v ? atoi(v) : fallback;
}

static alloc* find(uintptr_t p) {
  for (int i = 0; i < n_allocs; i++)
    if (p >= allocs[i].base && p - allocs[i].base < allocs[i].size) return &allocs[i];
  return NULL;
}

/* The range [p, p + bytes) lies in one allocation. */
static int in_alloc(uintptr_t p, size_t bytes) {
  alloc* a = find(p);
  return a && bytes <= a->size - (p - a->base);
}

#define NEED_CONTEXT() \
  if (!ctx_depth) return CUDA_ERROR_INVALID_CONTEXT

/* ------------------------------------------------------------ queues */

static struct CUstream_st* live_streams[64];

static int stream_ok(CUstream s) {
  for (int i = 0; i < 64; i++)
    if (live_streams[i] == s && s) return 1;
  return 0;
}

static CUresult enqueue(CUstream s, op o) {
  if (!stream_ok(s)) return CUDA_ERROR_INVALID_HANDLE;
  if (s->n_ops == s->cap_ops) {
    size_t cap = s->cap_ops ? 2 * s->cap_ops : 64;
    op* grown = realloc(s->ops, cap * sizeof *grown);
    if (!grown) return CUDA_ERROR_OUT_OF_MEMORY;
    s->ops = grown;
    s->cap_ops = cap;
  }
  s->ops[s->n_ops++] = o;
  return CUDA_SUCCESS;
}

static uint64_t fnv1a(const void* p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ ((const unsigned char*)p)[i]) * 1099511628211ull;
  return h;
}

static void run_until(CUstream s, size_t seq) {
  for (; s->done < seq && s->done < s->n_ops; s->done++) {
    op* o = &s->ops[s->done];
    if (o->kind == OP_COPY && o->host_source && fnv1a(o->src, o->bytes) != o->hash) counters.stale_sources++;
    if (o->kind == OP_COPY) memcpy(o->dst, o->src, o->bytes);
    if (o->kind == OP_FILL) memset(o->dst, o->value, o->bytes);
    if (o->kind == OP_LAUNCH) counters.launches++;
  }
}

static int queued_on(uintptr_t base, size_t size) {
  for (int i = 0; i < 64; i++) {
    struct CUstream_st* s = live_streams[i];
    if (!s) continue;
    for (size_t k = s->done; k < s->n_ops; k++) {
      uintptr_t d = (uintptr_t)s->ops[k].dst, r = (uintptr_t)s->ops[k].src;
      if ((d >= base && d - base < size) || (r >= base && r - base < size)) return 1;
    }
  }
  return 0;
}

/* ------------------------------------------------------------ the entry points */

/* The switches, read on the first call (cuGetProcAddress comes before cuInit). */
static void configure(void) {
  driver_version = env_int("AJMOCK_DRIVER_VERSION", 13000);
  n_devices = env_int("AJMOCK_DEVICES", 1);
  concurrent = env_int("AJMOCK_CONCURRENT", 1);
  param_info = env_int("AJMOCK_PARAM_INFO", 0);
  total_bytes = (size_t)env_int("AJMOCK_TOTAL_MB", 1024) << 20;
}

static CUresult m_cuInit(unsigned int flags) {
  (void)flags;
  configure();
  return CUDA_SUCCESS;
}

static CUresult m_cuDriverGetVersion(int* v) {
  *v = driver_version;
  return CUDA_SUCCESS;
}

/* Knows two names; for the others it answers as the driver does for a code it does not know. */
static CUresult m_cuGetErrorName(CUresult e, const char** s) {
  *s = e == CUDA_SUCCESS ? "CUDA_SUCCESS" : e == CUDA_ERROR_OUT_OF_MEMORY ? "CUDA_ERROR_OUT_OF_MEMORY" : NULL;
  return *s ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

static CUresult m_cuGetErrorString(CUresult e, const char** s) {
  (void)e;
  *s = "reported by the mock driver";
  return CUDA_SUCCESS;
}

static CUresult m_cuDeviceGetCount(int* n) {
  *n = n_devices;
  return CUDA_SUCCESS;
}

static CUresult m_cuDeviceGet(CUdevice* d, int i) {
  if (i < 0 || i >= n_devices) return CUDA_ERROR_INVALID_DEVICE;
  *d = i;
  return CUDA_SUCCESS;
}

static CUresult m_cuDeviceGetName(char* name, int len, CUdevice d) {
  if (d < 0 || d >= n_devices || len <= 0) return CUDA_ERROR_INVALID_VALUE;
  strncpy(name, "AdamJIT Mock GPU", (size_t)len - 1);
  name[len - 1] = '\0';
  return CUDA_SUCCESS;
}

static CUresult m_cuDeviceGetAttribute(int* v, CUdevice_attribute a, CUdevice d) {
  if (d < 0 || d >= n_devices) return CUDA_ERROR_INVALID_DEVICE;
  *v = a == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR   ? 9
       : a == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR ? 0
       : a == CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS ? concurrent
                                                            : 0;
  return CUDA_SUCCESS;
}

static CUresult m_cuDeviceTotalMem(size_t* b, CUdevice d) {
  (void)d;
  *b = total_bytes;
  return CUDA_SUCCESS;
}

static CUresult m_cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) {
  if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
  counters.primary_refs++;
  *c = &primary;
  return CUDA_SUCCESS;
}

static CUresult m_cuDevicePrimaryCtxGetState(CUdevice d, unsigned* flags, int* active) {
  (void)d;
  *flags = 0;
  *active = counters.primary_refs > 0;
  return CUDA_SUCCESS;
}

static CUresult m_cuDevicePrimaryCtxRelease(CUdevice d) {
  (void)d;
  if (counters.primary_refs <= 0) {
    counters.bad_calls++;
    return CUDA_ERROR_INVALID_CONTEXT;
  }
  counters.primary_refs--;
  return CUDA_SUCCESS;
}

static CUresult m_cuCtxGetCurrent(CUcontext* c) {
  *c = ajmock_current();
  return CUDA_SUCCESS;
}

static CUresult m_cuCtxPushCurrent(CUcontext c) {
  if (!c || ctx_depth == 16) return CUDA_ERROR_INVALID_VALUE;
  ctx_stack[ctx_depth++] = c;
  return CUDA_SUCCESS;
}

static CUresult m_cuCtxPopCurrent(CUcontext* c) {
  NEED_CONTEXT();
  CUcontext top = ctx_stack[--ctx_depth];
  if (c) *c = top;
  return CUDA_SUCCESS;
}

static CUresult m_cuCtxGetDevice(CUdevice* d) {
  NEED_CONTEXT();
  *d = ajmock_current()->device;
  return CUDA_SUCCESS;
}

static CUresult m_cuStreamCreate(CUstream* s, unsigned flags) {
  NEED_CONTEXT();
  (void)flags;
  for (int i = 0; i < 64; i++)
    if (!live_streams[i]) {
      struct CUstream_st* st = calloc(1, sizeof *st);
      if (!st) return CUDA_ERROR_OUT_OF_MEMORY;
      st->ctx = ajmock_current();
      live_streams[i] = st;
      counters.live_streams++;
      *s = st;
      return CUDA_SUCCESS;
    }
  return CUDA_ERROR_OUT_OF_MEMORY;
}

static CUresult m_cuStreamDestroy(CUstream s) {
  for (int i = 0; i < 64; i++)
    if (live_streams[i] == s && s) {
      run_until(s, s->n_ops); /* the driver lets queued work finish */
      live_streams[i] = NULL;
      free(s->ops);
      free(s);
      counters.live_streams--;
      return CUDA_SUCCESS;
    }
  return CUDA_ERROR_INVALID_HANDLE;
}

static CUresult m_cuStreamSynchronize(CUstream s) {
  if (!stream_ok(s)) return CUDA_ERROR_INVALID_HANDLE;
  counters.syncs++;
  run_until(s, s->n_ops);
  return CUDA_SUCCESS;
}

static CUresult m_cuStreamQuery(CUstream s) {
  if (!stream_ok(s)) return CUDA_ERROR_INVALID_HANDLE;
  return s->done == s->n_ops ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

static CUresult m_cuStreamGetCtx(CUstream s, CUcontext* c) {
  if (!stream_ok(s)) return CUDA_ERROR_INVALID_HANDLE;
  *c = s->ctx;
  return CUDA_SUCCESS;
}

static CUresult new_alloc(CUdeviceptr* p, size_t bytes, int managed) {
  NEED_CONTEXT();
  if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  if (bytes > total_bytes - counters.device_bytes || n_allocs == 8192) return CUDA_ERROR_OUT_OF_MEMORY;
  void* mem = aligned_alloc(256, (bytes + 255) & ~(size_t)255);
  if (!mem) return CUDA_ERROR_OUT_OF_MEMORY;
  memset(mem, 0xA5, bytes); /* like real memory: not zero until someone fills it */
  allocs[n_allocs++] = (alloc){(uintptr_t)mem, bytes, managed, 0};
  counters.device_bytes += bytes;
  counters.live_device++;
  *p = (CUdeviceptr)(uintptr_t)mem;
  return CUDA_SUCCESS;
}

static CUresult m_cuMemAlloc(CUdeviceptr* p, size_t bytes) { return new_alloc(p, bytes, 0); }

static CUresult m_cuMemAllocManaged(CUdeviceptr* p, size_t bytes, unsigned flags) {
  if (flags != CU_MEM_ATTACH_GLOBAL && flags != CU_MEM_ATTACH_HOST) return CUDA_ERROR_INVALID_VALUE;
  CUresult r = new_alloc(p, bytes, 1);
  if (r == CUDA_SUCCESS) counters.managed_allocs++;
  return r;
}

static CUresult m_cuMemFree(CUdeviceptr p) {
  NEED_CONTEXT();
  for (int i = 0; i < n_allocs; i++)
    if (allocs[i].base == (uintptr_t)p && !allocs[i].pinned_host) {
      if (queued_on(allocs[i].base, allocs[i].size)) counters.free_while_queued++;
      counters.device_bytes -= allocs[i].size;
      counters.live_device--;
      free((void*)allocs[i].base);
      allocs[i] = allocs[--n_allocs];
      return CUDA_SUCCESS;
    }
  counters.bad_calls++;
  return CUDA_ERROR_INVALID_VALUE;
}

static CUresult m_cuMemGetInfo(size_t* free_bytes, size_t* total) {
  NEED_CONTEXT();
  *free_bytes = total_bytes - counters.device_bytes;
  *total = total_bytes;
  return CUDA_SUCCESS;
}

static CUresult m_cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, CUstream s) {
  NEED_CONTEXT();
  if (!in_alloc((uintptr_t)p, n)) return CUDA_ERROR_INVALID_VALUE;
  return enqueue(s, (op){OP_FILL, (void*)(uintptr_t)p, NULL, n, v, 0, 0});
}

static CUresult m_cuMemcpyHtoDAsync(CUdeviceptr dst, const void* src, size_t n, CUstream s) {
  NEED_CONTEXT();
  if (!in_alloc((uintptr_t)dst, n) || !src) return CUDA_ERROR_INVALID_VALUE;
  return enqueue(s, (op){OP_COPY, (void*)(uintptr_t)dst, src, n, 0, 1, fnv1a(src, n)});
}

static CUresult m_cuMemcpyDtoHAsync(void* dst, CUdeviceptr src, size_t n, CUstream s) {
  NEED_CONTEXT();
  if (!in_alloc((uintptr_t)src, n) || !dst) return CUDA_ERROR_INVALID_VALUE;
  return enqueue(s, (op){OP_COPY, dst, (const void*)(uintptr_t)src, n, 0, 0, 0});
}

static CUresult m_cuMemcpyDtoDAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
  NEED_CONTEXT();
  if (!in_alloc((uintptr_t)dst, n) || !in_alloc((uintptr_t)src, n)) return CUDA_ERROR_INVALID_VALUE;
  return enqueue(s, (op){OP_COPY, (void*)(uintptr_t)dst, (const void*)(uintptr_t)src, n, 0, 0, 0});
}

static CUresult m_cuMemGetAddressRange(CUdeviceptr* base, size_t* size, CUdeviceptr p) {
  NEED_CONTEXT();
  alloc* a = find((uintptr_t)p);
  if (!a || a->pinned_host) return CUDA_ERROR_NOT_FOUND;
  if (base) *base = (CUdeviceptr)a->base;
  if (size) *size = a->size;
  return CUDA_SUCCESS;
}

static CUresult m_cuPointerGetAttribute(void* data, CUpointer_attribute attr, CUdeviceptr p) {
  alloc* a = find((uintptr_t)p);
  switch (attr) {
    case CU_POINTER_ATTRIBUTE_MAPPED:
      *(unsigned char*)data = a != NULL; /* a C++ bool: one byte */
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_IS_MANAGED:
      if (!a) return CUDA_ERROR_INVALID_VALUE;
      *(unsigned char*)data = (unsigned char)a->managed;
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
      if (!a) return CUDA_ERROR_INVALID_VALUE;
      *(int*)data = 0;
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
      if (!a) return CUDA_ERROR_INVALID_VALUE;
      *(CUdeviceptr*)data = (CUdeviceptr)a->base;
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
      if (!a) return CUDA_ERROR_INVALID_VALUE;
      *(size_t*)data = a->size;
      return CUDA_SUCCESS;
    default:
      return CUDA_ERROR_INVALID_VALUE;
  }
}

static CUresult m_cuMemAllocHost(void** p, size_t bytes) {
  NEED_CONTEXT();
  void* mem = malloc(bytes);
  if (!mem || n_allocs == 8192) return CUDA_ERROR_OUT_OF_MEMORY;
  allocs[n_allocs++] = (alloc){(uintptr_t)mem, bytes, 0, 1};
  counters.live_pinned++;
  *p = mem;
  return CUDA_SUCCESS;
}

static CUresult m_cuMemFreeHost(void* p) {
  NEED_CONTEXT();
  for (int i = 0; i < n_allocs; i++)
    if (allocs[i].base == (uintptr_t)p && allocs[i].pinned_host) {
      if (queued_on(allocs[i].base, allocs[i].size)) counters.free_while_queued++;
      free(p);
      allocs[i] = allocs[--n_allocs];
      counters.live_pinned--;
      return CUDA_SUCCESS;
    }
  counters.bad_calls++;
  return CUDA_ERROR_INVALID_VALUE;
}

static CUresult m_cuMemPrefetchAsync(CUdeviceptr p, size_t n, CUmemLocation loc, unsigned flags, CUstream s) {
  NEED_CONTEXT();
  alloc* a = find((uintptr_t)p);
  if (!a || !a->managed || !in_alloc((uintptr_t)p, n) || flags != 0) return CUDA_ERROR_INVALID_VALUE;
  if (!concurrent) return CUDA_ERROR_INVALID_DEVICE; /* prefetching needs concurrent managed access */
  if (loc.type == CU_MEM_LOCATION_TYPE_DEVICE && loc.id == 0)
    counters.prefetch_device++;
  else if (loc.type == CU_MEM_LOCATION_TYPE_HOST)
    counters.prefetch_host++;
  else
    return CUDA_ERROR_INVALID_DEVICE;
  return enqueue(s, (op){OP_PREFETCH, NULL, NULL, 0, 0, 0, 0});
}

static CUresult m_cuEventCreate(CUevent* e, unsigned flags) {
  NEED_CONTEXT();
  (void)flags;
  *e = calloc(1, sizeof **e);
  if (!*e) return CUDA_ERROR_OUT_OF_MEMORY;
  counters.live_events++;
  return CUDA_SUCCESS;
}

static CUresult m_cuEventDestroy(CUevent e) {
  if (!e) return CUDA_ERROR_INVALID_HANDLE;
  free(e);
  counters.live_events--;
  return CUDA_SUCCESS;
}

static CUresult m_cuEventRecord(CUevent e, CUstream s) {
  if (!e || !stream_ok(s)) return CUDA_ERROR_INVALID_HANDLE;
  e->stream = s;
  e->seq = s->n_ops;
  return CUDA_SUCCESS;
}

static CUresult m_cuEventSynchronize(CUevent e) {
  if (!e) return CUDA_ERROR_INVALID_HANDLE;
  counters.syncs++;
  if (e->stream && stream_ok(e->stream)) run_until(e->stream, e->seq);
  return CUDA_SUCCESS;
}

static CUresult m_cuModuleLoadData(CUmodule* m, const void* image) {
  NEED_CONTEXT();
  const char* text = image;
  int elf = memcmp(image, "\177ELF", 4) == 0;
  if (!elf && !strstr(text, ".version")) return CUDA_ERROR_INVALID_IMAGE;
  *m = calloc(1, sizeof **m);
  if (!*m) return CUDA_ERROR_OUT_OF_MEMORY;
  counters.live_modules++;
  return CUDA_SUCCESS;
}

static CUresult m_cuModuleUnload(CUmodule m) {
  NEED_CONTEXT();
  if (!m) return CUDA_ERROR_INVALID_HANDLE;
  free(m);
  counters.live_modules--;
  return CUDA_SUCCESS;
}

/* Function handles are never freed by CUDA programs (they belong to the module); the mock
 * keeps a fixed pool so that nothing leaks either. */
static struct CUfunc_st functions[256];
static int n_functions;

static CUresult m_cuModuleGetFunction(CUfunction* f, CUmodule m, const char* name) {
  NEED_CONTEXT();
  if (!m || !name) return CUDA_ERROR_INVALID_VALUE;
  if (strncmp(name, "aj_", 3) != 0) return CUDA_ERROR_NOT_FOUND; /* every template kernel is aj_* */
  for (int i = 0; i < n_functions; i++)
    if (strcmp(functions[i].name, name) == 0) {
      *f = &functions[i];
      return CUDA_SUCCESS;
    }
  if (n_functions == 256) return CUDA_ERROR_OUT_OF_MEMORY;
  strncpy(functions[n_functions].name, name, sizeof functions[0].name - 1);
  *f = &functions[n_functions++];
  m->functions++;
  return CUDA_SUCCESS;
}

static CUresult m_cuFuncGetAttribute(int* v, CUfunction_attribute a, CUfunction f) {
  if (!f) return CUDA_ERROR_INVALID_HANDLE;
  *v = a == CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK ? 1024 : 0;
  return CUDA_SUCCESS;
}

static CUresult m_cuFuncGetParamInfo(CUfunction f, size_t index, size_t* offset, size_t* size) {
  if (!f || index >= 2) return CUDA_ERROR_INVALID_VALUE;
  if (offset) *offset = index * 8;
  if (size) *size = 8;
  return CUDA_SUCCESS;
}

static int known_function(CUfunction f) {
  for (int i = 0; i < n_functions; i++)
    if (f == &functions[i]) return 1;
  return 0;
}

static CUresult m_cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                 unsigned bz, unsigned shared, CUstream s, void** params, void** extra) {
  NEED_CONTEXT();
  if (!known_function(f)) return CUDA_ERROR_INVALID_HANDLE;
  if (!gx || !gy || !gz || !bx || !by || !bz || bx * by * bz > 1024 || gx > 0x7fffffffu || gy > 65535 || gz > 65535 ||
      shared > 48 * 1024 || (!params && !extra) || (params && params[0] == NULL)) {
    counters.bad_calls++;
    return CUDA_ERROR_INVALID_VALUE;
  }
  counters.launches_queued++;
  counters.last_launch_stream = s;
  return enqueue(s, (op){OP_LAUNCH, NULL, NULL, 0, 0, 0, 0});
}

/* ------------------------------------------------------------ cuGetProcAddress */

typedef struct entry {
  const char* name;
  void* fn;
  int since; /* the version whose ABI this mock implements (as cuda.h 13 declares it) */
} entry;

#define E(name, since) {#name, (void*)m_##name, since}
static const entry table[] = {
    E(cuInit, 2000), E(cuDriverGetVersion, 2020), E(cuGetErrorName, 6000), E(cuGetErrorString, 6000),
    E(cuDeviceGetCount, 2000), E(cuDeviceGet, 2000), E(cuDeviceGetName, 2000), E(cuDeviceGetAttribute, 2000),
    E(cuDeviceTotalMem, 3020), E(cuDevicePrimaryCtxRetain, 7000), E(cuDevicePrimaryCtxGetState, 7000),
    E(cuDevicePrimaryCtxRelease, 11000), E(cuCtxGetCurrent, 4000), E(cuCtxPushCurrent, 4000),
    E(cuCtxPopCurrent, 4000), E(cuCtxGetDevice, 2000), E(cuStreamCreate, 2000), E(cuStreamDestroy, 4000),
    E(cuStreamSynchronize, 2000), E(cuStreamQuery, 2000), E(cuStreamGetCtx, 9020), E(cuMemAlloc, 3020),
    E(cuMemAllocManaged, 6000), E(cuMemFree, 3020), E(cuMemGetInfo, 3020), E(cuMemsetD8Async, 3020),
    E(cuMemcpyHtoDAsync, 3020), E(cuMemcpyDtoHAsync, 3020), E(cuMemcpyDtoDAsync, 3020),
    E(cuMemGetAddressRange, 3020), E(cuPointerGetAttribute, 4000), E(cuMemAllocHost, 3020), E(cuMemFreeHost, 2000),
    E(cuMemPrefetchAsync, 12020), E(cuEventCreate, 2000), E(cuEventDestroy, 4000), E(cuEventRecord, 2000),
    E(cuEventSynchronize, 2000), E(cuModuleLoadData, 2000), E(cuModuleUnload, 2000), E(cuModuleGetFunction, 2000),
    E(cuFuncGetAttribute, 2020), E(cuFuncGetParamInfo, 12040), E(cuLaunchKernel, 4000),
};
#undef E

EXPORT CUresult cuGetProcAddress_v2(const char* symbol, void** pfn, int version, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult* status) {
  configure();
  if (!symbol || !pfn) return CUDA_ERROR_INVALID_VALUE;
  *pfn = NULL;
  if (status) *status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
  if (version > driver_version) return CUDA_ERROR_INVALID_VALUE; /* as documented */
  if (flags != CU_GET_PROC_ADDRESS_LEGACY_STREAM) counters.bad_calls++; /* the backend asks for legacy-stream ABIs */
  if (version > counters.abi_requested) counters.abi_requested = version;
  for (size_t i = 0; i < sizeof table / sizeof *table; i++) {
    if (strcmp(table[i].name, symbol) != 0) continue;
    if (strcmp(symbol, "cuFuncGetParamInfo") == 0 && !param_info) return CUDA_SUCCESS; /* not found */
    if (table[i].since > version || table[i].since > driver_version) {
      if (status) *status = CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT;
      return CUDA_SUCCESS;
    }
    *pfn = table[i].fn;
    if (status) *status = CU_GET_PROC_ADDRESS_SUCCESS;
    return CUDA_SUCCESS;
  }
  return CUDA_SUCCESS;
}
