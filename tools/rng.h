/* A small deterministic RNG for the tools: the same seed gives the same data on every
 * platform and libc, which rand() does not promise. */
#ifndef ADAMJIT_TOOLS_RNG_H
#define ADAMJIT_TOOLS_RNG_H

#include <math.h>
#include <stdint.h>

typedef struct rng {
  uint64_t state;
} rng;

/* splitmix64: every seed (0 included) gives a well-mixed stream. */
static inline uint64_t rng_next(rng* r) {
  uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Independent streams from one user seed, so e.g. the data does not change when the weight
 * initialisation draws a different number of values. */
static inline rng rng_stream(uint64_t seed, uint64_t stream) {
  rng r = {seed ^ (stream * 0xD1B54A32D192ED03ull)};
  rng_next(&r);
  return r;
}

/* Uniform in [0, 1) with 53 random bits. */
static inline double rng_uniform(rng* r) { return (double)(rng_next(r) >> 11) * 0x1.0p-53; }

/* Uniform integer in [0, n), n > 0; the modulo bias is below 2^-32 for the sizes used here. */
static inline uint64_t rng_below(rng* r, uint64_t n) { return rng_next(r) % n; }

/* Standard normal (Box-Muller; one value per call keeps the state a single word). */
static inline double rng_normal(rng* r) {
  double u1 = 1.0 - rng_uniform(r); /* (0, 1]: log stays finite */
  double u2 = rng_uniform(r);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

#endif /* ADAMJIT_TOOLS_RNG_H */
