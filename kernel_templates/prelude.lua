-- The dialect prelude: rendered before every kernel body (jit/render.c concatenates the two
-- renders, with the same params), it gives the bodies one vocabulary for OpenCL C and CUDA C
-- so that each body is written once:
--   KERNEL GLOBAL LOCAL RESTRICT DEVICE_FN       qualifiers (LOCAL: work-group shared memory)
--   LOCAL_PTR                                   address space of a pointer to LOCAL memory
--   AJ_SQRT                                     IEEE fp32 square root
--   GLOBAL_ID LOCAL_ID GROUP_ID LOCAL_SIZE BARRIER  indexing and the work-group barrier
--   NUM_GROUPS                                  work-groups in the launch (grid-stride loops)
--   ATOMIC_ADD_U32(ptr, v)                      32-bit unsigned atomic add on global memory
--   aj_u8 aj_u16 aj_u32 aj_size                 integer types (aj_size is 64-bit: indices)
--   aj_f32_t aj_f16_t aj_bf16_t                 storage types of the three dtypes
--   aj_load_<dt>(ptr, i) -> float, aj_store_<dt>(ptr, i, float)   dt = f32 | f16 | bf16
--   aj_store_if_<dt>(ptr, i, ok, float)         stores where ok, else leaves the element's
--                                               bits as they were by writing them back (an
--                                               unconditional store: a CPU device (PoCL)
--                                               vectorizes a conditional one into a masked
--                                               store, several times slower there); OpenCL
--                                               f16 has no raw access and stores if ok
--   aj_abs(float)                               |x| by clearing the sign bit
--   aj_isfinite(float) aj_isnan(float)          by the exponent bits (immune to fast-math)
--   aj_nearest(thr, x)                          8-bit code nearest to x: binary search over
--                                               the 255 ascending midpoints of a map; a tie
--                                               goes to the upper code, as in the CPU backend
--                                               (backends/cpu/cpu_qsearch.h), so codes agree
--                                               bit for bit there too
-- All arithmetic is fp32. fp16: OpenCL uses vload_half/vstore_half_rte (core OpenCL, no
-- cl_khr_fp16 needed: PoCL here lacks it); CUDA converts the bits by hand (no cuda_fp16.h,
-- so NVRTC needs no include path). bf16: bit manipulation with round-to-nearest-even in both
-- dialects; a NaN stays a (quiet) NaN.
local d = params.dialect
local V
if d == "opencl" then
  V = {
    header = "/* OpenCL C 1.2 */\n#pragma OPENCL FP_CONTRACT OFF\n",
    KERNEL = "__kernel", GLOBAL = "__global", LOCAL = "__local", RESTRICT = "restrict",
    DEVICE_FN = "static inline",
    GLOBAL_ID = "((aj_size)get_global_id(0))", LOCAL_ID = "((int)get_local_id(0))",
    GROUP_ID = "((aj_size)get_group_id(0))", LOCAL_SIZE = "((int)get_local_size(0))",
    NUM_GROUPS = "((aj_size)get_num_groups(0))",
    BARRIER = "barrier(CLK_LOCAL_MEM_FENCE)",
    ATOMIC = "atomic_add((volatile __global uint*)(ptr), (v))", SQRT = "sqrt", LOCAL_PTR = "__local",
    types = "typedef uchar aj_u8;\ntypedef ushort aj_u16;\ntypedef uint aj_u32;\ntypedef ulong aj_size;\n" ..
            "typedef float aj_f32_t;\ntypedef half aj_f16_t;\ntypedef ushort aj_bf16_t;\n",
    as_uint = "as_uint", as_float = "as_float",
  }
