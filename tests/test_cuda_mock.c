/* The CUDA backend's host side against a stand-in driver (test_cuda_mock_driver.c, loaded
 * through $ADAMJIT_CUDA_LIBRARY), so that it runs, sanitizers included, on machines
 * without a GPU. Kernels are compiled for real (NVRTC) and loaded into the mock, but not
 * run: what is checked is everything around them.
 *
 * Usage: test_cuda_mock <mode>, the mock configured by the environment CTest sets:
 *   full           driver 13.0, one device: loader ABI, device queries and selection,
 *                  memory and its checks, the step's launches, no host synchronization
 *                  inside a step (the mock counts every wait), paged state prefetched
 *                  before the step and paged out, the staging ring reused only after its
 *                  copies ran, the caller's stream, no change to the thread's current
 *                  context, and everything freed at the end;
 *   old-driver     a 12.1 driver: no cuMemPrefetchAsync with locations; paging still works;
 *   no-concurrent  a device without concurrent managed access: nothing is prefetched;
 *   small-memory   64 MiB of device memory: state that does not fit is refused, paged or not;
 *   param-info     a driver whose kernels report two parameters: launches are refused;
 *   no-device      a driver without devices: unavailable, with the reason. */
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
#include "jit/nvrtc.h"

/* The mock's exported state (test_cuda_mock_driver.c). */
typedef struct ajmock_counters {
  long syncs, launches, launches_queued, prefetch_device, prefetch_host, managed_allocs;
  long live_device, live_pinned, live_streams, live_events, live_modules, primary_refs;
  long free_while_queued, bad_calls, stale_sources;
  int abi_requested;
  void* last_launch_stream;
  size_t device_bytes;
} ajmock_counters;

static ajmock_counters* mock;
static CUcontext (*mock_current)(void);
static const aj_cuda_api_table* cu;

static const char* const cache_dir = "cuda_mock_kernel_cache";

static adamjit_context* open_ctx(void* queue, int device_index, const char* device_name, adamjit_status want) {
  adamjit_context_desc d;
  adamjit_context_desc_init_default(&d);
  d.backend = ADAMJIT_BACKEND_CUDA;
  d.queue = queue;
  d.device_index = device_index;
  d.device_name = device_name;
  d.cache_dir = cache_dir;
  adamjit_context* ctx = NULL;
  CUcontext before = mock_current();
  adamjit_status st = adamjit_context_create(&d, &ctx);
  CHECK_MSG(st == want, "context_create: %s, expected %s: %s", adamjit_status_string(st), adamjit_status_string(want),
            adamjit_last_error());
  CHECK(mock_current() == before); /* the thread's current context is the caller's business */
  return ctx;
}

/* An optimizer with a bit of everything: 32- and 8-bit, paged and not, clipping, one
 * absmax per tensor, amsgrad. Paged buffers: 3 for each of tensors 1 and 2. */
typedef struct rig {
  adamjit_optimizer* opt;
  adamjit_mem p[4], g[4];
} rig;
enum { RIG_TENSORS = 4, RIG_PAGED_BUFFERS = 6, RIG_LAUNCHES = 1 + 1 + 3 + 4 };

static void rig_open(adamjit_context* ctx, rig* r) {
  memset(r, 0, sizeof *r);
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.optim_bits = 8;
  cfg.is_paged = 1;
  cfg.paged_min_elements = 100000;
  cfg.hparams.amsgrad = 1;
  REQUIRE_OK(adamjit_optimizer_create(ctx, &cfg, &r->opt));
  static const int64_t numel[RIG_TENSORS] = {5003, 300001, 200000, 70000};
  for (int i = 0; i < RIG_TENSORS; i++) {
    adamjit_tensor_desc td;
    adamjit_tensor_desc_init_default(&td);
    td.numel = numel[i];
    td.param_dtype = i == 1 ? ADAMJIT_BF16 : ADAMJIT_F32;
    REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)numel[i] * 4, &r->p[i]));
    REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)numel[i] * 4, &r->g[i]));
    td.param = r->p[i];
    td.grad = r->g[i];
    if (i == 2) td.optim_bits = 32, td.percentile_clipping = 90;
    if (i == 3) td.block_wise = 0, td.is_paged = 0;
    int index;
    REQUIRE_OK(adamjit_optimizer_add_tensor(r->opt, &td, &index));
  }
}

