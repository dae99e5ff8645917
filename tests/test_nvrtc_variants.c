/* Every kernel family renders to CUDA C that NVRTC compiles to CUBIN (NVRTC needs no GPU).
 * Three modes, by how much compile time they may take (a compile is 50..300 ms of one core;
 * adamw8 with large blocks is the slow end):
 *
 *   default   the whole enumerated space (aj_variant_enumerate: every family's semantic
 *             cross product at default launch parameters, 1943 variants with adamw8's 1656,
 *             b=0 and multi included, and clip) for sm_80, the oldest target and the one the
 *             library compiles for when it has no GPU to ask, except adamw8's 504 multi
 *             variants, of which only the sample's 36 (below); and the sample for sm_90 too.
 *             A multi variant differs from its plain one only in the prologue that finds
 *             its tensor (kernel_templates/adamw8.lua), so the sample meets what the rest
 *             would. About 1800 compiles, ~2 min on 2 idle cores. The whole space for both archs
 *             took 5 min on the 2-core dev machine (under load): over the CI budget, and a
 *             second arch mostly repeats the same front end; an sm_90-only failure would be
 *             a ptxas limit, which the sample's extremes (blocks 64, 4096 and 0, every launch
 *             sample) meet first.
 *   sample    the sample for both archs: every family but adamw8 in full; adamw8 as every
 *             dtype pair x amsgrad at blocks 64, 4096 and 0, wd/clip/nonfinite cycling
 *             (54 variants), and its multi variants as every dtype pair x amsgrad at blocks
 *             64 and 4096, wd/nonfinite cycling (36). For sanitizer builds, where everything around NVRTC runs slower:
 *             tests/CMakeLists.txt defines ADAMJIT_NVRTC_VARIANTS_SAMPLE there.
 *   all       the whole space for both archs (~3900 compiles), by hand.
 * ADAMJIT_NVRTC_VARIANTS=sample|full|all in the environment overrides the build's choice
 * (full = the default mode). Launch-parameter samples of every family go to both archs in
 * every mode. Two threads compile in parallel (each with its own Lua host; NVRTC programs
 * are per call). Exits 77 when NVRTC cannot be loaded. */
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
#define N_ARCHS ((int)(sizeof archs / sizeof archs[0]))
#define ALL_ARCHS ((1u << N_ARCHS) - 1u)

typedef struct job_list {
  aj_variant* v;
  unsigned* archs; /* bit a: compile for archs[a] */
  int n, cap;
} job_list;

