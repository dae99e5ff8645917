/* The CUDA driver loader where there may be no driver: every way of not having one is
 * reported as ADAMJIT_ERR_BACKEND_UNAVAILABLE with a reason a user can act on, by
 * adamjit_backend_probe, adamjit_backend_device_count and adamjit_context_create alike, and
 * AUTO passes over CUDA. Runs on any machine.
 *
 * Usage: test_cuda_driver <mode>, with the environment CTest sets:
 *   system         whatever this machine has (libcuda.so.1, or $ADAMJIT_CUDA_LIBRARY when
 *                  the user set it): with a driver and a device, CUDA must be available;
 *                  without the library, the reason must name it and the loader's error;
 *                  other failures must say why
 *   missing        ADAMJIT_CUDA_LIBRARY names a file that does not exist
 *   not-a-driver   ADAMJIT_CUDA_LIBRARY names a library that is not libcuda (libm)
 *   stub           ADAMJIT_CUDA_LIBRARY names the toolkit's link stub (lib64/stubs/libcuda.so)
 * Also checks the error names and status mapping the loader uses without a driver. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adamjit/adamjit.h"
#include "harness.h"

#ifndef ADAMJIT_HAVE_CUDA
int main(void) {
  printf("skipped: this build has no CUDA backend (cuda.h was not found at configure time)\n");
  return TEST_SKIP_CODE;
}
#else

#include "backends/cuda/cuda_driver.h"

/* The reason must contain every one of the words. */
static void expect_unavailable(const char* const* words, int n) {
  adamjit_status st = adamjit_backend_probe(ADAMJIT_BACKEND_CUDA);
  CHECK_STATUS(st, ADAMJIT_ERR_BACKEND_UNAVAILABLE);
  char why[4096];
  snprintf(why, sizeof why, "%s", adamjit_last_error());
  printf("reason: %s\n", why);
  for (int i = 0; i < n; i++) CHECK_MSG(strstr(why, words[i]) != NULL, "the reason does not mention \"%s\"", words[i]);
  int count = 7;
  CHECK_STATUS(adamjit_backend_device_count(ADAMJIT_BACKEND_CUDA, &count), ADAMJIT_ERR_BACKEND_UNAVAILABLE);
  CHECK(strstr(adamjit_last_error(), words[0]) != NULL);
  char name[64];
  CHECK_STATUS(adamjit_backend_device_name(ADAMJIT_BACKEND_CUDA, 0, name, sizeof name),
               ADAMJIT_ERR_BACKEND_UNAVAILABLE);
  adamjit_context_desc d;
  adamjit_context_desc_init_default(&d);
  d.backend = ADAMJIT_BACKEND_CUDA;
  adamjit_context* ctx = NULL;
  CHECK_STATUS(adamjit_context_create(&d, &ctx), ADAMJIT_ERR_BACKEND_UNAVAILABLE);
  CHECK(ctx == NULL);
  CHECK(strstr(adamjit_last_error(), words[0]) != NULL);
  d.backend = ADAMJIT_BACKEND_AUTO;
  CHECK_OK(adamjit_context_create(&d, &ctx));
  CHECK(ctx && adamjit_context_backend(ctx) != ADAMJIT_BACKEND_CUDA);
  adamjit_context_destroy(ctx);
  CHECK(aj_cuda_api() == NULL && aj_cuda_library() == NULL);
}