static void rig_close(adamjit_context* ctx, rig* r) {
  adamjit_optimizer_destroy(r->opt);
  for (int i = 0; i < RIG_TENSORS; i++) {
    adamjit_mem_free(ctx, r->p[i]);
    adamjit_mem_free(ctx, r->g[i]);
  }
}

/* Everything the library created is gone, and nothing it did was refused. */
static void check_clean(const char* when) {
  CHECK_MSG(mock->live_device == 0 && mock->live_pinned == 0 && mock->live_events == 0 && mock->live_modules == 0 &&
                mock->primary_refs == 0,
            "%s: left behind %ld device and %ld pinned allocations, %ld events, %ld modules, %ld primary context "
            "references",
            when, mock->live_device, mock->live_pinned, mock->live_events, mock->live_modules, mock->primary_refs);
  CHECK_MSG(mock->bad_calls == 0, "%s: %ld calls the driver refuses", when, mock->bad_calls);
  CHECK_MSG(mock->free_while_queued == 0, "%s: %ld buffers freed while queued work still used them", when,
            mock->free_while_queued);
  CHECK_MSG(mock->stale_sources == 0, "%s: %ld copies whose host source changed before they ran", when,
            mock->stale_sources);
  CHECK(mock_current() == NULL);
}

/* ------------------------------------------------------------ full */

static void test_queries(void) {
  CHECK_OK(adamjit_backend_probe(ADAMJIT_BACKEND_CUDA));
  int count = 0;
  CHECK_OK(adamjit_backend_device_count(ADAMJIT_BACKEND_CUDA, &count));
  CHECK(count == 1);
  char name[256] = "";
  CHECK_OK(adamjit_backend_device_name(ADAMJIT_BACKEND_CUDA, 0, name, sizeof name));
  CHECK_MSG(strcmp(name, "AdamJIT Mock GPU (sm_90, 1.0 GiB)") == 0, "device name \"%s\"", name);
  CHECK_STATUS(adamjit_backend_device_name(ADAMJIT_BACKEND_CUDA, 1, name, sizeof name), ADAMJIT_ERR_INVALID_INDEX);
  /* the loader asked for the ABI of the header it was built with */
  CHECK_MSG(mock->abi_requested == CUDA_VERSION && cu->abi_version == CUDA_VERSION, "ABI %d asked, %d expected",
            mock->abi_requested, CUDA_VERSION);
  CHECK(cu->cuMemPrefetchAsync != NULL);
  /* device selection */
  adamjit_context_destroy(open_ctx(NULL, 0, "mock gpu", ADAMJIT_OK));
  open_ctx(NULL, 3, NULL, ADAMJIT_ERR_INVALID_INDEX);
  open_ctx(NULL, 0, "7", ADAMJIT_ERR_INVALID_VALUE);
  open_ctx(NULL, 0, "H100", ADAMJIT_ERR_INVALID_VALUE);
  CHECK(strstr(adamjit_last_error(), "AdamJIT Mock GPU") != NULL); /* the message lists the devices */
  check_clean("device queries");
}

