/* Basic API contract: version, status strings, dtypes, backend queries, contexts, backend
 * memory, the documented defaults of every descriptor (SPEC 1), and what tensor_info and
 * state_bytes report about a tensor's storage. */
#include <stdint.h>

#include "tests/harness.h"

#define N_STATUS 18 /* ADAMJIT_OK .. ADAMJIT_ERR_INTERNAL */

static void test_version(void) {
  CHECK(adamjit_version_number() == ADAMJIT_VERSION_NUMBER);
  CHECK(adamjit_version_number() == 100u); /* 0.1.0 */
  const char* v = adamjit_version_string();
  CHECK(v != NULL);
  if (v) CHECK_MSG(strcmp(v, ADAMJIT_VERSION_STRING) == 0, "got \"%s\"", v);
}

static void test_status_strings(void) {
  const char* s[N_STATUS];
  for (int i = 0; i < N_STATUS; i++) {
    s[i] = adamjit_status_string((adamjit_status)i);
    CHECK_MSG(s[i] != NULL && s[i][0] != '\0', "status %d has no string", i);
  }
  /* Distinct texts, so a log line identifies the status unambiguously. */
  for (int i = 0; i < N_STATUS; i++)
    for (int j = i + 1; j < N_STATUS; j++)
      if (s[i] && s[j]) CHECK_MSG(strcmp(s[i], s[j]) != 0, "status %d and %d share \"%s\"", i, j, s[i]);
  /* Codes from a newer library (or garbage) still get a printable string. */
  const adamjit_status odd[] = {(adamjit_status)N_STATUS, (adamjit_status)999, (adamjit_status)-1};
  for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
    const char* t = adamjit_status_string(odd[i]);
    CHECK_MSG(t != NULL && t[0] != '\0', "status %d", (int)odd[i]);
  }
  /* Nothing has failed on this thread yet: the thread's message is empty, not NULL. */
  CHECK(adamjit_last_error() != NULL && adamjit_last_error()[0] == '\0');
}

static void test_dtypes(void) {
  static const struct { adamjit_dtype d; const char* name; size_t size; } want[] = {
      {ADAMJIT_F32, "f32", 4}, {ADAMJIT_F16, "f16", 2}, {ADAMJIT_BF16, "bf16", 2}};
  for (size_t i = 0; i < 3; i++) {
    const char* n = adamjit_dtype_name(want[i].d);
    CHECK_MSG(n != NULL && strcmp(n, want[i].name) == 0, "dtype %d name %s", (int)want[i].d, n ? n : "(null)");
    CHECK(adamjit_dtype_size(want[i].d) == want[i].size);
  }
  CHECK(adamjit_dtype_name((adamjit_dtype)7) == NULL);
  CHECK(adamjit_dtype_size((adamjit_dtype)7) == 0);
  CHECK(adamjit_dtype_name((adamjit_dtype)-1) == NULL);
  CHECK(adamjit_dtype_size((adamjit_dtype)-1) == 0);
}

