/* The CUDA backend on a real GPU:
 *  - parity with the CPU backend (parity_harness.h's standard cases: every dtype pair, 32-
 *    and 8-bit, amsgrad, block sizes, block_wise = 0, paged and unpaged, clipping), and
 *    paged state paged out to the host between steps;
 *  - checkpoints cross-loaded CPU -> CUDA and CUDA -> CPU, then stepped on;
 *  - work ordered on the caller's stream (desc.queue), and a step that returns while that
 *    stream is still blocked: no host synchronization inside a step;
 *  - error paths: a host pointer, a too-small allocation, an offset past an allocation's
 *    end, a step that fails (a broken template) leaving everything unchanged, paged and
 *    device allocations beyond the device's memory;
 *  - 1000 small tensors; blockwise quantize/dequantize against the CPU; the kernel API's
 *    default architecture on a CUDA context.
 * Skipped (77) when adamjit_backend_probe(ADAMJIT_BACKEND_CUDA) fails: no driver, no
 * device, or a library built without the CUDA backend. */
#define _GNU_SOURCE /* mkdtemp */
#include <stdio.h>

#include "adamjit/adamjit.h"
#include "halfprec.h"
#include "harness.h"

#ifndef ADAMJIT_HAVE_CUDA
int main(void) {
  printf("skipped: this build has no CUDA backend (cuda.h was not found at configure time)\n");
  return TEST_SKIP_CODE;
}
#else

#include <dlfcn.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backends/cuda/cuda_driver.h"
#include "parity_harness.h"
#include "step_log.h"

static const aj_cuda_api_table* cu;
static char scratch_dir[] = "cuda_backend_test_XXXXXX";

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static adamjit_context* cuda_context(void* queue, const char* template_dir) {
  adamjit_context_desc d;
  adamjit_context_desc_init_default(&d);
  d.backend = ADAMJIT_BACKEND_CUDA;
  d.queue = queue;
  d.template_dir = template_dir;
  adamjit_context* ctx = NULL;
  REQUIRE_OK(adamjit_context_create(&d, &ctx));
  return ctx;
}

/* ------------------------------------------------------------ parity and paging */

static void page_out_between(side* gpu, int step) {
  if (step % 2 == 0) CHECK_OK(adamjit_optimizer_page_out(gpu->opt));
}

static void test_parity(void) {
  static char names[PARITY_MAX_CASES][96];
  static pcase cases[PARITY_MAX_CASES];
  int nc = parity_standard_cases(cases, names);
  parity_run_all(cases, nc, ADAMJIT_BACKEND_CUDA);
  /* Paged state moved out to the host every other step must give the same results. */
  adamjit_context_desc d;
  adamjit_context_desc_init_default(&d);
  d.backend = ADAMJIT_BACKEND_CUDA;
  static const pcase paged[] = {
      {"32-bit paged, paged out", ADAMJIT_F32, ADAMJIT_F32, 32, 256, 1, 1, 100, 1, 8, {5003, 999, 300000}},
      {"8-bit paged, paged out", ADAMJIT_BF16, ADAMJIT_F32, 8, 256, 1, 1, 100, 1, 8, {5003, 999, 300000}},
  };
  for (size_t i = 0; i < sizeof paged / sizeof *paged; i++) {
    int before = test_failures;
    run_case_desc(&paged[i], &d, page_out_between);
    printf("%-28s %s\n", paged[i].name, test_failures == before ? "ok" : "FAILED");
  }
}

/* ------------------------------------------------------------ checkpoints */

/* Compares every state and param of two sides (exact: no clipping here). */
static void same_state(const char* what, const pcase* c, side* a, side* b) {
  int before = test_failures;
  compare_sides(c, a, b, what);
  CHECK_MSG(test_failures == before, "%s", what);
}

static void step_both(const pcase* c, side* a, side* b, int steps) {
  for (int s = 0; s < steps; s++)
    for (int t = 0; t < PARITY_MAX_TENSORS && c->numel[t]; t++) {
      size_t gb = (size_t)c->numel[t] * adamjit_dtype_size(c->g);
      void* g = test_calloc(gb, 1);
      fill(g, c->g, c->numel[t], 0.05, 0);
      REQUIRE_OK(adamjit_mem_write(a->ctx, a->grad[t], 0, g, gb));
      REQUIRE_OK(adamjit_mem_write(b->ctx, b->grad[t], 0, g, gb));
      free(g);
      if (t + 1 == PARITY_MAX_TENSORS || !c->numel[t + 1]) {
        CHECK_OK(adamjit_optimizer_step(a->opt, NULL));
        CHECK_OK(adamjit_optimizer_step(b->opt, NULL));
      }
    }
}