static void test_memory(adamjit_context* ctx) {
  enum { N = 1000 };
  static float host[N], back[N];
  for (int i = 0; i < N; i++) host[i] = (float)i * 0.5f;
  adamjit_mem a = NULL, small = NULL;
  REQUIRE_OK(adamjit_mem_alloc(ctx, sizeof host, &a));
  REQUIRE_OK(adamjit_mem_alloc(ctx, sizeof host - 4, &small));
  CHECK_OK(adamjit_mem_read(ctx, back, a, 0, sizeof back));
  int zero = 1;
  for (int i = 0; i < N; i++) zero &= back[i] == 0.0f;
  CHECK_MSG(zero, "adamjit_mem_alloc memory is not zero-filled");
  CHECK_OK(adamjit_mem_write(ctx, a, 0, host, sizeof host));
  CHECK_OK(adamjit_mem_read(ctx, back, a, 0, sizeof back));
  CHECK(memcmp(host, back, sizeof host) == 0);
  CHECK_OK(adamjit_mem_read(ctx, back, a, 400, 8)); /* an offset */
  CHECK(back[0] == host[100] && back[1] == host[101]);
  /* a device copy is enqueued, not waited for */
  adamjit_mem c = NULL;
  REQUIRE_OK(adamjit_mem_alloc(ctx, sizeof host, &c));
  long syncs = mock->syncs;
  CHECK_OK(adamjit_mem_copy(ctx, c, 8, a, 4, sizeof host - 8));
  CHECK(mock->syncs == syncs);
  CHECK_OK(adamjit_context_synchronize(ctx));
  CHECK_OK(adamjit_mem_read(ctx, back, c, 8, sizeof host - 8));
  CHECK(memcmp(back, host + 1, sizeof host - 8) == 0);
  adamjit_mem_free(ctx, c);
  CHECK_STATUS(adamjit_mem_write(ctx, host, 0, back, 16), ADAMJIT_ERR_INVALID_VALUE); /* a host pointer */
  CHECK(strstr(adamjit_context_last_error(ctx), "not CUDA device memory") != NULL);
  CHECK_STATUS(adamjit_mem_write(ctx, small, 0, host, sizeof host), ADAMJIT_ERR_INVALID_SIZE);
  CHECK_STATUS(adamjit_mem_read(ctx, back, (adamjit_mem)((uintptr_t)a + 8), 0, sizeof back), ADAMJIT_ERR_INVALID_SIZE);
  adamjit_optimizer* opt = NULL;
  REQUIRE_OK(adamjit_optimizer_create(ctx, NULL, &opt));
  adamjit_tensor_desc td;
  adamjit_tensor_desc_init_default(&td);
  td.numel = N;
  td.param = a, td.grad = host;
  int index;
  CHECK_STATUS(adamjit_optimizer_add_tensor(opt, &td, &index), ADAMJIT_ERR_INVALID_VALUE);
  td.grad = small;
  CHECK_STATUS(adamjit_optimizer_add_tensor(opt, &td, &index), ADAMJIT_ERR_INVALID_SIZE);
  adamjit_optimizer_destroy(opt);
  adamjit_mem_free(ctx, a);
  adamjit_mem_free(ctx, small);
  CHECK(mock_current() == NULL);
}

static void test_steps(adamjit_context* ctx, int expect_prefetch) {
  rig r;
  rig_open(ctx, &r);
  long managed = mock->managed_allocs;
  CHECK_MSG(managed == RIG_PAGED_BUFFERS, "%ld managed allocations, %d paged buffers", managed, RIG_PAGED_BUFFERS);
  for (int round = 0; round < 3; round++) {
    long syncs = mock->syncs, queued = mock->launches_queued, ran = mock->launches, pre = mock->prefetch_device;
    adamjit_status st = adamjit_optimizer_step(r.opt, NULL);
    CHECK_MSG(st == ADAMJIT_OK, "step: %s", adamjit_context_last_error(ctx));
    /* enqueued and returned: no wait, nothing has run yet */
    CHECK_MSG(mock->syncs == syncs, "step %d waited %ld times", round, mock->syncs - syncs);
    CHECK_MSG(mock->launches_queued - queued == RIG_LAUNCHES, "step %d: %ld launches, expected %d", round,
              mock->launches_queued - queued, RIG_LAUNCHES);
    CHECK(mock->launches == ran);
    CHECK_MSG(mock->prefetch_device - pre == (expect_prefetch ? RIG_PAGED_BUFFERS : 0), "step %d: %ld prefetches",
              round, mock->prefetch_device - pre);
    uint64_t bad = 99;
    CHECK_OK(adamjit_optimizer_last_nonfinite(r.opt, &bad)); /* waits: everything runs */
    CHECK(bad == 0);
    CHECK(mock->launches == mock->launches_queued);
    CHECK(mock->syncs > syncs);
  }
  uint64_t bad = 99;
  long syncs = mock->syncs;
  CHECK_OK(adamjit_optimizer_step(r.opt, &bad));
  CHECK(bad == 0 && mock->syncs > syncs);
  long host = mock->prefetch_host;
  syncs = mock->syncs;
  CHECK_OK(adamjit_optimizer_page_out(r.opt));
  CHECK_MSG(mock->prefetch_host - host == (expect_prefetch ? RIG_PAGED_BUFFERS : 0), "page_out: %ld prefetches",
            mock->prefetch_host - host);
  CHECK(!expect_prefetch || mock->syncs > syncs);
  CHECK_OK(adamjit_optimizer_step(r.opt, NULL));
  /* paged state is still readable from the host side */
  static float m[300001];
  CHECK_OK(adamjit_optimizer_read_state(r.opt, 1, ADAMJIT_STATE_EXP_AVG, m, 300001));
  CHECK_OK(adamjit_context_synchronize(ctx));
  rig_close(ctx, &r);
  CHECK(mock_current() == NULL);
}

