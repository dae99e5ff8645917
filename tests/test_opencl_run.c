/* The rendered OpenCL kernels run on the OpenCL device here (PoCL in CI) and agree with the
 * CPU backend for one step / one call of each kernel family checked here (issue 4):
 *   adamw32     f32 params + f32 grads, and bf16 params + f16 grads; weight decay on, no
 *               amsgrad, grad scale 1, the non-finite guard on, 3000 elements (a partial last
 *               work-group) with a NaN and an Inf gradient. One step through the public API
 *               on a CPU context against the kernel launched directly with the same per-step
 *               scalars (computed as the CPU backend computes them). p, m, v within 4 ulp
 *               relative for f32 (SPEC 7's 2-ulp scale, doubled for fma contraction on the
 *               device), a bf16 param within one bf16 ulp; equal non-finite counts.
 *   quantize    f32, block 256, against adamjit_quantize_blockwise: absmax identical, codes
 *               identical except neighbouring codes where x/absmax is within 1e-6 of the
 *               threshold between them.
 *   dequantize  f32, block 256, on the CPU's codes and absmax against
 *               adamjit_dequantize_blockwise: identical (one float multiply).
 *   sqnorm      f32 grads with a NaN (guard on): partial sums added in double against a
 *               double sum of squares of the finite elements, 1e-5 relative; count 1.
 *   adamw8      f32 params and grads, block 256, weight decay, guard on, a NaN gradient: one
 *               8-bit step on the CPU backend (public API) against the kernel: params within 4
 *               ulp, the dequantized m and v identical except neighbouring codes where the
 *               value/absmax is within 1e-6 of the threshold between them.
 * Not covered: amsgrad, clipping, other dtypes and blocks at run time (the variants test
 * builds them). Skipped (77) without an OpenCL device. */
#define _GNU_SOURCE /* mkdtemp, nftw */
#include <errno.h>
#include <float.h>
#include <ftw.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/internal.h"
#include "core/qmap.h"
#include "harness.h"
#include "pocl_scratch.h"
#include "halfprec.h"
#include "jit/lua_host.h"
#include "jit/opencl.h"
#include "jit/render.h"
#include "jit/variant.h"

#define N 3000

static const aj_opencl_api_table* cl;
static aj_cl_device* dev;
static aj_lua_host* host;
static adamjit_context* clctx; /* reports the OpenCL side's failures */

/* Renders and builds v, and creates its kernel; NULL (with the reason printed) on failure. */
static cl_kernel make_kernel(const aj_variant* v, aj_cl_program* prog) {
  char key[AJ_VARIANT_TEXT_MAX];
  aj_variant_format(v, key, sizeof key);
  memset(prog, 0, sizeof *prog);
  char* src = NULL;
  size_t len = 0;
  if (aj_render_variant(clctx, host, v, NULL, &src, &len) != ADAMJIT_OK) {
    CHECK_MSG(0, "render %s: %s", key, adamjit_context_last_error(clctx));
    return NULL;
  }
  adamjit_status st = aj_opencl_build(clctx, dev, aj_kernel_family_name(v->family), src, "-cl-std=CL1.2", prog);
  free(src);
  if (st != ADAMJIT_OK) {
    CHECK_MSG(0, "build %s: %s\n%s", key, adamjit_context_last_error(clctx), prog->log ? prog->log : "");
    return NULL;
  }
  cl_int err = CL_SUCCESS;
  cl_kernel k = cl->clCreateKernel(prog->program, aj_render_kernel_name(v), &err);
  CHECK_MSG(err == CL_SUCCESS, "clCreateKernel %s: %s", key, aj_opencl_error_name(err));
  printf("  kernel %s\n", key);
  return err == CL_SUCCESS ? k : NULL;
}

static cl_mem buf_from(const void* host_data, size_t bytes) {
  cl_int err = CL_SUCCESS;
  cl_mem m = cl->clCreateBuffer(dev->context, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, bytes, (void*)host_data, &err);
  CHECK_MSG(err == CL_SUCCESS, "clCreateBuffer: %s", aj_opencl_error_name(err));
  return m;
}

static void buf_read(cl_mem m, void* dst, size_t bytes) {
  cl_int err = cl->clEnqueueReadBuffer(dev->queue, m, CL_TRUE, 0, bytes, dst, 0, NULL, NULL);
  CHECK_MSG(err == CL_SUCCESS, "clEnqueueReadBuffer: %s", aj_opencl_error_name(err));
}

