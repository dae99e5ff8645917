/* The OpenCL backend's edges: checkpoints cross-loaded between the CPU and OpenCL backends
 * continue identically; failures are reported and change nothing (a kernel that does not
 * build through a broken override template, allocations the device cannot hold, buffers of
 * the wrong size or not buffers at all); the caller's own command queue; the asynchronous
 * step whose non-finite count is read later. Skipped (77) without an OpenCL device. */
#define _GNU_SOURCE /* mkdtemp, nftw (pocl_scratch.h) */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "adamjit/adamjit.h"
#include "harness.h"
#include "jit/opencl.h"
#include "pocl_scratch.h"
#include "step_log.h"

#define N 5000

static char scratch_dir[] = "opencl_backend_pocl_XXXXXX";
static char template_dir[512], ckpt[512];

static adamjit_context* open_ctx(adamjit_backend kind, const char* tdir, void* queue) {
  adamjit_context_desc d;
  adamjit_context_desc_init_default(&d);
  d.backend = kind;
  d.template_dir = tdir;
  d.queue = queue;
  adamjit_context* ctx = NULL;
  adamjit_status st = adamjit_context_create(&d, &ctx);
  CHECK_MSG(st == ADAMJIT_OK, "context: %s", adamjit_last_error());
  return ctx;
}

typedef struct rig {
  adamjit_context* ctx;
  adamjit_optimizer* opt;
  adamjit_mem p[2], g[2];
} rig;

static const int64_t sizes[2] = {N, 300};

static void rig_open(rig* r, adamjit_context* ctx, int bits, const float* init) {
  memset(r, 0, sizeof *r);
  r->ctx = ctx;
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.optim_bits = bits;
  cfg.hparams.amsgrad = 1;
  REQUIRE_OK(adamjit_optimizer_create(ctx, &cfg, &r->opt));
  for (int t = 0; t < 2; t++) {
    REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)sizes[t] * 4, &r->p[t]));
    REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)sizes[t] * 4, &r->g[t]));
    REQUIRE_OK(adamjit_mem_write(ctx, r->p[t], 0, init, (size_t)sizes[t] * 4));
    adamjit_tensor_desc d;
    adamjit_tensor_desc_init_default(&d);
    d.param = r->p[t];
    d.grad = r->g[t];
    d.numel = sizes[t];
    int index;
    REQUIRE_OK(adamjit_optimizer_add_tensor(r->opt, &d, &index));
  }
}

static void rig_close(rig* r) {
  adamjit_optimizer_destroy(r->opt);
  for (int t = 0; t < 2; t++) {
    adamjit_mem_free(r->ctx, r->p[t]);
    adamjit_mem_free(r->ctx, r->g[t]);
  }
}

static void rig_steps(rig* r, int from, int count) {
  float* g = malloc(N * sizeof *g);
  for (int s = from; s < from + count; s++) {
    for (int i = 0; i < N; i++) g[i] = 0.01f * sinf(0.37f * (float)i + 1.3f * (float)s) * (1.0f + (float)(s % 3));
    for (int t = 0; t < 2; t++) REQUIRE_OK(adamjit_mem_write(r->ctx, r->g[t], 0, g, (size_t)sizes[t] * 4));
    REQUIRE_OK(adamjit_optimizer_step(r->opt, NULL));
  }
  free(g);
}

static void read_all(rig* r, float* out) { /* params and m of tensor 0 */
  REQUIRE_OK(adamjit_mem_read(r->ctx, out, r->p[0], 0, N * 4));
  REQUIRE_OK(adamjit_optimizer_read_state(r->opt, 0, ADAMJIT_STATE_EXP_AVG, out + N, N));
}

/* Run 6 steps on `first`, save, load into `second`, run 6 more on both: bit-identical (the
 * backends compute the same fp32 operations; clipping, whose norm the CPU sums in double,
 * is compared within tolerance in test_opencl_parity). */
