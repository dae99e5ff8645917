/* The OpenCL compile driver (see opencl.h): a dlopen'd ICD loader table, device
 * enumeration and selection, builds from source and from binary. */
#include "jit/dynlib.h"
#include "jit/opencl.h"

#include <ctype.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"

/* ------------------------------------------------------------------ loader */

/* Written once under pthread_once and only read afterwards, so no lock is needed. */
static struct {
  int ok;
  aj_opencl_api_table api;
  char library[512];
  char why[2048];
} cl;
static pthread_once_t cl_once = PTHREAD_ONCE_INIT;

/* Opens one candidate and fills the table; on any failure the reason is appended to
 * cl.why and the handle is closed, so the next candidate starts clean. */
static int try_library(const char* name, void* user) {
  (void)user;
  void* h = aj_dlopen_reason(name, cl.why, sizeof cl.why);
  if (!h) return 0;
  aj_opencl_api_table api;
  memset(&api, 0, sizeof api);
  /* dlsym's void* to a function pointer goes through memcpy: ISO C has no such cast. */
#define AJ_OPENCL_RESOLVE(fname)                                       \
  {                                                                    \
    void* sym = dlsym(h, #fname);                                      \
    if (!sym) {                                                        \
      aj_reason_append(cl.why, sizeof cl.why, "%s does not export %s (not an OpenCL loader?)", name, #fname); \
      dlclose(h);                                                      \
      return 0;                                                        \
    }                                                                  \
    memcpy(&api.fname, &sym, sizeof sym);                              \
  }
  AJ_OPENCL_FUNCS(AJ_OPENCL_RESOLVE)
#undef AJ_OPENCL_RESOLVE
  cl.api = api;
  snprintf(cl.library, sizeof cl.library, "%s", name);
  /* Never closed: the table points into it for the life of the process, and drivers
   * register atexit handlers and threads that must not lose their code. */
  return 1;
}

static void load_opencl(void) {
  /* The versioned soname first: the bare name exists only where -dev packages are. */
  static const char* const candidates[] = {"libOpenCL.so.1", "libOpenCL.so"};
  cl.ok = aj_dynlib_load_first("ADAMJIT_OPENCL_LIBRARY", candidates, (int)(sizeof candidates / sizeof candidates[0]),
                               try_library, NULL, cl.why, sizeof cl.why);
}

static int opencl_loaded(void) {
  pthread_once(&cl_once, load_opencl);
  return cl.ok;
}

adamjit_status aj_opencl_available(char* why, size_t why_size) {
  return aj_dynlib_status(opencl_loaded(), "OpenCL", cl.why, why, why_size);
}

const aj_opencl_api_table* aj_opencl_api(void) { return opencl_loaded() ? &cl.api : NULL; }

const char* aj_opencl_library(void) { return opencl_loaded() ? cl.library : NULL; }

static adamjit_status unavailable(adamjit_context* ctx) {
  return aj_fail(ctx, ADAMJIT_ERR_BACKEND_UNAVAILABLE, "OpenCL is unavailable: %s", cl.why);
}

/* ------------------------------------------------------------------ errors */

/* Numbers, not the header's macros, so that codes newer than the installed header
 * (and the extension codes) still get their names. */
#define AJ_OPENCL_ERRORS(X)                        \
  X(0, CL_SUCCESS)                                 \
  X(-1, CL_DEVICE_NOT_FOUND)                       \
  X(-2, CL_DEVICE_NOT_AVAILABLE)                   \
  X(-3, CL_COMPILER_NOT_AVAILABLE)                 \
  X(-4, CL_MEM_OBJECT_ALLOCATION_FAILURE)          \
  X(-5, CL_OUT_OF_RESOURCES)                       \
  X(-6, CL_OUT_OF_HOST_MEMORY)                     \
  X(-7, CL_PROFILING_INFO_NOT_AVAILABLE)           \
  X(-8, CL_MEM_COPY_OVERLAP)                       \
  X(-9, CL_IMAGE_FORMAT_MISMATCH)                  \
  X(-10, CL_IMAGE_FORMAT_NOT_SUPPORTED)            \
  X(-11, CL_BUILD_PROGRAM_FAILURE)                 \
  X(-12, CL_MAP_FAILURE)                           \
  X(-13, CL_MISALIGNED_SUB_BUFFER_OFFSET)          \
  X(-14, CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST) \
  X(-15, CL_COMPILE_PROGRAM_FAILURE)               \
  X(-16, CL_LINKER_NOT_AVAILABLE)                  \
  X(-17, CL_LINK_PROGRAM_FAILURE)                  \
  X(-18, CL_DEVICE_PARTITION_FAILED)               \
  X(-19, CL_KERNEL_ARG_INFO_NOT_AVAILABLE)         \
  X(-30, CL_INVALID_VALUE)                         \
  X(-31, CL_INVALID_DEVICE_TYPE)                   \
  X(-32, CL_INVALID_PLATFORM)                      \
  X(-33, CL_INVALID_DEVICE)                        \
  X(-34, CL_INVALID_CONTEXT)                       \
  X(-35, CL_INVALID_QUEUE_PROPERTIES)              \
  X(-36, CL_INVALID_COMMAND_QUEUE)                 \
  X(-37, CL_INVALID_HOST_PTR)                      \
  X(-38, CL_INVALID_MEM_OBJECT)                    \
  X(-39, CL_INVALID_IMAGE_FORMAT_DESCRIPTOR)       \
  X(-40, CL_INVALID_IMAGE_SIZE)                    \
  X(-41, CL_INVALID_SAMPLER)                       \
  X(-42, CL_INVALID_BINARY)                        \
  X(-43, CL_INVALID_BUILD_OPTIONS)                 \
  X(-44, CL_INVALID_PROGRAM)                       \
  X(-45, CL_INVALID_PROGRAM_EXECUTABLE)            \
  X(-46, CL_INVALID_KERNEL_NAME)                   \
  X(-47, CL_INVALID_KERNEL_DEFINITION)             \
  X(-48, CL_INVALID_KERNEL)                        \
  X(-49, CL_INVALID_ARG_INDEX)                     \
  X(-50, CL_INVALID_ARG_VALUE)                     \
  X(-51, CL_INVALID_ARG_SIZE)                      \
  X(-52, CL_INVALID_KERNEL_ARGS)                   \
  X(-53, CL_INVALID_WORK_DIMENSION)                \
  X(-54, CL_INVALID_WORK_GROUP_SIZE)               \
  X(-55, CL_INVALID_WORK_ITEM_SIZE)                \
  X(-56, CL_INVALID_GLOBAL_OFFSET)                 \
  X(-57, CL_INVALID_EVENT_WAIT_LIST)               \
  X(-58, CL_INVALID_EVENT)                         \
  X(-59, CL_INVALID_OPERATION)                     \
  X(-60, CL_INVALID_GL_OBJECT)                     \
  X(-61, CL_INVALID_BUFFER_SIZE)                   \
  X(-62, CL_INVALID_MIP_LEVEL)                     \
  X(-63, CL_INVALID_GLOBAL_WORK_SIZE)              \
  X(-64, CL_INVALID_PROPERTY)                      \
  X(-65, CL_INVALID_IMAGE_DESCRIPTOR)              \
  X(-66, CL_INVALID_COMPILER_OPTIONS)              \
  X(-67, CL_INVALID_LINKER_OPTIONS)                \
  X(-68, CL_INVALID_DEVICE_PARTITION_COUNT)        \
  X(-69, CL_INVALID_PIPE_SIZE)                     \
  X(-70, CL_INVALID_DEVICE_QUEUE)                  \
  X(-71, CL_INVALID_SPEC_ID)                       \
  X(-72, CL_MAX_SIZE_RESTRICTION_EXCEEDED)         \
  X(-1001, CL_PLATFORM_NOT_FOUND_KHR)

const char* aj_opencl_error_name(cl_int code) {
  switch (code) {
#define AJ_OPENCL_ERROR_CASE(num, name) \
  case num:                             \
    return #name;
    AJ_OPENCL_ERRORS(AJ_OPENCL_ERROR_CASE)
#undef AJ_OPENCL_ERROR_CASE
    default:
      return "CL_UNKNOWN_ERROR";
  }
}

adamjit_status aj_opencl_status(cl_int code) {
  switch (code) {
    case CL_SUCCESS:
      return ADAMJIT_OK;
    case CL_OUT_OF_RESOURCES:
    case CL_MEM_OBJECT_ALLOCATION_FAILURE:
    case CL_OUT_OF_HOST_MEMORY:
      return ADAMJIT_ERR_OUT_OF_MEMORY;
    case CL_BUILD_PROGRAM_FAILURE:
    case CL_COMPILE_PROGRAM_FAILURE:
    case CL_LINK_PROGRAM_FAILURE:
      return ADAMJIT_ERR_COMPILE;
    default:
      return ADAMJIT_ERR_DRIVER;
  }
}

adamjit_status aj_opencl_check(adamjit_context* ctx, cl_int code, const char* what) {
  if (code == CL_SUCCESS) return ADAMJIT_OK;
  return aj_fail(ctx, aj_opencl_status(code), "%s: %s (%d)", what ? what : "OpenCL", aj_opencl_error_name(code),
                 (int)code);
}

/* -------------------------------------------------------------- enumeration */

typedef struct cl_entry {
  cl_platform_id platform;
  cl_device_id device;
} cl_entry;

/* Every (platform, device) pair into a malloc'd array (*entries, *n; NULL and 0 when there
 * are none, which is not an error here). */
static adamjit_status enumerate_locked(adamjit_context* ctx, cl_entry** entries, int* n);

/* PoCL (6.0 here) crashes when two threads enumerate platforms at once, as two contexts
 * created on two threads do while probing: enumeration is serialized. */
static pthread_mutex_t enumerate_lock = PTHREAD_MUTEX_INITIALIZER;

static adamjit_status enumerate(adamjit_context* ctx, cl_entry** entries, int* n) {
  pthread_mutex_lock(&enumerate_lock);
  adamjit_status st = enumerate_locked(ctx, entries, n);
  pthread_mutex_unlock(&enumerate_lock);
  return st;
}

static adamjit_status enumerate_locked(adamjit_context* ctx, cl_entry** entries, int* n) {
  *entries = NULL;
  *n = 0;
  cl_uint np = 0;
  cl_int err = cl.api.clGetPlatformIDs(0, NULL, &np);
  /* The ICD loader answers CL_PLATFORM_NOT_FOUND_KHR when no driver is registered. */
  if (err == -1001 || (err == CL_SUCCESS && np == 0)) return ADAMJIT_OK;
  if (err != CL_SUCCESS) return aj_opencl_check(ctx, err, "clGetPlatformIDs");
  cl_platform_id* plats = calloc(np, sizeof *plats);
  if (!plats) return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "opencl: no memory for %u platform ids", np);
  adamjit_status st = ADAMJIT_OK;
  err = cl.api.clGetPlatformIDs(np, plats, NULL);
  if (err != CL_SUCCESS) {
    st = aj_opencl_check(ctx, err, "clGetPlatformIDs");
    goto done;
  }
  for (cl_uint p = 0; p < np; p++) {
    cl_uint nd = 0;
    err = cl.api.clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, 0, NULL, &nd);
    /* A platform without devices (a driver whose hardware is absent) is skipped, not fatal. */
    if (err == CL_DEVICE_NOT_FOUND || (err == CL_SUCCESS && nd == 0)) continue;
    if (err != CL_SUCCESS) {
      aj_log(ctx, ADAMJIT_LOG_WARN, "opencl: platform %u skipped: clGetDeviceIDs: %s (%d)", p,
             aj_opencl_error_name(err), (int)err);
      continue;
    }
    cl_device_id* devs = calloc(nd, sizeof *devs);
    cl_entry* grown = realloc(*entries, ((size_t)*n + nd) * sizeof *grown);
    if (!devs || !grown) {
      free(devs);
      if (grown) *entries = grown;
      st = aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "opencl: no memory for %u device ids", nd);
      goto done;
    }
    *entries = grown;
    err = cl.api.clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, nd, devs, NULL);
    if (err == CL_SUCCESS) {
      for (cl_uint d = 0; d < nd; d++) {
        (*entries)[*n].platform = plats[p];
        (*entries)[*n].device = devs[d];
        (*n)++;
      }
    } else {
      aj_log(ctx, ADAMJIT_LOG_WARN, "opencl: platform %u skipped: clGetDeviceIDs: %s (%d)", p,
             aj_opencl_error_name(err), (int)err);
    }
    free(devs);
  }