static void test_backends(void) {
  static const struct { adamjit_backend b; const char* name; } want[] = {
      {ADAMJIT_BACKEND_AUTO, "auto"}, {ADAMJIT_BACKEND_CPU, "cpu"},
      {ADAMJIT_BACKEND_OPENCL, "opencl"}, {ADAMJIT_BACKEND_CUDA, "cuda"}};
  for (size_t i = 0; i < 4; i++) {
    const char* n = adamjit_backend_name(want[i].b);
    CHECK_MSG(n != NULL && strcmp(n, want[i].name) == 0, "backend %d name %s", (int)want[i].b, n ? n : "(null)");
    adamjit_backend back = (adamjit_backend)-7;
    CHECK_OK(adamjit_backend_from_name(want[i].name, &back));
    CHECK(back == want[i].b);
  }
  CHECK(adamjit_backend_name((adamjit_backend)42) == NULL);

  adamjit_backend out = ADAMJIT_BACKEND_CUDA;
  CHECK_STATUS(adamjit_backend_from_name("tpu", &out), ADAMJIT_ERR_INVALID_VALUE);
  CHECK(out == ADAMJIT_BACKEND_CUDA); /* untouched on failure */
  CHECK(adamjit_last_error()[0] != '\0');
  CHECK_STATUS(adamjit_backend_from_name("", &out), ADAMJIT_ERR_INVALID_VALUE);

  CHECK(adamjit_backend_is_built(ADAMJIT_BACKEND_CPU) == 1);
  CHECK(adamjit_backend_is_built((adamjit_backend)42) == 0);
  CHECK_OK(adamjit_backend_probe(ADAMJIT_BACKEND_CPU));

  int count = -1;
  CHECK_OK(adamjit_backend_device_count(ADAMJIT_BACKEND_CPU, &count));
  CHECK(count == 1);
  char name[128];
  memset(name, 'x', sizeof name);
  CHECK_OK(adamjit_backend_device_name(ADAMJIT_BACKEND_CPU, 0, name, sizeof name));
  CHECK(memchr(name, '\0', sizeof name) != NULL);
  CHECK(name[0] != '\0');
  /* Truncation keeps the terminator inside the caller's buffer. */
  char small[4];
  memset(small, 'x', sizeof small);
  CHECK_OK(adamjit_backend_device_name(ADAMJIT_BACKEND_CPU, 0, small, sizeof small));
  CHECK(memchr(small, '\0', sizeof small) != NULL);
  CHECK(strncmp(small, name, strlen(small)) == 0);
}

static void test_context_defaults(void) {
  adamjit_context_desc d;
  memset(&d, 0x5a, sizeof d); /* every field must be written, not left to chance */
  adamjit_context_desc_init_default(&d);
  CHECK(d.struct_size == sizeof(adamjit_context_desc));
  CHECK(d.backend == ADAMJIT_BACKEND_AUTO);
  CHECK(d.device_index == 0);
  CHECK(d.num_threads == -1);
  CHECK(d.cache_dir == NULL);
  CHECK(d.template_dir == NULL);
  CHECK(d.log_fn == NULL);
  CHECK(d.log_user == NULL);
  CHECK(d.log_level == ADAMJIT_LOG_WARN);
}

static void test_contexts(void) {
  adamjit_context* ctx = NULL;
  CHECK_OK(adamjit_context_create(NULL, &ctx));
  CHECK(ctx != NULL);
  if (ctx) {
    adamjit_backend b = adamjit_context_backend(ctx);
    CHECK(b != ADAMJIT_BACKEND_AUTO); /* AUTO is resolved to a real backend */
    CHECK(adamjit_backend_is_built(b) == 1);
    CHECK(adamjit_context_last_error(ctx) != NULL);
    CHECK(adamjit_context_last_error(ctx)[0] == '\0');
    CHECK_OK(adamjit_context_synchronize(ctx));
    adamjit_context_destroy(ctx);
  }

  adamjit_context_desc d;
  adamjit_context_desc_init_default(&d);
  d.backend = ADAMJIT_BACKEND_CPU;
  d.num_threads = 1;
  ctx = NULL;
  CHECK_OK(adamjit_context_create(&d, &ctx));
  CHECK(ctx != NULL);
  if (ctx) {
    CHECK(adamjit_context_backend(ctx) == ADAMJIT_BACKEND_CPU);
    CHECK_OK(adamjit_context_synchronize(ctx));
    adamjit_context_destroy(ctx);
  }
  adamjit_context_destroy(NULL); /* NULL-safe */
}

