-- The 8-bit AdamW step (SPEC 3) in two forms: blockwise (b = 64..4096, one kernel) and
-- tensor-wise (b = 0: one absmax for the whole tensor, a program of four kernels).
--
-- ==== Blockwise (b > 0): one kernel, aj_adamw8 ================================================
-- One work-group per block of `block` elements.
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
--
-- ==== Tensor-wise (b = 0): four kernels, run in this order on one in-order queue ========
-- The requantization needs the new absmax of the whole tensor, which only exists once every
-- element is updated, and every element must be dequantized with the old absmax. So, as in
-- the CPU backend (backends/cpu/cpu_adamw8.c), pass 1 computes the new m, v, vmax of every
-- element only to take their maxima, and pass 2 recomputes them with the identical fp32
-- operations, updates p and requantizes against those maxima. absmax1/2/3[0] are only read
-- until the last kernel writes them, so no work-group can see a half-updated absmax.
--
-- Buffers besides the blockwise ones: `partial`, 3 floats per pass-1 work-group (the
-- maxima of |m|, v, vmax of its elements; the third is 0 without amsgrad), and `newmax`,
-- 3 floats (the tensor's new absmax1, absmax2, absmax3). Both are scratch: nothing needs
-- to be zeroed. Geometry of passes 1 and 2 (as adamw32): groups = ceil(n / (wg*ept)),
-- global size groups*wg, local size wg; element k < ept of a thread is
-- group*wg*ept + k*wg + lid. (vec is accepted but the loads are scalar.)
--
-- 1. aj_adamw8_absmax: the arguments of aj_adamw8 (3. below) exactly, with `partial`
--    (written, 3*groups floats) in the place of `newmax`; it reads p, thr1, thr2 and
--    nonfinite not at all and writes nothing else. Writes partial[3*group + 0..2].
-- 2. aj_adamw8_reduce(const GLOBAL float* in, GLOBAL float* out, aj_size count)
--    Folds `count` triples of `in` into one triple per work-group: out[3*group + j] = max
--    over the triples t = group*wg + lid + r*G*wg (r = 0, 1, ...) of in[3*t + j], where G is
--    the number of work-groups launched. Local size must be wg; any number of groups G >= 1
--    (global size G*wg). in and out must be different buffers. Usual use: one launch with
--    G = 1, in = partial, count = groups of pass 1, out = newmax. (For a huge count, a first
--    launch with G > 1 into a scratch buffer, then G = 1 into newmax; max is exact, so the
--    result is the same however it is folded.)
-- 3. aj_adamw8 (the update), arguments in order (bracketed ones only when the flag is on):
--      GLOBAL P* p, const GLOBAL G* g,
--      GLOBAL aj_u8* c1, GLOBAL aj_u8* c2, [amsgrad: GLOBAL aj_u8* c3]   codes of m, v, vmax
--      const GLOBAL float* absmax1, const GLOBAL float* absmax2, [amsgrad: const GLOBAL float* absmax3]
--                                      the OLD absmax, read from [0]
--      const GLOBAL float* newmax      the 3 new maxima from aj_adamw8_reduce
--      const GLOBAL float* map1, const GLOBAL float* map2      signed / unsigned maps, 256 values
--      const GLOBAL float* thr1, const GLOBAL float* thr2      their 255 midpoints
--      const GLOBAL float* scalars                             as adamw32 (jit/render.h)
--      [clip: const GLOBAL float* gscale], [nonfinite: GLOBAL aj_u32* nonfinite], aj_size n.
--    Same element rules as the blockwise kernel (guard, sign guard, a zero absmax stores
--    the code of 0); codes are nearest(m / newmax) computed as m * (1 / newmax), like the CPU.
-- 4. aj_adamw8_commit(GLOBAL float* absmax1, GLOBAL float* absmax2,
--                     [amsgrad: GLOBAL float* absmax3], const GLOBAL float* newmax)
--    absmaxK[0] = newmax[K-1]; one work-group of any local size (1 is enough). The host may
--    instead copy newmax[0], [1], [2] into absmax1/2/3 with buffer copies.
-- The pass 1 kernel takes the update's argument list so that the host sets the arguments
-- of both with the same code and swaps one buffer.
local P = params

-- ---------------------------------------------------------------- tensor-wise (b = 0)
-- The element update is one piece of C text used by both passes, so pass 1's maxima are
-- taken over exactly the values pass 2 quantizes.
local function tensorwise()
  local V = setmetatable({
    guard = P.nonfinite and "aj_isfinite(graw)" or "1",
    vu = P.amsgrad and "x1" or "v1",
  }, {__index = P})
  local function signature(name, out)
    local a = {}
    a[#a + 1] = "KERNEL void " .. name .. "(GLOBAL aj_" .. P.p .. "_t* RESTRICT p, const GLOBAL aj_" .. P.g ..
                "_t* RESTRICT g,\n    GLOBAL aj_u8* RESTRICT c1, GLOBAL aj_u8* RESTRICT c2,\n"
    if P.amsgrad then a[#a + 1] = "    GLOBAL aj_u8* RESTRICT c3,\n" end
    a[#a + 1] = "    const GLOBAL float* RESTRICT absmax1, const GLOBAL float* RESTRICT absmax2,\n"
    if P.amsgrad then a[#a + 1] = "    const GLOBAL float* RESTRICT absmax3,\n" end
    a[#a + 1] = "    " .. out .. ",\n"
    a[#a + 1] = "    const GLOBAL float* RESTRICT map1, const GLOBAL float* RESTRICT map2,\n"
    a[#a + 1] = "    const GLOBAL float* RESTRICT thr1, const GLOBAL float* RESTRICT thr2,\n"
    a[#a + 1] = "    const GLOBAL float* RESTRICT scalars,\n"
    if P.clip then a[#a + 1] = "    const GLOBAL float* RESTRICT gscale,\n" end
    if P.nonfinite then a[#a + 1] = "    GLOBAL aj_u32* RESTRICT nonfinite,\n" end
    a[#a + 1] = "    aj_size n) {\n"
    return table.concat(a)
  end
  -- After the maps are in local memory: the step's scalars and the old absmax values.
  local setup = [==[
  const float beta1 = scalars[${s_beta1}], beta2 = scalars[${s_beta2}];
  const float one_b1 = 1.0f - beta1, one_b2 = 1.0f - beta2;
]==] .. (P.clip and "  const float scale = gscale[0];\n" or "  const float scale = 1.0f;\n") ..
    "  const float A1 = absmax1[0], A2 = absmax2[0];\n" ..
    (P.amsgrad and "  const float A3 = absmax3[0];\n" or "") .. [==[
  const aj_size base = GROUP_ID * (aj_size)(AJ_WG * AJ_EPT) + (aj_size)lid;
]==]
  -- One element i: its new m1, v1 (and x1 = vmax) from the old codes and absmax; ok = 0 for
  -- a guarded non-finite gradient, whose element keeps its dequantized state.
  local element = [==[
    const aj_size i = base + (aj_size)k * AJ_WG;
    if (i >= n) break;
    const float graw = aj_load_${g}(g, i);
    const float m0 = q1[c1[i]] * A1, v0 = q2[c2[i]] * A2;
    float m1 = m0, v1 = v0;
]==] .. (P.amsgrad and "    const float x0 = q2[c3[i]] * A3;\n    float x1 = x0;\n" or "") .. [==[
    const int ok = ${guard};
    if (ok) {
      const float gs = graw * scale;
      m1 = beta1 * m0 + one_b1 * gs;
      v1 = beta2 * v0 + one_b2 * (gs * gs);
]==] .. (P.amsgrad and "      x1 = v1 > x0 ? v1 : x0;\n" or "") .. [==[
    }
]==]

  emitf([==[
#define AJ_WG ${wg}
#define AJ_EPT ${ept}

/* Pass 1: the maxima of |m|, v and vmax over this group's elements, to partial[3*group]. */
]==], V)
  emit(signature(P.kernel_name .. "_absmax", "GLOBAL float* RESTRICT partial"))
  emitf([==[
  LOCAL float q1[256], q2[256];
  LOCAL float r1[AJ_WG], r2[AJ_WG], r3[AJ_WG];
  const int lid = LOCAL_ID;
  for (int j = lid; j < 256; j += AJ_WG) { q1[j] = map1[j]; q2[j] = map2[j]; }
  BARRIER;
]==] .. setup .. [==[
  float mx1 = 0.0f, mx2 = 0.0f, mx3 = 0.0f;
  for (int k = 0; k < AJ_EPT; k++) {
]==] .. element .. [==[
    const float am = aj_abs(m1);
    mx1 = am > mx1 ? am : mx1;
    mx2 = v1 > mx2 ? v1 : mx2;
]==] .. (P.amsgrad and "    mx3 = x1 > mx3 ? x1 : mx3;\n" or "") .. [==[
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
  if (lid == 0) {
    partial[3 * GROUP_ID] = r1[0];
    partial[3 * GROUP_ID + 1] = r2[0];
    partial[3 * GROUP_ID + 2] = r3[0];
  }
}

/* Folds count triples of in to one triple per work-group (grid-stride: any group count). */
KERNEL void ${kernel_name}_reduce(const GLOBAL float* RESTRICT in, GLOBAL float* RESTRICT out, aj_size count) {
  LOCAL float r1[AJ_WG], r2[AJ_WG], r3[AJ_WG];
  const int lid = LOCAL_ID;
  float mx1 = 0.0f, mx2 = 0.0f, mx3 = 0.0f;
  for (aj_size t = GROUP_ID * (aj_size)AJ_WG + (aj_size)lid; t < count; t += NUM_GROUPS * (aj_size)AJ_WG) {
    const float a1 = in[3 * t], a2 = in[3 * t + 1], a3 = in[3 * t + 2];
    mx1 = a1 > mx1 ? a1 : mx1;
    mx2 = a2 > mx2 ? a2 : mx2;
    mx3 = a3 > mx3 ? a3 : mx3;
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
  if (lid == 0) {
    out[3 * GROUP_ID] = r1[0];
    out[3 * GROUP_ID + 1] = r2[0];
    out[3 * GROUP_ID + 2] = r3[0];
  }
}

/* Pass 2: the update of p, and m, v, vmax requantized against the tensor's new maxima. */
]==], V)
  emit(signature(P.kernel_name, "const GLOBAL float* RESTRICT newmax"))
  emitf([==[
  LOCAL float q1[256], q2[256], t1[255], t2[255];
  const int lid = LOCAL_ID;
  for (int j = lid; j < 256; j += AJ_WG) { q1[j] = map1[j]; q2[j] = map2[j]; }
  for (int j = lid; j < 255; j += AJ_WG) { t1[j] = thr1[j]; t2[j] = thr2[j]; }
  BARRIER;
]==] .. setup .. [==[
  const float eps = scalars[${s_eps}];
  const float step_size = scalars[${s_step_size}], inv_sqrt_c2 = scalars[${s_inv_sqrt_c2}];
]==] .. (P.wd and "  const float decay = scalars[${s_decay}];\n" or "  const float decay = 1.0f;\n") .. [==[
  const float N1 = newmax[0], N2 = newmax[1], N3 = newmax[2];
  /* one reciprocal, as the CPU backend: a zero absmax gives x = 0, the code of 0 */
  const float inv1 = N1 == 0.0f ? 0.0f : 1.0f / N1;
  const float inv2 = N2 == 0.0f ? 0.0f : 1.0f / N2;
  const float inv3 = N3 == 0.0f ? 0.0f : 1.0f / N3;
  (void)N3; (void)inv3;
  aj_u32 bad = 0u;
  for (int k = 0; k < AJ_EPT; k++) {
]==] .. element .. [==[
    if (ok) {
      const float vu = ${vu};
      float pv = aj_load_${p}(p, i) * decay;
      pv = pv - step_size * m1 / (AJ_SQRT(vu) * inv_sqrt_c2 + eps);
      aj_store_${p}(p, i, pv);
    } else {
      bad++;
    }
    const float x = m1 * inv1;
    int c = aj_nearest(t1, x);
    if (x < 0.0f && q1[c] == 0.0f && c > 0) c--; /* sign guard */
    c1[i] = (aj_u8)c;
    c2[i] = (aj_u8)aj_nearest(t2, v1 * inv2);
]==], V)
  if P.amsgrad then emit("    c3[i] = (aj_u8)aj_nearest(t2, x1 * inv3);\n") end
  emit("  }\n")
  if P.nonfinite then emit("  if (bad) ATOMIC_ADD_U32(nonfinite, bad);\n") else emit("  (void)bad;\n") end
  emit("}\n")

  emitf([==[

/* After pass 2: the new maxima become the tensor's absmax. */
KERNEL void ${kernel_name}_commit(GLOBAL float* RESTRICT absmax1, GLOBAL float* RESTRICT absmax2,
]==], V)
  if P.amsgrad then emit("    GLOBAL float* RESTRICT absmax3,\n") end
  emit([==[
    const GLOBAL float* RESTRICT newmax) {
  if (GLOBAL_ID == 0) {
    absmax1[0] = newmax[0];
    absmax2[0] = newmax[1];
]==])
  if P.amsgrad then emit("    absmax3[0] = newmax[2];\n") end
  emit("  }\n}\n")
end

if P.block == 0 then
  tensorwise()
  return
end

-- ------------------------------------------------------------------ blockwise (b > 0)
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