static void set_arg(cl_kernel k, cl_uint i, size_t size, const void* value) {
  cl_int err = cl->clSetKernelArg(k, i, size, value);
  CHECK_MSG(err == CL_SUCCESS, "clSetKernelArg %u: %s", i, aj_opencl_error_name(err));
}

static void launch(cl_kernel k, size_t groups, size_t wg) {
  size_t global = groups * wg, local = wg;
  cl_int err = cl->clEnqueueNDRangeKernel(dev->queue, k, 1, NULL, &global, &local, 0, NULL, NULL);
  CHECK_MSG(err == CL_SUCCESS, "clEnqueueNDRangeKernel: %s", aj_opencl_error_name(err));
  err = cl->clFinish(dev->queue);
  CHECK_MSG(err == CL_SUCCESS, "clFinish: %s", aj_opencl_error_name(err));
}

/* |a - b| in units of b's float spacing (0 when both are equal, including both NaN). */
static double ulps_f32(float a, float b) {
  if (a == b || (isnan(a) && isnan(b))) return 0.0;
  if (!isfinite(a) || !isfinite(b)) return INFINITY;
  double mag = fmax(fabs((double)a), fabs((double)b));
  double u = mag < FLT_MIN ? 0x1p-149 : ldexp(1.0, ilogb(mag) - 23);
  return fabs((double)a - (double)b) / u;
}

/* ------------------------------------------------------------------ adamw32 */

