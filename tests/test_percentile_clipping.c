/* Percentile clipping (SPEC 4) against a scalar model: per tensor, a history of 100 float
 * squared gradient norms; sq = sum of g^2 over the finite elements, accumulated in double
 * and stored as float; at t == 1 every slot takes sq, later slot t % 100 does;
 * current = sqrtf(sq), clip = sqrtf(sorted_ascending(history)[percentile]),
 * scale = current > clip ? clip / current : 1, and g*scale (fp32) feeds m and v.
 *
 * Non-finite gradients: a step whose gradient has any NaN or +-Inf element records nothing
 * in the history (an overflowed fp16 loss-scaled step says nothing about the usual norm).
 * If the history is not filled yet (the tensor's first step, or every step so far was
 * non-finite) the scale is 1 and the history stays unfilled; the first all-finite step
 * then fills every slot, as t == 1 does. With a filled history a non-recording step is
 * scaled as usual from its finite part. Slot indices use the tensor's own step counter,
 * which advances on every step. The elements with a non-finite g keep p, m and v.
 *
 * 250 steps wrap the history twice. Gradient norms follow a slow wave with spikes and a
 * quiet phase, so clipping is active on some steps and inactive on others; the model
 * asserts both happened, so the comparison is not vacuous.
 *
 * The non-finite cases also run a model of the previous rule (every step records the
 * squared norm of its finite part, 0 for an all-NaN step) and assert that it gives a
 * materially different result, so a library that went back to it would fail here. */
#include <stdint.h>

#include "tests/clip_model.h"
#include "tests/halfprec.h"
#include "tests/harness.h"

enum { N_STEPS = 250 };

/* ---------------------------------------------------------------- the model */

/* SPEC 2 in double on the scaled gradient, for one rule; the scale comes from the clip
 * model (tests/clip_model.h), which implements the rule described above. */
typedef struct {
  clip_model cm;
  uint64_t t;
  double *p, *m, *v, *gmax;
} oracle;

/* ------------------------------------------------- one tensor, both sides */

/* Which gradient element is non-finite at optimizer step `step` (0-based) and the tensor's
 * own step `own` (1-based): 0 none, 1 NaN, 2 +Inf, 3 -Inf. */
typedef int (*inject_fn)(int step, uint64_t own, int64_t i, int64_t n);

typedef struct {
  int64_t n;
  adamjit_dtype gd;    /* params are fp32 here; grads fp32 or bf16 */
  int percentile;      /* effective: 100 = off */
  int override_pct;    /* tensor descriptor value (ADAMJIT_INHERIT or a percentile) */
  int start;           /* optimizer step at which it is registered */
  double phase;        /* of its gradient-norm wave, so tensors have their own histories */
  int outliers;        /* 1: elements i % 64 == 5 are 50x larger (they overflow first) */
  inject_fn inject;    /* NULL: always finite */
  int index;
  adamjit_mem param, grad;
  oracle o[2];         /* [RULE_NEW], [RULE_OLD] */
  float* g;            /* this step's grads as fp32 values (NaN/Inf included) */
  void* staging;
} clip_tensor;

static void tensor_init(adamjit_context* ctx, clip_tensor* ct, int64_t n, adamjit_dtype gd, int cfg_pct,
                        int override_pct, int start, double phase, test_rng* rng) {
  memset(ct, 0, sizeof *ct);
  ct->n = n;
  ct->gd = gd;
  ct->override_pct = override_pct;
  ct->percentile = override_pct == ADAMJIT_INHERIT ? cfg_pct : override_pct;
  ct->start = start;
  ct->phase = phase;
  ct->index = -1;
  for (int r = 0; r < 2; r++) {
    oracle* o = &ct->o[r];
    o->cm.rule = (clip_rule)r;
    o->p = test_calloc((size_t)n, sizeof(double));
    o->m = test_calloc((size_t)n, sizeof(double));
    o->v = test_calloc((size_t)n, sizeof(double));
    o->gmax = test_calloc((size_t)n, sizeof(double));
  }
  ct->g = test_calloc((size_t)n, sizeof(float));
  ct->staging = test_calloc((size_t)n, sizeof(float));
  REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)n * 4, &ct->param));
  REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)n * adamjit_dtype_size(gd), &ct->grad));
  float* p = ct->staging;
  for (int64_t i = 0; i < n; i++) {
    p[i] = (float)(test_rng_uniform(rng) * pow(10.0, (double)(i % 3) - 2.0));
    ct->o[RULE_NEW].p[i] = ct->o[RULE_OLD].p[i] = p[i];
  }
  REQUIRE_OK(adamjit_mem_write(ctx, ct->param, 0, p, (size_t)n * 4));
}

