/* The 8-bit blockwise AdamW step (SPEC 3) on the CPU backend, through the public API only.
 *
 *  1. bitsandbytes' own acceptance test of its 8-bit optimizers (test_optimizer8bit; SPEC
 *     7): an 8-bit and a 32-bit optimizer start from the same params (randn * 0.1) and see
 *     the same gradients (randn * 0.01, new each step) for 50 steps; after each step the
 *     dequantized states must agree within atol 3e-3 / rtol 1e-3 except at most 20
 *     elements per tensor and state, and the mean absolute param error must stay below
 *     6e-5 (fp32, fp16 params) or 1.7e-4 (bf16); then the params are re-synced (the 32-bit
 *     result rounded to the param dtype goes into both) so that the param error measures
 *     one step. As in bitsandbytes the 32-bit side keeps fp32 params and gets the fp32
 *     value of the 8-bit side's gradient.
 *     Differences from bitsandbytes' test: (a) it also copies the dequantized 8-bit states
 *     into the 32-bit optimizer every step; the public API cannot write a state, so here
 *     the state errors accumulate over the 50 steps, which is stricter. (b) Its second
 *     param criterion, the mean of |p32 - p8| / (|p32| + 1e-9) below 6e-4 (1.6e-3 bf16), is
 *     only printed ("rel"): the mean of 1/|p| over normal params has no finite
 *     expectation, so it is decided by the few params nearest 0 (over params with |p| >=
 *     0.01 it is ~1.4e-4 here). (c) With g * 0.01 the absolute atol makes the v check
 *     vacuous (v ~ 1e-4) and the m check loose, so there are cases with g * 0.1 (about the
 *     largest scale at which atol 3e-3 still holds: one step's requantization error of m
 *     is up to 0.7% of the block's absmax), gradients whose magnitudes spread over two
 *     decades inside each block (the maps' lower decades), and a scale-free check of our
 *     own: in every block of >= 32 elements, max |state8 - state32| <= 0.2 (m) or 0.1 (v,
 *     vmax) of the block's max |state32| (observed <= 0.09 and 0.045).
 *     Shapes: ragged last blocks (4096+77, 1000*33, 2^15+1, 5000 in blocks of 64, 4097 in
 *     blocks of 4096), block sizes 64 / 256 / 2048 / 4096, block_wise = 0 (also a tensor
 *     over two of the CPU backend's chunks), every param dtype, mixed param/grad dtypes.
 *     The worst values seen are printed so that the margins stay visible.
 *  2. The same with amsgrad (a third quantized state, the running maximum of v), and its
 *     state bytes: n + 4 * blocks more per tensor.
 *  3. Non-finite gradients in 8 bits: the element keeps its p bitwise and its m, v, vmax
 *     within the block's requantization error; the count is exact; everything else of the
 *     step is bitwise what a run with 0 at those positions gives; nothing turns NaN.
 *  4. The sign guard: a tiny negative m is stored as code 126 (negative), never 127 (+0).
 *  5. Bitwise determinism: repeated runs, 1 vs 2 threads, binary vs table code search.
 *  6. min_8bit_size: a smaller tensor (strict <) is exactly a 32-bit optimizer's tensor. */
#include <stdint.h>

#include "tests/halfprec.h"
#include "tests/harness.h"

static float signed_map[ADAMJIT_QMAP_SIZE], unsigned_map[ADAMJIT_QMAP_SIZE];

/* Standard normal samples (Box-Muller, both of each pair). */
typedef struct {
  test_rng r;
  int has_spare;
  double spare;
} nrng;

static nrng nrng_seed(unsigned long long seed) { return (nrng){{seed}, 0, 0.0}; }

static double normal(nrng* n) {
  if (n->has_spare) {
    n->has_spare = 0;
    return n->spare;
  }
  double u1 = 0.5 * (test_rng_uniform(&n->r) + 1.0); /* [0, 1) */
  double u2 = 0.5 * (test_rng_uniform(&n->r) + 1.0);
  double rad = sqrt(-2.0 * log(1.0 - u1)), a = 6.283185307179586 * u2;
  n->spare = rad * sin(a);
  n->has_spare = 1;
  return rad * cos(a);
}

/* ------------------------------------------------------------------ a rig */

enum { MAXT = 6, N_STATES = 3 };

static const adamjit_state_kind state_kinds[N_STATES] = {ADAMJIT_STATE_EXP_AVG, ADAMJIT_STATE_EXP_AVG_SQ,
                                                         ADAMJIT_STATE_MAX_EXP_AVG_SQ};
static const char* const state_names[N_STATES] = {"m", "v", "vmax"};

/* How one tensor is stored: block_wise = 0 has one absmax for the whole tensor. */
typedef struct {
  int64_t n;
  int block_wise;
  int block; /* quant_block_size (used when block_wise) */
} shape;

static int64_t shape_blocks(shape s) { return s.block_wise ? (s.n + s.block - 1) / s.block : 1; }

/* An optimizer and the backend memory of its tensors. */
typedef struct {
  adamjit_context* ctx;
  adamjit_optimizer* opt;
  int nt, amsgrad;
  int64_t n[MAXT];
  adamjit_dtype pd[MAXT], gd[MAXT];
  adamjit_mem param[MAXT], grad[MAXT];
} rig;

static void rig_create(adamjit_context* ctx, const adamjit_optimizer_config* cfg, rig* r) {
  memset(r, 0, sizeof *r);
  r->ctx = ctx;
  r->amsgrad = cfg->hparams.amsgrad;
  REQUIRE_OK(adamjit_optimizer_create(ctx, cfg, &r->opt));
}