static void test_memory(adamjit_context* ctx) {
  enum { BYTES = 64 };
  adamjit_mem mem = NULL;
  CHECK_OK(adamjit_mem_alloc(ctx, BYTES, &mem));
  CHECK(mem != NULL);
  if (!mem) return;

  unsigned char buf[BYTES];
  memset(buf, 0xee, sizeof buf);
  CHECK_OK(adamjit_mem_read(ctx, buf, mem, 0, BYTES));
  int zeros = 1;
  for (int i = 0; i < BYTES; i++) zeros &= buf[i] == 0;
  CHECK_MSG(zeros, "adamjit_mem_alloc memory is not zero-filled");

  /* Write 8 bytes at offset 20, read the whole buffer and a window at an offset. */
  const unsigned char pattern[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  CHECK_OK(adamjit_mem_write(ctx, mem, 20, pattern, sizeof pattern));
  CHECK_OK(adamjit_mem_read(ctx, buf, mem, 0, BYTES));
  int ok = 1;
  for (int i = 0; i < BYTES; i++) ok &= buf[i] == ((i >= 20 && i < 28) ? pattern[i - 20] : 0);
  CHECK_MSG(ok, "write at offset 20 landed elsewhere");
  unsigned char window[4] = {0};
  CHECK_OK(adamjit_mem_read(ctx, window, mem, 22, sizeof window));
  CHECK(memcmp(window, pattern + 2, sizeof window) == 0);

  /* Memory from adamjit_mem_alloc has a size the backend knows: copies past its end are
   * refused (test_bad_inputs covers the variants). */
  CHECK_STATUS(adamjit_mem_write(ctx, mem, BYTES - 4, pattern, sizeof pattern), ADAMJIT_ERR_INVALID_SIZE);
  CHECK_STATUS(adamjit_mem_read(ctx, buf, mem, 1, BYTES), ADAMJIT_ERR_INVALID_SIZE);
  adamjit_mem_free(ctx, mem);
  adamjit_mem_free(ctx, NULL); /* NULL-safe */

  /* On the CPU backend any host pointer is backend memory; its size cannot be known there,
   * so in-range copies into caller-owned memory simply work. */
  if (adamjit_context_backend(ctx) == ADAMJIT_BACKEND_CPU) {
    unsigned char user[16] = {0};
    CHECK_OK(adamjit_mem_write(ctx, (adamjit_mem)user, 4, pattern, sizeof pattern));
    CHECK(memcmp(user + 4, pattern, sizeof pattern) == 0);
    unsigned char back[8] = {0};
    CHECK_OK(adamjit_mem_read(ctx, back, (adamjit_mem)user, 4, sizeof back));
    CHECK(memcmp(back, pattern, sizeof back) == 0);
  }
}

static void test_optimizer_defaults(void) {
  adamjit_hparams hp;
  memset(&hp, 0x5a, sizeof hp);
  adamjit_hparams_init_default(&hp);
  CHECK(hp.lr == 1e-3f);
  CHECK(hp.beta1 == 0.9f);
  CHECK(hp.beta2 == 0.999f);
  CHECK(hp.eps == 1e-8f);
  CHECK(hp.weight_decay == 1e-2f);
  CHECK(hp.amsgrad == 0);

  adamjit_optimizer_config c;
  memset(&c, 0x5a, sizeof c);
  adamjit_optimizer_config_init_default(&c);
  CHECK(c.struct_size == sizeof(adamjit_optimizer_config));
  CHECK(c.hparams.lr == hp.lr && c.hparams.beta1 == hp.beta1 && c.hparams.beta2 == hp.beta2 &&
        c.hparams.eps == hp.eps && c.hparams.weight_decay == hp.weight_decay && c.hparams.amsgrad == hp.amsgrad);
  CHECK(c.optim_bits == 32);
  CHECK(c.min_8bit_size == 4096);
  CHECK(c.percentile_clipping == 100);
  CHECK(c.block_wise == 1);
  CHECK(c.quant_block_size == 256);
  CHECK(c.is_paged == 0);
  CHECK(c.paged_min_elements == 100000);

  adamjit_tensor_desc t;
  memset(&t, 0x5a, sizeof t);
  adamjit_tensor_desc_init_default(&t);
  CHECK(t.struct_size == sizeof(adamjit_tensor_desc));
  CHECK(t.param == NULL && t.grad == NULL);
  CHECK(t.numel == 0); /* must be set by the caller: 0 is rejected at registration */
  CHECK(t.param_dtype == ADAMJIT_F32 && t.grad_dtype == ADAMJIT_F32);
  CHECK(t.group == 0);
  CHECK(t.name == NULL);
  CHECK(t.optim_bits == ADAMJIT_INHERIT);
  CHECK(t.min_8bit_size == ADAMJIT_INHERIT);
  CHECK(t.percentile_clipping == ADAMJIT_INHERIT);
  CHECK(t.block_wise == ADAMJIT_INHERIT);
  CHECK(t.quant_block_size == ADAMJIT_INHERIT);
  CHECK(t.is_paged == ADAMJIT_INHERIT);
}

/* ------------------------------------------------------------------ storage */

typedef struct {
  adamjit_mem param, grad;
} buffers;

static buffers make_buffers(adamjit_context* ctx, int64_t n, adamjit_dtype pd, adamjit_dtype gd) {
  buffers b = {NULL, NULL};
  REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)n * adamjit_dtype_size(pd), &b.param));
  REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)n * adamjit_dtype_size(gd), &b.grad));
  return b;
}

