/* The tests' scalar model of percentile clipping (SPEC 4) for one tensor, shared by
 * test_percentile_clipping.c (which tests the rule over long runs and against the rule it
 * replaced) and test_nonfinite.c (which uses it to predict the scale of each step).
 *
 * A history of CLIP_HISTORY float squared gradient norms; sq = sum of g^2 over the finite
 * elements, accumulated in double and stored as float; the first recording step fills every
 * slot with sq, a later one slot t % CLIP_HISTORY (t: the tensor's own step counter, which
 * advances on every step); current = sqrtf(sq), clip = sqrtf(sorted_ascending(history)[p]),
 * scale = current > clip ? clip / current : 1.
 *
 * RULE_NEW (the library's): a step with any NaN or +-Inf element records nothing; while the
 * history is unfilled such a step has scale 1, on a filled one it is scaled as usual from
 * its finite part. RULE_OLD (the rule it replaced, kept only to show that it differs):
 * every step records the finite part's sq (0 for an all-NaN step). */
#ifndef ADAMJIT_TESTS_CLIP_MODEL_H
#define ADAMJIT_TESTS_CLIP_MODEL_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { CLIP_HISTORY = 100 };

typedef enum {
  RULE_NEW, /* a step with a non-finite element records nothing (the library's rule) */
  RULE_OLD  /* every step records the finite part's sq (0 if all-NaN); only to show it differs */
} clip_rule;

/* Zero-initialize (memset) for a fresh tensor under RULE_NEW. */
typedef struct {
  clip_rule rule;
  float history[CLIP_HISTORY];
  int filled; /* the history holds norms (RULE_NEW: not until the first all-finite step) */
  uint64_t t;
  float last_scale;
  int active, inactive;       /* recording steps after the first where clipping did / did not scale */
  int skip_clipped, skip_kept; /* non-recording steps on a filled history: scaled or not */
} clip_model;

static inline int clip_model_cmp_float(const void* a, const void* b) {
  float x = *(const float*)a, y = *(const float*)b;
  return (x > y) - (x < y);
}

/* One step of the tensor with fp32 gradients g[0..n); returns this step's gradient scale. */
static inline float clip_model_scale(clip_model* cm, const float* g, int64_t n, int percentile) {
  double sq = 0.0;
  int nonfinite = 0;
  for (int64_t i = 0; i < n; i++) {
    if (isfinite(g[i])) sq += (double)g[i] * (double)g[i];
    else nonfinite = 1;
  }
  const float sqf = (float)sq;
  cm->t++;
  const int record = cm->rule == RULE_OLD || !nonfinite;
  if (record && !cm->filled) {
    for (int k = 0; k < CLIP_HISTORY; k++) cm->history[k] = sqf;
    cm->filled = 1;
  } else if (record) {
    cm->history[cm->t % CLIP_HISTORY] = sqf;
  } else if (!cm->filled) {
    return cm->last_scale = 1.0f; /* nothing to compare with yet */
  }
  float sorted[CLIP_HISTORY];
  memcpy(sorted, cm->history, sizeof sorted);
  qsort(sorted, CLIP_HISTORY, sizeof sorted[0], clip_model_cmp_float);
  const float current = sqrtf(sqf), clip = sqrtf(sorted[percentile]);
  const float scale = current > clip ? clip / current : 1.0f;
  if (!record) {
    if (scale < 1.0f) cm->skip_clipped++;
    else cm->skip_kept++;
  } else if (cm->t > 1) {
    if (scale < 1.0f) cm->active++;
    else cm->inactive++;
  }
  return cm->last_scale = scale;
}

#endif