/* Registers a tensor with the given storage and initial params (host bytes in pd). */
static void rig_add(rig* r, shape s, adamjit_dtype pd, adamjit_dtype gd, const void* init) {
  const int k = r->nt;
  if (k >= MAXT) exit(2);
  const size_t pbytes = (size_t)s.n * adamjit_dtype_size(pd);
  REQUIRE_OK(adamjit_mem_alloc(r->ctx, pbytes, &r->param[k]));
  REQUIRE_OK(adamjit_mem_alloc(r->ctx, (size_t)s.n * adamjit_dtype_size(gd), &r->grad[k]));
  REQUIRE_OK(adamjit_mem_write(r->ctx, r->param[k], 0, init, pbytes));
  adamjit_tensor_desc d;
  adamjit_tensor_desc_init_default(&d);
  d.param = r->param[k];
  d.grad = r->grad[k];
  d.numel = s.n;
  d.param_dtype = pd;
  d.grad_dtype = gd;
  d.block_wise = s.block_wise;
  d.quant_block_size = s.block;
  int idx = -1;
  REQUIRE_OK(adamjit_optimizer_add_tensor(r->opt, &d, &idx));
  CHECK(idx == k);
  r->n[k] = s.n;
  r->pd[k] = pd;
  r->gd[k] = gd;
  r->nt++;
}

static void rig_free(rig* r) {
  adamjit_optimizer_destroy(r->opt);
  for (int k = 0; k < r->nt; k++) {
    adamjit_mem_free(r->ctx, r->param[k]);
    adamjit_mem_free(r->ctx, r->grad[k]);
  }
}

static void rig_write_grad(rig* r, int k, const void* host) {
  REQUIRE_OK(adamjit_mem_write(r->ctx, r->grad[k], 0, host, (size_t)r->n[k] * adamjit_dtype_size(r->gd[k])));
}
static void rig_write_param(rig* r, int k, const void* host) {
  REQUIRE_OK(adamjit_mem_write(r->ctx, r->param[k], 0, host, (size_t)r->n[k] * adamjit_dtype_size(r->pd[k])));
}
static void rig_read_param(rig* r, int k, void* host) {
  REQUIRE_OK(adamjit_mem_read(r->ctx, host, r->param[k], 0, (size_t)r->n[k] * adamjit_dtype_size(r->pd[k])));
}
static void rig_read_state(rig* r, int k, int which, float* dst) {
  REQUIRE_OK(adamjit_optimizer_read_state(r->opt, k, state_kinds[which], dst, r->n[k]));
}

static adamjit_tensor_info rig_info(rig* r, int k) {
  adamjit_tensor_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  CHECK_OK(adamjit_optimizer_tensor_info(r->opt, k, &info));
  return info;
}

/* A step that must meet exactly `want` non-finite gradient elements. */
static void rig_step(rig* r, uint64_t want, const char* label, int step) {
  uint64_t count = 12345, last = 12345;
  CHECK_OK(adamjit_optimizer_step(r->opt, &count));
  CHECK_OK(adamjit_optimizer_last_nonfinite(r->opt, &last));
  CHECK_MSG(count == want && last == want, "%s step %d: counted %llu (last %llu), expected %llu", label, step,
            (unsigned long long)count, (unsigned long long)last, (unsigned long long)want);
}

/* Everything a tensor holds after a step: param bytes and the dequantized states. */
typedef struct {
  unsigned char* p;
  float* s[N_STATES];
} snap;

static void snap_take(rig* r, int k, snap* out) {
  const size_t n = (size_t)r->n[k];
  out->p = test_calloc(n, adamjit_dtype_size(r->pd[k]));
  rig_read_param(r, k, out->p);
  for (int w = 0; w < N_STATES; w++) {
    out->s[w] = test_calloc(n, sizeof(float));
    if (w < 2 || r->amsgrad) rig_read_state(r, k, w, out->s[w]);
  }
}

static void snap_free(snap* s) {
  free(s->p);
  for (int w = 0; w < N_STATES; w++) free(s->s[w]);
}

/* The 8-bit state bytes SPEC 3 promises: a code per element and an fp32 absmax per block,
 * for m and v, and for vmax with amsgrad. */
static void check_info_8bit(rig* r, int k, shape s, const char* label) {
  adamjit_tensor_info info = rig_info(r, k);
  const uint64_t n = (uint64_t)s.n, blocks = (uint64_t)shape_blocks(s);
  const uint64_t want = (r->amsgrad ? 3 : 2) * (n + 4 * blocks);
  CHECK_MSG(info.state_bits == 8, "%s tensor %d: state_bits %d", label, k, info.state_bits);
  CHECK_MSG(info.quant_block_size == (s.block_wise ? s.block : s.n), "%s tensor %d: quant_block_size %lld", label, k,
            (long long)info.quant_block_size);
  CHECK_MSG(info.state_bytes == want, "%s tensor %d: state_bytes %llu, expected %llu", label, k,
            (unsigned long long)info.state_bytes, (unsigned long long)want);
  CHECK(info.amsgrad == r->amsgrad);
  CHECK(info.memory == ADAMJIT_MEMORY_HOST);
}

/* -------------------------------------------- 1, 2: 8-bit against 32-bit */

typedef struct {
  const char* label;
  adamjit_dtype pd, gd; /* of the 8-bit optimizer; the 32-bit one has fp32 params and grads */
  int amsgrad;
  double gscale;        /* gradients are gscale * N(0, 1), new every step */
  int spread;           /* 1: times a fixed per-element factor in 1e-2..1 (lower map decades) */
  int n_shapes;
  shape shapes[MAXT];
} cmp_case;

/* Worst values over all cases, printed at the end. */
typedef struct {
  int not_close[N_STATES];   /* most elements outside atol/rtol, one tensor and step */
  double ratio[N_STATES];    /* largest |a - b| / (atol + rtol |b|) of any element */
  double ratio21[N_STATES];  /* largest 21st-worst ratio of a tensor and step (must be <= 1) */
  double scaled[N_STATES];   /* largest |a - b| / (the block's largest |b|): scale-free */
  double err[3], relerr[3];  /* largest mean |p32 - p8| (and relative) per param dtype */
} worst;

static worst worst_all;

/* The largest and the 21st largest of n values (0 where there are fewer). */
static void top_ratios(const double* a, int64_t n, double* first, double* twentyfirst) {
  double top[21] = {0}; /* descending */
  for (int64_t i = 0; i < n; i++) {
    if (!(a[i] > top[20])) continue;
    int j = 20;
    for (; j > 0 && top[j - 1] < a[i]; j--) top[j] = top[j - 1];
    top[j] = a[i];
  }
  *first = top[0];
  *twentyfirst = top[20];
}

