/* Contexts: backend choice and the backend-memory helpers. */
#include <stdlib.h>
#include <string.h>

#include "backends/backend.h"
#include "core/tuning.h"
#include "jit/engine.h"

static char* copy_dir(const char* s) {
  if (!s || !*s) return NULL;
  size_t n = strlen(s) + 1;
  char* d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

static void free_context(adamjit_context* ctx) {
  free(ctx->cache_dir);
  free(ctx->template_dir);
  free(ctx->tuning_db);
  aj_tuning_free(ctx->tuning);
  free(ctx);
}

void adamjit_context_desc_init_default(adamjit_context_desc* desc) {
  if (!desc) return;
  memset(desc, 0, sizeof *desc);
  desc->struct_size = sizeof *desc;
  desc->backend = ADAMJIT_BACKEND_AUTO;
  desc->device_index = 0;
  desc->num_threads = -1;
  desc->log_level = ADAMJIT_LOG_WARN;
  desc->quant_search = ADAMJIT_QUANT_SEARCH_AUTO;
  desc->use_tuning = 1;
}

adamjit_status adamjit_context_create(const adamjit_context_desc* desc_in, adamjit_context** out) {
  if (!out) return aj_fail(NULL, ADAMJIT_ERR_NULL_ARGUMENT, "adamjit_context_create: out is NULL");
  *out = NULL;
  adamjit_context_desc desc;
  adamjit_context_desc_init_default(&desc);
  if (desc_in) {
    adamjit_status st = aj_copy_versioned(NULL, &desc, sizeof desc, desc_in, "adamjit_context_desc");
    if (st) return st;
  }
  if (desc.backend < ADAMJIT_BACKEND_AUTO || desc.backend > ADAMJIT_BACKEND_CUDA)
    return aj_fail(NULL, ADAMJIT_ERR_INVALID_VALUE, "adamjit_context_desc.backend = %d is not a backend",
                   (int)desc.backend);
  if (desc.device_index < 0)
    return aj_fail(NULL, ADAMJIT_ERR_INVALID_VALUE, "adamjit_context_desc.device_index = %d is negative",
                   desc.device_index);
  if (desc.num_threads < -1 || desc.num_threads == 0)
    return aj_fail(NULL, ADAMJIT_ERR_INVALID_VALUE,
                   "adamjit_context_desc.num_threads = %d (expected -1 for all threads, or >= 1)", desc.num_threads);
  if (desc.log_level < ADAMJIT_LOG_ERROR || desc.log_level > ADAMJIT_LOG_DEBUG)
    return aj_fail(NULL, ADAMJIT_ERR_INVALID_VALUE, "adamjit_context_desc.log_level = %d is not a log level",
                   (int)desc.log_level);

  if (desc.quant_search < ADAMJIT_QUANT_SEARCH_AUTO || desc.quant_search > ADAMJIT_QUANT_SEARCH_TABLE)
    return aj_fail(NULL, ADAMJIT_ERR_INVALID_VALUE, "adamjit_context_desc.quant_search = %d (expected 0, 1 or 2)",
                   desc.quant_search);

  if (desc.use_tuning != 0 && desc.use_tuning != 1)
    return aj_fail(NULL, ADAMJIT_ERR_INVALID_VALUE, "adamjit_context_desc.use_tuning = %d (expected 0 or 1)",
                   desc.use_tuning);

  adamjit_backend kind = desc.backend == ADAMJIT_BACKEND_AUTO ? aj_backend_auto() : desc.backend;
  adamjit_status st = adamjit_backend_probe(kind); /* the reason, if any, is in the thread's message */
  if (st) return st;

  adamjit_context* ctx = calloc(1, sizeof *ctx);
  if (!ctx) return aj_fail(NULL, ADAMJIT_ERR_OUT_OF_MEMORY, "adamjit_context_create: out of host memory");
  ctx->kind = kind;
  ctx->ops = aj_backend_lookup(kind);
  ctx->device_index = desc.device_index;
  ctx->num_threads = desc.num_threads;
  ctx->log_fn = desc.log_fn;
  ctx->log_user = desc.log_user;
  ctx->log_level = desc.log_level;
  ctx->quant_search = desc.quant_search;
  ctx->cache_dir = copy_dir(desc.cache_dir);
  ctx->template_dir = copy_dir(desc.template_dir);
  /* read now, like the other settings, so that a context's databases do not change with
   * the environment after it is made */
  const char* tuning_db = desc.tuning_db && *desc.tuning_db ? desc.tuning_db : secure_getenv("ADAMJIT_TUNING_DB");
  ctx->tuning_db = copy_dir(tuning_db);
  ctx->use_tuning = desc.use_tuning;
  if ((desc.cache_dir && *desc.cache_dir && !ctx->cache_dir) ||
      (desc.template_dir && *desc.template_dir && !ctx->template_dir) || (tuning_db && *tuning_db && !ctx->tuning_db)) {
    free_context(ctx);
    return aj_fail(NULL, ADAMJIT_ERR_OUT_OF_MEMORY, "adamjit_context_create: out of host memory");
  }
  st = ctx->ops->init(ctx, &desc);
  if (st) {
    aj_fail(NULL, st, "%s", ctx->err);
    free_context(ctx);
    return st;
  }
  aj_log(ctx, ADAMJIT_LOG_INFO, "adamjit %s: context on the %s backend", ADAMJIT_VERSION_STRING,
         adamjit_backend_name(kind));
  *out = ctx;
  return ADAMJIT_OK;
}

void adamjit_context_destroy(adamjit_context* ctx) {
  if (!ctx) return;
  aj_jit_destroy(ctx->jit); /* before the backend: it may hold OpenCL devices of its own */
  ctx->ops->shutdown(ctx);
  free_context(ctx);
}

adamjit_backend adamjit_context_backend(const adamjit_context* ctx) {
  return ctx ? ctx->kind : ADAMJIT_BACKEND_AUTO;
}

const char* adamjit_context_last_error(const adamjit_context* ctx) {
  return ctx ? ctx->err : "adamjit_context_last_error: ctx is NULL";
}

adamjit_status adamjit_context_synchronize(adamjit_context* ctx) {
  if (!ctx) return aj_fail(NULL, ADAMJIT_ERR_NULL_ARGUMENT, "adamjit_context_synchronize: ctx is NULL");
  return ctx->ops->synchronize(ctx);
}

adamjit_status adamjit_mem_alloc(adamjit_context* ctx, size_t bytes, adamjit_mem* out) {
  if (!ctx || !out) return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "adamjit_mem_alloc: ctx and out are required");
  if (bytes == 0) return aj_fail(ctx, ADAMJIT_ERR_INVALID_SIZE, "adamjit_mem_alloc: 0 bytes requested");
  adamjit_memory_kind kind;
  return ctx->ops->mem_alloc(ctx, bytes, 0, out, &kind);
}