static void check_error_names(void) {
  CHECK(strcmp(aj_cuda_error_name(CUDA_ERROR_OUT_OF_MEMORY), "CUDA_ERROR_OUT_OF_MEMORY") == 0);
  CHECK(strcmp(aj_cuda_error_name(CUDA_ERROR_STUB_LIBRARY), "CUDA_ERROR_STUB_LIBRARY") == 0);
  CHECK(strcmp(aj_cuda_error_name(CUDA_ERROR_NO_DEVICE), "CUDA_ERROR_NO_DEVICE") == 0);
  CHECK(aj_cuda_error_name((CUresult)123456) != NULL);
  CHECK(aj_cuda_status(CUDA_SUCCESS) == ADAMJIT_OK);
  CHECK(aj_cuda_status(CUDA_ERROR_OUT_OF_MEMORY) == ADAMJIT_ERR_OUT_OF_MEMORY);
  CHECK(aj_cuda_status(CUDA_ERROR_UNSUPPORTED_PTX_VERSION) == ADAMJIT_ERR_COMPILE);
  CHECK(aj_cuda_status(CUDA_ERROR_NO_DEVICE) == ADAMJIT_ERR_BACKEND_UNAVAILABLE);
  CHECK(aj_cuda_status(CUDA_ERROR_ILLEGAL_ADDRESS) == ADAMJIT_ERR_DRIVER);
  CHECK_STATUS(aj_cuda_check(NULL, CUDA_ERROR_OUT_OF_MEMORY, "cuMemAlloc"), ADAMJIT_ERR_OUT_OF_MEMORY);
  CHECK(strstr(adamjit_last_error(), "cuMemAlloc: CUDA_ERROR_OUT_OF_MEMORY (2)") != NULL);
}

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "system";
  CHECK(adamjit_backend_is_built(ADAMJIT_BACKEND_CUDA));
  if (strcmp(mode, "system") != 0 && !getenv("ADAMJIT_CUDA_LIBRARY")) {
    fprintf(stderr, "test_cuda_driver %s: ADAMJIT_CUDA_LIBRARY must be set\n", mode);
    return 1;
  }
  if (strcmp(mode, "system") == 0) {
    /* the library the loader tries: the user's override, else the driver's soname */
    const char* lib = getenv("ADAMJIT_CUDA_LIBRARY") && *getenv("ADAMJIT_CUDA_LIBRARY") ? getenv("ADAMJIT_CUDA_LIBRARY")
                                                                                         : NULL;
    void* h = dlopen(lib ? lib : "libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    const char* dl = h ? NULL : dlerror();
    char dlerr[1024] = "";
    if (dl) snprintf(dlerr, sizeof dlerr, "%s", dl);
    if (h) dlclose(h);
    if (!h) {
      const char* words[] = {lib ? lib : "libcuda.so.1", dlerr,
                             lib ? "set by ADAMJIT_CUDA_LIBRARY" : "is the NVIDIA driver installed?"};
      expect_unavailable(words, 3);
    } else if (adamjit_backend_probe(ADAMJIT_BACKEND_CUDA) == ADAMJIT_OK) {
      int count = 0;
      CHECK_OK(adamjit_backend_device_count(ADAMJIT_BACKEND_CUDA, &count));
      CHECK(count > 0);
      char name[256] = "";
      CHECK_OK(adamjit_backend_device_name(ADAMJIT_BACKEND_CUDA, 0, name, sizeof name));
      CHECK(strstr(name, "(sm_") != NULL);
      printf("CUDA available: %d device(s), 0: %s, driver %s\n", count, name, aj_cuda_library());
    } else {
      /* a driver library is there but CUDA cannot run: the reason must say so */
      const char* words[] = {"cuda backend: "};
      expect_unavailable(words, 1);
      CHECK(strlen(adamjit_last_error()) > strlen("cuda backend: ") + 10);
    }
  } else if (strcmp(mode, "missing") == 0) {
    const char* words[] = {getenv("ADAMJIT_CUDA_LIBRARY"), "No such file", "set by ADAMJIT_CUDA_LIBRARY"};
    expect_unavailable(words, 3);
  } else if (strcmp(mode, "not-a-driver") == 0) {
    const char* words[] = {getenv("ADAMJIT_CUDA_LIBRARY"), "does not export cuGetProcAddress_v2"};
    expect_unavailable(words, 2);
  } else if (strcmp(mode, "stub") == 0) {
    const char* words[] = {getenv("ADAMJIT_CUDA_LIBRARY"), "CUDA_ERROR_STUB_LIBRARY", "link stub"};
    expect_unavailable(words, 3);
  } else {
    fprintf(stderr, "test_cuda_driver: unknown mode %s\n", mode);
    return 1;
  }
  check_error_names();
  return test_finish("test_cuda_driver");
}

#endif
