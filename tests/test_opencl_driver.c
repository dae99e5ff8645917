/* The OpenCL compile driver (jit/opencl.h) on whatever OpenCL is here (PoCL in CI):
 * enumeration and selection, a build from source that runs and gives exact results, the
 * binary round trip, and a broken kernel's error. Skipped (77) without a device. */
#define _GNU_SOURCE /* mkdtemp, nftw */
#include <errno.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/internal.h"
#include "harness.h"
#include "pocl_scratch.h"
#include "jit/opencl.h"
#include "halfprec.h"

/* y[i] = a * x[i] + y[i], x in fp16 through vload_half: the way kernels read half values
 * where the device lacks cl_khr_fp16 (PoCL here), all math in fp32. */
static const char* const axpy_source =
    "__kernel void axpy(float a, __global const half* x, __global float* y, uint n) {\n"
    "  size_t i = get_global_id(0);\n"
    "  if (i < n) y[i] = a * vload_half(i, x) + y[i];\n"
    "}\n";

/* The error is on line 3 of the source. */
static const char* const broken_source =
    "__kernel void broken(__global float* y) {\n"
    "  size_t i = get_global_id(0);\n"
    "  y[i] = undefined_function_here(y[i]);\n"
    "}\n";

#define N 5000

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Runs axpy from prog on the device and compares with the host; returns the failures. */
static int run_axpy(adamjit_context* ctx, aj_cl_device* dev, cl_program prog, const uint16_t* xh,
                    const float* y0, const float* want, float a) {
  const aj_opencl_api_table* api = aj_opencl_api();
  cl_int err = CL_SUCCESS;
  int bad = 0;
  float* y = test_calloc(N, sizeof *y);
  cl_kernel k = api->clCreateKernel(prog, "axpy", &err);
  CHECK_OK(aj_opencl_check(ctx, err, "clCreateKernel"));
  cl_mem bx = api->clCreateBuffer(dev->context, CL_MEM_READ_ONLY, N * sizeof *xh, NULL, &err);
  CHECK_OK(aj_opencl_check(ctx, err, "clCreateBuffer"));
  cl_mem by = api->clCreateBuffer(dev->context, CL_MEM_READ_WRITE, N * sizeof *y0, NULL, &err);
  CHECK_OK(aj_opencl_check(ctx, err, "clCreateBuffer"));
  if (!k || !bx || !by) {
    bad = 1;
    goto done;
  }
  cl_uint n = N;
  CHECK_OK(aj_opencl_check(ctx, api->clEnqueueWriteBuffer(dev->queue, bx, CL_FALSE, 0, N * sizeof *xh, xh, 0, NULL, NULL),
                           "clEnqueueWriteBuffer"));
  CHECK_OK(aj_opencl_check(ctx, api->clEnqueueWriteBuffer(dev->queue, by, CL_FALSE, 0, N * sizeof *y0, y0, 0, NULL, NULL),
                           "clEnqueueWriteBuffer"));
  CHECK_OK(aj_opencl_check(ctx, api->clSetKernelArg(k, 0, sizeof a, &a), "clSetKernelArg"));
  CHECK_OK(aj_opencl_check(ctx, api->clSetKernelArg(k, 1, sizeof bx, &bx), "clSetKernelArg"));
  CHECK_OK(aj_opencl_check(ctx, api->clSetKernelArg(k, 2, sizeof by, &by), "clSetKernelArg"));
  CHECK_OK(aj_opencl_check(ctx, api->clSetKernelArg(k, 3, sizeof n, &n), "clSetKernelArg"));
  size_t global = N;
  CHECK_OK(aj_opencl_check(ctx, api->clEnqueueNDRangeKernel(dev->queue, k, 1, NULL, &global, NULL, 0, NULL, NULL),
                           "clEnqueueNDRangeKernel"));
  CHECK_OK(aj_opencl_check(ctx, api->clEnqueueReadBuffer(dev->queue, by, CL_TRUE, 0, N * sizeof *y, y, 0, NULL, NULL),
                           "clEnqueueReadBuffer"));
  for (int i = 0; i < N; i++) {
    if (y[i] != want[i]) {
      if (bad < 5) fprintf(stderr, "axpy: y[%d] = %.9g, expected %.9g\n", i, y[i], want[i]);
      bad++;
    }
  }
done:
  if (bx) api->clReleaseMemObject(bx);
  if (by) api->clReleaseMemObject(by);
  if (k) api->clReleaseKernel(k);
  free(y);
  return bad;
}