/* The params of a side, read to host (the init of a fresh side). */
static void read_params(side* s, const pcase* c, void** out) {
  for (int t = 0; t < PARITY_MAX_TENSORS && c->numel[t]; t++) {
    size_t pb = (size_t)c->numel[t] * adamjit_dtype_size(c->p);
    out[t] = test_calloc(pb, 1);
    REQUIRE_OK(adamjit_mem_read(s->ctx, out[t], s->param[t], 0, pb));
  }
}

static void test_checkpoint_cross(void) {
  static const pcase cases[] = {
      {"ckpt 32-bit amsgrad", ADAMJIT_F32, ADAMJIT_BF16, 32, 256, 1, 1, 100, 0, 5, {5003, 70000}},
      {"ckpt 8-bit b128", ADAMJIT_F16, ADAMJIT_F32, 8, 128, 1, 0, 100, 1, 5, {5003, 70000}},
      {"ckpt 8-bit block_wise=0", ADAMJIT_F32, ADAMJIT_F32, 8, 256, 0, 1, 100, 0, 5, {9000, 4096}},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    const pcase* c = &cases[i];
    int before = test_failures;
    void* init[PARITY_MAX_TENSORS] = {0};
    for (int t = 0; t < PARITY_MAX_TENSORS && c->numel[t]; t++) {
      init[t] = test_calloc((size_t)c->numel[t], 4);
      fill(init[t], c->p, c->numel[t], 1.0, 0);
    }
    side cpu, gpu;
    open_side(&cpu, ADAMJIT_BACKEND_CPU, c, init);
    open_side(&gpu, ADAMJIT_BACKEND_CUDA, c, init);
    step_both(c, &cpu, &gpu, c->steps);
    char from_cpu[256], from_gpu[256];
    snprintf(from_cpu, sizeof from_cpu, "%s/cpu_%zu.safetensors", scratch_dir, i);
    snprintf(from_gpu, sizeof from_gpu, "%s/cuda_%zu.safetensors", scratch_dir, i);
    CHECK_OK(adamjit_optimizer_save(cpu.opt, from_cpu));
    CHECK_OK(adamjit_optimizer_save(gpu.opt, from_gpu));
    /* Fresh optimizers with the current params load the other backend's file ... */
    void* now[PARITY_MAX_TENSORS] = {0};
    read_params(&cpu, c, now);
    side gpu2, cpu2;
    open_side(&gpu2, ADAMJIT_BACKEND_CUDA, c, now);
    open_side(&cpu2, ADAMJIT_BACKEND_CPU, c, now);
    CHECK_OK(adamjit_optimizer_load(gpu2.opt, from_cpu));
    CHECK_OK(adamjit_optimizer_load(cpu2.opt, from_gpu));
    same_state("cuda loaded from cpu", c, &cpu, &gpu2);
    same_state("cpu loaded from cuda", c, &gpu, &cpu2);
    /* ... and step on exactly as the originals do. */
    step_both(c, &cpu, &gpu2, 3);
    same_state("cuda stepped on after loading", c, &cpu, &gpu2);
    step_both(c, &gpu, &cpu2, 3);
    same_state("cpu stepped on after loading", c, &gpu, &cpu2);
    close_side(&cpu, c);
    close_side(&gpu, c);
    close_side(&cpu2, c);
    close_side(&gpu2, c);
    unlink(from_cpu);
    unlink(from_gpu);
    for (int t = 0; t < PARITY_MAX_TENSORS; t++) {
      free(init[t]);
      free(now[t]);
    }
    printf("%-28s %s\n", c->name, test_failures == before ? "ok" : "FAILED");
  }
}

/* ------------------------------------------------------------ the caller's stream */

static void CUDA_CB block_stream(void* seconds) { usleep((useconds_t)(*(double*)seconds * 1e6)); }

/* cuLaunchHostFunc, which the library does not use, from the same driver. */
static __typeof__(cuLaunchHostFunc)* host_func_launcher(void) {
  void* h = dlopen(aj_cuda_library(), RTLD_NOW | RTLD_LOCAL);
  void* sym = h ? dlsym(h, "cuGetProcAddress_v2") : NULL;
  __typeof__(cuGetProcAddress)* gpa = NULL;
  __typeof__(cuLaunchHostFunc)* fn = NULL;
  void* p = NULL;
  if (sym) memcpy(&gpa, &sym, sizeof sym);
  if (gpa && gpa("cuLaunchHostFunc", &p, cu->abi_version, CU_GET_PROC_ADDRESS_LEGACY_STREAM, NULL) == CUDA_SUCCESS)
    memcpy(&fn, &p, sizeof p);
  return fn; /* h stays open, as the library's does */
}

