/* Non-finite gradients (SPEC 2): an element whose g is NaN or +-Inf keeps its p, m, v and
 * vmax bit for bit, every other element is updated exactly as in a clean run, and the step
 * counts the skipped elements. With percentile clipping the norm skips them too, so the
 * history never turns NaN.
 *
 * Method: two optimizers see the same gradients, except that A gets NaN/Inf at known
 * positions where B gets 0. Without clipping, elementwise updates make A's other elements
 * bitwise equal to B's.
 *
 * With clipping that equivalence does not hold: a step with any non-finite element records
 * nothing in A's norm history (and leaves an unfilled history unfilled, scale 1), while B's
 * zeros are an ordinary finite step that B would record. So in the clipping cases B runs
 * without clipping and gets fp32 grads g*scale, where scale is A's clip scale from a small
 * model of that rule (tests/clip_model.h); A's finite elements must then equal B's bitwise.
 * Clean grads are multiples of 2^-8 there, so every sum of squares is exact in double
 * whatever the order, and the model's float scale is the library's to the bit. The rule itself, over
 * long runs and against the rule it replaced, is tested in test_percentile_clipping.c. */
#include <stdint.h>

#include "tests/clip_model.h"
#include "tests/halfprec.h"
#include "tests/harness.h"

static const adamjit_dtype all_dtypes[3] = {ADAMJIT_F32, ADAMJIT_F16, ADAMJIT_BF16};

/* ------------------------------------------------------------------ fixture */

enum { MAX_TENSORS = 3 };

typedef struct {
  adamjit_optimizer* opt;
  adamjit_mem param[MAX_TENSORS], grad[MAX_TENSORS];
} optim;

typedef struct {
  int n_tensors;
  int64_t n[MAX_TENSORS];
  adamjit_dtype pd, gd;
  int amsgrad;
  int percentile;
  int inject_step; /* the one step (0-based) with non-finite grads */
} setup;

/* Everything one tensor holds, as raw bytes (params in their dtype, states as fp32). */
typedef struct {
  unsigned char* p;
  float *m, *v, *vmax;
} tensor_snap;

/* gd and percentile may differ from su's: B of a clipping case takes fp32 grads, no clipping. */
static optim optim_make(adamjit_context* ctx, const setup* su, adamjit_dtype gd, int percentile) {
  optim o;
  memset(&o, 0, sizeof o);
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.hparams.amsgrad = su->amsgrad;
  cfg.hparams.weight_decay = 0.05f;
  cfg.percentile_clipping = percentile;
  REQUIRE_OK(adamjit_optimizer_create(ctx, &cfg, &o.opt));
  test_rng rng = {777};
  for (int k = 0; k < su->n_tensors; k++) {
    size_t pbytes = (size_t)su->n[k] * adamjit_dtype_size(su->pd);
    REQUIRE_OK(adamjit_mem_alloc(ctx, pbytes, &o.param[k]));
    REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)su->n[k] * adamjit_dtype_size(gd), &o.grad[k]));
    void* host = test_calloc((size_t)su->n[k], 4);
    for (int64_t i = 0; i < su->n[k]; i++) put_elem(su->pd, host, i, test_rng_uniform(&rng));
    REQUIRE_OK(adamjit_mem_write(ctx, o.param[k], 0, host, pbytes));
    free(host);
    adamjit_tensor_desc d;
    adamjit_tensor_desc_init_default(&d);
    d.param = o.param[k];
    d.grad = o.grad[k];
    d.numel = su->n[k];
    d.param_dtype = su->pd;
    d.grad_dtype = gd;
    int idx = -1;
    REQUIRE_OK(adamjit_optimizer_add_tensor(o.opt, &d, &idx));
  }
  return o;
}

static void optim_free(adamjit_context* ctx, optim* o, const setup* su) {
  adamjit_optimizer_destroy(o->opt);
  for (int k = 0; k < su->n_tensors; k++) {
    adamjit_mem_free(ctx, o->param[k]);
    adamjit_mem_free(ctx, o->grad[k]);
  }
}