static void run_adamw32(adamjit_dtype pd, adamjit_dtype gd) {
  printf("adamw32 p=%s g=%s, %d elements\n", adamjit_dtype_name(pd), adamjit_dtype_name(gd), N);
  const size_t psz = adamjit_dtype_size(pd), gsz = adamjit_dtype_size(gd);
  void* p0 = test_calloc(N, 4);
  void* g0 = test_calloc(N, 4);
  test_rng rng = {0x5eedULL + (unsigned)pd * 3u + (unsigned)gd};
  for (int i = 0; i < N; i++) {
    put_elem(pd, p0, i, test_rng_uniform(&rng) * pow(10.0, (double)(i % 4) - 2.0));
    put_elem(gd, g0, i, (i % 17 == 0) ? 0.0 : test_rng_uniform(&rng) * pow(10.0, (double)(i % 5) - 3.0));
  }
  put_elem(gd, g0, 7, NAN);
  put_elem(gd, g0, 2500, INFINITY);

  /* CPU backend, one step through the public API. */
  adamjit_context* cpu = test_cpu_context();
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.hparams.lr = 1e-2f;
  cfg.hparams.weight_decay = 0.1f;
  adamjit_optimizer* opt = NULL;
  adamjit_mem pm = NULL, gm = NULL;
  REQUIRE_OK(adamjit_optimizer_create(cpu, &cfg, &opt));
  REQUIRE_OK(adamjit_mem_alloc(cpu, N * psz, &pm));
  REQUIRE_OK(adamjit_mem_alloc(cpu, N * gsz, &gm));
  REQUIRE_OK(adamjit_mem_write(cpu, pm, 0, p0, N * psz));
  REQUIRE_OK(adamjit_mem_write(cpu, gm, 0, g0, N * gsz));
  adamjit_tensor_desc d;
  adamjit_tensor_desc_init_default(&d);
  d.param = pm;
  d.grad = gm;
  d.numel = N;
  d.param_dtype = pd;
  d.grad_dtype = gd;
  int idx = -1;
  REQUIRE_OK(adamjit_optimizer_add_tensor(opt, &d, &idx));
  uint64_t cpu_bad = 0;
  REQUIRE_OK(adamjit_optimizer_step(opt, &cpu_bad));
  void* cpu_p = test_calloc(N, 4);
  float* cpu_m = test_calloc(N, sizeof(float));
  float* cpu_v = test_calloc(N, sizeof(float));
  REQUIRE_OK(adamjit_mem_read(cpu, cpu_p, pm, 0, N * psz));
  REQUIRE_OK(adamjit_optimizer_read_state(opt, idx, ADAMJIT_STATE_EXP_AVG, cpu_m, N));
  REQUIRE_OK(adamjit_optimizer_read_state(opt, idx, ADAMJIT_STATE_EXP_AVG_SQ, cpu_v, N));

  /* The per-step scalars of step 1, as the CPU backend computes them (c1, c2 in double). */
  const adamjit_hparams* hp = &cfg.hparams;
  aj_step_scalars sc; /* the kernels' scalar buffer, exactly as the CPU backend computes it */
  aj_step_scalars_compute(hp, 1, &sc);

  aj_variant v;
  aj_variant_init_default(&v, AJ_KERNEL_ADAMW32);
  v.param_dtype = pd;
  v.grad_dtype = gd;
  v.weight_decay = 1;
  v.nonfinite_guard = 1;
  aj_cl_program prog;
  cl_kernel k = make_kernel(&v, &prog);
  if (k) {
    float* zeros = test_calloc(N, sizeof(float));
    cl_uint bad0 = 0;
    cl_mem bp = buf_from(p0, N * psz), bg = buf_from(g0, N * gsz), bm = buf_from(zeros, N * 4),
           bv = buf_from(zeros, N * 4), bs = buf_from(&sc, sizeof sc), bn = buf_from(&bad0, sizeof bad0);
    cl_ulong n = N;
    set_arg(k, 0, sizeof bp, &bp);
    set_arg(k, 1, sizeof bg, &bg);
    set_arg(k, 2, sizeof bm, &bm);
    set_arg(k, 3, sizeof bv, &bv);
    set_arg(k, 4, sizeof bs, &bs);
    set_arg(k, 5, sizeof bn, &bn);
    set_arg(k, 6, sizeof n, &n);
    const size_t per_group = (size_t)v.wg_size * (size_t)v.elems_per_thread;
    launch(k, (N + per_group - 1) / per_group, (size_t)v.wg_size);
    void* gp = test_calloc(N, 4);
    float* gmv = test_calloc(N, sizeof(float));
    float* gvv = test_calloc(N, sizeof(float));
    cl_uint gbad = 0;
    buf_read(bp, gp, N * psz);
    buf_read(bm, gmv, N * 4);
    buf_read(bv, gvv, N * 4);
    buf_read(bn, &gbad, sizeof gbad);

    double worst_p = 0, worst_m = 0, worst_v = 0;
    int bad_p = 0, bad_m = 0, bad_v = 0;
    for (int i = 0; i < N; i++) {
      double dp;
      if (pd == ADAMJIT_F32) {
        dp = ulps_f32(((float*)gp)[i], ((float*)cpu_p)[i]);
      } else {
        /* Half-precision params: the distance in the param dtype's own ulps. */
        double a = get_elem(pd, gp, i), b = get_elem(pd, cpu_p, i);
        double mag = fmax(fabs(a), fabs(b));
        int bits = pd == ADAMJIT_F16 ? 11 : 8;
        double u = mag == 0.0 ? 1.0 : ldexp(1.0, ilogb(mag) - (bits - 1));
        dp = a == b ? 0.0 : fabs(a - b) / u;
      }
      const double dm = ulps_f32(gmv[i], cpu_m[i]), dv = ulps_f32(gvv[i], cpu_v[i]);
      if (dp > worst_p) worst_p = dp;
      if (dm > worst_m) worst_m = dm;
      if (dv > worst_v) worst_v = dv;
      const double ptol = pd == ADAMJIT_F32 ? 4.0 : 1.0;
      if (dp > ptol && bad_p++ < 5)
        fprintf(stderr, "  p[%d]: opencl %.9g cpu %.9g (%.2f ulp)\n", i, get_elem(pd, gp, i), get_elem(pd, cpu_p, i), dp);
      if (dm > 4.0 && bad_m++ < 5) fprintf(stderr, "  m[%d]: opencl %.9g cpu %.9g\n", i, gmv[i], cpu_m[i]);
      if (dv > 4.0 && bad_v++ < 5) fprintf(stderr, "  v[%d]: opencl %.9g cpu %.9g\n", i, gvv[i], cpu_v[i]);
    }
    printf("  worst difference: p %.2f ulp (%s), m %.2f ulp, v %.2f ulp; non-finite: opencl %u, cpu %llu\n",
           worst_p, adamjit_dtype_name(pd), worst_m, worst_v, (unsigned)gbad, (unsigned long long)cpu_bad);
    CHECK(bad_p == 0);
    CHECK(bad_m == 0);
    CHECK(bad_v == 0);
    CHECK(gbad == 2);
    CHECK(cpu_bad == 2);
    int moved = 0; /* the comparison means something only if the step moved the params */
    for (int i = 0; i < N; i++) moved += get_elem(pd, gp, i) != get_elem(pd, p0, i);
    printf("  %d of %d params changed\n", moved, N);
    CHECK(moved > N / 2);
    /* The guarded elements kept their param and zero state on the device. */
    CHECK(get_elem(pd, gp, 7) == get_elem(pd, p0, 7) && gmv[7] == 0.0f && gvv[7] == 0.0f);
    CHECK(get_elem(pd, gp, 2500) == get_elem(pd, p0, 2500) && gmv[2500] == 0.0f);

    cl_mem all[6] = {bp, bg, bm, bv, bs, bn};
    for (int j = 0; j < 6; j++)
      if (all[j]) cl->clReleaseMemObject(all[j]);
    free(zeros);
    free(gp);
    free(gmv);
    free(gvv);
    cl->clReleaseKernel(k);
  }
  aj_opencl_program_free(&prog);
  adamjit_optimizer_destroy(opt);
  adamjit_mem_free(cpu, pm);
  adamjit_mem_free(cpu, gm);
  adamjit_context_destroy(cpu);
  free(p0);
  free(g0);
  free(cpu_p);
  free(cpu_m);
  free(cpu_v);
}