static void tensor_free(adamjit_context* ctx, clip_tensor* ct) {
  adamjit_mem_free(ctx, ct->param);
  adamjit_mem_free(ctx, ct->grad);
  for (int r = 0; r < 2; r++) {
    free(ct->o[r].p);
    free(ct->o[r].m);
    free(ct->o[r].v);
    free(ct->o[r].gmax);
  }
  free(ct->g);
  free(ct->staging);
}

static void tensor_register(adamjit_optimizer* opt, clip_tensor* ct) {
  adamjit_tensor_desc d;
  adamjit_tensor_desc_init_default(&d);
  d.param = ct->param;
  d.grad = ct->grad;
  d.numel = ct->n;
  d.grad_dtype = ct->gd;
  d.percentile_clipping = ct->override_pct;
  REQUIRE_OK(adamjit_optimizer_add_tensor(opt, &d, &ct->index));
}

/* The gradient norm of a step: a slow wave over a factor of ~10, a 30x spike every 23rd
 * step and a quiet phase (steps 150..159, 100x smaller) whose first step is below every
 * norm in the history, so even percentile 0 leaves it unclipped. */
static double norm_of_step(int step, double phase) {
  double x = exp(1.2 * sin(2.0 * 3.14159265358979 * step / 37.0 + phase));
  if (step % 23 == 7) x *= 30.0;
  if (step >= 150 && step < 160) x *= 0.01;
  return x;
}

static int is_outlier(int64_t i) { return i % 64 == 5; }

/* Returns the number of non-finite elements written. */
static uint64_t tensor_new_grads(adamjit_context* ctx, clip_tensor* ct, int step, test_rng* rng) {
  const double norm = norm_of_step(step, ct->phase) * (1.0 + 0.2 * test_rng_uniform(rng));
  const uint64_t own = ct->o[RULE_NEW].t + 1;
  uint64_t injected = 0;
  for (int64_t i = 0; i < ct->n; i++) {
    double x = test_rng_uniform(rng) * norm * (i % 4 == 0 ? 0.1 : 1.0);
    if (ct->outliers && is_outlier(i)) x *= 50.0;
    const int kind = ct->inject ? ct->inject(step, own, i, ct->n) : 0;
    injected += kind != 0;
    /* Stored in the grad dtype (bf16: nearest even; NaN as 0x7fc0, +-Inf as 0x7f80/0xff80),
     * and read back as the fp32 value the library sees. */
    put_elem(ct->gd, ct->staging, i, kind ? (kind == 1 ? NAN : kind == 2 ? INFINITY : -INFINITY) : x);
    ct->g[i] = (float)get_elem(ct->gd, ct->staging, i);
  }
  REQUIRE_OK(adamjit_mem_write(ctx, ct->grad, 0, ct->staging, (size_t)ct->n * adamjit_dtype_size(ct->gd)));
  return injected;
}

/* SPEC 2 in double on the scaled gradient; the scale and g*scale are fp32 as in SPEC 4.
 * Elements with a non-finite g keep p, m and v. */
static void oracle_step(oracle* o, const float* gs, int64_t n, int percentile, const adamjit_hparams* hp) {
  const float scale = percentile < 100 ? clip_model_scale(&o->cm, gs, n, percentile) : 1.0f;
  const double b1 = hp->beta1, b2 = hp->beta2, lr = hp->lr, eps = hp->eps, wd = hp->weight_decay;
  o->t++;
  const double c1 = 1.0 - pow(b1, (double)o->t), c2 = 1.0 - pow(b2, (double)o->t);
  for (int64_t i = 0; i < n; i++) {
    if (!isfinite(gs[i])) continue;
    const double g = (double)(gs[i] * scale);
    o->m[i] = b1 * o->m[i] + (1.0 - b1) * g;
    o->v[i] = b2 * o->v[i] + (1.0 - b2) * g * g;
    double p = o->p[i] * (1.0 - lr * wd);
    p -= lr * (o->m[i] / c1) / (sqrt(o->v[i]) / sqrt(c2) + eps);
    o->p[i] = (float)p;
    if (fabs(g) > o->gmax[i]) o->gmax[i] = fabs(g);
  }
}

