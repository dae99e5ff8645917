/* The CPU backend's two forms of the 8-bit blockwise step give bit-identical results: the
 * AVX-512 form that aj_cpu_adamw8 runs on CPUs with AVX-512 F/BW/DQ/VL/VBMI, and the
 * portable loops (aj_cpu_adamw8_portable), called directly on two copies of the same state.
 *
 * Every block size 64..4096 and block_wise = 0 (one absmax per tensor, from the absmax pass),
 * every param and gradient dtype pair, with and without amsgrad, each with tensor lengths
 * whose last block or chunk is short (a multiple of 64 or not), in ranges that start past 0
 * as the backend's chunks do. The inputs reach the corners: random codes under random absmax
 * values (all 256 codes of both maps get dequantized), absmax 0, subnormal, huge, +Inf and
 * NaN (NaN moments, whose codes go through the signed map's sign handling), gradients that
 * are NaN (signalling ones too) or +-Inf, zero, subnormal or huge enough to overflow v,
 * params that are NaN (signalling ones too), +-Inf, subnormal or beyond the fp16 range, a
 * gradient scale of 1 or not. After each of three steps the params, codes, absmax values and
 * the non-finite counts must agree exactly.
 *
 * Skipped (exit 77) where the AVX-512 form does not run: a CPU without AVX-512 VBMI, or
 * ADAMJIT_CPU_AVX512=0 in the environment (both calls would run the portable loops). Fails
 * where the CPU has the extensions but the form's set-up check turned it off. */
#include <stdint.h>

#include "backends/cpu/cpu_kernels.h"
#include "core/qmap.h"
#include "tests/harness.h"

enum { STEPS = 3, CHUNK = 4096 * 3 };

typedef struct {
  void* param;
  void* grad;
  uint8_t* codes[3];
  float* absmax[3];
} state;

static size_t dtype_size(adamjit_dtype dt) { return dt == ADAMJIT_F32 ? 4 : 2; }

static float u2f_(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* A float of random sign and magnitude spread over decades, now and then a special one. */
static float random_value(test_rng* r, double scale) {
  unsigned long long z = test_rng_next(r);
  switch (z % 64) {
    case 0: return NAN;
    case 1: return INFINITY;
    case 2: return -INFINITY;
    case 3: return 0.0f;
    case 4: return -0.0f;
    case 5: return u2f_((uint32_t)(test_rng_next(r) & 0x807fffffu)); /* subnormal */
    case 6: return (float)(scale * 1e30);
    case 7: return u2f_(0x7f800001u | (uint32_t)(z >> 32 & 0x80000000u)); /* signalling NaN */
    default: break;
  }
  double mag = scale * pow(10.0, -4.0 * (0.5 * (test_rng_uniform(r) + 1.0)));
  return (float)(test_rng_uniform(r) < 0 ? -mag : mag);
}

static uint16_t to_half(float f, adamjit_dtype dt) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  int nan = (x & 0x7fffffffu) > 0x7f800000u;
  /* truncating is enough here (any bit pattern is a valid input), but a NaN stays a NaN,
   * signalling ones included */
  if (dt == ADAMJIT_BF16) return (uint16_t)((x >> 16) | (uint32_t)(nan && !(x & 0x7f0000u)));
  uint32_t sign = (x >> 16) & 0x8000u, e = (x >> 23) & 0xffu, m = x & 0x7fffffu;
  if (e == 0xff) return (uint16_t)(sign | 0x7c00u | (nan ? (m >> 13) | 1u : 0u));
  int he = (int)e - 127 + 15;
  if (he >= 31) return (uint16_t)(sign | 0x7c00u);
  if (he <= 0) return (uint16_t)(sign | (he > -10 ? (0x400u | (m >> 13)) >> (1 - he) : 0u));
  return (uint16_t)(sign | ((uint32_t)he << 10) | (m >> 13));
}

static void fill(void* base, adamjit_dtype dt, size_t n, test_rng* r, double scale) {
  for (size_t i = 0; i < n; i++) {
    float f = random_value(r, scale);
    if (dt == ADAMJIT_F32)
      ((float*)base)[i] = f;
    else
      ((uint16_t*)base)[i] = to_half(f, dt);
  }
}

static state state_new(size_t n, size_t blocks, adamjit_dtype pdt, adamjit_dtype gdt) {
  state s;
  s.param = test_calloc(n, dtype_size(pdt));
  s.grad = test_calloc(n, dtype_size(gdt));
  for (int k = 0; k < 3; k++) {
    s.codes[k] = test_calloc(n, 1);
    s.absmax[k] = test_calloc(blocks, sizeof(float));
  }
  return s;
}

