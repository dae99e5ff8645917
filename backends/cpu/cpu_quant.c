/* Blockwise quantize and dequantize on the CPU (the public adamjit_quantize_blockwise). */
#include "backends/cpu/cpu_kernels.h"
#include "backends/cpu/cpu_qsearch.h"

/* The first non-finite element of [b0, b1) (the block is known to have one). */
static __attribute__((noinline)) size_t first_nonfinite(const void* x, adamjit_dtype dt, size_t b0, size_t b1) {
  size_t i = b0;
  while (i < b1 && !nonfinite_bit(load(x, i, dt))) i++;
  return i;
}

static inline __attribute__((always_inline)) size_t quantize_block(const void* restrict x, adamjit_dtype dt,
                                                                   uint8_t* restrict codes, float* absmax_out,
                                                                   qview q, int use_table, size_t b0, size_t b1) {
  float mx = 0.0f;
  uint32_t bad = 0;
#pragma omp simd reduction(max : mx) reduction(| : bad)
  for (size_t i = b0; i < b1; i++) {
    float v = load(x, i, dt);
    float a = fabsf(v);
    mx = a > mx ? a : mx;
    bad |= nonfinite_bit(v);
  }
  if (bad) return first_nonfinite(x, dt, b0, b1);
  *absmax_out = mx;
  if (mx == 0.0f) {
    memset(codes + b0, nearest_code(q, 0.0f, use_table), b1 - b0);
    return b1;
  }
#pragma omp simd
  for (size_t i = b0; i < b1; i++) codes[i] = (uint8_t)nearest_code(q, load(x, i, dt) / mx, use_table);
  return b1;
}

#define AJ_QUANT_LOOP(DT, TABLE)                                                                                 \
  for (size_t b0 = begin; b0 < end; b0 += (size_t)block_size) {                                                  \
    size_t b1 = b0 + (size_t)block_size < end ? b0 + (size_t)block_size : end;                                   \
    size_t r = quantize_block(x, DT, codes, &absmax[b0 / (size_t)block_size], qview_of(q), TABLE, b0, b1);      \
    if (r != b1) return r;                                                                                       \
  }                                                                                                              \
  return end

/* always_inline: these must be compiled into each CPU clone of aj_cpu_quantize. */
static inline __attribute__((always_inline)) size_t quantize_table(const void* x, adamjit_dtype dtype,
                                                                   uint8_t* codes, float* absmax, int block_size,
                                                                   const aj_qmap* q, size_t begin, size_t end) {
  switch (dtype) {
    case ADAMJIT_F16: AJ_QUANT_LOOP(ADAMJIT_F16, 1);
    case ADAMJIT_BF16: AJ_QUANT_LOOP(ADAMJIT_BF16, 1);
    default: AJ_QUANT_LOOP(ADAMJIT_F32, 1);
  }
}

static inline __attribute__((always_inline)) size_t quantize_binary(const void* x, adamjit_dtype dtype,
                                                                    uint8_t* codes, float* absmax, int block_size,
                                                                    const aj_qmap* q, size_t begin, size_t end) {
  switch (dtype) {
    case ADAMJIT_F16: AJ_QUANT_LOOP(ADAMJIT_F16, 0);
    case ADAMJIT_BF16: AJ_QUANT_LOOP(ADAMJIT_BF16, 0);
    default: AJ_QUANT_LOOP(ADAMJIT_F32, 0);
  }
}

AJ_CPU_CLONES size_t aj_cpu_quantize(const void* x, adamjit_dtype dtype, uint8_t* codes, float* absmax,
                                     int block_size, const aj_qmap* q, int use_table, size_t begin, size_t end) {
  return use_table ? quantize_table(x, dtype, codes, absmax, block_size, q, begin, end)
                   : quantize_binary(x, dtype, codes, absmax, block_size, q, begin, end);
}

static inline __attribute__((always_inline)) void dequantize_loop(const uint8_t* codes, const float* absmax,
                                                                  void* out, adamjit_dtype dt, int block_size,
                                                                  const aj_qmap* q, size_t begin, size_t end) {
  const float* restrict values = q->values;
  int idx[4096]; /* codes widened: gcc gathers only through signed 32-bit indices */
  for (size_t b0 = begin; b0 < end; b0 += (size_t)block_size) {
    size_t n = b0 + (size_t)block_size < end ? (size_t)block_size : end - b0;
    float scale = absmax[b0 / (size_t)block_size];
#pragma omp simd
    for (size_t j = 0; j < n; j++) idx[j] = codes[b0 + j];
#pragma omp simd
    for (size_t j = 0; j < n; j++) store(out, b0 + j, dt, values[idx[j]] * scale);
  }
}

AJ_CPU_CLONES void aj_cpu_dequantize(const uint8_t* codes, const float* absmax, void* out, adamjit_dtype dtype,
                                     int block_size, const aj_qmap* q, size_t begin, size_t end) {
  switch (dtype) {
    case ADAMJIT_F16: dequantize_loop(codes, absmax, out, ADAMJIT_F16, block_size, q, begin, end); break;
    case ADAMJIT_BF16: dequantize_loop(codes, absmax, out, ADAMJIT_BF16, block_size, q, begin, end); break;
    default: dequantize_loop(codes, absmax, out, ADAMJIT_F32, block_size, q, begin, end); break;
  }
}
