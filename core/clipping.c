/* Percentile clipping (SPEC 4) on the host: the CPU backend's path and the definition the
 * device kernels must reproduce. */
#include <math.h>
#include <string.h>

#include "core/internal.h"

/* The k-th smallest of the history (k in 0..99); insertion sort of a copy: 100 floats. */
static float kth_smallest(const float history[AJ_CLIP_HISTORY], int k) {
  float sorted[AJ_CLIP_HISTORY];
  memcpy(sorted, history, sizeof sorted);
  for (int i = 1; i < AJ_CLIP_HISTORY; i++) {
    float x = sorted[i];
    int j = i - 1;
    for (; j >= 0 && sorted[j] > x; j--) sorted[j + 1] = sorted[j];
    sorted[j + 1] = x;
  }
  return sorted[k];
}

float aj_clip_scale(float history[AJ_CLIP_HISTORY], uint64_t step, int percentile, float sq, int had_nonfinite) {
  /* A gradient with NaN or Inf elements (an overflowed fp16 loss scale, typically) says
   * nothing reliable about the usual gradient size, so its norm is not recorded: recording
   * the finite part would drag the low percentiles towards 0 and stall training. A first
   * step that is skipped leaves the history unfilled, marked by NaN, and the first clean
   * step fills it instead. */
  int unfilled = step == 1 || isnan(history[0]);
  if (had_nonfinite) {
    if (unfilled) {
      for (int i = 0; i < AJ_CLIP_HISTORY; i++) history[i] = NAN;
      return 1.0f; /* nothing to compare with yet */
    }
  } else if (unfilled) {
    for (int i = 0; i < AJ_CLIP_HISTORY; i++) history[i] = sq;
  } else {
    history[step % AJ_CLIP_HISTORY] = sq;
  }
  /* percentile 100 means "off"; callers do not get here with it, but index 99 is the largest. */
  int k = percentile < AJ_CLIP_HISTORY ? percentile : AJ_CLIP_HISTORY - 1;
  float current = sqrtf(sq);
  float clip = sqrtf(kth_smallest(history, k));
  return current > clip ? clip / current : 1.0f;
}
