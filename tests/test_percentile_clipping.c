/* Percentile clipping (SPEC 4) against a scalar model: per tensor, a history of 100 float
 * squared gradient norms; sq = sum of g^2 over the finite elements, accumulated in double
 * and stored as float; at t == 1 every slot takes sq, later slot t % 100 does;
 * current = sqrtf(sq), clip = sqrtf(sorted_ascending(history)[percentile]),
 * scale = current > clip ? clip / current : 1, and g*scale (fp32) feeds m and v.
 *
 * 250 steps wrap the history twice. Gradient norms follow a slow wave with spikes and a
 * quiet phase, so clipping is active on some steps and inactive on others; the model
 * asserts both happened, so the comparison is not vacuous. */
#include <stdint.h>

#include "tests/harness.h"

enum { HISTORY = 100, N_STEPS = 250 };

/* ----------------------------------------------------------- bf16 (own code) */

/* Rounds to bfloat16, nearest even (values here are normal and far from overflow). */
static float bf16_round(double x) {
  if (x == 0.0) return 0.0f;
  int e;
  frexp(x, &e);
  return (float)ldexp(nearbyint(ldexp(x, 8 - e)), e - 8);
}

static uint16_t bf16_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return (uint16_t)(u >> 16); /* f is already a bf16 value: the low half is zero */
}

/* ---------------------------------------------------------------- the model */

typedef struct {
  float history[HISTORY];
  uint64_t t;
  int active, inactive; /* steps after the first where clipping did / did not scale */
} clip_model;

static int cmp_float(const void* a, const void* b) {
  float x = *(const float*)a, y = *(const float*)b;
  return (x > y) - (x < y);
}

/* SPEC 4 exactly as the library documents it; returns the gradient scale of this step. */
static float model_scale(clip_model* cm, const float* g, int64_t n, int percentile) {
  double sq = 0.0;
  for (int64_t i = 0; i < n; i++)
    if (isfinite(g[i])) sq += (double)g[i] * (double)g[i];
  const float sqf = (float)sq;
  cm->t++;
  if (cm->t == 1)
    for (int k = 0; k < HISTORY; k++) cm->history[k] = sqf;
  else
    cm->history[cm->t % HISTORY] = sqf;
  float sorted[HISTORY];
  memcpy(sorted, cm->history, sizeof sorted);
  qsort(sorted, HISTORY, sizeof sorted[0], cmp_float);
  const float current = sqrtf(sqf), clip = sqrtf(sorted[percentile]);
  const float scale = current > clip ? clip / current : 1.0f;
  if (cm->t > 1) {
    if (scale < 1.0f) cm->active++;
    else cm->inactive++;
  }
  return scale;
}

/* ------------------------------------------------- one tensor, both sides */

typedef struct {
  int64_t n;
  adamjit_dtype gd;    /* params are fp32 here; grads fp32 or bf16 */
  int percentile;      /* effective: 100 = off */
  int override_pct;    /* tensor descriptor value (ADAMJIT_INHERIT or a percentile) */
  int start;           /* optimizer step at which it is registered */
  double phase;        /* of its gradient-norm wave, so tensors have their own histories */
  int index;
  adamjit_mem param, grad;
  clip_model cm;
  uint64_t t;
  double *p, *m, *v, *gmax;
  float* g;            /* this step's grads as fp32 values */
  void* staging;
} clip_tensor;

static void* xcalloc(size_t n, size_t size) {
  void* p = calloc(n, size);
  if (!p) exit(2);
  return p;
}

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
  ct->p = xcalloc((size_t)n, sizeof(double));
  ct->m = xcalloc((size_t)n, sizeof(double));
  ct->v = xcalloc((size_t)n, sizeof(double));
  ct->gmax = xcalloc((size_t)n, sizeof(double));
  ct->g = xcalloc((size_t)n, sizeof(float));
  ct->staging = xcalloc((size_t)n, sizeof(float));
  REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)n * 4, &ct->param));
  REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)n * adamjit_dtype_size(gd), &ct->grad));
  float* p = ct->staging;
  for (int64_t i = 0; i < n; i++) {
    p[i] = (float)(test_rng_uniform(rng) * pow(10.0, (double)(i % 3) - 2.0));
    ct->p[i] = p[i];
  }
  REQUIRE_OK(adamjit_mem_write(ctx, ct->param, 0, p, (size_t)n * 4));
}