static void compare_case(adamjit_context* ctx, const cmp_case* cc) {
  const double atol = 3e-3, rtol = 1e-3;
  const double err_max = cc->pd == ADAMJIT_BF16 ? 1.7e-4 : 6e-5;
  const double scaled_max[N_STATES] = {0.2, 0.1, 0.1};
  const int n_states = cc->amsgrad ? 3 : 2;
  adamjit_optimizer_config c32, c8;
  adamjit_optimizer_config_init_default(&c32);
  c32.hparams.amsgrad = cc->amsgrad;
  c8 = c32;
  c8.optim_bits = 8;
  c8.min_8bit_size = 0; /* small shapes keep the test fast; test_min_8bit_size covers the rule */
  rig r8, r32;
  rig_create(ctx, &c8, &r8);
  rig_create(ctx, &c32, &r32);
  nrng rng = nrng_seed(0x8b17u + (unsigned)cc->pd * 131u + (unsigned)cc->gd * 17u + (unsigned)cc->amsgrad);
  int64_t max_n = 0;
  for (int k = 0; k < cc->n_shapes; k++) max_n = cc->shapes[k].n > max_n ? cc->shapes[k].n : max_n;
  unsigned char* h8 = test_calloc((size_t)max_n, 4); /* host bytes in the 8-bit side's dtype */
  float* h32 = test_calloc((size_t)max_n, sizeof(float));
  float* a32 = test_calloc((size_t)max_n, sizeof(float));
  float* a8 = test_calloc((size_t)max_n, sizeof(float));
  double* spread = test_calloc((size_t)max_n, sizeof(double));
  for (int64_t i = 0; i < max_n; i++)
    spread[i] = cc->spread ? pow(10.0, -2.0 * fmod(0.6180339887 * (double)i, 1.0)) : 1.0;
  double* ratios = test_calloc((size_t)max_n, sizeof(double));
  for (int k = 0; k < cc->n_shapes; k++) {
    const shape s = cc->shapes[k];
    for (int64_t i = 0; i < s.n; i++) { /* bitsandbytes: randn * 0.1 in the param dtype */
      put_elem(cc->pd, h8, i, 0.1 * normal(&rng));
      h32[i] = (float)get_elem(cc->pd, h8, i);
    }
    rig_add(&r8, s, cc->pd, cc->gd, h8);
    rig_add(&r32, (shape){s.n, ADAMJIT_INHERIT, ADAMJIT_INHERIT}, ADAMJIT_F32, ADAMJIT_F32, h32);
    check_info_8bit(&r8, k, s, cc->label);
    CHECK(rig_info(&r32, k).state_bits == 32);
  }

  worst w;
  memset(&w, 0, sizeof w);
  const int steps = 50;
  for (int step = 0; step < steps; step++) {
    for (int k = 0; k < cc->n_shapes; k++) {
      for (int64_t i = 0; i < r8.n[k]; i++) {
        put_elem(cc->gd, h8, i, cc->gscale * spread[i] * normal(&rng));
        h32[i] = (float)get_elem(cc->gd, h8, i); /* p1.grad = g.float() */
      }
      rig_write_grad(&r8, k, h8);
      rig_write_grad(&r32, k, h32);
    }
    rig_step(&r8, 0, cc->label, step);
    rig_step(&r32, 0, cc->label, step);
    for (int k = 0; k < cc->n_shapes; k++) {
      const int64_t n = r8.n[k];
      /* States: torch.isclose(state32, dequantized8, atol, rtol) as bitsandbytes calls it
       * (rtol scales the 8-bit value), and the scale-free check per block. */
      for (int st = 0; st < n_states; st++) {
        rig_read_state(&r32, k, st, a32);
        rig_read_state(&r8, k, st, a8);
        int not_close = 0, bad_scaled = 0;
        const int64_t bs = cc->shapes[k].block_wise ? cc->shapes[k].block : n;
        for (int64_t b0 = 0; b0 < n; b0 += bs) {
          const int64_t b1 = b0 + bs < n ? b0 + bs : n;
          double bmax = 0.0, dmax = 0.0;
          for (int64_t i = b0; i < b1; i++) {
            double d = fabs((double)a32[i] - (double)a8[i]), lim = atol + rtol * fabs((double)a8[i]);
            not_close += !(d <= lim);
            ratios[i] = isfinite(a8[i]) ? d / lim : INFINITY;
            bmax = fmax(bmax, fabs((double)a32[i]));
            dmax = fmax(dmax, d);
          }
          /* Blocks of a few elements are left out: there a value crossing 0 makes the
           * block's largest |b| itself tiny. */
          if (b1 - b0 >= 32 && bmax > 0.0) {
            bad_scaled += !(dmax <= scaled_max[st] * bmax);
            if (dmax / bmax > w.scaled[st]) w.scaled[st] = dmax / bmax;
          }
        }
        double r1, r21;
        top_ratios(ratios, n, &r1, &r21);
        CHECK_MSG(not_close <= 20, "%s step %d tensor %d (n=%lld): %d elements of %s not close (worst ratio %.3g)",
                  cc->label, step, k, (long long)n, not_close, state_names[st], r1);
        CHECK_MSG(bad_scaled == 0, "%s step %d tensor %d: %s off by more than %g of the block's largest in %d blocks",
                  cc->label, step, k, state_names[st], scaled_max[st], bad_scaled);
        if (not_close > w.not_close[st]) w.not_close[st] = not_close;
        if (r1 > w.ratio[st]) w.ratio[st] = r1;
        if (r21 > w.ratio21[st]) w.ratio21[st] = r21;
      }
      /* Params: mean absolute and relative error, then re-sync both to the 32-bit result
       * rounded to the param dtype (p1 = p1.to(gtype).float(); p2.copy_(p1)). */
      rig_read_param(&r32, k, a32);
      rig_read_param(&r8, k, h8);
      double err = 0.0, relerr = 0.0;
      for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)a32[i] - get_elem(cc->pd, h8, i));
        err += e;
        relerr += e / (fabs((double)a32[i]) + 1e-9);
      }
      err /= (double)n;
      relerr /= (double)n;
      CHECK_MSG(err < err_max, "%s step %d tensor %d: mean |p32 - p8| = %.3g (limit %.3g)", cc->label, step, k, err,
                err_max);
      if (err > w.err[cc->pd]) w.err[cc->pd] = err;
      if (relerr > w.relerr[cc->pd]) w.relerr[cc->pd] = relerr;
      for (int64_t i = 0; i < n; i++) {
        put_elem(cc->pd, h8, i, a32[i]);
        a32[i] = (float)get_elem(cc->pd, h8, i);
      }
      rig_write_param(&r8, k, h8);
      rig_write_param(&r32, k, a32);
    }
  }
  for (int k = 0; k < cc->n_shapes; k++) CHECK(rig_info(&r8, k).step == (uint64_t)steps);
  /* not-close: most elements outside atol/rtol in one tensor and step (limit 20); ratio:
   * |a - b| / (atol + rtol |b|), the largest and the largest 21st-worst (limit 1); block:
   * the scale-free error; |dp|: the largest mean param error of a step (limit shown). */
  printf("  %-30s not-close %2d %2d", cc->label, w.not_close[0], w.not_close[1]);
  if (cc->amsgrad) printf(" %2d", w.not_close[2]);
  printf(" | ratio %.2f %.2f", w.ratio[0], w.ratio[1]);
  if (cc->amsgrad) printf(" %.2f", w.ratio[2]);
  printf(", 21st %.2f %.2f | block %.3f %.3f", w.ratio21[0], w.ratio21[1], w.scaled[0], w.scaled[1]);
  if (cc->amsgrad) printf(" %.3f", w.scaled[2]);
  printf(" | |dp| %.2e < %.2g, rel %.1e\n", w.err[cc->pd], err_max, w.relerr[cc->pd]);
  for (int st = 0; st < N_STATES; st++) {
    if (w.not_close[st] > worst_all.not_close[st]) worst_all.not_close[st] = w.not_close[st];
    if (w.ratio[st] > worst_all.ratio[st]) worst_all.ratio[st] = w.ratio[st];
    if (w.ratio21[st] > worst_all.ratio21[st]) worst_all.ratio21[st] = w.ratio21[st];
    if (w.scaled[st] > worst_all.scaled[st]) worst_all.scaled[st] = w.scaled[st];
  }
  for (int d = 0; d < 3; d++) {
    if (w.err[d] > worst_all.err[d]) worst_all.err[d] = w.err[d];
    if (w.relerr[d] > worst_all.relerr[d]) worst_all.relerr[d] = w.relerr[d];
  }
  free(h8);
  free(h32);
  free(a32);
  free(a8);
  free(ratios);
  free(spread);
  rig_free(&r8);
  rig_free(&r32);
}

