/* The CUDA driver API, loaded at run time.
 *
 * libcuda.so.1 is never linked: it is opened with dlopen the first time anything here
 * needs it (once per process, pthread_once), and every entry point the CUDA backend uses
 * is resolved into a function table. So the library builds with the toolkit's headers
 * alone, and a machine without an NVIDIA driver gets ADAMJIT_ERR_BACKEND_UNAVAILABLE with
 * the loader's reason instead of a library that fails to start.
 *
 * Resolution goes through cuGetProcAddress, not dlsym: <cuda.h> renames many functions to
 * versioned symbols (cuMemAlloc -> cuMemAlloc_v2, cuMemPrefetchAsync -> cuMemPrefetchAsync_v2,
 * ...), and the driver keeps the old ABIs under the old names. cuGetProcAddress takes the
 * base name and a CUDA version and returns the ABI that version's header meant, which is
 * exactly the prototype the table is typed with (each member is typed from its declaration
 * in <cuda.h>, so the compiler checks every call). cuGetProcAddress itself (its _v2 form,
 * CUDA 12.0) is the one symbol looked up with dlsym.
 *
 * The version asked for is CUDA_VERSION of the header we were built with, or the driver's
 * own version when the driver is older (a driver refuses versions newer than itself). Each
 * entry carries the CUDA version that introduced the ABI the header means; a driver older
 * than that cannot give it: a required entry then makes CUDA unavailable (with the reason),
 * an optional one is left NULL and its feature is skipped (see aj_cuda_api_table).
 *
 * Library search: $ADAMJIT_CUDA_LIBRARY when set and non-empty (a full path or a soname;
 * then nothing else is tried, so a mistyped override is reported rather than silently
 * replaced; ignored in set-uid programs), otherwise libcuda.so.1, the driver's soname (the
 * bare libcuda.so is usually the toolkit's link stub, which only returns errors). The
 * library stays loaded for the life of the process.
 *
 * Internal (not installed). The loader is thread-safe; everything after it is the driver's
 * own thread safety.
 */
#ifndef ADAMJIT_BACKENDS_CUDA_DRIVER_H
#define ADAMJIT_BACKENDS_CUDA_DRIVER_H

#include <cuda.h>
#include <stddef.h>

#include "adamjit/adamjit.h"

/* The oldest driver the loader accepts: cuGetProcAddress_v2 appeared in CUDA 12.0. */
#define AJ_CUDA_MIN_DRIVER 12000

/* X(name, since): every required entry point, by the name <cuda.h> declares (the macro
 * argument is stringized unexpanded, which gives the base name cuGetProcAddress wants,
 * while the member's type and name come from the expanded, versioned declaration).
 * since: a CUDA version whose driver has the ABI the header means: 3.2 for the _v2 memory
 * functions, 4.0 for the _v2 context, stream and event ones, 11.0 for
 * cuDevicePrimaryCtxRelease_v2; for unversioned entries a version at which the function
 * existed. All are below AJ_CUDA_MIN_DRIVER, so today only optional entries are ever
 * refused by version; the column is there so that a future _v3 in the header is one edit. */
