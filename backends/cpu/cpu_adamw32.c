/* The CPU backend's element loops. Built with -O3 -fno-math-errno -fno-trapping-math so
 * that gcc vectorizes sqrtf and the selects; IEEE semantics are otherwise kept. Each dtype
 * and amsgrad combination gets its own loop (always_inline + constant arguments), so the
 * fp32 loop carries no conversion code and vectorizes cleanly. */
#include "backends/cpu/cpu_elem.h"
#include "backends/cpu/cpu_kernels.h"

static inline __attribute__((always_inline)) uint64_t adamw32_loop(const aj_cpu_adamw32_args* a, size_t begin,
                                                                   size_t end, adamjit_dtype pdt, adamjit_dtype gdt,
                                                                   int amsgrad) {
  /* Locals with restrict: the element arrays never overlap, and gcc must not reload the
   * pointers from *a after every store. */
  void* restrict param = a->param;
  const void* restrict grad = a->grad;
  float* restrict m = a->m;
  float* restrict v = a->v;
  float* restrict vmax = a->vmax;
  const float b1 = a->beta1, b2 = a->beta2, one_b1 = 1.0f - a->beta1, one_b2 = 1.0f - a->beta2;
  const float eps = a->eps, decay = a->decay, step_size = a->step_size, inv_sqrt_c2 = a->inv_sqrt_c2;
  const float scale = a->grad_scale;
  uint64_t nonfinite = 0;
#pragma omp simd reduction(+ : nonfinite)
  for (size_t i = begin; i < end; i++) {
    float graw = load(grad, i, gdt);
    uint32_t bad = nonfinite_bit(graw);
    uint32_t keep = 0u - bad;
    float g = graw * scale;
    float m0 = m[i], v0 = v[i];
    float m1 = b1 * m0 + one_b1 * g;
    float v1 = b2 * v0 + one_b2 * (g * g);
    float vu = v1;
    if (amsgrad) {
      float vm0 = vmax[i];
      vu = v1 > vm0 ? v1 : vm0;
      vmax[i] = select_f32(keep, vm0, vu);
    }
    float p0 = load(param, i, pdt);
    float p = p0 * decay;
    p = p - step_size * m1 / (sqrtf(vu) * inv_sqrt_c2 + eps);
    m[i] = select_f32(keep, m0, m1);
    v[i] = select_f32(keep, v0, v1);
    store_param(param, i, pdt, p, keep);
    nonfinite += (uint64_t)bad;
  }
  return nonfinite;
}

#define AJ_DISPATCH_AMSGRAD(P, G)                                                          \
  return a->vmax ? adamw32_loop(a, begin, end, P, G, 1) : adamw32_loop(a, begin, end, P, G, 0)
#define AJ_DISPATCH_GRAD(P)                                                   \
  switch (a->grad_dtype) {                                                    \
    case ADAMJIT_F32: AJ_DISPATCH_AMSGRAD(P, ADAMJIT_F32);                    \
    case ADAMJIT_F16: AJ_DISPATCH_AMSGRAD(P, ADAMJIT_F16);                    \
    case ADAMJIT_BF16: AJ_DISPATCH_AMSGRAD(P, ADAMJIT_BF16);                  \
  }                                                                           \
  break

AJ_CPU_CLONES uint64_t aj_cpu_adamw32(const aj_cpu_adamw32_args* a, size_t begin, size_t end) {
  switch (a->param_dtype) {
    case ADAMJIT_F32: AJ_DISPATCH_GRAD(ADAMJIT_F32);
    case ADAMJIT_F16: AJ_DISPATCH_GRAD(ADAMJIT_F16);
    case ADAMJIT_BF16: AJ_DISPATCH_GRAD(ADAMJIT_BF16);
  }
  return 0; /* dtypes are validated at registration */
}

static inline __attribute__((always_inline)) double sumsq_loop(const void* grad, adamjit_dtype dt, size_t begin,
                                                               size_t end, uint64_t* nonfinite) {
  double s = 0.0;
  uint64_t bad_count = 0;
#pragma omp simd reduction(+ : s, bad_count)
  for (size_t i = begin; i < end; i++) {
    float g = load(grad, i, dt);
    uint32_t bad = nonfinite_bit(g);
    double d = (double)select_f32(0u - bad, 0.0f, g);
    s += d * d;
    bad_count += bad;
  }
  *nonfinite = bad_count;
  return s;
}

AJ_CPU_CLONES double aj_cpu_grad_sumsq(const void* grad, adamjit_dtype dtype, size_t begin, size_t end,
                                       uint64_t* nonfinite) {
  switch (dtype) {
    case ADAMJIT_F32: return sumsq_loop(grad, ADAMJIT_F32, begin, end, nonfinite);
    case ADAMJIT_F16: return sumsq_loop(grad, ADAMJIT_F16, begin, end, nonfinite);
    case ADAMJIT_BF16: return sumsq_loop(grad, ADAMJIT_BF16, begin, end, nonfinite);
  }
  *nonfinite = 0;
  return 0.0;
}