#define BW0 0, 256 /* block_wise = 0 */

static void test_against_32bit(adamjit_context* ctx) {
  printf("8-bit vs 32-bit, 50 steps; worst values (states m v [vmax]):\n");
  const cmp_case cases[] = {
      /* bitsandbytes' gradient scale, 0.01 */
      {"f32/f32 g*0.01", ADAMJIT_F32, ADAMJIT_F32, 0, 0.01, 0, 5,
       {{4096 + 77, 1, 256}, {1000 * 33, 1, 2048}, {(1 << 15) + 1, BW0}, {5000, 1, 64}, {4097, 1, 4096}}},
      {"f16/f16 g*0.01", ADAMJIT_F16, ADAMJIT_F16, 0, 0.01, 0, 3, {{4096 + 77, 1, 256}, {3001, BW0}, {2000, 1, 64}}},
      {"bf16/bf16 g*0.01", ADAMJIT_BF16, ADAMJIT_BF16, 0, 0.01, 0, 3,
       {{4096 + 77, 1, 256}, {3001, BW0}, {2000, 1, 64}}},
      {"bf16/f32 g*0.01", ADAMJIT_BF16, ADAMJIT_F32, 0, 0.01, 0, 2, {{4096 + 77, 1, 256}, {3001, BW0}}},
      /* ten times larger, so that the states' quantization error comes near atol; and
       * magnitudes spread over two decades within each block */
      {"f32/f32 g*0.1", ADAMJIT_F32, ADAMJIT_F32, 0, 0.1, 0, 3, {{4096 + 77, 1, 256}, {3001, BW0}, {4097, 1, 2048}}},
      {"f16/bf16 g*0.1 spread", ADAMJIT_F16, ADAMJIT_BF16, 0, 0.1, 1, 3,
       {{4096 + 77, 1, 256}, {3001, BW0}, {2000, 1, 64}}},
      /* amsgrad: a third quantized state */
      {"amsgrad f32/f32 g*0.01", ADAMJIT_F32, ADAMJIT_F32, 1, 0.01, 0, 3,
       {{4096 + 77, 1, 256}, {3001, BW0}, {2000, 1, 64}}},
      {"amsgrad bf16/bf16 g*0.1 spread", ADAMJIT_BF16, ADAMJIT_BF16, 1, 0.1, 1, 2, {{4096 + 77, 1, 256}, {3001, BW0}}},
      {"amsgrad f16/f32 g*0.1", ADAMJIT_F16, ADAMJIT_F32, 1, 0.1, 0, 2, {{4096 + 77, 1, 256}, {4097, 1, 2048}}},
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) compare_case(ctx, &cases[c]);
  printf("  overall: not-close %d %d %d (limit 20); 21st ratio %.2f %.2f %.2f (limit 1); block %.3f %.3f %.3f "
         "(limits 0.2 0.1 0.1);\n  mean |dp| f32 %.2e f16 %.2e (limit 6e-5) bf16 %.2e (limit 1.7e-4)\n",
         worst_all.not_close[0], worst_all.not_close[1], worst_all.not_close[2], worst_all.ratio21[0],
         worst_all.ratio21[1], worst_all.ratio21[2], worst_all.scaled[0], worst_all.scaled[1], worst_all.scaled[2],
         worst_all.err[ADAMJIT_F32], worst_all.err[ADAMJIT_F16], worst_all.err[ADAMJIT_BF16]);
}

