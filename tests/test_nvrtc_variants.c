/* Every kernel family renders to CUDA C that NVRTC compiles to CUBIN for sm_80 and sm_90
 * (NVRTC needs no GPU). The full cross product of the semantic dimensions at default launch
 * parameters for adamw32, sqnorm, quantize and dequantize; adamw8 sampled (every dtype pair
 * x amsgrad at blocks 64 and 4096, the other flags alternating: its full space is ~1000
 * variants, too slow for CI); plus a sample of launch parameters for every family. Two
 * threads compile in parallel (each with its own Lua host; NVRTC programs are per call).
 * Exits 77 when NVRTC cannot be loaded. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "jit/lua_host.h"
#include "jit/nvrtc.h"
#include "jit/render.h"
#include "jit/variant.h"

#define N_THREADS 2

static const char* const archs[] = {"sm_80", "sm_90"};

typedef struct job_list {
  aj_variant* v;
  int n, cap;
} job_list;

static void push(job_list* l, const aj_variant* v) {
  if (l->n == l->cap) {
    l->cap = l->cap ? 2 * l->cap : 256;
    l->v = realloc(l->v, (size_t)l->cap * sizeof *l->v);
    if (!l->v) exit(2);
  }
  l->v[l->n++] = *v;
}

typedef struct worker {
  const job_list* jobs;
  int index; /* this thread takes jobs index, index + N_THREADS, ... */
  int compiled, failed;
  size_t cubin_bytes;
} worker;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void* run_worker(void* arg) {
  worker* w = arg;
  adamjit_context* ctx = NULL;
  aj_lua_host* host = NULL;
  if (adamjit_context_create(NULL, &ctx) != ADAMJIT_OK || aj_lua_host_create(ctx, &host) != ADAMJIT_OK) {
    fprintf(stderr, "worker %d: setup failed: %s\n", w->index, adamjit_last_error());
    w->failed++;
    adamjit_context_destroy(ctx);
    return NULL;
  }
  for (int j = w->index; j < w->jobs->n; j += N_THREADS) {
    const aj_variant* v = &w->jobs->v[j];
    char key[AJ_VARIANT_TEXT_MAX];
    aj_variant_format(v, key, sizeof key);
    char* src = NULL;
    size_t len = 0;
    if (aj_render_variant(ctx, host, v, NULL, &src, &len) != ADAMJIT_OK) {
      fprintf(stderr, "RENDER FAILED %s: %s\n", key, adamjit_context_last_error(ctx));
      w->failed++;
      continue;
    }
    char prog[64];
    snprintf(prog, sizeof prog, "%s.cu", aj_kernel_family_name(v->family));
    for (size_t a = 0; a < sizeof archs / sizeof archs[0]; a++) {
      aj_nvrtc_result r;
      adamjit_status st = aj_nvrtc_compile(ctx, prog, src, archs[a], NULL, 0, &r);
      if (st != ADAMJIT_OK || !r.is_cubin) {
        fprintf(stderr, "COMPILE FAILED %s for %s: %s (cubin %d)\n--- log ---\n%s\n--- source ---\n%s\n", key,
                archs[a], adamjit_status_string(st), r.is_cubin, r.log ? r.log : adamjit_context_last_error(ctx),
                w->failed == 0 ? src : "(printed once per thread)");
        w->failed++;
      } else {
        w->compiled++;
        w->cubin_bytes += r.size;
      }
      aj_nvrtc_result_free(&r);
    }
    free(src);
  }
  aj_lua_host_destroy(host);
  adamjit_context_destroy(ctx);
  return NULL;
}

static void add_family(job_list* l, aj_kernel_family f) {
  int count = aj_variant_enumerate(f, AJ_DIALECT_CUDA, NULL, 0);
  aj_variant* vs = test_calloc((size_t)count, sizeof *vs);
  aj_variant_enumerate(f, AJ_DIALECT_CUDA, vs, count);
  for (int i = 0; i < count; i++) push(l, &vs[i]);
  free(vs);
}