static void cross_load(adamjit_backend first, adamjit_backend second, int bits, const float* init) {
  rig a, b;
  adamjit_context* ca = open_ctx(first, NULL, NULL);
  adamjit_context* cb = open_ctx(second, NULL, NULL);
  rig_open(&a, ca, bits, init);
  rig_open(&b, cb, bits, init);
  rig_steps(&a, 0, 6);
  REQUIRE_OK(adamjit_optimizer_save(a.opt, ckpt));
  /* a checkpoint holds the optimizer's state; the params are the trainer's to carry over */
  float* p = malloc(N * sizeof *p);
  for (int t = 0; t < 2; t++) {
    REQUIRE_OK(adamjit_mem_read(ca, p, a.p[t], 0, (size_t)sizes[t] * 4));
    REQUIRE_OK(adamjit_mem_write(cb, b.p[t], 0, p, (size_t)sizes[t] * 4));
  }
  free(p);
  adamjit_status st = adamjit_optimizer_load(b.opt, ckpt);
  CHECK_MSG(st == ADAMJIT_OK, "load %s -> %s: %s", adamjit_backend_name(first), adamjit_backend_name(second),
            adamjit_context_last_error(cb));
  rig_steps(&a, 6, 6);
  rig_steps(&b, 6, 6);
  float* x = malloc(2 * N * sizeof *x);
  float* y = malloc(2 * N * sizeof *y);
  read_all(&a, x);
  read_all(&b, y);
  int bad = 0;
  for (int i = 0; i < 2 * N; i++) bad += memcmp(&x[i], &y[i], sizeof x[i]) != 0;
  CHECK_MSG(bad == 0, "%d-bit %s -> %s: %d values differ after the reload", bits, adamjit_backend_name(first),
            adamjit_backend_name(second), bad);
  free(x);
  free(y);
  rig_close(&a);
  rig_close(&b);
  adamjit_context_destroy(ca);
  adamjit_context_destroy(cb);
}

/* A step that cannot build its kernel fails before enqueuing anything: nothing changes. */
static void broken_template(const float* init) {
  snprintf(template_dir, sizeof template_dir, "%s/templates", scratch_dir);
  mkdir(template_dir, 0700);
  char path[600];
  snprintf(path, sizeof path, "%s/adamw32.lua", template_dir);
  FILE* f = fopen(path, "w");
  REQUIRE_OK(f ? ADAMJIT_OK : ADAMJIT_ERR_IO);
  fputs("emit('KERNEL void aj_adamw32(GLOBAL float* p) { p[0] = missing_name; }\\n')\n", f);
  fclose(f);
  adamjit_context* ctx = open_ctx(ADAMJIT_BACKEND_OPENCL, template_dir, NULL);
  rig r;
  rig_open(&r, ctx, 32, init);
  float* before = malloc(2 * N * sizeof *before);
  float* after = malloc(2 * N * sizeof *after);
  read_all(&r, before);
  uint64_t bad = 0;
  CHECK_STATUS(adamjit_optimizer_step(r.opt, &bad), ADAMJIT_ERR_COMPILE);
  CHECK(strstr(adamjit_context_last_error(ctx), "missing_name") != NULL);
  read_all(&r, after);
  CHECK(memcmp(before, after, 2 * N * sizeof *before) == 0);
  adamjit_tensor_info info = {.struct_size = sizeof info};
  CHECK_OK(adamjit_optimizer_tensor_info(r.opt, 0, &info));
  CHECK(info.step == 0);
  free(before);
  free(after);
  rig_close(&r);
  adamjit_context_destroy(ctx);
}

