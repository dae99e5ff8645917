-- The 8-bit blockwise AdamW step (SPEC 3), one work-group per block of `block` elements.
-- Each thread keeps its per = max(1, block / wg) elements' new m, v (and vmax) in private
-- arrays between the update and the requantization, so local memory holds only the maps and
-- the reduction buffers (a block of 4096 with amsgrad would need 48 KiB of local memory).
-- Kernel arguments, in order (bracketed ones only when the flag is on):
--   GLOBAL P* p, const GLOBAL G* g,
--   GLOBAL aj_u8* c1, GLOBAL aj_u8* c2, [amsgrad: GLOBAL aj_u8* c3]       codes of m, v, vmax
--   GLOBAL float* absmax1, GLOBAL float* absmax2, [amsgrad: GLOBAL float* absmax3]
--   const GLOBAL float* map1, const GLOBAL float* map2      signed / unsigned maps, 256 values
--   const GLOBAL float* thr1, const GLOBAL float* thr2      their 255 midpoints
--   const GLOBAL float* scalars                             as adamw32 (jit/render.h)
--   [clip: const GLOBAL float* gscale], [nonfinite: GLOBAL aj_u32* nonfinite], aj_size n.
-- With the guard, an element whose gradient is not finite keeps p and its dequantized m, v,
-- vmax and is counted; without it, NaN/Inf flow through the arithmetic as in adamw32. Sign guard: a negative m whose nearest signed code decodes to
-- exactly 0 takes the next code down, so momentum never loses its sign by rounding.
-- Launch: ceil(n / block) work-groups of wg threads; the last block may be partial.
local P = params
local per = P.block // P.wg
if per < 1 then per = 1 end
emitf([==[
#define AJ_WG ${wg}
#define AJ_BLOCK ${block}
]==])
emit("#define AJ_PER ", per, "\n")
emitf([==[
KERNEL void ${kernel_name}(GLOBAL aj_${p}_t* RESTRICT p, const GLOBAL aj_${g}_t* RESTRICT g,
    GLOBAL aj_u8* RESTRICT c1, GLOBAL aj_u8* RESTRICT c2,
]==])
if P.amsgrad then emit("    GLOBAL aj_u8* RESTRICT c3,\n") end
emit("    GLOBAL float* RESTRICT absmax1, GLOBAL float* RESTRICT absmax2,\n")
if P.amsgrad then emit("    GLOBAL float* RESTRICT absmax3,\n") end
emit([==[
    const GLOBAL float* RESTRICT map1, const GLOBAL float* RESTRICT map2,
    const GLOBAL float* RESTRICT thr1, const GLOBAL float* RESTRICT thr2,
    const GLOBAL float* RESTRICT scalars,
]==])
if P.clip then emit("    const GLOBAL float* RESTRICT gscale,\n") end
if P.nonfinite then emit("    GLOBAL aj_u32* RESTRICT nonfinite,\n") end
emitf([==[
    aj_size n) {
  LOCAL float q1[256], q2[256], t1[255], t2[255];
  LOCAL float r1[AJ_WG], r2[AJ_WG], r3[AJ_WG];
  const int lid = LOCAL_ID;
  const aj_size blk = GROUP_ID, b0 = blk * (aj_size)AJ_BLOCK;
  const int len = (int)(n - b0 < (aj_size)AJ_BLOCK ? n - b0 : (aj_size)AJ_BLOCK);
  for (int j = lid; j < 256; j += AJ_WG) { q1[j] = map1[j]; q2[j] = map2[j]; }
  for (int j = lid; j < 255; j += AJ_WG) { t1[j] = thr1[j]; t2[j] = thr2[j]; }
  BARRIER;
  const float beta1 = scalars[${s_beta1}], beta2 = scalars[${s_beta2}], eps = scalars[${s_eps}];
  const float step_size = scalars[${s_step_size}], inv_sqrt_c2 = scalars[${s_inv_sqrt_c2}];
  const float one_b1 = 1.0f - beta1, one_b2 = 1.0f - beta2;
]==])
emitf(P.wd and "  const float decay = scalars[${s_decay}];\n" or "  const float decay = 1.0f;\n")
emitf(P.clip and "  const float scale = gscale[0];\n" or "  const float scale = 1.0f;\n")
emit("  const float A1 = absmax1[blk], A2 = absmax2[blk];\n")
emit(P.amsgrad and "  const float A3 = absmax3[blk];\n" or "")
emitf([==[
  float tm[AJ_PER], tv[AJ_PER], tx[AJ_PER];
  float mx1 = 0.0f, mx2 = 0.0f, mx3 = 0.0f;
  aj_u32 bad = 0u;
  for (int k = 0; k < AJ_PER; k++) {
    const int j = lid + k * AJ_WG;
    tm[k] = 0.0f; tv[k] = 0.0f; tx[k] = 0.0f;
    if (j >= len) continue;
    const aj_size i = b0 + (aj_size)j;
    const float graw = aj_load_${g}(g, i);
    const float m0 = q1[c1[i]] * A1, v0 = q2[c2[i]] * A2;
]==])
emit(P.amsgrad and "    const float x0 = q2[c3[i]] * A3;\n" or "    const float x0 = 0.0f;\n")
emitf([==[
    float m1 = m0, v1 = v0, x1 = x0;
    if (${guard}) {
      const float gs = graw * scale;
      m1 = beta1 * m0 + one_b1 * gs;
      v1 = beta2 * v0 + one_b2 * (gs * gs);
      x1 = v1 > x0 ? v1 : x0;
      const float vu = ${vu};
      float pv = aj_load_${p}(p, i) * decay;
      pv = pv - step_size * m1 / (AJ_SQRT(vu) * inv_sqrt_c2 + eps);
      aj_store_${p}(p, i, pv);
    } else {
      bad++;
    }
    tm[k] = m1; tv[k] = v1; tx[k] = x1;
    const float am = aj_abs(m1);
    mx1 = am > mx1 ? am : mx1;
    mx2 = v1 > mx2 ? v1 : mx2;
    mx3 = x1 > mx3 ? x1 : mx3;
  }
  r1[lid] = mx1; r2[lid] = mx2; r3[lid] = mx3;
  BARRIER;
  for (int s = AJ_WG / 2; s > 0; s >>= 1) {
    if (lid < s) {
      r1[lid] = r1[lid + s] > r1[lid] ? r1[lid + s] : r1[lid];
      r2[lid] = r2[lid + s] > r2[lid] ? r2[lid + s] : r2[lid];
      r3[lid] = r3[lid + s] > r3[lid] ? r3[lid + s] : r3[lid];
    }
    BARRIER;
  }
  mx1 = r1[0]; mx2 = r2[0]; mx3 = r3[0];
  if (lid == 0) {
    absmax1[blk] = mx1;
    absmax2[blk] = mx2;
]==], {g = P.g, p = P.p, vu = P.amsgrad and "x1" or "v1", guard = P.nonfinite and "aj_isfinite(graw)" or "1"})
emit(P.amsgrad and "    absmax3[blk] = mx3;\n" or "    (void)mx3;\n")
emit([==[
  }
  const float inv1 = mx1 == 0.0f ? 0.0f : 1.0f / mx1;
  const float inv2 = mx2 == 0.0f ? 0.0f : 1.0f / mx2;
  const float inv3 = mx3 == 0.0f ? 0.0f : 1.0f / mx3;
  for (int k = 0; k < AJ_PER; k++) {
    const int j = lid + k * AJ_WG;
    if (j >= len) continue;
    const aj_size i = b0 + (aj_size)j;
    const float x = tm[k] * inv1;
    int c = aj_nearest(t1, x);
    if (x < 0.0f && q1[c] == 0.0f && c > 0) c--; /* sign guard */
    c1[i] = (aj_u8)c;
    c2[i] = (aj_u8)aj_nearest(t2, tv[k] * inv2);
]==])
emit(P.amsgrad and "    c3[i] = (aj_u8)aj_nearest(t2, tx[k] * inv3);\n" or "    (void)inv3;\n")
emit("  }\n")
if P.nonfinite then emit("  if (bad) ATOMIC_ADD_U32(nonfinite, bad);\n") else emit("  (void)bad;\n") end
emit("}\n")