static void free_buffers(adamjit_context* ctx, buffers* b) {
  adamjit_mem_free(ctx, b->param);
  adamjit_mem_free(ctx, b->grad);
  b->param = b->grad = NULL;
}

static adamjit_tensor_desc tensor_desc(buffers b, int64_t n, adamjit_dtype pd, adamjit_dtype gd) {
  adamjit_tensor_desc d;
  adamjit_tensor_desc_init_default(&d);
  d.param = b.param;
  d.grad = b.grad;
  d.numel = n;
  d.param_dtype = pd;
  d.grad_dtype = gd;
  return d;
}

static adamjit_tensor_info get_info(adamjit_optimizer* opt, int index) {
  adamjit_tensor_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  CHECK_OK(adamjit_optimizer_tensor_info(opt, index, &info));
  return info;
}

static uint64_t total_state_bytes(adamjit_optimizer* opt) {
  uint64_t b = UINT64_MAX;
  CHECK_OK(adamjit_optimizer_state_bytes(opt, &b));
  return b;
}

/* One tensor with every kind of extra state: 8n for m and v, 4n for vmax once amsgrad is
 * used, and 100 floats of clipping history. */
static void test_tensor_info(adamjit_context* ctx) {
  const int64_t n = 1000, n2 = 77;
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  adamjit_optimizer* opt = NULL;
  REQUIRE_OK(adamjit_optimizer_create(ctx, &cfg, &opt));

  int groups = 0;
  CHECK_OK(adamjit_optimizer_group_count(opt, &groups));
  CHECK(groups == 1);
  adamjit_hparams g0;
  CHECK_OK(adamjit_optimizer_get_group(opt, 0, &g0));
  CHECK(g0.lr == cfg.hparams.lr && g0.beta1 == cfg.hparams.beta1 && g0.beta2 == cfg.hparams.beta2 &&
        g0.eps == cfg.hparams.eps && g0.weight_decay == cfg.hparams.weight_decay && g0.amsgrad == 0);
  CHECK(total_state_bytes(opt) == 0);

  buffers a = make_buffers(ctx, n, ADAMJIT_F16, ADAMJIT_BF16);
  adamjit_tensor_desc d = tensor_desc(a, n, ADAMJIT_F16, ADAMJIT_BF16);
  d.name = "layer0.weight";
  int idx = -1;
  CHECK_OK(adamjit_optimizer_add_tensor(opt, &d, &idx));
  CHECK(idx == 0);

  adamjit_tensor_info info = get_info(opt, 0);
  CHECK(info.numel == n);
  CHECK(info.param_dtype == ADAMJIT_F16 && info.grad_dtype == ADAMJIT_BF16);
  CHECK(info.group == 0);
  CHECK(info.state_bits == 32);
  CHECK(info.quant_block_size == 0);
  CHECK(info.percentile_clipping == 100);
  CHECK(info.amsgrad == 0);
  CHECK(info.memory == ADAMJIT_MEMORY_HOST);
  CHECK_MSG(info.state_bytes == 8 * (uint64_t)n, "state_bytes %llu", (unsigned long long)info.state_bytes);
  CHECK(info.step == 0);
  CHECK(strcmp(info.name, "layer0.weight") == 0);
  CHECK(total_state_bytes(opt) == 8 * (uint64_t)n);

  /* A second tensor in a new group with amsgrad and clipping (per-tensor override). */
  adamjit_hparams hp;
  adamjit_hparams_init_default(&hp);
  hp.amsgrad = 1;
  int g = -1;
  CHECK_OK(adamjit_optimizer_add_group(opt, &hp, &g));
  CHECK(g == 1);
  CHECK_OK(adamjit_optimizer_group_count(opt, &groups));
  CHECK(groups == 2);
  buffers b = make_buffers(ctx, n2, ADAMJIT_F32, ADAMJIT_F32);
  d = tensor_desc(b, n2, ADAMJIT_F32, ADAMJIT_F32);
  d.group = 1;
  d.percentile_clipping = 5;
  /* A name longer than the 64-byte field is truncated, still terminated. */
  d.name = "a_very_long_parameter_name_that_does_not_fit_into_sixty_four_bytes_of_info";
  CHECK_OK(adamjit_optimizer_add_tensor(opt, &d, &idx));
  CHECK(idx == 1);
  int count = 0;
  CHECK_OK(adamjit_optimizer_tensor_count(opt, &count));
  CHECK(count == 2);

  info = get_info(opt, 1);
  CHECK(info.group == 1);
  CHECK(info.percentile_clipping == 5);
  CHECK(memchr(info.name, '\0', sizeof info.name) != NULL);
  CHECK(strncmp(info.name, d.name, strlen(info.name)) == 0);
  CHECK(strlen(info.name) == sizeof info.name - 1);
  /* vmax may be allocated at registration or at the first step: both are allowed. */
  uint64_t before = info.state_bytes;
  CHECK_MSG(before == 8 * (uint64_t)n2 + 400 || before == 12 * (uint64_t)n2 + 400, "state_bytes %llu",
            (unsigned long long)before);

  uint64_t nf = 1;
  CHECK_OK(adamjit_optimizer_step(opt, &nf)); /* zero grads everywhere: a valid step */
  CHECK(nf == 0);
  info = get_info(opt, 1);
  CHECK(info.amsgrad == 1);
  CHECK(info.step == 1);
  CHECK_MSG(info.state_bytes == 12 * (uint64_t)n2 + 400, "state_bytes %llu", (unsigned long long)info.state_bytes);
  CHECK(get_info(opt, 0).step == 1);
  CHECK(total_state_bytes(opt) == 8 * (uint64_t)n + 12 * (uint64_t)n2 + 400);

  adamjit_optimizer_destroy(opt);
  free_buffers(ctx, &a);
  free_buffers(ctx, &b);
}