done:
  free(plats);
  if (st != ADAMJIT_OK) {
    free(*entries);
    *entries = NULL;
    *n = 0;
  }
  return st;
}

/* A string property of device d, or of platform p where d is NULL, in memory the caller
 * frees; NULL when the query fails. OpenCL refuses a buffer shorter than the value, so the
 * size is asked first. */
static char* info_alloc(cl_platform_id p, cl_device_id d, cl_uint what) {
  size_t size = 0;
  cl_int err = d ? cl.api.clGetDeviceInfo(d, what, 0, NULL, &size) : cl.api.clGetPlatformInfo(p, what, 0, NULL, &size);
  if (err != CL_SUCCESS || size == 0) return NULL;
  char* text = malloc(size + 1);
  if (!text) return NULL;
  err = d ? cl.api.clGetDeviceInfo(d, what, size, text, NULL) : cl.api.clGetPlatformInfo(p, what, size, text, NULL);
  if (err != CL_SUCCESS) {
    free(text);
    return NULL;
  }
  text[size] = '\0';
  return text;
}

/* The same into buf[AJ_CL_STR_LEN], truncating; "" when the query fails. */
static void info_string(cl_platform_id p, cl_device_id d, cl_uint what, char* buf) {
  char* text = info_alloc(p, d, what);
  snprintf(buf, AJ_CL_STR_LEN, "%s", text ? text : "");
  free(text);
}