/* 1000 small tensors are one grouped launch whose table and per-tensor scalars (96 KiB)
 * are staged every step: many steps without a wait run the staging ring round several
 * times. The mock checks that no copy's source changed before it ran; the ring may wait
 * for its own oldest chunk, and nothing else may wait. */
static void test_staging_ring(adamjit_context* ctx) {
  enum { N = 1000, STEPS = 40 };
  adamjit_optimizer* opt = NULL;
  REQUIRE_OK(adamjit_optimizer_create(ctx, NULL, &opt));
  static adamjit_mem p[N], g[N];
  for (int i = 0; i < N; i++) {
    REQUIRE_OK(adamjit_mem_alloc(ctx, 64, &p[i]));
    REQUIRE_OK(adamjit_mem_alloc(ctx, 64, &g[i]));
    adamjit_tensor_desc td;
    adamjit_tensor_desc_init_default(&td);
    td.numel = 16;
    td.param = p[i], td.grad = g[i];
    int index;
    REQUIRE_OK(adamjit_optimizer_add_tensor(opt, &td, &index));
  }
  CHECK_OK(adamjit_optimizer_step(opt, NULL)); /* compiles */
  CHECK_OK(adamjit_context_synchronize(ctx));
  long syncs = mock->syncs, queued = mock->launches_queued;
  for (int s = 0; s < STEPS; s++) CHECK_OK(adamjit_optimizer_step(opt, NULL));
  long waits = mock->syncs - syncs;
  /* 96 KiB staged per step, a 4 x 64 KiB ring: at most one wait per chunk turned */
  CHECK_MSG(waits > 0 && waits <= 2 * STEPS, "%ld waits in %d asynchronous steps", waits, STEPS);
  CHECK_MSG(mock->launches_queued - queued == (long)STEPS, "%ld launches in %d steps of %d grouped tensors",
            mock->launches_queued - queued, STEPS, N);
  CHECK_OK(adamjit_context_synchronize(ctx));
  CHECK(mock->launches == mock->launches_queued);
  CHECK_MSG(mock->stale_sources == 0, "%ld staged copies read a reused slot", mock->stale_sources);
  adamjit_optimizer_destroy(opt);
  for (int i = 0; i < N; i++) {
    adamjit_mem_free(ctx, p[i]);
    adamjit_mem_free(ctx, g[i]);
  }
}

static void test_kernel_api(adamjit_context* ctx) {
  adamjit_kernel_build_info info = {.struct_size = sizeof info};
  CHECK_OK(adamjit_kernel_build(ctx, "adamw8/cuda/b=128", NULL, &info));
  CHECK_MSG(strcmp(info.target, "sm_90") == 0, "built for %s on an sm_90 device", info.target);
  adamjit_free(info.log);
}

