/* The NVRTC compile driver: loader failure reporting, argument checks, CUBIN for sm_80 and
 * sm_90, PTX for compute_90, the PTX fallback for an architecture newer than NVRTC, compile
 * errors that name program and line, and the warning log. NVRTC needs no GPU, so this runs
 * wherever libnvrtc is installed; without it the test is skipped (77). */
#include <stdint.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "jit/nvrtc.h"

/* An AdamW-like step in the shape the templates will render: fp32 math, a bf16 parameter
 * variant by bit conversion (round to nearest even), helpers without __device__ (the driver
 * passes -default-device), and an optional kernel switched on by an extra option. */
static const char* const kernel_source =
    "typedef unsigned short bf16_bits;\n"
    "static __forceinline__ float bf16_to_f32(bf16_bits h) { return __uint_as_float(((unsigned int)h) << 16); }\n"
    "static __forceinline__ bf16_bits f32_to_bf16(float f) {\n"
    "  unsigned int u = __float_as_uint(f);\n"
    "  if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_bits)((u >> 16) | 0x40u); /* quiet NaN */\n"
    "  u += 0x7fffu + ((u >> 16) & 1u);\n"
    "  return (bf16_bits)(u >> 16);\n"
    "}\n"
    "static __forceinline__ float adamw(float p, float g, float* m, float* v, float lr, float b1, float b2,\n"
    "                                   float eps, float wd, float bc1, float bc2) {\n"
    "  float mi = b1 * *m + (1.0f - b1) * g;\n"
    "  float vi = b2 * *v + (1.0f - b2) * g * g;\n"
    "  *m = mi;\n"
    "  *v = vi;\n"
    "  p -= lr * wd * p;\n"
    "  return p - lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);\n"
    "}\n"
    "extern \"C\" __global__ void adamw32_f32(float* p, const float* g, float* m, float* v, long long n, float lr,\n"
    "                                        float b1, float b2, float eps, float wd, float bc1, float bc2) {\n"
    "  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n"
    "  if (i < n) p[i] = adamw(p[i], g[i], &m[i], &v[i], lr, b1, b2, eps, wd, bc1, bc2);\n"
    "}\n"
    "extern \"C\" __global__ void adamw32_bf16(bf16_bits* p, const bf16_bits* g, float* m, float* v, long long n,\n"
    "                                         float lr, float b1, float b2, float eps, float wd, float bc1, float bc2) {\n"
    "  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n"
    "  if (i < n)\n"
    "    p[i] = f32_to_bf16(adamw(bf16_to_f32(p[i]), bf16_to_f32(g[i]), &m[i], &v[i], lr, b1, b2, eps, wd, bc1, bc2));\n"
    "}\n"
    "#ifdef AJ_TEST_EXTRA_KERNEL\n"
    "extern \"C\" __global__ void extra_kernel(float* x) { x[threadIdx.x] *= 2.0f; }\n"
    "#endif\n";

/* The error is on line 3 and the message must say so. */
static const char* const broken_source =
    "extern \"C\" __global__ void broken(float* x) {\n"
    "  float y = x[0];\n"
    "  x[1] = y * undefined_symbol;\n"
    "}\n";

/* Compiles cleanly but draws a warning (an unused variable). */
static const char* const warning_source =
    "extern \"C\" __global__ void warns(float* x) {\n"
    "  int unused_local = 3;\n"
    "  x[0] = 1.0f;\n"
    "}\n";

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int warnings_seen = 0;
static char last_warning[4096];
static void log_fn(adamjit_log_level level, const char* message, void* user) {
  (void)user;
  if (level == ADAMJIT_LOG_WARN) {
    warnings_seen++;
    snprintf(last_warning, sizeof last_warning, "%s", message);
  }
}

/* In a child process (the loader runs once per process): a library named by
 * ADAMJIT_NVRTC_LIBRARY that does not exist is reported, and nothing else is tried. */