/* Whether the space-separated extension list of d names `ext` as a whole word. */
static int device_has_extension(cl_device_id d, const char* ext) {
  char* list = info_alloc(NULL, d, CL_DEVICE_EXTENSIONS);
  if (!list) return 0;
  int found = 0;
  const size_t len = strlen(ext);
  for (const char* s = list; (s = strstr(s, ext)) != NULL; s += len) {
    if ((s == list || s[-1] == ' ') && (s[len] == ' ' || s[len] == '\0')) {
      found = 1;
      break;
    }
  }
  free(list);
  return found;
}

static void describe(const cl_entry* e, int index, aj_cl_device_info* info) {
  memset(info, 0, sizeof *info);
  info->index = index;
  info_string(NULL, e->device, CL_DEVICE_NAME, info->name);
  info_string(NULL, e->device, CL_DEVICE_VENDOR, info->vendor);
  info_string(NULL, e->device, CL_DEVICE_VERSION, info->version);
  info_string(NULL, e->device, CL_DRIVER_VERSION, info->driver_version);
  info_string(NULL, e->device, CL_DEVICE_OPENCL_C_VERSION, info->c_version);
  info_string(e->platform, NULL, CL_PLATFORM_NAME, info->platform);
  /* Numeric queries that fail leave 0: they inform, nothing depends on them here. */
  cl.api.clGetDeviceInfo(e->device, CL_DEVICE_TYPE, sizeof info->type, &info->type, NULL);
  cl.api.clGetDeviceInfo(e->device, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof info->compute_units, &info->compute_units,
                         NULL);
  cl.api.clGetDeviceInfo(e->device, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof info->max_work_group_size,
                         &info->max_work_group_size, NULL);
  cl.api.clGetDeviceInfo(e->device, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof info->global_mem_size,
                         &info->global_mem_size, NULL);
  info->has_fp16 = device_has_extension(e->device, "cl_khr_fp16");
}

