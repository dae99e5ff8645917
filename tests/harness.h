/* A small test harness: CHECK macros that count failures, and exit codes CTest reads
 * (0 pass, 1 fail, 77 skipped). Include once per test program. */
#ifndef ADAMJIT_TESTS_HARNESS_H
#define ADAMJIT_TESTS_HARNESS_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adamjit/adamjit.h"

#define TEST_SKIP_CODE 77

/* A whole file in a malloc'd buffer (one byte more than its length, so never NULL for an
 * empty file that opened), its length in *len; NULL if it cannot be opened. */
static inline void* test_read_file(const char* path, size_t* len) {
  *len = 0;
  FILE* f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char* buf = malloc(n > 0 ? (size_t)n + 1 : 1);
  if (buf && n > 0) *len = fread(buf, 1, (size_t)n, f);
  fclose(f);
  return buf;
}

static int test_failures = 0;
static int test_checks = 0;

#define CHECK(cond)                                                                \
  do {                                                                             \
    test_checks++;                                                                 \
    if (!(cond)) {                                                                 \
      test_failures++;                                                             \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);     \
    }                                                                              \
  } while (0)

#define CHECK_MSG(cond, ...)                                                       \
  do {                                                                             \
    test_checks++;                                                                 \
    if (!(cond)) {                                                                 \
      test_failures++;                                                             \
      fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);     \
      fprintf(stderr, __VA_ARGS__);                                                \
      fputc('\n', stderr);                                                         \
    }                                                                              \
  } while (0)

/* Expects status `want` from `call`. */
#define CHECK_STATUS(call, want)                                                   \
  do {                                                                             \
    adamjit_status st_ = (call);                                                   \
    test_checks++;                                                                 \
    if (st_ != (want)) {                                                           \
      test_failures++;                                                             \
      fprintf(stderr, "%s:%d: %s returned %s, expected %s\n", __FILE__, __LINE__,  \
              #call, adamjit_status_string(st_), adamjit_status_string(want));     \
    }                                                                              \
  } while (0)

#define CHECK_OK(call) CHECK_STATUS(call, ADAMJIT_OK)

/* Aborts the test program on a failed precondition the rest cannot run without. */
#define REQUIRE_OK(call)                                                           \
  do {                                                                             \
    adamjit_status st_ = (call);                                                   \
    if (st_ != ADAMJIT_OK) {                                                       \
      fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call,         \
              adamjit_status_string(st_));                                         \
      exit(1);                                                                     \
    }                                                                              \
  } while (0)

/* Prints the summary line and returns the exit code for main. */
static inline int test_finish(const char* name) {
  printf("%s: %d checks, %d failed\n", name, test_checks, test_failures);
  return test_failures ? 1 : 0;
}

/* A CPU-backend context with default settings; exits the test program if it cannot be made. */
static inline adamjit_context* test_cpu_context(void) {
  adamjit_context_desc d;
  adamjit_context_desc_init_default(&d);
  d.backend = ADAMJIT_BACKEND_CPU;
  adamjit_context* ctx = NULL;
  REQUIRE_OK(adamjit_context_create(&d, &ctx));
  return ctx;
}

/* calloc that never returns NULL: zeroed memory for n elements (at least one), or exit(2). */
static inline void* test_calloc(size_t n, size_t size) {
  void* p = calloc(n ? n : 1, size);
  if (!p) exit(2);
  return p;
}

/* Deterministic pseudo-random numbers (xorshift64*), independent of libc. */
typedef struct { unsigned long long s; } test_rng;
static inline unsigned long long test_rng_next(test_rng* r) {
  r->s ^= r->s >> 12; r->s ^= r->s << 25; r->s ^= r->s >> 27;
  return r->s * 2685821657736338717ULL;
}
/* Uniform in [-1, 1). */
static inline double test_rng_uniform(test_rng* r) {
  return (double)(test_rng_next(r) >> 11) * (2.0 / 9007199254740992.0) - 1.0;
}

#endif