static void tensor_oracle_step(clip_tensor* ct, const adamjit_hparams* hp) {
  for (int r = 0; r < 2; r++) oracle_step(&ct->o[r], ct->g, ct->n, ct->percentile, hp);
}

/* Params: SPEC 7 (atol 1e-6, rtol 1e-5). The clip scale is computed from the same float
 * history with the same float operations, so it matches the library's to about 1 ulp (the
 * library may sum the double sq in another order, which can move the float sq by 1 ulp);
 * that relative error of ~1e-7 in g is far below rtol 1e-5 even compounded over 250 steps,
 * because m and v forget old steps geometrically and each step moves p by at most ~lr.
 * m and v: rtol 1e-5 plus 1e-6 of the element's largest scaled |g| (or its square), the
 * magnitude their fp32 rounding errors are relative to. */
static void tensor_compare(adamjit_context* ctx, adamjit_optimizer* opt, const clip_tensor* ct, const char* label) {
  const oracle* o = &ct->o[RULE_NEW];
  float* got = test_calloc((size_t)ct->n, sizeof(float));
  CHECK_OK(adamjit_mem_read(ctx, got, ct->param, 0, (size_t)ct->n * 4));
  int bad = 0;
  for (int64_t i = 0; i < ct->n; i++) {
    double err = fabs(got[i] - o->p[i]), allowed = 1e-6 + 1e-5 * fabs(o->p[i]);
    if (!(err <= allowed) && bad++ < 3)
      CHECK_MSG(0, "%s p[%lld] = %.9g, model %.9g", label, (long long)i, (double)got[i], o->p[i]);
  }
  const adamjit_state_kind kinds[2] = {ADAMJIT_STATE_EXP_AVG, ADAMJIT_STATE_EXP_AVG_SQ};
  for (int k = 0; k < 2; k++) {
    const double* ref = k == 0 ? o->m : o->v;
    CHECK_OK(adamjit_optimizer_read_state(opt, ct->index, kinds[k], got, ct->n));
    for (int64_t i = 0; i < ct->n; i++) {
      double scale = k == 0 ? o->gmax[i] : o->gmax[i] * o->gmax[i];
      double err = fabs(got[i] - ref[i]), allowed = 1e-5 * fabs(ref[i]) + 1e-6 * scale;
      if (!(err <= allowed) && bad++ < 6)
        CHECK_MSG(0, "%s %s[%lld] = %.9g, model %.9g", label, k == 0 ? "m" : "v", (long long)i, (double)got[i],
                  ref[i]);
    }
  }
  if (bad > 6) CHECK_MSG(0, "%s: %d values off", label, bad);
  free(got);
}

/* Elements whose final param under the old rule is more than 100 tolerances (of the
 * comparison above) away from the new rule's. */
static int64_t old_rule_far(const clip_tensor* ct) {
  int64_t far = 0;
  for (int64_t i = 0; i < ct->n; i++) {
    const double pn = ct->o[RULE_NEW].p[i], po = ct->o[RULE_OLD].p[i];
    far += fabs(pn - po) > 100.0 * (1e-6 + 1e-5 * fabs(pn));
  }
  return far;
}

/* ------------------------------------------------------------------- cases */

enum { N_TENSORS = 4 };

/* One optimizer with clipping at `percentile`: tensor 0 fp32 grads, tensor 1 bf16 grads,
 * tensor 2 opts out by an override of 100, tensor 3 joins at step 120 (its history starts
 * full of its own first norm). Every tensor has its own history. */
