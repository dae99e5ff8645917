/* Every kernel family renders to OpenCL C that the OpenCL device here (PoCL in CI) builds
 * with -cl-std=CL1.2: a sample of the semantic space (the full one is ~1250 programs, far
 * too slow for a CPU OpenCL compiler in CI) plus a few launch-parameter samples per family.
 *   adamw32     the 9 param/grad dtype pairs x amsgrad, wd/clip/nonfinite cycling
 *   adamw8      the 9 dtype pairs at block 256 (flags cycling), blocks 64 and 4096 with
 *               amsgrad, and b=0 (the four kernels of one absmax per tensor) with every
 *               flag on and with none; both blockwise layouts (vec = 1 and vec > 1) among
 *               the launch samples, each also as multi (many tensors per launch)
 *   quantize,   each dtype at blocks 64, 256 and 4096 (the guard alternating for quantize)
 *   dequantize
 *   sqnorm      each grad dtype (the guard on for two of them)
 *   clip        with and without the guard
 * A failure prints the variant key and the whole build log. Skipped (77) without a device.
 * One thread: an aj_cl_device is single-threaded, and PoCL compiles on all cores anyway. */
#define _GNU_SOURCE /* mkdtemp, nftw */
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "pocl_scratch.h"
#include "jit/lua_host.h"
#include "jit/opencl.h"
#include "jit/render.h"
#include "jit/variant.h"

#define MAX_JOBS 128

static const adamjit_dtype dts[3] = {ADAMJIT_F32, ADAMJIT_F16, ADAMJIT_BF16};

typedef struct job_list {
  aj_variant v[MAX_JOBS];
  int n;
} job_list;

static void push(job_list* l, const aj_variant* v) {
  CHECK_MSG(aj_variant_check(NULL, v) == ADAMJIT_OK, "%s", adamjit_last_error());
  if (l->n < MAX_JOBS) l->v[l->n++] = *v;
}