/* ------------------------------------------------------- quantize, dequantize */

static void run_quant(void) {
  const int block = 256, nblocks = (N + block - 1) / block;
  printf("quantize/dequantize f32, block %d, %d elements (%d blocks)\n", block, N, nblocks);
  float* x = test_calloc(N, sizeof(float));
  test_rng rng = {0xabcdULL};
  for (int i = 0; i < N; i++) x[i] = (float)(test_rng_uniform(&rng) * pow(10.0, (double)((i / block) % 4) - 2.0));
  for (int i = 512; i < 768; i++) x[i] = 0.0f; /* an all-zero block: absmax 0, code of 0 */

  adamjit_context* cpu = test_cpu_context();
  adamjit_quant_desc qd;
  adamjit_quant_desc_init_default(&qd);
  qd.numel = N;
  qd.block_size = block;
  adamjit_mem xm = NULL, cm = NULL, am = NULL, om = NULL;
  REQUIRE_OK(adamjit_mem_alloc(cpu, N * 4, &xm));
  REQUIRE_OK(adamjit_mem_alloc(cpu, N, &cm));
  REQUIRE_OK(adamjit_mem_alloc(cpu, (size_t)nblocks * 4, &am));
  REQUIRE_OK(adamjit_mem_alloc(cpu, N * 4, &om));
  REQUIRE_OK(adamjit_mem_write(cpu, xm, 0, x, N * 4));
  REQUIRE_OK(adamjit_quantize_blockwise(cpu, &qd, xm, cm, am));
  REQUIRE_OK(adamjit_dequantize_blockwise(cpu, &qd, cm, am, om));
  uint8_t* cpu_codes = test_calloc(N, 1);
  float* cpu_absmax = test_calloc((size_t)nblocks, sizeof(float));
  float* cpu_out = test_calloc(N, sizeof(float));
  REQUIRE_OK(adamjit_mem_read(cpu, cpu_codes, cm, 0, N));
  REQUIRE_OK(adamjit_mem_read(cpu, cpu_absmax, am, 0, (size_t)nblocks * 4));
  REQUIRE_OK(adamjit_mem_read(cpu, cpu_out, om, 0, N * 4));

  const aj_qmap* q = aj_qmap_builtin(1);
  float map[ADAMJIT_QMAP_SIZE];
  REQUIRE_OK(adamjit_qmap_values(ADAMJIT_QMAP_SIGNED, map, ADAMJIT_QMAP_SIZE));

  aj_variant v;
  aj_variant_init_default(&v, AJ_KERNEL_QUANTIZE);
  v.block_size = block;
  v.nonfinite_guard = 1;
  aj_cl_program prog;
  cl_kernel k = make_kernel(&v, &prog);
  if (k) {
    uint8_t* codes = test_calloc(N, 1);
    float* absmax = test_calloc((size_t)nblocks, sizeof(float));
    cl_uint bad0 = 0;
    cl_ulong n = N;
    cl_mem bx = buf_from(x, N * 4), bc = buf_from(codes, N), ba = buf_from(absmax, (size_t)nblocks * 4),
           bt = buf_from(q->thresholds, 255 * sizeof(float)), bn = buf_from(&bad0, sizeof bad0);
    set_arg(k, 0, sizeof bx, &bx);
    set_arg(k, 1, sizeof bc, &bc);
    set_arg(k, 2, sizeof ba, &ba);
    set_arg(k, 3, sizeof bt, &bt);
    set_arg(k, 4, sizeof bn, &bn);
    set_arg(k, 5, sizeof n, &n);
    launch(k, (size_t)nblocks, (size_t)v.wg_size);
    cl_uint gbad = 1;
    buf_read(bc, codes, N);
    buf_read(ba, absmax, (size_t)nblocks * 4);
    buf_read(bn, &gbad, sizeof gbad);
    int absmax_diff = 0, code_diff = 0, near_mid = 0;
    for (int b = 0; b < nblocks; b++)
      if (absmax[b] != cpu_absmax[b] && absmax_diff++ < 5)
        fprintf(stderr, "  absmax[%d]: opencl %.9g cpu %.9g\n", b, absmax[b], cpu_absmax[b]);
    for (int i = 0; i < N; i++) {
      if (codes[i] == cpu_codes[i]) continue;
      /* Allowed: neighbouring codes where x/absmax lies within 1e-6 of the threshold between them. */
      const int lo = codes[i] < cpu_codes[i] ? codes[i] : cpu_codes[i];
      const float a = cpu_absmax[i / block];
      const double r = a == 0.0f ? 0.0 : (double)x[i] / (double)a;
      if (abs((int)codes[i] - (int)cpu_codes[i]) == 1 && fabs(r - (double)q->thresholds[lo]) <= 1e-6) {
        near_mid++;
      } else if (code_diff++ < 5) {
        fprintf(stderr, "  code[%d] (x=%.9g, x/absmax=%.9g): opencl %d cpu %d\n", i, x[i], r, codes[i], cpu_codes[i]);
      }
    }
    printf("  quantize: absmax differences %d, code differences %d (+%d at a midpoint), non-finite %u\n",
           absmax_diff, code_diff, near_mid, (unsigned)gbad);
    CHECK(absmax_diff == 0);
    CHECK(code_diff == 0);
    CHECK(gbad == 0);
    cl_mem all[5] = {bx, bc, ba, bt, bn};
    for (int j = 0; j < 5; j++)
      if (all[j]) cl->clReleaseMemObject(all[j]);
    free(codes);
    free(absmax);
    cl->clReleaseKernel(k);
  }
  aj_opencl_program_free(&prog);

  /* Dequantize the CPU's codes and absmax on the device. */
  aj_variant_init_default(&v, AJ_KERNEL_DEQUANTIZE);
  v.block_size = block;
  k = make_kernel(&v, &prog);
  if (k) {
    float* out = test_calloc(N, sizeof(float));
    cl_ulong n = N;
    cl_mem bc = buf_from(cpu_codes, N), ba = buf_from(cpu_absmax, (size_t)nblocks * 4), bm = buf_from(map, sizeof map),
           bo = buf_from(out, N * 4);
    set_arg(k, 0, sizeof bc, &bc);
    set_arg(k, 1, sizeof ba, &ba);
    set_arg(k, 2, sizeof bm, &bm);
    set_arg(k, 3, sizeof bo, &bo);
    set_arg(k, 4, sizeof n, &n);
    launch(k, (size_t)nblocks, (size_t)v.wg_size);
    buf_read(bo, out, N * 4);
    int diff = 0;
    for (int i = 0; i < N; i++)
      if (out[i] != cpu_out[i] && diff++ < 5) fprintf(stderr, "  out[%d]: opencl %.9g cpu %.9g\n", i, out[i], cpu_out[i]);
    printf("  dequantize: %d differences of %d values\n", diff, N);
    CHECK(diff == 0);
    cl_mem all[4] = {bc, ba, bm, bo};
    for (int j = 0; j < 4; j++)
      if (all[j]) cl->clReleaseMemObject(all[j]);
    free(out);
    cl->clReleaseKernel(k);
  }
  aj_opencl_program_free(&prog);

  adamjit_mem_free(cpu, xm);
  adamjit_mem_free(cpu, cm);
  adamjit_mem_free(cpu, am);
  adamjit_mem_free(cpu, om);
  adamjit_context_destroy(cpu);
  free(x);
  free(cpu_codes);
  free(cpu_absmax);
  free(cpu_out);
}