static void test_caller_stream(void) {
  int before = test_failures;
  __typeof__(cuLaunchHostFunc)* launch_host = host_func_launcher();
  REQUIRE_OK(launch_host ? ADAMJIT_OK : ADAMJIT_ERR_DRIVER);
  CUdevice dev = 0;
  CUcontext primary = NULL, cur = NULL;
  CHECK(cu->cuDeviceGet(&dev, 0) == CUDA_SUCCESS);
  CHECK(cu->cuDevicePrimaryCtxRetain(&primary, dev) == CUDA_SUCCESS);
  CHECK(cu->cuCtxPushCurrent(primary) == CUDA_SUCCESS);
  CUstream stream = NULL;
  CHECK(cu->cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING) == CUDA_SUCCESS);

  const int64_t n = 1 << 20;
  const size_t bytes = (size_t)n * sizeof(float);
  float *p0 = test_calloc((size_t)n, 4), *g1 = test_calloc((size_t)n, 4), *want = test_calloc((size_t)n, 4);
  fill(p0, ADAMJIT_F32, n, 1.0, 0);
  fill(g1, ADAMJIT_F32, n, 0.05, 0);
  void* pinned = NULL;
  CHECK(cu->cuMemAllocHost(&pinned, bytes) == CUDA_SUCCESS);
  fill(pinned, ADAMJIT_F32, n, 0.05, 0);

  adamjit_context* cpu_ctx = test_cpu_context();
  adamjit_context* ctx = cuda_context(stream, NULL);
  CHECK(cu->cuCtxGetCurrent(&cur) == CUDA_SUCCESS && cur == primary); /* the library pushed and popped */
  adamjit_optimizer *opt = NULL, *ref = NULL;
  REQUIRE_OK(adamjit_optimizer_create(ctx, NULL, &opt));
  REQUIRE_OK(adamjit_optimizer_create(cpu_ctx, NULL, &ref));
  adamjit_mem param = NULL, grad = NULL, cparam = NULL, cgrad = NULL;
  REQUIRE_OK(adamjit_mem_alloc(ctx, bytes, &param));
  REQUIRE_OK(adamjit_mem_alloc(ctx, bytes, &grad));
  REQUIRE_OK(adamjit_mem_alloc(cpu_ctx, bytes, &cparam));
  REQUIRE_OK(adamjit_mem_alloc(cpu_ctx, bytes, &cgrad));
  REQUIRE_OK(adamjit_mem_write(ctx, param, 0, p0, bytes));
  REQUIRE_OK(adamjit_mem_write(ctx, grad, 0, g1, bytes));
  REQUIRE_OK(adamjit_mem_write(cpu_ctx, cparam, 0, p0, bytes));
  REQUIRE_OK(adamjit_mem_write(cpu_ctx, cgrad, 0, g1, bytes));
  adamjit_tensor_desc td;
  adamjit_tensor_desc_init_default(&td);
  td.numel = n;
  int index;
  td.param = param, td.grad = grad;
  REQUIRE_OK(adamjit_optimizer_add_tensor(opt, &td, &index));
  td.param = cparam, td.grad = cgrad;
  REQUIRE_OK(adamjit_optimizer_add_tensor(ref, &td, &index));
  uint64_t bad = 99;
  CHECK_OK(adamjit_optimizer_step(opt, &bad)); /* builds the kernel: nothing below compiles */
  CHECK(bad == 0);
  CHECK_OK(adamjit_optimizer_step(ref, NULL));

  /* The stream is held by a host function; the new gradient is copied behind it, then the
   * step is enqueued. The step must return at once, and run after the copy. */
  double hold = 0.5;
  CHECK(launch_host(stream, block_stream, &hold) == CUDA_SUCCESS);
  CHECK(cu->cuMemcpyHtoDAsync((CUdeviceptr)(uintptr_t)grad, pinned, bytes, stream) == CUDA_SUCCESS);
  double t0 = now_s();
  CHECK_OK(adamjit_optimizer_step(opt, NULL));
  double t1 = now_s();
  CHECK_MSG(cu->cuStreamQuery(stream) == CUDA_ERROR_NOT_READY, "the step waited for the caller's stream");
  CHECK_MSG(t1 - t0 < 0.5 * hold, "an asynchronous step took %.3f s while the stream was held", t1 - t0);
  CHECK(cu->cuMemcpyDtoHAsync(want, (CUdeviceptr)(uintptr_t)param, bytes, stream) == CUDA_SUCCESS);
  CHECK(cu->cuStreamSynchronize(stream) == CUDA_SUCCESS);
  CHECK_OK(adamjit_optimizer_last_nonfinite(opt, &bad));
  CHECK(bad == 0);
  REQUIRE_OK(adamjit_mem_write(cpu_ctx, cgrad, 0, pinned, bytes));
  CHECK_OK(adamjit_optimizer_step(ref, NULL));
  float* got = test_calloc((size_t)n, 4);
  CHECK_OK(adamjit_mem_read(cpu_ctx, got, cparam, 0, bytes));
  CHECK_MSG(memcmp(got, want, bytes) == 0, "the step on the caller's stream did not see the gradient copied before it");

  adamjit_optimizer_destroy(opt);
  adamjit_optimizer_destroy(ref);
  adamjit_mem_free(ctx, param);
  adamjit_mem_free(ctx, grad);
  adamjit_mem_free(cpu_ctx, cparam);
  adamjit_mem_free(cpu_ctx, cgrad);
  adamjit_context_destroy(ctx);
  adamjit_context_destroy(cpu_ctx);
  CHECK(cu->cuCtxGetCurrent(&cur) == CUDA_SUCCESS && cur == primary);
  cu->cuStreamDestroy(stream);
  cu->cuMemFreeHost(pinned);
  CUcontext popped = NULL;
  cu->cuCtxPopCurrent(&popped);
  cu->cuDevicePrimaryCtxRelease(dev);
  /* With no context current, the library leaves none current either. */
  adamjit_context* own = cuda_context(NULL, NULL);
  adamjit_mem m = NULL;
  CHECK_OK(adamjit_mem_alloc(own, 64, &m));
  adamjit_mem_free(own, m);
  cur = primary;
  CHECK(cu->cuCtxGetCurrent(&cur) == CUDA_SUCCESS && cur == NULL);
  adamjit_context_destroy(own);
  free(p0);
  free(g1);
  free(want);
  free(got);
  printf("%-28s %s\n", "caller's stream", test_failures == before ? "ok" : "FAILED");
}