static void run_percentile(adamjit_context* ctx, int percentile) {
  char label[64];
  test_rng rng = {0x2545f4914f6cdd1dull + (unsigned long long)percentile};
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.percentile_clipping = percentile;
  adamjit_optimizer* opt = NULL;
  REQUIRE_OK(adamjit_optimizer_create(ctx, &cfg, &opt));

  clip_tensor t[N_TENSORS];
  tensor_init(ctx, &t[0], 400, ADAMJIT_F32, percentile, ADAMJIT_INHERIT, 0, 0.0, &rng);
  tensor_init(ctx, &t[1], 300, ADAMJIT_BF16, percentile, ADAMJIT_INHERIT, 0, 1.7, &rng);
  tensor_init(ctx, &t[2], 50, ADAMJIT_F32, percentile, 100, 0, 2.9, &rng);
  tensor_init(ctx, &t[3], 64, ADAMJIT_F32, percentile, ADAMJIT_INHERIT, 120, 4.1, &rng);

  for (int step = 0; step < N_STEPS; step++) {
    for (int k = 0; k < N_TENSORS; k++) {
      if (step == t[k].start) tensor_register(opt, &t[k]);
      if (t[k].index >= 0) tensor_new_grads(ctx, &t[k], step, &rng);
    }
    uint64_t nonfinite = 99;
    CHECK_OK(adamjit_optimizer_step(opt, &nonfinite));
    CHECK(nonfinite == 0);
    for (int k = 0; k < N_TENSORS; k++)
      if (t[k].index >= 0) tensor_oracle_step(&t[k], &cfg.hparams);
  }

  for (int k = 0; k < N_TENSORS; k++) {
    snprintf(label, sizeof label, "percentile %d tensor %d", percentile, k);
    adamjit_tensor_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    CHECK_OK(adamjit_optimizer_tensor_info(opt, t[k].index, &info));
    CHECK(info.percentile_clipping == t[k].percentile);
    CHECK(info.step == t[k].o[RULE_NEW].t);
    /* 8 bytes of m and v per element, plus the 100-float history where clipping is on. */
    CHECK(info.state_bytes == 8 * (uint64_t)t[k].n + (t[k].percentile < 100 ? 4 * CLIP_HISTORY : 0));
    if (t[k].percentile < 100) {
      const clip_model* cm = &t[k].o[RULE_NEW].cm;
      printf("%s: clipped on %d steps, not on %d\n", label, cm->active, cm->inactive);
      CHECK_MSG(cm->active > 0 && cm->inactive > 0, "%s: clipping active %d, inactive %d", label, cm->active,
                cm->inactive);
      /* All grads finite: the two rules are the same rule, to the bit. */
      CHECK_MSG(memcmp(t[k].o[RULE_NEW].p, t[k].o[RULE_OLD].p, (size_t)t[k].n * sizeof(double)) == 0,
                "%s: old and new rule models differ on finite gradients", label);
    }
    tensor_compare(ctx, opt, &t[k], label);
  }
  adamjit_optimizer_destroy(opt);
  for (int k = 0; k < N_TENSORS; k++) tensor_free(ctx, &t[k]);
}

/* --------------------------------------------------- non-finite gradients */

static int mixed_kind(int64_t i, int salt) { return 1 + (int)((i + salt) % 3); } /* NaN, +Inf, -Inf */

/* (a) first steps. */
static int inj_first_mixed(int step, uint64_t own, int64_t i, int64_t n) { return own == 1 ? mixed_kind(i, 0) : 0; }
static int inj_first_nan(int step, uint64_t own, int64_t i, int64_t n) { return own == 1; }
static int inj_first_two_outliers(int step, uint64_t own, int64_t i, int64_t n) {
  return own <= 2 && is_outlier(i) ? mixed_kind(i, (int)own) : 0;
}
static int inj_first_two_all(int step, uint64_t own, int64_t i, int64_t n) {
  return own <= 2 ? mixed_kind(i, (int)own) : 0;
}

/* (b) scattered steps: 22 of 250 are non-finite, 15 of them within the first 100 (11
 * overflow, 2 all-NaN, 2 spike steps). On the "overflow" steps the outlier elements (most
 * of the norm) are NaN/Inf, so the finite part is ~1/8 of the norm: the old rule recorded
 * those, and 0 for the all-NaN steps, which put its 5th percentile far below the clean
 * norms'. On the spike steps (norm x30) only three ordinary elements are non-finite, so the
 * finite part is still large and gets clipped from the (unrecorded-into) history. */
