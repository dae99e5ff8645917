-- Blockwise quantize (SPEC 3's nearest code), one work-group per block of `block` elements.
-- Kernel arguments: const GLOBAL T* x, GLOBAL aj_u8* codes, GLOBAL float* absmax,
--   const GLOBAL float* thresholds   the 255 ascending midpoints between the map's values,
--   [nonfinite: GLOBAL aj_u32* nonfinite]  a block holding a NaN/Inf is left untouched (codes
--   and absmax) and its non-finite elements are counted here,
--   aj_size n.
-- Launch: ceil(n / block) work-groups of wg threads (global size = that * wg). The last block
-- may be partial. absmax is reduced in local memory; a block whose absmax is 0 gets the code
-- of 0. x / absmax is a division, as in the CPU backend.
local P = params
emitf([==[
#define AJ_WG ${wg}
#define AJ_BLOCK ${block}
KERNEL void ${kernel_name}(const GLOBAL aj_${p}_t* RESTRICT x, GLOBAL aj_u8* RESTRICT codes,
    GLOBAL float* RESTRICT absmax, const GLOBAL float* RESTRICT thresholds,
]==])
if P.nonfinite then emit("    GLOBAL aj_u32* RESTRICT nonfinite,\n") end
emitf([==[
    aj_size n) {
  LOCAL float thr[255];
  LOCAL float red[AJ_WG];
  LOCAL aj_u32 badc[AJ_WG];
  const int lid = LOCAL_ID;
  const aj_size b0 = GROUP_ID * (aj_size)AJ_BLOCK;
  const int len = (int)(n - b0 < (aj_size)AJ_BLOCK ? n - b0 : (aj_size)AJ_BLOCK);
  for (int j = lid; j < 255; j += AJ_WG) thr[j] = thresholds[j];
  float mx = 0.0f;
  aj_u32 bad = 0u;
  for (int j = lid; j < len; j += AJ_WG) {
    const float a = aj_abs(aj_load_${p}(x, b0 + (aj_size)j));
    mx = a > mx ? a : mx;
    bad += (aj_u32)!aj_isfinite(a);
  }
  red[lid] = mx;
  badc[lid] = bad;
  BARRIER;
  for (int s = AJ_WG / 2; s > 0; s >>= 1) {
    if (lid < s) {
      red[lid] = red[lid + s] > red[lid] ? red[lid + s] : red[lid];
      badc[lid] += badc[lid + s];
    }
    BARRIER;
  }
  mx = red[0];
]==])
if P.nonfinite then
  emit("  if (badc[0]) {\n    if (lid == 0) ATOMIC_ADD_U32(nonfinite, badc[0]);\n    return;\n  }\n")
end
emitf([==[
  if (lid == 0) absmax[GROUP_ID] = mx;
  for (int j = lid; j < len; j += AJ_WG) {
    const float q = mx == 0.0f ? 0.0f : aj_load_${p}(x, b0 + (aj_size)j) / mx;
    codes[b0 + (aj_size)j] = (aj_u8)aj_nearest(thr, q);
  }
}
]==])