/* amsgrad adds one code per element and one fp32 absmax per block, nothing else. */
static void test_amsgrad_state_bytes(adamjit_context* ctx) {
  const shape shapes[3] = {{4096 + 77, 1, 256}, {1000, 1, 64}, {3001, BW0}};
  uint64_t total[2] = {0, 0};
  for (int ams = 0; ams < 2; ams++) {
    adamjit_optimizer_config cfg;
    adamjit_optimizer_config_init_default(&cfg);
    cfg.optim_bits = 8;
    cfg.min_8bit_size = 0;
    cfg.hparams.amsgrad = ams;
    rig r;
    rig_create(ctx, &cfg, &r);
    float* init = test_calloc(4096 + 77, sizeof(float));
    for (int k = 0; k < 3; k++) {
      rig_add(&r, shapes[k], ADAMJIT_F32, ADAMJIT_F32, init);
      check_info_8bit(&r, k, shapes[k], ams ? "amsgrad state bytes" : "state bytes");
    }
    CHECK_OK(adamjit_optimizer_state_bytes(r.opt, &total[ams]));
    free(init);
    rig_free(&r);
  }
  uint64_t extra = 0;
  for (int k = 0; k < 3; k++) extra += (uint64_t)shapes[k].n + 4 * (uint64_t)shape_blocks(shapes[k]);
  CHECK_MSG(total[1] - total[0] == extra, "amsgrad adds %llu state bytes, expected n + 4*blocks = %llu",
            (unsigned long long)(total[1] - total[0]), (unsigned long long)extra);
}

/* ------------------------------------------------------ 3: non-finite grads */

/* The requantization error bound. A skipped element keeps its dequantized value x = map[c]
 * * A_old exactly (the step dequantizes it like read_state does) and requantizes it against
 * the block's new absmax A (which the kept values take part in, so |x| <= A): the stored
 * value is map[c'] * A with c' the nearest code of y = x / A, moved one step by the sign
 * guard only where y lies between map[126] and 0. Either way map[c'] lies in, or at an end
 * of, the map interval [map[k], map[k+1]] that contains y, so |new - x| <= A * (map[k+1] -
 * map[k]), plus an ulp or two of A for the fp32 division and product. Below the signed map's
 * first value (-0.99297) y clamps to code 0: the error is then map[0] - y <= 0.0071.
 * A is not readable, but the block's element with the largest |m| has y = +1 (code 255,
 * value A) or y = -1 (code 0, value -0.99297 A), so D = max |dequantized| of the new block
 * gives D <= A <= D / 0.99296875; the bound uses the widest interval that y can fall in
 * over that range of A, times the larger A. */
static double requant_bound(const float* map, double x, double dmax) {
  if (dmax == 0.0) return 0.0;
  const double a_lo = dmax, a_hi = dmax / 0.99296875 * (1.0 + 1e-6);
  double y1 = x / a_hi, y2 = x / a_lo;
  double ya = fmin(y1, y2) - 1e-6 * fabs(y2), yb = fmax(y1, y2) + 1e-6 * fabs(y2);
  double width = ya < map[0] ? map[0] - ya : 0.0;
  for (int k = 0; k + 1 < ADAMJIT_QMAP_SIZE; k++)
    if (map[k + 1] >= ya && map[k] <= yb) width = fmax(width, (double)map[k + 1] - map[k]);
  return a_hi * width + 4.0 * a_hi * 0x1p-24;
}

/* Which elements get a non-finite gradient at `step` (0 none, 1 NaN, 2 +Inf, 3 -Inf):
 * step 0 (zero state) and step 8 (a trained state) at different positions; the first and
 * last elements; and at step 8 one whole block of tensor 0 (elements 192..255, block 64). */
static int nf_kind(int k, int64_t i, int64_t n, int step) {
  if (step == 0) return (i % 53 == 7) ? (int)(i % 3) + 1 : 0;
  if (step != 8) return 0;
  if (k == 0 && i >= 192 && i < 256) return (int)(i % 3) + 1;
  if (i == 0 || i == n - 1 || i % 37 == 5) return (int)((i + k) % 3) + 1;
  return 0;
}

static int param_finite(adamjit_dtype pd, const unsigned char* p, int64_t i) { return isfinite(get_elem(pd, p, i)); }