static int in_list(int step, const int* list, int n) {
  for (int k = 0; k < n; k++)
    if (list[k] == step) return 1;
  return 0;
}
static const int overflow_steps[] = {3, 12, 19, 27, 36, 48, 58, 66, 75, 88, 97, 130, 171, 205, 240};
static const int all_nan_steps[] = {44, 81, 190};
static const int spike_steps[] = {30, 99, 122, 214}; /* step % 23 == 7 */
#define LEN(a) ((int)(sizeof(a) / sizeof((a)[0])))

static int inj_scattered(int step, uint64_t own, int64_t i, int64_t n) {
  if (in_list(step, all_nan_steps, LEN(all_nan_steps))) return 1;
  if (in_list(step, overflow_steps, LEN(overflow_steps))) return is_outlier(i) ? mixed_kind(i, step) : 0;
  if (in_list(step, spike_steps, LEN(spike_steps)))
    return i == 1 || i == n / 2 + 1 || i == n - 1 ? mixed_kind(i, step) : 0;
  return 0;
}
/* A tensor registered late whose own first step is all NaN, then the schedule above. */
static int inj_late(int step, uint64_t own, int64_t i, int64_t n) { return own == 1 ? 1 : inj_scattered(step, own, i, n); }

static void read_f32(adamjit_context* ctx, adamjit_optimizer* opt, const clip_tensor* ct, int what, float* out) {
  if (what < 0) CHECK_OK(adamjit_mem_read(ctx, out, ct->param, 0, (size_t)ct->n * 4));
  else CHECK_OK(adamjit_optimizer_read_state(opt, ct->index, (adamjit_state_kind)what, out, ct->n));
}

static clip_tensor* run_steps(adamjit_context* ctx, adamjit_optimizer* opt, const adamjit_optimizer_config* cfg,
                              clip_tensor* t, int n_tensors, int step, test_rng* rng) {
  uint64_t injected = 0;
  for (int k = 0; k < n_tensors; k++) {
    if (step == t[k].start) tensor_register(opt, &t[k]);
    if (t[k].index >= 0) injected += tensor_new_grads(ctx, &t[k], step, rng);
  }
  uint64_t nonfinite = 12345;
  CHECK_OK(adamjit_optimizer_step(opt, &nonfinite));
  CHECK_MSG(nonfinite == injected, "step %d: counted %llu non-finite, injected %llu", step,
            (unsigned long long)nonfinite, (unsigned long long)injected);
  for (int k = 0; k < n_tensors; k++)
    if (t[k].index >= 0) tensor_oracle_step(&t[k], &cfg->hparams);
  return t;
}

/* (a) Tensors whose first step(s) are entirely NaN/Inf: nothing is recorded and nothing
 * moves, and the first all-finite step fills the history and updates every element at
 * scale 1 (current == clip). Under the old rule that step would have recorded 0 into every
 * slot at t == 1 and then clipped everything to 0 for ~95 steps. A tensor whose first two
 * steps have NaN/Inf in its outlier elements only learns from its finite part at scale 1
 * while the history is unfilled, and fills it at step 3. */