adamjit_status aj_opencl_device_list(adamjit_context* ctx, aj_cl_device_info* out, int cap, int* count) {
  if (!count) return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "aj_opencl_device_list: count is required");
  *count = 0;
  if (cap < 0 || (cap > 0 && !out))
    return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "aj_opencl_device_list: out is required when cap > 0");
  if (!opencl_loaded()) return unavailable(ctx);
  cl_entry* entries = NULL;
  int n = 0;
  adamjit_status st = enumerate(ctx, &entries, &n);
  if (st != ADAMJIT_OK) return st;
  if (n == 0)
    return aj_fail(ctx, ADAMJIT_ERR_BACKEND_UNAVAILABLE, "OpenCL: %s loaded but no platform has a device",
                   cl.library);
  for (int i = 0; i < n && i < cap; i++) describe(&entries[i], i, &out[i]);
  free(entries);
  *count = n;
  return ADAMJIT_OK;
}

/* --------------------------------------------------------------- selection */

static int contains_nocase(const char* hay, const char* needle) {
  size_t n = strlen(needle);
  for (; *hay; hay++) {
    size_t i = 0;
    while (i < n && hay[i] && tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i])) i++;
    if (i == n) return 1;
  }
  return n == 0;
}

/* The index `selector` names among entries[n], or a reported failure. */
static adamjit_status select_device(adamjit_context* ctx, const char* selector, const char* source,
                                    const cl_entry* entries, int n, int* index) {
  const char* s = selector;
  int digits = *s != '\0';
  for (const char* c = s; *c; c++) digits &= (*c >= '0' && *c <= '9');
  if (digits) {
    long v = strtol(s, NULL, 10); /* all digits: only overflow can go wrong, and it is out of range */
    if (v >= n || strlen(s) > 9)
      return aj_fail(ctx, ADAMJIT_ERR_INVALID_INDEX, "opencl: device index %s%s%s is out of range: %d device%s",
                     s, source ? " from " : "", source ? source : "", n, n == 1 ? "" : "s");
    *index = (int)v;
    return ADAMJIT_OK;
  }
  aj_cl_device_info info;
  char listing[1024];
  size_t used = 0;
  listing[0] = '\0';
  for (int i = 0; i < n; i++) {
    describe(&entries[i], i, &info);
    if (contains_nocase(info.name, s) || contains_nocase(info.vendor, s) || contains_nocase(info.platform, s)) {
      *index = i;
      return ADAMJIT_OK;
    }
    if (used + 1 < sizeof listing) {
      int w = snprintf(listing + used, sizeof listing - used, "%s%d: %s (%s)", i ? "; " : "", i, info.name,
                       info.platform);
      if (w > 0) used += (size_t)w;
    }
  }
  return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "opencl: no device matches \"%s\"%s%s; devices are %s", s,
                 source ? " from " : "", source ? source : "", listing);
}

