/* The run-time kernel engine: render -> cache -> compile -> store (jit/engine.h). */
#include "jit/engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/internal.h"
#include "jit/lua_host.h"
#include "jit/nvrtc.h"
#include "jit/render.h"

/* Devices opened for builds outside an OpenCL context; a handful is plenty. */
#define AJ_JIT_MAX_DEVICES 8

typedef struct opened_device {
  char selector[AJ_CL_STR_LEN];
  aj_cl_device* dev;
} opened_device;

struct aj_jit {
  adamjit_context* ctx;
  aj_lua_host* host;
  aj_kernel_cache* cache;
  char* template_dir;
  opened_device devices[AJ_JIT_MAX_DEVICES];
  int n_devices;
};

static const char* const cuda_options[] = {"--fmad=false"};
#define CUDA_OPTIONS_TEXT "--fmad=false"

/* The header in front of a cached CUDA binary: what it is and for which architecture. */
typedef struct cuda_entry_header {
  char magic[8]; /* "AJCUDA1\0" */
  int32_t is_cubin;
  char arch[24];
} cuda_entry_header;

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static char* dup_or_null(const char* s) {
  if (!s || !*s) return NULL;
  size_t n = strlen(s) + 1;
  char* d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

void aj_jit_report_free(aj_jit_report* r) {
  if (!r) return;
  free(r->log);
  memset(r, 0, sizeof *r);
}

void aj_cuda_binary_free(aj_cuda_binary* b) {
  if (!b) return;
  free(b->data);
  memset(b, 0, sizeof *b);
}

adamjit_status aj_jit_create(adamjit_context* ctx, const char* template_dir, const char* cache_dir, aj_jit** out) {
  if (!out) return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "aj_jit_create: out is NULL");
  *out = NULL;
  aj_jit* jit = calloc(1, sizeof *jit);
  if (!jit) return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "aj_jit_create: out of host memory");
  jit->ctx = ctx;
  adamjit_status st = ADAMJIT_OK;
  if (template_dir && *template_dir && !(jit->template_dir = dup_or_null(template_dir)))
    st = aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "aj_jit_create: out of host memory");
  if (!st) st = aj_lua_host_create(ctx, &jit->host);
  if (!st) st = aj_kernel_cache_create(ctx, cache_dir && *cache_dir ? cache_dir : NULL, &jit->cache);
  if (st) {
    aj_jit_destroy(jit);
    return st;
  }
  *out = jit;
  return ADAMJIT_OK;
}

void aj_jit_destroy(aj_jit* jit) {
  if (!jit) return;
  for (int i = 0; i < jit->n_devices; i++) aj_opencl_device_close(jit->devices[i].dev);
  aj_kernel_cache_destroy(jit->cache);
  aj_lua_host_destroy(jit->host);
  free(jit->template_dir);
  free(jit);
}

aj_kernel_cache* aj_jit_cache(aj_jit* jit) { return jit ? jit->cache : NULL; }

adamjit_status aj_jit_render(aj_jit* jit, const aj_variant* v, char** source, size_t* len) {
  if (!jit) return aj_fail(NULL, ADAMJIT_ERR_NULL_ARGUMENT, "aj_jit_render: jit is NULL");
  return aj_render_variant(jit->ctx, jit->host, v, jit->template_dir, source, len);
}

/* Renders v for the given dialect, timing it into the report. */
static adamjit_status render_for(aj_jit* jit, const aj_variant* v, aj_dialect dialect, char** src, size_t* len,
                                 aj_jit_report* rep) {
  char key[AJ_VARIANT_TEXT_MAX];
  if (!v) return aj_fail(jit->ctx, ADAMJIT_ERR_NULL_ARGUMENT, "run-time kernel: variant is NULL");
  adamjit_status st = aj_variant_check(jit->ctx, v);
  if (st) return st;
  if (v->dialect != dialect) {
    aj_variant_format(v, key, sizeof key);
    return aj_fail(jit->ctx, ADAMJIT_ERR_INVALID_VALUE, "kernel %s is %s C; this build needs the %s dialect", key,
                   aj_dialect_name(v->dialect), aj_dialect_name(dialect));
  }
  double t0 = now_ms();
  st = aj_jit_render(jit, v, src, len);
  rep->render_ms = now_ms() - t0;
  rep->source_bytes = *len;
  return st;
}

/* The program name compile logs use: the family plus the dialect's file extension. */
static void program_name(const aj_variant* v, char* buf, size_t size) {
  snprintf(buf, size, "%s.%s", aj_kernel_family_name(v->family), v->dialect == AJ_DIALECT_CUDA ? "cu" : "cl");
}

/* Prefixes the context message with the key, so a failure says which kernel it was. */
static adamjit_status name_failure(aj_jit* jit, const aj_variant* v, adamjit_status st) {
  if (st == ADAMJIT_OK || !jit->ctx) return st;
  char key[AJ_VARIANT_TEXT_MAX];
  aj_variant_format(v, key, sizeof key);
  size_t klen = strlen(key), mlen = strlen(jit->ctx->err);
  if (klen + 2 + mlen + 1 > sizeof jit->ctx->err) mlen = sizeof jit->ctx->err - klen - 3;
  memmove(jit->ctx->err + klen + 2, jit->ctx->err, mlen);
  memcpy(jit->ctx->err, key, klen);
  memcpy(jit->ctx->err + klen, ": ", 2);
  jit->ctx->err[klen + 2 + mlen] = '\0';
  return st;
}

