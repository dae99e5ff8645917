/* Status strings, error messages and logging: the one place messages are formatted. */
#include <stdio.h>
#include <string.h>

#include "core/internal.h"

static _Thread_local char thread_error[AJ_ERR_LEN];

unsigned adamjit_version_number(void) { return ADAMJIT_VERSION_NUMBER; }
const char* adamjit_version_string(void) { return ADAMJIT_VERSION_STRING; }

const char* adamjit_status_string(adamjit_status status) {
  switch (status) {
    case ADAMJIT_OK: return "success";
    case ADAMJIT_ERR_NULL_ARGUMENT: return "a required argument is NULL";
    case ADAMJIT_ERR_INVALID_VALUE: return "a value is out of its valid range";
    case ADAMJIT_ERR_INVALID_DTYPE: return "unknown or unsupported dtype";
    case ADAMJIT_ERR_INVALID_SIZE: return "invalid size";
    case ADAMJIT_ERR_INVALID_INDEX: return "index out of range";
    case ADAMJIT_ERR_OUT_OF_MEMORY: return "out of memory";
    case ADAMJIT_ERR_UNSUPPORTED: return "not supported by this build or backend";
    case ADAMJIT_ERR_BACKEND_UNAVAILABLE: return "backend unavailable";
    case ADAMJIT_ERR_DRIVER: return "driver error";
    case ADAMJIT_ERR_TEMPLATE: return "kernel template error";
    case ADAMJIT_ERR_COMPILE: return "kernel compilation failed";
    case ADAMJIT_ERR_IO: return "file input/output error";
    case ADAMJIT_ERR_CHECKPOINT_CORRUPT: return "checkpoint file is corrupt";
    case ADAMJIT_ERR_CHECKPOINT_MISMATCH: return "checkpoint does not match this optimizer";
    case ADAMJIT_ERR_CACHE: return "kernel cache error";
    case ADAMJIT_ERR_TUNING_DB: return "tuning database error";
    case ADAMJIT_ERR_INTERNAL: return "internal error";
  }
  return "unknown status code";
}

const char* adamjit_last_error(void) { return thread_error; }

const char* adamjit_dtype_name(adamjit_dtype dtype) {
  switch (dtype) {
    case ADAMJIT_F32: return "f32";
    case ADAMJIT_F16: return "f16";
    case ADAMJIT_BF16: return "bf16";
  }
  return NULL;
}

size_t adamjit_dtype_size(adamjit_dtype dtype) {
  switch (dtype) {
    case ADAMJIT_F32: return 4;
    case ADAMJIT_F16:
    case ADAMJIT_BF16: return 2;
  }
  return 0;
}

static void deliver(adamjit_context* ctx, adamjit_log_level level, const char* msg) {
  if (ctx && ctx->log_fn && level <= ctx->log_level) ctx->log_fn(level, msg, ctx->log_user);
}

adamjit_status aj_failv(adamjit_context* ctx, adamjit_status st, const char* fmt, va_list ap) {
  char* buf = ctx ? ctx->err : thread_error;
  vsnprintf(buf, AJ_ERR_LEN, fmt, ap);
  /* Context failures are mirrored to the thread's message so tools can always find them. */
  if (ctx) memcpy(thread_error, ctx->err, AJ_ERR_LEN);
  deliver(ctx, ADAMJIT_LOG_ERROR, buf);
  return st;
}

adamjit_status aj_fail(adamjit_context* ctx, adamjit_status st, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  aj_failv(ctx, st, fmt, ap);
  va_end(ap);
  return st;
}

void aj_log(adamjit_context* ctx, adamjit_log_level level, const char* fmt, ...) {
  if (!ctx || !ctx->log_fn || level > ctx->log_level) return;
  char buf[AJ_ERR_LEN];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  deliver(ctx, level, buf);
}

void aj_clear_error(adamjit_context* ctx) {
  if (ctx) ctx->err[0] = '\0';
}

adamjit_status aj_copy_versioned(adamjit_context* ctx, void* dst, size_t size, const void* src, const char* what) {
  size_t given;
  memcpy(&given, src, sizeof given); /* every versioned struct starts with size_t struct_size */
  if (given < sizeof(size_t) || given > size)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_SIZE,
                   "%s.struct_size is %zu; expected sizeof(%s) = %zu (set it with the _init_default function)", what,
                   given, what, size);
  memcpy(dst, src, given);
  memcpy(dst, &size, sizeof size);
  return ADAMJIT_OK;
}
