/* Kernel template rendering (jit/render.h): every variant of every family renders in both
 * dialects; override directories and ADAMJIT_TEMPLATE_PATH replace single templates without
 * a rebuild; a broken template reports its file and line. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "jit/lua_host.h"
#include "jit/render.h"
#include "jit/variant.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void write_file(const char* dir, const char* name, const char* text) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE* f = fopen(path, "wb");
  if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
    fprintf(stderr, "cannot write %s\n", path);
    exit(2);
  }
}

static void remove_file(const char* dir, const char* name) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  remove(path);
}

/* Renders every variant of the enumerated space and some launch parameters. */
static void test_all_variants(adamjit_context* ctx, aj_lua_host* host) {
  double t0 = now_s();
  int total = 0;
  for (int d = 0; d < AJ_DIALECT_COUNT; d++) {
    for (int f = 0; f < AJ_KERNEL_FAMILY_COUNT; f++) {
      int count = aj_variant_enumerate((aj_kernel_family)f, (aj_dialect)d, NULL, 0);
      CHECK(count > 0);
      aj_variant* vs = test_calloc((size_t)count, sizeof *vs);
      aj_variant_enumerate((aj_kernel_family)f, (aj_dialect)d, vs, count);
      for (int i = 0; i < count; i++) {
        /* Launch parameters: defaults for most, the extremes for a few. */
        if (i % 7 == 1) vs[i].wg_size = 32, vs[i].elems_per_thread = 1, vs[i].vec_width = 1;
        if (i % 7 == 2) vs[i].wg_size = 1024, vs[i].elems_per_thread = 16, vs[i].vec_width = 8;
        char key[AJ_VARIANT_TEXT_MAX];
        aj_variant_format(&vs[i], key, sizeof key);
        char* src = NULL;
        size_t len = 0;
        adamjit_status st = aj_render_variant(ctx, host, &vs[i], NULL, &src, &len);
        CHECK_MSG(st == ADAMJIT_OK, "%s: %s", key, adamjit_context_last_error(ctx));
        if (st == ADAMJIT_OK) {
          CHECK(src && strlen(src) == len);
          CHECK_MSG(strstr(src, aj_render_kernel_name(&vs[i])) != NULL, "%s: no entry point", key);
          /* Every kernel of the program is defined. */
          const char* names[8];
          int nk = aj_render_kernel_names(&vs[i], names, 8);
          /* b=0 adamw8 has four; multi adamw8 in OpenCL's own-blocks layout two (its code table) */
          const int table = vs[i].family == AJ_KERNEL_ADAMW8 && vs[i].multi && d == AJ_DIALECT_OPENCL && vs[i].vec_width == 1;
          CHECK_MSG(nk == (vs[i].family == AJ_KERNEL_ADAMW8 && vs[i].block_size == 0 ? 4 : table ? 2 : 1), "%s: %d kernels",
                    key, nk);
          for (int k = 0; k < nk && k < 8; k++) {
            char def[96], wide[96]; /* adamw8's own-blocks update may ask for 512-bit vectors */
            snprintf(def, sizeof def, "KERNEL void %s(", names[k]);
            snprintf(wide, sizeof wide, "KERNEL AJ8_WIDE void %s(", names[k]);
            CHECK_MSG(strstr(src, def) != NULL || strstr(src, wide) != NULL, "%s: no %s", key, def);
          }
          CHECK_MSG(strstr(src, d == AJ_DIALECT_CUDA ? "__global__" : "__kernel") != NULL, "%s: dialect", key);
          /* No template placeholder may survive. */
          CHECK_MSG(strstr(src, "${") == NULL, "%s: unexpanded placeholder", key);
        }
        free(src);
        total++;
      }
      free(vs);
    }
  }
  double dt = now_s() - t0;
  printf("rendered %d variants in %.3f s (%.1f us each)\n", total, dt, 1e6 * dt / total);
  CHECK(total == 3886);
}

