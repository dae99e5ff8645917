/* The public run-time kernel calls: keys, rendering with a context's template directory,
 * builds through the caches (compiled -> memory -> disk -> compiled after clearing), compile
 * and template failures, and the keys the GPU backends launch per tensor. Runs on a CPU
 * context; the OpenCL part needs a device (PoCL in CI) and the CUDA part NVRTC; each is
 * skipped (with a message) when missing, and the whole test only passes when at least one
 * compiler ran. */
#define _GNU_SOURCE /* mkdtemp, nftw (pocl_scratch.h) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adamjit/adamjit.h"
#include "harness.h"
#include "pocl_scratch.h"

static char cache_dir[256];
static char template_dir[256];

static adamjit_context* open_ctx(const char* tdir) {
  adamjit_context_desc d;
  adamjit_context_desc_init_default(&d);
  d.backend = ADAMJIT_BACKEND_CPU;
  d.cache_dir = cache_dir;
  d.template_dir = tdir;
  adamjit_context* ctx = NULL;
  REQUIRE_OK(adamjit_context_create(&d, &ctx));
  return ctx;
}

static void write_file(const char* dir, const char* name, const char* text) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE* f = fopen(path, "w");
  REQUIRE_OK(f ? ADAMJIT_OK : ADAMJIT_ERR_IO);
  fputs(text, f);
  fclose(f);
}

static void test_keys(void) {
  int n = adamjit_kernel_variant_count();
  CHECK(n > 2000);
  char key[ADAMJIT_KERNEL_KEY_MAX], canon[ADAMJIT_KERNEL_KEY_MAX];
  for (int i = 0; i < n; i += 97) {
    CHECK_OK(adamjit_kernel_variant_key(i, key, sizeof key));
    CHECK_OK(adamjit_kernel_key_canonical(key, canon, sizeof canon));
    CHECK_MSG(strcmp(key, canon) == 0, "%s is not canonical (%s)", key, canon);
  }
  CHECK_OK(adamjit_kernel_variant_key(n - 1, key, sizeof key));
  CHECK_STATUS(adamjit_kernel_variant_key(n, key, sizeof key), ADAMJIT_ERR_INVALID_INDEX);
  CHECK_STATUS(adamjit_kernel_variant_key(-1, key, sizeof key), ADAMJIT_ERR_INVALID_INDEX);
  CHECK_STATUS(adamjit_kernel_variant_key(0, key, 4), ADAMJIT_ERR_INVALID_SIZE);
  CHECK_STATUS(adamjit_kernel_variant_key(0, NULL, 4), ADAMJIT_ERR_NULL_ARGUMENT);

  CHECK_OK(adamjit_kernel_key_canonical("adamw8/cuda/wd/b=128/p=bf16", canon, sizeof canon));
  CHECK(strcmp(canon, "adamw8/cuda/p=bf16/g=f32/b=128/wd/wg=256/ept=4/vec=4") == 0);
  CHECK_STATUS(adamjit_kernel_key_canonical("adamw8/cuda/bogus", canon, sizeof canon), ADAMJIT_ERR_INVALID_VALUE);
  CHECK(strstr(adamjit_last_error(), "bogus") != NULL);
  CHECK_STATUS(adamjit_kernel_key_canonical("adamw8/cuda", canon, 8), ADAMJIT_ERR_INVALID_SIZE);
}