#define AJ_CUDA_FUNCS(X)                 \
  X(cuInit, 2000)                        \
  X(cuGetErrorName, 6000)                \
  X(cuGetErrorString, 6000)              \
  X(cuDeviceGetCount, 2000)              \
  X(cuDeviceGet, 2000)                   \
  X(cuDeviceGetName, 2000)               \
  X(cuDeviceGetAttribute, 2000)          \
  X(cuDeviceTotalMem, 3020)              \
  X(cuDevicePrimaryCtxRetain, 7000)      \
  X(cuDevicePrimaryCtxGetState, 7000)    \
  X(cuDevicePrimaryCtxRelease, 11000)    \
  X(cuCtxGetCurrent, 4000)               \
  X(cuCtxPushCurrent, 4000)              \
  X(cuCtxPopCurrent, 4000)               \
  X(cuCtxGetDevice, 2000)                \
  X(cuStreamCreate, 2000)                \
  X(cuStreamDestroy, 4000)               \
  X(cuStreamSynchronize, 2000)           \
  X(cuStreamQuery, 2000) /* the tests' */ \
  X(cuStreamGetCtx, 9020)                \
  X(cuMemAlloc, 3020)                    \
  X(cuMemAllocManaged, 6000)             \
  X(cuMemFree, 3020)                     \
  X(cuMemGetInfo, 3020)                  \
  X(cuMemsetD8Async, 3020)               \
  X(cuMemcpyHtoDAsync, 3020)             \
  X(cuMemcpyDtoHAsync, 3020)             \
  X(cuMemcpyDtoDAsync, 3020)             \
  X(cuMemGetAddressRange, 3020)          \
  X(cuPointerGetAttribute, 4000)         \
  X(cuMemAllocHost, 3020)                \
  X(cuMemFreeHost, 2000)                 \
  X(cuEventCreate, 2000)                 \
  X(cuEventDestroy, 4000)                \
  X(cuEventRecord, 2000)                 \
  X(cuEventSynchronize, 2000)            \
  X(cuModuleLoadData, 2000)              \
  X(cuModuleUnload, 2000)                \
  X(cuModuleGetFunction, 2000)           \
  X(cuFuncGetAttribute, 2020)            \
  X(cuLaunchKernel, 4000)

/* Optional entries: NULL when the driver is older than `since` (or lacks them).
 * cuMemPrefetchAsync: the CUDA 12.2 form that takes a CUmemLocation (device or host), which
 * is what <cuda.h> 13 declares; without it managed memory still works, it just moves on
 * demand instead of ahead of the kernels (SPEC 5 paging).
 * cuFuncGetParamInfo (12.4): the parameter list of a loaded kernel, checked against each
 * launch's arguments (cuLaunchKernel itself would read whatever the list says). */
#define AJ_CUDA_OPTIONAL_FUNCS(X) \
  X(cuMemPrefetchAsync, 12020)    \
  X(cuFuncGetParamInfo, 12040)

#define AJ_CUDA_MEMBER(name, since) __typeof__(name)* name;
typedef struct aj_cuda_api_table {
  AJ_CUDA_FUNCS(AJ_CUDA_MEMBER)
  AJ_CUDA_OPTIONAL_FUNCS(AJ_CUDA_MEMBER)
  int driver_version; /* cuDriverGetVersion: 13000 for a CUDA 13.0 driver */
  int abi_version;    /* the version every entry was resolved for */
} aj_cuda_api_table;
#undef AJ_CUDA_MEMBER

/* ADAMJIT_OK when the driver loaded, resolved and cuInit(0) succeeded; otherwise
 * ADAMJIT_ERR_BACKEND_UNAVAILABLE with the reason (every dlopen error, a missing entry, a
 * driver too old, cuInit's error such as CUDA_ERROR_NO_DEVICE) copied to why[why_size]
 * (may be NULL) and to adamjit_last_error(). Says nothing about the device count. */
adamjit_status aj_cuda_available(char* why, size_t why_size);

/* The function table, or NULL when aj_cuda_available fails. */
const aj_cuda_api_table* aj_cuda_api(void);

/* The library name or path that was loaded; NULL when unavailable. */
const char* aj_cuda_library(void);

/* "CUDA_ERROR_OUT_OF_MEMORY" (from the driver when it is loaded, else from a small table of
 * the codes the loader itself can meet); never NULL. */
const char* aj_cuda_error_name(CUresult code);

/* The status a driver error means: CUDA_SUCCESS -> ADAMJIT_OK; out of memory ->
 * ADAMJIT_ERR_OUT_OF_MEMORY; a module the driver cannot load (bad image, no binary for the
 * GPU, PTX newer than the driver) -> ADAMJIT_ERR_COMPILE; no device, stub library, driver
 * too old -> ADAMJIT_ERR_BACKEND_UNAVAILABLE; everything else -> ADAMJIT_ERR_DRIVER. */
adamjit_status aj_cuda_status(CUresult code);

/* ADAMJIT_OK for CUDA_SUCCESS; otherwise records "<what>: <NAME> (<code>): <description>"
 * in ctx (or the thread's message when ctx is NULL) and returns aj_cuda_status(code). */
adamjit_status aj_cuda_check(adamjit_context* ctx, CUresult code, const char* what);

#endif
