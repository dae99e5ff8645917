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
 *   adamw8      f32 params and grads, weight decay, guard on, a NaN gradient: one 8-bit step
 *               on the CPU backend (public API) against the kernel: params within 4 ulp, the
 *               dequantized m and v identical except neighbouring codes where the
 *               value/absmax is within 1e-6 of the threshold between them. Both layouts of
 *               adamw8.lua: shared blocks (vec > 1) with wg equal to, below and above the
 *               block, and several blocks per work-item; own blocks (vec = 1) with the binary
 *               search, with the code table, and with the table and recomputed moments
 *               (block 4096: one partial block).
 *   adamw8 b=0  one absmax per tensor (the four kernels of adamw8.lua, launched as its header
 *               says), 5003 elements (a partial last work-group), 4 steps with NaN/Inf
 *               gradients on three of them, for f32/f32, bf16/bf16 with amsgrad and
 *               percentile clipping, f32/f16 with amsgrad, bf16/f32; launches from 3 to 157
 *               groups, the reduce in one launch or two. Each step starts the device from the
 *               CPU backend's state before it (read from core's tensor record) and must match
 *               the CPU's result bit for bit: params, codes, absmax, non-finite count.
 *   clip        against aj_clip_scale given the same sq (the kernel's documented sum order
 *               replayed on the host): gscale and history bit for bit over 230 steps (two
 *               history wraps), with and without the guard, wg 256, 32 (< 100 slots) and 64,
 *               a non-finite first step, NaN/Inf partials without the guard, the percentile
 *               changing every step; and sqnorm + clip against the CPU backend's own
 *               clipping over 120 steps (history and scale within 1e-5: it sums in double).
 * Not covered: amsgrad and clipping in the blockwise and 32-bit steps, other dtypes at run
 * time (the variants test builds them; test_opencl_parity runs them through the library). Skipped (77) without an OpenCL device. */
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

/* ------------------------------------------------------------- CPU reference */

/* The CPU backend's optimizer over one tensor of n elements (params in pd, gradients in
 * gd): what each kernel's results are checked against. */
typedef struct cpu_ref {
  adamjit_context* ctx;
  adamjit_optimizer* opt;
  adamjit_mem p, g;
  int index;
} cpu_ref;

/* Creates it from cfg, the params from p0 (zeros where NULL); the gradients are the
 * caller's to write. */
static void cpu_ref_open(cpu_ref* r, const adamjit_optimizer_config* cfg, size_t n, adamjit_dtype pd,
                         adamjit_dtype gd, const void* p0) {
  memset(r, 0, sizeof *r);
  r->ctx = test_cpu_context();
  REQUIRE_OK(adamjit_optimizer_create(r->ctx, cfg, &r->opt));
  REQUIRE_OK(adamjit_mem_alloc(r->ctx, n * adamjit_dtype_size(pd), &r->p));
  REQUIRE_OK(adamjit_mem_alloc(r->ctx, n * adamjit_dtype_size(gd), &r->g));
  if (p0) REQUIRE_OK(adamjit_mem_write(r->ctx, r->p, 0, p0, n * adamjit_dtype_size(pd)));
  adamjit_tensor_desc d;
  adamjit_tensor_desc_init_default(&d);
  d.param = r->p;
  d.grad = r->g;
  d.numel = (int64_t)n;
  d.param_dtype = pd;
  d.grad_dtype = gd;
  r->index = -1;
  REQUIRE_OK(adamjit_optimizer_add_tensor(r->opt, &d, &r->index));
}