static void test_nonfinite_first_steps(adamjit_context* ctx) {
  enum { PCT = 5, STEPS = 30, NT = 4 };
  test_rng rng = {0x9e3779b97f4a7c15ull};
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.percentile_clipping = PCT;
  adamjit_optimizer* opt = NULL;
  REQUIRE_OK(adamjit_optimizer_create(ctx, &cfg, &opt));
  clip_tensor t[NT];
  tensor_init(ctx, &t[0], 400, ADAMJIT_F32, PCT, ADAMJIT_INHERIT, 0, 0.3, &rng);
  tensor_init(ctx, &t[1], 300, ADAMJIT_BF16, PCT, ADAMJIT_INHERIT, 0, 1.9, &rng);
  tensor_init(ctx, &t[2], 256, ADAMJIT_F32, PCT, ADAMJIT_INHERIT, 0, 3.1, &rng);
  tensor_init(ctx, &t[3], 64, ADAMJIT_F32, PCT, ADAMJIT_INHERIT, 10, 4.4, &rng);
  t[0].inject = inj_first_mixed;
  t[1].inject = inj_first_nan;
  t[2].inject = inj_first_two_outliers;
  t[2].outliers = 1;
  t[3].inject = inj_first_two_all;
  const uint64_t first_clean[NT] = {2, 2, 0, 3}; /* own step of the first finite gradient, if all-bad before */
  float* before[NT]; /* library params before the first finite step */
  for (int k = 0; k < NT; k++) before[k] = test_calloc((size_t)t[k].n, sizeof(float));
  float* after = test_calloc(400, sizeof(float));
  char label[96];
  for (int step = 0; step < STEPS; step++) {
    for (int k = 0; k < NT; k++) {
      const uint64_t own = t[k].o[RULE_NEW].t + 1;
      if (t[k].index < 0 || own != first_clean[k]) continue;
      /* Before it: untouched by the all-NaN/Inf steps. */
      snprintf(label, sizeof label, "first steps tensor %d before own step %llu", k, (unsigned long long)own);
      read_f32(ctx, opt, &t[k], -1, before[k]);
      int moved = 0, state = 0;
      for (int64_t i = 0; i < t[k].n; i++) moved += before[k][i] != (float)t[k].o[RULE_NEW].p[i];
      for (int s = 0; s < 2; s++) {
        read_f32(ctx, opt, &t[k], s, after);
        for (int64_t i = 0; i < t[k].n; i++) state += after[i] != 0.0f;
      }
      CHECK_MSG(moved == 0 && state == 0, "%s: %d params moved, %d states non-zero", label, moved, state);
    }
    run_steps(ctx, opt, &cfg, t, NT, step, &rng);
    for (int k = 0; k < NT; k++) {
      const uint64_t own = t[k].o[RULE_NEW].t;
      if (t[k].index < 0 || own != first_clean[k]) continue;
      /* The first finite step learns: every m is non-zero and every param moves by about
       * lr (Adam's early steps move by ~0.7 lr; weight decay alone would move 1e-5 |p|). */
      snprintf(label, sizeof label, "first steps tensor %d own step %llu", k, (unsigned long long)own);
      int zero_m = 0, still = 0;
      read_f32(ctx, opt, &t[k], ADAMJIT_STATE_EXP_AVG, after);
      for (int64_t i = 0; i < t[k].n; i++) zero_m += after[i] == 0.0f;
      read_f32(ctx, opt, &t[k], -1, after);
      for (int64_t i = 0; i < t[k].n; i++) still += !(fabs((double)after[i] - before[k][i]) > 0.1 * cfg.hparams.lr);
      CHECK_MSG(zero_m == 0 && still == 0, "%s: %d zero m, %d params (nearly) unmoved", label, zero_m, still);
      /* The model agrees, and the old rule would have given scale 0 here. */
      CHECK_MSG(t[k].o[RULE_NEW].cm.last_scale == 1.0f, "%s: model scale %g", label,
                (double)t[k].o[RULE_NEW].cm.last_scale);
      CHECK_MSG(t[k].o[RULE_OLD].cm.last_scale == 0.0f, "%s: old-rule model scale %g, expected 0", label,
                (double)t[k].o[RULE_OLD].cm.last_scale);
    }
  }
  for (int k = 0; k < NT; k++) {
    snprintf(label, sizeof label, "first steps tensor %d", k);
    tensor_compare(ctx, opt, &t[k], label);
    const int64_t far = old_rule_far(&t[k]);
    printf("%s: old rule far off on %lld of %lld params\n", label, (long long)far, (long long)t[k].n);
    CHECK_MSG(far >= t[k].n / 2, "%s: the old rule would be far off on only %lld of %lld params", label,
              (long long)far, (long long)t[k].n);
  }
  for (int k = 0; k < NT; k++) free(before[k]);
  free(after);
  adamjit_optimizer_destroy(opt);
  for (int k = 0; k < NT; k++) tensor_free(ctx, &t[k]);
}

/* (b) Non-finite steps scattered over 250 steps, fp32 and bf16 grads, a late tensor whose
 * first step is all NaN, and an opted-out tensor (no clipping: elementwise skipping only). */
