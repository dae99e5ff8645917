/* The NVRTC compile driver (see nvrtc.h): a dlopen'd function table and one compile call
 * with the architecture fallback. */
#include "jit/dynlib.h"
#include "jit/nvrtc.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"

/* Our own declarations of the NVRTC types we touch, so the build needs no CUDA header.
 * NVRTC's C ABI is stable across majors: nvrtcResult is a C enum (an int) and nvrtcProgram
 * a pointer to an opaque struct. Only the result codes we branch on are named. */
typedef int aj_nvrtcResult;
typedef struct aj_nvrtc_program_opaque* aj_nvrtcProgram;
enum {
  AJ_NVRTC_SUCCESS = 0,
  AJ_NVRTC_ERROR_OUT_OF_MEMORY = 1,
  AJ_NVRTC_ERROR_INVALID_OPTION = 5,
  AJ_NVRTC_ERROR_COMPILATION = 6
};

/* X(return type, name, parameters). Every candidate library must export all of these
 * (NVRTC has had them unversioned since 11.1, when CUBIN output arrived). */
#define AJ_NVRTC_FUNCS(X)                                                                                  \
  X(aj_nvrtcResult, nvrtcVersion, (int* major, int* minor))                                                \
  X(const char*, nvrtcGetErrorString, (aj_nvrtcResult result))                                             \
  X(aj_nvrtcResult, nvrtcCreateProgram,                                                                    \
    (aj_nvrtcProgram * prog, const char* src, const char* name, int num_headers, const char* const* headers, \
     const char* const* include_names))                                                                    \
  X(aj_nvrtcResult, nvrtcDestroyProgram, (aj_nvrtcProgram * prog))                                         \
  X(aj_nvrtcResult, nvrtcCompileProgram, (aj_nvrtcProgram prog, int num_options, const char* const* options)) \
  X(aj_nvrtcResult, nvrtcGetProgramLogSize, (aj_nvrtcProgram prog, size_t* size))                          \
  X(aj_nvrtcResult, nvrtcGetProgramLog, (aj_nvrtcProgram prog, char* log))                                 \
  X(aj_nvrtcResult, nvrtcGetPTXSize, (aj_nvrtcProgram prog, size_t* size))                                 \
  X(aj_nvrtcResult, nvrtcGetPTX, (aj_nvrtcProgram prog, char* ptx))                                        \
  X(aj_nvrtcResult, nvrtcGetCUBINSize, (aj_nvrtcProgram prog, size_t* size))                               \
  X(aj_nvrtcResult, nvrtcGetCUBIN, (aj_nvrtcProgram prog, char* cubin))

/* Optional: without them the fallback cannot pick the newest virtual architecture and
 * errors cannot list the supported ones, but compiling still works. */
#define AJ_NVRTC_OPTIONAL_FUNCS(X)                          \
  X(aj_nvrtcResult, nvrtcGetNumSupportedArchs, (int* count)) \
  X(aj_nvrtcResult, nvrtcGetSupportedArchs, (int* archs))

#define AJ_NVRTC_TYPEDEF(ret, name, params) typedef ret(*aj_##name##_fn) params;
AJ_NVRTC_FUNCS(AJ_NVRTC_TYPEDEF)
AJ_NVRTC_OPTIONAL_FUNCS(AJ_NVRTC_TYPEDEF)
#undef AJ_NVRTC_TYPEDEF

#define AJ_NVRTC_MEMBER(ret, name, params) aj_##name##_fn name;
typedef struct aj_nvrtc_api {
  AJ_NVRTC_FUNCS(AJ_NVRTC_MEMBER)
  AJ_NVRTC_OPTIONAL_FUNCS(AJ_NVRTC_MEMBER)
} aj_nvrtc_api;
#undef AJ_NVRTC_MEMBER

#define AJ_NVRTC_MAX_ARCHS 64

/* Written once under pthread_once and only read afterwards, so no lock is needed. */
static struct {
  int ok;
  aj_nvrtc_api api;
  int major, minor;
  char library[512];
  int archs[AJ_NVRTC_MAX_ARCHS];
  int n_archs;
  char why[2048];
} nv;
static pthread_once_t nv_once = PTHREAD_ONCE_INIT;

/* Opens one candidate and fills the table; on any failure the reason is appended to
 * nv.why and the handle is closed, so the next candidate starts clean. */