adamjit_status aj_jit_cuda(aj_jit* jit, const aj_variant* v, const char* arch, int use_cache, aj_cuda_binary* out,
                           aj_jit_report* report) {
  aj_jit_report scratch;
  aj_jit_report* rep = report ? report : &scratch;
  memset(rep, 0, sizeof *rep);
  if (out) memset(out, 0, sizeof *out);
  if (!jit || !out || !arch) return aj_fail(jit ? jit->ctx : NULL, ADAMJIT_ERR_NULL_ARGUMENT, "aj_jit_cuda: NULL argument");
  int major = 0, minor = 0;
  adamjit_status st = aj_nvrtc_version(&major, &minor);
  if (st) return name_failure(jit, v, aj_fail(jit->ctx, st, "%s", adamjit_last_error()));
  char* src = NULL;
  size_t len = 0;
  st = render_for(jit, v, AJ_DIALECT_CUDA, &src, &len, rep);
  if (st) return name_failure(jit, v, st);

  char compiler[64];
  snprintf(compiler, sizeof compiler, "nvrtc %d.%d", major, minor);
  aj_cache_key key = {src, CUDA_OPTIONS_TEXT, arch, compiler, NULL};
  double t0 = now_ms();
  if (use_cache) {
    const void* bin = NULL;
    size_t size = 0;
    st = aj_kernel_cache_lookup(jit->cache, &key, &bin, &size, &rep->where);
    cuda_entry_header h;
    if (!st && bin && size > sizeof h) {
      memcpy(&h, bin, sizeof h);
      if (memcmp(h.magic, "AJCUDA1", 8) == 0 && h.arch[sizeof h.arch - 1] == '\0') {
        out->size = size - sizeof h;
        out->data = malloc(out->size);
        if (!out->data) st = aj_fail(jit->ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "aj_jit_cuda: out of host memory");
        else {
          memcpy(out->data, (const char*)bin + sizeof h, out->size);
          out->is_cubin = h.is_cubin != 0;
          memcpy(out->arch, h.arch, sizeof out->arch);
        }
        free(src);
        rep->build_ms = now_ms() - t0;
        rep->binary_bytes = out->size;
        rep->is_cubin = out->is_cubin;
        snprintf(rep->target, sizeof rep->target, "%s", out->arch);
        if (!report) aj_jit_report_free(rep);
        return st;
      }
      /* a well-formed cache entry with a foreign payload: compile and replace it */
      aj_log(jit->ctx, ADAMJIT_LOG_WARN, "kernel cache: CUDA entry for %s has no binary header; recompiling", arch);
    }
    rep->where = AJ_CACHE_MISS;
    if (st) {
      free(src);
      return name_failure(jit, v, st);
    }
  }

  char name[64];
  program_name(v, name, sizeof name);
  aj_nvrtc_result r;
  st = aj_nvrtc_compile(jit->ctx, name, src, arch, cuda_options, (int)(sizeof cuda_options / sizeof *cuda_options),
                        &r);
  rep->build_ms = now_ms() - t0;
  rep->log = r.log;
  r.log = NULL;
  if (st) {
    aj_nvrtc_result_free(&r);
    free(src);
    st = name_failure(jit, v, st);
    if (!report) aj_jit_report_free(rep);
    return st;
  }
  out->data = r.binary;
  out->size = r.size;
  out->is_cubin = r.is_cubin;
  memcpy(out->arch, r.arch, sizeof out->arch);
  r.binary = NULL;
  aj_nvrtc_result_free(&r);
  rep->binary_bytes = out->size;
  rep->is_cubin = out->is_cubin;
  snprintf(rep->target, sizeof rep->target, "%s", out->arch);

  if (use_cache) {
    cuda_entry_header h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, "AJCUDA1", 8);
    h.is_cubin = out->is_cubin;
    memcpy(h.arch, out->arch, sizeof h.arch);
    h.arch[sizeof h.arch - 1] = '\0';
    unsigned char* entry = malloc(sizeof h + out->size);
    if (entry) {
      memcpy(entry, &h, sizeof h);
      memcpy(entry + sizeof h, out->data, out->size);
      st = aj_kernel_cache_store(jit->cache, &key, entry, sizeof h + out->size);
      free(entry);
    } else {
      st = aj_fail(jit->ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "aj_jit_cuda: out of host memory");
    }
    if (st) {
      aj_cuda_binary_free(out);
    }
  }
  free(src);
  if (!report) aj_jit_report_free(rep);
  return st;
}