static void bad_memory(const float* init) {
  adamjit_context* ctx = open_ctx(ADAMJIT_BACKEND_OPENCL, NULL, NULL);
  adamjit_context* other = open_ctx(ADAMJIT_BACKEND_OPENCL, NULL, NULL);
  adamjit_mem small = NULL, big = NULL, foreign = NULL, huge = NULL;
  REQUIRE_OK(adamjit_mem_alloc(ctx, 100 * 4, &small));
  REQUIRE_OK(adamjit_mem_alloc(ctx, N * 4, &big));
  REQUIRE_OK(adamjit_mem_alloc(other, N * 4, &foreign));
  /* more than any device here has */
  adamjit_status st = adamjit_mem_alloc(ctx, (size_t)1 << 50, &huge);
  CHECK_MSG(st == ADAMJIT_ERR_OUT_OF_MEMORY, "2^50 bytes: %s", adamjit_status_string(st));
  CHECK(huge == NULL);
  adamjit_optimizer* opt = NULL;
  REQUIRE_OK(adamjit_optimizer_create(ctx, NULL, &opt));
  adamjit_tensor_desc d;
  adamjit_tensor_desc_init_default(&d);
  d.param = big;
  d.grad = small; /* too small for N floats */
  d.numel = N;
  int index = -1, count = -1;
  CHECK_STATUS(adamjit_optimizer_add_tensor(opt, &d, &index), ADAMJIT_ERR_INVALID_SIZE);
  d.grad = foreign; /* a buffer of another OpenCL context */
  CHECK_STATUS(adamjit_optimizer_add_tensor(opt, &d, &index), ADAMJIT_ERR_INVALID_VALUE);
  float host[16];
  d.grad = host; /* not a cl_mem at all */
  CHECK_STATUS(adamjit_optimizer_add_tensor(opt, &d, &index), ADAMJIT_ERR_INVALID_VALUE);
  CHECK_OK(adamjit_optimizer_tensor_count(opt, &count));
  CHECK(count == 0);
  CHECK_STATUS(adamjit_mem_write(ctx, small, 0, init, N * 4), ADAMJIT_ERR_INVALID_SIZE);
  CHECK_STATUS(adamjit_mem_read(ctx, host, small, 396, 8), ADAMJIT_ERR_INVALID_SIZE);
  adamjit_optimizer_destroy(opt);
  adamjit_mem_free(ctx, small);
  adamjit_mem_free(ctx, big);
  adamjit_mem_free(other, foreign);
  adamjit_context_destroy(ctx);
  adamjit_context_destroy(other);
}

/* The caller's queue: the context runs on it; an asynchronous step's count is read later. */
static void caller_queue(const float* init) {
  aj_cl_device* dev = NULL;
  REQUIRE_OK(aj_opencl_device_open(NULL, "0", &dev));
  adamjit_context* ctx = open_ctx(ADAMJIT_BACKEND_OPENCL, NULL, dev->queue);
  rig r;
  rig_open(&r, ctx, 8, init);
  float* g = malloc(N * sizeof *g);
  for (int i = 0; i < N; i++) g[i] = i % 1000 == 7 ? NAN : 1e-3f * (float)(i % 17);
  REQUIRE_OK(adamjit_mem_write(ctx, r.g[0], 0, g, N * 4));
  REQUIRE_OK(adamjit_mem_write(ctx, r.g[1], 0, g, 300 * 4));
  CHECK_OK(adamjit_optimizer_step(r.opt, NULL)); /* does not wait */
  uint64_t bad = 0;
  CHECK_OK(adamjit_optimizer_last_nonfinite(r.opt, &bad));
  CHECK_MSG(bad == 5 + 1, "non-finite count %llu", (unsigned long long)bad);
  /* the caller's buffers of that queue's context are accepted */
  const aj_opencl_api_table* cl = aj_opencl_api();
  cl_int err = CL_SUCCESS;
  cl_mem mine = cl->clCreateBuffer(dev->context, CL_MEM_READ_WRITE, 64, NULL, &err);
  CHECK(err == CL_SUCCESS);
  CHECK_OK(adamjit_mem_write(ctx, mine, 0, g + 10, 64));
  cl->clReleaseMemObject(mine);
  free(g);
  rig_close(&r);
  adamjit_context_destroy(ctx);
  aj_opencl_device_close(dev);
}

/* Many small tensors stepped side by side on the CPU and OpenCL backends (many_small_*):
 * every third one with bf16 params, the odd ones in a second parameter group with amsgrad. */
enum { SMALL_MAX = 300, SMALL_MAX_NUMEL = 6000 };

typedef struct small_rig {
  int count;
  int64_t (*numel)(int t);
  adamjit_context* ctx[2]; /* CPU, OpenCL */
  adamjit_optimizer* opt[2];
  adamjit_mem p[2][SMALL_MAX], g[2][SMALL_MAX];
  float *host, *other;
} small_rig;