adamjit_status aj_opencl_device_open(adamjit_context* ctx, const char* selector, aj_cl_device** out) {
  if (!out) return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "aj_opencl_device_open: out is required");
  *out = NULL;
  if (!opencl_loaded()) return unavailable(ctx);
  const char* source = NULL;
  if (!selector || !*selector) {
    const char* env = getenv("ADAMJIT_OPENCL_DEVICE");
    selector = (env && *env) ? env : "0";
    if (env && *env) source = "ADAMJIT_OPENCL_DEVICE";
  }
  cl_entry* entries = NULL;
  int n = 0;
  adamjit_status st = enumerate(ctx, &entries, &n);
  if (st != ADAMJIT_OK) return st;
  if (n == 0)
    return aj_fail(ctx, ADAMJIT_ERR_BACKEND_UNAVAILABLE, "OpenCL: %s loaded but no platform has a device",
                   cl.library);
  int index = 0;
  st = select_device(ctx, selector, source, entries, n, &index);
  if (st != ADAMJIT_OK) {
    free(entries);
    return st;
  }
  aj_cl_device* dev = calloc(1, sizeof *dev);
  if (!dev) {
    free(entries);
    return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "opencl: no memory for a device");
  }
  dev->platform = entries[index].platform;
  dev->device = entries[index].device;
  describe(&entries[index], index, &dev->info);
  free(entries);

  cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)dev->platform, 0};
  cl_int err = CL_SUCCESS;
  dev->context = cl.api.clCreateContext(props, 1, &dev->device, NULL, NULL, &err);
  if (!dev->context || err != CL_SUCCESS) {
    st = aj_opencl_check(ctx, err != CL_SUCCESS ? err : CL_INVALID_CONTEXT, "clCreateContext");
    aj_opencl_device_close(dev);
    return st;
  }
  /* Properties 0: in order, no profiling. Every launch and copy of a context goes through
   * this one queue, so order alone keeps a step's kernels correct without events. */
  dev->queue = cl.api.clCreateCommandQueue(dev->context, dev->device, 0, &err);
  if (!dev->queue || err != CL_SUCCESS) {
    st = aj_opencl_check(ctx, err != CL_SUCCESS ? err : CL_INVALID_COMMAND_QUEUE, "clCreateCommandQueue");
    aj_opencl_device_close(dev);
    return st;
  }
  aj_log(ctx, ADAMJIT_LOG_INFO, "opencl: device %d: %s (%s, %s)", dev->info.index, dev->info.name,
         dev->info.platform, dev->info.driver_version);
  *out = dev;
  return ADAMJIT_OK;
}

