/* A GPU backend against the CPU backend (SPEC 7): the same optimizer, tensors and
 * gradients on both, stepped side by side, then params, m, v, vmax and the non-finite
 * counts compared. Shared by test_opencl_parity.c and test_cuda_backend.c, which run the
 * standard case list below (every param/grad dtype pair, 32- and 8-bit state, amsgrad,
 * block sizes, block_wise = 0, ragged tails, paged and unpaged state, non-finite gradients
 * and percentile clipping, over many steps).
 *
 * The kernels compute with the CPU backend's fp32 operations in the same order, so without
 * clipping the results must be bit-identical. With clipping the device sums the squared
 * gradient in float partials where the CPU sums in double, so the scale can differ in its
 * last bits: those cases compare within a tolerance, and 8-bit codes may then differ at
 * rounding midpoints.
 *
 * Include after harness.h and halfprec.h, once per test program. */
#ifndef ADAMJIT_TESTS_PARITY_HARNESS_H
#define ADAMJIT_TESTS_PARITY_HARNESS_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adamjit/adamjit.h"
#include "halfprec.h"
#include "harness.h"

#define PARITY_MAX_TENSORS 3
#define PARITY_MAX_CASES 64

typedef struct pcase {
  const char* name;
  adamjit_dtype p, g;
  int bits, block, block_wise, amsgrad, pclip, paged;
  int steps;
  int64_t numel[PARITY_MAX_TENSORS];
} pcase;

/* One backend's optimizer with the case's tensors. */
typedef struct side {
  adamjit_context* ctx;
  adamjit_optimizer* opt;
  adamjit_mem param[PARITY_MAX_TENSORS], grad[PARITY_MAX_TENSORS];
} side;

static uint64_t parity_rng_state = 0x9e3779b97f4a7c15ull;
static double urand(void) { /* xorshift64*: reproducible without libc's rand */
  parity_rng_state ^= parity_rng_state >> 12;
  parity_rng_state ^= parity_rng_state << 25;
  parity_rng_state ^= parity_rng_state >> 27;
  return (double)((parity_rng_state * 0x2545f4914f6cdd1dull) >> 11) * (1.0 / 9007199254740992.0);
}

/* Host values in dtype dt, as bytes; every nan_every-th element (offset 3) NaN or Inf. */
static void fill(void* dst, adamjit_dtype dt, int64_t n, double scale, int nan_every) {
  for (int64_t i = 0; i < n; i++) {
    float x = (float)((urand() * 2.0 - 1.0) * scale);
    if (nan_every && i % nan_every == 3) x = (i / nan_every) % 2 ? NAN : INFINITY;
    put_elem(dt, dst, i, x);
  }
}

/* The case's optimizer on a context made from *desc (its backend chosen by the caller),
 * params initialized from init[t]. Exits the test on failure. */
static void open_side_desc(side* s, const adamjit_context_desc* desc, const pcase* c, void* const* init) {
  memset(s, 0, sizeof *s);
  REQUIRE_OK(adamjit_context_create(desc, &s->ctx));
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.optim_bits = c->bits;
  cfg.quant_block_size = c->block;
  cfg.block_wise = c->block_wise;
  cfg.percentile_clipping = c->pclip;
  cfg.is_paged = c->paged;
  cfg.paged_min_elements = 1000;
  cfg.hparams.amsgrad = c->amsgrad;
  cfg.hparams.lr = 1e-2f;
  cfg.hparams.weight_decay = 0.05f;
  REQUIRE_OK(adamjit_optimizer_create(s->ctx, &cfg, &s->opt));
  for (int t = 0; t < PARITY_MAX_TENSORS && c->numel[t]; t++) {
    size_t pb = (size_t)c->numel[t] * adamjit_dtype_size(c->p), gb = (size_t)c->numel[t] * adamjit_dtype_size(c->g);
    REQUIRE_OK(adamjit_mem_alloc(s->ctx, pb, &s->param[t]));
    REQUIRE_OK(adamjit_mem_alloc(s->ctx, gb, &s->grad[t]));
    REQUIRE_OK(adamjit_mem_write(s->ctx, s->param[t], 0, init[t], pb));
    adamjit_tensor_desc td;
    adamjit_tensor_desc_init_default(&td);
    td.param = s->param[t];
    td.grad = s->grad[t];
    td.numel = c->numel[t];
    td.param_dtype = c->p;
    td.grad_dtype = c->g;
    int index = -1;
    REQUIRE_OK(adamjit_optimizer_add_tensor(s->opt, &td, &index));
  }
}