static void snap_take(adamjit_context* ctx, const optim* o, const setup* su, int k, tensor_snap* s) {
  const int64_t n = su->n[k];
  size_t pbytes = (size_t)n * adamjit_dtype_size(su->pd);
  s->p = test_calloc(pbytes, 1);
  s->m = test_calloc((size_t)n, sizeof(float));
  s->v = test_calloc((size_t)n, sizeof(float));
  s->vmax = test_calloc((size_t)n, sizeof(float));
  CHECK_OK(adamjit_mem_read(ctx, s->p, o->param[k], 0, pbytes));
  CHECK_OK(adamjit_optimizer_read_state(o->opt, k, ADAMJIT_STATE_EXP_AVG, s->m, n));
  CHECK_OK(adamjit_optimizer_read_state(o->opt, k, ADAMJIT_STATE_EXP_AVG_SQ, s->v, n));
  if (su->amsgrad) CHECK_OK(adamjit_optimizer_read_state(o->opt, k, ADAMJIT_STATE_MAX_EXP_AVG_SQ, s->vmax, n));
}

static void snap_free(tensor_snap* s) {
  free(s->p);
  free(s->m);
  free(s->v);
  free(s->vmax);
}

/* Bitwise equality of element i in two snapshots: param bytes and every state. */
static int snap_elem_equal(const tensor_snap* a, const tensor_snap* b, int64_t i, size_t psize) {
  return memcmp(a->p + i * psize, b->p + i * psize, psize) == 0 && memcmp(&a->m[i], &b->m[i], 4) == 0 &&
         memcmp(&a->v[i], &b->v[i], 4) == 0 && memcmp(&a->vmax[i], &b->vmax[i], 4) == 0;
}

static int snap_elem_finite(const tensor_snap* s, int64_t i, adamjit_dtype pd) {
  int ok = isfinite(s->m[i]) && isfinite(s->v[i]) && isfinite(s->vmax[i]);
  if (pd == ADAMJIT_F32) {
    float p;
    memcpy(&p, s->p + 4 * i, 4);
    return ok && isfinite(p);
  }
  uint16_t h;
  memcpy(&h, s->p + 2 * i, 2);
  uint16_t expo = pd == ADAMJIT_F16 ? 0x7c00 : 0x7f80; /* all exponent bits set: Inf or NaN */
  return ok && (h & expo) != expo;
}

/* --------------------------------------------------------------- gradients */

/* The value that element i of tensor k gets at `step`; `inject` replaces the chosen
 * positions by NaN, +Inf or -Inf (returns which, 0 if none). Positions are spread so both
 * vector lanes and the scalar tail of a vectorized loop see them. */
static int injected_kind(int k, int64_t i, int64_t n, int step) {
  if (k == 2) return 1; /* tensor 2, when present, is entirely NaN on the injected step */
  if (i == 0 || i == n - 1) return (int)((i + step) % 3) + 1;
  if ((i * 7 + k) % 11 == 3) return (int)((i + k) % 3) + 1;
  return 0;
}

/* With clipping: multiples of 2^-8 (so sums of squares are exact), growing with the step
 * so that later steps are clipped even at percentile 50. */
static double clean_grad(int64_t i, int step, int k, int clipping) {
  double x = sin(0.7 * (double)i + 1.3 * step + k) * (1.0 + 0.5 * cos(0.11 * step));
  if (i % 9 == 4) x *= 100.0; /* large but finite in every dtype */
  if (clipping) x = nearbyint(x * (1.0 + 0.3 * step) * 256.0) / 256.0;
  return x;
}

/* Writes grads to both optimizers; A gets NaN/Inf at the injected positions when `inject`,
 * B gets 0 there. With clipping (`hist` not NULL: A's modelled histories) B's grads are
 * fp32 and A's finite values times A's clip scale. Returns the number of injected elements. */
static uint64_t write_grads(adamjit_context* ctx, optim* a, optim* b, const setup* su, int step, int inject,
                            clip_model* hist) {
  uint64_t count = 0;
  for (int k = 0; k < su->n_tensors; k++) {
    const int64_t n = su->n[k];
    void* ga = test_calloc((size_t)n, 4);
    void* gb = test_calloc((size_t)n, 4);
    float* fa = test_calloc((size_t)n, sizeof(float));
    for (int64_t i = 0; i < n; i++) {
      double x = clean_grad(i, step, k, hist != NULL);
      int kind = inject ? injected_kind(k, i, n, step) : 0;
      double special = kind == 1 ? NAN : kind == 2 ? INFINITY : -INFINITY;
      put_elem(su->gd, ga, i, kind ? special : x);
      fa[i] = (float)get_elem(su->gd, ga, i); /* the fp32 value the library reads */
      if (!hist) put_elem(su->gd, gb, i, kind ? 0.0 : x);
      count += kind != 0;
    }
    if (hist) {
      const float scale = clip_model_scale(&hist[k], fa, n, su->percentile);
      for (int64_t i = 0; i < n; i++) ((float*)gb)[i] = isfinite(fa[i]) ? fa[i] * scale : 0.0f;
    }
    REQUIRE_OK(adamjit_mem_write(ctx, a->grad[k], 0, ga, (size_t)n * adamjit_dtype_size(su->gd)));
    REQUIRE_OK(adamjit_mem_write(ctx, b->grad[k], 0, gb, (size_t)n * (hist ? 4 : adamjit_dtype_size(su->gd))));
    free(ga);
    free(gb);
    free(fa);
  }
  return count;
}

