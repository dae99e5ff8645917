/* The CUDA driver loader (see cuda_driver.h): dlopen libcuda.so.1, resolve the table
 * through cuGetProcAddress for the ABI of our header, cuInit once. */
#include "backends/cuda/cuda_driver.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "core/internal.h"
#include "jit/dynlib.h"

/* Written once under pthread_once and only read afterwards, so no lock is needed. */
static struct {
  int ok;
  aj_cuda_api_table api;
  char library[512];
  char why[2048];
} cu;
static pthread_once_t cu_once = PTHREAD_ONCE_INIT;

/* Names of the codes the loader can meet before the driver's own cuGetErrorName is
 * resolved (and of the common ones, should a driver lack a name). The enum constants
 * come from <cuda.h>, so a renumbering there cannot make a name lie. */
#define AJ_CUDA_KNOWN_ERRORS(X)                 \
  X(CUDA_SUCCESS)                               \
  X(CUDA_ERROR_INVALID_VALUE)                   \
  X(CUDA_ERROR_OUT_OF_MEMORY)                   \
  X(CUDA_ERROR_NOT_INITIALIZED)                 \
  X(CUDA_ERROR_DEINITIALIZED)                   \
  X(CUDA_ERROR_STUB_LIBRARY)                    \
  X(CUDA_ERROR_CALL_REQUIRES_NEWER_DRIVER)      \
  X(CUDA_ERROR_DEVICE_UNAVAILABLE)              \
  X(CUDA_ERROR_NO_DEVICE)                       \
  X(CUDA_ERROR_INVALID_DEVICE)                  \
  X(CUDA_ERROR_INVALID_CONTEXT)                 \
  X(CUDA_ERROR_INVALID_IMAGE)                   \
  X(CUDA_ERROR_NO_BINARY_FOR_GPU)               \
  X(CUDA_ERROR_INVALID_PTX)                     \
  X(CUDA_ERROR_UNSUPPORTED_PTX_VERSION)         \
  X(CUDA_ERROR_JIT_COMPILER_NOT_FOUND)          \
  X(CUDA_ERROR_NOT_FOUND)                       \
  X(CUDA_ERROR_NOT_READY)                       \
  X(CUDA_ERROR_ILLEGAL_ADDRESS)                 \
  X(CUDA_ERROR_LAUNCH_FAILED)                   \
  X(CUDA_ERROR_NOT_SUPPORTED)                   \
  X(CUDA_ERROR_SYSTEM_DRIVER_MISMATCH)          \
  X(CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE)  \
  X(CUDA_ERROR_UNKNOWN)

static const char* known_error_name(CUresult code) {
  switch (code) {
#define AJ_CUDA_ERROR_CASE(name) \
  case name:                     \
    return #name;
    AJ_CUDA_KNOWN_ERRORS(AJ_CUDA_ERROR_CASE)
#undef AJ_CUDA_ERROR_CASE
    default:
      return "CUDA_ERROR_UNRECOGNIZED";
  }
}

/* Why a code stopped the loader, in words a user can act on. */
static const char* loader_hint(CUresult code) {
  switch (code) {
    case CUDA_ERROR_STUB_LIBRARY: return " (this is the toolkit's link stub, not an NVIDIA driver)";
    case CUDA_ERROR_NO_DEVICE: return " (the driver sees no CUDA device)";
    case CUDA_ERROR_SYSTEM_DRIVER_MISMATCH: return " (the kernel module and libcuda.so.1 do not match, or are too old)";
    default: return "";
  }
}

/* Resolves one entry for the ABI version `abi`; on failure appends the reason. */
static int resolve(__typeof__(cuGetProcAddress)* gpa, const char* lib, const char* name, int abi, void** out) {
  void* fn = NULL;
  CUdriverProcAddressQueryResult q = CU_GET_PROC_ADDRESS_SUCCESS;
  /* LEGACY_STREAM: the functions without the _ptsz/_ptds suffix, which is what <cuda.h>
   * declares unless CUDA_API_PER_THREAD_DEFAULT_STREAM is defined (it is not). */
  CUresult r = gpa(name, &fn, abi, CU_GET_PROC_ADDRESS_LEGACY_STREAM, &q);
  if (r != CUDA_SUCCESS || !fn || q != CU_GET_PROC_ADDRESS_SUCCESS) {
    aj_reason_append(cu.why, sizeof cu.why, "%s: cuGetProcAddress(%s, %d.%d) failed: %s%s%s", lib, name, abi / 1000,
                     abi % 1000 / 10, r != CUDA_SUCCESS ? known_error_name(r) : "no such entry point",
                     q == CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT ? " (version not sufficient)" : "",
                     loader_hint(r));
    return 0;
  }
  *out = fn;
  return 1;
}