static void cpu_ref_close(cpu_ref* r) {
  adamjit_optimizer_destroy(r->opt);
  adamjit_mem_free(r->ctx, r->p);
  adamjit_mem_free(r->ctx, r->g);
  adamjit_context_destroy(r->ctx);
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
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.hparams.lr = 1e-2f;
  cfg.hparams.weight_decay = 0.1f;
  cpu_ref ref;
  cpu_ref_open(&ref, &cfg, N, pd, gd, p0);
  REQUIRE_OK(adamjit_mem_write(ref.ctx, ref.g, 0, g0, N * gsz));
  uint64_t cpu_bad = 0;
  REQUIRE_OK(adamjit_optimizer_step(ref.opt, &cpu_bad));
  void* cpu_p = test_calloc(N, 4);
  float* cpu_m = test_calloc(N, sizeof(float));
  float* cpu_v = test_calloc(N, sizeof(float));
  REQUIRE_OK(adamjit_mem_read(ref.ctx, cpu_p, ref.p, 0, N * psz));
  REQUIRE_OK(adamjit_optimizer_read_state(ref.opt, ref.index, ADAMJIT_STATE_EXP_AVG, cpu_m, N));
  REQUIRE_OK(adamjit_optimizer_read_state(ref.opt, ref.index, ADAMJIT_STATE_EXP_AVG_SQ, cpu_v, N));

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
  cpu_ref_close(&ref);
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

/* Work-groups of a blockwise adamw8 launch, as backends/gpu/gpu_step.c computes them. */
static size_t adamw8_groups(const aj_variant* v, size_t n) {
  const size_t block = (size_t)v->block_size, wg = (size_t)v->wg_size, ept = (size_t)v->elems_per_thread;
  if (v->vec_width == 1) return ((n + block - 1) / block + wg * ept - 1) / (wg * ept);
  const size_t per = ept * (wg > block ? wg : block);
  return (n + per - 1) / per;
}

static void run_adamw8(int block, int wg, int ept, int vec) {
  const int nblocks = (N + block - 1) / block;
  printf("adamw8 p=f32 g=f32, block %d, wg %d ept %d vec %d, %d elements (%d blocks)\n", block, wg, ept, vec, N,
         nblocks);
  float* p0 = test_calloc(N, sizeof(float));
  float* g0 = test_calloc(N, sizeof(float));
  test_rng rng = {0x8b17ULL};
  for (int i = 0; i < N; i++) {
    p0[i] = (float)(test_rng_uniform(&rng) * pow(10.0, (double)(i % 4) - 2.0));
    g0[i] = (i % 19 == 0) ? 0.0f : (float)(test_rng_uniform(&rng) * pow(10.0, (double)((i * 7) % 5) - 3.0));
  }
  g0[300] = NAN;

  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.hparams.lr = 1e-2f;
  cfg.hparams.weight_decay = 0.1f;
  cfg.optim_bits = 8;
  cfg.min_8bit_size = 0; /* 8-bit state for this small tensor too */
  cfg.quant_block_size = block;
  cpu_ref ref;
  cpu_ref_open(&ref, &cfg, N, ADAMJIT_F32, ADAMJIT_F32, p0);
  REQUIRE_OK(adamjit_mem_write(ref.ctx, ref.g, 0, g0, N * 4));
  adamjit_tensor_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  REQUIRE_OK(adamjit_optimizer_tensor_info(ref.opt, ref.index, &info));
  CHECK(info.state_bits == 8 && info.quant_block_size == block);
  uint64_t cpu_bad = 0;
  REQUIRE_OK(adamjit_optimizer_step(ref.opt, &cpu_bad));
  float* cpu_p = test_calloc(N, sizeof(float));
  float* cpu_m = test_calloc(N, sizeof(float));
  float* cpu_v = test_calloc(N, sizeof(float));
  REQUIRE_OK(adamjit_mem_read(ref.ctx, cpu_p, ref.p, 0, N * 4));
  REQUIRE_OK(adamjit_optimizer_read_state(ref.opt, ref.index, ADAMJIT_STATE_EXP_AVG, cpu_m, N));
  REQUIRE_OK(adamjit_optimizer_read_state(ref.opt, ref.index, ADAMJIT_STATE_EXP_AVG_SQ, cpu_v, N));

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
  v.wg_size = wg;
  v.elems_per_thread = ept;
  v.vec_width = vec;
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
    launch(k, adamw8_groups(&v, N), (size_t)v.wg_size);
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
  cpu_ref_close(&ref);
  free(p0);
  free(g0);
  free(cpu_p);
  free(cpu_m);
  free(cpu_v);
  free(pre_m);
  free(pre_v);
}

/* ------------------------------------------------- adamw8, one absmax per tensor */

/* One configuration of the tensor-wise (b=0) 8-bit step. */
typedef struct tw_case {
  adamjit_dtype pd, gd;
  int amsgrad, wd;
  int percentile;    /* 100: no clipping; else the CPU clips and the kernel reads its scale */
  int wg, ept;       /* launch of passes 1 and 2 */
  int reduce_groups; /* work-groups of the first reduce launch; 1: one launch into newmax */
} tw_case;

#define N8 5003 /* not a multiple of any work-group's wg*ept: a partial last group */
#define STEPS8 4

static void read_or_zero(adamjit_context* cpu, void* dst, adamjit_mem src, size_t bytes) {
  if (src) {
    REQUIRE_OK(adamjit_mem_read(cpu, dst, src, 0, bytes));
  } else {
    memset(dst, 0, bytes);
  }
}

static cl_mem buf_empty(size_t bytes) {
  cl_int err = CL_SUCCESS;
  cl_mem m = cl->clCreateBuffer(dev->context, CL_MEM_READ_WRITE, bytes, NULL, &err);
  CHECK_MSG(err == CL_SUCCESS, "clCreateBuffer: %s", aj_opencl_error_name(err));
  return m;
}

static void buf_write(cl_mem m, const void* src, size_t bytes) {
  cl_int err = cl->clEnqueueWriteBuffer(dev->queue, m, CL_TRUE, 0, bytes, src, 0, NULL, NULL);
  CHECK_MSG(err == CL_SUCCESS, "clEnqueueWriteBuffer: %s", aj_opencl_error_name(err));
}

/* The CPU backend's m, v, vmax of element i before quantization, from the old state (the
 * formula of SPEC 2/3 in the CPU's fp32 operations), for telling a rounding tie from a bug. */
static void host_moments(const aj_step_scalars* sc, float scale, float graw, float m0, float v0, float x0, float out[3]) {
  out[0] = m0, out[1] = v0, out[2] = x0;
  if (!isfinite(graw)) return;
  const float g = graw * scale;
  out[0] = sc->beta1 * m0 + (1.0f - sc->beta1) * g;
  out[1] = sc->beta2 * v0 + (1.0f - sc->beta2) * (g * g);
  out[2] = out[1] > x0 ? out[1] : x0;
}

/* Codes of one state against the CPU's: identical, except neighbouring codes whose
 * normalized value lies within 1e-6 of the threshold between them (counted in *mid). */
static int compare_tensor_codes(const char* what, const uint8_t* got, const uint8_t* want, const float* pre,
                                float absmax, const float* thr, int* mid) {
  int bad = 0;
  const float inv = absmax == 0.0f ? 0.0f : 1.0f / absmax;
  for (int i = 0; i < N8; i++) {
    if (got[i] == want[i]) continue;
    const int lo = got[i] < want[i] ? got[i] : want[i];
    const float x = pre[i] * inv;
    if (abs((int)got[i] - (int)want[i]) == 1 && fabs((double)x - (double)thr[lo]) <= 1e-6) {
      (*mid)++;
    } else if (bad++ < 5) {
      fprintf(stderr, "  %s[%d]: opencl code %d, cpu %d (normalized %.9g)\n", what, i, got[i], want[i], x);
    }
  }
  return bad;
}

static void run_adamw8_tensor(const tw_case* tc) {
  const int clip = tc->percentile < 100;
  const size_t psz = adamjit_dtype_size(tc->pd), gsz = adamjit_dtype_size(tc->gd);
  const size_t per_group = (size_t)tc->wg * (size_t)tc->ept, groups = (N8 + per_group - 1) / per_group;
  printf("adamw8 b=0 p=%s g=%s%s%s%s, wg %d ept %d: %d elements, %zu groups, reduce over %d group(s) first, %d "
         "steps\n",
         adamjit_dtype_name(tc->pd), adamjit_dtype_name(tc->gd), tc->amsgrad ? " amsgrad" : "", tc->wd ? " wd" : "",
         clip ? " clip" : "", tc->wg, tc->ept, N8, groups, tc->reduce_groups, STEPS8);

  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.hparams.lr = 1e-2f;
  cfg.hparams.weight_decay = tc->wd ? 0.1f : 0.0f;
  cfg.hparams.amsgrad = tc->amsgrad;
  cfg.optim_bits = 8;
  cfg.min_8bit_size = 0;
  cfg.block_wise = 0;
  cfg.percentile_clipping = tc->percentile;
  void* p0 = test_calloc(N8, 4);
  void* g0 = test_calloc(N8, 4);
  test_rng rng = {0x70a1ULL + (unsigned)tc->pd * 7u + (unsigned)tc->gd * 3u + (unsigned)tc->amsgrad};
  for (int i = 0; i < N8; i++) put_elem(tc->pd, p0, i, test_rng_uniform(&rng) * pow(10.0, (double)(i % 4) - 2.0));
  cpu_ref ref;
  cpu_ref_open(&ref, &cfg, N8, tc->pd, tc->gd, p0);
  adamjit_tensor_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  REQUIRE_OK(adamjit_optimizer_tensor_info(ref.opt, ref.index, &info));
  CHECK(info.state_bits == 8 && info.quant_block_size == N8);
  /* The CPU's raw state (codes, absmax, history): core's record of the tensor. Each step the
   * device starts from the CPU's state before it, so every step is compared on its own and
   * a tie rounded differently cannot carry into the next. */
  const aj_tensor* t = &ref.opt->tensors[ref.index];

  aj_variant v;
  aj_variant_init_default(&v, AJ_KERNEL_ADAMW8);
  v.param_dtype = tc->pd;
  v.grad_dtype = tc->gd;
  v.block_size = 0;
  v.amsgrad = tc->amsgrad;
  v.weight_decay = tc->wd;
  v.clipping = clip;
  v.nonfinite_guard = 1; /* the CPU backend always guards */
  v.wg_size = tc->wg;
  v.elems_per_thread = tc->ept;
  v.vec_width = 1;
  aj_cl_program prog;
  cl_kernel k_main = make_kernel(&v, &prog);
  const char* names[4];
  CHECK(aj_render_kernel_names(&v, names, 4) == 4);
  cl_kernel kk[4] = {NULL, NULL, NULL, NULL}; /* absmax, reduce, update, commit */
  int have = k_main != NULL;
  for (int j = 0; j < 4 && have; j++) {
    cl_int err = CL_SUCCESS;
    kk[j] = cl->clCreateKernel(prog.program, names[j], &err);
    CHECK_MSG(err == CL_SUCCESS, "clCreateKernel %s: %s", names[j], aj_opencl_error_name(err));
    have = err == CL_SUCCESS;
  }
  float map1[ADAMJIT_QMAP_SIZE], map2[ADAMJIT_QMAP_SIZE];
  REQUIRE_OK(adamjit_qmap_values(ADAMJIT_QMAP_SIGNED, map1, ADAMJIT_QMAP_SIZE));
  REQUIRE_OK(adamjit_qmap_values(ADAMJIT_QMAP_UNSIGNED, map2, ADAMJIT_QMAP_SIZE));
  const float* thr1 = aj_qmap_builtin(1)->thresholds;
  const float* thr2 = aj_qmap_builtin(0)->thresholds;

  /* Host copies of the state: before the step (the device's input) and the CPU's after. */
  void* p_before = test_calloc(N8, 4);
  void* p_cpu = test_calloc(N8, 4);
  void* p_dev = test_calloc(N8, 4);
  uint8_t *cb[3], *ccpu[3], *cdev[3];
  for (int j = 0; j < 3; j++) {
    cb[j] = test_calloc(N8, 1);
    ccpu[j] = test_calloc(N8, 1);
    cdev[j] = test_calloc(N8, 1);
  }
  float* pre[3];
  for (int j = 0; j < 3; j++) pre[j] = test_calloc(N8, sizeof(float));
  float ab[3], acpu[3], adev[3], hist_before[AJ_CLIP_HISTORY], hist_after[AJ_CLIP_HISTORY];
  const adamjit_mem codes_of[3] = {t->m, t->v, t->vmax}, absmax_of[3] = {t->absmax1, t->absmax2, t->absmax3};
  const int nstates = tc->amsgrad ? 3 : 2;

  cl_mem bp = buf_empty(N8 * psz), bg = buf_empty(N8 * gsz), bc[3], ba[3];
  for (int j = 0; j < 3; j++) {
    bc[j] = buf_empty(N8);
    ba[j] = buf_empty(sizeof(float));
  }
  cl_mem bnew = buf_empty(3 * sizeof(float)), bpart = buf_empty(3 * groups * sizeof(float)),
         bscratch = buf_empty(3 * (size_t)tc->reduce_groups * sizeof(float)), bmap1 = buf_from(map1, sizeof map1),
         bmap2 = buf_from(map2, sizeof map2), bthr1 = buf_from(thr1, 255 * sizeof(float)),
         bthr2 = buf_from(thr2, 255 * sizeof(float)), bsc = buf_empty(sizeof(aj_step_scalars)),
         bgs = buf_empty(sizeof(float)), bnf = buf_empty(sizeof(cl_uint));

  int total_mid = 0, clipped = 0, nonfinite_steps = 0;
  for (int s = 1; s <= STEPS8 && have; s++) {
    /* Gradients that grow from step to step (so percentile clipping scales them), with a
     * NaN and an Inf on odd steps and a -Inf on the last. */
    for (int i = 0; i < N8; i++)
      put_elem(tc->gd, g0, i,
               (i % 23 == 0) ? 0.0 : test_rng_uniform(&rng) * pow(10.0, (double)((i * 7) % 5) - 3.0) * (1.0 + s));
    if (s % 2) {
      put_elem(tc->gd, g0, 17, NAN);
      put_elem(tc->gd, g0, 4000, INFINITY);
    }
    if (s == STEPS8) put_elem(tc->gd, g0, N8 - 1, -INFINITY);
    REQUIRE_OK(adamjit_mem_write(ref.ctx, ref.g, 0, g0, N8 * gsz));
    REQUIRE_OK(adamjit_mem_read(ref.ctx, p_before, ref.p, 0, N8 * psz));
    for (int j = 0; j < 3; j++) {
      read_or_zero(ref.ctx, cb[j], j < nstates ? codes_of[j] : NULL, N8);
      read_or_zero(ref.ctx, &ab[j], j < nstates ? absmax_of[j] : NULL, sizeof(float));
    }
    if (clip) read_or_zero(ref.ctx, hist_before, t->gnorm, sizeof hist_before);

    uint64_t cpu_bad = 0;
    REQUIRE_OK(adamjit_optimizer_step(ref.opt, &cpu_bad));
    REQUIRE_OK(adamjit_mem_read(ref.ctx, p_cpu, ref.p, 0, N8 * psz));
    for (int j = 0; j < nstates; j++) {
      read_or_zero(ref.ctx, ccpu[j], codes_of[j], N8);
      read_or_zero(ref.ctx, &acpu[j], absmax_of[j], sizeof(float));
    }

    /* The scale the CPU used: its own rule on its own sq (double sum of the finite squares,
     * as a float); reproducing its history proves it is the same computation. */
    float scale = 1.0f;
    int bad_host = 0;
    if (clip) {
      double sq = 0.0;
      for (int i = 0; i < N8; i++) {
        const double x = get_elem(tc->gd, g0, i);
        if (isfinite(x)) sq += x * x;
        else bad_host = 1;
      }
      scale = aj_clip_scale(hist_before, (uint64_t)s, tc->percentile, (float)sq, bad_host);
      read_or_zero(ref.ctx, hist_after, t->gnorm, sizeof hist_after);
      CHECK_MSG(memcmp(hist_before, hist_after, sizeof hist_after) == 0, "step %d: the CPU's clipping history", s);
      clipped += scale < 1.0f;
    }
    nonfinite_steps += cpu_bad != 0;

    aj_step_scalars sc;
    aj_step_scalars_compute(&cfg.hparams, (uint64_t)s, &sc);
    const cl_uint zero = 0;
    buf_write(bp, p_before, N8 * psz);
    buf_write(bg, g0, N8 * gsz);
    for (int j = 0; j < 3; j++) {
      buf_write(bc[j], cb[j], N8);
      buf_write(ba[j], &ab[j], sizeof(float));
    }
    buf_write(bsc, &sc, sizeof sc);
    buf_write(bgs, &scale, sizeof scale);
    buf_write(bnf, &zero, sizeof zero);

    /* Pass 1 and the update: one argument list, partial or newmax in the one slot. */
    for (int pass = 0; pass < 2; pass++) {
      cl_kernel k = pass == 0 ? kk[0] : kk[2];
      cl_mem args[16];
      int na = 0;
      args[na++] = bp;
      args[na++] = bg;
      for (int j = 0; j < nstates; j++) args[na++] = bc[j];
      for (int j = 0; j < nstates; j++) args[na++] = ba[j];
      args[na++] = pass == 0 ? bpart : bnew;
      args[na++] = bmap1;
      args[na++] = bmap2;
      args[na++] = bthr1;
      args[na++] = bthr2;
      args[na++] = bsc;
      if (clip) args[na++] = bgs;
      args[na++] = bnf;
      for (int a = 0; a < na; a++) set_arg(k, (cl_uint)a, sizeof(cl_mem), &args[a]);
      cl_ulong n = N8;
      set_arg(k, (cl_uint)na, sizeof n, &n);
      launch(k, groups, (size_t)tc->wg);
      if (pass == 1) break;
      /* The maxima folded into newmax: directly, or through a scratch buffer first. */
      cl_ulong count = groups;
      if (tc->reduce_groups > 1) {
        set_arg(kk[1], 0, sizeof(cl_mem), &bpart);
        set_arg(kk[1], 1, sizeof(cl_mem), &bscratch);
        set_arg(kk[1], 2, sizeof count, &count);
        launch(kk[1], (size_t)tc->reduce_groups, (size_t)tc->wg);
        count = (cl_ulong)tc->reduce_groups;
        set_arg(kk[1], 0, sizeof(cl_mem), &bscratch);
      } else {
        set_arg(kk[1], 0, sizeof(cl_mem), &bpart);
      }
      set_arg(kk[1], 1, sizeof(cl_mem), &bnew);
      set_arg(kk[1], 2, sizeof count, &count);
      launch(kk[1], 1, (size_t)tc->wg);
    }
    for (int j = 0; j < nstates; j++) set_arg(kk[3], (cl_uint)j, sizeof(cl_mem), &ba[j]);
    set_arg(kk[3], (cl_uint)nstates, sizeof(cl_mem), &bnew);
    launch(kk[3], 1, 1);

    cl_uint dev_bad = 0;
    buf_read(bp, p_dev, N8 * psz);
    for (int j = 0; j < nstates; j++) {
      buf_read(bc[j], cdev[j], N8);
      buf_read(ba[j], &adev[j], sizeof(float));
    }
    buf_read(bnf, &dev_bad, sizeof dev_bad);

    /* The values before quantization, for the tie check of the codes. */
    for (int i = 0; i < N8; i++) {
      float mv[3];
      host_moments(&sc, scale, (float)get_elem(tc->gd, g0, i), map1[cb[0][i]] * ab[0], map2[cb[1][i]] * ab[1],
                   map2[cb[2][i]] * ab[2], mv);
      for (int j = 0; j < 3; j++) pre[j][i] = mv[j];
    }
    int bad_p = 0, bad_codes = 0, mid = 0;
    for (int i = 0; i < N8; i++) {
      const int same = memcmp((char*)p_dev + (size_t)i * psz, (char*)p_cpu + (size_t)i * psz, psz) == 0;
      if (!same && bad_p++ < 5)
        fprintf(stderr, "  step %d p[%d]: opencl %.9g cpu %.9g\n", s, i, get_elem(tc->pd, p_dev, i),
                get_elem(tc->pd, p_cpu, i));
    }
    static const char* const what[3] = {"m", "v", "vmax"};
    const float* const thr[3] = {thr1, thr2, thr2};
    for (int j = 0; j < nstates; j++) {
      CHECK_MSG(memcmp(&adev[j], &acpu[j], sizeof(float)) == 0, "step %d absmax%d: opencl %.9g cpu %.9g", s, j + 1,
                adev[j], acpu[j]);
      bad_codes += compare_tensor_codes(what[j], cdev[j], ccpu[j], pre[j], acpu[j], thr[j], &mid);
    }
    printf("  step %d: absmax %.6g %.6g%s%.6g, scale %.6g; params differing %d, codes differing %d (+%d at a "
           "midpoint); non-finite: opencl %u, cpu %llu\n",
           s, acpu[0], acpu[1], tc->amsgrad ? " " : " (", tc->amsgrad ? acpu[2] : 0.0f, scale, bad_p, bad_codes, mid,
           (unsigned)dev_bad, (unsigned long long)cpu_bad);
    CHECK(bad_p == 0);
    CHECK(bad_codes == 0);
    CHECK(mid == 0); /* both round a tie up: not even a midpoint may differ */
    CHECK(dev_bad == cpu_bad);
    total_mid += mid;
    int moved = 0;
    for (int i = 0; i < N8; i++) moved += memcmp((char*)p_dev + (size_t)i * psz, (char*)p_before + (size_t)i * psz, psz) != 0;
    CHECK_MSG(moved > N8 / 2, "step %d: only %d params changed", s, moved);
    CHECK(acpu[0] > 0.0f && acpu[1] > 0.0f);
  }
  CHECK(!have || nonfinite_steps == 3);
  if (clip) CHECK_MSG(!have || clipped >= 2, "clipping scaled only %d steps", clipped);
  printf("  %d codes at a rounding midpoint over %d steps\n", total_mid, STEPS8);

  cl_mem all[] = {bp, bg, bc[0], bc[1], bc[2], ba[0], ba[1], ba[2], bnew, bpart, bscratch, bmap1, bmap2, bthr1, bthr2, bsc, bgs, bnf};
  for (size_t j = 0; j < sizeof all / sizeof all[0]; j++)
    if (all[j]) cl->clReleaseMemObject(all[j]);
  for (int j = 0; j < 4; j++)
    if (kk[j]) cl->clReleaseKernel(kk[j]);
  if (k_main) cl->clReleaseKernel(k_main);
  aj_opencl_program_free(&prog);
  for (int j = 0; j < 3; j++) {
    free(cb[j]);
    free(ccpu[j]);
    free(cdev[j]);
    free(pre[j]);
  }
  free(p_before);
  free(p_cpu);
  free(p_dev);
  cpu_ref_close(&ref);
  free(p0);
  free(g0);
}

/* --------------------------------------------------------------------- clip */

/* The kernel's documented order of the partial sums: thread l adds partial[l], [l + wg] ...
 * to 0.0f, then the wg sums are added in a tree. */
static float clip_sum(const float* partial, size_t count, int wg) {
  float acc[AJ_VARIANT_WG_MAX];
  for (int l = 0; l < wg; l++) {
    float a = 0.0f;
    for (size_t j = (size_t)l; j < count; j += (size_t)wg) a += partial[j];
    acc[l] = a;
  }
  for (int s = wg / 2; s > 0; s >>= 1)
    for (int l = 0; l < s; l++) acc[l] += acc[l + s];
  return acc[0];
}

/* Bitwise equal, except that any NaN equals any NaN (a GPU's NaN payloads differ). */
static int same_float(float a, float b) { return (isnan(a) && isnan(b)) || memcmp(&a, &b, sizeof a) == 0; }

static void set_clip_args(cl_kernel k, int guard, cl_mem part, cl_mem hist, cl_mem gs, cl_mem nf, cl_ulong count,
                          cl_ulong step, cl_int percentile) {
  cl_uint a = 0;
  set_arg(k, a++, sizeof(cl_mem), &part);
  set_arg(k, a++, sizeof(cl_mem), &hist);
  set_arg(k, a++, sizeof(cl_mem), &gs);
  if (guard) set_arg(k, a++, sizeof(cl_mem), &nf);
  set_arg(k, a++, sizeof count, &count);
  set_arg(k, a++, sizeof step, &step);
  set_arg(k, a++, sizeof percentile, &percentile);
}

#define CLIP_STEPS 230 /* the history wraps past slot 99 twice */
#define CLIP_MAX_PARTIALS 700

/* The kernel against aj_clip_scale given the same sq (the documented sum of the same
 * partials): gscale and the whole history bit for bit after every step, the history
 * living on the device throughout. Two runs: the first step non-finite (history stays NaN
 * until the first clean step) and clean; non-finite steps sprinkled (guard), or NaN and Inf
 * partials recorded as they are (no guard); the percentile changing every step, 100
 * included; partial counts of 1, 37 and 700 (more than wg). */
static void run_clip_logic(int guard, int wg) {
  printf("clip%s, wg %d: %d steps x 2 runs against aj_clip_scale\n", guard ? " nonfinite" : "", wg, CLIP_STEPS);
  aj_variant v;
  aj_variant_init_default(&v, AJ_KERNEL_CLIP);
  v.nonfinite_guard = guard;
  v.wg_size = wg;
  aj_cl_program prog;
  cl_kernel k = make_kernel(&v, &prog);
  if (!k) {
    aj_opencl_program_free(&prog);
    return;
  }
  float* partial = test_calloc(CLIP_MAX_PARTIALS, sizeof(float));
  cl_mem bpart = buf_empty(CLIP_MAX_PARTIALS * sizeof(float)), bhist = buf_empty(AJ_CLIP_HISTORY * sizeof(float)),
         bgs = buf_empty(sizeof(float)), bnf = buf_empty(sizeof(cl_uint));
  test_rng rng = {0xc11bULL + (unsigned)wg + (unsigned)guard};
  int bad_scale = 0, bad_hist = 0, clipped = 0, skipped = 0, nan_slots = 0;
  for (int run = 0; run < 2; run++) {
    float hist[AJ_CLIP_HISTORY], dev_hist[AJ_CLIP_HISTORY];
    for (int j = 0; j < AJ_CLIP_HISTORY; j++) hist[j] = 7.0f; /* junk before step 1 */
    buf_write(bhist, hist, sizeof hist);
    for (int t = 1; t <= CLIP_STEPS; t++) {
      const size_t count = t % 7 == 0 ? CLIP_MAX_PARTIALS : t % 3 == 0 ? 1 : 37;
      /* Squared norms around 1 with occasional spikes (clipped at the low percentiles). */
      const double level = (t % 13 == 0 ? 50.0 : 1.0) * exp(test_rng_uniform(&rng));
      for (size_t j = 0; j < count; j++)
        partial[j] = (float)(level * (1.5 + test_rng_uniform(&rng)) / (double)count);
      int bad = 0;
      if (guard) {
        bad = (run == 0 && t == 1) || t % 41 == 0 || (run == 1 && t == 2);
      } else {
        if (t % 53 == 0) partial[count / 2] = NAN;
        if (t % 67 == 0) partial[0] = INFINITY;
      }
      const int percentile = t % 11 == 0 ? 100 : (t * 37 + run * 5) % 100;
      const cl_uint nf = bad ? 3u : 0u;
      buf_write(bpart, partial, count * sizeof(float));
      buf_write(bnf, &nf, sizeof nf);
      set_clip_args(k, guard, bpart, bhist, bgs, bnf, count, (cl_ulong)t, percentile);
      launch(k, 1, (size_t)wg);
      float gs = -1.0f;
      buf_read(bgs, &gs, sizeof gs);
      buf_read(bhist, dev_hist, sizeof dev_hist);

      const float sq = clip_sum(partial, count, wg);
      const float want = aj_clip_scale(hist, (uint64_t)t, percentile, sq, bad);
      if (!same_float(gs, want) && bad_scale++ < 5)
        fprintf(stderr, "  run %d step %d (percentile %d, sq %.9g): gscale opencl %.9g, aj_clip_scale %.9g\n", run, t,
                percentile, sq, gs, want);
      int hist_diff = 0;
      for (int j = 0; j < AJ_CLIP_HISTORY; j++) hist_diff += !same_float(dev_hist[j], hist[j]);
      if (hist_diff && bad_hist++ < 5)
        fprintf(stderr, "  run %d step %d: %d history slots differ\n", run, t, hist_diff);
      clipped += want < 1.0f;
      skipped += bad;
      for (int j = 0; j < AJ_CLIP_HISTORY; j++) nan_slots += isnan(hist[j]) && t > 2;
    }
  }
  printf("  %d gscale and %d history mismatches; %d steps clipped, %d not recorded, %d NaN slot-steps\n", bad_scale,
         bad_hist, clipped, skipped, nan_slots);
  CHECK(bad_scale == 0);
  CHECK(bad_hist == 0);
  CHECK(clipped > 20);
  if (guard) CHECK(skipped == 2 + 2 * (CLIP_STEPS / 41));
  if (!guard) CHECK(nan_slots > 0); /* the NaN runs of the sort were exercised */
  cl_mem all[4] = {bpart, bhist, bgs, bnf};
  for (int j = 0; j < 4; j++)
    if (all[j]) cl->clReleaseMemObject(all[j]);
  cl->clReleaseKernel(k);
  aj_opencl_program_free(&prog);
  free(partial);
}

/* sqnorm + clip on the device against the CPU backend's own clipping (public API, 32-bit
 * fp32 tensor, percentile 10): the histories within 1e-5 relative each step (the CPU sums in
 * double, the device in float), and the device's gscale against the scale the CPU applied
 * (aj_clip_scale on the CPU's history and sq) within 1e-5. The first step is non-finite, and
 * so is step 50. */
static void run_clip_pipeline(void) {
  enum { NG = 3000, STEPS = 120, PCT = 10 };
  printf("sqnorm + clip against the CPU backend: %d fp32 gradients, %d steps, percentile %d\n", NG, STEPS, PCT);
  aj_variant vs, vc;
  aj_variant_init_default(&vs, AJ_KERNEL_SQNORM);
  aj_variant_init_default(&vc, AJ_KERNEL_CLIP);
  aj_cl_program ps, pc;
  cl_kernel ks = make_kernel(&vs, &ps);
  cl_kernel kc = make_kernel(&vc, &pc);
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.percentile_clipping = PCT;
  cpu_ref ref;
  cpu_ref_open(&ref, &cfg, NG, ADAMJIT_F32, ADAMJIT_F32, NULL);
  const aj_tensor* t = &ref.opt->tensors[ref.index];
  float* g = test_calloc(NG, sizeof(float));
  const size_t per_group = (size_t)vs.wg_size * (size_t)vs.elems_per_thread, groups = (NG + per_group - 1) / per_group;
  cl_mem bg = buf_empty(NG * 4), bpart = buf_empty(groups * 4), bhist = buf_empty(AJ_CLIP_HISTORY * 4),
         bgs = buf_empty(4), bnf = buf_empty(4);
  const float junk[AJ_CLIP_HISTORY] = {0};
  buf_write(bhist, junk, sizeof junk);
  test_rng rng = {0x919ULL};
  double worst_hist = 0.0, worst_scale = 0.0;
  int clipped = 0, nan_mismatch = 0;
  for (int s = 1; s <= STEPS && ks && kc; s++) {
    const double level = (s % 9 == 0 ? 30.0 : 1.0) * exp(0.5 * test_rng_uniform(&rng));
    for (int i = 0; i < NG; i++) g[i] = (float)(level * test_rng_uniform(&rng) * 1e-2);
    if (s == 1 || s == 50) g[(s * 31) % NG] = NAN;
    float before[AJ_CLIP_HISTORY], after[AJ_CLIP_HISTORY], on_dev[AJ_CLIP_HISTORY];
    REQUIRE_OK(adamjit_mem_read(ref.ctx, before, t->gnorm, 0, sizeof before));
    REQUIRE_OK(adamjit_mem_write(ref.ctx, ref.g, 0, g, NG * 4));
    uint64_t bad = 0;
    REQUIRE_OK(adamjit_optimizer_step(ref.opt, &bad));
    REQUIRE_OK(adamjit_mem_read(ref.ctx, after, t->gnorm, 0, sizeof after));
    double sq = 0.0;
    for (int i = 0; i < NG; i++)
      if (isfinite(g[i])) sq += (double)g[i] * (double)g[i];
    const float cpu_scale = aj_clip_scale(before, (uint64_t)s, PCT, (float)sq, bad != 0);
    CHECK_MSG(memcmp(before, after, sizeof after) == 0, "step %d: the CPU's history is not aj_clip_scale's", s);

    const cl_uint zero = 0;
    buf_write(bg, g, NG * 4);
    buf_write(bnf, &zero, sizeof zero);
    cl_ulong n = NG;
    set_arg(ks, 0, sizeof(cl_mem), &bg);
    set_arg(ks, 1, sizeof(cl_mem), &bpart);
    set_arg(ks, 2, sizeof(cl_mem), &bnf);
    set_arg(ks, 3, sizeof n, &n);
    launch(ks, groups, (size_t)vs.wg_size);
    set_clip_args(kc, 1, bpart, bhist, bgs, bnf, groups, (cl_ulong)s, PCT);
    launch(kc, 1, (size_t)vc.wg_size);
    float gs = -1.0f;
    buf_read(bgs, &gs, sizeof gs);
    buf_read(bhist, on_dev, sizeof on_dev);
    for (int j = 0; j < AJ_CLIP_HISTORY; j++) {
      if (isnan(on_dev[j]) || isnan(after[j])) {
        nan_mismatch += isnan(on_dev[j]) != isnan(after[j]);
        continue;
      }
      const double r = fabs((double)on_dev[j] - (double)after[j]) / fmax((double)after[j], 1e-30);
      if (r > worst_hist) worst_hist = r;
    }
    const double rs = fabs((double)gs - (double)cpu_scale) / (double)cpu_scale;
    if (rs > worst_scale) worst_scale = rs;
    clipped += cpu_scale < 1.0f;
  }
  printf("  worst relative difference: history %.2e, gscale %.2e; %d steps clipped; NaN mismatches %d\n", worst_hist,
         worst_scale, clipped, nan_mismatch);
  CHECK(worst_hist <= 1e-5);
  CHECK(worst_scale <= 1e-5);
  CHECK(nan_mismatch == 0);
  CHECK(!ks || !kc || clipped >= 5);
  cl_mem all[5] = {bg, bpart, bhist, bgs, bnf};
  for (int j = 0; j < 5; j++)
    if (all[j]) cl->clReleaseMemObject(all[j]);
  if (ks) cl->clReleaseKernel(ks);
  if (kc) cl->clReleaseKernel(kc);
  aj_opencl_program_free(&ps);
  aj_opencl_program_free(&pc);
  cpu_ref_close(&ref);
  free(g);
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
  /* block, wg, ept, vec: shared blocks with wg = block, < block, > block; own blocks with
   * the search (a group covers 8192 < 2^15 elements), the table, the table with the
   * moments recomputed (1024 * 4096 * 4 B per array > 2 MiB) */
  static const int a8_cases[][4] = {{256, 256, 4, 4}, {256, 64, 2, 2},   {64, 256, 2, 2},  {256, 32, 1, 1},
                                    {256, 128, 16, 1}, {4096, 1024, 1, 1}};
  for (size_t i = 0; i < sizeof a8_cases / sizeof a8_cases[0]; i++)
    run_adamw8(a8_cases[i][0], a8_cases[i][1], a8_cases[i][2], a8_cases[i][3]);
  static const tw_case tw_cases[] = {
      /* pd, gd, amsgrad, wd, percentile, wg, ept, reduce_groups */
      {ADAMJIT_F32, ADAMJIT_F32, 0, 1, 100, 256, 4, 1},
      {ADAMJIT_BF16, ADAMJIT_BF16, 1, 1, 5, 64, 2, 3},
      {ADAMJIT_F32, ADAMJIT_F16, 1, 0, 100, 32, 1, 1},
      {ADAMJIT_BF16, ADAMJIT_F32, 0, 1, 100, 128, 16, 2},
  };
  for (size_t i = 0; i < sizeof tw_cases / sizeof tw_cases[0]; i++) run_adamw8_tensor(&tw_cases[i]);
  run_clip_logic(1, 256);
  run_clip_logic(1, 32);
  run_clip_logic(0, 64);
  run_clip_pipeline();

  aj_lua_host_destroy(host);
  aj_opencl_device_close(dev);
  adamjit_context_destroy(clctx);
  pocl_scratch_end(cache_dir);
  return test_finish("test_opencl_run");
}