static int try_library(const char* name, void* user) {
  (void)user;
  void* h = aj_dlopen_reason(name, nv.why, sizeof nv.why);
  if (!h) return 0;
  aj_nvrtc_api api;
  memset(&api, 0, sizeof api);
#define AJ_NVRTC_RESOLVE(ret, fname, params)                         \
  api.fname = (aj_##fname##_fn)dlsym(h, #fname);                     \
  if (!api.fname) {                                                  \
    aj_reason_append(nv.why, sizeof nv.why, "%s does not export %s (not an NVRTC >= 11.2?)", name, #fname); \
    dlclose(h);                                                      \
    return 0;                                                        \
  }
  AJ_NVRTC_FUNCS(AJ_NVRTC_RESOLVE)
#undef AJ_NVRTC_RESOLVE
#define AJ_NVRTC_RESOLVE_OPTIONAL(ret, fname, params) api.fname = (aj_##fname##_fn)dlsym(h, #fname);
  AJ_NVRTC_OPTIONAL_FUNCS(AJ_NVRTC_RESOLVE_OPTIONAL)
#undef AJ_NVRTC_RESOLVE_OPTIONAL

  int major = 0, minor = 0;
  aj_nvrtcResult rc = api.nvrtcVersion(&major, &minor);
  if (rc != AJ_NVRTC_SUCCESS) {
    aj_reason_append(nv.why, sizeof nv.why, "%s: nvrtcVersion failed (%s)", name, api.nvrtcGetErrorString(rc));
    dlclose(h);
    return 0;
  }
  nv.api = api;
  nv.major = major;
  nv.minor = minor;
  snprintf(nv.library, sizeof nv.library, "%s", name);
  int n = 0;
  if (api.nvrtcGetNumSupportedArchs && api.nvrtcGetSupportedArchs &&
      api.nvrtcGetNumSupportedArchs(&n) == AJ_NVRTC_SUCCESS && n > 0 && n <= AJ_NVRTC_MAX_ARCHS &&
      api.nvrtcGetSupportedArchs(nv.archs) == AJ_NVRTC_SUCCESS)
    nv.n_archs = n;
  /* The handle is never closed: the table points into it for the life of the process,
   * and closing it could pull code from under a compile on another thread. */
  return 1;
}

static void load_nvrtc(void) {
  static const char* const candidates[] = {"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2"};
  nv.ok = aj_dynlib_load_first("ADAMJIT_NVRTC_LIBRARY", candidates, (int)(sizeof candidates / sizeof candidates[0]),
                               try_library, NULL, nv.why, sizeof nv.why);
}

static int nvrtc_loaded(void) {
  pthread_once(&nv_once, load_nvrtc);
  return nv.ok;
}

adamjit_status aj_nvrtc_available(char* why, size_t why_size) {
  return aj_dynlib_status(nvrtc_loaded(), "NVRTC", nv.why, why, why_size);
}

adamjit_status aj_nvrtc_version(int* major, int* minor) {
  if (!major || !minor)
    return aj_fail(NULL, ADAMJIT_ERR_NULL_ARGUMENT, "aj_nvrtc_version: major and minor are required");
  if (!nvrtc_loaded()) return aj_fail(NULL, ADAMJIT_ERR_BACKEND_UNAVAILABLE, "NVRTC is unavailable: %s", nv.why);
  *major = nv.major;
  *minor = nv.minor;
  return ADAMJIT_OK;
}

const char* aj_nvrtc_library(void) { return nvrtc_loaded() ? nv.library : NULL; }

int aj_nvrtc_supported_archs(int* archs, int cap) {
  if (!nvrtc_loaded()) return 0;
  for (int i = 0; archs && i < nv.n_archs && i < cap; i++) archs[i] = nv.archs[i];
  return nv.n_archs;
}

void aj_nvrtc_result_free(aj_nvrtc_result* r) {
  if (!r) return;
  free(r->binary);
  free(r->log);
  memset(r, 0, sizeof *r);
}

/* ------------------------------------------------------------------ compile */

typedef struct arch_spec {
  int is_sm;    /* sm_XX (CUBIN) or compute_XX (PTX) */
  int number;   /* 90 for sm_90 */
  char suffix;  /* 'a', 'f' or 0 */
} arch_spec;

/* Strict on purpose: the arch is pasted into an option, so nothing but sm_/compute_,
 * 2 or 3 digits and one optional suffix letter may pass. */
static int parse_arch(const char* s, arch_spec* a) {
  if (strncmp(s, "sm_", 3) == 0) {
    a->is_sm = 1;
    s += 3;
  } else if (strncmp(s, "compute_", 8) == 0) {
    a->is_sm = 0;
    s += 8;
  } else {
    return 0;
  }
  int digits = 0, n = 0;
  while (*s >= '0' && *s <= '9' && digits < 4) n = n * 10 + (*s++ - '0'), digits++;
  if (digits < 2 || digits > 3 || n < 10) return 0;
  a->number = n;
  a->suffix = 0;
  if (*s == 'a' || *s == 'f') a->suffix = *s++;
  return *s == '\0';
}

static int arch_known(int number) {
  for (int i = 0; i < nv.n_archs; i++)
    if (nv.archs[i] == number) return 1;
  return 0;
}

/* NVRTC's architectures as " sm_75 sm_80 ..." for messages. */
static void list_archs(char* buf, size_t size) {
  size_t used = 0;
  buf[0] = '\0';
  for (int i = 0; i < nv.n_archs && used + 1 < size; i++) {
    int w = snprintf(buf + used, size - used, " sm_%d", nv.archs[i]);
    if (w < 0) break;
    used += (size_t)w;
  }
  if (!nv.n_archs) snprintf(buf, size, " (NVRTC does not list them)");
}

/* Copies NVRTC's log (a NUL-terminated malloc'd string, "" when empty) to *log. */
static adamjit_status fetch_log(adamjit_context* ctx, aj_nvrtcProgram prog, const char* name, char** log) {
  size_t size = 0;
  aj_nvrtcResult rc = nv.api.nvrtcGetProgramLogSize(prog, &size);
  if (rc != AJ_NVRTC_SUCCESS)
    return aj_fail(ctx, ADAMJIT_ERR_INTERNAL, "nvrtc: no compile log for %s: %s", name, nv.api.nvrtcGetErrorString(rc));
  char* s = malloc(size + 1);
  if (!s) return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "nvrtc: no memory for the %zu-byte log of %s", size, name);
  s[0] = '\0';
  if (size > 0 && (rc = nv.api.nvrtcGetProgramLog(prog, s)) != AJ_NVRTC_SUCCESS) {
    free(s);
    return aj_fail(ctx, ADAMJIT_ERR_INTERNAL, "nvrtc: no compile log for %s: %s", name, nv.api.nvrtcGetErrorString(rc));
  }
  s[size] = '\0'; /* NVRTC's size counts its NUL; this one guards against a log without it */
  *log = s;
  return ADAMJIT_OK;
}

/* One compile of the program for `arch_name`. On ADAMJIT_OK, *compile_rc is NVRTC's answer,
 * *log its log and *prog the program (the caller destroys it); any other status is a
 * failure around the compile, already reported. */
static adamjit_status compile_for(adamjit_context* ctx, const char* name, const char* source, const char* arch_name,
                                  const char* const* extra, int n_extra, aj_nvrtcProgram* prog,
                                  aj_nvrtcResult* compile_rc, char** log) {
  char arch_opt[64];
  snprintf(arch_opt, sizeof arch_opt, "--gpu-architecture=%.23s", arch_name); /* archs are validated short */
  const char* opts[3 + AJ_NVRTC_MAX_OPTIONS];
  int n = 0;
  opts[n++] = arch_opt;
  opts[n++] = "-default-device"; /* kernels need no __device__ on their helpers */
  opts[n++] = "--std=c++17";     /* pinned so a new NVRTC default cannot change the templates' dialect */
  for (int i = 0; i < n_extra; i++) opts[n++] = extra[i];

  *prog = NULL;
  aj_nvrtcResult rc = nv.api.nvrtcCreateProgram(prog, source, name, 0, NULL, NULL);
  if (rc != AJ_NVRTC_SUCCESS) {
    *prog = NULL;
    return aj_fail(ctx, rc == AJ_NVRTC_ERROR_OUT_OF_MEMORY ? ADAMJIT_ERR_OUT_OF_MEMORY : ADAMJIT_ERR_INTERNAL,
                   "nvrtc: nvrtcCreateProgram(%s) failed: %s", name, nv.api.nvrtcGetErrorString(rc));
  }
  *compile_rc = nv.api.nvrtcCompileProgram(*prog, n, opts);
  adamjit_status st = fetch_log(ctx, *prog, name, log);
  if (st != ADAMJIT_OK) {
    nv.api.nvrtcDestroyProgram(prog);
    *prog = NULL;
  }
  return st;
}

/* Copies the compiled image out of a successful program. */
static adamjit_status take_binary(adamjit_context* ctx, aj_nvrtcProgram prog, const char* name, int want_cubin,
                                  aj_nvrtc_result* out) {
  size_t size = 0;
  aj_nvrtcResult rc;
  if (want_cubin) {
    rc = nv.api.nvrtcGetCUBINSize(prog, &size);
    if (rc != AJ_NVRTC_SUCCESS)
      return aj_fail(ctx, ADAMJIT_ERR_INTERNAL, "nvrtc: nvrtcGetCUBINSize(%s): %s", name,
                     nv.api.nvrtcGetErrorString(rc));
  }
  /* A CUBIN of size 0 means NVRTC produced only PTX; the PTX still runs (driver JIT). */
  int is_cubin = want_cubin && size > 0;
  if (!is_cubin) {
    rc = nv.api.nvrtcGetPTXSize(prog, &size);
    if (rc != AJ_NVRTC_SUCCESS)
      return aj_fail(ctx, ADAMJIT_ERR_INTERNAL, "nvrtc: nvrtcGetPTXSize(%s): %s", name,
                     nv.api.nvrtcGetErrorString(rc));
    if (size == 0) return aj_fail(ctx, ADAMJIT_ERR_INTERNAL, "nvrtc: %s compiled to an empty PTX", name);
  }
  char* bin = malloc(size);
  if (!bin)
    return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "nvrtc: no memory for the %zu-byte binary of %s", size, name);
  rc = is_cubin ? nv.api.nvrtcGetCUBIN(prog, bin) : nv.api.nvrtcGetPTX(prog, bin);
  if (rc != AJ_NVRTC_SUCCESS) {
    free(bin);
    return aj_fail(ctx, ADAMJIT_ERR_INTERNAL, "nvrtc: reading the binary of %s: %s", name,
                   nv.api.nvrtcGetErrorString(rc));
  }
  if (!is_cubin) bin[size - 1] = '\0'; /* size counts the NUL; make sure it is there */
  out->binary = bin;
  out->size = size;
  out->is_cubin = is_cubin;
  return ADAMJIT_OK;
}