static void state_copy(state* dst, const state* src, size_t n, size_t blocks, adamjit_dtype pdt,
                       adamjit_dtype gdt) {
  memcpy(dst->param, src->param, n * dtype_size(pdt));
  memcpy(dst->grad, src->grad, n * dtype_size(gdt));
  for (int k = 0; k < 3; k++) {
    memcpy(dst->codes[k], src->codes[k], n);
    memcpy(dst->absmax[k], src->absmax[k], blocks * sizeof(float));
  }
}

static void state_free(state* s) {
  free(s->param);
  free(s->grad);
  for (int k = 0; k < 3; k++) {
    free(s->codes[k]);
    free(s->absmax[k]);
  }
}

static aj_cpu_adamw8_args args_of(state* s, adamjit_dtype pdt, adamjit_dtype gdt, int amsgrad, int block,
                                  int block_wise, test_rng* r) {
  aj_cpu_adamw8_args a;
  memset(&a, 0, sizeof a);
  a.param = s->param;
  a.grad = s->grad;
  a.param_dtype = pdt;
  a.grad_dtype = gdt;
  a.c1 = s->codes[0];
  a.c2 = s->codes[1];
  a.c3 = amsgrad ? s->codes[2] : NULL;
  a.absmax1 = s->absmax[0];
  a.absmax2 = s->absmax[1];
  a.absmax3 = s->absmax[2];
  a.q1 = aj_qmap_builtin(1);
  a.q2 = aj_qmap_builtin(0);
  a.block_size = block;
  a.block_wise = block_wise;
  a.use_table = 1;
  a.beta1 = (float)(0.5 + 0.49 * test_rng_uniform(r));
  a.beta2 = (float)(0.99 + 0.0099 * test_rng_uniform(r));
  a.eps = 1e-8f;
  a.decay = 1.0f - 1e-5f;
  a.step_size = (float)(1e-3 * (1.5 + test_rng_uniform(r)));
  a.inv_sqrt_c2 = (float)(1.0 + 3.0 * (test_rng_uniform(r) + 1.0));
  a.grad_scale = test_rng_uniform(r) < 0 ? 1.0f : (float)(0.5 + 0.4 * test_rng_uniform(r));
  return a;
}

/* The backend's order of calls: block_wise = 0 first takes the tensor's new absmax over
 * every chunk, each chunk is updated against it, then it replaces the old one. */
static uint64_t run_step(aj_cpu_adamw8_args* a, size_t n, int portable) {
  if (!a->block_wise) {
    float mx[3] = {0.0f, 0.0f, 0.0f};
    for (size_t b = 0; b < n; b += CHUNK) {
      float part[3];
      aj_cpu_adamw8_absmax(a, b, b + CHUNK < n ? b + CHUNK : n, part);
      for (int k = 0; k < 3; k++) mx[k] = part[k] > mx[k] ? part[k] : mx[k];
    }
    memcpy(a->new_absmax, mx, sizeof mx);
  }
  uint64_t bad = 0;
  for (size_t b = 0; b < n; b += CHUNK) {
    size_t e = b + CHUNK < n ? b + CHUNK : n;
    bad += portable ? aj_cpu_adamw8_portable(a, b, e) : aj_cpu_adamw8(a, b, e);
  }
  if (!a->block_wise) {
    a->absmax1[0] = a->new_absmax[0];
    a->absmax2[0] = a->new_absmax[1];
    if (a->c3) a->absmax3[0] = a->new_absmax[2];
  }
  return bad;
}

/* Random codes under random absmax values, some of them 0, subnormal, huge, +Inf or NaN. */
static void random_state(state* s, size_t n, size_t blocks, test_rng* r) {
  static const float special[] = {0.0f, 1e-40f, 1e30f, INFINITY, NAN, 1.0f};
  for (int k = 0; k < 3; k++) {
    for (size_t i = 0; i < n; i++) s->codes[k][i] = (uint8_t)test_rng_next(r);
    for (size_t b = 0; b < blocks; b++) {
      unsigned long long z = test_rng_next(r) % 40;
      s->absmax[k][b] = z < 6 ? special[z] : (float)(0.1 * (1.5 + test_rng_uniform(r)));
    }
  }
}