/* ------------------------------------------------------------------- checks */

/* A's finite-gradient elements must equal B's bitwise; injected ones (when `frozen` is
 * given) must equal the snapshot taken before the step. */
static void compare_runs(adamjit_context* ctx, optim* a, optim* b, const setup* su, tensor_snap* frozen, int step,
                         int injected_step, const char* label) {
  const size_t psize = adamjit_dtype_size(su->pd);
  for (int k = 0; k < su->n_tensors; k++) {
    tensor_snap sa, sb;
    snap_take(ctx, a, su, k, &sa);
    snap_take(ctx, b, su, k, &sb);
    int bad_clean = 0, bad_frozen = 0, bad_finite = 0;
    for (int64_t i = 0; i < su->n[k]; i++) {
      int kind = injected_kind(k, i, su->n[k], injected_step);
      if (!kind) bad_clean += !snap_elem_equal(&sa, &sb, i, psize);
      else if (frozen) bad_frozen += !snap_elem_equal(&sa, &frozen[k], i, psize);
      bad_finite += !snap_elem_finite(&sa, i, su->pd);
    }
    CHECK_MSG(bad_clean == 0, "%s step %d tensor %d: %d finite-grad elements differ from the clean run", label, step,
              k, bad_clean);
    CHECK_MSG(bad_frozen == 0, "%s step %d tensor %d: %d non-finite-grad elements changed", label, step, k,
              bad_frozen);
    CHECK_MSG(bad_finite == 0, "%s step %d tensor %d: %d elements not finite", label, step, k, bad_finite);
    snap_free(&sa);
    snap_free(&sb);
  }
}

/* Elements that got a non-finite grad at `injected_step` are updated again later. */
static void check_updated_since(adamjit_context* ctx, optim* a, const setup* su, tensor_snap* frozen,
                                int injected_step, const char* label) {
  for (int k = 0; k < su->n_tensors; k++) {
    tensor_snap s;
    snap_take(ctx, a, su, k, &s);
    int stuck = 0;
    for (int64_t i = 0; i < su->n[k]; i++)
      if (injected_kind(k, i, su->n[k], injected_step)) stuck += memcmp(&s.m[i], &frozen[k].m[i], 4) == 0;
    CHECK_MSG(stuck == 0, "%s tensor %d: %d elements never updated after their non-finite step", label, k, stuck);
    snap_free(&s);
  }
}

static void step_both(optim* a, optim* b, uint64_t want_a, const char* label, int step) {
  uint64_t ca = 12345, cb = 12345, last = 12345;
  CHECK_OK(adamjit_optimizer_step(a->opt, &ca));
  CHECK_OK(adamjit_optimizer_step(b->opt, &cb));
  CHECK_MSG(ca == want_a, "%s step %d: counted %llu, injected %llu", label, step, (unsigned long long)ca,
            (unsigned long long)want_a);
  CHECK(cb == 0);
  CHECK_OK(adamjit_optimizer_last_nonfinite(a->opt, &last));
  CHECK_MSG(last == want_a, "%s step %d: last_nonfinite %llu, injected %llu", label, step, (unsigned long long)last,
            (unsigned long long)want_a);
}