static void test_render(void) {
  adamjit_context* ctx = open_ctx(NULL);
  char* src = NULL;
  CHECK_OK(adamjit_kernel_render(ctx, "adamw32/opencl/p=bf16", &src));
  CHECK(src && strstr(src, "aj_adamw32") && strstr(src, "FP_CONTRACT OFF"));
  adamjit_free(src);
  CHECK_OK(adamjit_kernel_render(ctx, "sqnorm/cuda", &src));
  CHECK(src && strstr(src, "aj_sqnorm") && strstr(src, "__global__"));
  adamjit_free(src);
  CHECK_STATUS(adamjit_kernel_render(ctx, "adamw32/metal", &src), ADAMJIT_ERR_INVALID_VALUE);
  CHECK(src == NULL);
  CHECK_STATUS(adamjit_kernel_render(ctx, NULL, &src), ADAMJIT_ERR_NULL_ARGUMENT);
  adamjit_context_destroy(ctx);

  /* The context's template directory overrides one template; the others stay embedded. */
  write_file(template_dir, "sqnorm.lua", "emit('// edited sqnorm for ', params.dialect, '\\n')\n");
  ctx = open_ctx(template_dir);
  CHECK_OK(adamjit_kernel_render(ctx, "sqnorm/opencl", &src));
  CHECK(src && strstr(src, "// edited sqnorm for opencl") && !strstr(src, "aj_sqnorm("));
  adamjit_free(src);
  CHECK_OK(adamjit_kernel_render(ctx, "adamw32/opencl", &src));
  CHECK(src && strstr(src, "aj_adamw32"));
  adamjit_free(src);

  /* A broken template: TEMPLATE, naming the file and line. */
  write_file(template_dir, "quantize.lua", "emit('ok')\nlocal x = = 1\n");
  CHECK_STATUS(adamjit_kernel_render(ctx, "quantize/opencl", &src), ADAMJIT_ERR_TEMPLATE);
  CHECK_MSG(strstr(adamjit_context_last_error(ctx), "quantize.lua:2") != NULL, "message: %s",
            adamjit_context_last_error(ctx));
  CHECK(src == NULL);
  adamjit_kernel_build_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  CHECK_STATUS(adamjit_kernel_build(ctx, "quantize/opencl", NULL, &info), ADAMJIT_ERR_TEMPLATE);
  CHECK(info.log == NULL);
  adamjit_context_destroy(ctx);
}

/* One compiler's cache walk; returns 1 if it ran, 0 if the compiler is not here. */
static int walk_cache(const char* key, const char* broken_key) {
  adamjit_context* ctx = open_ctx(template_dir);
  adamjit_kernel_build_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  adamjit_status st = adamjit_kernel_build(ctx, key, NULL, &info);
  if (st == ADAMJIT_ERR_BACKEND_UNAVAILABLE) {
    printf("skipped %s: %s\n", key, adamjit_context_last_error(ctx));
    adamjit_context_destroy(ctx);
    return 0;
  }
  CHECK_MSG(st == ADAMJIT_OK, "%s: %s", key, adamjit_context_last_error(ctx));
  CHECK(info.source == ADAMJIT_KERNEL_COMPILED && info.binary_bytes > 0 && info.source_bytes > 0);
  CHECK(info.log != NULL && info.target[0]);
  adamjit_free(info.log);
  printf("%s: %s, %zu bytes, compile %.1f ms\n", key, info.target, info.binary_bytes, info.build_ms);
  size_t bytes = info.binary_bytes;

  CHECK_OK(adamjit_kernel_build(ctx, key, NULL, &info));
  CHECK(info.source == ADAMJIT_KERNEL_FROM_MEMORY_CACHE && info.binary_bytes == bytes && info.log == NULL);
  CHECK_OK(adamjit_kernel_cache_clear(ctx, ADAMJIT_KERNEL_CACHE_MEMORY));
  CHECK_OK(adamjit_kernel_build(ctx, key, NULL, &info));
  CHECK(info.source == ADAMJIT_KERNEL_FROM_DISK_CACHE && info.binary_bytes == bytes);
  /* another context (process-like: a fresh memory cache) finds the disk entry */
  adamjit_context* other = open_ctx(template_dir);
  CHECK_OK(adamjit_kernel_build(other, key, NULL, &info));
  CHECK(info.source == ADAMJIT_KERNEL_FROM_DISK_CACHE);
  adamjit_context_destroy(other);

  CHECK_OK(adamjit_kernel_cache_clear(ctx, ADAMJIT_KERNEL_CACHE_MEMORY | ADAMJIT_KERNEL_CACHE_DISK));
  adamjit_kernel_build_desc d;
  adamjit_kernel_build_desc_init_default(&d);
  d.use_cache = 0; /* compiles, stores nothing */
  CHECK_OK(adamjit_kernel_build(ctx, key, &d, &info));
  CHECK(info.source == ADAMJIT_KERNEL_COMPILED);
  adamjit_free(info.log);
  CHECK_OK(adamjit_kernel_build(ctx, key, NULL, &info));
  CHECK(info.source == ADAMJIT_KERNEL_COMPILED);
  adamjit_free(info.log);
  /* info may be NULL, and an older, smaller info struct gets only the fields it knows */
  CHECK_OK(adamjit_kernel_build(ctx, key, NULL, NULL));
  info.struct_size = offsetof(adamjit_kernel_build_info, log);
  info.log = (char*)"untouched";
  CHECK_OK(adamjit_kernel_build(ctx, key, NULL, &info));
  CHECK(strcmp(info.log, "untouched") == 0);
  info.struct_size = 3;
  CHECK_STATUS(adamjit_kernel_build(ctx, key, NULL, &info), ADAMJIT_ERR_INVALID_SIZE);
  d.use_cache = 2;
  CHECK_STATUS(adamjit_kernel_build(ctx, key, &d, NULL), ADAMJIT_ERR_INVALID_VALUE);

  /* A template that renders code the compiler rejects: COMPILE, the key and log in the message. */
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  CHECK_STATUS(adamjit_kernel_build(ctx, broken_key, NULL, &info), ADAMJIT_ERR_COMPILE);
  const char* msg = adamjit_context_last_error(ctx);
  CHECK_MSG(strncmp(msg, broken_key, strlen("dequantize")) == 0 && strstr(msg, "undeclared_thing"), "message: %s", msg);
  CHECK(info.log && strstr(info.log, "undeclared_thing"));
  adamjit_free(info.log);
  adamjit_context_destroy(ctx);
  return 1;
}