elseif d == "cuda" then
  V = {
    -- fmad contraction cannot be switched off from the source in CUDA: the compile driver
    -- passes --fmad=false where results must match the CPU backend bit for bit.
    -- The prelude defines helpers that only some kernels call (#177 "declared but never
    -- referenced"), and flags leave some locals set but unread (#550): silenced, so that a
    -- compile log shows only what matters.
    header = "/* CUDA C++ (NVRTC) */\n#pragma nv_diag_suppress 177\n#pragma nv_diag_suppress 550\n",
    KERNEL = "extern \"C\" __global__", GLOBAL = "", LOCAL = "__shared__", RESTRICT = "__restrict__",
    DEVICE_FN = "static __device__ __forceinline__",
    GLOBAL_ID = "((aj_size)blockIdx.x * (aj_size)blockDim.x + (aj_size)threadIdx.x)",
    LOCAL_ID = "((int)threadIdx.x)", GROUP_ID = "((aj_size)blockIdx.x)", LOCAL_SIZE = "((int)blockDim.x)",
    NUM_GROUPS = "((aj_size)gridDim.x)",
    BARRIER = "__syncthreads()",
    ATOMIC = "atomicAdd((ptr), (v))", SQRT = "sqrtf", LOCAL_PTR = "",
    types = "typedef unsigned char aj_u8;\ntypedef unsigned short aj_u16;\ntypedef unsigned int aj_u32;\n" ..
            "typedef unsigned long long aj_size;\n" ..
            "typedef float aj_f32_t;\ntypedef unsigned short aj_f16_t;\ntypedef unsigned short aj_bf16_t;\n",
    as_uint = "__float_as_uint", as_float = "__uint_as_float",
  }
else
  error("prelude: unknown dialect '" .. tostring(d) .. "'")
end

emit(V.header)
emitf([==[
#define KERNEL ${KERNEL}
#define GLOBAL ${GLOBAL}
#define LOCAL ${LOCAL}
#define RESTRICT ${RESTRICT}
#define DEVICE_FN ${DEVICE_FN}
#define GLOBAL_ID ${GLOBAL_ID}
#define LOCAL_ID ${LOCAL_ID}
#define GROUP_ID ${GROUP_ID}
#define LOCAL_SIZE ${LOCAL_SIZE}
#define NUM_GROUPS ${NUM_GROUPS}
#define BARRIER ${BARRIER}
#define ATOMIC_ADD_U32(ptr, v) ${ATOMIC}
#define AJ_SQRT ${SQRT}
#define LOCAL_PTR ${LOCAL_PTR}
]==], V)
emit(V.types)
emitf([==[
DEVICE_FN aj_u32 aj_bits(float x) { return ${as_uint}(x); }
DEVICE_FN float aj_from_bits(aj_u32 u) { return ${as_float}(u); }
DEVICE_FN float aj_abs(float x) { return aj_from_bits(aj_bits(x) & 0x7fffffffu); }
DEVICE_FN int aj_isfinite(float x) { return (aj_bits(x) & 0x7f800000u) != 0x7f800000u; }
DEVICE_FN int aj_isnan(float x) { return (aj_bits(x) & 0x7fffffffu) > 0x7f800000u; }

DEVICE_FN float aj_load_f32(const GLOBAL aj_f32_t* p, aj_size i) { return p[i]; }
DEVICE_FN void aj_store_f32(GLOBAL aj_f32_t* p, aj_size i, float x) { p[i] = x; }

/* bf16 = the high half of an fp32; rounding to nearest even, NaN kept quiet. */
DEVICE_FN float aj_load_bf16(const GLOBAL aj_bf16_t* p, aj_size i) { return aj_from_bits((aj_u32)p[i] << 16); }
DEVICE_FN aj_u16 aj_f32_to_bf16(float x) {
  aj_u32 u = aj_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (aj_u16)((u >> 16) | 0x0040u);
  return (aj_u16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
DEVICE_FN void aj_store_bf16(GLOBAL aj_bf16_t* p, aj_size i, float x) { p[i] = aj_f32_to_bf16(x); }
DEVICE_FN void aj_store_if_f32(GLOBAL aj_f32_t* p, aj_size i, int ok, float x) {
  const aj_u32 o = aj_bits(p[i]);
  p[i] = aj_from_bits(ok ? aj_bits(x) : o);
}
DEVICE_FN void aj_store_if_bf16(GLOBAL aj_bf16_t* p, aj_size i, int ok, float x) {
  const aj_u16 o = p[i];
  p[i] = ok ? aj_f32_to_bf16(x) : o;
}
]==], V)
if d == "opencl" then
  emit([==[
DEVICE_FN float aj_load_f16(const GLOBAL aj_f16_t* p, aj_size i) { return vload_half(i, p); }
DEVICE_FN void aj_store_f16(GLOBAL aj_f16_t* p, aj_size i, float x) { vstore_half_rte(x, i, p); }
DEVICE_FN void aj_store_if_f16(GLOBAL aj_f16_t* p, aj_size i, int ok, float x) { if (ok) vstore_half_rte(x, i, p); }
]==])
else
  emit([==[
/* IEEE binary16 <-> binary32 by hand (round to nearest even, NaN kept quiet). */
DEVICE_FN float aj_f16_to_f32(aj_u32 h) {
  aj_u32 sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (e == 0u) return aj_from_bits(sign | aj_bits((float)mant * 5.9604644775390625e-8f)); /* mant * 2^-24 */
  if (e == 31u) return aj_from_bits(sign | 0x7f800000u | (mant << 13));
  return aj_from_bits(sign | ((e + 112u) << 23) | (mant << 13));
}
DEVICE_FN aj_u16 aj_f32_to_f16(float f) {
  aj_u32 x = aj_bits(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return (aj_u16)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));       /* NaN stays NaN */
  if (ax >= 0x47800000u) return (aj_u16)(sign | 0x7c00u);                   /* >= 65536: inf */
  if (ax < 0x38800000u) {                                                   /* half subnormal */
    if (ax < 0x33000000u) return (aj_u16)sign;                              /* < 2^-25: zero */
    aj_u32 e = ax >> 23, mant = (ax & 0x7fffffu) | 0x800000u, shift = 126u - e;
    aj_u32 q = mant >> shift, rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (aj_u16)(sign | q);
  }
  aj_u32 base = ax - 0x38000000u, h = base >> 13, rem = base & 0x1fffu;    /* rebias 127 -> 15 */
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;                   /* may carry to inf */
  return (aj_u16)(sign | h);
}
DEVICE_FN float aj_load_f16(const GLOBAL aj_f16_t* p, aj_size i) { return aj_f16_to_f32(p[i]); }
DEVICE_FN void aj_store_f16(GLOBAL aj_f16_t* p, aj_size i, float x) { p[i] = aj_f32_to_f16(x); }
DEVICE_FN void aj_store_if_f16(GLOBAL aj_f16_t* p, aj_size i, int ok, float x) {
  const aj_u16 o = p[i];
  p[i] = ok ? aj_f32_to_f16(x) : o;
}
]==])
end
emit([==[
/* Unrolled and branch-free: a CPU device (PoCL) vectorizes code without inner loops across
   work-items (with the loop form an 8-bit step took twice as long there), and a GPU runs
   it without divergence. After the step of size S, i <= code < i + S; the largest index
   read is 254. */
#define AJ_NEAREST_STEP(S) i += (thr[i + (S) - 1] <= x) ? (S) : 0
DEVICE_FN int aj_nearest(const LOCAL_PTR float* thr, float x) {
  int i = 0; /* the code is the number of midpoints <= x (NaN: 0) */
  AJ_NEAREST_STEP(128); AJ_NEAREST_STEP(64); AJ_NEAREST_STEP(32); AJ_NEAREST_STEP(16);
  AJ_NEAREST_STEP(8); AJ_NEAREST_STEP(4); AJ_NEAREST_STEP(2); AJ_NEAREST_STEP(1);
  return i;
}

]==])
if params.multi then
  emit([==[
/* Grouped launches (backends/gpu/gpu_group.h): the row of the table (rows of `width` words,
   column 0 the tensor's first work-group, ascending) of the tensor that work-group `group`
   works on. */
DEVICE_FN aj_size aj_multi_row(const GLOBAL aj_size* table, aj_size width, aj_size ntensors, aj_size group) {
  aj_size lo = 0, hi = ntensors - 1;
  while (lo < hi) {
    const aj_size mid = (lo + hi + 1) >> 1;
    if (table[mid * width] <= group) lo = mid; else hi = mid - 1;
  }
  return lo;
}
/* Declares `lo`, this work-group's row, searched by one work-item and shared through local
   memory: with the search's loop in every work-item's code, a CPU device (PoCL) vectorized
   none of the kernel (a grouped fp32 step took 1.6-4x as long as one big tensor's). At
   kernel scope, before any other barrier. */
#define AJ_MULTI_ROW(lo, table, width, ntensors) \
  LOCAL aj_size aj_row_shared; \
  if (LOCAL_ID == 0) aj_row_shared = aj_multi_row(table, width, ntensors, GROUP_ID); \
  BARRIER; \
  const aj_size lo = aj_row_shared

]==])
end