static aj_variant base(aj_kernel_family f) {
  aj_variant v;
  aj_variant_init_default(&v, f);
  v.dialect = AJ_DIALECT_OPENCL;
  return v;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void build_jobs(job_list* l) {
  int k = 0;
  for (int pi = 0; pi < 3; pi++)
    for (int gi = 0; gi < 3; gi++)
      for (int ams = 0; ams < 2; ams++, k++) {
        aj_variant v = base(AJ_KERNEL_ADAMW32);
        v.param_dtype = dts[pi];
        v.grad_dtype = dts[gi];
        v.amsgrad = ams;
        /* k runs over 18 values: the low three bits give every wd/clip/guard combination */
        v.weight_decay = k & 1;
        v.clipping = (k >> 1) & 1;
        v.nonfinite_guard = (k >> 2) & 1;
        push(l, &v);
      }
  k = 0;
  for (int pi = 0; pi < 3; pi++)
    for (int gi = 0; gi < 3; gi++, k++) {
      aj_variant v = base(AJ_KERNEL_ADAMW8);
      v.param_dtype = dts[pi];
      v.grad_dtype = dts[gi];
      v.amsgrad = k & 1;
      v.weight_decay = (k >> 1) & 1;
      v.clipping = (k >> 2) & 1;
      v.nonfinite_guard = (k & 1) ^ ((k >> 2) & 1); /* not tied to any one flag above */
      push(l, &v);
    }
  for (int b = 64; b <= 4096; b *= 64) {
    aj_variant v = base(AJ_KERNEL_ADAMW8);
    v.param_dtype = ADAMJIT_BF16;
    v.grad_dtype = b == 64 ? ADAMJIT_F16 : ADAMJIT_F32;
    v.block_size = b;
    v.amsgrad = v.weight_decay = v.clipping = v.nonfinite_guard = 1;
    push(l, &v);
  }
  for (int all = 0; all < 2; all++) {
    aj_variant v = base(AJ_KERNEL_ADAMW8);
    v.param_dtype = all ? ADAMJIT_BF16 : ADAMJIT_F32;
    v.grad_dtype = all ? ADAMJIT_F16 : ADAMJIT_F32;
    v.block_size = 0;
    v.amsgrad = v.weight_decay = v.clipping = v.nonfinite_guard = all;
    push(l, &v);
  }
  static const int blocks[3] = {64, 256, 4096};
  k = 0;
  for (int pi = 0; pi < 3; pi++)
    for (int bi = 0; bi < 3; bi++, k++) {
      aj_variant q = base(AJ_KERNEL_QUANTIZE);
      q.param_dtype = dts[pi];
      q.block_size = blocks[bi];
      q.nonfinite_guard = k & 1;
      push(l, &q);
      aj_variant d = base(AJ_KERNEL_DEQUANTIZE);
      d.param_dtype = dts[pi];
      d.block_size = blocks[bi];
      push(l, &d);
    }
  for (int gi = 0; gi < 3; gi++) {
    aj_variant v = base(AJ_KERNEL_SQNORM);
    v.grad_dtype = dts[gi];
    v.nonfinite_guard = gi != 1;
    push(l, &v);
  }
  for (int guard = 0; guard < 2; guard++) {
    aj_variant v = base(AJ_KERNEL_CLIP);
    v.nonfinite_guard = guard;
    push(l, &v);
  }
}

/* Launch parameters: the smallest and largest shapes and an uneven one, per family, on
 * half-precision data with every flag on (the most code the template can emit). */
static void add_launch_samples(job_list* l) {
  /* the last: blockwise adamw8's own-blocks layout with its code table and recomputed
   * moments (block 4096), which the first (block 64, a small group) does not render */
  static const int launch[][3] = {{32, 1, 1}, {1024, 16, 8}, {64, 8, 2}, {128, 16, 1}};
  for (int f = 0; f < AJ_KERNEL_FAMILY_COUNT; f++)
    for (size_t s = 0; s < sizeof launch / sizeof launch[0]; s++) {
      if (s == 2 && f != AJ_KERNEL_ADAMW32 && f != AJ_KERNEL_ADAMW8) continue; /* keep CI short */
      if (s == 3 && f != AJ_KERNEL_ADAMW8) continue;
      aj_variant v = base((aj_kernel_family)f);
      if (v.family != AJ_KERNEL_SQNORM && v.family != AJ_KERNEL_CLIP) v.param_dtype = ADAMJIT_BF16;
      if (v.family != AJ_KERNEL_QUANTIZE && v.family != AJ_KERNEL_DEQUANTIZE && v.family != AJ_KERNEL_CLIP)
        v.grad_dtype = ADAMJIT_F16;
      if (v.family == AJ_KERNEL_ADAMW32 || v.family == AJ_KERNEL_ADAMW8) v.amsgrad = v.clipping = v.weight_decay = 1;
      if (v.block_size) v.block_size = s % 2 ? 4096 : 64;
      v.wg_size = launch[s][0];
      v.elems_per_thread = launch[s][1];
      v.vec_width = launch[s][2];
      push(l, &v);
      if (v.family == AJ_KERNEL_ADAMW8 && s >= 2) { /* grouped (no clip), in both layouts */
        v.clipping = 0;
        v.multi = 1;
        push(l, &v);
      }
      if (v.family == AJ_KERNEL_ADAMW8 && s < 2) { /* and the extremes with one absmax per tensor */
        v.block_size = 0;
        push(l, &v);
      }
    }
}

int main(void) {
  /* PoCL caches compiled kernels under ~/.cache/pocl: a fresh directory makes every build
   * a real one and leaves nothing behind. Must be set before PoCL loads. */
  char cache_dir[] = "opencl_variants_pocl_cache_XXXXXX";
  if (pocl_scratch_begin(cache_dir)) return 1;

  char why[2048];
  if (aj_opencl_available(why, sizeof why) != ADAMJIT_OK) {
    printf("SKIP: OpenCL loader unavailable: %s\n", why);
    pocl_scratch_end(cache_dir);
    return TEST_SKIP_CODE;
  }
  adamjit_context* ctx = NULL;
  aj_lua_host* host = NULL;
  aj_cl_device* dev = NULL;
  if (adamjit_context_create(NULL, &ctx) != ADAMJIT_OK) {
    fprintf(stderr, "context: %s\n", adamjit_last_error());
    pocl_scratch_end(cache_dir);
    return 1;
  }
  if (aj_opencl_device_open(ctx, NULL, &dev) != ADAMJIT_OK) {
    printf("SKIP: no OpenCL device: %s\n", adamjit_context_last_error(ctx));
    adamjit_context_destroy(ctx);
    pocl_scratch_end(cache_dir);
    return TEST_SKIP_CODE;
  }
  printf("OpenCL device: %s (%s), %s\n", dev->info.name, dev->info.platform, dev->info.version);
  REQUIRE_OK(aj_lua_host_create(ctx, &host));

  static job_list jobs;
  build_jobs(&jobs);
  int semantic = jobs.n;
  add_launch_samples(&jobs);
  printf("%d variants (%d semantic, %d launch samples)\n", jobs.n, semantic, jobs.n - semantic);

  int built = 0, failed = 0;
  double t0 = now_s();
  for (int j = 0; j < jobs.n; j++) {
    const aj_variant* v = &jobs.v[j];
    char key[AJ_VARIANT_TEXT_MAX];
    aj_variant_format(v, key, sizeof key);
    char* src = NULL;
    size_t len = 0;
    if (aj_render_variant(ctx, host, v, NULL, &src, &len) != ADAMJIT_OK) {
      fprintf(stderr, "RENDER FAILED %s: %s\n", key, adamjit_context_last_error(ctx));
      failed++;
      continue;
    }
    char name[64];
    snprintf(name, sizeof name, "%s.cl", aj_kernel_family_name(v->family));
    aj_cl_program prog;
    double tb = now_s();
    adamjit_status st = aj_opencl_build(ctx, dev, name, src, "-cl-std=CL1.2", &prog);
    if (st != ADAMJIT_OK || !prog.program) {
      fprintf(stderr, "BUILD FAILED %s: %s: %s\n--- log ---\n%s\n--- end log ---\n", key, adamjit_status_string(st),
              adamjit_context_last_error(ctx), prog.log ? prog.log : "(none)");
      /* The source once: the log names lines in it. */
      if (failed == 0) fprintf(stderr, "--- source of %s ---\n%s\n--- end source ---\n", key, src);
      failed++;
    } else {
      built++;
      printf("  ok %-72s %6.0f ms\n", key, 1e3 * (now_s() - tb));
    }
    aj_opencl_program_free(&prog);
    free(src);
  }
  double dt = now_s() - t0;
  printf("built %d of %d OpenCL programs in %.1f s (%.0f ms each), %d failures\n", built, jobs.n, dt,
         built ? 1e3 * dt / built : 0.0, failed);
  CHECK(failed == 0);
  CHECK(built == jobs.n);

  aj_lua_host_destroy(host);
  aj_opencl_device_close(dev);
  adamjit_context_destroy(ctx);
  pocl_scratch_end(cache_dir);
  return test_finish("test_opencl_variants");
}