/* Turning amsgrad on for a group later allocates the running maximum, starting from zero,
 * at the next step (header, adamjit_optimizer_set_group): after that step vmax == v. */
static void test_amsgrad_enabled_later(adamjit_context* ctx) {
  enum { n = 50 };
  adamjit_optimizer* opt = NULL;
  REQUIRE_OK(adamjit_optimizer_create(ctx, NULL, &opt));
  buffers a = make_buffers(ctx, n, ADAMJIT_F32, ADAMJIT_F32);
  float g[n];
  for (int i = 0; i < n; i++) g[i] = 0.01f * (float)(i - 20);
  REQUIRE_OK(adamjit_mem_write(ctx, a.grad, 0, g, sizeof g));
  adamjit_tensor_desc d = tensor_desc(a, n, ADAMJIT_F32, ADAMJIT_F32);
  int idx = -1;
  REQUIRE_OK(adamjit_optimizer_add_tensor(opt, &d, &idx));
  CHECK_OK(adamjit_optimizer_step(opt, NULL));
  CHECK(get_info(opt, idx).amsgrad == 0);
  CHECK(total_state_bytes(opt) == 8 * (uint64_t)n);
  float tmp[n];
  CHECK_STATUS(adamjit_optimizer_read_state(opt, idx, ADAMJIT_STATE_MAX_EXP_AVG_SQ, tmp, n),
               ADAMJIT_ERR_INVALID_VALUE);

  adamjit_hparams hp;
  CHECK_OK(adamjit_optimizer_get_group(opt, 0, &hp));
  hp.amsgrad = 1;
  CHECK_OK(adamjit_optimizer_set_group(opt, 0, &hp));
  CHECK_OK(adamjit_optimizer_step(opt, NULL));
  adamjit_tensor_info info = get_info(opt, idx);
  CHECK(info.amsgrad == 1);
  CHECK(info.step == 2);
  CHECK(info.state_bytes == 12 * (uint64_t)n);
  float v[n], vmax[n];
  CHECK_OK(adamjit_optimizer_read_state(opt, idx, ADAMJIT_STATE_EXP_AVG_SQ, v, n));
  CHECK_OK(adamjit_optimizer_read_state(opt, idx, ADAMJIT_STATE_MAX_EXP_AVG_SQ, vmax, n));
  CHECK_MSG(memcmp(v, vmax, sizeof v) == 0, "the running maximum did not start from zero");
  adamjit_optimizer_destroy(opt);
  free_buffers(ctx, &a);
}