/* The log without trailing newlines, for messages (the stored log stays intact). */
static int log_len(const char* log) {
  size_t n = strlen(log);
  while (n && (log[n - 1] == '\n' || log[n - 1] == '\r')) n--;
  return n > 1000000 ? 1000000 : (int)n;
}

adamjit_status aj_nvrtc_compile(adamjit_context* ctx, const char* program_name, const char* source, const char* arch,
                                const char* const* extra_options, int n_options, aj_nvrtc_result* out) {
  if (!out) return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "aj_nvrtc_compile: out is NULL");
  memset(out, 0, sizeof *out);
  if (!program_name || !source || !arch)
    return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "aj_nvrtc_compile: program_name, source and arch are required");
  if (!*program_name) return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "aj_nvrtc_compile: program_name is empty");
  if (n_options < 0 || n_options > AJ_NVRTC_MAX_OPTIONS)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_SIZE, "aj_nvrtc_compile: %d extra options (0..%d allowed)", n_options,
                   AJ_NVRTC_MAX_OPTIONS);
  if (n_options > 0 && !extra_options)
    return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "aj_nvrtc_compile: extra_options is NULL with n_options = %d",
                   n_options);
  for (int i = 0; i < n_options; i++)
    if (!extra_options[i])
      return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "aj_nvrtc_compile: extra option %d is NULL", i);
  arch_spec spec;
  if (!parse_arch(arch, &spec))
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE,
                   "aj_nvrtc_compile: arch \"%s\" is not sm_XX or compute_XX (XX the compute capability, e.g. sm_90)",
                   arch);
  if (!nvrtc_loaded()) return aj_fail(ctx, ADAMJIT_ERR_BACKEND_UNAVAILABLE, "NVRTC is unavailable: %s", nv.why);

  /* The targets to try, best first (see the fallback rule in nvrtc.h). A target NVRTC
   * lists as supported gets no fallback: its INVALID_OPTION can only come from the extras. */
  char targets[3][24];
  int n_targets = 0;
  const char suffix[2] = {spec.suffix, '\0'};
  snprintf(targets[n_targets++], sizeof targets[0], "%s", arch);
  int listed = arch_known(spec.number);
  if (!listed && spec.is_sm) snprintf(targets[n_targets++], sizeof targets[0], "compute_%d%s", spec.number, suffix);
  if (!listed && !spec.suffix && nv.n_archs > 0) {
    int best = 0, newest = 0;
    for (int i = 0; i < nv.n_archs; i++) {
      if (nv.archs[i] <= spec.number && nv.archs[i] > best) best = nv.archs[i];
      if (nv.archs[i] > newest) newest = nv.archs[i];
    }
    /* Only forward: PTX of an older virtual arch runs on a newer GPU, never the reverse. */
    if (spec.number > newest && best) snprintf(targets[n_targets++], sizeof targets[0], "compute_%d", best);
  }

  aj_nvrtcProgram prog = NULL;
  aj_nvrtcResult rc = AJ_NVRTC_SUCCESS;
  char* log = NULL;
  int used = 0;
  for (; used < n_targets; used++) {
    free(log);
    log = NULL;
    adamjit_status st =
        compile_for(ctx, program_name, source, targets[used], extra_options, n_options, &prog, &rc, &log);
    if (st != ADAMJIT_OK) return st;
    if (rc != AJ_NVRTC_ERROR_INVALID_OPTION || used + 1 == n_targets) break;
    nv.api.nvrtcDestroyProgram(&prog); /* the arch was refused: try the next target */
  }
  out->log = log;
  snprintf(out->arch, sizeof out->arch, "%.23s", targets[used]);

  adamjit_status st = ADAMJIT_OK;
  if (rc == AJ_NVRTC_SUCCESS) {
    int want_cubin = strncmp(targets[used], "sm_", 3) == 0;
    st = take_binary(ctx, prog, program_name, want_cubin, out);
    if (st == ADAMJIT_OK) {
      if (used > 0 || (want_cubin && !out->is_cubin))
        aj_log(ctx, ADAMJIT_LOG_WARN,
               "nvrtc: NVRTC %d.%d cannot build CUBIN for %s; %s is PTX for %s, which the driver compiles at load",
               nv.major, nv.minor, arch, program_name, out->arch);
      if (log[0])
        aj_log(ctx, ADAMJIT_LOG_WARN, "nvrtc: %s (%s) compiled with warnings:\n%.*s", program_name, out->arch,
               log_len(log), log);
    }
  } else if (rc == AJ_NVRTC_ERROR_COMPILATION) {
    st = aj_fail(ctx, ADAMJIT_ERR_COMPILE, "nvrtc: %s failed to compile for %s (NVRTC %d.%d):\n%.*s", program_name,
                 out->arch, nv.major, nv.minor, log_len(log), log);
  } else if (rc == AJ_NVRTC_ERROR_INVALID_OPTION && nv.n_archs > 0 && !listed) {
    char known[512];
    list_archs(known, sizeof known);
    st = aj_fail(ctx, ADAMJIT_ERR_UNSUPPORTED, "nvrtc: NVRTC %d.%d cannot target %s (it knows:%s):\n%.*s", nv.major,
                 nv.minor, arch, known, log_len(log), log);
  } else if (rc == AJ_NVRTC_ERROR_INVALID_OPTION) {
    st = aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "nvrtc: NVRTC %d.%d rejected the options for %s (%s):\n%.*s",
                 nv.major, nv.minor, program_name, out->arch, log_len(log), log);
  } else {
    st = aj_fail(ctx, rc == AJ_NVRTC_ERROR_OUT_OF_MEMORY ? ADAMJIT_ERR_OUT_OF_MEMORY : ADAMJIT_ERR_COMPILE,
                 "nvrtc: compiling %s for %s: %s\n%.*s", program_name, out->arch, nv.api.nvrtcGetErrorString(rc),
                 log_len(log), log);
  }
  nv.api.nvrtcDestroyProgram(&prog);
  if (st != ADAMJIT_OK) {
    /* Keep only the log: a failed call leaves no binary behind. */
    free(out->binary);
    out->binary = NULL;
    out->size = 0;
    out->is_cubin = 0;
  }
  return st;
}