static int compare(const state* x, const state* y, size_t n, size_t blocks, adamjit_dtype pdt, int amsgrad,
                   const char* what) {
  int same = memcmp(x->param, y->param, n * dtype_size(pdt)) == 0;
  for (int k = 0; k < 2 + amsgrad; k++) {
    same &= memcmp(x->codes[k], y->codes[k], n) == 0;
    same &= memcmp(x->absmax[k], y->absmax[k], blocks * sizeof(float)) == 0;
  }
  if (!same) {
    for (size_t i = 0; i < n; i++) {
      int pd = memcmp((const char*)x->param + i * dtype_size(pdt), (const char*)y->param + i * dtype_size(pdt),
                      dtype_size(pdt)) != 0;
      if (pd || x->codes[0][i] != y->codes[0][i] || x->codes[1][i] != y->codes[1][i] ||
          (amsgrad && x->codes[2][i] != y->codes[2][i])) {
        fprintf(stderr, "%s: first difference at element %zu (param %s, codes %d/%d, %d/%d, %d/%d)\n", what, i,
                pd ? "differs" : "same", x->codes[0][i], y->codes[0][i], x->codes[1][i], y->codes[1][i],
                x->codes[2][i], y->codes[2][i]);
        break;
      }
    }
  }
  return same;
}

static const char* dtype_name(adamjit_dtype dt) {
  return dt == ADAMJIT_F32 ? "f32" : dt == ADAMJIT_F16 ? "f16" : "bf16";
}

int main(void) {
  const char* env = getenv("ADAMJIT_CPU_AVX512");
  int capable = 0;
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__) /* where the library builds the form */
  capable = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
            __builtin_cpu_supports("avx512vbmi") && !(env && strcmp(env, "0") == 0);
#endif
  (void)env;
  if (!aj_cpu_adamw8_avx512_active()) {
    if (capable) { /* the CPU can, so the set-up's own check of its tables failed */
      printf("test_cpu_adamw8_paths: FAILED: the CPU has AVX-512 VBMI but the AVX-512 form turned itself off "
             "(its requantize tables disagree with the portable search)\n");
      return 1;
    }
    printf("test_cpu_adamw8_paths: skipped (the AVX-512 form does not run here: no AVX-512 VBMI, or ADAMJIT_CPU_AVX512=0)\n");
    return TEST_SKIP_CODE;
  }
  static const adamjit_dtype dts[3] = {ADAMJIT_F32, ADAMJIT_F16, ADAMJIT_BF16};
  static const size_t lengths[] = {4096 * 5 + 77, 64 * 3 + 1, 4096 * 4, 333, 4096 * 2 + 128, 4096 + 64 * 5};
  test_rng r = {0x8badf00dULL};
  int configs = 0;
  for (int bw = 1; bw >= 0; bw--) {
    for (int block = 64; block <= (bw ? 4096 : 64); block *= 2) {
      for (int pi = 0; pi < 3; pi++) {
        for (int gi = 0; gi < 3; gi++) {
          for (int ams_len = 0; ams_len < 2 * (int)(sizeof lengths / sizeof lengths[0]); ams_len++) {
            int amsgrad = ams_len & 1;
            adamjit_dtype pdt = dts[pi], gdt = dts[gi];
            size_t n = lengths[ams_len / 2];
            size_t blocks = bw ? (n + (size_t)block - 1) / (size_t)block : 1;
            state s = state_new(n, blocks, pdt, gdt), t = state_new(n, blocks, pdt, gdt);
            fill(s.param, pdt, n, &r, 1.0);
            random_state(&s, n, blocks, &r);
            char what[160];
            snprintf(what, sizeof what, "block %d%s, param %s, grad %s%s, n %zu", block, bw ? "" : " (block_wise 0)",
                     dtype_name(pdt), dtype_name(gdt), amsgrad ? ", amsgrad" : "", n);
            for (int step = 0; step < STEPS; step++) {
              /* gradients of small, medium and (rarely) overflowing size */
              fill(s.grad, gdt, n, &r, step == 2 ? 1e18 : 0.01);
              state_copy(&t, &s, n, blocks, pdt, gdt);
              test_rng hr = {r.s}; /* the same hyperparameters for both */
              aj_cpu_adamw8_args as = args_of(&s, pdt, gdt, amsgrad, block, bw, &hr);
              hr.s = r.s;
              aj_cpu_adamw8_args at = args_of(&t, pdt, gdt, amsgrad, block, bw, &hr);
              test_rng_next(&r);
              uint64_t bad_s = run_step(&as, n, 0), bad_t = run_step(&at, n, 1);
              CHECK_MSG(bad_s == bad_t, "%s, step %d: %llu vs %llu non-finite", what, step, (unsigned long long)bad_s,
                        (unsigned long long)bad_t);
              CHECK_MSG(compare(&s, &t, n, blocks, pdt, amsgrad, what), "%s, step %d: results differ", what, step);
            }
            state_free(&s);
            state_free(&t);
            configs++;
          }
        }
      }
    }
  }
  printf("compared %d configurations over %d steps each\n", configs, STEPS);
  return test_finish("test_cpu_adamw8_paths");
}