static void open_side(side* s, adamjit_backend kind, const pcase* c, void* const* init) {
  adamjit_context_desc d;
  adamjit_context_desc_init_default(&d);
  d.backend = kind;
  open_side_desc(s, &d, c, init);
}

static void close_side(side* s, const pcase* c) {
  adamjit_optimizer_destroy(s->opt);
  for (int t = 0; t < PARITY_MAX_TENSORS && c->numel[t]; t++) {
    adamjit_mem_free(s->ctx, s->param[t]);
    adamjit_mem_free(s->ctx, s->grad[t]);
  }
  adamjit_context_destroy(s->ctx);
}

static float parity_as_float(const void* p, adamjit_dtype dt, int64_t i) { return (float)get_elem(dt, p, i); }

/* Compares n values of the CPU side (a) and the other side (b): bit-identical, or (tol > 0)
 * within tol relative to the array's scale. Returns the number of mismatches. */
static int64_t compare(const char* what, const char* other, const pcase* c, int t, const void* a, const void* b,
                       adamjit_dtype dt, int64_t n, double tol) {
  double scale = 0.0;
  for (int64_t i = 0; i < n; i++) scale = fmax(scale, fabs((double)parity_as_float(a, dt, i)));
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < n; i++) {
    float x = parity_as_float(a, dt, i), y = parity_as_float(b, dt, i);
    int same = tol > 0 ? (fabs((double)x - (double)y) <= tol * (scale > 0 ? scale : 1.0) || (isnan(x) && isnan(y)))
                       : memcmp((const char*)a + i * adamjit_dtype_size(dt), (const char*)b + i * adamjit_dtype_size(dt),
                                adamjit_dtype_size(dt)) == 0;
    if (!same && bad++ == 0) first = i;
  }
  if (bad)
    printf("  %s: tensor %d %s: %lld of %lld differ, first [%lld] cpu %.9g %s %.9g\n", c->name, t, what,
           (long long)bad, (long long)n, (long long)first, parity_as_float(a, dt, first), other,
           parity_as_float(b, dt, first));
  return bad;
}

/* Compares everything a side holds after the steps: params, m, v (and vmax), and the
 * tensor info. */