/* Paging is a no-op on the CPU backend: the state is ordinary host memory. */
static void test_paged_on_cpu(adamjit_context* ctx) {
  const int64_t n = 300;
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.is_paged = 1;
  cfg.paged_min_elements = 100;
  adamjit_optimizer* opt = NULL;
  REQUIRE_OK(adamjit_optimizer_create(ctx, &cfg, &opt));
  buffers a = make_buffers(ctx, n, ADAMJIT_F32, ADAMJIT_F32);
  adamjit_tensor_desc d = tensor_desc(a, n, ADAMJIT_F32, ADAMJIT_F32);
  int idx = -1;
  CHECK_OK(adamjit_optimizer_add_tensor(opt, &d, &idx));
  adamjit_tensor_info info = get_info(opt, 0);
  CHECK(info.memory == ADAMJIT_MEMORY_HOST);
  CHECK(info.state_bytes == 8 * (uint64_t)n);
  CHECK_OK(adamjit_optimizer_step(opt, NULL));
  adamjit_optimizer_destroy(opt);
  free_buffers(ctx, &a);
}

/* 8-bit state (SPEC 3): tensors with numel < min_8bit_size keep 32-bit state (8n bytes);
 * the others store m and v as one code byte per element plus one fp32 absmax per block
 * (2n + 8 * ceil(n / B) bytes), the running maximum of amsgrad another n + 4 * blocks, and
 * percentile clipping its 100-float history. tensor_info reports what is actually stored. */
static uint64_t blocks_of(int64_t n, int64_t b) { return (uint64_t)((n + b - 1) / b); }

typedef struct {
  int64_t n;
  int bits;             /* expected state_bits */
  int64_t block;        /* expected quant_block_size (0 at 32 bits) */
  uint64_t bytes;       /* expected state_bytes before the first step */
  uint64_t bytes_after; /* and after it (amsgrad allocates its maximum by then) */
} expect_8bit;