/* Both backends' optimizers with `count` tensors of numel(t) elements; optim_bits goes to
 * the optimizer and, with tune (may be NULL), more of each tensor's descriptor is set. */
static void small_open(small_rig* r, int count, int optim_bits, int64_t (*numel)(int t),
                       void (*tune)(adamjit_tensor_desc* td, int t)) {
  const adamjit_backend kinds[2] = {ADAMJIT_BACKEND_CPU, ADAMJIT_BACKEND_OPENCL};
  r->count = count;
  r->numel = numel;
  r->host = malloc(SMALL_MAX_NUMEL * sizeof *r->host);
  r->other = malloc(SMALL_MAX_NUMEL * sizeof *r->other);
  if (!r->host || !r->other) {
    fprintf(stderr, "small_open: out of memory\n");
    exit(1);
  }
  for (int k = 0; k < 2; k++) {
    REQUIRE_OK(step_log_context(kinds[k], &r->ctx[k]));
    adamjit_optimizer_config cfg;
    adamjit_optimizer_config_init_default(&cfg);
    cfg.optim_bits = optim_bits;
    REQUIRE_OK(adamjit_optimizer_create(r->ctx[k], &cfg, &r->opt[k]));
    adamjit_hparams hp;
    adamjit_hparams_init_default(&hp);
    hp.amsgrad = 1;
    int group = 0;
    REQUIRE_OK(adamjit_optimizer_add_group(r->opt[k], &hp, &group));
    for (int t = 0; t < count; t++) {
      const int64_t n = numel(t);
      const adamjit_dtype pd = t % 3 == 0 ? ADAMJIT_BF16 : ADAMJIT_F32;
      for (int64_t i = 0; i < n; i++) r->host[i] = sinf(0.1f * (float)(i + t));
      REQUIRE_OK(adamjit_mem_alloc(r->ctx[k], (size_t)n * 4, &r->p[k][t]));
      REQUIRE_OK(adamjit_mem_alloc(r->ctx[k], (size_t)n * 4, &r->g[k][t]));
      if (pd == ADAMJIT_F32) REQUIRE_OK(adamjit_mem_write(r->ctx[k], r->p[k][t], 0, r->host, (size_t)n * 4));
      adamjit_tensor_desc td;
      adamjit_tensor_desc_init_default(&td);
      td.param = r->p[k][t];
      td.grad = r->g[k][t];
      td.numel = n;
      td.param_dtype = pd;
      td.group = t % 2 ? group : 0;
      if (tune) tune(&td, t);
      int index;
      REQUIRE_OK(adamjit_optimizer_add_tensor(r->opt[k], &td, &index));
    }
  }
}

/* Three steps with the same gradients on both backends, NaN where i % nan_every == nan_at
 * in the second: the non-finite counts must agree, and the second step must have some. */
static void small_steps(small_rig* r, int nan_every, int nan_at) {
  for (int s = 0; s < 3; s++) {
    for (int t = 0; t < r->count; t++) {
      const int64_t n = r->numel(t);
      for (int64_t i = 0; i < n; i++)
        r->host[i] = i % nan_every == nan_at && s == 1 ? NAN : 0.01f * cosf(0.3f * (float)(i * (s + 1) + t));
      for (int k = 0; k < 2; k++) REQUIRE_OK(adamjit_mem_write(r->ctx[k], r->g[k][t], 0, r->host, (size_t)n * 4));
    }
    uint64_t bad[2] = {0, 0};
    for (int k = 0; k < 2; k++) REQUIRE_OK(adamjit_optimizer_step(r->opt[k], &bad[k]));
    CHECK_MSG(bad[0] == bad[1], "step %d: %llu non-finite on the CPU, %llu on OpenCL", s, (unsigned long long)bad[0],
              (unsigned long long)bad[1]);
    CHECK(s != 1 || bad[1] > 0);
  }
}

