/* The public run-time kernel calls (adamjit.h "run-time kernels"): keys, rendering, builds
 * through the context's engine and caches. */
#include <stdlib.h>
#include <string.h>

#include "backends/backend.h"
#include "jit/engine.h"
#include "jit/variant.h"

/* The NVRTC target when the context has no GPU to ask: the oldest architecture the kernels
 * are tested for (sm_80 and sm_90 in CI). */
#define DEFAULT_CUDA_ARCH "sm_80"

adamjit_status aj_context_jit(adamjit_context* ctx, aj_jit** out) {
  if (!ctx->jit) {
    adamjit_status st = aj_jit_create(ctx, ctx->template_dir, ctx->cache_dir, &ctx->jit);
    if (st) return st;
  }
  *out = ctx->jit;
  return ADAMJIT_OK;
}

/* Index -> (family, dialect, index within) over the space aj_variant_enumerate lists. */
static int locate(int index, aj_kernel_family* family, aj_dialect* dialect) {
  for (int d = 0; d < AJ_DIALECT_COUNT; d++)
    for (int f = 0; f < AJ_KERNEL_FAMILY_COUNT; f++) {
      int n = aj_variant_enumerate((aj_kernel_family)f, (aj_dialect)d, NULL, 0);
      if (index < n) {
        *family = (aj_kernel_family)f;
        *dialect = (aj_dialect)d;
        return index;
      }
      index -= n;
    }
  return -1;
}

int adamjit_kernel_variant_count(void) {
  int total = 0;
  for (int d = 0; d < AJ_DIALECT_COUNT; d++)
    for (int f = 0; f < AJ_KERNEL_FAMILY_COUNT; f++)
      total += aj_variant_enumerate((aj_kernel_family)f, (aj_dialect)d, NULL, 0);
  return total;
}

adamjit_status adamjit_kernel_variant_key(int index, char* key, size_t size) {
  if (!key) return aj_fail(NULL, ADAMJIT_ERR_NULL_ARGUMENT, "adamjit_kernel_variant_key: key is NULL");
  aj_kernel_family family;
  aj_dialect dialect;
  int within = index < 0 ? -1 : locate(index, &family, &dialect);
  if (within < 0)
    return aj_fail(NULL, ADAMJIT_ERR_INVALID_INDEX, "adamjit_kernel_variant_key: index %d (there are %d keys)", index,
                   adamjit_kernel_variant_count());
  aj_variant* all = malloc(sizeof *all * (size_t)(within + 1));
  if (!all) return aj_fail(NULL, ADAMJIT_ERR_OUT_OF_MEMORY, "adamjit_kernel_variant_key: out of host memory");
  aj_variant_enumerate(family, dialect, all, within + 1);
  size_t n = aj_variant_format(&all[within], key, size);
  free(all);
  if (n >= size)
    return aj_fail(NULL, ADAMJIT_ERR_INVALID_SIZE, "adamjit_kernel_variant_key: %zu bytes needed", n + 1);
  return ADAMJIT_OK;
}

adamjit_status adamjit_kernel_key_canonical(const char* key, char* out, size_t size) {
  if (!key || !out) return aj_fail(NULL, ADAMJIT_ERR_NULL_ARGUMENT, "adamjit_kernel_key_canonical: NULL argument");
  aj_variant v;
  adamjit_status st = aj_variant_parse(NULL, key, &v);
  if (st) return st;
  size_t n = aj_variant_format(&v, out, size);
  if (n >= size)
    return aj_fail(NULL, ADAMJIT_ERR_INVALID_SIZE, "adamjit_kernel_key_canonical: %zu bytes needed", n + 1);
  return ADAMJIT_OK;
}

void adamjit_free(void* p) { free(p); }

adamjit_status adamjit_kernel_render(adamjit_context* ctx, const char* key, char** source) {
  if (source) *source = NULL;
  if (!ctx || !key || !source)
    return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "adamjit_kernel_render: ctx, key and source are required");
  aj_variant v;
  adamjit_status st = aj_variant_parse(ctx, key, &v);
  aj_jit* jit = NULL;
  if (!st) st = aj_context_jit(ctx, &jit);
  size_t len = 0;
  if (!st) st = aj_jit_render(jit, &v, source, &len);
  return st;
}

void adamjit_kernel_build_desc_init_default(adamjit_kernel_build_desc* desc) {
  if (!desc) return;
  memset(desc, 0, sizeof *desc);
  desc->struct_size = sizeof *desc;
  desc->use_cache = 1;
}