adamjit_status aj_opencl_device_wrap(adamjit_context* ctx, cl_command_queue queue, aj_cl_device** out) {
  if (!out || !queue) return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "aj_opencl_device_wrap: queue and out are required");
  *out = NULL;
  if (!opencl_loaded()) return unavailable(ctx);
  cl_device_id device = NULL;
  cl_context context = NULL;
  cl_command_queue_properties props = 0;
  cl_int err = cl.api.clGetCommandQueueInfo(queue, CL_QUEUE_DEVICE, sizeof device, &device, NULL);
  if (err == CL_SUCCESS) err = cl.api.clGetCommandQueueInfo(queue, CL_QUEUE_CONTEXT, sizeof context, &context, NULL);
  if (err == CL_SUCCESS)
    err = cl.api.clGetCommandQueueInfo(queue, CL_QUEUE_PROPERTIES, sizeof props, &props, NULL);
  if (err != CL_SUCCESS)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "opencl: the queue given is not a command queue (clGetCommandQueueInfo: %s)",
                   aj_opencl_error_name(err));
  if (props & CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE,
                   "opencl: the queue given executes out of order; adamjit needs an in-order queue");
  cl_entry* entries = NULL;
  int n = 0;
  adamjit_status st = enumerate(ctx, &entries, &n);
  if (st) return st;
  int index = -1;
  for (int i = 0; i < n; i++)
    if (entries[i].device == device) index = i;
  aj_cl_device* dev = calloc(1, sizeof *dev);
  if (!dev) {
    free(entries);
    return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "opencl: no memory for a device");
  }
  cl_entry e = {NULL, device};
  if (index >= 0) e = entries[index];
  else cl.api.clGetDeviceInfo(device, CL_DEVICE_PLATFORM, sizeof e.platform, &e.platform, NULL);
  free(entries);
  dev->platform = e.platform;
  dev->device = device;
  describe(&e, index, &dev->info);
  cl.api.clRetainContext(context);
  dev->context = context;
  cl.api.clRetainCommandQueue(queue);
  dev->queue = queue;
  *out = dev;
  return ADAMJIT_OK;
}

void aj_opencl_device_close(aj_cl_device* dev) {
  if (!dev) return;
  if (dev->queue) {
    cl.api.clFinish(dev->queue); /* nothing may still run on buffers the caller frees next */
    cl.api.clReleaseCommandQueue(dev->queue);
  }
  if (dev->context) cl.api.clReleaseContext(dev->context);
  free(dev);
}

/* ------------------------------------------------------------------- build */

void aj_opencl_program_free(aj_cl_program* p) {
  if (!p) return;
  if (p->program && opencl_loaded()) cl.api.clReleaseProgram(p->program);
  free(p->log);
  free(p->binary);
  memset(p, 0, sizeof *p);
}

/* Where a diagnostic line names its file: the start and length of the token before the
 * first ":<line>:<column>:" of the line [s, end). 0 when the line has none. */