static void compare_sides(const pcase* c, side* cpu, side* gpu, const char* other) {
  const int exact = c->pclip >= 100;
  for (int t = 0; t < PARITY_MAX_TENSORS && c->numel[t]; t++) {
    int64_t n = c->numel[t];
    size_t pb = (size_t)n * adamjit_dtype_size(c->p);
    void* pa = test_calloc(pb, 1);
    void* pbuf = test_calloc(pb, 1);
    float* sa = test_calloc((size_t)n, sizeof(float));
    float* sb = test_calloc((size_t)n, sizeof(float));
    CHECK_OK(adamjit_mem_read(cpu->ctx, pa, cpu->param[t], 0, pb));
    CHECK_OK(adamjit_mem_read(gpu->ctx, pbuf, gpu->param[t], 0, pb));
    /* clipping: the scale may differ in its last bits each step, compounding over steps */
    double tol = exact ? 0.0 : (c->bits == 8 ? 2e-2 : 1e-4);
    CHECK(compare("param", other, c, t, pa, pbuf, c->p, n, exact ? 0.0 : 1e-4) == 0);
    adamjit_state_kind kinds[3] = {ADAMJIT_STATE_EXP_AVG, ADAMJIT_STATE_EXP_AVG_SQ, ADAMJIT_STATE_MAX_EXP_AVG_SQ};
    const char* names[3] = {"m", "v", "vmax"};
    for (int k = 0; k < (c->amsgrad ? 3 : 2); k++) {
      CHECK_OK(adamjit_optimizer_read_state(cpu->opt, t, kinds[k], sa, n));
      CHECK_OK(adamjit_optimizer_read_state(gpu->opt, t, kinds[k], sb, n));
      CHECK(compare(names[k], other, c, t, sa, sb, ADAMJIT_F32, n, tol) == 0);
    }
    adamjit_tensor_info ia = {.struct_size = sizeof ia}, ib = {.struct_size = sizeof ib};
    CHECK_OK(adamjit_optimizer_tensor_info(cpu->opt, t, &ia));
    CHECK_OK(adamjit_optimizer_tensor_info(gpu->opt, t, &ib));
    CHECK(ia.state_bits == ib.state_bits && ia.state_bytes == ib.state_bytes && ia.step == ib.step);
    if (adamjit_context_backend(gpu->ctx) != ADAMJIT_BACKEND_CPU) /* the CPU's state is host memory */
      CHECK(ib.memory == (c->paged && n >= 1000 ? ADAMJIT_MEMORY_PAGED : ADAMJIT_MEMORY_DEVICE));
    free(pa);
    free(pbuf);
    free(sa);
    free(sb);
  }
}

/* Hook between steps, for tests that do more than step (e.g. page state out); may be NULL. */
typedef void (*parity_between_steps)(side* gpu, int step);

/* Runs case c on the CPU backend and on a context made from *gpu_desc, and compares. */
static void run_case_desc(const pcase* c, const adamjit_context_desc* gpu_desc, parity_between_steps between) {
  const char* other = adamjit_backend_name(gpu_desc->backend);
  void* init[PARITY_MAX_TENSORS] = {0};
  void* grads[PARITY_MAX_TENSORS] = {0};
  for (int t = 0; t < PARITY_MAX_TENSORS && c->numel[t]; t++) {
    init[t] = test_calloc((size_t)c->numel[t], 4);
    grads[t] = test_calloc((size_t)c->numel[t], 4);
    fill(init[t], c->p, c->numel[t], 1.0, 0);
  }
  side cpu, gpu;
  open_side(&cpu, ADAMJIT_BACKEND_CPU, c, init);
  open_side_desc(&gpu, gpu_desc, c, init);
  for (int s = 0; s < c->steps; s++) {
    for (int t = 0; t < PARITY_MAX_TENSORS && c->numel[t]; t++) {
      /* gradient sizes vary, so clipping clips some steps and not others; step 3 has NaN/Inf */
      fill(grads[t], c->g, c->numel[t], 0.05 * (1.0 + 3.0 * urand()), s == 3 ? 97 : 0);
      size_t gb = (size_t)c->numel[t] * adamjit_dtype_size(c->g);
      REQUIRE_OK(adamjit_mem_write(cpu.ctx, cpu.grad[t], 0, grads[t], gb));
      REQUIRE_OK(adamjit_mem_write(gpu.ctx, gpu.grad[t], 0, grads[t], gb));
    }
    uint64_t bad_cpu = 0, bad_gpu = 0;
    REQUIRE_OK(adamjit_optimizer_step(cpu.opt, &bad_cpu));
    adamjit_status st = adamjit_optimizer_step(gpu.opt, &bad_gpu);
    CHECK_MSG(st == ADAMJIT_OK, "%s: %s step %d: %s", c->name, other, s, adamjit_context_last_error(gpu.ctx));
    if (st) break;
    CHECK_MSG(bad_cpu == bad_gpu, "%s: step %d: non-finite count cpu %llu %s %llu", c->name, s,
              (unsigned long long)bad_cpu, other, (unsigned long long)bad_gpu);
    if (between) between(&gpu, s);
  }
  compare_sides(c, &cpu, &gpu, other);
  close_side(&cpu, c);
  close_side(&gpu, c);
  for (int t = 0; t < PARITY_MAX_TENSORS; t++) {
    free(init[t]);
    free(grads[t]);
  }
}