int main(void) {
  /* PoCL keeps compiled kernels under ~/.cache/pocl; a fresh directory here makes the cold
   * build really cold and leaves nothing behind. Must be set before PoCL loads. */
  char cache_dir[] = "opencl_driver_pocl_cache_XXXXXX";
  if (pocl_scratch_begin(cache_dir)) return 1;

  char why[2048];
  if (aj_opencl_available(why, sizeof why) != ADAMJIT_OK) {
    printf("SKIP: OpenCL loader unavailable: %s\n", why);
    pocl_scratch_end(cache_dir);
    return TEST_SKIP_CODE;
  }
  int count = 0;
  if (aj_opencl_device_list(NULL, NULL, 0, &count) != ADAMJIT_OK || count < 1) {
    printf("SKIP: no OpenCL device: %s\n", adamjit_last_error());
    pocl_scratch_end(cache_dir);
    return TEST_SKIP_CODE;
  }
  printf("OpenCL loader: %s, %d device(s)\n", aj_opencl_library(), count);

  adamjit_context* ctx = test_cpu_context(); /* only as the holder of messages */

  /* ---- error names and statuses */
  CHECK(strcmp(aj_opencl_error_name(CL_BUILD_PROGRAM_FAILURE), "CL_BUILD_PROGRAM_FAILURE") == 0);
  CHECK(strcmp(aj_opencl_error_name(-12345), "CL_UNKNOWN_ERROR") == 0);
  CHECK(aj_opencl_status(CL_OUT_OF_RESOURCES) == ADAMJIT_ERR_OUT_OF_MEMORY);
  CHECK(aj_opencl_status(CL_MEM_OBJECT_ALLOCATION_FAILURE) == ADAMJIT_ERR_OUT_OF_MEMORY);
  CHECK(aj_opencl_status(CL_OUT_OF_HOST_MEMORY) == ADAMJIT_ERR_OUT_OF_MEMORY);
  CHECK(aj_opencl_status(CL_BUILD_PROGRAM_FAILURE) == ADAMJIT_ERR_COMPILE);
  CHECK(aj_opencl_status(CL_INVALID_KERNEL_NAME) == ADAMJIT_ERR_DRIVER);
  CHECK_STATUS(aj_opencl_check(ctx, CL_INVALID_MEM_OBJECT, "clSetKernelArg"), ADAMJIT_ERR_DRIVER);
  CHECK(strcmp(adamjit_context_last_error(ctx), "clSetKernelArg: CL_INVALID_MEM_OBJECT (-38)") == 0);

  /* ---- enumeration */
  aj_cl_device_info* infos = test_calloc((size_t)count, sizeof *infos);
  int again = 0;
  CHECK_OK(aj_opencl_device_list(ctx, infos, count, &again));
  CHECK(again == count);
  for (int i = 0; i < count; i++) {
    printf("  device %d: %s | vendor %s | platform %s | %s | driver %s | %s | fp16 %d\n", i, infos[i].name,
           infos[i].vendor, infos[i].platform, infos[i].version, infos[i].driver_version, infos[i].c_version,
           infos[i].has_fp16);
    CHECK(infos[i].index == i);
    CHECK(infos[i].name[0] != '\0');
    CHECK(infos[i].platform[0] != '\0');
    CHECK(strncmp(infos[i].c_version, "OpenCL C ", 9) == 0);
    CHECK(infos[i].max_work_group_size > 0);
  }
  CHECK_STATUS(aj_opencl_device_list(ctx, NULL, 1, &again), ADAMJIT_ERR_NULL_ARGUMENT);

  /* ---- selection: by index, by name substring (any case), bad ones */
  aj_cl_device* dev = NULL;
  CHECK_STATUS(aj_opencl_device_open(ctx, "99999", &dev), ADAMJIT_ERR_INVALID_INDEX);
  CHECK(dev == NULL);
  CHECK_MSG(strstr(adamjit_context_last_error(ctx), "out of range") != NULL, "%s", adamjit_context_last_error(ctx));
  CHECK_STATUS(aj_opencl_device_open(ctx, "no-such-device-xyz", &dev), ADAMJIT_ERR_INVALID_VALUE);
  CHECK(dev == NULL);
  CHECK_MSG(strstr(adamjit_context_last_error(ctx), "no device matches \"no-such-device-xyz\"") != NULL &&
                strstr(adamjit_context_last_error(ctx), infos[0].name) != NULL,
            "%s", adamjit_context_last_error(ctx));
  setenv("ADAMJIT_OPENCL_DEVICE", "no-such-device-xyz", 1);
  CHECK_STATUS(aj_opencl_device_open(ctx, NULL, &dev), ADAMJIT_ERR_INVALID_VALUE);
  CHECK_MSG(strstr(adamjit_context_last_error(ctx), "ADAMJIT_OPENCL_DEVICE") != NULL, "%s",
            adamjit_context_last_error(ctx));
  unsetenv("ADAMJIT_OPENCL_DEVICE");

  char upper[8] = {0}; /* the first letters of the name, upper-cased: matching ignores case */
  for (int i = 0; i < 6 && infos[0].name[i]; i++)
    upper[i] = (char)((infos[0].name[i] >= 'a' && infos[0].name[i] <= 'z') ? infos[0].name[i] - 32 : infos[0].name[i]);
  CHECK_OK(aj_opencl_device_open(ctx, upper, &dev));
  if (dev) CHECK(dev->info.index == 0); /* device 0 is the first one whose name matches */
  aj_opencl_device_close(dev);
  dev = NULL;
  REQUIRE_OK(aj_opencl_device_open(ctx, "0", &dev));
  CHECK(strcmp(dev->info.name, infos[0].name) == 0);
  CHECK(dev->context != NULL && dev->queue != NULL);

  /* ---- inputs and the expected output, all exact in fp32 (a = 0.5, x = k/8, y = j/16),
   * so any correct kernel matches bit for bit whether or not it contracts to fma */
  uint16_t* xh = test_calloc(N, sizeof *xh);
  float* y0 = test_calloc(N, sizeof *y0);
  float* want = test_calloc(N, sizeof *want);
  const float a = 0.5f;
  for (int i = 0; i < N; i++) {
    double x = (double)(i % 257 - 128) / 8.0;
    xh[i] = f16_bits(x);
    y0[i] = (float)((i * 7) % 101 - 50) / 16.0f;
    want[i] = (float)(a * x + y0[i]);
  }

  /* ---- build from source */
  aj_cl_program prog;
  double t0 = now_ms();
  adamjit_status st = aj_opencl_build(ctx, dev, "axpy.cl", axpy_source, "-cl-std=CL1.2", &prog);
  double cold_ms = now_ms() - t0;
  CHECK_MSG(st == ADAMJIT_OK, "%s", adamjit_context_last_error(ctx));
  CHECK(prog.log != NULL);
  CHECK(prog.binary != NULL && prog.binary_size > 0);
  t0 = now_ms();
  if (st == ADAMJIT_OK) CHECK_MSG(run_axpy(ctx, dev, prog.program, xh, y0, want, a) == 0, "from source");
  double cold_run_ms = now_ms() - t0;

  /* ---- rebuild from the binary: same results */
  if (prog.binary) {
    aj_cl_program again_prog;
    t0 = now_ms();
    st = aj_opencl_load_binary(ctx, dev, "axpy.cl", prog.binary, prog.binary_size, "-cl-std=CL1.2", &again_prog);
    double bin_ms = now_ms() - t0;
    CHECK_MSG(st == ADAMJIT_OK, "%s", adamjit_context_last_error(ctx));
    CHECK(again_prog.binary == NULL);
    t0 = now_ms();
    if (st == ADAMJIT_OK) CHECK_MSG(run_axpy(ctx, dev, again_prog.program, xh, y0, want, a) == 0, "from binary");
    double bin_run_ms = now_ms() - t0;
    aj_opencl_program_free(&again_prog);
    printf("timing: cold build %.1f ms (+ first run %.1f ms), build from binary (%zu bytes) %.1f ms (+ first run %.1f ms)\n",
           cold_ms, cold_run_ms, prog.binary_size, bin_ms, bin_run_ms);

    /* A binary the driver cannot read fails cleanly (the cache's cue to recompile). */
    unsigned char junk[64];
    memset(junk, 0x5a, sizeof junk);
    st = aj_opencl_load_binary(ctx, dev, "junk.cl", junk, sizeof junk, NULL, &again_prog);
    CHECK_MSG(st != ADAMJIT_OK && again_prog.program == NULL, "%s", adamjit_context_last_error(ctx));
    CHECK_MSG(strstr(adamjit_context_last_error(ctx), "junk.cl") != NULL, "%s", adamjit_context_last_error(ctx));
    aj_opencl_program_free(&again_prog);
    CHECK_STATUS(aj_opencl_load_binary(ctx, dev, "empty.cl", junk, 0, NULL, &again_prog), ADAMJIT_ERR_INVALID_SIZE);
  }
  aj_opencl_program_free(&prog);
  aj_opencl_program_free(&prog); /* a freed program is reset, so a second free is harmless */

  /* ---- a broken kernel: ADAMJIT_ERR_COMPILE naming the program and the line */
  st = aj_opencl_build(ctx, dev, "broken.cl", broken_source, NULL, &prog);
  const char* msg = adamjit_context_last_error(ctx);
  printf("broken kernel -> %s: %s\n", adamjit_status_string(st), msg);
  CHECK_STATUS(st, ADAMJIT_ERR_COMPILE);
  CHECK(prog.program == NULL && prog.binary == NULL);
  CHECK_MSG(strncmp(msg, "broken.cl: clBuildProgram: CL_BUILD_PROGRAM_FAILURE (-11)", 57) == 0, "%s", msg);
  CHECK_MSG(strstr(msg, "broken.cl:3:") != NULL, "no line number: %s", msg);
  CHECK_MSG(prog.log && strstr(prog.log, "undefined_function_here") != NULL, "%s", prog.log ? prog.log : "(null)");
  aj_opencl_program_free(&prog);

  /* ---- bad options are the caller's mistake, not the driver's */
  st = aj_opencl_build(ctx, dev, "opts.cl", axpy_source, "-no-such-option-xyz", &prog);
  printf("bad option -> %s: %s\n", adamjit_status_string(st), adamjit_context_last_error(ctx));
  CHECK_MSG(st == ADAMJIT_ERR_INVALID_VALUE || st == ADAMJIT_ERR_COMPILE, "%s: %s", adamjit_status_string(st),
            adamjit_context_last_error(ctx));
  aj_opencl_program_free(&prog);

  CHECK_STATUS(aj_opencl_build(ctx, dev, "x.cl", NULL, NULL, &prog), ADAMJIT_ERR_NULL_ARGUMENT);

  aj_opencl_device_close(dev);
  aj_opencl_device_close(NULL);
  free(xh);
  free(y0);
  free(want);
  free(infos);
  adamjit_context_destroy(ctx);
  pocl_scratch_end(cache_dir);
  return test_finish("test_opencl_driver");
}