static int find_file_token(const char* s, const char* end, size_t* start, size_t* len) {
  for (const char* p = s; p < end; p++) {
    if (*p != ':') continue;
    const char* q = p + 1;
    int d1 = 0, d2 = 0;
    while (q < end && *q >= '0' && *q <= '9') q++, d1++;
    if (!d1 || q >= end || *q != ':') continue;
    q++;
    while (q < end && *q >= '0' && *q <= '9') q++, d2++;
    if (!d2 || q >= end || *q != ':') continue;
    const char* b = p;
    while (b > s && b[-1] != ' ' && b[-1] != '\t') b--;
    if (b == p) return 0;
    *start = (size_t)(b - s);
    *len = (size_t)(p - b);
    return 1;
  }
  return 0;
}

/* The build log as a malloc'd string in which every diagnostic's file name is the program
 * name, so that a line reads "adamw32_f32.cl:12:5: error: ...": drivers name the source
 * "<source>" (Clang-based ones), "<kernel>" (NVIDIA) or a temporary file (PoCL), none of
 * which tells the reader which kernel failed. NULL only when out of memory. */
static char* fetch_log(cl_program prog, cl_device_id dev, const char* name) {
  size_t size = 0;
  char* raw = NULL;
  if (cl.api.clGetProgramBuildInfo(prog, dev, CL_PROGRAM_BUILD_LOG, 0, NULL, &size) == CL_SUCCESS && size > 0) {
    raw = malloc(size + 1);
    if (!raw) return NULL;
    if (cl.api.clGetProgramBuildInfo(prog, dev, CL_PROGRAM_BUILD_LOG, size, raw, NULL) != CL_SUCCESS) size = 0;
    raw[size] = '\0';
  }
  if (!raw) return calloc(1, 1);
  size_t nlen = strlen(name), len = strlen(raw), lines = 1;
  for (const char* c = raw; *c; c++) lines += *c == '\n';
  /* Each line may grow by the name at most (the replaced token is at least one byte). */
  char* out = malloc(len + lines * nlen + 1);
  if (!out) {
    free(raw);
    return NULL;
  }
  char* w = out;
  for (const char* r = raw; *r;) {
    const char* eol = strchr(r, '\n');
    const char* end = eol ? eol + 1 : r + strlen(r);
    size_t start, tok;
    if (find_file_token(r, end, &start, &tok)) {
      memcpy(w, r, start);
      w += start;
      memcpy(w, name, nlen);
      w += nlen;
      r += start + tok;
    }
    memcpy(w, r, (size_t)(end - r));
    w += end - r;
    r = end;
  }
  *w = '\0';
  free(raw);
  return out;
}

/* Builds prog for dev, fills out->log, and reports a failure with the program name and the
 * log in the message. Releases prog on failure; on success it goes to out->program. */
static adamjit_status build_and_log(adamjit_context* ctx, aj_cl_device* dev, const char* name, cl_program prog,
                                    const char* options, aj_cl_program* out) {
  cl_int err = cl.api.clBuildProgram(prog, 1, &dev->device, options ? options : "", NULL, NULL);
  out->log = fetch_log(prog, dev->device, name);
  if (!out->log) {
    cl.api.clReleaseProgram(prog);
    return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "%s: no memory for the build log", name);
  }
  if (err != CL_SUCCESS) {
    cl.api.clReleaseProgram(prog);
    adamjit_status st = err == CL_INVALID_BUILD_OPTIONS ? ADAMJIT_ERR_INVALID_VALUE : aj_opencl_status(err);
    if (err == CL_INVALID_BUILD_OPTIONS)
      return aj_fail(ctx, st, "%s: clBuildProgram: %s (%d): options \"%s\"", name, aj_opencl_error_name(err),
                     (int)err, options ? options : "");
    return aj_fail(ctx, st, "%s: clBuildProgram: %s (%d)%s%s", name, aj_opencl_error_name(err), (int)err,
                   out->log[0] ? "\n" : "", out->log);
  }
  out->program = prog;
  return ADAMJIT_OK;
}