static void fill_info(adamjit_kernel_build_info* info, aj_jit_report* rep) {
  size_t given = info->struct_size;
  adamjit_kernel_build_info full;
  memset(&full, 0, sizeof full);
  full.struct_size = given;
  full.source = rep->where == AJ_CACHE_DISK     ? ADAMJIT_KERNEL_FROM_DISK_CACHE
                : rep->where == AJ_CACHE_MEMORY ? ADAMJIT_KERNEL_FROM_MEMORY_CACHE
                                                : ADAMJIT_KERNEL_COMPILED;
  full.render_ms = rep->render_ms;
  full.build_ms = rep->build_ms;
  full.source_bytes = rep->source_bytes;
  full.binary_bytes = rep->binary_bytes;
  full.is_cubin = rep->is_cubin;
  memcpy(full.target, rep->target, sizeof full.target < sizeof rep->target ? sizeof full.target : sizeof rep->target);
  full.target[sizeof full.target - 1] = '\0';
  if (given >= offsetof(adamjit_kernel_build_info, log) + sizeof full.log) {
    full.log = rep->log; /* handed over */
    rep->log = NULL;
  }
  memcpy(info, &full, given);
}

adamjit_status adamjit_kernel_build(adamjit_context* ctx, const char* key, const adamjit_kernel_build_desc* desc_in,
                                    adamjit_kernel_build_info* info) {
  const char* fn = "adamjit_kernel_build";
  if (!ctx || !key) return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "%s: ctx and key are required", fn);
  if (info && (info->struct_size < sizeof(size_t) || info->struct_size > sizeof *info))
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_SIZE, "%s: info->struct_size = %zu, expected sizeof(adamjit_kernel_build_info) = %zu",
                   fn, info->struct_size, sizeof *info);
  adamjit_kernel_build_desc desc;
  adamjit_kernel_build_desc_init_default(&desc);
  adamjit_status st = desc_in ? aj_copy_versioned(ctx, &desc, sizeof desc, desc_in, "adamjit_kernel_build_desc") : 0;
  if (st) return st;
  if (desc.use_cache != 0 && desc.use_cache != 1)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "%s: use_cache = %d (expected 0 or 1)", fn, desc.use_cache);
  aj_variant v;
  st = aj_variant_parse(ctx, key, &v);
  aj_jit* jit = NULL;
  if (!st) st = aj_context_jit(ctx, &jit);
  if (st) return st;

  aj_jit_report rep;
  memset(&rep, 0, sizeof rep);
  if (v.dialect == AJ_DIALECT_CUDA) {
    const char* arch = desc.arch;
    if (!arch || !*arch) arch = ctx->ops->cuda_arch ? ctx->ops->cuda_arch(ctx) : DEFAULT_CUDA_ARCH;
    aj_cuda_binary bin;
    st = aj_jit_cuda(jit, &v, arch, desc.use_cache, &bin, &rep);
    aj_cuda_binary_free(&bin);
  } else {
    aj_cl_device* dev = NULL;
    if ((!desc.device || !*desc.device) && ctx->ops->opencl_device) dev = ctx->ops->opencl_device(ctx);
    if (!dev) st = aj_jit_opencl_device(jit, desc.device, &dev);
    aj_cl_program prog;
    if (!st) st = aj_jit_opencl(jit, dev, &v, desc.use_cache, &prog, &rep);
    if (!st) aj_opencl_program_free(&prog);
  }
  if (info) fill_info(info, &rep);
  aj_jit_report_free(&rep);
  return st;
}

adamjit_status adamjit_kernel_cache_clear(adamjit_context* ctx, unsigned which) {
  if (!ctx) return aj_fail(NULL, ADAMJIT_ERR_NULL_ARGUMENT, "adamjit_kernel_cache_clear: ctx is NULL");
  if (which == 0 || (which & ~(ADAMJIT_KERNEL_CACHE_MEMORY | ADAMJIT_KERNEL_CACHE_DISK)))
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE,
                   "adamjit_kernel_cache_clear: which = %u (expected ADAMJIT_KERNEL_CACHE_MEMORY and/or _DISK)", which);
  aj_jit* jit = NULL;
  adamjit_status st = aj_context_jit(ctx, &jit);
  if (st) return st;
  unsigned flags = ((which & ADAMJIT_KERNEL_CACHE_MEMORY) ? AJ_CACHE_CLEAR_MEMORY : 0u) |
                   ((which & ADAMJIT_KERNEL_CACHE_DISK) ? AJ_CACHE_CLEAR_DISK : 0u);
  return aj_kernel_cache_clear(aj_jit_cache(jit), flags);
}

adamjit_status adamjit_kernel_cache_dir(adamjit_context* ctx, char* buf, size_t size) {
  if (!ctx || !buf) return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "adamjit_kernel_cache_dir: ctx and buf are required");
  aj_jit* jit = NULL;
  adamjit_status st = aj_context_jit(ctx, &jit);
  if (st) return st;
  const char* dir = aj_kernel_cache_dir(aj_jit_cache(jit));
  if (!dir) return aj_fail(ctx, ADAMJIT_ERR_CACHE, "adamjit_kernel_cache_dir: the disk cache is off (see the log)");
  size_t n = strlen(dir);
  if (n >= size) return aj_fail(ctx, ADAMJIT_ERR_INVALID_SIZE, "adamjit_kernel_cache_dir: %zu bytes needed", n + 1);
  memcpy(buf, dir, n + 1);
  return ADAMJIT_OK;
}
