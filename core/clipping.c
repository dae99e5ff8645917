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

float aj_clip_scale(float history[AJ_CLIP_HISTORY], uint64_t step, int percentile, float sq) {
  if (step == 1) {
    for (int i = 0; i < AJ_CLIP_HISTORY; i++) history[i] = sq;
  } else {
    history[step % AJ_CLIP_HISTORY] = sq;
  }
  /* percentile 100 means "off"; callers do not get here with it, but index 99 is the largest. */
  int k = percentile < AJ_CLIP_HISTORY ? percentile : AJ_CLIP_HISTORY - 1;
  float current = sqrtf(history[step % AJ_CLIP_HISTORY]);
  float clip = sqrtf(kth_smallest(history, k));
  return current > clip ? clip / current : 1.0f;
}