/* Opens one candidate and fills the table; on any failure the reason is appended to
 * cu.why and the handle is closed, so the next candidate starts clean. */
static int try_library(const char* lib, void* user) {
  (void)user;
  void* h = aj_dlopen_reason(lib, cu.why, sizeof cu.why);
  if (!h) return 0;
  /* dlsym's void* to a function pointer goes through memcpy: ISO C has no such cast. */
  void* sym = dlsym(h, "cuGetProcAddress_v2");
  if (!sym) {
    aj_reason_append(cu.why, sizeof cu.why,
                     "%s does not export cuGetProcAddress_v2 (not an NVIDIA driver, or one older than CUDA %d.%d)",
                     lib, AJ_CUDA_MIN_DRIVER / 1000, AJ_CUDA_MIN_DRIVER % 1000 / 10);
    dlclose(h);
    return 0;
  }
  __typeof__(cuGetProcAddress)* gpa;
  memcpy(&gpa, &sym, sizeof sym);

  aj_cuda_api_table api;
  memset(&api, 0, sizeof api);
  void* fn = NULL;
  __typeof__(cuDriverGetVersion)* get_version;
  if (!resolve(gpa, lib, "cuDriverGetVersion", AJ_CUDA_MIN_DRIVER, &fn)) {
    dlclose(h);
    return 0;
  }
  memcpy(&get_version, &fn, sizeof fn);
  CUresult r = get_version(&api.driver_version);
  if (r != CUDA_SUCCESS || api.driver_version < AJ_CUDA_MIN_DRIVER) {
    if (r != CUDA_SUCCESS)
      aj_reason_append(cu.why, sizeof cu.why, "%s: cuDriverGetVersion failed: %s%s", lib, known_error_name(r),
                       loader_hint(r));
    else
      aj_reason_append(cu.why, sizeof cu.why, "%s: the driver supports CUDA %d.%d; CUDA %d.%d or newer is needed", lib,
                       api.driver_version / 1000, api.driver_version % 1000 / 10, AJ_CUDA_MIN_DRIVER / 1000,
                       AJ_CUDA_MIN_DRIVER % 1000 / 10);
    dlclose(h);
    return 0;
  }
  /* A driver refuses versions newer than itself; a newer driver serves our header's ABI. */
  api.abi_version = api.driver_version < CUDA_VERSION ? api.driver_version : CUDA_VERSION;

#define AJ_CUDA_RESOLVE(name, since)                                                                       \
  if (api.driver_version < (since)) {                                                                      \
    aj_reason_append(cu.why, sizeof cu.why, "%s: the driver supports CUDA %d.%d; %s as built needs %d.%d", \
                     lib, api.driver_version / 1000, api.driver_version % 1000 / 10, #name, (since) / 1000, \
                     (since) % 1000 / 10);                                                                  \
    dlclose(h);                                                                                            \
    return 0;                                                                                              \
  }                                                                                                        \
  if (!resolve(gpa, lib, #name, api.abi_version, &fn)) {                                                   \
    dlclose(h);                                                                                            \
    return 0;                                                                                              \
  }                                                                                                        \
  memcpy(&api.name, &fn, sizeof fn);
  AJ_CUDA_FUNCS(AJ_CUDA_RESOLVE)
#undef AJ_CUDA_RESOLVE

  /* Optional entries stay NULL on an older driver; a failed lookup is not a reason. */
#define AJ_CUDA_RESOLVE_OPTIONAL(name, since)                                                     \
  if (api.driver_version >= (since)) {                                                            \
    fn = NULL;                                                                                    \
    CUdriverProcAddressQueryResult q = CU_GET_PROC_ADDRESS_SUCCESS;                               \
    if (gpa(#name, &fn, api.abi_version, CU_GET_PROC_ADDRESS_LEGACY_STREAM, &q) == CUDA_SUCCESS && \
        q == CU_GET_PROC_ADDRESS_SUCCESS && fn)                                                   \
      memcpy(&api.name, &fn, sizeof fn);                                                          \
  }
  AJ_CUDA_OPTIONAL_FUNCS(AJ_CUDA_RESOLVE_OPTIONAL)
#undef AJ_CUDA_RESOLVE_OPTIONAL

  cu.api = api;
  snprintf(cu.library, sizeof cu.library, "%s", lib);
  /* Never closed: the table points into it for the life of the process, and the driver
   * keeps threads and atexit handlers that must not lose their code. */
  return 1;
}

static void load_cuda(void) {
  static const char* const candidates[] = {"libcuda.so.1"};
  if (!aj_dynlib_load_first("ADAMJIT_CUDA_LIBRARY", candidates, (int)(sizeof candidates / sizeof candidates[0]),
                            try_library, NULL, cu.why, sizeof cu.why)) {
    if (!secure_getenv("ADAMJIT_CUDA_LIBRARY") || !*secure_getenv("ADAMJIT_CUDA_LIBRARY"))
      aj_reason_append(cu.why, sizeof cu.why, "is the NVIDIA driver installed?");
    return;
  }
  CUresult r = cu.api.cuInit(0);
  if (r != CUDA_SUCCESS) {
    const char* text = NULL;
    if (cu.api.cuGetErrorString(r, &text) != CUDA_SUCCESS) text = NULL;
    aj_reason_append(cu.why, sizeof cu.why, "%s: cuInit failed: %s (%d)%s%s%s", cu.library, known_error_name(r), (int)r,
                     text ? ": " : "", text ? text : "", loader_hint(r));
    return;
  }
  cu.ok = 1;
}

static int cuda_loaded(void) {
  pthread_once(&cu_once, load_cuda);
  return cu.ok;
}

adamjit_status aj_cuda_available(char* why, size_t why_size) {
  return aj_dynlib_status(cuda_loaded(), "CUDA", cu.why, why, why_size);
}

const aj_cuda_api_table* aj_cuda_api(void) { return cuda_loaded() ? &cu.api : NULL; }

const char* aj_cuda_library(void) { return cuda_loaded() ? cu.library : NULL; }

const char* aj_cuda_error_name(CUresult code) {
  const char* name = NULL;
  if (cuda_loaded() && cu.api.cuGetErrorName(code, &name) == CUDA_SUCCESS && name) return name;
  return known_error_name(code);
}

adamjit_status aj_cuda_status(CUresult code) {
  switch (code) {
    case CUDA_SUCCESS:
      return ADAMJIT_OK;
    case CUDA_ERROR_OUT_OF_MEMORY:
      return ADAMJIT_ERR_OUT_OF_MEMORY;
    case CUDA_ERROR_INVALID_IMAGE:
    case CUDA_ERROR_NO_BINARY_FOR_GPU:
    case CUDA_ERROR_INVALID_PTX:
    case CUDA_ERROR_UNSUPPORTED_PTX_VERSION:
    case CUDA_ERROR_JIT_COMPILER_NOT_FOUND:
      return ADAMJIT_ERR_COMPILE;
    case CUDA_ERROR_NO_DEVICE:
    case CUDA_ERROR_STUB_LIBRARY:
    case CUDA_ERROR_SYSTEM_DRIVER_MISMATCH:
    case CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE:
    case CUDA_ERROR_DEVICE_UNAVAILABLE:
      return ADAMJIT_ERR_BACKEND_UNAVAILABLE;
    default:
      return ADAMJIT_ERR_DRIVER;
  }
}

adamjit_status aj_cuda_check(adamjit_context* ctx, CUresult code, const char* what) {
  if (code == CUDA_SUCCESS) return ADAMJIT_OK;
  const char* text = NULL;
  if (!cuda_loaded() || cu.api.cuGetErrorString(code, &text) != CUDA_SUCCESS) text = NULL;
  return aj_fail(ctx, aj_cuda_status(code), "%s: %s (%d)%s%s", what ? what : "CUDA", aj_cuda_error_name(code),
                 (int)code, text ? ": " : "", text ? text : "");
}