static void test_nonfinite(adamjit_context* ctx) {
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.optim_bits = 8;
  cfg.min_8bit_size = 0;
  cfg.hparams.amsgrad = 1;
  /* Tensor 0: f32, blocks of 64 (1000 = 15 * 64 + 40); 1: one absmax (block_wise = 0), bf16
   * grads; 2: f16 params and grads, blocks of 256 (300 = 256 + 44). */
  const shape shapes[3] = {{1000, 1, 64}, {700, BW0}, {300, 1, 256}};
  const adamjit_dtype pds[3] = {ADAMJIT_F32, ADAMJIT_F32, ADAMJIT_F16};
  const adamjit_dtype gds[3] = {ADAMJIT_F32, ADAMJIT_BF16, ADAMJIT_F16};
  /* A gets the non-finite values, B gets 0 there: before requantizing, the step treats each
   * element on its own, so every finite-grad element's param of A must equal B's bitwise on
   * an injected step, and so must the whole state of blocks without injected elements.
   * Up to step 8 the two keep equal states: on step 0 the state is 0, and a zero gradient
   * leaves a zero m, v, vmax just as skipping does; only B's params there differ (decayed),
   * so B gets A's params before each step. After step 8 only A is checked. */
  rig a, b;
  rig_create(ctx, &cfg, &a);
  rig_create(ctx, &cfg, &b);
  nrng rng = nrng_seed(4242);
  unsigned char* h = test_calloc(1000, 4);
  for (int k = 0; k < 3; k++) {
    for (int64_t i = 0; i < shapes[k].n; i++) put_elem(pds[k], h, i, normal(&rng) * 0.5);
    rig_add(&a, shapes[k], pds[k], gds[k], h);
    rig_add(&b, shapes[k], pds[k], gds[k], h);
  }
  unsigned char* hb = test_calloc(1000, 4);
  snap before[3];
  int moved_p = 0, moved_m = 0, total_clean = 0;
  const int steps = 13;
  for (int step = 0; step < steps; step++) {
    uint64_t injected = 0;
    for (int k = 0; k < 3; k++) {
      for (int64_t i = 0; i < shapes[k].n; i++) {
        double x = normal(&rng) * (1.0 + (double)(i % 7)); /* per-element scales spread the codes */
        int kind = nf_kind(k, i, shapes[k].n, step);
        double special = kind == 1 ? NAN : kind == 2 ? INFINITY : -INFINITY;
        put_elem(gds[k], h, i, kind ? special : x);
        put_elem(gds[k], hb, i, kind ? 0.0 : x);
        injected += kind != 0;
      }
      rig_write_grad(&a, k, h);
      rig_write_grad(&b, k, hb);
      snap_take(&a, k, &before[k]);
      rig_write_param(&b, k, before[k].p);
    }
    rig_step(&a, injected, "non-finite (8-bit)", step);
    rig_step(&b, 0, "non-finite (8-bit) B", step);
    for (int k = 0; k < 3; k++) {
      const int64_t n = shapes[k].n, bs = shapes[k].block_wise ? shapes[k].block : n;
      const size_t ps = adamjit_dtype_size(pds[k]);
      snap sa, sb;
      snap_take(&a, k, &sa);
      snap_take(&b, k, &sb);
      int bad_p = 0, bad_state = 0, not_finite = 0, bad_clean_p = 0, bad_clean_block = 0, bad_zero = 0;
      double worst_rel = 0.0; /* largest |new - old| / bound of a kept value */
      for (int64_t b0 = 0; b0 < n; b0 += bs) {
        const int64_t b1 = b0 + bs < n ? b0 + bs : n;
        int block_injected = 0;
        double dmax[N_STATES] = {0, 0, 0};
        for (int64_t i = b0; i < b1; i++) {
          block_injected |= nf_kind(k, i, n, step) != 0;
          for (int w = 0; w < N_STATES; w++) dmax[w] = fmax(dmax[w], fabs(sa.s[w][i]));
        }
        for (int64_t i = b0; i < b1; i++) {
          not_finite += !param_finite(pds[k], sa.p, i);
          for (int w = 0; w < N_STATES; w++) not_finite += !isfinite(sa.s[w][i]);
          if (nf_kind(k, i, n, step)) {
            bad_p += memcmp(sa.p + i * ps, before[k].p + i * ps, ps) != 0;
            for (int w = 0; w < N_STATES; w++) {
              const float* map = w == 0 ? signed_map : unsigned_map;
              double old = before[k].s[w][i], bound = requant_bound(map, old, dmax[w]);
              double d = fabs((double)sa.s[w][i] - old);
              bad_state += !(d <= bound);
              if (bound > 0.0 && d / bound > worst_rel) worst_rel = d / bound;
              if (step == 0) bad_zero += sa.s[w][i] != 0.0f; /* 0 is a map value: kept exactly */
            }
          } else {
            if (step <= 8) bad_clean_p += memcmp(sa.p + i * ps, sb.p + i * ps, ps) != 0;
            total_clean += step == 8;
            if (step == 8) {
              moved_p += memcmp(sa.p + i * ps, before[k].p + i * ps, ps) != 0;
              moved_m += sa.s[0][i] != before[k].s[0][i];
            }
          }
          if (!block_injected && step <= 8)
            for (int w = 0; w < N_STATES; w++) bad_clean_block += memcmp(&sa.s[w][i], &sb.s[w][i], 4) != 0;
        }
      }
      CHECK_MSG(bad_p == 0, "step %d tensor %d: %d non-finite-grad params changed", step, k, bad_p);
      CHECK_MSG(bad_state == 0, "step %d tensor %d: %d kept states moved beyond the requantization bound", step, k,
                bad_state);
      CHECK_MSG(bad_zero == 0, "step %d tensor %d: %d zero states of skipped elements not kept at 0", step, k,
                bad_zero);
      CHECK_MSG(not_finite == 0, "step %d tensor %d: %d params or states not finite", step, k, not_finite);
      CHECK_MSG(bad_clean_p == 0, "step %d tensor %d: %d finite-grad params differ from the run with zeros", step, k,
                bad_clean_p);
      CHECK_MSG(bad_clean_block == 0, "step %d tensor %d: %d states in blocks without non-finite grads differ", step,
                k, bad_clean_block);
      if (step == 8) printf("  non-finite, tensor %d: kept states moved at most %.3f of the requantization bound\n", k,
                            worst_rel);
      snap_free(&sa);
      snap_free(&sb);
      snap_free(&before[k]);
    }
  }
  /* The finite elements of the injected step did update (A = B shows they were updated
   * exactly as usual; this shows that "as usual" is not "not at all"). */
  CHECK_MSG(moved_p >= total_clean * 95 / 100, "%d of %d finite-grad params moved on the injected step", moved_p,
            total_clean);
  CHECK_MSG(moved_m >= total_clean * 90 / 100, "%d of %d finite-grad m moved on the injected step", moved_m,
            total_clean);
  /* Later steps update the once-skipped elements again. */
  for (int k = 0; k < 3; k++) {
    snap s;
    snap_take(&a, k, &s);
    int zero_v = 0;
    for (int64_t i = 0; i < shapes[k].n; i++) zero_v += nf_kind(k, i, shapes[k].n, 0) && s.s[1][i] == 0.0f;
    CHECK_MSG(zero_v == 0, "tensor %d: %d elements skipped on step 0 still have v = 0", k, zero_v);
    snap_free(&s);
  }
  free(h);
  free(hb);
  rig_free(&a);
  rig_free(&b);
}

