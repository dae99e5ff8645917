-- The 32-bit AdamW step (SPEC 2), one element per (thread, k), k < ept.
-- Kernel arguments, in order (bracketed ones only when the flag is on):
--   GLOBAL P* p, const GLOBAL G* g, GLOBAL float* m, GLOBAL float* v, [amsgrad: GLOBAL float* vmax],
--   const GLOBAL float* scalars   the per-step scalars (indices s_* in params, see jit/render.h):
--                                 beta1, beta2, eps, decay = 1 - lr*wd, step_size = lr / c1,
--                                 inv_sqrt_c2 = 1 / sqrt(c2); in device memory so that a new
--                                 lr or step needs no recompile,
--   [clip: const GLOBAL float* gscale]  gscale[0] multiplies the gradient (percentile clipping),
--   [nonfinite: GLOBAL aj_u32* nonfinite]  incremented by the number of non-finite gradients met;
--                                 their p, m, v, vmax stay untouched,
--   aj_size n.
-- Launch: work-groups of wg threads, each group covers wg*ept consecutive elements
-- (global size = ceil(n / (wg*ept)) * wg). Element k of a thread is group_base + k*wg + lid so
-- that neighbouring threads touch neighbouring memory. vec is accepted but the loads are
-- scalar: a CPU device (PoCL) vectorizes across work-items, and vec consecutive elements per
-- work-item made its loads strided (20-25% slower there); results are equal for any vec.
-- The k loop is unrolled so that no loop is left inside the work-item code: PoCL vectorizes
-- only innermost loops, and otherwise vectorized the k loop itself, with gathers.
--
-- multi (many tensors, one launch; backends/gpu/gpu_group.h): the arguments become
--   GLOBAL P* p_all, const GLOBAL G* g_all, GLOBAL float* m_all, GLOBAL float* v_all,
--   [amsgrad: GLOBAL float* vmax_all], const GLOBAL float* tscalars (8 floats per tensor,
--   the scalars above first), [nonfinite: GLOBAL aj_u32* nonfinite],
--   const GLOBAL aj_size* table (8 per tensor: first work-group, n, then the element
--   offsets of p, g, m, v, vmax in their buffers), aj_size ntensors.
-- Launch: the sum over tensors of ceil(n / (wg*ept)) work-groups, in table order; a group
-- finds its tensor by binary search over the first-work-group column. No clip with multi.
local P = params
local suffix = P.multi and "_all" or ""
emitf([==[
#define AJ_WG ${wg}
#define AJ_EPT ${ept}
]==])
emit("KERNEL void ", P.kernel_name, "(GLOBAL aj_", P.p, "_t* RESTRICT p", suffix, ", const GLOBAL aj_", P.g,
     "_t* RESTRICT g", suffix, ",\n    GLOBAL float* RESTRICT m", suffix, ", GLOBAL float* RESTRICT v", suffix, ",\n")
if P.amsgrad then emit("    GLOBAL float* RESTRICT vmax", suffix, ",\n") end
emit(P.multi and "    const GLOBAL float* RESTRICT tscalars,\n" or "    const GLOBAL float* RESTRICT scalars,\n")
if P.clip then emit("    const GLOBAL float* RESTRICT gscale,\n") end
if P.nonfinite then emit("    GLOBAL aj_u32* RESTRICT nonfinite,\n") end
if P.multi then
  emitf([==[
    const GLOBAL aj_size* RESTRICT table, aj_size ntensors) {
  AJ_MULTI_ROW(lo, table, 8, ntensors);
  const GLOBAL aj_size* row = table + lo * 8;
  const aj_size n = row[1], group = GROUP_ID - row[0];
  GLOBAL aj_${p}_t* RESTRICT p = p_all + row[2];
  const GLOBAL aj_${g}_t* RESTRICT g = g_all + row[3];
  GLOBAL float* RESTRICT m = m_all + row[4];
  GLOBAL float* RESTRICT v = v_all + row[5];
  const GLOBAL float* RESTRICT scalars = tscalars + lo * 8;
]==])
  if P.amsgrad then emit("  GLOBAL float* RESTRICT vmax = vmax_all + row[6];\n") end