/* ------------------------------------------------------------------- sqnorm */

static void run_sqnorm(void) {
  float* g = test_calloc(N, sizeof(float));
  test_rng rng = {0x71ULL};
  double want = 0.0;
  for (int i = 0; i < N; i++) {
    g[i] = (float)(test_rng_uniform(&rng) * pow(10.0, (double)(i % 3) - 1.0));
    want += (double)g[i] * (double)g[i];
  }
  want -= (double)g[42] * (double)g[42];
  g[42] = NAN; /* left out of the sum and counted */
  aj_variant v;
  aj_variant_init_default(&v, AJ_KERNEL_SQNORM);
  v.nonfinite_guard = 1;
  const size_t per_group = (size_t)v.wg_size * (size_t)v.elems_per_thread, groups = (N + per_group - 1) / per_group;
  printf("sqnorm f32, %d elements (%zu partial sums)\n", N, groups);
  aj_cl_program prog;
  cl_kernel k = make_kernel(&v, &prog);
  if (k) {
    float* partial = test_calloc(groups, sizeof(float));
    cl_uint bad0 = 0, gbad = 0;
    cl_ulong n = N;
    cl_mem bg = buf_from(g, N * 4), bp = buf_from(partial, groups * 4), bn = buf_from(&bad0, sizeof bad0);
    set_arg(k, 0, sizeof bg, &bg);
    set_arg(k, 1, sizeof bp, &bp);
    set_arg(k, 2, sizeof bn, &bn);
    set_arg(k, 3, sizeof n, &n);
    launch(k, groups, (size_t)v.wg_size);
    buf_read(bp, partial, groups * 4);
    buf_read(bn, &gbad, sizeof gbad);
    double got = 0.0;
    for (size_t j = 0; j < groups; j++) got += partial[j];
    const double rel = fabs(got - want) / want;
    printf("  sum of squares: opencl %.9g, double %.9g (relative difference %.2e); non-finite %u\n", got, want, rel,
           (unsigned)gbad);
    CHECK(rel <= 1e-5);
    CHECK(gbad == 1);
    cl_mem all[3] = {bg, bp, bn};
    for (int j = 0; j < 3; j++)
      if (all[j]) cl->clReleaseMemObject(all[j]);
    free(partial);
    cl->clReleaseKernel(k);
  }
  aj_opencl_program_free(&prog);
  free(g);
}