static void test_8bit_storage(adamjit_context* ctx) {
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.optim_bits = 8;
  CHECK(cfg.min_8bit_size == 4096 && cfg.quant_block_size == 256 && cfg.block_wise == 1);
  adamjit_optimizer* opt = NULL;
  REQUIRE_OK(adamjit_optimizer_create(ctx, &cfg, &opt));
  adamjit_hparams hp;
  adamjit_hparams_init_default(&hp);
  hp.amsgrad = 1;
  int ams_group = -1;
  REQUIRE_OK(adamjit_optimizer_add_group(opt, &hp, &ams_group));

  enum { T = 12 };
  buffers bufs[T];
  expect_8bit want[T];
  int count = 0;
  const int64_t ragged = 1000 + 4096 * 3;
#define ADD(numel, setup, bits_, block_, bytes_, after_)                                              \
  do {                                                                                                \
    bufs[count] = make_buffers(ctx, numel, ADAMJIT_F32, ADAMJIT_F32);                                 \
    adamjit_tensor_desc d = tensor_desc(bufs[count], numel, ADAMJIT_F32, ADAMJIT_F32);                \
    setup;                                                                                            \
    int idx_ = -1;                                                                                    \
    CHECK_OK(adamjit_optimizer_add_tensor(opt, &d, &idx_));                                           \
    CHECK(idx_ == count);                                                                             \
    want[count] = (expect_8bit){numel, bits_, block_, bytes_, after_};                                \
    count++;                                                                                          \
  } while (0)
  /* min_8bit_size is a strict <: 4095 keeps 32 bits, 4096 gets 8 bits. */
  ADD(4095, (void)0, 32, 0, 8 * 4095ull, 8 * 4095ull);
  ADD(4096, (void)0, 8, 256, 2 * 4096ull + 8 * 16, 2 * 4096ull + 8 * 16);
  /* A ragged last block: ceil(n / 256) absmax each for m and v. */
  ADD(ragged, (void)0, 8, 256, 2 * (uint64_t)ragged + 8 * blocks_of(ragged, 256),
      2 * (uint64_t)ragged + 8 * blocks_of(ragged, 256));
  /* Per-tensor block sizes. */
  ADD(5000, d.quant_block_size = 64, 8, 64, 2 * 5000ull + 8 * blocks_of(5000, 64),
      2 * 5000ull + 8 * blocks_of(5000, 64));
  ADD(10000, d.quant_block_size = 4096, 8, 4096, 2 * 10000ull + 8 * 3, 2 * 10000ull + 8 * 3);
  /* block_wise = 0: one absmax per state for the whole tensor. */
  ADD(7000, d.block_wise = 0, 8, 7000, 2 * 7000ull + 8, 2 * 7000ull + 8);
  /* Per-tensor optim_bits and min_8bit_size overrides. */
  ADD(4096, d.optim_bits = 32, 32, 0, 8 * 4096ull, 8 * 4096ull);
  ADD(5000, d.min_8bit_size = 8000, 32, 0, 8 * 5000ull, 8 * 5000ull);
  ADD(100, d.min_8bit_size = 50, 8, 256, 2 * 100ull + 8, 2 * 100ull + 8);
  /* amsgrad: the maximum (n + 4 * blocks) may be allocated at registration or at the first
   * step; after the step it is there. block_wise = 0 with amsgrad: one more absmax. */
  const uint64_t ams_n = 2 * 4096 + 7, ams_b = blocks_of((int64_t)ams_n, 256);
  ADD((int64_t)ams_n, d.group = ams_group, 8, 256, 2 * ams_n + 8 * ams_b, 3 * ams_n + 12 * ams_b);
  ADD(6000, (d.group = ams_group, d.block_wise = 0), 8, 6000, 2 * 6000ull + 8, 3 * 6000ull + 12);
  /* Percentile clipping: 100 floats of history. */
  ADD(4100, d.percentile_clipping = 5, 8, 256, 2 * 4100ull + 8 * blocks_of(4100, 256) + 400,
      2 * 4100ull + 8 * blocks_of(4100, 256) + 400);
#undef ADD

  uint64_t sum = 0;
  for (int i = 0; i < T; i++) {
    adamjit_tensor_info info = get_info(opt, i);
    CHECK_MSG(info.numel == want[i].n, "tensor %d: numel %lld", i, (long long)info.numel);
    CHECK_MSG(info.state_bits == want[i].bits, "tensor %d (n %lld): state_bits %d, expected %d", i,
              (long long)want[i].n, info.state_bits, want[i].bits);
    CHECK_MSG(info.quant_block_size == want[i].block, "tensor %d (n %lld): quant_block_size %lld, expected %lld", i,
              (long long)want[i].n, (long long)info.quant_block_size, (long long)want[i].block);
    CHECK_MSG(info.memory == ADAMJIT_MEMORY_HOST, "tensor %d: memory %d", i, (int)info.memory);
    const int ams = i == 9 || i == 10;
    const uint64_t with_max = want[i].bytes_after;
    CHECK_MSG(info.state_bytes == want[i].bytes || (ams && info.state_bytes == with_max),
              "tensor %d (n %lld): state_bytes %llu, expected %llu", i, (long long)want[i].n,
              (unsigned long long)info.state_bytes, (unsigned long long)want[i].bytes);
    sum += info.state_bytes;
    /* New 8-bit state decodes to zero. */
    if (want[i].bits == 8) {
      float* m = test_calloc((size_t)want[i].n, sizeof(float));
      m[0] = 1.0f;
      CHECK_OK(adamjit_optimizer_read_state(opt, i, ADAMJIT_STATE_EXP_AVG, m, want[i].n));
      int zeros = 1;
      for (int64_t j = 0; j < want[i].n; j++) zeros &= m[j] == 0.0f;
      CHECK_MSG(zeros, "tensor %d: fresh 8-bit m does not read as zeros", i);
      free(m);
    }
  }
  CHECK_MSG(total_state_bytes(opt) == sum, "state_bytes %llu, sum over tensors %llu",
            (unsigned long long)total_state_bytes(opt), (unsigned long long)sum);

  uint64_t nf = 1;
  CHECK_OK(adamjit_optimizer_step(opt, &nf)); /* zero grads: a valid step */
  CHECK(nf == 0);
  sum = 0;
  for (int i = 0; i < T; i++) {
    adamjit_tensor_info info = get_info(opt, i);
    CHECK(info.step == 1);
    CHECK(info.state_bits == want[i].bits && info.quant_block_size == want[i].block);
    CHECK(info.amsgrad == (i == 9 || i == 10));
    CHECK_MSG(info.state_bytes == want[i].bytes_after, "tensor %d (n %lld) stepped: state_bytes %llu, expected %llu",
              i, (long long)want[i].n, (unsigned long long)info.state_bytes,
              (unsigned long long)want[i].bytes_after);
    sum += info.state_bytes;
  }
  CHECK(total_state_bytes(opt) == sum);

  adamjit_optimizer_destroy(opt);
  for (int i = 0; i < T; i++) free_buffers(ctx, &bufs[i]);
}