static void push(job_list* l, const aj_variant* v, unsigned arch_mask) {
  if (l->n == l->cap) {
    l->cap = l->cap ? 2 * l->cap : 256;
    l->v = realloc(l->v, (size_t)l->cap * sizeof *l->v);
    l->archs = realloc(l->archs, (size_t)l->cap * sizeof *l->archs);
    if (!l->v || !l->archs) exit(2);
  }
  l->archs[l->n] = arch_mask;
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
  /* An explicit CPU context: it only carries messages, and the default (auto) backend
   * would probe OpenCL devices from both threads at once, which PoCL does not survive. */
  adamjit_context_desc cd;
  adamjit_context_desc_init_default(&cd);
  cd.backend = ADAMJIT_BACKEND_CPU;
  if (adamjit_context_create(&cd, &ctx) != ADAMJIT_OK || aj_lua_host_create(ctx, &host) != ADAMJIT_OK) {
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
    for (int a = 0; a < N_ARCHS; a++) {
      if (!(w->jobs->archs[j] & (1u << a))) continue;
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

enum mode { MODE_SAMPLE, MODE_FULL, MODE_ALL };
static const char* const mode_names[] = {"sample", "full", "all"};

static enum mode test_mode(void) {
#ifdef ADAMJIT_NVRTC_VARIANTS_SAMPLE
  enum mode m = MODE_SAMPLE;
#else
  enum mode m = MODE_FULL;
#endif
  const char* env = getenv("ADAMJIT_NVRTC_VARIANTS");
  for (int i = 0; env && i < 3; i++)
    if (strcmp(env, mode_names[i]) == 0) m = (enum mode)i;
  return m;
}

static int dtype_index(adamjit_dtype d) { return d == ADAMJIT_F32 ? 0 : d == ADAMJIT_F16 ? 1 : 2; }

/* The sample: all of every family but adamw8; of adamw8, every dtype pair x amsgrad at
 * blocks 64, 4096 and 0, with wd, clip and nonfinite cycling through their 8 combinations;
 * of adamw8 multi (no clip, no b=0), every dtype pair x amsgrad at blocks 64 and 4096, with
 * wd and nonfinite cycling through their 4. */
static int in_sample(const aj_variant* v) {
  if (v->family != AJ_KERNEL_ADAMW8) return 1;
  if (v->multi) {
    const int bm = v->block_size == 64 ? 0 : v->block_size == 4096 ? 1 : -1;
    if (bm < 0) return 0;
    const int k = ((dtype_index(v->param_dtype) * 3 + dtype_index(v->grad_dtype)) * 2 + v->amsgrad) * 2 + bm;
    return v->weight_decay == (k & 1) && v->nonfinite_guard == ((k >> 1) & 1);
  }
  const int bi = v->block_size == 64 ? 0 : v->block_size == 4096 ? 1 : v->block_size == 0 ? 2 : -1;
  if (bi < 0) return 0;
  const int k = ((dtype_index(v->param_dtype) * 3 + dtype_index(v->grad_dtype)) * 2 + v->amsgrad) * 3 + bi;
  return v->weight_decay == (k & 1) && v->clipping == ((k >> 1) & 1) && v->nonfinite_guard == ((k >> 2) & 1);
}

/* The enumerated space of one family, each variant for the archs the mode gives it. */
static void add_family(job_list* l, aj_kernel_family f, enum mode m) {
  int count = aj_variant_enumerate(f, AJ_DIALECT_CUDA, NULL, 0);
  aj_variant* vs = test_calloc((size_t)count, sizeof *vs);
  aj_variant_enumerate(f, AJ_DIALECT_CUDA, vs, count);
  for (int i = 0; i < count; i++) {
    const int sampled = in_sample(&vs[i]);
    const int full = m == MODE_FULL && !(vs[i].family == AJ_KERNEL_ADAMW8 && vs[i].multi);
    unsigned mask = m == MODE_ALL || sampled ? ALL_ARCHS : full ? 1u /* sm_80 */ : 0u;
    if (mask) push(l, &vs[i], mask);
  }
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

  const enum mode mode = test_mode();
  job_list jobs = {0};
  for (int f = 0; f < AJ_KERNEL_FAMILY_COUNT; f++) add_family(&jobs, (aj_kernel_family)f, mode);
  int semantic = jobs.n, sampled = 0;
  for (int j = 0; j < jobs.n; j++) sampled += jobs.archs[j] == ALL_ARCHS;
  /* Launch parameters: the extremes and a middle point for every family (adamw8 also with
   * b=0, whose passes read ept and vec as adamw32 does; blockwise, vec = 1 renders the
   * own-blocks layout and vec > 1 the shared-blocks one, see jit/variant.h; and blockwise
   * adamw8 multi, whose enumerated variants are all the shared-blocks layout). */
  static const int launch[][3] = {{32, 1, 1}, {1024, 16, 8}, {64, 8, 2}, {512, 2, 2}};
  for (int f = 0; f < AJ_KERNEL_FAMILY_COUNT; f++)
    for (size_t s = 0; s < sizeof launch / sizeof launch[0]; s++) {
      aj_variant v;
      aj_variant_init_default(&v, (aj_kernel_family)f);
      v.dialect = AJ_DIALECT_CUDA;
      const int dtypes = v.family != AJ_KERNEL_CLIP; /* clip reads fp32 partials only */
      if (dtypes && v.family != AJ_KERNEL_SQNORM) v.param_dtype = ADAMJIT_BF16;
      if (dtypes && v.family != AJ_KERNEL_QUANTIZE && v.family != AJ_KERNEL_DEQUANTIZE) v.grad_dtype = ADAMJIT_F16;
      if (v.family == AJ_KERNEL_ADAMW32 || v.family == AJ_KERNEL_ADAMW8) v.amsgrad = v.clipping = v.weight_decay = 1;
      if (v.block_size) v.block_size = s % 2 ? 4096 : 64;
      v.wg_size = launch[s][0];
      v.elems_per_thread = launch[s][1];
      v.vec_width = launch[s][2];
      char key[AJ_VARIANT_TEXT_MAX];
      CHECK_MSG(aj_variant_check(NULL, &v) == ADAMJIT_OK, "%s", adamjit_last_error());
      aj_variant_format(&v, key, sizeof key);
      push(&jobs, &v, ALL_ARCHS);
      if (v.family == AJ_KERNEL_ADAMW8) {
        v.clipping = 0;
        v.multi = 1;
        push(&jobs, &v, ALL_ARCHS);
        v.multi = 0;
        v.clipping = 1;
        v.block_size = 0;
        push(&jobs, &v, ALL_ARCHS);
      }
    }
  int expected = 0;
  for (int j = 0; j < jobs.n; j++)
    for (int a = 0; a < N_ARCHS; a++) expected += (jobs.archs[j] >> a) & 1u;
  printf("mode %s: %d semantic variants (%d of them for %s and %s, the rest for %s only) and %d launch samples: "
         "%d compiles on %d threads\n",
         mode_names[mode], semantic, sampled, archs[0], archs[1], archs[0], jobs.n - semantic, expected, N_THREADS);
  CHECK(semantic == (mode == MODE_ALL ? 1943 : mode == MODE_FULL ? 1439 + 36 : 287 + 54 + 36));
  CHECK(sampled == (mode == MODE_ALL ? 1943 : 287 + 54 + 36));

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
  CHECK(compiled == expected);
  free(jobs.v);
  free(jobs.archs);
  return test_finish("test_nvrtc_variants");
}