/* ------------------------------------------------------------------- adamw8 */

/* The code c with map[c] * a == value, or -1. */
static int code_of_value(const float* map, float a, float value) {
  for (int c = 0; c < ADAMJIT_QMAP_SIZE; c++)
    if (map[c] * a == value) return c;
  return -1;
}

/* One state of the 8-bit step: the device's codes against the CPU's dequantized state. The
 * value before quantization (`pre`, computed on the host exactly as both backends do at step
 * 1 from zero state) tells whether a differing code sits at a midpoint. */
static int compare_codes(const char* what, const uint8_t* codes, const float* absmax, const float* map,
                         const float* thr, const float* pre, const float* cpu, int block, int* near_mid) {
  int bad = 0;
  for (int i = 0; i < N; i++) {
    const float a = absmax[i / block];
    const float got = map[codes[i]] * a;
    if (got == cpu[i]) continue;
    const int cc = code_of_value(map, a, cpu[i]);
    const int lo = cc < codes[i] ? cc : codes[i];
    const double r = a == 0.0f ? 0.0 : (double)pre[i] / (double)a;
    if (cc >= 0 && abs(cc - (int)codes[i]) == 1 && fabs(r - (double)thr[lo]) <= 1e-6) {
      (*near_mid)++;
    } else if (bad++ < 5) {
      fprintf(stderr, "  %s[%d]: opencl code %d (%.9g) cpu %.9g (code %d), value/absmax %.9g\n", what, i, codes[i], got,
              cpu[i], cc, r);
    }
  }
  return bad;
}

