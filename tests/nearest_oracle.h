/* The tests' exact nearest-code oracle (independent of the library's search): distances
 * between a value and map entries compared exactly as two-sum pairs of doubles, so a tie is
 * a real tie and either neighbour is accepted there. */
#ifndef ADAMJIT_TESTS_NEAREST_ORACLE_H
#define ADAMJIT_TESTS_NEAREST_ORACLE_H

#include "adamjit/adamjit.h"

enum { ORACLE_MAPN = ADAMJIT_QMAP_SIZE };

/* An exact |a - b| of two doubles as hi + lo (Knuth's TwoSum). */
typedef struct {
  double hi, lo;
} dd;

static inline dd exact_abs_diff(double a, double b) {
  double s = a - b, nb = -b;
  double bb = s - a;
  double err = (a - (s - bb)) + (nb - bb);
  if (s < 0.0 || (s == 0.0 && err < 0.0)) s = -s, err = -err;
  return (dd){s, err};
}

/* hi is the rounded value, so rounding's monotonicity makes (hi, lo) order lexicographic. */
static inline int dd_cmp(dd a, dd b) {
  if (a.hi != b.hi) return a.hi < b.hi ? -1 : 1;
  if (a.lo != b.lo) return a.lo < b.lo ? -1 : 1;
  return 0;
}

/* The last index with map[i] <= t, -1 if none (map ascending). */
static inline int oracle_bracket(const float* map, double t) {
  int lo = -1, hi = ORACLE_MAPN - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if ((double)map[mid] <= t) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/* The nearest codes of t: *first, and *second = *first or the other code of an exact tie. */
static inline void nearest_bracket(const float* map, double t, int* first, int* second) {
  int lo = oracle_bracket(map, t);
  if (lo < 0) {
    *first = *second = 0;
    return;
  }
  if (lo == ORACLE_MAPN - 1 || (double)map[lo] == t) {
    *first = *second = lo;
    return;
  }
  int c = dd_cmp(exact_abs_diff(t, map[lo]), exact_abs_diff(map[lo + 1], t));
  *first = c <= 0 ? lo : lo + 1;
  *second = c < 0 ? lo : lo + 1;
}

/* 1 if code c is a nearest entry to t (either one at an exact tie). */
static inline int is_nearest(const float* map, double t, int c) {
  int a, b;
  nearest_bracket(map, t, &a, &b);
  return c == a || c == b;
}

#endif