static void test_caller_stream(void) {
  CUdevice dev = 0;
  CUcontext primary = NULL, popped = NULL;
  CUstream stream = NULL;
  REQUIRE_OK(cu->cuDeviceGet(&dev, 0) == CUDA_SUCCESS ? ADAMJIT_OK : ADAMJIT_ERR_DRIVER);
  CHECK(cu->cuDevicePrimaryCtxRetain(&primary, dev) == CUDA_SUCCESS);
  CHECK(cu->cuCtxPushCurrent(primary) == CUDA_SUCCESS);
  CHECK(cu->cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING) == CUDA_SUCCESS);
  long streams = mock->live_streams;
  adamjit_context* ctx = open_ctx(stream, 0, NULL, ADAMJIT_OK);
  CHECK(mock->live_streams == streams); /* no stream of its own */
  CHECK(mock_current() == primary);
  rig r;
  rig_open(ctx, &r);
  CHECK_OK(adamjit_optimizer_step(r.opt, NULL));
  CHECK(mock->last_launch_stream == (void*)stream);
  CHECK(cu->cuStreamQuery(stream) == CUDA_ERROR_NOT_READY); /* the step is queued on the caller's stream */
  CHECK(mock_current() == primary);
  CHECK(cu->cuStreamSynchronize(stream) == CUDA_SUCCESS);
  rig_close(ctx, &r);
  adamjit_context_destroy(ctx);
  CHECK(mock->live_streams == streams); /* the caller's stream is the caller's */
  open_ctx(stream, 1, NULL, ADAMJIT_ERR_INVALID_INDEX);
  CHECK(mock_current() == primary);
  CHECK(cu->cuStreamDestroy(stream) == CUDA_SUCCESS);
  CHECK(cu->cuCtxPopCurrent(&popped) == CUDA_SUCCESS && popped == primary);
  CHECK(cu->cuDevicePrimaryCtxRelease(dev) == CUDA_SUCCESS);
  /* A context the caller made current (here: the primary one) is used, and kept alive. */
  CHECK(cu->cuDevicePrimaryCtxRetain(&primary, dev) == CUDA_SUCCESS);
  CHECK(cu->cuCtxPushCurrent(primary) == CUDA_SUCCESS);
  ctx = open_ctx(NULL, 0, NULL, ADAMJIT_OK);
  CHECK(cu->cuCtxPopCurrent(&popped) == CUDA_SUCCESS);
  CHECK(cu->cuDevicePrimaryCtxRelease(dev) == CUDA_SUCCESS);
  CHECK(mock->primary_refs == 1); /* the adamjit context's own reference */
  adamjit_mem m = NULL;
  CHECK_OK(adamjit_mem_alloc(ctx, 64, &m)); /* works from a thread with no context current */
  adamjit_mem_free(ctx, m);
  adamjit_context_destroy(ctx);
}

static int mode_full(void) {
  test_queries();
  adamjit_context* ctx = open_ctx(NULL, 0, NULL, ADAMJIT_OK);
  CHECK(mock->primary_refs == 1 && mock->live_streams == 1);
  test_memory(ctx);
  test_kernel_api(ctx);
  test_steps(ctx, 1);
  test_staging_ring(ctx);
  adamjit_context_destroy(ctx);
  check_clean("full");
  CHECK(mock->live_streams == 0);
  test_caller_stream();
  check_clean("caller's stream");
  CHECK(mock->live_streams == 0);
  return test_finish("test_cuda_mock full");
}

/* ------------------------------------------------------------ other drivers and devices */

static int mode_no_prefetch(const char* name, int old_driver) {
  CHECK_OK(adamjit_backend_probe(ADAMJIT_BACKEND_CUDA));
  if (old_driver) {
    CHECK(cu->abi_version == 12010 && mock->abi_requested == 12010);
    CHECK(cu->cuMemPrefetchAsync == NULL); /* newer than the driver: left out, not refused */
  }
  adamjit_context* ctx = open_ctx(NULL, 0, NULL, ADAMJIT_OK);
  test_steps(ctx, 0);
  adamjit_context_destroy(ctx);
  check_clean(name);
  char label[64];
  snprintf(label, sizeof label, "test_cuda_mock %s", name);
  return test_finish(label);
}

static int mode_small_memory(void) {
  adamjit_context* ctx = open_ctx(NULL, 0, NULL, ADAMJIT_OK);
  adamjit_optimizer* opt = NULL;
  REQUIRE_OK(adamjit_optimizer_create(ctx, NULL, &opt));
  const int64_t n = 6 << 20; /* 24 MiB of params (also the grads); m and v need 48 MiB more */
  adamjit_mem buf = NULL;
  REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)n * 4, &buf));
  for (int paged = 0; paged <= 1; paged++) {
    long managed = mock->managed_allocs, live = mock->live_device;
    adamjit_tensor_desc td;
    adamjit_tensor_desc_init_default(&td);
    td.numel = n, td.param = buf, td.grad = buf, td.is_paged = paged;
    int index;
    CHECK_STATUS(adamjit_optimizer_add_tensor(opt, &td, &index), ADAMJIT_ERR_OUT_OF_MEMORY);
    CHECK(mock->live_device == live); /* m, allocated before v failed, was freed again */
    if (paged) {
      CHECK_MSG(mock->managed_allocs - managed == 1, "%ld managed allocations", mock->managed_allocs - managed);
      CHECK(strstr(adamjit_context_last_error(ctx), "free") != NULL);
    }
  }
  int count = -1;
  CHECK_OK(adamjit_optimizer_tensor_count(opt, &count));
  CHECK(count == 0);
  adamjit_optimizer_destroy(opt);
  adamjit_mem_free(ctx, buf);
  adamjit_context_destroy(ctx);
  check_clean("small-memory");
  return test_finish("test_cuda_mock small-memory");
}