/* inject_step clean steps, one injected step, then 4 clean steps; A vs B after each. */
static void run_case(adamjit_context* ctx, const setup* su) {
  char label[96];
  snprintf(label, sizeof label, "p=%s g=%s amsgrad=%d pct=%d tensors=%d inject@%d", adamjit_dtype_name(su->pd),
           adamjit_dtype_name(su->gd), su->amsgrad, su->percentile, su->n_tensors, su->inject_step);
  const int clipping = su->percentile < 100;
  optim a = optim_make(ctx, su, su->gd, su->percentile);
  optim b = clipping ? optim_make(ctx, su, ADAMJIT_F32, 100) : optim_make(ctx, su, su->gd, su->percentile);
  clip_model hist[MAX_TENSORS]; /* A's clip histories under the library's rule (RULE_NEW) */
  memset(hist, 0, sizeof hist);
  const int INJECT = su->inject_step, LAST = su->inject_step + 5;
  tensor_snap frozen[MAX_TENSORS];
  for (int step = 0; step < LAST; step++) {
    if (step == INJECT)
      for (int k = 0; k < su->n_tensors; k++) snap_take(ctx, &a, su, k, &frozen[k]);
    uint64_t injected = write_grads(ctx, &a, &b, su, step, step == INJECT, clipping ? hist : NULL);
    step_both(&a, &b, injected, label, step);
    compare_runs(ctx, &a, &b, su, step == INJECT ? frozen : NULL, step, INJECT, label);
  }
  check_updated_since(ctx, &a, su, frozen, INJECT, label);
  if (clipping) {
    /* Clipping scaled A on some steps, or B would just be A with zeros and prove nothing. */
    int clipped = 0;
    for (int k = 0; k < su->n_tensors; k++) clipped += hist[k].active + hist[k].skip_clipped;
    CHECK_MSG(clipped > 0, "%s: clipping never active", label);
  }
  /* The step counter advanced for every tensor, skipped elements or not. */
  for (int k = 0; k < su->n_tensors; k++) {
    adamjit_tensor_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    CHECK_OK(adamjit_optimizer_tensor_info(a.opt, k, &info));
    CHECK(info.step == (uint64_t)LAST);
  }
  for (int k = 0; k < su->n_tensors; k++) snap_free(&frozen[k]);
  optim_free(ctx, &a, su);
  optim_free(ctx, &b, su);
}

/* With a NULL count the step still records it for adamjit_optimizer_last_nonfinite. */
static void test_count_without_out_pointer(adamjit_context* ctx) {
  setup su = {2, {40, 23, 0}, ADAMJIT_F32, ADAMJIT_F16, 0, 100, 0};
  optim a = optim_make(ctx, &su, su.gd, 100), b = optim_make(ctx, &su, su.gd, 100);
  uint64_t injected = write_grads(ctx, &a, &b, &su, 0, 1, NULL);
  CHECK(injected > 0);
  CHECK_OK(adamjit_optimizer_step(a.opt, NULL));
  uint64_t last = 0;
  CHECK_OK(adamjit_optimizer_last_nonfinite(a.opt, &last));
  CHECK(last == injected);
  write_grads(ctx, &a, &b, &su, 1, 0, NULL);
  CHECK_OK(adamjit_optimizer_step(a.opt, NULL));
  CHECK_OK(adamjit_optimizer_last_nonfinite(a.opt, &last));
  CHECK(last == 0);
  optim_free(ctx, &a, &su);
  optim_free(ctx, &b, &su);
}

int main(void) {
  adamjit_context* ctx = test_cpu_context();
  /* Every param x grad dtype, amsgrad off and on; a third, all-NaN tensor in half of them. */
  for (int a = 0; a < 3; a++)
    for (int b = 0; b < 3; b++)
      for (int ams = 0; ams < 2; ams++) {
        setup su = {ams ? 3 : 2, {67, 130, 9}, all_dtypes[a], all_dtypes[b], ams, 100, 3};
        run_case(ctx, &su);
      }
  /* Percentile clipping, with the injected step on a filled history (the 4th step) and on
   * the first step (history unfilled until the next), and the all-NaN tensor 2: A's finite
   * elements must follow the modelled scale on every step, and nothing may turn NaN (a NaN
   * in the history would turn every later update into NaN or 0). Only the first-step cases
   * tell the rule from the one it replaced (recording the finite part: a history filled
   * with it, and 0s that stop tensor 2 for good); with a filled history 4 more steps are too
   * few for one slot to move a percentile. test_percentile_clipping.c covers that. */
  for (int b = 0; b < 3; b++)
    for (int pct = 0; pct <= 50; pct += 50)
      for (int at = 0; at <= 3; at += 3) {
        setup su = {3, {67, 130, 9}, all_dtypes[(b + at / 3) % 3], all_dtypes[b], (b + pct / 50) % 2, pct, at};
        run_case(ctx, &su);
      }
  test_count_without_out_pointer(ctx);
  adamjit_context_destroy(ctx);
  return test_finish("test_nonfinite");
}