/* Spot checks of what the dtype and flag dimensions change in the text. */
static void test_content(adamjit_context* ctx, aj_lua_host* host) {
  aj_variant v;
  aj_variant_init_default(&v, AJ_KERNEL_ADAMW32);
  v.dialect = AJ_DIALECT_OPENCL;
  v.param_dtype = ADAMJIT_F16;
  v.grad_dtype = ADAMJIT_BF16;
  v.amsgrad = 1;
  char* src = NULL;
  size_t len = 0;
  CHECK_OK(aj_render_variant(ctx, host, &v, NULL, &src, &len));
  if (src) {
    CHECK(strstr(src, "vload_half") != NULL);
    CHECK(strstr(src, "aj_load_bf16(g, i)") != NULL);
    CHECK(strstr(src, "aj_store_if_f16(p, i, ok, pv)") != NULL);
    CHECK(strstr(src, "vmax") != NULL);
    CHECK(strstr(src, "cl_khr_fp16") == NULL);
  }
  free(src);
  v.dialect = AJ_DIALECT_CUDA;
  v.amsgrad = 0;
  CHECK_OK(aj_render_variant(ctx, host, &v, NULL, &src, &len));
  if (src) {
    CHECK(strstr(src, "#define KERNEL extern \"C\" __global__\n") != NULL);
    CHECK(strstr(src, "KERNEL void aj_adamw32(") != NULL);
    CHECK(strstr(src, "cuda_fp16") == NULL);
    CHECK(strstr(src, "vmax") == NULL);
  }
  free(src);
  CHECK(strcmp(aj_render_kernel_name(&v), "aj_adamw32") == 0);
  CHECK(aj_render_kernel_name(NULL) == NULL);
  /* Bad arguments. */
  CHECK_STATUS(aj_render_variant(ctx, NULL, &v, NULL, &src, &len), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK(src == NULL && len == 0);
  v.wg_size = 3;
  CHECK_STATUS(aj_render_variant(ctx, host, &v, NULL, &src, &len), ADAMJIT_ERR_INVALID_VALUE);
  CHECK(src == NULL);
}

/* The new programs: adamw8 with b=0 (four kernels, the documented arguments) and clip. */
static void test_tensorwise_and_clip(adamjit_context* ctx, aj_lua_host* host) {
  aj_variant v;
  char* src = NULL;
  size_t len = 0;
  CHECK_OK(aj_variant_parse(ctx, "adamw8/opencl/p=bf16/g=f16/b=0/amsgrad/clip/nonfinite", &v));
  CHECK(strcmp(aj_render_kernel_name(&v), AJ_KERNEL_NAME_ADAMW8_UPDATE) == 0);
  const char* names[4] = {NULL, NULL, NULL, NULL};
  CHECK(aj_render_kernel_names(&v, names, 2) == 4); /* a short array gets a prefix */
  CHECK(names[0] && strcmp(names[0], AJ_KERNEL_NAME_ADAMW8_ABSMAX) == 0 && names[1] &&
        strcmp(names[1], AJ_KERNEL_NAME_ADAMW8_REDUCE) == 0 && names[2] == NULL);
  CHECK(aj_render_kernel_names(&v, names, 4) == 4);
  CHECK(strcmp(names[2], AJ_KERNEL_NAME_ADAMW8_UPDATE) == 0 && strcmp(names[3], AJ_KERNEL_NAME_ADAMW8_COMMIT) == 0);
  CHECK(aj_render_kernel_names(&v, NULL, 0) == 4);
  CHECK(aj_render_kernel_names(&v, NULL, 1) == -1);
  CHECK(aj_render_kernel_names(NULL, names, 4) == -1);
  CHECK_OK(aj_render_variant(ctx, host, &v, NULL, &src, &len));
  if (src) {
    /* pass 1 and the update share one argument list, swapping partial and newmax */
    CHECK(strstr(src, "KERNEL void aj_adamw8_absmax(GLOBAL aj_bf16_t* RESTRICT p, const GLOBAL aj_f16_t* RESTRICT g,\n"
                      "    GLOBAL aj_u8* RESTRICT c1, GLOBAL aj_u8* RESTRICT c2,\n    GLOBAL aj_u8* RESTRICT c3,\n"
                      "    const GLOBAL float* RESTRICT absmax1, const GLOBAL float* RESTRICT absmax2,\n"
                      "    const GLOBAL float* RESTRICT absmax3,\n    GLOBAL float* RESTRICT partial,\n") != NULL);
    CHECK(strstr(src, "KERNEL void aj_adamw8(GLOBAL aj_bf16_t* RESTRICT p, const GLOBAL aj_f16_t* RESTRICT g,\n"
                      "    GLOBAL aj_u8* RESTRICT c1, GLOBAL aj_u8* RESTRICT c2,\n    GLOBAL aj_u8* RESTRICT c3,\n"
                      "    const GLOBAL float* RESTRICT absmax1, const GLOBAL float* RESTRICT absmax2,\n"
                      "    const GLOBAL float* RESTRICT absmax3,\n    const GLOBAL float* RESTRICT newmax,\n") != NULL);
    CHECK(strstr(src, "    const GLOBAL float* RESTRICT gscale,\n    GLOBAL aj_u32* RESTRICT nonfinite,\n    aj_size n) {") !=
          NULL);
    CHECK(strstr(src, "KERNEL void aj_adamw8_reduce(const GLOBAL float* RESTRICT in, GLOBAL float* RESTRICT out, "
                      "aj_size count)") != NULL);
    CHECK(strstr(src, "KERNEL void aj_adamw8_commit(GLOBAL float* RESTRICT absmax1, GLOBAL float* RESTRICT absmax2,\n"
                      "    GLOBAL float* RESTRICT absmax3,\n    const GLOBAL float* RESTRICT newmax)") != NULL);
    CHECK(strstr(src, "absmax1[blk]") == NULL); /* nothing of the blockwise kernel */
    CHECK(strstr(src, "#define NUM_GROUPS ((aj_size)get_num_groups(0))") != NULL);
  }
  free(src);
  src = NULL;
  v.amsgrad = 0;
  v.dialect = AJ_DIALECT_CUDA;
  CHECK_OK(aj_render_variant(ctx, host, &v, NULL, &src, &len));
  if (src) {
    CHECK(strstr(src, "c3") == NULL && strstr(src, "absmax3") == NULL);
    CHECK(strstr(src, "#define NUM_GROUPS ((aj_size)gridDim.x)") != NULL);
  }
  free(src);
  src = NULL;
  /* The blockwise kernel is still one kernel. */
  v.block_size = 256;
  CHECK(aj_render_kernel_names(&v, names, 4) == 1 && strcmp(names[0], "aj_adamw8") == 0);
  /* ... and grouped, too, but for OpenCL's own-blocks layout: the shared code table first. */
  v.multi = 1;
  v.clipping = 0; /* multi has no clip */
  CHECK(aj_render_kernel_names(&v, names, 4) == 1);
  v.dialect = AJ_DIALECT_OPENCL;
  v.vec_width = 1;
  CHECK(aj_render_kernel_names(&v, names, 4) == 2 && strcmp(names[0], "aj_adamw8_table") == 0 &&
        strcmp(names[1], "aj_adamw8") == 0);
  CHECK_OK(aj_render_variant(ctx, host, &v, NULL, &src, &len));
  if (src) CHECK(strstr(src, "KERNEL void aj_adamw8_table(") != NULL && strstr(src, "tabs") != NULL);
  free(src);
  src = NULL;
  v.multi = 0;

  aj_variant_init_default(&v, AJ_KERNEL_CLIP);
  CHECK(strcmp(aj_render_template_file(AJ_KERNEL_CLIP), "clip.lua") == 0);
  CHECK(strcmp(aj_render_kernel_name(&v), "aj_clip") == 0);
  CHECK_OK(aj_render_variant(ctx, host, &v, NULL, &src, &len));
  if (src) {
    CHECK(strstr(src, "KERNEL void aj_clip(const GLOBAL float* RESTRICT partial, GLOBAL float* RESTRICT history,\n"
                      "    GLOBAL float* RESTRICT gscale,\n    const GLOBAL aj_u32* RESTRICT nonfinite,\n"
                      "    aj_size count, aj_size step, int percentile) {") != NULL);
    CHECK(strstr(src, "#define AJ_WG 256") != NULL);
  }
  free(src);
  src = NULL;
  v.nonfinite_guard = 0;
  v.dialect = AJ_DIALECT_CUDA;
  CHECK_OK(aj_render_variant(ctx, host, &v, NULL, &src, &len));
  if (src) {
    CHECK(strstr(src, "    GLOBAL float* RESTRICT gscale,\n    aj_size count, aj_size step, int percentile) {") != NULL);
    CHECK(strstr(src, "nonfinite") == NULL);
  }
  free(src);
}

static void test_overrides(adamjit_context* ctx, aj_lua_host* host) {
  char dir[] = "/tmp/adamjit_render_XXXXXX";
  if (!mkdtemp(dir)) {
    fprintf(stderr, "mkdtemp failed\n");
    exit(2);
  }
  aj_variant v;
  aj_variant_init_default(&v, AJ_KERNEL_SQNORM);
  char* src = NULL;
  size_t len = 0;

  /* A broken body: file and line in the message. */
  write_file(dir, "sqnorm.lua", "-- line 1\nemit('x')\nemit('y'\n");
  CHECK_STATUS(aj_render_variant(ctx, host, &v, dir, &src, &len), ADAMJIT_ERR_TEMPLATE);
  CHECK(src == NULL);
  const char* msg = adamjit_context_last_error(ctx);
  CHECK_MSG(strstr(msg, "sqnorm.lua:3:") != NULL || strstr(msg, "sqnorm.lua:4:") != NULL, "message: %s", msg);
  CHECK_MSG(strstr(msg, dir) != NULL, "message names the override file: %s", msg);

  /* A run-time error in the prelude names the prelude and its line. */
  remove_file(dir, "sqnorm.lua");
  write_file(dir, "prelude.lua", "emit('a')\n\nerror('boom')\n");
  CHECK_STATUS(aj_render_variant(ctx, host, &v, dir, &src, &len), ADAMJIT_ERR_TEMPLATE);
  msg = adamjit_context_last_error(ctx);
  CHECK_MSG(strstr(msg, "prelude.lua:3:") != NULL && strstr(msg, "boom") != NULL, "message: %s", msg);
  remove_file(dir, "prelude.lua");

  /* A modified template takes effect without a rebuild; others still come from the table. */
  char* before = NULL;
  CHECK_OK(aj_render_variant(ctx, host, &v, NULL, &before, &len));
  write_file(dir, "sqnorm.lua", "emitf('// edited ${family} ${g}\\n')\n");
  CHECK_OK(aj_render_variant(ctx, host, &v, dir, &src, &len));
  CHECK(src && strstr(src, "// edited sqnorm f32") != NULL);
  CHECK(src && before && strcmp(src, before) != 0);
  CHECK(src && strstr(src, "#define KERNEL") != NULL); /* the embedded prelude */
  free(src);
  src = NULL;

  /* ADAMJIT_TEMPLATE_PATH: used when no directory is passed; the argument wins over it. */
  setenv("ADAMJIT_TEMPLATE_PATH", dir, 1);
  CHECK_OK(aj_render_variant(ctx, host, &v, NULL, &src, &len));
  CHECK(src && strstr(src, "// edited sqnorm f32") != NULL);
  free(src);
  src = NULL;
  char other[] = "/tmp/adamjit_render2_XXXXXX";
  if (!mkdtemp(other)) exit(2);
  write_file(other, "sqnorm.lua", "emit('// from the argument\\n')\n");
  CHECK_OK(aj_render_variant(ctx, host, &v, other, &src, &len));
  CHECK(src && strstr(src, "// from the argument") != NULL);
  free(src);
  src = NULL;
  unsetenv("ADAMJIT_TEMPLATE_PATH");
  CHECK_OK(aj_render_variant(ctx, host, &v, NULL, &src, &len));
  CHECK(src && before && strcmp(src, before) == 0);
  free(src);
  free(before);

  remove_file(other, "sqnorm.lua");
  rmdir(other);
  remove_file(dir, "sqnorm.lua");
  rmdir(dir);
}

int main(void) {
  adamjit_context* ctx = test_cpu_context();
  aj_lua_host* host = NULL;
  REQUIRE_OK(aj_lua_host_create(ctx, &host));
  CHECK(aj_embedded_template_count == 7);
  CHECK(aj_render_template_file(AJ_KERNEL_ADAMW8) && strcmp(aj_render_template_file(AJ_KERNEL_ADAMW8), "adamw8.lua") == 0);
  test_all_variants(ctx, host);
  test_content(ctx, host);
  test_tensorwise_and_clip(ctx, host);
  test_overrides(ctx, host);
  aj_lua_host_destroy(host);
  adamjit_context_destroy(ctx);
  return test_finish("test_render");
}
