-- The 8-bit AdamW step (SPEC 3) in two forms: blockwise (b = 64..4096, one kernel) and
-- tensor-wise (b = 0: one absmax for the whole tensor, a program of four kernels).
--
-- ==== Blockwise (b > 0): one kernel, aj_adamw8 ================================================
-- Kernel arguments, in order (bracketed ones only when the flag is on):
--   GLOBAL P* p, const GLOBAL G* g,
--   GLOBAL aj_u8* c1, GLOBAL aj_u8* c2, [amsgrad: GLOBAL aj_u8* c3]       codes of m, v, vmax
--   GLOBAL float* absmax1, GLOBAL float* absmax2, [amsgrad: GLOBAL float* absmax3]
--   const GLOBAL float* map1, const GLOBAL float* map2      signed / unsigned maps, 256 values
--   const GLOBAL float* thr1, const GLOBAL float* thr2      their 255 midpoints
--   const GLOBAL float* scalars                             as adamw32 (jit/render.h)
--   [clip: const GLOBAL float* gscale], [nonfinite: GLOBAL aj_u32* nonfinite], aj_size n.
-- With the guard, an element whose gradient is not finite keeps p and its dequantized m, v,
-- vmax and is counted; without it, NaN/Inf flow through the arithmetic as in adamw32. Sign
-- guard: a negative m whose nearest signed code decodes to exactly 0 takes the next code
-- down, so momentum never loses its sign by rounding.
--
-- Two layouts, chosen by the key's vec; ept is in both the number of blocks each
-- work-item works on (the maps are loaded into local memory once per work-group, so a
-- group that covers many blocks pays for that load once):
--  * vec > 1, "shared blocks" (GPUs): T = min(wg, block) work-items share a block, each
--    holding block / T of its elements (element j of a block belongs to work-item j % T,
--    so neighbouring work-items touch neighbouring memory); the block's absmax is a tree
--    reduction in local memory. A group works through ept chunks of max(wg, block)
--    elements, one after the other: wg / block blocks side by side when wg > block.
--    Launch: ceil(n / (ept * max(wg, block))) work-groups of wg work-items.
--  * vec = 1, "own blocks" (CPU devices such as PoCL): every work-item updates and
--    requantizes ept consecutive whole blocks by itself, with no barrier in between; a
--    CPU compiler vectorizes that walk along the block, as the CPU backend's loops.
--    Launch: ceil(ceil(n / block) / (wg * ept)) work-groups of wg work-items.
--    In the opencl dialect, when a group covers at least AJ8_TABLE_MIN elements, the group
--    first builds a table of the maps (36 KiB of local memory, which CPU devices have: the
--    CPU backend's cells, core/qmap.h, at 7 mantissa bits instead of 8) so that a code
--    costs one table read instead of an 8-step binary search (the whole step ~4x faster on
--    PoCL); a map the table cannot serve exactly (two thresholds in a cell) falls back to
--    the search, so the codes are the same either way, except that a NaN gets, as from the
--    CPU backend's table, the end code of its sign's side (from the search: 0).
--    The new m, v (vmax) of a block wait for its absmax in private arrays, or, where
--    wg * block * 4 B per array would pass AJ8_PRIVATE_MAX (a CPU device replicates private
--    arrays per work-item on its thread stack) and always in the cuda dialect (per-thread
--    arrays of a whole block do not fit a GPU), are recomputed from the unchanged gradient
--    and old codes with the identical fp32 operations (~30% slower on PoCL than arrays).
--    On an AVX-512 CPU device (clang on x86-64 with __AVX512F__, e.g. PoCL) the loops along
--    a block use 512-bit vectors, and with the arrays the old m, v are first dequantized
--    into them by register permutes instead of gathers (aj8_lut256): the same bits.
--
-- multi (many small tensors, one launch; backends/gpu/gpu_group.h): the arguments become
--   GLOBAL P* p_all, const GLOBAL G* g_all, GLOBAL aj_u8* c1_all, c2_all, [c3_all],
--   GLOBAL float* absmax1_all, absmax2_all, [absmax3_all], map1, map2, thr1, thr2 (as above),
--   [opencl, vec = 1: const GLOBAL int* tabs, the code table from aj_adamw8_table below],
--   const GLOBAL float* tscalars (8 floats per tensor, the scalars first),
--   [nonfinite: GLOBAL aj_u32* nonfinite], const GLOBAL aj_size* table, aj_size ntensors.
-- table: 10 words per tensor (AJ_GPU_ROW8): first work-group, n, then the element offsets
-- of p, g, c1, c2, c3 in their buffers and the block offsets of absmax1, absmax2, absmax3
-- in theirs. Launch: the sum over tensors of the work-groups each would launch alone (the
-- layout's count above), in table order; a work-group finds its tensor by binary search
-- over the first column and from then on is that tensor's work-group `group - first` of a
-- launch of its own: blocks, the ragged last block and absmax stay per tensor. Codes and
-- absmax are written in place by the block's owner, so no commit pass is needed. The
-- own-blocks layout in the opencl dialect takes its code table (where the key uses one, as
-- alone) from `tabs` instead of building it in every work-group: the program's second kernel
--   aj_adamw8_table(GLOBAL int* tabs, const GLOBAL float* thr1, const GLOBAL float* thr2),
-- one work-group of wg work-items, writes 3 * 3073 + 1 ints there (AJ_GPU_CODE_TABLE_INTS)
-- and runs before each grouped update that takes `tabs` (always in that dialect and layout,
-- table or not, so that the host need not know the key's table rule).
-- No clip with multi; b = 0 has no multi form (its four kernels work on one tensor's maxima).
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

  -- The group's maxima mx1..mx3 by a tree in local memory (r1..r3); work-item 0 writes them
  -- to the group's triple in dst. Pass 1 and its reduce kernel end with it.
  local function group_max3(dst)
    local text = [==[
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
]==]
    for k = 0, 2 do
      text = text .. "    " .. dst .. "[3 * GROUP_ID" .. (k > 0 and " + " .. k or "") .. "] = r" .. (k + 1) .. "[0];\n"
    end
    return text .. "  }\n"
  end

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
]==] .. group_max3("partial") .. [==[
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
]==] .. group_max3("out") .. [==[
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
local ams = P.amsgrad
local own = P.vec == 1 -- "own blocks" layout, see the header
-- The table's build (about 9200 cells, ~4 ns each on PoCL) is repaid by a few thousand
-- elements' searches; from 2^15 on it is a few percent of the group's time at most.
local AJ8_TABLE_MIN = 1 << 15
-- PoCL keeps private arrays per work-item on its thread stack: 8 MiB of them crashed it.
local AJ8_PRIVATE_MAX = 2 * 1024 * 1024
local narr = ams and 3 or 2
local use_table = own and P.dialect == "opencl" and P.wg * P.ept * P.block >= AJ8_TABLE_MIN
-- multi in the own-blocks layout on opencl: a grouped launch has a work-group per small
-- tensor, so building the table in every one cost most of the step (PoCL: ~50 of ~65 ms for
-- a thousand 1e4-element tensors). ${kernel_name}_table builds it once per launch into
-- `tabs`, and each work-group copies it; the table kernel runs the same fill with the same
-- work-group size, so the cells are the same bits as a group's own build.
local shared_tab = P.multi and own and P.dialect == "opencl"
local keep = own and P.dialect == "opencl" and P.wg * P.block * 4 * narr <= AJ8_PRIVATE_MAX
-- The shared-blocks layout: T work-items per block, S blocks side by side, PER elements each.
local T = P.wg < P.block and P.wg or P.block
local V = setmetatable({
  guard = P.nonfinite and "aj_isfinite(graw)" or "1", vu = ams and "x1" or "v1",
  T = T, PER = P.block // T, CHUNK = (P.wg // T) * P.block,
}, {__index = P})
-- OpenCL counts non-finite gradients through local memory and one atomic per work-group:
-- an atomic in the work-item code keeps a CPU device (PoCL) from vectorizing that code.
local local_count = P.nonfinite and P.dialect == "opencl"

emitf([==[
#define AJ_WG ${wg}
#define AJ_BLOCK ${block}
#define AJ_EPT ${ept}
]==], V)
if not own then
  emitf("#define AJ_T ${T}\n#define AJ_PER ${PER}\n#define AJ_CHUNK ${CHUNK}\n", V)
end
if use_table or shared_tab then
  -- The code functions read the work-group's table in local memory, or in a grouped launch
  -- the launch's one table in `tabs`: a copy per work-group (36 KiB) cost a thousand small
  -- tensors more than their updates on PoCL.
  emit(shared_tab and "#define AJ8_TAB GLOBAL\n" or "#define AJ8_TAB LOCAL_PTR\n")
  -- Cells of a magnitude: exponents AJ8_ELO..AJ8_EHI (2^-23 .. 2), 2^AJ8_CB cells per
  -- octave, plus the last cell for everything from 2 up (Inf, NaN); magnitudes below the
  -- range share cell 0. Entry: ((code of the cell's lowest value) + 1) << 17, minus where
  -- the cell's one threshold lies in the low 16 bits L of a magnitude (none: 0x10000), so
  -- that the code is (entry + L) >> 17: positive cells step up where L >= the threshold's
  -- L, negative cells (whose values ascend as L descends) take L ^ 0xffff instead.
  emit([==[
#define AJ8_CB 7
#define AJ8_ELO 104
#define AJ8_EHI 127
#define AJ8_NC (((AJ8_EHI - AJ8_ELO + 1) << AJ8_CB) + 1)
DEVICE_FN int aj8_cell(int a) {
  const int lo = AJ8_ELO << 23, hi = (AJ8_EHI + 1) << 23;
  a = a < lo ? lo : a;
  a = a > hi ? hi : a;
  return (a - lo) >> (23 - AJ8_CB);
}
/* The code of x from a table of positive ([0, NC)) and negative ([NC, 2 NC)) cells, with
   the sign guard: a negative x takes at most gmin (the zero's code - 1 where the guard
   applies, else 255). -0 is in negative cell 0, which in a usable table has no threshold
   and the code of +0; x < 0 is false for it, so it takes no guard. */
DEVICE_FN int aj8_code_signed(const AJ8_TAB int* tab, float x, int gmin) {
  const int u = (int)aj_bits(x), a = u & 0x7fffffff, sm = u < 0 ? -1 : 0;
  const int q = (tab[(sm & AJ8_NC) + aj8_cell(a)] + ((a ^ sm) & 0xffff)) >> 17;
  return x < 0.0f ? min(q, gmin) : q;
}
/* Positive cells only: for a map whose thresholds are all positive, every x with the sign
   bit set (negative, -0, negative NaN) has code 0: clamped as a signed integer its cell is
   0, whose code is 0 with no threshold. */
DEVICE_FN int aj8_code_unsigned(const AJ8_TAB int* tab, float x) {
  const int u = (int)aj_bits(x);
  return (tab[aj8_cell(u)] + (u & 0xffff)) >> 17;
}
/* Fills cells [cs, ce) of one table of the map with thresholds thr (negative cells: neg);
   0 if a cell holds two thresholds, or a clamped cell holds one (then the table is not
   used). Cells ascend in value on the positive side and descend on the negative side, so
   the code of their lowest values is swept, one binary search per run. */
DEVICE_FN int aj8_fill(LOCAL_PTR int* tab, const LOCAL_PTR float* thr, int neg, int cs, int ce) {
  int ok = 1, k = -1;
  for (int c = cs; c < ce; c++) {
    const aj_u32 lo_bits = c == 0 ? 0u : ((aj_u32)AJ8_ELO << 23) + ((aj_u32)c << (23 - AJ8_CB));
    const aj_u32 hi_bits =
        c == AJ8_NC - 1 ? 0x7f7fffffu : ((aj_u32)AJ8_ELO << 23) + ((aj_u32)(c + 1) << (23 - AJ8_CB)) - 1u;
    const float lo = aj_from_bits(neg ? hi_bits | 0x80000000u : lo_bits);
    const float hi = aj_from_bits(neg ? lo_bits | 0x80000000u : hi_bits);
    if (k < 0) {
      k = aj_nearest(thr, lo);
    } else if (neg) {
      while (k > 0 && thr[k - 1] > lo) k--;
    } else {
      while (k < 255 && thr[k] <= lo) k++;
    }
    const float t0 = thr[k < 255 ? k : 254], t1 = thr[k < 254 ? k + 1 : 254];
    const int one = k < 255 && t0 <= hi, two = k < 254 && t1 <= hi;
    const int low = (int)(aj_bits(t0) & 0xffffu);
    tab[c] = ((k + 1) << 17) - (one ? (neg ? 0xffff - low : low) : 0x10000);
    ok &= !two && !(one && (c == 0 || c == AJ8_NC - 1));
  }
  return ok;
}
]==])
end
if own then
  -- The maximum of non-negative floats as a maximum of their bits: a CPU compiler
  -- vectorizes an integer max reduction but not a float one (without fast-math). NaN (and
  -- negative values, which the float comparisons skip as well) map to 0, so the result is
  -- the bits of the float maximum exactly.
  emit("DEVICE_FN int aj8_key(float x) { const int b = (int)aj_bits(x); return b > 0x7f800000 ? 0 : b; }\n")
  -- AVX-512 CPU devices (PoCL on x86-64): LLVM's tuning for them prefers 256-bit vectors,
  -- but 512-bit ones halve the divides, square roots and gathers of a step (AJ8_WIDE
  -- allows them, AJ8_VEC16 asks for them in the loops along a block); and the old m, v are
  -- dequantized by in-register permutes (aj8_lut256) instead of gathers, which on a Zen 5
  -- EPYC cost about one cycle per element each. All exact: the same fp32 operations and
  -- table values, only wider. Other devices and compilers: none of it.
  if P.dialect == "opencl" then
    emit([==[
#if defined(__clang__) && defined(__x86_64__) && defined(__AVX512F__)
#define AJ8_PERM 1
#define AJ8_WIDE __attribute__((min_vector_width(512)))
#define AJ8_VEC16 _Pragma("clang loop vectorize_width(16)")
/* clang's own pass vectorizes before the builtins (sqrt, min) are linked in and says so */
#pragma clang diagnostic ignored "-Wpass-failed"
/* q[c] for 16 codes c from 256 values in local memory: eight permutes of 32 values each,
   then selects on the code's bits 5, 6 and 7 (each shifted into the sign bit). */
__attribute__((always_inline)) DEVICE_FN float16 aj8_lut256(const LOCAL_PTR float* q, int16 c) {
  const float16 p0 = __builtin_ia32_vpermi2varps512(vload16(0, q), c, vload16(1, q));
  const float16 p1 = __builtin_ia32_vpermi2varps512(vload16(2, q), c, vload16(3, q));
  const float16 p2 = __builtin_ia32_vpermi2varps512(vload16(4, q), c, vload16(5, q));
  const float16 p3 = __builtin_ia32_vpermi2varps512(vload16(6, q), c, vload16(7, q));
  const float16 p4 = __builtin_ia32_vpermi2varps512(vload16(8, q), c, vload16(9, q));
  const float16 p5 = __builtin_ia32_vpermi2varps512(vload16(10, q), c, vload16(11, q));
  const float16 p6 = __builtin_ia32_vpermi2varps512(vload16(12, q), c, vload16(13, q));
  const float16 p7 = __builtin_ia32_vpermi2varps512(vload16(14, q), c, vload16(15, q));
  const int16 b5 = c << 26, b6 = c << 25, b7 = c << 24;
  const float16 s0 = select(p0, p1, b5), s1 = select(p2, p3, b5), s2 = select(p4, p5, b5), s3 = select(p6, p7, b5);
  return select(select(s0, s1, b6), select(s2, s3, b6), b7);
}
#else
#define AJ8_PERM 0
#define AJ8_WIDE
#define AJ8_VEC16
#endif
]==])
  else
    emit("#define AJ8_PERM 0\n#define AJ8_WIDE\n#define AJ8_VEC16\n")
  end
end

-- The work-group's build of the tables, in local memory (needs t1, t2 loaded, unusable = 0).
TABLE_FILL = [==[
  {
    /* each work-item fills a run of cells of each table */
    const int per = (AJ8_NC + AJ_WG - 1) / AJ_WG, cs = lid * per, ce = cs + per < AJ8_NC ? cs + per : AJ8_NC;
    const int ok = aj8_fill(tab1, t1, 0, cs, ce) & aj8_fill(tab1 + AJ8_NC, t1, 1, cs, ce) & aj8_fill(tab2, t2, 0, cs, ce);
    if (!ok) unusable = 1;
  }
  BARRIER;
]==]
if shared_tab then
  -- One work-group of AJ_WG work-items: tabs[0, 3 NC) the cells of tab1 (signed map,
  -- positive then negative) and tab2, tabs[3 NC] = 1 when the table cannot serve the maps.
  emit([==[
KERNEL void ]==], P.kernel_name, [==[_table(GLOBAL int* RESTRICT tabs, const GLOBAL float* RESTRICT thr1,
    const GLOBAL float* RESTRICT thr2) {
  LOCAL float t1[255], t2[255];
  LOCAL int tab1[2 * AJ8_NC], tab2[AJ8_NC];
  LOCAL int unusable;
  const int lid = LOCAL_ID;
  for (int j = lid; j < 255; j += AJ_WG) { t1[j] = thr1[j]; t2[j] = thr2[j]; }
  if (lid == 0) unusable = 0;
  BARRIER;
]==], TABLE_FILL, [==[
  for (int j = lid; j < AJ8_NC; j += AJ_WG) {
    tabs[j] = tab1[j];
    tabs[AJ8_NC + j] = tab1[AJ8_NC + j];
    tabs[2 * AJ8_NC + j] = tab2[j];
  }
  if (lid == 0) tabs[3 * AJ8_NC] = unusable;
}

]==])
end
local sfx = P.multi and "_all" or ""
emit("KERNEL ", own and "AJ8_WIDE " or "", "void ", P.kernel_name, "(GLOBAL aj_", P.p, "_t* RESTRICT p", sfx, ", const GLOBAL aj_", P.g,
     "_t* RESTRICT g", sfx, ",\n    GLOBAL aj_u8* RESTRICT c1", sfx, ", GLOBAL aj_u8* RESTRICT c2", sfx, ",\n")
if ams then emit("    GLOBAL aj_u8* RESTRICT c3", sfx, ",\n") end
emit("    GLOBAL float* RESTRICT absmax1", sfx, ", GLOBAL float* RESTRICT absmax2", sfx, ",\n")
if ams then emit("    GLOBAL float* RESTRICT absmax3", sfx, ",\n") end
emit([==[
    const GLOBAL float* RESTRICT map1, const GLOBAL float* RESTRICT map2,
    const GLOBAL float* RESTRICT thr1, const GLOBAL float* RESTRICT thr2,
]==])
if shared_tab then emit("    const GLOBAL int* RESTRICT tabs,\n") end
emit(P.multi and "    const GLOBAL float* RESTRICT tscalars,\n" or "    const GLOBAL float* RESTRICT scalars,\n")
if P.clip then emit("    const GLOBAL float* RESTRICT gscale,\n") end
if P.nonfinite then emit("    GLOBAL aj_u32* RESTRICT nonfinite,\n") end
if P.multi then
  -- every work-item of a group searches alike: the group is one tensor's from here on
  emitf([==[
    const GLOBAL aj_size* RESTRICT table, aj_size ntensors) {
  AJ_MULTI_ROW(lo, table, 10, ntensors);
  const GLOBAL aj_size* row = table + lo * 10;
  const aj_size n = row[1], group = GROUP_ID - row[0];
  GLOBAL aj_${p}_t* RESTRICT p = p_all + row[2];
  const GLOBAL aj_${g}_t* RESTRICT g = g_all + row[3];
  GLOBAL aj_u8* RESTRICT c1 = c1_all + row[4];
  GLOBAL aj_u8* RESTRICT c2 = c2_all + row[5];
  GLOBAL float* RESTRICT absmax1 = absmax1_all + row[7];
  GLOBAL float* RESTRICT absmax2 = absmax2_all + row[8];
  const GLOBAL float* RESTRICT scalars = tscalars + lo * 8;
]==], V)
  if ams then
    emit("  GLOBAL aj_u8* RESTRICT c3 = c3_all + row[6];\n  GLOBAL float* RESTRICT absmax3 = absmax3_all + row[9];\n")
  end
else
  emit("    aj_size n) {\n  const aj_size group = GROUP_ID;\n")
end
emit("  LOCAL float q1[256], q2[256], t1[255], t2[255];\n")
if not own then
  -- two halves: chunk c reduces in half c & 1, so the next chunk's first writes cannot
  -- overtake a work-item still reading this chunk's result (no barrier between them)
  emit("  LOCAL float r1[2 * AJ_WG], r2[2 * AJ_WG];\n")
  if ams then emit("  LOCAL float r3[2 * AJ_WG];\n") end
end
if use_table and not shared_tab then emit("  LOCAL int tab1[2 * AJ8_NC], tab2[AJ8_NC];\n  LOCAL int unusable;\n") end
if local_count then emit("  LOCAL aj_u32 nb[AJ_WG];\n") end
emit([==[
  const int lid = LOCAL_ID;
  for (int j = lid; j < 256; j += AJ_WG) { q1[j] = map1[j]; q2[j] = map2[j]; }
  for (int j = lid; j < 255; j += AJ_WG) { t1[j] = thr1[j]; t2[j] = thr2[j]; }
]==])
if use_table and not shared_tab then emit("  if (lid == 0) unusable = 0;\n") end
emit("  BARRIER;\n")
if use_table and shared_tab then
  emit([==[
  const GLOBAL int* tab1 = tabs;
  const GLOBAL int* tab2 = tabs + 2 * AJ8_NC;
  const int use_tab = !tabs[3 * AJ8_NC] && t2[0] > 0.0f;
]==])
elseif use_table then
  emit(TABLE_FILL .. [==[
  const int use_tab = !unusable && t2[0] > 0.0f;
]==])
end
emitf([==[
  const float beta1 = scalars[${s_beta1}], beta2 = scalars[${s_beta2}], eps = scalars[${s_eps}];
  const float step_size = scalars[${s_step_size}], inv_sqrt_c2 = scalars[${s_inv_sqrt_c2}];
  const float one_b1 = 1.0f - beta1, one_b2 = 1.0f - beta2;
]==], V)
emitf(P.wd and "  const float decay = scalars[${s_decay}];\n" or "  const float decay = 1.0f;\n", V)
emit(P.clip and "  const float scale = gscale[0];\n" or "  const float scale = 1.0f;\n")
emit("  aj_u32 bad = 0u;\n")

if own then
  -- The new m1, v1 (x1) of element i from its gradient and old codes: the same text in
  -- both passes where pass 2 recomputes, so both see the same bits.
  -- `dequantized`: the lines that give the old m0, v0 (x0) of element i.
  local gathered = "      const float m0 = q1[c1[i]] * A1, v0 = q2[c2[i]] * A2;\n" ..
                   (ams and "      const float x0 = q2[c3[i]] * A3;\n" or "")
  local function moments_from(dequantized)
    return "      const float graw = aj_load_${g}(g, i);\n" .. dequantized .. [==[
      const int ok = ${guard};
      const float gs = graw * scale;
      const float m1 = ok ? beta1 * m0 + one_b1 * gs : m0;
      const float v1 = ok ? beta2 * v0 + one_b2 * (gs * gs) : v0;
]==] .. (ams and "      const float x1 = ok ? (v1 > x0 ? v1 : x0) : x0;\n" or "")
  end
  local moments = moments_from(gathered)
  -- Requantization of element i from m1, v1 (x1), with the table or the search.
  local function requant(tab)
    local s = "      const float x = m1 * inv1;\n"
    if tab then
      s = s .. "      c1[i] = (aj_u8)aj8_code_signed(tab1, x, gmin);\n"
    else
      s = s .. "      int q = aj_nearest(t1, x);\n" ..
          "      if (x < 0.0f && q == zi && q > 0) q--; /* sign guard */\n      c1[i] = (aj_u8)q;\n"
    end
    if tab then
      s = s .. "      c2[i] = (aj_u8)aj8_code_unsigned(tab2, v1 * inv2);\n"
      if ams then s = s .. "      c3[i] = (aj_u8)aj8_code_unsigned(tab2, x1 * inv3);\n" end
    else
      s = s .. "      c2[i] = (aj_u8)aj_nearest(t2, v1 * inv2);\n"
      if ams then s = s .. "      c3[i] = (aj_u8)aj_nearest(t2, x1 * inv3);\n" end
    end
    return s
  end
  local function pass2(tab)
    local s = "    AJ8_VEC16\n    for (int j = 0; j < len; j++) {\n      const aj_size i = b0 + (aj_size)j;\n"
    if keep then
      s = s .. "      const float m1 = tm[j], v1 = tv[j];\n" .. (ams and "      const float x1 = tx[j];\n" or "")
    else
      s = s .. moments
    end
    return s .. requant(tab) .. "    }\n"
  end
  emitf([==[
  /* The sign guard's test "the code decodes to exactly 0" as a code comparison: for x < 0
     the code can only be the zero's, whose index is the number of thresholds <= 0. */
  int zi = aj_nearest(t1, 0.0f);
  if (q1[zi] != 0.0f) zi = -1;
  const int gmin = zi > 0 ? zi - 1 : 255; /* the largest code of a negative x (table) */
  const aj_size nblk = (n + AJ_BLOCK - 1) / AJ_BLOCK;
  for (int r = 0; r < AJ_EPT; r++) {
    const aj_size blk = (group * (aj_size)AJ_WG + (aj_size)lid) * (aj_size)AJ_EPT + (aj_size)r;
    if (blk >= nblk) break;
    const aj_size b0 = blk * (aj_size)AJ_BLOCK;
    const int len = (int)(n - b0 < (aj_size)AJ_BLOCK ? n - b0 : (aj_size)AJ_BLOCK);
    const float A1 = absmax1[blk], A2 = absmax2[blk];
]==], V)
  if ams then emit("    const float A3 = absmax3[blk];\n") end
  local moments1 = moments
  if keep then
    emit("    float tm[AJ_BLOCK] __attribute__((aligned(64))), tv[AJ_BLOCK] __attribute__((aligned(64)));\n" ..
         (ams and "    float tx[AJ_BLOCK] __attribute__((aligned(64)));\n" or ""))
    -- AVX-512: the old m, v (vmax) dequantized into the arrays first, 16 at a time by
    -- permutes; pass 1 then reads them there (the same products, so the same bits).
    emit("#if AJ8_PERM\n    {\n      int j = 0;\n      for (; j + 16 <= len; j += 16) {\n" ..
         "        const aj_size i = b0 + (aj_size)j;\n" ..
         "        *(float16*)(tm + j) = aj8_lut256(q1, convert_int16(vload16(0, c1 + i))) * A1;\n" ..
         "        *(float16*)(tv + j) = aj8_lut256(q2, convert_int16(vload16(0, c2 + i))) * A2;\n" ..
         (ams and "        *(float16*)(tx + j) = aj8_lut256(q2, convert_int16(vload16(0, c3 + i))) * A3;\n" or "") ..
         "      }\n      for (; j < len; j++) {\n        const aj_size i = b0 + (aj_size)j;\n" ..
         "        tm[j] = q1[c1[i]] * A1; tv[j] = q2[c2[i]] * A2;\n" ..
         (ams and "        tx[j] = q2[c3[i]] * A3;\n" or "") .. "      }\n    }\n#endif\n")
    moments1 = moments_from("#if AJ8_PERM\n      const float m0 = tm[j], v0 = tv[j];\n" ..
                            (ams and "      const float x0 = tx[j];\n" or "") .. "#else\n" .. gathered .. "#endif\n")
  end
  emit("    int k1 = 0, k2 = 0" .. (ams and ", k3 = 0" or "") .. ";\n")
  emitf("    AJ8_VEC16\n    for (int j = 0; j < len; j++) {\n      const aj_size i = b0 + (aj_size)j;\n" .. moments1 .. [==[
      float pv = aj_load_${p}(p, i) * decay;
      pv = pv - step_size * m1 / (AJ_SQRT(${vu}) * inv_sqrt_c2 + eps);
      aj_store_if_${p}(p, i, ok, pv);
      bad += ok ? 0u : 1u;
      k1 = max(k1, aj8_key(aj_abs(m1)));
      k2 = max(k2, aj8_key(v1));
]==], V)
  if ams then emit("      k3 = max(k3, aj8_key(x1));\n") end
  if keep then emit("      tm[j] = m1; tv[j] = v1;\n" .. (ams and "      tx[j] = x1;\n" or "")) end
  emit([==[
    }
    const float mx1 = aj_from_bits((aj_u32)k1), mx2 = aj_from_bits((aj_u32)k2);
    absmax1[blk] = mx1;
    absmax2[blk] = mx2;
    const float inv1 = mx1 == 0.0f ? 0.0f : 1.0f / mx1;
    const float inv2 = mx2 == 0.0f ? 0.0f : 1.0f / mx2;
]==])
  if ams then
    emit("    const float mx3 = aj_from_bits((aj_u32)k3);\n    absmax3[blk] = mx3;\n" ..
         "    const float inv3 = mx3 == 0.0f ? 0.0f : 1.0f / mx3;\n")
  end
  if use_table then
    local function indent(text) return (text:gsub("[^\n]*\n", "  %0")) end
    emitf("    if (use_tab) {\n" .. indent(pass2(true)) .. "    } else {\n" .. indent(pass2(false)) .. "    }\n", V)
  else
    emitf(pass2(false), V)
  end
  emit("  }\n")
else
  emitf([==[
  const int tl = lid & (AJ_T - 1), seg0 = lid - tl;
  for (int c = 0; c < AJ_EPT; c++) {
    const aj_size c0 = (group * (aj_size)AJ_EPT + (aj_size)c) * (aj_size)AJ_CHUNK;
    if (c0 >= n) break; /* the same for the whole group: every work-item leaves together */
    const aj_size blk = c0 / (aj_size)AJ_BLOCK + (aj_size)(lid / AJ_T), b0 = blk * (aj_size)AJ_BLOCK;
    const int len = b0 >= n ? 0 : (int)(n - b0 < (aj_size)AJ_BLOCK ? n - b0 : (aj_size)AJ_BLOCK);
    const float A1 = len ? absmax1[blk] : 0.0f, A2 = len ? absmax2[blk] : 0.0f;
]==], V)
  emit(ams and "    const float A3 = len ? absmax3[blk] : 0.0f;\n" or "")
  emit("    float tm[AJ_PER], tv[AJ_PER];\n")
  emit(ams and "    float tx[AJ_PER];\n" or "")
  emit("    float mx1 = 0.0f, mx2 = 0.0f;\n")
  emit(ams and "    float mx3 = 0.0f;\n" or "")
  emit([==[
    for (int k = 0; k < AJ_PER; k++) {
      const int j = tl + k * AJ_T;
      tm[k] = 0.0f; tv[k] = 0.0f;
]==])
  emit(ams and "      tx[k] = 0.0f;\n" or "")
  emitf([==[
      if (j < len) {
        const aj_size i = b0 + (aj_size)j;
        const float graw = aj_load_${g}(g, i);
        const float m0 = q1[c1[i]] * A1, v0 = q2[c2[i]] * A2;
]==], V)
  emit(ams and "        const float x0 = q2[c3[i]] * A3;\n        float x1 = x0;\n" or "")
  emitf([==[
        float m1 = m0, v1 = v0;
        if (${guard}) {
          const float gs = graw * scale;
          m1 = beta1 * m0 + one_b1 * gs;
          v1 = beta2 * v0 + one_b2 * (gs * gs);
]==], V)
  emit(ams and "          x1 = v1 > x0 ? v1 : x0;\n" or "")
  emitf([==[
          float pv = aj_load_${p}(p, i) * decay;
          pv = pv - step_size * m1 / (AJ_SQRT(${vu}) * inv_sqrt_c2 + eps);
          aj_store_${p}(p, i, pv);
        } else {
          bad++;
        }
        tm[k] = m1; tv[k] = v1;
        const float am = aj_abs(m1);
        mx1 = am > mx1 ? am : mx1;
        mx2 = v1 > mx2 ? v1 : mx2;
]==], V)
  emit(ams and "        tx[k] = x1;\n        mx3 = x1 > mx3 ? x1 : mx3;\n" or "")
  emit([==[
      }
    }
    /* the maxima over each block's T work-items: a tree within each segment of T */
    const int h = (c & 1) * AJ_WG;
    r1[h + lid] = mx1; r2[h + lid] = mx2;
]==])
  emit(ams and "    r3[h + lid] = mx3;\n" or "")
  emit([==[
    BARRIER;
    for (int s = AJ_T / 2; s > 0; s >>= 1) {
      if (tl < s) {
        r1[h + lid] = r1[h + lid + s] > r1[h + lid] ? r1[h + lid + s] : r1[h + lid];
        r2[h + lid] = r2[h + lid + s] > r2[h + lid] ? r2[h + lid + s] : r2[h + lid];
]==])
  emit(ams and "        r3[h + lid] = r3[h + lid + s] > r3[h + lid] ? r3[h + lid + s] : r3[h + lid];\n" or "")
  emit([==[
      }
      BARRIER;
    }
    mx1 = r1[h + seg0]; mx2 = r2[h + seg0];
]==])
  emit(ams and "    mx3 = r3[h + seg0];\n" or "")
  emit([==[
    if (tl == 0 && len) {
      absmax1[blk] = mx1;
      absmax2[blk] = mx2;
]==])
  emit(ams and "      absmax3[blk] = mx3;\n" or "")
  emit([==[
    }
    const float inv1 = mx1 == 0.0f ? 0.0f : 1.0f / mx1;
    const float inv2 = mx2 == 0.0f ? 0.0f : 1.0f / mx2;
]==])
  emit(ams and "    const float inv3 = mx3 == 0.0f ? 0.0f : 1.0f / mx3;\n" or "")
  emit([==[
    for (int k = 0; k < AJ_PER; k++) {
      const int j = tl + k * AJ_T;
      if (j < len) {
        const aj_size i = b0 + (aj_size)j;
        const float x = tm[k] * inv1;
        int q = aj_nearest(t1, x);
        if (x < 0.0f && q1[q] == 0.0f && q > 0) q--; /* sign guard */
        c1[i] = (aj_u8)q;
        c2[i] = (aj_u8)aj_nearest(t2, tv[k] * inv2);
]==])
  emit(ams and "        c3[i] = (aj_u8)aj_nearest(t2, tx[k] * inv3);\n" or "")
  emit("      }\n    }\n  }\n")
end
if local_count then
  emit([==[
  nb[lid] = bad;
  BARRIER;
  if (lid == 0) {
    aj_u32 s = 0u;
    for (int j = 0; j < AJ_WG; j++) s += nb[j];
    if (s) ATOMIC_ADD_U32(nonfinite, s);
  }
]==])
elseif P.nonfinite then
  emit("  if (bad) ATOMIC_ADD_U32(nonfinite, bad);\n")
else
  emit("  (void)bad;\n")
end
emit("}\n")