void adamjit_mem_free(adamjit_context* ctx, adamjit_mem mem) {
  if (ctx && mem) ctx->ops->mem_free(ctx, mem);
}

adamjit_status adamjit_mem_write(adamjit_context* ctx, adamjit_mem dst, size_t offset, const void* src, size_t bytes) {
  if (!ctx || !dst || (!src && bytes))
    return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "adamjit_mem_write: ctx, dst and src are required");
  if (bytes == 0) return ADAMJIT_OK;
  if (offset > SIZE_MAX - bytes)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_SIZE, "adamjit_mem_write: offset %zu + %zu bytes overflows", offset, bytes);
  adamjit_status st = ctx->ops->mem_check(ctx, dst, offset + bytes, "adamjit_mem_write destination");
  if (st) return st;
  return ctx->ops->mem_write(ctx, dst, offset, src, bytes);
}

adamjit_status adamjit_mem_read(adamjit_context* ctx, void* dst, adamjit_mem src, size_t offset, size_t bytes) {
  if (!ctx || !src || (!dst && bytes))
    return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "adamjit_mem_read: ctx, dst and src are required");
  if (bytes == 0) return ADAMJIT_OK;
  if (offset > SIZE_MAX - bytes)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_SIZE, "adamjit_mem_read: offset %zu + %zu bytes overflows", offset, bytes);
  adamjit_status st = ctx->ops->mem_check(ctx, src, offset + bytes, "adamjit_mem_read source");
  if (st) return st;
  return ctx->ops->mem_read(ctx, dst, src, offset, bytes);
}

adamjit_status adamjit_mem_copy(adamjit_context* ctx, adamjit_mem dst, size_t dst_offset, adamjit_mem src,
                                size_t src_offset, size_t bytes) {
  if (!ctx || !dst || !src)
    return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "adamjit_mem_copy: ctx, dst and src are required");
  if (bytes == 0) return ADAMJIT_OK;
  if (dst_offset > SIZE_MAX - bytes || src_offset > SIZE_MAX - bytes)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_SIZE, "adamjit_mem_copy: offset + %zu bytes overflows", bytes);
  if (dst == src && dst_offset < src_offset + bytes && src_offset < dst_offset + bytes)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "adamjit_mem_copy: the source and destination ranges overlap");
  adamjit_status st = ctx->ops->mem_check(ctx, dst, dst_offset + bytes, "adamjit_mem_copy destination");
  if (!st) st = ctx->ops->mem_check(ctx, src, src_offset + bytes, "adamjit_mem_copy source");
  if (st) return st;
  return ctx->ops->mem_copy(ctx, dst, dst_offset, src, src_offset, bytes);
}