/* ----------------------------------------------------------- 4: sign guard */

/* In a block whose absmax is ~1, m = -1e-9 is nearest to the map's 0 (index 127, +0): the
 * guard must store index 126 (-5.5e-7 * absmax) so momentum keeps its sign. m = +1e-9
 * stays at 0 (>= 0). Checked for a block_wise tensor (blocks of 64) and a block_wise = 0
 * one, over several steps in which the tiny m decays. */
static void test_sign_guard(adamjit_context* ctx) {
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.optim_bits = 8;
  cfg.min_8bit_size = 0;
  cfg.hparams.weight_decay = 0.0f;
  rig r;
  rig_create(ctx, &cfg, &r);
  const shape shapes[2] = {{130, 1, 64}, {130, BW0}};
  float* zeros = test_calloc(130, sizeof(float));
  for (int k = 0; k < 2; k++) rig_add(&r, shapes[k], ADAMJIT_F32, ADAMJIT_F32, zeros);
  float* g = test_calloc(130, sizeof(float));
  float* m = test_calloc(130, sizeof(float));
  float* p = test_calloc(130, sizeof(float));
  for (int step = 0; step < 5; step++) {
    /* Element 0 sets the absmax (m ~ 1 after the first step); 1: m = -1e-9, then decaying;
     * 2: m = +1e-9; 3: m = -3e-7, nearer to map[126] than to 0 without the guard; the
     * last block of the block-wise tensor (128, 129): -10 and -1e-8, a negative absmax
     * (code 0, -0.99297 A) beside a guarded element. */
    memset(g, 0, 130 * sizeof(float));
    g[0] = 10.0f;
    if (step == 0) {
      g[1] = -1e-8f;
      g[2] = 1e-8f;
      g[3] = -3e-6f;
      g[129] = -1e-8f;
    }
    g[128] = -10.0f;
    for (int k = 0; k < 2; k++) rig_write_grad(&r, k, g);
    rig_step(&r, 0, "sign guard", step);
    for (int k = 0; k < 2; k++) {
      rig_read_state(&r, k, 0, m);
      /* Element 0 holds the largest positive m in its block, so its value is the absmax. */
      const float a = m[0];
      CHECK_MSG(m[1] < 0.0f, "sign guard tensor %d step %d: m[1] = %g, expected < 0", k, step, (double)m[1]);
      CHECK_MSG(m[1] == signed_map[126] * a, "sign guard tensor %d step %d: m[1] = %g, expected map[126] * %g", k,
                step, (double)m[1], (double)a);
      CHECK_MSG(m[3] < 0.0f, "sign guard tensor %d step %d: m[3] = %g, expected < 0", k, step, (double)m[3]);
      CHECK_MSG(m[2] >= 0.0f && !signbit(m[2]), "sign guard tensor %d step %d: m[2] = %g, expected >= 0", k, step,
                (double)m[2]);
      CHECK(m[128] < 0.0f);
      CHECK_MSG(m[129] < 0.0f, "sign guard tensor %d step %d: m[129] = %g, expected < 0", k, step, (double)m[129]);
      /* Element 128 is the most negative m (code 0, -0.99297 A); 129 must be map[126] * A. */
      CHECK_MSG(fabs(m[129] / (signed_map[126] * (m[128] / signed_map[0])) - 1.0) < 1e-6,
                "sign guard tensor %d step %d: m[129] = %g beside m[128] = %g", k, step, (double)m[129],
                (double)m[128]);
      if (step == 0) {
        /* The first update used the unquantized m = -1e-9: p (from 0) went up. */
        rig_read_param(&r, k, p);
        CHECK_MSG(p[1] > 0.0f && p[2] < 0.0f, "sign guard tensor %d: p[1] = %g, p[2] = %g", k, (double)p[1],
                  (double)p[2]);
      }
    }
  }
  free(zeros);
  free(g);
  free(m);
  free(p);
  rig_free(&r);
}

/* ------------------------------------------------------ 5: determinism */

typedef struct {
  int nt;
  snap s[MAXT];
  uint64_t counts[16];
} run_result;

/* A fixed 12-step run over more than 2^16 elements (so that the CPU backend splits the
 * step over its threads), amsgrad on, mixed dtypes, a few non-finite grads on step 5. */
static void det_run(adamjit_context* ctx, run_result* out) {
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.optim_bits = 8;
  cfg.min_8bit_size = 0;
  cfg.hparams.amsgrad = 1;
  const shape shapes[4] = {{40000, 1, 256}, {(1 << 15) + 1, BW0}, {5000, 1, 64}, {4097, 1, 4096}};
  const adamjit_dtype pds[4] = {ADAMJIT_F32, ADAMJIT_BF16, ADAMJIT_F16, ADAMJIT_F32};
  const adamjit_dtype gds[4] = {ADAMJIT_F32, ADAMJIT_F16, ADAMJIT_BF16, ADAMJIT_F32};
  rig r;
  rig_create(ctx, &cfg, &r);
  nrng rng = nrng_seed(99);
  unsigned char* h = test_calloc(40000, 4);
  for (int k = 0; k < 4; k++) {
    for (int64_t i = 0; i < shapes[k].n; i++) put_elem(pds[k], h, i, 0.1 * normal(&rng));
    rig_add(&r, shapes[k], pds[k], gds[k], h);
  }
  for (int step = 0; step < 12; step++) {
    for (int k = 0; k < 4; k++) {
      for (int64_t i = 0; i < shapes[k].n; i++)
        put_elem(gds[k], h, i, step == 5 && i % 997 == 3 ? NAN : normal(&rng) * (i % 3 ? 0.01 : 1.0));
      rig_write_grad(&r, k, h);
    }
    CHECK_OK(adamjit_optimizer_step(r.opt, &out->counts[step]));
  }
  out->nt = 4;
  for (int k = 0; k < 4; k++) snap_take(&r, k, &out->s[k]);
  free(h);
  rig_free(&r);
}