static void test_nonfinite_scattered(adamjit_context* ctx, int percentile) {
  enum { NT = 4 };
  test_rng rng = {0xd1b54a32d192ed03ull + (unsigned long long)percentile};
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.percentile_clipping = percentile;
  adamjit_optimizer* opt = NULL;
  REQUIRE_OK(adamjit_optimizer_create(ctx, &cfg, &opt));
  clip_tensor t[NT];
  tensor_init(ctx, &t[0], 400, ADAMJIT_F32, percentile, ADAMJIT_INHERIT, 0, 0.0, &rng);
  tensor_init(ctx, &t[1], 300, ADAMJIT_BF16, percentile, ADAMJIT_INHERIT, 0, 1.7, &rng);
  tensor_init(ctx, &t[2], 64, ADAMJIT_F32, percentile, ADAMJIT_INHERIT, 40, 4.1, &rng);
  tensor_init(ctx, &t[3], 50, ADAMJIT_F32, percentile, 100, 0, 2.9, &rng);
  t[0].outliers = t[1].outliers = 1;
  t[0].inject = t[1].inject = t[3].inject = inj_scattered;
  t[2].inject = inj_late;
  for (int step = 0; step < N_STEPS; step++) run_steps(ctx, opt, &cfg, t, NT, step, &rng);
  char label[96];
  for (int k = 0; k < NT; k++) {
    snprintf(label, sizeof label, "scattered non-finite, percentile %d, tensor %d", percentile, k);
    adamjit_tensor_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    CHECK_OK(adamjit_optimizer_tensor_info(opt, t[k].index, &info));
    CHECK(info.step == t[k].o[RULE_NEW].t);
    tensor_compare(ctx, opt, &t[k], label);
    if (t[k].percentile == 100) continue;
    const clip_model* cm = &t[k].o[RULE_NEW].cm;
    const int64_t far = old_rule_far(&t[k]);
    printf("%s: clipped on %d steps, not on %d; non-recording steps clipped %d, not %d; "
           "old rule far off on %lld of %lld params\n",
           label, cm->active, cm->inactive, cm->skip_clipped, cm->skip_kept, (long long)far, (long long)t[k].n);
    CHECK_MSG(cm->active > 0 && cm->inactive > 0, "%s: clipping active %d, inactive %d", label, cm->active,
              cm->inactive);
    /* Non-recording steps on a filled history are scaled too, and some of them clipped. */
    CHECK_MSG(cm->skip_clipped > 0 && cm->skip_kept > 0, "%s: non-recording steps clipped %d, not %d", label,
              cm->skip_clipped, cm->skip_kept);
    CHECK_MSG(far >= t[k].n / 2, "%s: the old rule would be far off on only %lld of %lld params", label,
              (long long)far, (long long)t[k].n);
  }
  adamjit_optimizer_destroy(opt);
  for (int k = 0; k < NT; k++) tensor_free(ctx, &t[k]);
}

/* ------------------------------------------------ percentile 100 is "off" */

typedef struct {
  adamjit_optimizer* opt;
  adamjit_mem param[2], grad[2];
} small_opt;

/* cfg_pct: the optimizer's percentile; override: each tensor's descriptor value. */
static small_opt small_make(adamjit_context* ctx, int cfg_pct, int override, const float* p0, int64_t n) {
  small_opt s;
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.percentile_clipping = cfg_pct;
  REQUIRE_OK(adamjit_optimizer_create(ctx, &cfg, &s.opt));
  for (int k = 0; k < 2; k++) {
    REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)n * 4, &s.param[k]));
    REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)n * 4, &s.grad[k]));
    REQUIRE_OK(adamjit_mem_write(ctx, s.param[k], 0, p0, (size_t)n * 4));
    adamjit_tensor_desc d;
    adamjit_tensor_desc_init_default(&d);
    d.param = s.param[k];
    d.grad = s.grad[k];
    d.numel = n;
    d.percentile_clipping = override;
    int idx;
    REQUIRE_OK(adamjit_optimizer_add_tensor(s.opt, &d, &idx));
  }
  return s;
}