static int test_builds(void) {
  write_file(template_dir, "dequantize.lua", "emit('KERNEL void aj_dequantize(void) { undeclared_thing = 1; }\\n')\n");
  int ran = walk_cache("adamw8/opencl/p=f16/b=512/amsgrad", "dequantize/opencl");
  ran += walk_cache("adamw8/cuda/p=bf16/g=f16/b=128/clip", "dequantize/cuda");
  if (!ran) return 0;
  char dir[512];
  adamjit_context* ctx = open_ctx(NULL);
  CHECK_OK(adamjit_kernel_cache_dir(ctx, dir, sizeof dir));
  CHECK(strcmp(dir, cache_dir) == 0);
  CHECK_STATUS(adamjit_kernel_cache_dir(ctx, dir, 3), ADAMJIT_ERR_INVALID_SIZE);
  CHECK_STATUS(adamjit_kernel_cache_clear(ctx, 0), ADAMJIT_ERR_INVALID_VALUE);
  CHECK_STATUS(adamjit_kernel_cache_clear(ctx, 4), ADAMJIT_ERR_INVALID_VALUE);
  CHECK_STATUS(adamjit_kernel_cache_clear(NULL, 1), ADAMJIT_ERR_NULL_ARGUMENT);
  adamjit_context_destroy(ctx);
  return 1;
}

static void expect_keys(adamjit_optimizer* opt, const adamjit_tensor_desc* d, const char* dialect,
                        const char* const* want, int n_want) {
  char keys[4][ADAMJIT_KERNEL_KEY_MAX];
  int n = -1;
  CHECK_OK(adamjit_optimizer_kernel_keys(opt, d, dialect, keys, 4, &n));
  CHECK_MSG(n == n_want, "%d keys, expected %d", n, n_want);
  for (int i = 0; i < n && i < n_want; i++) CHECK_MSG(strcmp(keys[i], want[i]) == 0, "key %d: %s, expected %s", i, keys[i], want[i]);
}