static void run_adamw8(void) {
  const int block = 256, nblocks = (N + block - 1) / block;
  printf("adamw8 p=f32 g=f32, block %d, %d elements (%d blocks)\n", block, N, nblocks);
  float* p0 = test_calloc(N, sizeof(float));
  float* g0 = test_calloc(N, sizeof(float));
  test_rng rng = {0x8b17ULL};
  for (int i = 0; i < N; i++) {
    p0[i] = (float)(test_rng_uniform(&rng) * pow(10.0, (double)(i % 4) - 2.0));
    g0[i] = (i % 19 == 0) ? 0.0f : (float)(test_rng_uniform(&rng) * pow(10.0, (double)((i * 7) % 5) - 3.0));
  }
  g0[300] = NAN;

  adamjit_context* cpu = test_cpu_context();
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.hparams.lr = 1e-2f;
  cfg.hparams.weight_decay = 0.1f;
  cfg.optim_bits = 8;
  cfg.min_8bit_size = 0; /* 8-bit state for this small tensor too */
  cfg.quant_block_size = block;
  adamjit_optimizer* opt = NULL;
  adamjit_mem pm = NULL, gm = NULL;
  REQUIRE_OK(adamjit_optimizer_create(cpu, &cfg, &opt));
  REQUIRE_OK(adamjit_mem_alloc(cpu, N * 4, &pm));
  REQUIRE_OK(adamjit_mem_alloc(cpu, N * 4, &gm));
  REQUIRE_OK(adamjit_mem_write(cpu, pm, 0, p0, N * 4));
  REQUIRE_OK(adamjit_mem_write(cpu, gm, 0, g0, N * 4));
  adamjit_tensor_desc d;
  adamjit_tensor_desc_init_default(&d);
  d.param = pm;
  d.grad = gm;
  d.numel = N;
  int idx = -1;
  REQUIRE_OK(adamjit_optimizer_add_tensor(opt, &d, &idx));
  adamjit_tensor_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  REQUIRE_OK(adamjit_optimizer_tensor_info(opt, idx, &info));
  CHECK(info.state_bits == 8 && info.quant_block_size == block);
  uint64_t cpu_bad = 0;
  REQUIRE_OK(adamjit_optimizer_step(opt, &cpu_bad));
  float* cpu_p = test_calloc(N, sizeof(float));
  float* cpu_m = test_calloc(N, sizeof(float));
  float* cpu_v = test_calloc(N, sizeof(float));
  REQUIRE_OK(adamjit_mem_read(cpu, cpu_p, pm, 0, N * 4));
  REQUIRE_OK(adamjit_optimizer_read_state(opt, idx, ADAMJIT_STATE_EXP_AVG, cpu_m, N));
  REQUIRE_OK(adamjit_optimizer_read_state(opt, idx, ADAMJIT_STATE_EXP_AVG_SQ, cpu_v, N));

  const adamjit_hparams* hp = &cfg.hparams;
  aj_step_scalars sc; /* the kernels' scalar buffer, exactly as the CPU backend computes it */
  aj_step_scalars_compute(hp, 1, &sc);
  /* m and v before quantization: from zero state, m1 = (1-b1) g and v1 = (1-b2) g^2. */
  float* pre_m = test_calloc(N, sizeof(float));
  float* pre_v = test_calloc(N, sizeof(float));
  for (int i = 0; i < N; i++)
    if (isfinite(g0[i])) {
      pre_m[i] = (1.0f - hp->beta1) * g0[i];
      pre_v[i] = (1.0f - hp->beta2) * (g0[i] * g0[i]);
    }

  float map1[ADAMJIT_QMAP_SIZE], map2[ADAMJIT_QMAP_SIZE];
  REQUIRE_OK(adamjit_qmap_values(ADAMJIT_QMAP_SIGNED, map1, ADAMJIT_QMAP_SIZE));
  REQUIRE_OK(adamjit_qmap_values(ADAMJIT_QMAP_UNSIGNED, map2, ADAMJIT_QMAP_SIZE));
  const float* thr1 = aj_qmap_builtin(1)->thresholds;
  const float* thr2 = aj_qmap_builtin(0)->thresholds;

  aj_variant v;
  aj_variant_init_default(&v, AJ_KERNEL_ADAMW8);
  v.block_size = block;
  v.weight_decay = 1;
  v.nonfinite_guard = 1;
  aj_cl_program prog;
  cl_kernel k = make_kernel(&v, &prog);
  if (k) {
    /* Zero state: any code with absmax 0 decodes to 0; 127 and 0 are the maps' zeros. */
    uint8_t* codes1 = test_calloc(N, 1);
    uint8_t* codes2 = test_calloc(N, 1);
    memset(codes1, 127, N);
    float* am1 = test_calloc((size_t)nblocks, sizeof(float));
    float* am2 = test_calloc((size_t)nblocks, sizeof(float));
    cl_uint bad0 = 0, gbad = 0;
    cl_ulong n = N;
    cl_mem b[13];
    b[0] = buf_from(p0, N * 4);
    b[1] = buf_from(g0, N * 4);
    b[2] = buf_from(codes1, N);
    b[3] = buf_from(codes2, N);
    b[4] = buf_from(am1, (size_t)nblocks * 4);
    b[5] = buf_from(am2, (size_t)nblocks * 4);
    b[6] = buf_from(map1, sizeof map1);
    b[7] = buf_from(map2, sizeof map2);
    b[8] = buf_from(thr1, 255 * sizeof(float));
    b[9] = buf_from(thr2, 255 * sizeof(float));
    b[10] = buf_from(&sc, sizeof sc);
    b[11] = buf_from(&bad0, sizeof bad0);
    for (cl_uint a = 0; a < 12; a++) set_arg(k, a, sizeof(cl_mem), &b[a]);
    set_arg(k, 12, sizeof n, &n);
    launch(k, (size_t)nblocks, (size_t)v.wg_size);
    float* gp = test_calloc(N, sizeof(float));
    buf_read(b[0], gp, N * 4);
    buf_read(b[2], codes1, N);
    buf_read(b[3], codes2, N);
    buf_read(b[4], am1, (size_t)nblocks * 4);
    buf_read(b[5], am2, (size_t)nblocks * 4);
    buf_read(b[11], &gbad, sizeof gbad);

    double worst_p = 0;
    int bad_p = 0, mid_m = 0, mid_v = 0;
    for (int i = 0; i < N; i++) {
      const double dp = ulps_f32(gp[i], cpu_p[i]);
      if (dp > worst_p) worst_p = dp;
      if (dp > 4.0 && bad_p++ < 5) fprintf(stderr, "  p[%d]: opencl %.9g cpu %.9g (%.2f ulp)\n", i, gp[i], cpu_p[i], dp);
    }
    const int bad_m = compare_codes("m", codes1, am1, map1, thr1, pre_m, cpu_m, block, &mid_m);
    const int bad_v = compare_codes("v", codes2, am2, map2, thr2, pre_v, cpu_v, block, &mid_v);
    printf("  worst p difference %.2f ulp; m: %d codes differ (+%d at a midpoint), v: %d (+%d); non-finite: opencl %u, "
           "cpu %llu\n",
           worst_p, bad_m, mid_m, bad_v, mid_v, (unsigned)gbad, (unsigned long long)cpu_bad);
    CHECK(bad_p == 0);
    CHECK(bad_m == 0);
    CHECK(bad_v == 0);
    CHECK(gbad == 1 && cpu_bad == 1);
    CHECK(gp[300] == p0[300]);
    int moved = 0, nonzero_m = 0;
    for (int i = 0; i < N; i++) {
      moved += gp[i] != p0[i];
      nonzero_m += codes1[i] != 127;
    }
    printf("  %d of %d params changed, %d m codes not zero\n", moved, N, nonzero_m);
    CHECK(moved > N / 2 && nonzero_m > N / 2);
    for (int j = 0; j < 12; j++)
      if (b[j]) cl->clReleaseMemObject(b[j]);
    free(codes1);
    free(codes2);
    free(am1);
    free(am2);
    free(gp);
    cl->clReleaseKernel(k);
  }
  aj_opencl_program_free(&prog);
  adamjit_optimizer_destroy(opt);
  adamjit_mem_free(cpu, pm);
  adamjit_mem_free(cpu, gm);
  adamjit_context_destroy(cpu);
  free(p0);
  free(g0);
  free(cpu_p);
  free(cpu_m);
  free(cpu_v);
  free(pre_m);
  free(pre_v);
}