static int mode_param_info(void) {
  adamjit_context* ctx = open_ctx(NULL, 0, NULL, ADAMJIT_OK);
  rig r;
  rig_open(ctx, &r);
  long queued = mock->launches_queued;
  CHECK_STATUS(adamjit_optimizer_step(r.opt, NULL), ADAMJIT_ERR_TEMPLATE);
  CHECK(strstr(adamjit_context_last_error(ctx), "takes 2 parameters") != NULL);
  CHECK(mock->launches_queued == queued);
  adamjit_tensor_info info = {.struct_size = sizeof info};
  CHECK_OK(adamjit_optimizer_tensor_info(r.opt, 0, &info));
  CHECK(info.step == 0);
  rig_close(ctx, &r);
  adamjit_context_destroy(ctx);
  check_clean("param-info");
  return test_finish("test_cuda_mock param-info");
}

static int mode_no_device(void) {
  CHECK_STATUS(adamjit_backend_probe(ADAMJIT_BACKEND_CUDA), ADAMJIT_ERR_BACKEND_UNAVAILABLE);
  CHECK_MSG(strstr(adamjit_last_error(), "sees no CUDA device") != NULL, "reason: %s", adamjit_last_error());
  adamjit_context_desc d;
  adamjit_context_desc_init_default(&d);
  d.backend = ADAMJIT_BACKEND_CUDA;
  adamjit_context* ctx = NULL;
  CHECK_STATUS(adamjit_context_create(&d, &ctx), ADAMJIT_ERR_BACKEND_UNAVAILABLE);
  CHECK(ctx == NULL);
  d.backend = ADAMJIT_BACKEND_AUTO; /* AUTO passes over it */
  CHECK_OK(adamjit_context_create(&d, &ctx));
  CHECK(adamjit_context_backend(ctx) != ADAMJIT_BACKEND_CUDA);
  adamjit_context_destroy(ctx);
  return test_finish("test_cuda_mock no-device");
}

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "full";
  const char* lib = getenv("ADAMJIT_CUDA_LIBRARY");
  void* h = lib && *lib ? dlopen(lib, RTLD_NOW | RTLD_LOCAL) : NULL;
  if (!h) {
    fprintf(stderr, "test_cuda_mock: ADAMJIT_CUDA_LIBRARY must name the mock driver (%s)\n", dlerror());
    return 1;
  }
  ajmock_counters* (*state)(void) = NULL;
  void* s1 = dlsym(h, "ajmock_state");
  void* s2 = dlsym(h, "ajmock_current");
  if (!s1 || !s2) {
    fprintf(stderr, "test_cuda_mock: %s is not the mock driver\n", lib);
    return 1;
  }
  memcpy(&state, &s1, sizeof s1);
  memcpy(&mock_current, &s2, sizeof s2);
  mock = state();
  if (strcmp(mode, "no-device") == 0) return mode_no_device();
  if (adamjit_backend_probe(ADAMJIT_BACKEND_CUDA) != ADAMJIT_OK) {
    fprintf(stderr, "test_cuda_mock: the backend refused the mock driver: %s\n", adamjit_last_error());
    return 1;
  }
  cu = aj_cuda_api();
  /* The kernels are compiled for real; without NVRTC there is nothing to load. */
  char why[512] = "";
  if (aj_nvrtc_available(why, sizeof why) != ADAMJIT_OK) {
    printf("skipped: NVRTC is unavailable: %s\n", why);
    return TEST_SKIP_CODE;
  }
  if (strcmp(mode, "full") == 0) return mode_full();
  if (strcmp(mode, "old-driver") == 0) return mode_no_prefetch("old-driver", 1);
  if (strcmp(mode, "no-concurrent") == 0) return mode_no_prefetch("no-concurrent", 0);
  if (strcmp(mode, "small-memory") == 0) return mode_small_memory();
  if (strcmp(mode, "param-info") == 0) return mode_param_info();
  fprintf(stderr, "test_cuda_mock: unknown mode %s\n", mode);
  return 1;
}

#endif