static void test_optimizer_keys(void) {
  adamjit_context* ctx = open_ctx(NULL);
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.optim_bits = 8;
  cfg.quant_block_size = 128;
  adamjit_optimizer* opt = NULL;
  REQUIRE_OK(adamjit_optimizer_create(ctx, &cfg, &opt));
  adamjit_hparams hp;
  adamjit_hparams_init_default(&hp);
  hp.amsgrad = 1;
  hp.weight_decay = 0.0f;
  int group = -1;
  REQUIRE_OK(adamjit_optimizer_add_group(opt, &hp, &group));

  adamjit_tensor_desc d;
  adamjit_tensor_desc_init_default(&d); /* no buffers: only sizes and storage count */
  d.numel = 100000;
  d.param_dtype = ADAMJIT_BF16;
  /* the update kernels' launch parameters: core/kernel_plan.c, per dialect and family */
  const char* big[] = {"adamw8/cuda/p=bf16/g=f32/b=128/wd/nonfinite/wg=256/ept=4/vec=2"};
  expect_keys(opt, &d, "cuda", big, 1);
  d.numel = 100; /* below min_8bit_size: 32-bit state */
  const char* small[] = {"adamw32/opencl/p=bf16/g=f32/wd/nonfinite/wg=64/ept=1/vec=1"};
  expect_keys(opt, &d, "opencl", small, 1);
  d.numel = 100000;
  d.group = group;
  d.percentile_clipping = 5;
  d.grad_dtype = ADAMJIT_F16;
  d.quant_block_size = 1024;
  const char* clip[] = {"sqnorm/opencl/g=f16/nonfinite/wg=256/ept=4/vec=4", "clip/opencl/nonfinite/wg=256/ept=4/vec=4",
                        "adamw8/opencl/p=bf16/g=f16/b=1024/amsgrad/clip/nonfinite/wg=32/ept=4/vec=1"};
  expect_keys(opt, &d, "opencl", clip, 3);

  char keys[4][ADAMJIT_KERNEL_KEY_MAX];
  int n = 0;
  CHECK_STATUS(adamjit_optimizer_kernel_keys(opt, &d, "metal", keys, 4, &n), ADAMJIT_ERR_INVALID_VALUE);
  CHECK_STATUS(adamjit_optimizer_kernel_keys(opt, &d, "cuda", NULL, 4, &n), ADAMJIT_ERR_INVALID_SIZE);
  CHECK_OK(adamjit_optimizer_kernel_keys(opt, &d, "cuda", NULL, 0, &n)); /* just the count */
  CHECK(n == 3);
  d.group = 7;
  CHECK_STATUS(adamjit_optimizer_kernel_keys(opt, &d, "cuda", keys, 4, &n), ADAMJIT_ERR_INVALID_INDEX);
  d.group = 0;
  d.quant_block_size = 100;
  CHECK_STATUS(adamjit_optimizer_kernel_keys(opt, &d, "cuda", keys, 4, &n), ADAMJIT_ERR_INVALID_VALUE);
  adamjit_optimizer_destroy(opt);
  adamjit_context_destroy(ctx);
}

int main(void) {
  char scratch[] = "kernel_api_pocl_XXXXXX";
  if (pocl_scratch_begin(scratch)) return 1;
  snprintf(cache_dir, sizeof cache_dir, "%s/cache", scratch);
  snprintf(template_dir, sizeof template_dir, "%s/templates", scratch);
  if (mkdir(template_dir, 0700)) return 1;
  test_keys();
  test_render();
  test_optimizer_keys();
  int ran = test_builds();
  int rc = test_finish("test_kernel_api");
  pocl_scratch_end(scratch);
  if (rc == 0 && !ran) {
    printf("builds skipped: no compiler here (no OpenCL device, no NVRTC)\n");
    return TEST_SKIP_CODE;
  }
  return rc;
}
