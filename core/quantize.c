/* The public blockwise quantize/dequantize calls: validation, then the backend. */
#include <string.h>

#include "backends/backend.h"

void adamjit_quant_desc_init_default(adamjit_quant_desc* desc) {
  if (!desc) return;
  memset(desc, 0, sizeof *desc);
  desc->struct_size = sizeof *desc;
  desc->dtype = ADAMJIT_F32;
  desc->numel = 0;
  desc->block_size = 256;
  desc->map = ADAMJIT_QMAP_SIGNED;
}

adamjit_status adamjit_qmap_values(adamjit_qmap which, float* out, int count) {
  if (!out) return aj_fail(NULL, ADAMJIT_ERR_NULL_ARGUMENT, "adamjit_qmap_values: out is NULL");
  if (which != ADAMJIT_QMAP_SIGNED && which != ADAMJIT_QMAP_UNSIGNED)
    return aj_fail(NULL, ADAMJIT_ERR_INVALID_VALUE, "adamjit_qmap_values: map %d is not a built-in map", (int)which);
  if (count != AJ_QMAP_SIZE)
    return aj_fail(NULL, ADAMJIT_ERR_INVALID_SIZE, "adamjit_qmap_values: count = %d, a map has %d values", count,
                   AJ_QMAP_SIZE);
  memcpy(out, aj_qmap_builtin(which == ADAMJIT_QMAP_SIGNED)->values, AJ_QMAP_SIZE * sizeof(float));
  return ADAMJIT_OK;
}

/* Validates the call; a custom map is prepared into *custom and *map points at it. */
static adamjit_status prepare(adamjit_context* ctx, const char* fn, const adamjit_quant_desc* in,
                              const adamjit_mem mem[3], const char* const names[3], adamjit_quant_desc* d,
                              aj_qmap* custom, const aj_qmap** map) {
  if (!ctx) return aj_fail(NULL, ADAMJIT_ERR_NULL_ARGUMENT, "%s: ctx is NULL", fn);
  if (!in) return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "%s: desc is NULL", fn);
  for (int i = 0; i < 3; i++)
    if (!mem[i]) return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "%s: %s is NULL", fn, names[i]);
  adamjit_quant_desc_init_default(d);
  adamjit_status st = aj_copy_versioned(ctx, d, sizeof *d, in, "adamjit_quant_desc");
  if (st) return st;
  if (!adamjit_dtype_name(d->dtype))
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_DTYPE, "%s: desc.dtype = %d is not a dtype", fn, (int)d->dtype);
  if (d->numel <= 0 || (uint64_t)d->numel > SIZE_MAX / 8)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_SIZE, "%s: desc.numel = %lld is out of range", fn, (long long)d->numel);
  int bs = d->block_size;
  if (bs < 64 || bs > 4096 || (bs & (bs - 1)))
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "%s: desc.block_size = %d: must be a power of two in 64..4096", fn,
                   bs);
  switch (d->map) {
    case ADAMJIT_QMAP_SIGNED:
    case ADAMJIT_QMAP_UNSIGNED: *map = aj_qmap_builtin(d->map == ADAMJIT_QMAP_SIGNED); break;
    case ADAMJIT_QMAP_CUSTOM:
      st = aj_qmap_check(ctx, d->custom_map, d->custom_map_size);
      if (st) return st;
      aj_qmap_prepare(custom, d->custom_map);
      *map = custom;
      break;
    default: return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "%s: desc.map = %d is not a map kind", fn, (int)d->map);
  }
  return ADAMJIT_OK;
}

/* Sizes the three buffers must hold. */
static adamjit_status check_buffers(adamjit_context* ctx, const adamjit_quant_desc* d, adamjit_mem x,
                                    adamjit_mem codes, adamjit_mem absmax) {
  size_t n = (size_t)d->numel, blocks = (n + (size_t)d->block_size - 1) / (size_t)d->block_size;
  adamjit_status st = ctx->ops->mem_check(ctx, x, n * adamjit_dtype_size(d->dtype), "values");
  if (!st) st = ctx->ops->mem_check(ctx, codes, n, "codes");
  if (!st) st = ctx->ops->mem_check(ctx, absmax, blocks * sizeof(float), "absmax");
  return st;
}

/* Both calls: validate everything, then hand the job to the backend. */
static adamjit_status quant_call(adamjit_context* ctx, const char* fn, const adamjit_quant_desc* desc, adamjit_mem x,
                                 adamjit_mem codes, adamjit_mem absmax, int quantize) {
  adamjit_quant_desc d;
  aj_qmap custom;
  const aj_qmap* map = NULL;
  const adamjit_mem mem[3] = {x, codes, absmax};
  const char* const names[3] = {quantize ? "x" : "out", "codes", "absmax"};
  adamjit_status st = prepare(ctx, fn, desc, mem, names, &d, &custom, &map);
  if (!st) st = check_buffers(ctx, &d, x, codes, absmax);
  if (st) return st;
  aj_quant_job job = {d.dtype, d.numel, d.block_size, map, x, codes, absmax};
  return quantize ? ctx->ops->quantize(ctx, &job) : ctx->ops->dequantize(ctx, &job);
}

adamjit_status adamjit_quantize_blockwise(adamjit_context* ctx, const adamjit_quant_desc* desc, adamjit_mem x,
                                          adamjit_mem codes, adamjit_mem absmax) {
  return quant_call(ctx, "adamjit_quantize_blockwise", desc, x, codes, absmax, 1);
}

adamjit_status adamjit_dequantize_blockwise(adamjit_context* ctx, const adamjit_quant_desc* desc, adamjit_mem codes,
                                            adamjit_mem absmax, adamjit_mem out) {
  return quant_call(ctx, "adamjit_dequantize_blockwise", desc, out, codes, absmax, 0);
}
