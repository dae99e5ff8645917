/* The check every tuning candidate passes before it is timed (tools/tune.h): the same
 * tensor, initial params and gradients as a CPU-backend reference, stepped a few times,
 * then params, m, v (and vmax) and the non-finite counts compared within SPEC 7. */
#include "tune.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

enum { DATA_SEED = 7, NONFINITE_EVERY = 9973 };

/* ------------------------------------------------------------------ host dtypes */

static uint16_t f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* NaN stays NaN */
  x += 0x7fffu + ((x >> 16) & 1u); /* round to nearest even, as the library stores bf16 */
  return (uint16_t)(x >> 16);
}

static uint16_t f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  const uint32_t mag = x & 0x7fffffffu;
  if (mag >= 0x7f800000u) return sign | (mag > 0x7f800000u ? 0x7e00u : 0x7c00u);
  if (mag >= 0x477ff000u) return sign | 0x7c00u; /* rounds to >= 65520: Inf */
  if (mag < 0x38800000u) {                       /* below 2^-14: a subnormal half */
    float v;
    memcpy(&v, &mag, sizeof v);
    return sign | (uint16_t)lrintf(v * 16777216.0f); /* units of 2^-24, nearest even */
  }
  const uint32_t e = mag - 0x38000000u; /* exponent rebiased from 127 to 15 */
  return sign | (uint16_t)((e + 0xfffu + ((e >> 13) & 1u)) >> 13);
}

static float f16_to_f32(uint16_t h) {
  const int exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  float v;
  if (exp == 0)
    v = ldexpf((float)man, -24);
  else if (exp == 31)
    v = man ? NAN : INFINITY;
  else
    v = ldexpf((float)(man | 0x400), exp - 25);
  return h & 0x8000u ? -v : v;
}

static void put(adamjit_dtype dt, void* buf, int64_t i, float x) {
  if (dt == ADAMJIT_F32)
    ((float*)buf)[i] = x;
  else
    ((uint16_t*)buf)[i] = dt == ADAMJIT_BF16 ? f32_to_bf16(x) : f32_to_f16(x);
}

static float get(adamjit_dtype dt, const void* buf, int64_t i) {
  if (dt == ADAMJIT_F32) return ((const float*)buf)[i];
  uint16_t h = ((const uint16_t*)buf)[i];
  if (dt == ADAMJIT_F16) return f16_to_f32(h);
  uint32_t x = (uint32_t)h << 16;
  float f;
  memcpy(&f, &x, sizeof f);
  return f;
}

/* Relative spacing of dt's values: one rounding of a stored param. */
static double dtype_ulp(adamjit_dtype dt) {
  switch (dt) {
    case ADAMJIT_BF16: return 0x1p-7;
    case ADAMJIT_F16: return 0x1p-10;
    default: return 0.0;
  }
}

static void fill(void* dst, adamjit_dtype dt, int64_t n, uint64_t stream, double scale, int nonfinite) {
  rng r = rng_stream(DATA_SEED, stream);
  for (int64_t i = 0; i < n; i++) {
    float x = (float)(scale * (2.0 * rng_uniform(&r) - 1.0));
    if (nonfinite && i % NONFINITE_EVERY == 3) x = (i / NONFINITE_EVERY) % 2 ? NAN : INFINITY;
    put(dt, dst, i, x);
  }
}

/* ------------------------------------------------------------------ reference */

void tune_config(const cli_variant* v, adamjit_optimizer_config* cfg) {
  cli_variant_config(v, cfg);
  cfg->hparams.lr = 1e-2f;
  cfg->hparams.weight_decay = 0.05f;
}

adamjit_status tune_optimizer_open(adamjit_context* ctx, const cli_variant* v, adamjit_mem param, adamjit_mem grad,
                                   int64_t n, adamjit_dtype p, adamjit_dtype g, adamjit_optimizer** out) {
  adamjit_optimizer_config cfg;
  tune_config(v, &cfg);
  *out = NULL;
  adamjit_optimizer* opt = NULL;
  adamjit_status st = adamjit_optimizer_create(ctx, &cfg, &opt);
  if (st != ADAMJIT_OK) return st;
  adamjit_tensor_desc d;
  adamjit_tensor_desc_init_default(&d);
  d.param = param;
  d.grad = grad;
  d.numel = n;
  d.param_dtype = p;
  d.grad_dtype = g;
  d.name = "tune";
  int index = -1;
  st = adamjit_optimizer_add_tensor(opt, &d, &index);
  if (st != ADAMJIT_OK) {
    adamjit_optimizer_destroy(opt);
    return st;
  }
  *out = opt;
  return ADAMJIT_OK;
}

