/* The NVRTC compile driver: CUDA C source -> CUBIN (or PTX) for one GPU architecture.
 *
 * NVRTC is never linked and its header is never included: the library is opened with
 * dlopen the first time any function here needs it (once per process, pthread_once) and
 * its entry points are resolved into a function table. So the build needs no CUDA
 * toolkit, and a machine without NVRTC gets ADAMJIT_ERR_BACKEND_UNAVAILABLE with the
 * loader's reason instead of a failure to start. NVRTC needs no GPU: it compiles for any
 * architecture it knows, which is what lets CI test every kernel variant.
 *
 * Library search: $ADAMJIT_NVRTC_LIBRARY when set and non-empty (a full path or a soname;
 * then nothing else is tried, so a mistyped override is reported rather than silently
 * replaced; ignored in set-uid programs), otherwise libnvrtc.so.13, libnvrtc.so.12,
 * libnvrtc.so.11.2 in that order (the newest NVRTC knows the newest GPUs). The library
 * stays loaded for the life of the process.
 *
 * Internal (not installed). The loader is thread-safe (it runs once), and each compile
 * creates and destroys its own NVRTC program, so compiles on different threads share no
 * program (NVRTC's user guide forbids only concurrent use of one program).
 */
#ifndef ADAMJIT_JIT_NVRTC_H
#define ADAMJIT_JIT_NVRTC_H

#include <stddef.h>

#include "adamjit/adamjit.h"

/* Most extra options one compile accepts (they go into a fixed array, no allocation). */
#define AJ_NVRTC_MAX_OPTIONS 32

typedef struct aj_nvrtc_result {
  /* malloc'd. CUBIN: an ELF image of `size` bytes. PTX: NUL-terminated text, and `size`
   * counts that NUL (what cuModuleLoadData expects). NULL after a failure. */
  void* binary;
  size_t size;
  int is_cubin;  /* 1: CUBIN for `arch`; 0: PTX for `arch` (a compute_XX), JIT-compiled by the driver */
  char arch[24]; /* the architecture actually compiled for: the request, or its fallback */
  /* malloc'd NUL-terminated compile log: warnings after a success ("" when there are
   * none), the errors after ADAMJIT_ERR_COMPILE; NULL when no compile ran. */
  char* log;
} aj_nvrtc_result;

/* ADAMJIT_OK when NVRTC is loadable; otherwise ADAMJIT_ERR_BACKEND_UNAVAILABLE with the
 * reason (every dlopen error or the missing entry point) copied to why[why_size] (may be
 * NULL) and to adamjit_last_error(). */
adamjit_status aj_nvrtc_available(char* why, size_t why_size);

/* NVRTC's version (13.0 for CUDA 13.0). Part of every kernel cache key. */
adamjit_status aj_nvrtc_version(int* major, int* minor);

/* The library name or path that was loaded; NULL when NVRTC is unavailable. */
const char* aj_nvrtc_library(void);

/* Number of real architectures this NVRTC can emit CUBIN for, copied as numbers (75, 80,
 * 90, ...) into archs[cap]; returns how many it knows (0 when unknown or unavailable). */
int aj_nvrtc_supported_archs(int* archs, int cap);

/* Compiles `source` as the program `program_name` (name it after the kernel and variant,
 * e.g. "adamw32_f32.cu": NVRTC's log lines read "adamw32_f32.cu(12): error: ...").
 *
 * arch: "sm_XX" (with an optional a/f suffix, e.g. "sm_90a") asks for CUBIN; "compute_XX"
 * asks for PTX only. The options are --gpu-architecture=<arch> -default-device
 * --std=c++17 followed by extra_options[n_options] (NULL when n_options is 0; at most
 * AJ_NVRTC_MAX_OPTIONS).
 *
 * Fallback to PTX, so a GPU newer than the installed NVRTC still runs (the driver compiles
 * PTX of an older virtual architecture for it): when NVRTC rejects sm_XX, the compile is
 * retried for compute_XX, and, when NVRTC does not know XX either and XX is newer than
 * everything it knows (NVRTC 13 rejects sm_XX and compute_XX together), for the newest
 * compute_YY with YY <= XX. The result then has is_cubin = 0 and arch = the compute_YY
 * used, and a warning goes to the log callback. Arch-specific targets (suffix a or f) only
 * fall back to their own compute_XXa/f: their features do not carry to other archs.
 *
 * *out is always reset first, and aj_nvrtc_result_free(out) is needed after every call,
 * successful or not. Errors (detail in the context message, or adamjit_last_error() when
 * ctx is NULL):
 *   ADAMJIT_ERR_NULL_ARGUMENT, ADAMJIT_ERR_INVALID_VALUE (a malformed arch; an option
 *   NVRTC rejects), ADAMJIT_ERR_INVALID_SIZE (n_options), ADAMJIT_ERR_BACKEND_UNAVAILABLE
 *   (NVRTC not loadable), ADAMJIT_ERR_UNSUPPORTED (an architecture NVRTC cannot target
 *   and no fallback applies: the message lists the ones it can), ADAMJIT_ERR_COMPILE (the
 *   source does not compile: the message carries NVRTC's log, truncated to the message
 *   size; out->log has all of it), ADAMJIT_ERR_OUT_OF_MEMORY. */
adamjit_status aj_nvrtc_compile(adamjit_context* ctx, const char* program_name, const char* source, const char* arch,
                                const char* const* extra_options, int n_options, aj_nvrtc_result* out);

/* Frees the binary and log and resets *r. NULL-safe. */
void aj_nvrtc_result_free(aj_nvrtc_result* r);

#endif