/* ------------------------------------------------------------ error paths */

/* Free memory on device 0, asked in its primary context (the one the library uses). */
static size_t device_free_bytes(void) {
  CUdevice dev = 0;
  CUcontext primary = NULL, popped = NULL;
  size_t free_bytes = 0, total = 0;
  CHECK(cu->cuDeviceGet(&dev, 0) == CUDA_SUCCESS);
  CHECK(cu->cuDevicePrimaryCtxRetain(&primary, dev) == CUDA_SUCCESS);
  CHECK(cu->cuCtxPushCurrent(primary) == CUDA_SUCCESS);
  CHECK(cu->cuMemGetInfo(&free_bytes, &total) == CUDA_SUCCESS);
  cu->cuCtxPopCurrent(&popped);
  cu->cuDevicePrimaryCtxRelease(dev);
  return free_bytes;
}

static void write_file(const char* path, const char* text) {
  FILE* f = fopen(path, "w");
  REQUIRE_OK(f ? ADAMJIT_OK : ADAMJIT_ERR_IO);
  fputs(text, f);
  fclose(f);
}

static void test_errors(void) {
  int before = test_failures;
  char tdir[256];
  snprintf(tdir, sizeof tdir, "%s/templates", scratch_dir);
  REQUIRE_OK(mkdir(tdir, 0700) == 0 ? ADAMJIT_OK : ADAMJIT_ERR_IO);
  adamjit_context* ctx = cuda_context(NULL, tdir);
  adamjit_optimizer* opt = NULL;
  REQUIRE_OK(adamjit_optimizer_create(ctx, NULL, &opt));
  const int64_t n = 1000;
  adamjit_tensor_desc td;
  adamjit_tensor_desc_init_default(&td);
  td.numel = n;
  int index = -1;

  /* a host pointer as param or grad */
  static float host[1000];
  adamjit_mem good = NULL, small = NULL, big = NULL;
  REQUIRE_OK(adamjit_mem_alloc(ctx, n * sizeof(float), &good));
  REQUIRE_OK(adamjit_mem_alloc(ctx, (n - 1) * sizeof(float), &small));
  REQUIRE_OK(adamjit_mem_alloc(ctx, n * sizeof(float), &big));
  td.param = host, td.grad = good;
  CHECK_STATUS(adamjit_optimizer_add_tensor(opt, &td, &index), ADAMJIT_ERR_INVALID_VALUE);
  td.param = good, td.grad = host;
  CHECK_STATUS(adamjit_optimizer_add_tensor(opt, &td, &index), ADAMJIT_ERR_INVALID_VALUE);
  /* too small, and an offset that runs past the allocation's end */
  td.param = good, td.grad = small;
  CHECK_STATUS(adamjit_optimizer_add_tensor(opt, &td, &index), ADAMJIT_ERR_INVALID_SIZE);
  td.grad = (adamjit_mem)((uintptr_t)big + 8);
  CHECK_STATUS(adamjit_optimizer_add_tensor(opt, &td, &index), ADAMJIT_ERR_INVALID_SIZE);
  CHECK_STATUS(adamjit_mem_write(ctx, small, 0, host, n * sizeof(float)), ADAMJIT_ERR_INVALID_SIZE);
  CHECK_STATUS(adamjit_mem_read(ctx, host, small, 8, (n - 2) * sizeof(float)), ADAMJIT_ERR_INVALID_SIZE);
  int count = -1;
  CHECK_OK(adamjit_optimizer_tensor_count(opt, &count));
  CHECK(count == 0);
  td.numel = n - 2; /* the same offset pointer with room for what is asked */
  CHECK_OK(adamjit_optimizer_add_tensor(opt, &td, &index));
  CHECK_OK(adamjit_optimizer_set_tensor_memory(opt, 0, good, big));
  CHECK_STATUS(adamjit_optimizer_set_tensor_memory(opt, 0, good, host), ADAMJIT_ERR_INVALID_VALUE);

  /* A step that fails (its kernel's template is broken) changes nothing: params, state and
   * the step counter are as before, and the next good step continues from there. */
  float* init = test_calloc((size_t)n, 4);
  fill(init, ADAMJIT_F32, n, 1.0, 0);
  CHECK_OK(adamjit_mem_write(ctx, good, 0, init, (n - 2) * sizeof(float)));
  fill(init, ADAMJIT_F32, n, 0.05, 0);
  CHECK_OK(adamjit_mem_write(ctx, big, 0, init, n * sizeof(float)));
  for (int s = 0; s < 3; s++) CHECK_OK(adamjit_optimizer_step(opt, NULL));
  float* p_before = test_calloc((size_t)n, 4);
  float* m_before = test_calloc((size_t)n, 4);
  float* after = test_calloc((size_t)n, 4);
  CHECK_OK(adamjit_mem_read(ctx, p_before, good, 0, (n - 2) * sizeof(float)));
  CHECK_OK(adamjit_optimizer_read_state(opt, 0, ADAMJIT_STATE_EXP_AVG, m_before, n - 2));
  char broken[300];
  snprintf(broken, sizeof broken, "%s/adamw32.lua", tdir);
  write_file(broken, "error('broken on purpose by test_cuda_backend')\n");
  adamjit_hparams hp;
  CHECK_OK(adamjit_optimizer_get_group(opt, 0, &hp));
  hp.weight_decay = 0.0f; /* another kernel variant: rendered now, from the broken template */
  CHECK_OK(adamjit_optimizer_set_group(opt, 0, &hp));
  CHECK_STATUS(adamjit_optimizer_step(opt, NULL), ADAMJIT_ERR_TEMPLATE);
  CHECK(strstr(adamjit_context_last_error(ctx), "broken on purpose") != NULL);
  CHECK_OK(adamjit_mem_read(ctx, after, good, 0, (n - 2) * sizeof(float)));
  CHECK(memcmp(after, p_before, (n - 2) * sizeof(float)) == 0);
  CHECK_OK(adamjit_optimizer_read_state(opt, 0, ADAMJIT_STATE_EXP_AVG, after, n - 2));
  CHECK(memcmp(after, m_before, (n - 2) * sizeof(float)) == 0);
  adamjit_tensor_info info = {.struct_size = sizeof info};
  CHECK_OK(adamjit_optimizer_tensor_info(opt, 0, &info));
  CHECK(info.step == 3);
  unlink(broken);
  CHECK_OK(adamjit_optimizer_step(opt, NULL));
  CHECK_OK(adamjit_optimizer_tensor_info(opt, 0, &info));
  CHECK(info.step == 4);

  /* Out of device memory: a tensor whose state cannot fit is refused, paged or not, and
   * the optimizer keeps what it had. One buffer serves as param and grad. */
  for (int paged = 0; paged <= 1; paged++) {
    int64_t huge_n = (int64_t)(device_free_bytes() / 6); /* a buffer of 2/3 of what is free; m needs as much again */
    adamjit_mem buf = NULL;
    if (adamjit_mem_alloc(ctx, (size_t)huge_n * sizeof(float), &buf) != ADAMJIT_OK) {
      printf("  (could not allocate 2/3 of the free device memory for the out-of-memory check: %s)\n",
             adamjit_context_last_error(ctx));
      continue;
    }
    adamjit_tensor_desc hd;
    adamjit_tensor_desc_init_default(&hd);
    hd.param = buf, hd.grad = buf, hd.numel = huge_n, hd.is_paged = paged;
    CHECK_STATUS(adamjit_optimizer_add_tensor(opt, &hd, &index), ADAMJIT_ERR_OUT_OF_MEMORY);
    CHECK_OK(adamjit_optimizer_tensor_count(opt, &count));
    CHECK(count == 1);
    adamjit_mem_free(ctx, buf);
  }
  CHECK_OK(adamjit_optimizer_step(opt, NULL)); /* still steps */

  adamjit_optimizer_destroy(opt);
  adamjit_mem_free(ctx, good);
  adamjit_mem_free(ctx, small);
  adamjit_mem_free(ctx, big);
  adamjit_context_destroy(ctx);
  rmdir(tdir);
  free(init);
  free(p_before);
  free(m_before);
  free(after);
  printf("%-28s %s\n", "error paths", test_failures == before ? "ok" : "FAILED");
}