/* Every tensor's params, m, v (and vmax in the amsgrad group) must be bit-identical. */
static void small_compare(small_rig* r) {
  int differ = 0;
  for (int t = 0; t < r->count; t++) {
    const int64_t n = r->numel(t);
    const size_t bytes = (size_t)n * (t % 3 == 0 ? 2 : 4);
    REQUIRE_OK(adamjit_mem_read(r->ctx[0], r->host, r->p[0][t], 0, bytes));
    REQUIRE_OK(adamjit_mem_read(r->ctx[1], r->other, r->p[1][t], 0, bytes));
    differ += memcmp(r->host, r->other, bytes) != 0;
    for (int kind = 0; kind < (t % 2 ? 3 : 2); kind++) {
      REQUIRE_OK(adamjit_optimizer_read_state(r->opt[0], t, (adamjit_state_kind)kind, r->host, n));
      REQUIRE_OK(adamjit_optimizer_read_state(r->opt[1], t, (adamjit_state_kind)kind, r->other, n));
      differ += memcmp(r->host, r->other, (size_t)n * 4) != 0;
    }
  }
  CHECK_MSG(differ == 0, "%d params or states of %d tensors differ from the CPU backend's", differ, r->count);
}

static void small_close(small_rig* r) {
  for (int k = 0; k < 2; k++) {
    adamjit_optimizer_destroy(r->opt[k]);
    for (int t = 0; t < r->count; t++) {
      adamjit_mem_free(r->ctx[k], r->p[k][t]);
      adamjit_mem_free(r->ctx[k], r->g[k][t]);
    }
    adamjit_context_destroy(r->ctx[k]);
  }
  free(r->host);
  free(r->other);
}

static int64_t small_numel_32(int t) { return 100 + (t * 37) % 3900; } /* ragged sizes */

/* Many small tensors: grouped into a few launches (the step's DEBUG line says how many),
 * with results bit-identical to the CPU backend's. */
static void many_small_tensors(void) {
  static small_rig r;
  small_open(&r, 300, 32, small_numel_32, NULL);
  small_steps(&r, 501, 7);
  printf("%s\n", step_log_line);
  int tensors, grouped, launches;
  CHECK(step_log_counts(&tensors, &grouped, &launches));
  CHECK(tensors == r.count && grouped >= r.count - 10 && launches >= 4 && launches <= 20); /* 4 kinds: dtype x group */
  small_compare(&r);
  small_close(&r);
}

static int64_t small_numel_8(int t) { return 20 + (t * 53) % 5900; } /* from less than a block up, ragged */

static void small_tune_8(adamjit_tensor_desc* td, int t) {
  td->optim_bits = 8;
  td->min_8bit_size = 0;
  td->quant_block_size = 64 << (2 * (t / 6 % 3)); /* 64, 256, 1024, each with both dtypes and groups */
}

/* Many small blockwise 8-bit tensors: grouped the same way (backends/gpu/gpu_group.h), with
 * params, codes, absmax and non-finite counts bit-identical to the CPU backend's: blocks 64
 * to 2048, tensors smaller than a block and ragged last blocks, bf16 params, amsgrad in one
 * parameter group, NaN gradients in one step. Codes and absmax are compared through
 * checkpoints, which hold them as they are. */