/* The program's binary for its one device. */
static adamjit_status fetch_binary(adamjit_context* ctx, const char* name, aj_cl_program* out) {
  size_t size = 0;
  cl_int err = cl.api.clGetProgramInfo(out->program, CL_PROGRAM_BINARY_SIZES, sizeof size, &size, NULL);
  if (err != CL_SUCCESS) return aj_fail(ctx, aj_opencl_status(err), "%s: clGetProgramInfo(CL_PROGRAM_BINARY_SIZES): %s (%d)",
                                        name, aj_opencl_error_name(err), (int)err);
  if (size == 0) return ADAMJIT_OK; /* a driver without binaries: nothing to cache */
  unsigned char* bin = malloc(size);
  if (!bin) return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "%s: no memory for a %zu-byte binary", name, size);
  /* CL_PROGRAM_BINARIES takes an array of one pointer per device, not the buffer itself. */
  err = cl.api.clGetProgramInfo(out->program, CL_PROGRAM_BINARIES, sizeof bin, &bin, NULL);
  if (err != CL_SUCCESS) {
    free(bin);
    return aj_fail(ctx, aj_opencl_status(err), "%s: clGetProgramInfo(CL_PROGRAM_BINARIES): %s (%d)", name,
                   aj_opencl_error_name(err), (int)err);
  }
  out->binary = bin;
  out->binary_size = size;
  return ADAMJIT_OK;
}

adamjit_status aj_opencl_build(adamjit_context* ctx, aj_cl_device* dev, const char* program_name, const char* source,
                               const char* options, aj_cl_program* out) {
  if (out) memset(out, 0, sizeof *out);
  if (!dev || !program_name || !source || !out)
    return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "aj_opencl_build: dev, program_name, source and out are required");
  if (!opencl_loaded()) return unavailable(ctx);
  cl_int err = CL_SUCCESS;
  cl_program prog = cl.api.clCreateProgramWithSource(dev->context, 1, &source, NULL, &err);
  if (!prog || err != CL_SUCCESS) {
    if (prog) cl.api.clReleaseProgram(prog);
    if (err == CL_SUCCESS) err = CL_INVALID_PROGRAM; /* no program yet no error: still a failure */
    return aj_fail(ctx, aj_opencl_status(err), "%s: clCreateProgramWithSource: %s (%d)", program_name,
                   aj_opencl_error_name(err), (int)err);
  }
  adamjit_status st = build_and_log(ctx, dev, program_name, prog, options, out);
  if (st != ADAMJIT_OK) return st;
  st = fetch_binary(ctx, program_name, out);
  if (st != ADAMJIT_OK) {
    /* Keep the log (documented), drop the program: a half result is not a result. */
    cl.api.clReleaseProgram(out->program);
    out->program = NULL;
  }
  return st;
}

adamjit_status aj_opencl_load_binary(adamjit_context* ctx, aj_cl_device* dev, const char* program_name,
                                     const void* binary, size_t size, const char* options, aj_cl_program* out) {
  if (out) memset(out, 0, sizeof *out);
  if (!dev || !program_name || !binary || !out)
    return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT,
                   "aj_opencl_load_binary: dev, program_name, binary and out are required");
  if (size == 0) return aj_fail(ctx, ADAMJIT_ERR_INVALID_SIZE, "%s: the binary is empty", program_name);
  if (!opencl_loaded()) return unavailable(ctx);
  cl_int err = CL_SUCCESS, bin_status = CL_SUCCESS;
  const unsigned char* bin = binary;
  cl_program prog = cl.api.clCreateProgramWithBinary(dev->context, 1, &dev->device, &size, &bin, &bin_status, &err);
  if (err == CL_SUCCESS && bin_status != CL_SUCCESS) err = bin_status;
  if (!prog || err != CL_SUCCESS) {
    if (prog) cl.api.clReleaseProgram(prog);
    if (err == CL_SUCCESS) err = CL_INVALID_BINARY;
    return aj_fail(ctx, aj_opencl_status(err), "%s: clCreateProgramWithBinary: %s (%d)",
                   program_name, aj_opencl_error_name(err), (int)err);
  }
  /* A binary program still needs clBuildProgram before kernels can be made from it. */
  return build_and_log(ctx, dev, program_name, prog, options, out);
}