/* Failures are delivered to the log callback at ERROR level. */
typedef struct {
  int errors;
  int others;
} log_record;

static void record_log(adamjit_log_level level, const char* message, void* user) {
  log_record* r = user;
  if (level == ADAMJIT_LOG_ERROR && message && message[0]) r->errors++;
  else r->others++;
}

static void test_log_callback(void) {
  log_record rec = {0, 0};
  adamjit_context_desc d;
  adamjit_context_desc_init_default(&d);
  d.backend = ADAMJIT_BACKEND_CPU;
  d.log_fn = record_log;
  d.log_user = &rec;
  d.log_level = ADAMJIT_LOG_ERROR;
  adamjit_context* ctx = NULL;
  REQUIRE_OK(adamjit_context_create(&d, &ctx));
  adamjit_mem mem = NULL;
  CHECK_STATUS(adamjit_mem_alloc(ctx, 0, &mem), ADAMJIT_ERR_INVALID_SIZE);
  CHECK_MSG(rec.errors >= 1, "no ERROR message logged for a failed call");
  CHECK(rec.others == 0); /* nothing more verbose than the requested level */
  adamjit_context_destroy(ctx);
}

int main(void) {
  test_version();
  test_status_strings();
  test_dtypes();
  test_backends();
  test_context_defaults();
  test_contexts();
  adamjit_context* ctx = test_cpu_context();
  test_memory(ctx);
  test_optimizer_defaults();
  test_tensor_info(ctx);
  test_amsgrad_enabled_later(ctx);
  test_paged_on_cpu(ctx);
  test_8bit_storage(ctx);
  adamjit_context_destroy(ctx);
  test_log_callback();
  return test_finish("test_api_basics");
}