static void check_loader_failure(void) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    const char* bogus = "/nonexistent/adamjit-test/libnvrtc.so.99";
    setenv("ADAMJIT_NVRTC_LIBRARY", bogus, 1);
    int bad = 0;
    char why[1024] = "x";
    if (aj_nvrtc_available(why, sizeof why) != ADAMJIT_ERR_BACKEND_UNAVAILABLE) bad++;
    if (!strstr(why, bogus) || !strstr(why, "ADAMJIT_NVRTC_LIBRARY")) bad++;
    if (!strstr(adamjit_last_error(), bogus)) bad++;
    if (aj_nvrtc_library() != NULL) bad++;
    int major = -1, minor = -1;
    if (aj_nvrtc_version(&major, &minor) != ADAMJIT_ERR_BACKEND_UNAVAILABLE) bad++;
    aj_nvrtc_result r;
    if (aj_nvrtc_compile(NULL, "k.cu", "", "sm_90", NULL, 0, &r) != ADAMJIT_ERR_BACKEND_UNAVAILABLE) bad++;
    if (r.binary || r.log) bad++;
    aj_nvrtc_result_free(&r);
    if (bad) fprintf(stderr, "loader failure: %d checks failed; why = \"%s\"\n", bad, why);
    else printf("loader failure reported: %s\n", why);
    fflush(stdout);
    _exit(bad ? 1 : 0);
  }
  int status = 0;
  CHECK(pid > 0);
  CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
  CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
}