/* ------------------------------------------------------------ many small tensors */

/* Half 32-bit, half blockwise 8-bit (both grouped, backends/gpu/gpu_group.h): params,
 * states, codes and absmax (through checkpoints) as the CPU backend's. */
static void test_many_small(void) {
  int before = test_failures;
  enum { N = 1000 };
  adamjit_context* gctx = NULL;
  REQUIRE_OK(step_log_context(ADAMJIT_BACKEND_CUDA, &gctx));
  adamjit_context* cctx = test_cpu_context();
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.hparams.amsgrad = 1;
  adamjit_optimizer *gopt = NULL, *copt = NULL;
  REQUIRE_OK(adamjit_optimizer_create(gctx, &cfg, &gopt));
  REQUIRE_OK(adamjit_optimizer_create(cctx, &cfg, &copt));
  static adamjit_mem gp[N], gg[N], cp[N], cg[N];
  static int64_t numel[N];
  static adamjit_dtype gdt[N];
  for (int i = 0; i < N; i++) {
    numel[i] = 1 + (int64_t)i * 37 % 3000;
    gdt[i] = i % 3 == 0 ? ADAMJIT_BF16 : ADAMJIT_F32;
    size_t pb = (size_t)numel[i] * 4, gb = (size_t)numel[i] * adamjit_dtype_size(gdt[i]);
    void* init = test_calloc((size_t)numel[i], 4);
    fill(init, ADAMJIT_F32, numel[i], 1.0, 0);
    REQUIRE_OK(adamjit_mem_alloc(gctx, pb, &gp[i]));
    REQUIRE_OK(adamjit_mem_alloc(gctx, gb, &gg[i]));
    REQUIRE_OK(adamjit_mem_alloc(cctx, pb, &cp[i]));
    REQUIRE_OK(adamjit_mem_alloc(cctx, gb, &cg[i]));
    REQUIRE_OK(adamjit_mem_write(gctx, gp[i], 0, init, pb));
    REQUIRE_OK(adamjit_mem_write(cctx, cp[i], 0, init, pb));
    free(init);
    adamjit_tensor_desc td;
    adamjit_tensor_desc_init_default(&td);
    td.numel = numel[i];
    td.grad_dtype = gdt[i];
    /* every other tensor 8-bit, whatever its size; block sizes vary */
    td.optim_bits = i % 2 ? 8 : 32;
    td.min_8bit_size = 0;
    td.quant_block_size = 64 << (i % 4);
    int index;
    td.param = gp[i], td.grad = gg[i];
    REQUIRE_OK(adamjit_optimizer_add_tensor(gopt, &td, &index));
    td.param = cp[i], td.grad = cg[i];
    REQUIRE_OK(adamjit_optimizer_add_tensor(copt, &td, &index));
  }
  for (int s = 0; s < 3; s++) {
    for (int i = 0; i < N; i++) {
      size_t gb = (size_t)numel[i] * adamjit_dtype_size(gdt[i]);
      void* g = test_calloc(gb, 1);
      fill(g, gdt[i], numel[i], 0.05, s == 1 ? 53 : 0);
      REQUIRE_OK(adamjit_mem_write(gctx, gg[i], 0, g, gb));
      REQUIRE_OK(adamjit_mem_write(cctx, cg[i], 0, g, gb));
      free(g);
    }
    uint64_t bc = 0, bg = 1;
    CHECK_OK(adamjit_optimizer_step(copt, &bc));
    double t0 = now_s();
    CHECK_OK(adamjit_optimizer_step(gopt, NULL));
    double t1 = now_s();
    CHECK_OK(adamjit_optimizer_last_nonfinite(gopt, &bg));
    CHECK_MSG(bc == bg, "1000 tensors, step %d: non-finite count cpu %llu cuda %llu", s, (unsigned long long)bc,
              (unsigned long long)bg);
    printf("  1000 tensors, step %d: enqueued in %.2f ms (%s)\n", s, 1e3 * (t1 - t0), step_log_line);
  }
  /* kernels: 2 grad dtypes x (32-bit, 8-bit at 2 blocks), split by size buckets of the tuning
   * database; a tensor alone in its kind launches by itself */
  int tensors, grouped, launches;
  CHECK(step_log_counts(&tensors, &grouped, &launches));
  CHECK_MSG(tensors == N && grouped >= N - 64 && launches >= 6 && launches <= 64, "%s", step_log_line);
  int64_t bad = 0;
  for (int i = 0; i < N; i++) {
    size_t pb = (size_t)numel[i] * 4;
    float *a = test_calloc((size_t)numel[i], 4), *b = test_calloc((size_t)numel[i], 4);
    CHECK_OK(adamjit_mem_read(cctx, a, cp[i], 0, pb));
    CHECK_OK(adamjit_mem_read(gctx, b, gp[i], 0, pb));
    bad += memcmp(a, b, pb) != 0;
    for (int k = 0; k < 3; k++) {
      CHECK_OK(adamjit_optimizer_read_state(copt, i, (adamjit_state_kind)k, a, numel[i]));
      CHECK_OK(adamjit_optimizer_read_state(gopt, i, (adamjit_state_kind)k, b, numel[i]));
      bad += memcmp(a, b, pb) != 0;
    }
    free(a);
    free(b);
  }
  CHECK_MSG(bad == 0, "1000 tensors: %lld params or states differ from the CPU backend", (long long)bad);
  char paths[2][600];
  char* files[2];
  size_t lens[2] = {0, 0};
  adamjit_optimizer* opts[2] = {copt, gopt};
  for (int k = 0; k < 2; k++) {
    snprintf(paths[k], sizeof paths[k], "%s/small_%d.safetensors", scratch_dir, k);
    CHECK_OK(adamjit_optimizer_save(opts[k], paths[k]));
    files[k] = test_read_file(paths[k], &lens[k]);
    remove(paths[k]);
  }
  CHECK(files[0] && files[1] && lens[0] > 0);
  CHECK_MSG(lens[0] == lens[1] && memcmp(files[0], files[1], lens[0]) == 0,
            "1000 tensors: checkpoints (codes, absmax) differ: %zu and %zu bytes", lens[0], lens[1]);
  free(files[0]);
  free(files[1]);
  adamjit_optimizer_destroy(gopt);
  adamjit_optimizer_destroy(copt);
  for (int i = 0; i < N; i++) {
    adamjit_mem_free(gctx, gp[i]);
    adamjit_mem_free(gctx, gg[i]);
    adamjit_mem_free(cctx, cp[i]);
    adamjit_mem_free(cctx, cg[i]);
  }
  adamjit_context_destroy(gctx);
  adamjit_context_destroy(cctx);
  printf("%-28s %s\n", "1000 small tensors", test_failures == before ? "ok" : "FAILED");
}