void tune_reference_free(tune_reference* r) {
  free(r->init);
  free(r->params);
  for (int s = 0; s < TUNE_CHECK_STEPS; s++) free(r->grads[s]);
  for (int k = 0; k < 3; k++) free(r->state[k]);
  memset(r, 0, sizeof *r);
}

adamjit_status tune_reference_steps(const tune_reference* r, adamjit_context* ctx, adamjit_optimizer* opt,
                                    adamjit_mem param, adamjit_mem grad, uint64_t nonfinite[TUNE_CHECK_STEPS]) {
  adamjit_status st = adamjit_mem_write(ctx, param, 0, r->init, (size_t)r->n * adamjit_dtype_size(r->p));
  for (int s = 0; s < TUNE_CHECK_STEPS && st == ADAMJIT_OK; s++) {
    st = adamjit_mem_write(ctx, grad, 0, r->grads[s], (size_t)r->n * adamjit_dtype_size(r->g));
    if (st == ADAMJIT_OK) st = adamjit_optimizer_step(opt, &nonfinite[s]);
  }
  return st;
}

static int state_count(const tune_reference* r) { return r->variant->amsgrad ? 3 : 2; }

static const adamjit_state_kind state_kinds[3] = {ADAMJIT_STATE_EXP_AVG, ADAMJIT_STATE_EXP_AVG_SQ,
                                                  ADAMJIT_STATE_MAX_EXP_AVG_SQ};
static const char* const state_names[3] = {"m", "v", "vmax"};

int tune_reference_make(tune_reference* r, adamjit_context* cpu, const cli_variant* v, int64_t n, adamjit_dtype p,
                        adamjit_dtype g) {
  memset(r, 0, sizeof *r);
  r->variant = v;
  r->n = n;
  r->p = p;
  r->g = g;
  const size_t pb = (size_t)n * adamjit_dtype_size(p), gb = (size_t)n * adamjit_dtype_size(g);
  int ok = (r->init = malloc(pb)) && (r->params = malloc(pb));
  for (int s = 0; s < TUNE_CHECK_STEPS && ok; s++) ok = (r->grads[s] = malloc(gb)) != NULL;
  for (int k = 0; k < state_count(r) && ok; k++) ok = (r->state[k] = malloc((size_t)n * sizeof(float))) != NULL;
  if (!ok) {
    tune_reference_free(r);
    return !cli_error("tune: out of host memory for a reference of %lld elements (lower --max-elements)",
                      (long long)n);
  }
  fill(r->init, p, n, 1, 1.0, 0);
  for (int s = 0; s < TUNE_CHECK_STEPS; s++) fill(r->grads[s], g, n, 10 + (uint64_t)s, 0.05 * (1 + s), s == 1);

  adamjit_mem param = NULL, grad = NULL;
  adamjit_optimizer* opt = NULL;
  adamjit_status st = adamjit_mem_alloc(cpu, pb, &param);
  if (st == ADAMJIT_OK) st = adamjit_mem_alloc(cpu, gb, &grad);
  if (st == ADAMJIT_OK) st = tune_optimizer_open(cpu, v, param, grad, n, p, g, &opt);
  if (st == ADAMJIT_OK) st = tune_reference_steps(r, cpu, opt, param, grad, r->nonfinite);
  if (st == ADAMJIT_OK) st = adamjit_mem_read(cpu, r->params, param, 0, pb);
  for (int k = 0; k < state_count(r) && st == ADAMJIT_OK; k++)
    st = adamjit_optimizer_read_state(opt, 0, state_kinds[k], r->state[k], n);
  adamjit_tensor_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  if (st == ADAMJIT_OK) st = adamjit_optimizer_tensor_info(opt, 0, &info);
  r->state_bits = info.state_bits;
  adamjit_optimizer_destroy(opt);
  adamjit_mem_free(cpu, param);
  adamjit_mem_free(cpu, grad);
  if (st != ADAMJIT_OK) {
    tune_reference_free(r);
    return !cli_library_error(cpu, st, "tune: the CPU reference (%s, %lld elements)", v->name, (long long)n);
  }
  return 1;
}

/* ------------------------------------------------------------------ comparison */

const char* tune_reference_rule(void) {
  return "SPEC 7 against the CPU backend after 3 steps: fp32 values within 2 ulp of relative error per step "
         "(relative to the larger value, or 1e-3 of the array's largest), f16/bf16 params one unit of their "
         "last place more; with 8-bit state codes may differ at rounding midpoints, so up to 0.1% of the "
         "elements + 4 may differ, but no param the reference moved may stay unchanged; non-finite counts equal";
}