static void tensor_free(adamjit_context* ctx, clip_tensor* ct) {
  adamjit_mem_free(ctx, ct->param);
  adamjit_mem_free(ctx, ct->grad);
  free(ct->p);
  free(ct->m);
  free(ct->v);
  free(ct->gmax);
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

static void tensor_new_grads(adamjit_context* ctx, clip_tensor* ct, int step, test_rng* rng) {
  const double norm = norm_of_step(step, ct->phase) * (1.0 + 0.2 * test_rng_uniform(rng));
  for (int64_t i = 0; i < ct->n; i++) {
    double x = test_rng_uniform(rng) * norm * (i % 4 == 0 ? 0.1 : 1.0);
    if (ct->gd == ADAMJIT_BF16) {
      ct->g[i] = bf16_round(x);
      ((uint16_t*)ct->staging)[i] = bf16_bits(ct->g[i]);
    } else {
      ct->g[i] = (float)x;
      ((float*)ct->staging)[i] = ct->g[i];
    }
  }
  REQUIRE_OK(adamjit_mem_write(ctx, ct->grad, 0, ct->staging, (size_t)ct->n * adamjit_dtype_size(ct->gd)));
}

/* SPEC 2 in double on the scaled gradient; the scale and g*scale are fp32 as in SPEC 4. */
static void tensor_oracle_step(clip_tensor* ct, const adamjit_hparams* hp) {
  const float scale = ct->percentile < 100 ? model_scale(&ct->cm, ct->g, ct->n, ct->percentile) : 1.0f;
  const double b1 = hp->beta1, b2 = hp->beta2, lr = hp->lr, eps = hp->eps, wd = hp->weight_decay;
  ct->t++;
  const double c1 = 1.0 - pow(b1, (double)ct->t), c2 = 1.0 - pow(b2, (double)ct->t);
  for (int64_t i = 0; i < ct->n; i++) {
    const double g = (double)(ct->g[i] * scale);
    ct->m[i] = b1 * ct->m[i] + (1.0 - b1) * g;
    ct->v[i] = b2 * ct->v[i] + (1.0 - b2) * g * g;
    double p = ct->p[i] * (1.0 - lr * wd);
    p -= lr * (ct->m[i] / c1) / (sqrt(ct->v[i]) / sqrt(c2) + eps);
    ct->p[i] = (float)p;
    if (fabs(g) > ct->gmax[i]) ct->gmax[i] = fabs(g);
  }
}

/* Params: SPEC 7 (atol 1e-6, rtol 1e-5). The clip scale is computed from the same float
 * history with the same float operations, so it matches the library's to about 1 ulp (the
 * library may sum the double sq in another order, which can move the float sq by 1 ulp);
 * that relative error of ~1e-7 in g is far below rtol 1e-5 even compounded over 250 steps,
 * because m and v forget old steps geometrically and each step moves p by at most ~lr.
 * m and v: rtol 1e-5 plus 1e-6 of the element's largest scaled |g| (or its square), the
 * magnitude their fp32 rounding errors are relative to. */
static void tensor_compare(adamjit_context* ctx, adamjit_optimizer* opt, const clip_tensor* ct, const char* label) {
  float* got = xcalloc((size_t)ct->n, sizeof(float));
  CHECK_OK(adamjit_mem_read(ctx, got, ct->param, 0, (size_t)ct->n * 4));
  int bad = 0;
  for (int64_t i = 0; i < ct->n; i++) {
    double err = fabs(got[i] - ct->p[i]), allowed = 1e-6 + 1e-5 * fabs(ct->p[i]);
    if (!(err <= allowed) && bad++ < 3)
      CHECK_MSG(0, "%s p[%lld] = %.9g, model %.9g", label, (long long)i, (double)got[i], ct->p[i]);
  }
  const adamjit_state_kind kinds[2] = {ADAMJIT_STATE_EXP_AVG, ADAMJIT_STATE_EXP_AVG_SQ};
  for (int k = 0; k < 2; k++) {
    const double* ref = k == 0 ? ct->m : ct->v;
    CHECK_OK(adamjit_optimizer_read_state(opt, ct->index, kinds[k], got, ct->n));
    for (int64_t i = 0; i < ct->n; i++) {
      double scale = k == 0 ? ct->gmax[i] : ct->gmax[i] * ct->gmax[i];
      double err = fabs(got[i] - ref[i]), allowed = 1e-5 * fabs(ref[i]) + 1e-6 * scale;
      if (!(err <= allowed) && bad++ < 6)
        CHECK_MSG(0, "%s %s[%lld] = %.9g, model %.9g", label, k == 0 ? "m" : "v", (long long)i, (double)got[i],
                  ref[i]);
    }
  }
  if (bad > 6) CHECK_MSG(0, "%s: %d values off", label, bad);
  free(got);
}

/* ------------------------------------------------------------------- cases */

static adamjit_context* make_cpu_context(void) {
  adamjit_context_desc d;
  adamjit_context_desc_init_default(&d);
  d.backend = ADAMJIT_BACKEND_CPU;
  adamjit_context* ctx = NULL;
  REQUIRE_OK(adamjit_context_create(&d, &ctx));
  return ctx;
}

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
    CHECK(info.step == t[k].t);
    /* 8 bytes of m and v per element, plus the 100-float history where clipping is on. */
    CHECK(info.state_bytes == 8 * (uint64_t)t[k].n + (t[k].percentile < 100 ? 4 * HISTORY : 0));
    if (t[k].percentile < 100) {
      printf("%s: clipped on %d steps, not on %d\n", label, t[k].cm.active, t[k].cm.inactive);
      CHECK_MSG(t[k].cm.active > 0 && t[k].cm.inactive > 0, "%s: clipping active %d, inactive %d", label,
                t[k].cm.active, t[k].cm.inactive);
    }
    tensor_compare(ctx, opt, &t[k], label);
  }
  adamjit_optimizer_destroy(opt);
  for (int k = 0; k < N_TENSORS; k++) tensor_free(ctx, &t[k]);
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
  float* snap = xcalloc((size_t)VARIANTS * 6 * N, sizeof(float));
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
  CHECK(b0 == 2 * 8 * N && b2 == b0 && b3 == b0 + 2 * 4 * HISTORY);
  free(snap);
  for (int v = 0; v < VARIANTS; v++) small_free(ctx, &s[v]);
}

int main(void) {
  adamjit_context* ctx = make_cpu_context();
  const int percentiles[] = {5, 50, 0};
  for (size_t i = 0; i < sizeof percentiles / sizeof percentiles[0]; i++) run_percentile(ctx, percentiles[i]);
  test_percentile_100_is_off(ctx);
  adamjit_context_destroy(ctx);
  return test_finish("test_percentile_clipping");
}