else
  emit("    aj_size n) {\n  const aj_size group = GROUP_ID;\n")
end
emitf([==[
  const float beta1 = scalars[${s_beta1}], beta2 = scalars[${s_beta2}], eps = scalars[${s_eps}];
  const float step_size = scalars[${s_step_size}], inv_sqrt_c2 = scalars[${s_inv_sqrt_c2}];
  const float one_b1 = 1.0f - beta1, one_b2 = 1.0f - beta2;
]==])
emitf(P.wd and "  const float decay = scalars[${s_decay}];\n" or "  const float decay = 1.0f;\n")
emitf(P.clip and "  const float scale = gscale[0];\n" or "  const float scale = 1.0f;\n")

emitf([==[
  const aj_size base = group * (aj_size)(AJ_WG * AJ_EPT) + (aj_size)LOCAL_ID;
  aj_u32 bad = 0u;
]==])
-- The ept elements of a work-item; with `guard`, each behind a test of i < n. A work-group
-- whose elements are all in range (all but a tensor's last) runs the unguarded copy, and
-- an element whose gradient is not finite writes its old values back instead of skipping
-- the stores: a CPU device (PoCL) vectorizes a conditional load or store into a masked one,
-- and with those the step took 2.5x as long there.
local function elements(guard)
  emitf([==[
  _Pragma("unroll") for (int k = 0; k < AJ_EPT; k++) {
    const aj_size i = base + (aj_size)k * AJ_WG;
    ${open}{ /* no break: an early exit from the unrolled loop would stop PoCL's vectorizer */
    const float graw = aj_load_${g}(g, i);
    const int ok = ${ok};
    const float gs = graw * scale;
    const float m0 = m[i], v0 = v[i];
    const float m1 = beta1 * m0 + one_b1 * gs;
    const float v1 = beta2 * v0 + one_b2 * (gs * gs);
    m[i] = ok ? m1 : m0;
    v[i] = ok ? v1 : v0;
]==], setmetatable({open = guard and "if (i < n) " or "", ok = P.nonfinite and "aj_isfinite(graw)" or "1"},
                  {__index = P}))
  if P.amsgrad then
    emit("    const float x0 = vmax[i];\n    const float vu = v1 > x0 ? v1 : x0;\n    vmax[i] = ok ? vu : x0;\n")
  else
    emit("    const float vu = v1;\n")
  end
  emitf([==[
    float pv = aj_load_${p}(p, i) * decay;
    pv = pv - step_size * m1 / (AJ_SQRT(vu) * inv_sqrt_c2 + eps);
    aj_store_if_${p}(p, i, ok, pv);
    bad += ok ? 0u : 1u;
    }
  }
]==])
end
emit("  if ((group + 1) * (aj_size)(AJ_WG * AJ_EPT) <= n) {\n")
elements(false)
emit("  } else {\n")
elements(true)
emit("  }\n")
-- OpenCL counts the non-finite gradients through local memory and one atomic per group: an
-- atomic in the work-item code keeps a CPU device (PoCL) from vectorizing that code.
if P.nonfinite and P.dialect == "opencl" then
  emit([==[
  LOCAL aj_u32 nb[AJ_WG];
  nb[LOCAL_ID] = bad;
  BARRIER;
  if (LOCAL_ID == 0) {
    aj_u32 s = 0u;
    for (int j = 0; j < AJ_WG; j++) s += nb[j];
    if (s) ATOMIC_ADD_U32(nonfinite, s);
  }
]==])
elseif P.nonfinite then emit("  if (bad) ATOMIC_ADD_U32(nonfinite, bad);\n") else emit("  (void)bad;\n") end
emit("}\n")