static void many_small_8bit(void) {
  static small_rig r;
  small_open(&r, 240, 8, small_numel_8, small_tune_8);
  /* Besides the CPU-device defaults (own blocks with the group's code table): the kernels
   * of tensors 0, 1 and 8 and those like them launched as own blocks without the table
   * (wg * ept * block < 2^15) and as shared blocks (wg = block, and wg < block). */
  static const struct { int tensor; const char* launch; } other_launch[] = {
      {0, "/wg=32/ept=1/vec=1"}, {1, "/wg=64/ept=2/vec=2"}, {8, "/wg=128/ept=4/vec=2"}};
  for (size_t o = 0; o < sizeof other_launch / sizeof other_launch[0]; o++) {
    adamjit_tuning_result tr = {.struct_size = sizeof tr};
    REQUIRE_OK(adamjit_optimizer_tensor_tuning(r.opt[1], other_launch[o].tensor, &tr));
    char* cut = strstr(tr.key, "/wg=");
    CHECK(cut != NULL);
    if (cut) snprintf(cut, sizeof tr.key - (size_t)(cut - tr.key), "%s", other_launch[o].launch);
    CHECK_MSG(adamjit_tuning_override(r.ctx[1], tr.key) == ADAMJIT_OK, "%s: %s", tr.key, adamjit_last_error());
    REQUIRE_OK(adamjit_optimizer_tensor_tuning(r.opt[1], other_launch[o].tensor, &tr));
    CHECK_MSG(tr.level == ADAMJIT_TUNING_OVERRIDE && strstr(tr.key, other_launch[o].launch), "%s", tr.key);
  }
  small_steps(&r, 701, 9);
  printf("8-bit: %s\n", step_log_line);
  int tensors, grouped, launches;
  CHECK(step_log_counts(&tensors, &grouped, &launches));
  /* 12 kernels (block x param dtype x amsgrad), split further where buffers change slabs */
  CHECK_MSG(tensors == r.count && grouped >= r.count - 20 && launches >= 12 && launches <= 40, "%s", step_log_line);
  small_compare(&r);
  char paths[2][600];
  char* files[2];
  size_t lens[2] = {0, 0};
  for (int k = 0; k < 2; k++) {
    snprintf(paths[k], sizeof paths[k], "%s/small8_%d.safetensors", scratch_dir, k);
    REQUIRE_OK(adamjit_optimizer_save(r.opt[k], paths[k]));
    files[k] = test_read_file(paths[k], &lens[k]);
    remove(paths[k]);
  }
  CHECK(files[0] && files[1] && lens[0] > 0);
  CHECK_MSG(lens[0] == lens[1] && memcmp(files[0], files[1], lens[0]) == 0,
            "checkpoints (codes, absmax) differ: %zu and %zu bytes", lens[0], lens[1]);
  for (int k = 0; k < 2; k++) free(files[k]);
  small_close(&r);
}

/* Contexts are independent: four threads creating AUTO and OpenCL contexts at once (PoCL's
 * platform enumeration is not safe to run concurrently; the library serializes it). */
static void* churn(void* arg) {
  for (int i = 0; i < 4; i++) {
    adamjit_context_desc d;
    adamjit_context_desc_init_default(&d);
    d.backend = ((long)arg & 1) ? ADAMJIT_BACKEND_OPENCL : ADAMJIT_BACKEND_AUTO;
    adamjit_context* ctx = NULL;
    if (adamjit_context_create(&d, &ctx) != ADAMJIT_OK) return (void*)1;
    adamjit_context_destroy(ctx);
  }
  return NULL;
}

static void concurrent_contexts(void) {
  pthread_t t[4];
  for (long i = 0; i < 4; i++) REQUIRE_OK(pthread_create(&t[i], NULL, churn, (void*)i) ? ADAMJIT_ERR_INTERNAL : ADAMJIT_OK);
  for (int i = 0; i < 4; i++) {
    void* failed = NULL;
    pthread_join(t[i], &failed);
    CHECK(failed == NULL);
  }
}

int main(void) {
  if (pocl_scratch_begin(scratch_dir)) return 1;
  if (adamjit_backend_probe(ADAMJIT_BACKEND_OPENCL) != ADAMJIT_OK) {
    printf("skipped: %s\n", adamjit_last_error());
    pocl_scratch_end(scratch_dir);
    return TEST_SKIP_CODE;
  }
  snprintf(ckpt, sizeof ckpt, "%s/ckpt.safetensors", scratch_dir);
  float* init = malloc(N * sizeof *init);
  for (int i = 0; i < N; i++) init[i] = cosf(0.01f * (float)i);
  for (int bits = 8; bits <= 32; bits += 24) {
    cross_load(ADAMJIT_BACKEND_CPU, ADAMJIT_BACKEND_OPENCL, bits, init);
    cross_load(ADAMJIT_BACKEND_OPENCL, ADAMJIT_BACKEND_CPU, bits, init);
  }
  broken_template(init);
  bad_memory(init);
  caller_queue(init);
  concurrent_contexts();
  many_small_tensors();
  many_small_8bit();
  free(init);
  int rc = test_finish("test_opencl_backend");
  pocl_scratch_end(scratch_dir);
  return rc;
}