static void run_case(const pcase* c, adamjit_backend other) {
  adamjit_context_desc d;
  adamjit_context_desc_init_default(&d);
  d.backend = other;
  run_case_desc(c, &d, NULL);
}

/* The standard cases into cases[PARITY_MAX_CASES] (names in names); returns how many. */
static int parity_standard_cases(pcase* cases, char (*names)[96]) {
  static const adamjit_dtype dts[3] = {ADAMJIT_F32, ADAMJIT_F16, ADAMJIT_BF16};
  int nc = 0;
  /* every dtype pair, 32- and 8-bit, amsgrad alternating; tensors: one ragged 8-bit-size,
   * one below min_8bit_size (32-bit state even in the 8-bit optimizer), one ragged large */
  for (int p = 0; p < 3; p++)
    for (int g = 0; g < 3; g++)
      for (int bits = 8; bits <= 32; bits += 24) {
        pcase* c = &cases[nc];
        snprintf(names[nc], 96, "%s/%s %d-bit", adamjit_dtype_name(dts[p]), adamjit_dtype_name(dts[g]), bits);
        *c = (pcase){names[nc], dts[p], dts[g], bits, 256, 1, (p + g + bits) % 2, 100, 0, 12, {5003, 700, 20000}};
        nc++;
      }
  /* block sizes, block_wise = 0, paging, clipping */
  static const int blocks[] = {64, 128, 512, 1024, 2048, 4096};
  for (size_t i = 0; i < sizeof blocks / sizeof *blocks; i++) {
    snprintf(names[nc], 96, "8-bit block %d amsgrad", blocks[i]);
    cases[nc] = (pcase){names[nc], ADAMJIT_F32, ADAMJIT_F32, 8, blocks[i], 1, 1, 100, 0, 10, {9001, 4096, 70000}};
    nc++;
  }
  cases[nc++] = (pcase){"8-bit block_wise=0", ADAMJIT_BF16, ADAMJIT_F32, 8, 256, 0, 0, 100, 0, 12, {5003, 100, 300001}};
  cases[nc++] = (pcase){"8-bit block_wise=0 amsgrad", ADAMJIT_F32, ADAMJIT_F16, 8, 256, 0, 1, 100, 0, 12, {77777}};
  cases[nc++] = (pcase){"32-bit paged", ADAMJIT_F32, ADAMJIT_BF16, 32, 256, 1, 1, 100, 1, 10, {5003, 999, 30000}};
  cases[nc++] = (pcase){"8-bit paged", ADAMJIT_F16, ADAMJIT_F16, 8, 256, 1, 0, 100, 1, 10, {5003, 999, 30000}};
  cases[nc++] = (pcase){"32-bit 50 steps", ADAMJIT_F32, ADAMJIT_F32, 32, 256, 1, 1, 100, 0, 50, {100003, 17}};
  cases[nc++] = (pcase){"8-bit 50 steps", ADAMJIT_BF16, ADAMJIT_BF16, 8, 256, 1, 1, 100, 0, 50, {100003, 4097}};
  cases[nc++] = (pcase){"32-bit clip 5", ADAMJIT_F32, ADAMJIT_F32, 32, 256, 1, 0, 5, 0, 30, {5003, 100, 200000}};
  cases[nc++] = (pcase){"8-bit clip 50", ADAMJIT_F32, ADAMJIT_BF16, 8, 256, 1, 1, 50, 0, 8, {5003, 100, 20000}};
  return nc;
}

/* Runs cases[n] against `other`, one line per case; returns nothing (failures are counted). */
static void parity_run_all(const pcase* cases, int n, adamjit_backend other) {
  for (int i = 0; i < n; i++) {
    int before = test_failures;
    run_case(&cases[i], other);
    printf("%-28s %s\n", cases[i].name, test_failures == before ? "ok" : "FAILED");
    fflush(stdout);
  }
}

#endif