/* ------------------------------------------------------------ quantization, kernel API */

static void test_quantize(void) {
  int before = test_failures;
  adamjit_context* g = cuda_context(NULL, NULL);
  adamjit_context* c = test_cpu_context();
  const int64_t n = 100003;
  const int64_t blocks = (n + 255) / 256;
  float* x = test_calloc((size_t)n, 4);
  fill(x, ADAMJIT_F32, n, 3.0, 0);
  float custom[256];
  for (int i = 0; i < 256; i++) custom[i] = -1.0f + 2.0f * (float)i / 255.0f * (float)i / 255.0f;
  adamjit_mem gx, gc, ga, gy, cx, cc, ca, cy;
  REQUIRE_OK(adamjit_mem_alloc(g, (size_t)n * 4, &gx));
  REQUIRE_OK(adamjit_mem_alloc(g, (size_t)n, &gc));
  REQUIRE_OK(adamjit_mem_alloc(g, (size_t)blocks * 4, &ga));
  REQUIRE_OK(adamjit_mem_alloc(g, (size_t)n * 4, &gy));
  REQUIRE_OK(adamjit_mem_alloc(c, (size_t)n * 4, &cx));
  REQUIRE_OK(adamjit_mem_alloc(c, (size_t)n, &cc));
  REQUIRE_OK(adamjit_mem_alloc(c, (size_t)blocks * 4, &ca));
  REQUIRE_OK(adamjit_mem_alloc(c, (size_t)n * 4, &cy));
  REQUIRE_OK(adamjit_mem_write(g, gx, 0, x, (size_t)n * 4));
  REQUIRE_OK(adamjit_mem_write(c, cx, 0, x, (size_t)n * 4));
  unsigned char *codes_a = test_calloc((size_t)n, 1), *codes_b = test_calloc((size_t)n, 1);
  float *ya = test_calloc((size_t)n, 4), *yb = test_calloc((size_t)n, 4);
  for (int which = 0; which < 3; which++) {
    adamjit_quant_desc qd;
    adamjit_quant_desc_init_default(&qd);
    qd.numel = n;
    qd.map = which == 0 ? ADAMJIT_QMAP_SIGNED : which == 1 ? ADAMJIT_QMAP_UNSIGNED : ADAMJIT_QMAP_CUSTOM;
    if (which == 2) qd.custom_map = custom, qd.custom_map_size = 256;
    CHECK_OK(adamjit_quantize_blockwise(g, &qd, gx, gc, ga));
    CHECK_OK(adamjit_quantize_blockwise(c, &qd, cx, cc, ca));
    CHECK_OK(adamjit_mem_read(g, codes_b, gc, 0, (size_t)n));
    CHECK_OK(adamjit_mem_read(c, codes_a, cc, 0, (size_t)n));
    CHECK_MSG(memcmp(codes_a, codes_b, (size_t)n) == 0, "quantize map %d: codes differ from the CPU backend", which);
    CHECK_OK(adamjit_dequantize_blockwise(g, &qd, gc, ga, gy));
    CHECK_OK(adamjit_dequantize_blockwise(c, &qd, cc, ca, cy));
    CHECK_OK(adamjit_mem_read(g, yb, gy, 0, (size_t)n * 4));
    CHECK_OK(adamjit_mem_read(c, ya, cy, 0, (size_t)n * 4));
    CHECK_MSG(memcmp(ya, yb, (size_t)n * 4) == 0, "dequantize map %d: values differ from the CPU backend", which);
  }
  x[777] = NAN;
  REQUIRE_OK(adamjit_mem_write(g, gx, 0, x, (size_t)n * 4));
  adamjit_quant_desc qd;
  adamjit_quant_desc_init_default(&qd);
  qd.numel = n;
  CHECK_STATUS(adamjit_quantize_blockwise(g, &qd, gx, gc, ga), ADAMJIT_ERR_INVALID_VALUE);
  adamjit_mem all[8] = {gx, gc, ga, gy, cx, cc, ca, cy};
  for (int i = 0; i < 8; i++) adamjit_mem_free(i < 4 ? g : c, all[i]);
  adamjit_context_destroy(g);
  adamjit_context_destroy(c);
  free(x);
  free(codes_a);
  free(codes_b);
  free(ya);
  free(yb);
  printf("%-28s %s\n", "quantize/dequantize", test_failures == before ? "ok" : "FAILED");
}

