-- Percentile clipping finished on the device (SPEC 4), the rules of core/clipping.c
-- aj_clip_scale, so that the gradient scale never travels to the host and back: the step
-- kernels read it from gscale[0] (their clip flag).
--
-- One kernel, aj_clip. Arguments, in order (bracketed ones only when the flag is on):
--   const GLOBAL float* partial   `count` partial sums of squares of this tensor's gradient:
--                                 the output of sqnorm, after as many of its reduction
--                                 stages as the host likes (count = 1 after all of them)
--   GLOBAL float* history         the tensor's 100 squared norms (read and updated). Any
--                                 contents before step 1; a NaN in history[0] marks it as
--                                 not yet filled (a skipped first step leaves it so)
--   GLOBAL float* gscale          gscale[0] receives the scale of this step
--   [nonfinite: const GLOBAL aj_u32* nonfinite]  nonfinite[0]: the number of non-finite
--                                 gradient elements of this tensor that its sqnorm (with
--                                 the guard) counted this step; the counter must hold only
--                                 this tensor's count. Not 0: the step is not recorded.
--                                 Without the flag every step is recorded (an unguarded
--                                 sqnorm sums NaN/Inf into the partials).
--   aj_size count                 number of partials (0 reads as sq = 0)
--   aj_size step                  the tensor's step t, 1 on its first update
--   int percentile                0..99 (100 means clipping is off, so nobody launches it;
--                                 it reads as 99 like aj_clip_scale; below 0 as 0)
-- Launch: exactly one work-group of wg threads (global size = local size = wg). It is a
-- per-tensor epilogue of microseconds: one group needs no cross-group step.
--
-- What it computes, in this order:
--   sq = the sum of the partials in a fixed order (reproducible run to run for one wg):
--        thread l adds partial[l], partial[l + wg], ... in index order to 0.0f, then the
--        wg sums are added pairwise in a tree (for s = wg/2 .. 1: acc[l] += acc[l + s]).
--        A single partial is taken exactly.
--   unfilled = step == 1 or history[0] is NaN
--   non-finite step: unfilled -> history = NaN everywhere, gscale = 1, done; otherwise
--        history unchanged. Finite step: unfilled -> every slot = sq; else slot step % 100.
--   kth = sorted(history)[k], k = percentile clamped to 0..99, with exactly the order the
--        host's insertion sort leaves (a NaN stays where it is and the runs between NaNs
--        sort separately, stably): so a NaN recorded by an unguarded step gives the same
--        scale as on the host. Computed in parallel: each non-NaN slot counts its rank in
--        its run (O(100) per thread instead of one thread sorting).
--   gscale = sqrt(sq) > sqrt(kth) ? sqrt(kth) / sqrt(sq) : 1 in fp32, as aj_clip_scale.
-- Given the same sq, history and gscale are bit-identical to aj_clip_scale's on a device
-- with IEEE sqrt and division (CUDA by default; PoCL; other OpenCL devices need
-- -cl-fp32-correctly-rounded-divide-sqrt). sq itself differs from the CPU backend's, which
-- sums in double: within SPEC 7's tolerances, not bitwise.
local P = params
emitf([==[
#define AJ_WG ${wg}
#define AJ_CLIP_HISTORY 100
KERNEL void ${kernel_name}(const GLOBAL float* RESTRICT partial, GLOBAL float* RESTRICT history,
    GLOBAL float* RESTRICT gscale,
]==])
if P.nonfinite then emit("    const GLOBAL aj_u32* RESTRICT nonfinite,\n") end
emit([==[
    aj_size count, aj_size step, int percentile) {
  LOCAL float red[AJ_WG];
  LOCAL float h[AJ_CLIP_HISTORY];
  LOCAL float kth;
  const int lid = LOCAL_ID;
  const float qnan = aj_from_bits(0x7fc00000u); /* the host's NAN */
  /* Every read of the old history happens before the first barrier, every write after it. */
  const int unfilled = step == 1u || aj_isnan(history[0]);
  for (int j = lid; j < AJ_CLIP_HISTORY; j += AJ_WG) h[j] = history[j];
  float acc = 0.0f;
  for (aj_size j = (aj_size)lid; j < count; j += (aj_size)AJ_WG) acc += partial[j];
  red[lid] = acc;
  if (lid == 0) kth = qnan; /* stays NaN when slot k of the sorted order is a NaN */
  BARRIER;
  for (int s = AJ_WG / 2; s > 0; s >>= 1) {
    if (lid < s) red[lid] += red[lid + s];
    BARRIER;
  }
  const float sq = red[0];
]==])
emit(P.nonfinite and "  const int bad = nonfinite[0] != 0u;\n" or "  const int bad = 0;\n")
emit([==[
  /* Nothing to compare with yet: the history stays unfilled and the scale is 1. No early
   * return: every thread passes every barrier, which some OpenCL compilers need even for a
   * uniform branch. */
  const int skip = bad && unfilled;
  if (skip) {
    for (int j = lid; j < AJ_CLIP_HISTORY; j += AJ_WG) history[j] = qnan;
  } else if (!bad) {
    if (unfilled) {
      for (int j = lid; j < AJ_CLIP_HISTORY; j += AJ_WG) { h[j] = sq; history[j] = sq; }
    } else if (lid == 0) {
      const int slot = (int)(step % (aj_size)AJ_CLIP_HISTORY);
      h[slot] = sq;
      history[slot] = sq;
    }
  }
  BARRIER;
  const int k = percentile < 0 ? 0 : percentile < AJ_CLIP_HISTORY ? percentile : AJ_CLIP_HISTORY - 1;
  for (int j = skip ? AJ_CLIP_HISTORY : lid; j < AJ_CLIP_HISTORY; j += AJ_WG) {
    const float x = h[j];
    if (aj_isnan(x)) continue;
    int a = j, b = j + 1; /* the run of non-NaN slots around j */
    while (a > 0 && !aj_isnan(h[a - 1])) a--;
    while (b < AJ_CLIP_HISTORY && !aj_isnan(h[b])) b++;
    int pos = a; /* where a stable sort of the run puts slot j */
    for (int i = a; i < b; i++) pos += (h[i] < x || (i < j && h[i] == x)) ? 1 : 0;
    if (pos == k) kth = x;
  }
  BARRIER;
  if (lid == 0) {
    const float current = AJ_SQRT(sq), clip = AJ_SQRT(kth);
    gscale[0] = !skip && current > clip ? clip / current : 1.0f;
  }
}
]==])