static int run_equal(const run_result* x, const run_result* y, const int64_t* n, const size_t* psize) {
  if (memcmp(x->counts, y->counts, sizeof x->counts) != 0) return 0;
  for (int k = 0; k < x->nt; k++) {
    if (memcmp(x->s[k].p, y->s[k].p, (size_t)n[k] * psize[k]) != 0) return 0;
    for (int w = 0; w < N_STATES; w++)
      if (memcmp(x->s[k].s[w], y->s[k].s[w], (size_t)n[k] * sizeof(float)) != 0) return 0;
  }
  return 1;
}

static void test_determinism(void) {
  const int64_t n[4] = {40000, (1 << 15) + 1, 5000, 4097};
  const size_t psize[4] = {4, 2, 2, 4};
  /* threads (-1 = default), quant_search */
  const int variants[][2] = {{-1, ADAMJIT_QUANT_SEARCH_AUTO}, {-1, ADAMJIT_QUANT_SEARCH_AUTO},
                             {1, ADAMJIT_QUANT_SEARCH_AUTO},  {2, ADAMJIT_QUANT_SEARCH_AUTO},
                             {2, ADAMJIT_QUANT_SEARCH_BINARY}, {1, ADAMJIT_QUANT_SEARCH_TABLE}};
  const int nv = (int)(sizeof variants / sizeof variants[0]);
  run_result base;
  for (int v = 0; v < nv; v++) {
    adamjit_context_desc d;
    adamjit_context_desc_init_default(&d);
    d.backend = ADAMJIT_BACKEND_CPU;
    d.num_threads = variants[v][0];
    d.quant_search = variants[v][1];
    adamjit_context* ctx = NULL;
    REQUIRE_OK(adamjit_context_create(&d, &ctx));
    run_result res;
    memset(&res, 0, sizeof res);
    det_run(ctx, &res);
    if (v == 0) {
      base = res;
      CHECK(base.counts[5] > 0);
    } else {
      CHECK_MSG(run_equal(&base, &res, n, psize), "determinism: threads %d, quant_search %d differ from the first run",
                variants[v][0], variants[v][1]);
      for (int k = 0; k < res.nt; k++) snap_free(&res.s[k]);
    }
    adamjit_context_destroy(ctx);
  }
  for (int k = 0; k < base.nt; k++) snap_free(&base.s[k]);
}

/* ------------------------------------------------------ 6: min_8bit_size */

/* With min_8bit_size = 5000, a 4999-element tensor of an 8-bit optimizer keeps fp32 state
 * and steps bitwise like the same tensor of a 32-bit optimizer; a 5000-element one is 8-bit. */
static void test_min_8bit_size(adamjit_context* ctx) {
  adamjit_optimizer_config c8, c32;
  adamjit_optimizer_config_init_default(&c32);
  c32.hparams.amsgrad = 1;
  c8 = c32;
  c8.optim_bits = 8;
  c8.min_8bit_size = 5000;
  rig r8, r32;
  rig_create(ctx, &c8, &r8);
  rig_create(ctx, &c32, &r32);
  nrng rng = nrng_seed(5000);
  unsigned char* h = test_calloc(5000, 2);
  for (int64_t i = 0; i < 5000; i++) put_elem(ADAMJIT_BF16, h, i, normal(&rng));
  const shape small = {4999, ADAMJIT_INHERIT, ADAMJIT_INHERIT}, big = {5000, ADAMJIT_INHERIT, ADAMJIT_INHERIT};
  rig_add(&r8, small, ADAMJIT_BF16, ADAMJIT_F16, h);
  rig_add(&r8, big, ADAMJIT_BF16, ADAMJIT_F16, h);
  rig_add(&r32, small, ADAMJIT_BF16, ADAMJIT_F16, h);
  adamjit_tensor_info i_small = rig_info(&r8, 0), i_big = rig_info(&r8, 1);
  CHECK(i_small.state_bits == 32 && i_small.quant_block_size == 0);
  CHECK(i_small.state_bytes == 3 * 4 * 4999u);
  CHECK(i_big.state_bits == 8 && i_big.quant_block_size == 256);
  CHECK(i_big.state_bytes == 3 * (5000u + 4 * 20));
  for (int step = 0; step < 10; step++) {
    for (int64_t i = 0; i < 5000; i++) put_elem(ADAMJIT_F16, h, i, normal(&rng) * 0.1);
    rig_write_grad(&r8, 0, h);
    rig_write_grad(&r8, 1, h);
    rig_write_grad(&r32, 0, h);
    rig_step(&r8, 0, "min_8bit_size", step);
    rig_step(&r32, 0, "min_8bit_size", step);
  }
  snap a, b;
  snap_take(&r8, 0, &a);
  snap_take(&r32, 0, &b);
  CHECK_MSG(memcmp(a.p, b.p, 4999 * 2) == 0, "min_8bit_size: 32-bit fallback params differ from a 32-bit optimizer's");
  for (int w = 0; w < N_STATES; w++)
    CHECK_MSG(memcmp(a.s[w], b.s[w], 4999 * sizeof(float)) == 0, "min_8bit_size: fallback %s differs",
              state_names[w]);
  snap_free(&a);
  snap_free(&b);
  free(h);
  rig_free(&r8);
  rig_free(&r32);
}

int main(void) {
  REQUIRE_OK(adamjit_qmap_values(ADAMJIT_QMAP_SIGNED, signed_map, ADAMJIT_QMAP_SIZE));
  REQUIRE_OK(adamjit_qmap_values(ADAMJIT_QMAP_UNSIGNED, unsigned_map, ADAMJIT_QMAP_SIZE));
  CHECK(signed_map[127] == 0.0f && signed_map[126] < 0.0f && signed_map[255] == 1.0f);
  adamjit_context* ctx = test_cpu_context();
  test_against_32bit(ctx);
  test_amsgrad_state_bytes(ctx);
  test_nonfinite(ctx);
  test_sign_guard(ctx);
  test_min_8bit_size(ctx);
  adamjit_context_destroy(ctx);
  test_determinism();
  return test_finish("test_adamw8");
}