int main(void) {
  /* A fresh PoCL kernel cache: nothing is left behind in ~/.cache. Set before PoCL loads. */
  char cache_dir[] = "opencl_run_pocl_cache_XXXXXX";
  if (pocl_scratch_begin(cache_dir)) return 1;

  char why[2048];
  if (aj_opencl_available(why, sizeof why) != ADAMJIT_OK) {
    printf("SKIP: OpenCL loader unavailable: %s\n", why);
    pocl_scratch_end(cache_dir);
    return TEST_SKIP_CODE;
  }
  adamjit_context_desc cd; /* a CPU context: it only carries the messages of the OpenCL calls */
  adamjit_context_desc_init_default(&cd);
  cd.backend = ADAMJIT_BACKEND_CPU;
  if (adamjit_context_create(&cd, &clctx) != ADAMJIT_OK) {
    fprintf(stderr, "context: %s\n", adamjit_last_error());
    pocl_scratch_end(cache_dir);
    return 1;
  }
  if (aj_opencl_device_open(clctx, NULL, &dev) != ADAMJIT_OK) {
    printf("SKIP: no OpenCL device: %s\n", adamjit_context_last_error(clctx));
    adamjit_context_destroy(clctx);
    pocl_scratch_end(cache_dir);
    return TEST_SKIP_CODE;
  }
  cl = aj_opencl_api();
  printf("OpenCL device: %s (%s), %s\n", dev->info.name, dev->info.platform, dev->info.version);
  REQUIRE_OK(aj_lua_host_create(clctx, &host));

  run_adamw32(ADAMJIT_F32, ADAMJIT_F32);
  run_adamw32(ADAMJIT_BF16, ADAMJIT_F16);
  run_quant();
  run_sqnorm();
  run_adamw8();

  aj_lua_host_destroy(host);
  aj_opencl_device_close(dev);
  adamjit_context_destroy(clctx);
  pocl_scratch_end(cache_dir);
  return test_finish("test_opencl_run");
}