/* Argument checks come before loading, so they hold with or without NVRTC. */
static void check_arguments(void) {
  aj_nvrtc_result r;
  CHECK_STATUS(aj_nvrtc_compile(NULL, "k.cu", kernel_source, "sm_90", NULL, 0, NULL), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK_STATUS(aj_nvrtc_compile(NULL, NULL, kernel_source, "sm_90", NULL, 0, &r), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK(r.binary == NULL && r.log == NULL);
  CHECK_STATUS(aj_nvrtc_compile(NULL, "k.cu", NULL, "sm_90", NULL, 0, &r), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK_STATUS(aj_nvrtc_compile(NULL, "k.cu", kernel_source, NULL, NULL, 0, &r), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK_STATUS(aj_nvrtc_compile(NULL, "", kernel_source, "sm_90", NULL, 0, &r), ADAMJIT_ERR_INVALID_VALUE);
  static const char* const bad_archs[] = {"", "sm90", "sm_9", "sm_", "compute_", "sm_90 -G", "sm_90b", "sm_9000",
                                          "SM_90", "sm_90a1", "compute_x90", "sm_09"};
  for (size_t i = 0; i < sizeof bad_archs / sizeof bad_archs[0]; i++) {
    adamjit_status st = aj_nvrtc_compile(NULL, "k.cu", kernel_source, bad_archs[i], NULL, 0, &r);
    CHECK_MSG(st == ADAMJIT_ERR_INVALID_VALUE, "arch \"%s\" gave %s", bad_archs[i], adamjit_status_string(st));
  }
  CHECK(strstr(adamjit_last_error(), "sm_09") != NULL);
  const char* one[] = {NULL};
  CHECK_STATUS(aj_nvrtc_compile(NULL, "k.cu", kernel_source, "sm_90", NULL, 1, &r), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK_STATUS(aj_nvrtc_compile(NULL, "k.cu", kernel_source, "sm_90", one, 1, &r), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK_STATUS(aj_nvrtc_compile(NULL, "k.cu", kernel_source, "sm_90", one, -1, &r), ADAMJIT_ERR_INVALID_SIZE);
  CHECK_STATUS(aj_nvrtc_compile(NULL, "k.cu", kernel_source, "sm_90", one, AJ_NVRTC_MAX_OPTIONS + 1, &r),
               ADAMJIT_ERR_INVALID_SIZE);
  CHECK_STATUS(aj_nvrtc_version(NULL, NULL), ADAMJIT_ERR_NULL_ARGUMENT);
  aj_nvrtc_result_free(NULL); /* NULL-safe */
  aj_nvrtc_result_free(&r);
}

static int is_elf_cuda(const aj_nvrtc_result* r) {
  const unsigned char* b = r->binary;
  if (!b || r->size < 20) return 0;
  /* ELF magic, then e_machine (little-endian, offset 18) = EM_CUDA (190). */
  return b[0] == 0x7f && b[1] == 'E' && b[2] == 'L' && b[3] == 'F' && (b[18] | (b[19] << 8)) == 190;
}

static int ptx_ok(const aj_nvrtc_result* r) {
  const char* s = r->binary;
  return s && r->size > 1 && s[r->size - 1] == '\0' && strlen(s) + 1 == r->size && strstr(s, ".visible .entry");
}

static void check_cubin(adamjit_context* ctx, const char* arch) {
  aj_nvrtc_result r;
  double t0 = now_ms();
  adamjit_status st = aj_nvrtc_compile(ctx, "adamw32.cu", kernel_source, arch, NULL, 0, &r);
  double ms = now_ms() - t0;
  CHECK_MSG(st == ADAMJIT_OK, "%s: %s", arch, adamjit_context_last_error(ctx));
  CHECK(r.is_cubin == 1);
  CHECK(strcmp(r.arch, arch) == 0);
  CHECK(r.size > 0 && is_elf_cuda(&r));
  CHECK(r.log != NULL);
  printf("  %-12s CUBIN %6zu bytes  %7.1f ms\n", arch, r.size, ms);
  aj_nvrtc_result_free(&r);
  CHECK(r.binary == NULL && r.log == NULL && r.size == 0);
  aj_nvrtc_result_free(&r); /* a freed result frees again harmlessly */
}

int main(void) {
  check_loader_failure();
  check_arguments();

  char why[1024];
  if (aj_nvrtc_available(why, sizeof why) != ADAMJIT_OK) {
    printf("test_nvrtc: skipped, NVRTC is unavailable: %s\n", why);
    if (test_failures) return test_finish("test_nvrtc");
    return TEST_SKIP_CODE;
  }
  CHECK(why[0] == '\0');
  int major = 0, minor = -1;
  CHECK_OK(aj_nvrtc_version(&major, &minor));
  CHECK(major >= 11 && minor >= 0);
  CHECK(aj_nvrtc_library() != NULL);
  int archs[64];
  int n_archs = aj_nvrtc_supported_archs(archs, 64);
  int newest = 0;
  for (int i = 0; i < n_archs && i < 64; i++)
    if (archs[i] > newest) newest = archs[i];
  printf("NVRTC %d.%d from %s, %d architectures, newest sm_%d\n", major, minor, aj_nvrtc_library(), n_archs, newest);

  adamjit_context_desc d;
  adamjit_context_desc_init_default(&d);
  d.backend = ADAMJIT_BACKEND_CPU; /* any context: the driver only uses its message and log */
  d.log_fn = log_fn;
  d.log_level = ADAMJIT_LOG_WARN;
  adamjit_context* ctx = NULL;
  REQUIRE_OK(adamjit_context_create(&d, &ctx));

  double t_start = now_ms();
  check_cubin(ctx, "sm_80");
  check_cubin(ctx, "sm_90");
  CHECK(warnings_seen == 0); /* the representative kernel compiles without warnings */

  /* PTX only, with an extra option switching on one more kernel. */
  {
    aj_nvrtc_result r;
    const char* extra[] = {"-DAJ_TEST_EXTRA_KERNEL=1", "-lineinfo"};
    double t0 = now_ms();
    adamjit_status st = aj_nvrtc_compile(ctx, "adamw32.cu", kernel_source, "compute_90", extra, 2, &r);
    double ms = now_ms() - t0;
    CHECK_MSG(st == ADAMJIT_OK, "%s", adamjit_context_last_error(ctx));
    CHECK(r.is_cubin == 0 && strcmp(r.arch, "compute_90") == 0);
    CHECK(ptx_ok(&r));
    CHECK(r.binary && strstr(r.binary, "adamw32_f32") && strstr(r.binary, "adamw32_bf16"));
    CHECK(r.binary && strstr(r.binary, "extra_kernel"));
    CHECK(r.binary && strstr(r.binary, ".target sm_90"));
    printf("  %-12s PTX   %6zu bytes  %7.1f ms\n", "compute_90", r.size, ms);
    aj_nvrtc_result_free(&r);
  }

  /* A compile error: ADAMJIT_ERR_COMPILE, and the context message and the log name the
   * program and the line. */
  {
    aj_nvrtc_result r;
    adamjit_status st = aj_nvrtc_compile(ctx, "broken_kernel.cu", broken_source, "sm_90", NULL, 0, &r);
    CHECK_STATUS(st, ADAMJIT_ERR_COMPILE);
    const char* msg = adamjit_context_last_error(ctx);
    CHECK_MSG(strstr(msg, "broken_kernel.cu(3)") != NULL, "message: %s", msg);
    CHECK_MSG(strstr(msg, "undefined_symbol") != NULL, "message: %s", msg);
    CHECK(r.binary == NULL && r.size == 0);
    CHECK(r.log && strstr(r.log, "broken_kernel.cu(3)"));
    printf("compile error reported as: %s\n", msg);
    aj_nvrtc_result_free(&r);
  }

  /* Warnings on success: in out->log and through the log callback. */
  {
    aj_nvrtc_result r;
    warnings_seen = 0;
    CHECK_OK(aj_nvrtc_compile(ctx, "warns.cu", warning_source, "sm_80", NULL, 0, &r));
    CHECK(r.is_cubin && is_elf_cuda(&r));
    CHECK_MSG(r.log && strstr(r.log, "warns.cu(2)") && strstr(r.log, "warning"), "log: %s", r.log ? r.log : "(null)");
    CHECK(warnings_seen == 1 && strstr(last_warning, "warns.cu"));
    aj_nvrtc_result_free(&r);
  }

  /* An option NVRTC does not know is the caller's mistake, not an architecture problem. */
  {
    aj_nvrtc_result r;
    const char* extra[] = {"--no-such-option-for-adamjit"};
    CHECK_STATUS(aj_nvrtc_compile(ctx, "adamw32.cu", kernel_source, "sm_90", extra, 1, &r), ADAMJIT_ERR_INVALID_VALUE);
    CHECK(r.binary == NULL && r.log != NULL);
    aj_nvrtc_result_free(&r);
  }

  if (n_archs > 0) {
    /* A GPU newer than this NVRTC: PTX for the newest architecture it knows. */
    aj_nvrtc_result r;
    warnings_seen = 0;
    double t0 = now_ms();
    adamjit_status st = aj_nvrtc_compile(ctx, "adamw32.cu", kernel_source, "sm_999", NULL, 0, &r);
    double ms = now_ms() - t0;
    char expect[24];
    snprintf(expect, sizeof expect, "compute_%d", newest);
    CHECK_MSG(st == ADAMJIT_OK, "%s", adamjit_context_last_error(ctx));
    CHECK_MSG(r.is_cubin == 0 && strcmp(r.arch, expect) == 0, "arch %s, is_cubin %d", r.arch, r.is_cubin);
    CHECK(ptx_ok(&r));
    CHECK(warnings_seen == 1 && strstr(last_warning, "sm_999") && strstr(last_warning, expect));
    printf("  %-12s PTX   %6zu bytes  %7.1f ms (fallback to %s)\n", "sm_999", r.size, ms, r.arch);
    aj_nvrtc_result_free(&r);

    /* Older than anything NVRTC knows: no fallback can run there. */
    st = aj_nvrtc_compile(ctx, "adamw32.cu", kernel_source, "sm_30", NULL, 0, &r);
    CHECK_STATUS(st, ADAMJIT_ERR_UNSUPPORTED);
    CHECK_MSG(strstr(adamjit_context_last_error(ctx), "sm_30") && strstr(adamjit_context_last_error(ctx), "sm_90"),
              "message: %s", adamjit_context_last_error(ctx));
    CHECK(r.binary == NULL);
    aj_nvrtc_result_free(&r);
  }

  /* NULL ctx: the detail goes to the thread's message. */
  {
    aj_nvrtc_result r;
    CHECK_STATUS(aj_nvrtc_compile(NULL, "broken_kernel.cu", broken_source, "compute_80", NULL, 0, &r),
                 ADAMJIT_ERR_COMPILE);
    CHECK(strstr(adamjit_last_error(), "broken_kernel.cu(3)") != NULL);
    aj_nvrtc_result_free(&r);
  }
  printf("all compiles: %.0f ms\n", now_ms() - t_start);

  adamjit_context_destroy(ctx);
  return test_finish("test_nvrtc");
}