int main(void) {
  char why[512];
  if (aj_nvrtc_available(why, sizeof why) != ADAMJIT_OK) {
    printf("NVRTC unavailable, skipping: %s\n", why);
    return TEST_SKIP_CODE;
  }
  int major = 0, minor = 0;
  aj_nvrtc_version(&major, &minor);
  printf("NVRTC %d.%d (%s)\n", major, minor, aj_nvrtc_library());

  job_list jobs = {0};
  add_family(&jobs, AJ_KERNEL_ADAMW32);
  add_family(&jobs, AJ_KERNEL_SQNORM);
  add_family(&jobs, AJ_KERNEL_QUANTIZE);
  add_family(&jobs, AJ_KERNEL_DEQUANTIZE);
  /* adamw8: every dtype pair x amsgrad at the smallest and largest block, the other flags
   * cycling through their 8 combinations. */
  static const adamjit_dtype dts[3] = {ADAMJIT_F32, ADAMJIT_F16, ADAMJIT_BF16};
  int k = 0;
  for (int pi = 0; pi < 3; pi++)
    for (int gi = 0; gi < 3; gi++)
      for (int ams = 0; ams < 2; ams++)
        for (int b = 64; b <= 4096; b *= 64, k++) {
          aj_variant v;
          aj_variant_init_default(&v, AJ_KERNEL_ADAMW8);
          v.dialect = AJ_DIALECT_CUDA;
          v.param_dtype = dts[pi];
          v.grad_dtype = dts[gi];
          v.amsgrad = ams;
          v.block_size = b;
          v.weight_decay = k & 1;
          v.clipping = (k >> 1) & 1;
          v.nonfinite_guard = (k >> 2) & 1;
          push(&jobs, &v);
        }
  int semantic = jobs.n;
  /* Launch parameters: the extremes and a middle point for every family. */
  static const int launch[][3] = {{32, 1, 1}, {1024, 16, 8}, {64, 8, 2}, {512, 2, 2}};
  for (int f = 0; f < AJ_KERNEL_FAMILY_COUNT; f++)
    for (size_t s = 0; s < sizeof launch / sizeof launch[0]; s++) {
      aj_variant v;
      aj_variant_init_default(&v, (aj_kernel_family)f);
      v.dialect = AJ_DIALECT_CUDA;
      v.param_dtype = v.family == AJ_KERNEL_SQNORM ? ADAMJIT_F32 : ADAMJIT_BF16;
      if (v.family != AJ_KERNEL_QUANTIZE && v.family != AJ_KERNEL_DEQUANTIZE) v.grad_dtype = ADAMJIT_F16;
      if (v.family == AJ_KERNEL_ADAMW32 || v.family == AJ_KERNEL_ADAMW8) v.amsgrad = v.clipping = v.weight_decay = 1;
      if (v.block_size) v.block_size = s % 2 ? 4096 : 64;
      v.wg_size = launch[s][0];
      v.elems_per_thread = launch[s][1];
      v.vec_width = launch[s][2];
      char key[AJ_VARIANT_TEXT_MAX];
      CHECK_MSG(aj_variant_check(NULL, &v) == ADAMJIT_OK, "%s", adamjit_last_error());
      aj_variant_format(&v, key, sizeof key);
      push(&jobs, &v);
    }
  printf("%d variants (%d semantic, %d launch samples) x %zu archs on %d threads\n", jobs.n, semantic,
         jobs.n - semantic, sizeof archs / sizeof archs[0], N_THREADS);

  double t0 = now_s();
  pthread_t th[N_THREADS];
  worker w[N_THREADS];
  int started[N_THREADS] = {0};
  for (int i = 0; i < N_THREADS; i++) {
    w[i] = (worker){&jobs, i, 0, 0, 0};
    started[i] = pthread_create(&th[i], NULL, run_worker, &w[i]) == 0;
    if (!started[i]) run_worker(&w[i]); /* no thread: do its share here */
  }
  int compiled = 0, failed = 0;
  size_t bytes = 0;
  for (int i = 0; i < N_THREADS; i++) {
    if (started[i]) pthread_join(th[i], NULL);
    compiled += w[i].compiled;
    failed += w[i].failed;
    bytes += w[i].cubin_bytes;
  }
  double dt = now_s() - t0;
  printf("compiled %d cubins (%zu bytes) in %.1f s (%.0f ms per compile per thread), %d failures\n", compiled, bytes,
         dt, compiled ? 1e3 * dt * N_THREADS / compiled : 0.0, failed);
  CHECK(failed == 0);
  CHECK(compiled == jobs.n * (int)(sizeof archs / sizeof archs[0]));
  free(jobs.v);
  return test_finish("test_nvrtc_variants");
}