/* Mismatches of b against the reference a (n values of dtype dt); the first goes to why. */
static int64_t compare_values(const char* what, const void* a, const void* b, adamjit_dtype dt, int64_t n,
                              double rtol, int64_t allowed, char* why, size_t size) {
  double scale = 0.0;
  for (int64_t i = 0; i < n; i++) {
    double x = fabs((double)get(dt, a, i));
    if (isfinite(x) && x > scale) scale = x;
  }
  const double least = 1e-3 * scale;
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < n; i++) {
    const double x = get(dt, a, i), y = get(dt, b, i);
    int same;
    if (isnan(x) || isnan(y))
      same = isnan(x) && isnan(y);
    else
      same = x == y || fabs(x - y) <= rtol * fmax(fmax(fabs(x), fabs(y)), least);
    if (!same && bad++ == 0) first = i;
  }
  if (bad > allowed)
    snprintf(why, size,
             "%s differs from the CPU reference at %lld of %lld elements (first [%lld]: cpu %.9g, here %.9g)", what, (long long)bad, (long long)n, (long long)first, (double)get(dt, a, first),
             (double)get(dt, b, first));
  return bad > allowed ? bad : 0;
}

/* Params the candidate left at their initial value where the reference moved them by more
 * than the tolerance: a kernel that skips elements (a tail its launch geometry does not
 * cover) could otherwise hide in the 8-bit allowance for rounding midpoints. */
static int64_t untouched(const tune_reference* r, const void* params, double rtol, char* why, size_t size) {
  int64_t count = 0, first = -1;
  for (int64_t i = 0; i < r->n; i++) {
    const double x0 = get(r->p, r->init, i), a = get(r->p, r->params, i), b = get(r->p, params, i);
    if (b == x0 && fabs(a - x0) > rtol * fmax(fabs(a), fabs(x0)) && count++ == 0) first = i;
  }
  if (count)
    snprintf(why, size, "%lld params were left unchanged where the CPU reference updated them (first [%lld]: %.9g)",
             (long long)count, (long long)first, (double)get(r->p, r->init, first));
  return count;
}

int tune_reference_compare(const tune_reference* r, adamjit_context* ctx, adamjit_optimizer* opt, adamjit_mem param,
                           const uint64_t nonfinite[TUNE_CHECK_STEPS], char* why, size_t size) {
  for (int s = 0; s < TUNE_CHECK_STEPS; s++)
    if (nonfinite[s] != r->nonfinite[s]) {
      snprintf(why, size, "step %d counted %llu non-finite gradients, the CPU reference %llu", s + 1,
               (unsigned long long)nonfinite[s], (unsigned long long)r->nonfinite[s]);
      return 0;
    }
  const size_t pb = (size_t)r->n * adamjit_dtype_size(r->p);
  void* params = malloc(pb);
  float* state = malloc((size_t)r->n * sizeof(float));
  if (!params || !state) {
    free(params);
    free(state);
    snprintf(why, size, "out of host memory");
    return -1;
  }
  const double rtol = 2.0 * TUNE_CHECK_STEPS * FLT_EPSILON;
  const int64_t allowed = r->state_bits == 8 ? r->n / 1000 + 4 : 0;
  int result = 1;
  adamjit_status st = adamjit_mem_read(ctx, params, param, 0, pb);
  if (st != ADAMJIT_OK) {
    snprintf(why, size, "reading the params: %s: %s", adamjit_status_string(st), adamjit_context_last_error(ctx));
    result = -1;
  } else if (untouched(r, params, rtol + dtype_ulp(r->p), why, size) ||
             compare_values("param", r->params, params, r->p, r->n, rtol + dtype_ulp(r->p), allowed, why, size)) {
    result = 0;
  }
  for (int k = 0; k < state_count(r) && result == 1; k++) {
    st = adamjit_optimizer_read_state(opt, 0, state_kinds[k], state, r->n);
    if (st != ADAMJIT_OK) {
      snprintf(why, size, "reading %s: %s: %s", state_names[k], adamjit_status_string(st),
               adamjit_context_last_error(ctx));
      result = -1;
    } else if (compare_values(state_names[k], r->state[k], state, ADAMJIT_F32, r->n, rtol, allowed, why, size)) {
      result = 0;
    }
  }
  free(params);
  free(state);
  return result;
}
