-- Per-tensor sum of squares of a gradient (percentile clipping, SPEC 4), as partial sums:
-- each work-group writes the sum of its wg*ept elements to partial[group], so the result
-- does not depend on the order atomics land in (runs are reproducible). A tensor needing
-- more than one group is finished by launching the g=f32 variant on the partials (without
-- the guard: partials of finite values are finite or +inf) until one value is left.
-- Kernel arguments: const GLOBAL G* g, GLOBAL float* partial,
--   [nonfinite: GLOBAL aj_u32* nonfinite]  non-finite elements are left out of the sum and
--   counted here (without the guard they are summed: the norm becomes inf or NaN),
--   aj_size n.
-- Launch: like adamw32 (global size = ceil(n / (wg*ept)) * wg); wg is a power of two.
local P = params
emitf([==[
#define AJ_WG ${wg}
#define AJ_EPT ${ept}
KERNEL void ${kernel_name}(const GLOBAL aj_${g}_t* RESTRICT g, GLOBAL float* RESTRICT partial,
]==])
if P.nonfinite then emit("    GLOBAL aj_u32* RESTRICT nonfinite,\n") end
emitf([==[
    aj_size n) {
  LOCAL float red[AJ_WG];
  const int lid = LOCAL_ID;
  const aj_size base = GROUP_ID * (aj_size)(AJ_WG * AJ_EPT) + (aj_size)lid;
  float acc = 0.0f;
  aj_u32 bad = 0u;
  for (int k = 0; k < AJ_EPT; k++) {
    const aj_size i = base + (aj_size)k * AJ_WG;
    if (i >= n) break;
    const float x = aj_load_${g}(g, i);
]==])
if P.nonfinite then emit("    if (!aj_isfinite(x)) { bad++; continue; }\n") end
emit([==[
    acc += x * x;
  }
  red[lid] = acc;
  BARRIER;
  for (int s = AJ_WG / 2; s > 0; s >>= 1) {
    if (lid < s) red[lid] += red[lid + s];
    BARRIER;
  }
  if (lid == 0) partial[GROUP_ID] = red[0];
]==])
if P.nonfinite then emit("  if (bad) ATOMIC_ADD_U32(nonfinite, bad);\n") else emit("  (void)bad;\n") end
emit("}\n")