/* The options of every OpenCL build on dev (see jit/engine.h). */
static void opencl_options(const aj_cl_device* dev, char* buf, size_t size) {
  const aj_opencl_api_table* cl = aj_opencl_api();
  cl_device_fp_config fp = 0;
  if (cl && cl->clGetDeviceInfo(dev->device, CL_DEVICE_SINGLE_FP_CONFIG, sizeof fp, &fp, NULL) != CL_SUCCESS) fp = 0;
  snprintf(buf, size, "-cl-std=CL1.2%s",
           (fp & CL_FP_CORRECTLY_ROUNDED_DIVIDE_SQRT) ? " -cl-fp32-correctly-rounded-divide-sqrt" : "");
}

adamjit_status aj_jit_opencl(aj_jit* jit, aj_cl_device* dev, const aj_variant* v, int use_cache, aj_cl_program* out,
                             aj_jit_report* report) {
  aj_jit_report scratch;
  aj_jit_report* rep = report ? report : &scratch;
  memset(rep, 0, sizeof *rep);
  if (out) memset(out, 0, sizeof *out);
  if (!jit || !dev || !out)
    return aj_fail(jit ? jit->ctx : NULL, ADAMJIT_ERR_NULL_ARGUMENT, "aj_jit_opencl: NULL argument");
  char* src = NULL;
  size_t len = 0;
  adamjit_status st = render_for(jit, v, AJ_DIALECT_OPENCL, &src, &len, rep);
  if (st) return name_failure(jit, v, st);
  snprintf(rep->target, sizeof rep->target, "%s", dev->info.name);

  char options[128], arch[3 * AJ_CL_STR_LEN + 8], compiler[2 * AJ_CL_STR_LEN + 4];
  opencl_options(dev, options, sizeof options);
  snprintf(arch, sizeof arch, "%s | %s | %s", dev->info.name, dev->info.platform, dev->info.driver_version);
  snprintf(compiler, sizeof compiler, "%s | %s", dev->info.version, dev->info.c_version);
  aj_cache_key key = {src, options, arch, compiler, NULL};
  char name[64];
  program_name(v, name, sizeof name);
  double t0 = now_ms();
  if (use_cache) {
    const void* bin = NULL;
    size_t size = 0;
    st = aj_kernel_cache_lookup(jit->cache, &key, &bin, &size, &rep->where);
    if (st) {
      free(src);
      return name_failure(jit, v, st);
    }
    if (bin) {
      st = aj_opencl_load_binary(jit->ctx, dev, name, bin, size, options, out);
      if (!st) {
        free(src);
        rep->build_ms = now_ms() - t0;
        rep->binary_bytes = size;
        free(out->log); /* the build log of a cached binary says nothing new */
        out->log = NULL;
        if (!report) aj_jit_report_free(rep);
        return ADAMJIT_OK;
      }
      aj_log(jit->ctx, ADAMJIT_LOG_WARN, "kernel cache: the driver rejected a cached binary (%s); rebuilding",
             jit->ctx ? jit->ctx->err : "");
      aj_opencl_program_free(out);
      rep->where = AJ_CACHE_MISS;
    }
  }
  st = aj_opencl_build(jit->ctx, dev, name, src, options, out);
  rep->build_ms = now_ms() - t0;
  if (out->log) {
    rep->log = dup_or_null(out->log);
    if (!rep->log) rep->log = calloc(1, 1);
  }
  if (st) {
    st = name_failure(jit, v, st);
  } else {
    rep->binary_bytes = out->binary_size;
    if (use_cache && out->binary && out->binary_size)
      st = aj_kernel_cache_store(jit->cache, &key, out->binary, out->binary_size);
  }
  if (st) aj_opencl_program_free(out);
  free(src);
  if (!report) aj_jit_report_free(rep);
  return st;
}

adamjit_status aj_jit_opencl_device(aj_jit* jit, const char* selector, aj_cl_device** out) {
  if (!jit || !out) return aj_fail(jit ? jit->ctx : NULL, ADAMJIT_ERR_NULL_ARGUMENT, "aj_jit_opencl_device: NULL argument");
  *out = NULL;
  const char* sel = selector ? selector : "";
  for (int i = 0; i < jit->n_devices; i++)
    if (strcmp(jit->devices[i].selector, sel) == 0) {
      *out = jit->devices[i].dev;
      return ADAMJIT_OK;
    }
  if (strlen(sel) >= AJ_CL_STR_LEN)
    return aj_fail(jit->ctx, ADAMJIT_ERR_INVALID_VALUE, "OpenCL device selector too long");
  if (jit->n_devices == AJ_JIT_MAX_DEVICES) { /* recycle the oldest */
    aj_opencl_device_close(jit->devices[0].dev);
    memmove(jit->devices, jit->devices + 1, sizeof jit->devices[0] * (AJ_JIT_MAX_DEVICES - 1));
    jit->n_devices--;
  }
  aj_cl_device* dev = NULL;
  adamjit_status st = aj_opencl_device_open(jit->ctx, sel, &dev);
  if (st) return st;
  opened_device* d = &jit->devices[jit->n_devices++];
  snprintf(d->selector, sizeof d->selector, "%s", sel);
  d->dev = dev;
  *out = dev;
  return ADAMJIT_OK;
}