static void small_free(adamjit_context* ctx, small_opt* s) {
  adamjit_optimizer_destroy(s->opt);
  for (int k = 0; k < 2; k++) {
    adamjit_mem_free(ctx, s->param[k]);
    adamjit_mem_free(ctx, s->grad[k]);
  }
}

/* Params and states of both tensors, concatenated, for bitwise comparison. */
static void small_snapshot(adamjit_context* ctx, small_opt* s, int64_t n, float* out /* 6n */) {
  for (int k = 0; k < 2; k++) {
    CHECK_OK(adamjit_mem_read(ctx, out + (3 * k) * n, s->param[k], 0, (size_t)n * 4));
    CHECK_OK(adamjit_optimizer_read_state(s->opt, k, ADAMJIT_STATE_EXP_AVG, out + (3 * k + 1) * n, n));
    CHECK_OK(adamjit_optimizer_read_state(s->opt, k, ADAMJIT_STATE_EXP_AVG_SQ, out + (3 * k + 2) * n, n));
  }
}

static void test_percentile_100_is_off(adamjit_context* ctx) {
  enum { N = 200, STEPS = 60, VARIANTS = 4 };
  float p0[N], g[N];
  test_rng rng = {12345};
  for (int i = 0; i < N; i++) p0[i] = (float)test_rng_uniform(&rng);
  /* [0]: no clipping anywhere (defaults); [1]: config 100 said explicitly; [2]: config 50
   * with both tensors overriding to 100; [3]: config 50 inherited, which must differ, or
   * the grads never had anything to clip and the test would prove nothing. */
  small_opt s[VARIANTS] = {small_make(ctx, 100, ADAMJIT_INHERIT, p0, N), small_make(ctx, 100, 100, p0, N),
                           small_make(ctx, 50, 100, p0, N), small_make(ctx, 50, ADAMJIT_INHERIT, p0, N)};
  for (int step = 0; step < STEPS; step++) {
    double norm = norm_of_step(step, 0.5);
    for (int i = 0; i < N; i++) g[i] = (float)(test_rng_uniform(&rng) * norm);
    for (int v = 0; v < VARIANTS; v++)
      for (int k = 0; k < 2; k++) REQUIRE_OK(adamjit_mem_write(ctx, s[v].grad[k], 0, g, sizeof g));
    for (int v = 0; v < VARIANTS; v++) CHECK_OK(adamjit_optimizer_step(s[v].opt, NULL));
  }
  float* snap = test_calloc((size_t)VARIANTS * 6 * N, sizeof(float));
  for (int v = 0; v < VARIANTS; v++) small_snapshot(ctx, &s[v], N, snap + (size_t)v * 6 * N);
  CHECK_MSG(memcmp(snap, snap + 6 * N, 6 * N * sizeof(float)) == 0, "config percentile 100 differs from no clipping");
  CHECK_MSG(memcmp(snap, snap + 2 * 6 * N, 6 * N * sizeof(float)) == 0,
            "tensor override 100 differs from no clipping");
  CHECK_MSG(memcmp(snap, snap + 3 * 6 * N, 6 * N * sizeof(float)) != 0, "percentile 50 never clipped");
  /* Off means no history is kept either. */
  uint64_t b0 = 0, b2 = 0, b3 = 0;
  CHECK_OK(adamjit_optimizer_state_bytes(s[0].opt, &b0));
  CHECK_OK(adamjit_optimizer_state_bytes(s[2].opt, &b2));
  CHECK_OK(adamjit_optimizer_state_bytes(s[3].opt, &b3));
  CHECK(b0 == 2 * 8 * N && b2 == b0 && b3 == b0 + 2 * 4 * CLIP_HISTORY);
  free(snap);
  for (int v = 0; v < VARIANTS; v++) small_free(ctx, &s[v]);
}

int main(void) {
  adamjit_context* ctx = test_cpu_context();
  const int percentiles[] = {5, 50, 0};
  for (size_t i = 0; i < sizeof percentiles / sizeof percentiles[0]; i++) run_percentile(ctx, percentiles[i]);
  test_percentile_100_is_off(ctx);
  test_nonfinite_first_steps(ctx);
  test_nonfinite_scattered(ctx, 5);
  adamjit_context_destroy(ctx);
  return test_finish("test_percentile_clipping");
}