static void test_kernel_arch(void) {
  int before = test_failures;
  adamjit_context* g = cuda_context(NULL, NULL);
  CUdevice dev = 0;
  int major = 0, minor = 0;
  CHECK(cu->cuDeviceGet(&dev, 0) == CUDA_SUCCESS);
  CHECK(cu->cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev) == CUDA_SUCCESS);
  CHECK(cu->cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev) == CUDA_SUCCESS);
  char sm[32], compute[32];
  snprintf(sm, sizeof sm, "sm_%d%d", major, minor);
  snprintf(compute, sizeof compute, "compute_");
  adamjit_kernel_build_info info = {.struct_size = sizeof info};
  CHECK_OK(adamjit_kernel_build(g, "adamw32/cuda", NULL, &info));
  /* the device's architecture, or (a GPU newer than NVRTC) PTX of an older one */
  CHECK_MSG(strcmp(info.target, sm) == 0 || strncmp(info.target, compute, strlen(compute)) == 0,
            "adamjit_kernel_build on a CUDA context built for %s; the device is %s", info.target, sm);
  adamjit_free(info.log);
  adamjit_context_destroy(g);
  printf("%-28s %s (%s)\n", "kernel API default arch", test_failures == before ? "ok" : "FAILED", sm);
}

int main(void) {
  if (adamjit_backend_probe(ADAMJIT_BACKEND_CUDA) != ADAMJIT_OK) {
    printf("skipped: %s\n", adamjit_last_error());
    return TEST_SKIP_CODE;
  }
  cu = aj_cuda_api();
  if (!mkdtemp(scratch_dir)) {
    perror("mkdtemp");
    return 1;
  }
  char name[256] = "";
  REQUIRE_OK(adamjit_backend_device_name(ADAMJIT_BACKEND_CUDA, 0, name, sizeof name));
  printf("device 0: %s, driver %s (CUDA %d.%d)\n", name, aj_cuda_library(), cu->driver_version / 1000,
         cu->driver_version % 1000 / 10);
  test_kernel_arch();
  test_caller_stream();
  test_errors();
  test_quantize();
  test_checkpoint_cross();
  test_many_small();
  test_parity();
  rmdir(scratch_dir);
  return test_finish("test_cuda_backend");
}

#endif
