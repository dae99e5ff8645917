/* Every bad input gets its status and a message that names the problem, and changes nothing.
 *
 * "Names the problem": the message (adamjit_context_last_error for calls with a context,
 * adamjit_last_error for calls without one) must contain the offending field or argument.
 * Before each bad call a known, harmless failure plants a marker in the messages, so a check
 * can never pass on a stale message left by an earlier call.
 *
 * "Changes nothing": a registered tensor that has already stepped is snapshotted (params,
 * m, v, step counter, every group's hyperparameters, group and tensor counts, state bytes,
 * last non-finite count) before the bad calls and compared after each one. At the end the
 * optimizer steps next to a twin that never saw a bad call, and both must agree bitwise. */
#include <ctype.h>
#include <stdint.h>

#include "tests/harness.h"

enum { N = 32, MAX_GROUPS = 4 };
#define MARKER "424242"

typedef struct {
  adamjit_context* ctx;
  adamjit_optimizer* opt;
  adamjit_mem param, grad;
} fixture;

typedef struct {
  float p[N], m[N], v[N];
  uint64_t step, state_bytes, last_nonfinite;
  int groups, tensors;
  adamjit_hparams hp[MAX_GROUPS];
} snapshot;

static fixture fx;
static snapshot before;

/* ------------------------------------------------------------------ helpers */

static int contains_ci(const char* hay, const char* needle) {
  size_t n = strlen(needle);
  for (; *hay; hay++) {
    size_t i = 0;
    while (i < n && hay[i] && tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i])) i++;
    if (i == n) return 1;
  }
  return n == 0;
}

static void take_snapshot(snapshot* s) {
  memset(s, 0, sizeof *s);
  REQUIRE_OK(adamjit_mem_read(fx.ctx, s->p, fx.param, 0, sizeof s->p));
  REQUIRE_OK(adamjit_optimizer_read_state(fx.opt, 0, ADAMJIT_STATE_EXP_AVG, s->m, N));
  REQUIRE_OK(adamjit_optimizer_read_state(fx.opt, 0, ADAMJIT_STATE_EXP_AVG_SQ, s->v, N));
  adamjit_tensor_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  REQUIRE_OK(adamjit_optimizer_tensor_info(fx.opt, 0, &info));
  s->step = info.step;
  REQUIRE_OK(adamjit_optimizer_state_bytes(fx.opt, &s->state_bytes));
  REQUIRE_OK(adamjit_optimizer_last_nonfinite(fx.opt, &s->last_nonfinite));
  REQUIRE_OK(adamjit_optimizer_group_count(fx.opt, &s->groups));
  REQUIRE_OK(adamjit_optimizer_tensor_count(fx.opt, &s->tensors));
  for (int g = 0; g < s->groups && g < MAX_GROUPS; g++) REQUIRE_OK(adamjit_optimizer_get_group(fx.opt, g, &s->hp[g]));
}

/* Plants MARKER in both the context's and the thread's message with a failure that
 * changes nothing (context failures are mirrored to the thread's message). */
static void plant_marker(void) {
  adamjit_hparams hp;
  adamjit_status st = adamjit_optimizer_get_group(fx.opt, 424242, &hp);
  if (st != ADAMJIT_ERR_INVALID_INDEX || !strstr(adamjit_context_last_error(fx.ctx), MARKER)) {
    fprintf(stderr, "cannot plant the message marker (status %d)\n", (int)st);
    exit(1);
  }
  adamjit_backend b;
  adamjit_backend_from_name("marker-" MARKER, &b); /* the thread's message too, for context-less calls */
}

/* Checks one failed call: status, a fresh message naming `needle`, nothing changed. */
static void check_failure(adamjit_status got, adamjit_status want, const char* msg, const char* needle,
                          const char* call, int line) {
  test_checks++;
  if (got != want) {
    test_failures++;
    fprintf(stderr, "line %d: %s returned %s, expected %s\n", line, call, adamjit_status_string(got),
            adamjit_status_string(want));
  }
  test_checks++;
  if (!msg || !msg[0] || strstr(msg, MARKER) || !contains_ci(msg, needle)) {
    test_failures++;
    fprintf(stderr, "line %d: %s: message \"%s\" does not name \"%s\"\n", line, call, msg ? msg : "(null)", needle);
  }
  snapshot after;
  take_snapshot(&after);
  test_checks++;
  if (memcmp(&before, &after, sizeof after) != 0) {
    test_failures++;
    fprintf(stderr, "line %d: %s changed the optimizer\n", line, call);
    before = after; /* report each change once */
  }
}

/* A call on a context: the detail is in adamjit_context_last_error. */
#define EXPECT_CTX(call, want, needle)                                                                 \
  do {                                                                                                 \
    plant_marker();                                                                                    \
    adamjit_status st_ = (call);                                                                       \
    check_failure(st_, want, adamjit_context_last_error(fx.ctx), needle, #call, __LINE__);             \
  } while (0)

/* A call without a usable context (or with a NULL one): the detail is in adamjit_last_error. */
#define EXPECT_THREAD(call, want, needle)                                                              \
  do {                                                                                                 \
    plant_marker();                                                                                    \
    adamjit_status st_ = (call);                                                                       \
    check_failure(st_, want, adamjit_last_error(), needle, #call, __LINE__);                           \
  } while (0)

/* An optimizer with two groups and one fp32 tensor (no amsgrad) that has stepped twice. */
static void fixture_make(fixture* f, adamjit_context* ctx) {
  f->ctx = ctx;
  REQUIRE_OK(adamjit_optimizer_create(ctx, NULL, &f->opt));
  adamjit_hparams hp;
  adamjit_hparams_init_default(&hp);
  hp.lr = 5e-3f;
  int g = -1;
  REQUIRE_OK(adamjit_optimizer_add_group(f->opt, &hp, &g));
  REQUIRE_OK(adamjit_mem_alloc(ctx, N * sizeof(float), &f->param));
  REQUIRE_OK(adamjit_mem_alloc(ctx, N * sizeof(float), &f->grad));
  float p[N], gr[N];
  for (int i = 0; i < N; i++) {
    p[i] = 0.1f * (float)(i - 10);
    gr[i] = 0.03f * (float)((i * 7) % 11 - 5);
  }
  REQUIRE_OK(adamjit_mem_write(ctx, f->param, 0, p, sizeof p));
  REQUIRE_OK(adamjit_mem_write(ctx, f->grad, 0, gr, sizeof gr));
  adamjit_tensor_desc d;
  adamjit_tensor_desc_init_default(&d);
  d.param = f->param;
  d.grad = f->grad;
  d.numel = N;
  int idx = -1;
  REQUIRE_OK(adamjit_optimizer_add_tensor(f->opt, &d, &idx));
  REQUIRE_OK(adamjit_optimizer_step(f->opt, NULL));
  REQUIRE_OK(adamjit_optimizer_step(f->opt, NULL));
}

static void fixture_free(fixture* f) {
  adamjit_optimizer_destroy(f->opt);
  adamjit_mem_free(f->ctx, f->param);
  adamjit_mem_free(f->ctx, f->grad);
}

static adamjit_tensor_desc good_desc(void) {
  adamjit_tensor_desc d;
  adamjit_tensor_desc_init_default(&d);
  d.param = fx.param;
  d.grad = fx.grad;
  d.numel = N;
  return d;
}

/* ------------------------------------------------------- context-less calls */

static void test_backend_queries(void) {
  adamjit_backend b = ADAMJIT_BACKEND_CUDA;
  EXPECT_THREAD(adamjit_backend_from_name(NULL, &b), ADAMJIT_ERR_NULL_ARGUMENT, "name");
  EXPECT_THREAD(adamjit_backend_from_name("cpu", NULL), ADAMJIT_ERR_NULL_ARGUMENT, "out");
  EXPECT_THREAD(adamjit_backend_from_name("tpu", &b), ADAMJIT_ERR_INVALID_VALUE, "tpu");
  CHECK(b == ADAMJIT_BACKEND_CUDA);
  int count = -5;
  EXPECT_THREAD(adamjit_backend_device_count(ADAMJIT_BACKEND_CPU, NULL), ADAMJIT_ERR_NULL_ARGUMENT, "count");
  EXPECT_THREAD(adamjit_backend_device_count((adamjit_backend)42, &count), ADAMJIT_ERR_INVALID_VALUE, "42");
  EXPECT_THREAD(adamjit_backend_probe((adamjit_backend)42), ADAMJIT_ERR_INVALID_VALUE, "42");
  char name[32];
  EXPECT_THREAD(adamjit_backend_device_name(ADAMJIT_BACKEND_CPU, 0, NULL, sizeof name), ADAMJIT_ERR_NULL_ARGUMENT,
                "name");
  EXPECT_THREAD(adamjit_backend_device_name(ADAMJIT_BACKEND_CPU, 1, name, sizeof name), ADAMJIT_ERR_INVALID_INDEX,
                "index");
  EXPECT_THREAD(adamjit_backend_device_name(ADAMJIT_BACKEND_CPU, -1, name, sizeof name), ADAMJIT_ERR_INVALID_INDEX,
                "index");
  /* A backend this build lacks is unavailable, with the reason. */
  const adamjit_backend others[2] = {ADAMJIT_BACKEND_OPENCL, ADAMJIT_BACKEND_CUDA};
  for (int i = 0; i < 2; i++) {
    if (adamjit_backend_is_built(others[i])) continue;
    EXPECT_THREAD(adamjit_backend_probe(others[i]), ADAMJIT_ERR_BACKEND_UNAVAILABLE, adamjit_backend_name(others[i]));
    EXPECT_THREAD(adamjit_backend_device_count(others[i], &count), ADAMJIT_ERR_BACKEND_UNAVAILABLE,
                  adamjit_backend_name(others[i]));
  }
  CHECK(count == -5);
}

/* context_create with `edit` applied to a default CPU descriptor must fail as `want`. */
static void expect_context_failure(adamjit_context_desc d, adamjit_status want, const char* needle, int line) {
  adamjit_context* ctx = (adamjit_context*)&fx; /* any non-NULL value: must come back NULL */
  plant_marker();
  adamjit_status st = adamjit_context_create(&d, &ctx);
  check_failure(st, want, adamjit_last_error(), needle, "adamjit_context_create", line);
  CHECK_MSG(ctx == NULL, "line %d: *out not NULL after a failed adamjit_context_create", line);
  if (st == ADAMJIT_OK && ctx) adamjit_context_destroy(ctx);
}

static void test_context_create(void) {
  adamjit_context_desc d;
  adamjit_context_desc_init_default(&d);
  d.backend = ADAMJIT_BACKEND_CPU;
  EXPECT_THREAD(adamjit_context_create(&d, NULL), ADAMJIT_ERR_NULL_ARGUMENT, "out");

  adamjit_context_desc e = d;
  e.backend = (adamjit_backend)42;
  expect_context_failure(e, ADAMJIT_ERR_INVALID_VALUE, "backend", __LINE__);
  e = d;
  e.struct_size = 0;
  expect_context_failure(e, ADAMJIT_ERR_INVALID_SIZE, "struct_size", __LINE__);
  e = d;
  e.struct_size = sizeof e + 64;
  expect_context_failure(e, ADAMJIT_ERR_INVALID_SIZE, "struct_size", __LINE__);
  e = d;
  e.device_index = 3; /* the CPU backend has one device */
  expect_context_failure(e, ADAMJIT_ERR_INVALID_INDEX, "device", __LINE__);
  e = d;
  e.device_index = -1;
  expect_context_failure(e, ADAMJIT_ERR_INVALID_VALUE, "device_index", __LINE__);
  e = d;
  e.num_threads = 0;
  expect_context_failure(e, ADAMJIT_ERR_INVALID_VALUE, "num_threads", __LINE__);
  e = d;
  e.log_level = (adamjit_log_level)9;
  expect_context_failure(e, ADAMJIT_ERR_INVALID_VALUE, "log_level", __LINE__);
  if (!adamjit_backend_is_built(ADAMJIT_BACKEND_OPENCL)) {
    e = d;
    e.backend = ADAMJIT_BACKEND_OPENCL;
    expect_context_failure(e, ADAMJIT_ERR_BACKEND_UNAVAILABLE, "opencl", __LINE__);
  }

  adamjit_context_destroy(NULL);
  EXPECT_THREAD(adamjit_context_synchronize(NULL), ADAMJIT_ERR_NULL_ARGUMENT, "ctx");
  CHECK(adamjit_context_last_error(NULL) != NULL);
}

/* ---------------------------------------------------------- backend memory */

static void test_memory(void) {
  adamjit_mem mem = NULL;
  EXPECT_THREAD(adamjit_mem_alloc(NULL, 16, &mem), ADAMJIT_ERR_NULL_ARGUMENT, "ctx");
  EXPECT_CTX(adamjit_mem_alloc(fx.ctx, 16, NULL), ADAMJIT_ERR_NULL_ARGUMENT, "out");
  EXPECT_CTX(adamjit_mem_alloc(fx.ctx, 0, &mem), ADAMJIT_ERR_INVALID_SIZE, "bytes");
  CHECK(mem == NULL);
  adamjit_mem_free(fx.ctx, NULL);
  adamjit_mem_free(NULL, NULL);

  REQUIRE_OK(adamjit_mem_alloc(fx.ctx, 64, &mem));
  unsigned char buf[80];
  memset(buf, 7, sizeof buf);
  EXPECT_THREAD(adamjit_mem_write(NULL, mem, 0, buf, 8), ADAMJIT_ERR_NULL_ARGUMENT, "ctx");
  EXPECT_CTX(adamjit_mem_write(fx.ctx, NULL, 0, buf, 8), ADAMJIT_ERR_NULL_ARGUMENT, "dst");
  EXPECT_CTX(adamjit_mem_write(fx.ctx, mem, 0, NULL, 8), ADAMJIT_ERR_NULL_ARGUMENT, "src");
  EXPECT_THREAD(adamjit_mem_read(NULL, buf, mem, 0, 8), ADAMJIT_ERR_NULL_ARGUMENT, "ctx");
  EXPECT_CTX(adamjit_mem_read(fx.ctx, NULL, mem, 0, 8), ADAMJIT_ERR_NULL_ARGUMENT, "dst");
  EXPECT_CTX(adamjit_mem_read(fx.ctx, buf, NULL, 0, 8), ADAMJIT_ERR_NULL_ARGUMENT, "src");
  /* Memory from adamjit_mem_alloc has a known size: out-of-range copies are refused, also
   * through a pointer into its middle and with an offset that would overflow. (Caller-owned
   * host memory cannot be checked on the CPU backend.) */
  EXPECT_CTX(adamjit_mem_write(fx.ctx, mem, 60, buf, 8), ADAMJIT_ERR_INVALID_SIZE, "bytes");
  EXPECT_CTX(adamjit_mem_write(fx.ctx, mem, 0, buf, 65), ADAMJIT_ERR_INVALID_SIZE, "bytes");
  EXPECT_CTX(adamjit_mem_read(fx.ctx, buf, mem, 1, 64), ADAMJIT_ERR_INVALID_SIZE, "bytes");
  EXPECT_CTX(adamjit_mem_read(fx.ctx, buf, (char*)mem + 16, 0, 49), ADAMJIT_ERR_INVALID_SIZE, "bytes");
  EXPECT_CTX(adamjit_mem_read(fx.ctx, buf, mem, SIZE_MAX - 2, 8), ADAMJIT_ERR_INVALID_SIZE, "overflow");
  unsigned char back[64];
  CHECK_OK(adamjit_mem_read(fx.ctx, back, mem, 0, sizeof back));
  int zero = 1;
  for (size_t i = 0; i < sizeof back; i++) zero &= back[i] == 0;
  CHECK_MSG(zero, "a refused write changed the memory");
  CHECK_OK(adamjit_mem_read(fx.ctx, back, (char*)mem + 16, 0, 48)); /* exactly to the end is fine */
  adamjit_mem_free(fx.ctx, mem);
}

/* ------------------------------------------------------ hyperparameters */

typedef struct {
  const char* field;
  adamjit_hparams hp;
} bad_hp;

/* Each entry breaks one field of otherwise valid hyperparameters. */
static int make_bad_hparams(bad_hp* out) {
  adamjit_hparams ok;
  adamjit_hparams_init_default(&ok);
  int n = 0;
#define BAD(name, member, value) \
  out[n].field = name;           \
  out[n].hp = ok;                \
  out[n].hp.member = value;      \
  n++
  BAD("lr", lr, -1e-3f);
  BAD("lr", lr, NAN);
  BAD("lr", lr, INFINITY);
  BAD("beta1", beta1, 1.0f);
  BAD("beta1", beta1, -0.1f);
  BAD("beta1", beta1, NAN);
  BAD("beta2", beta2, 1.0f);
  BAD("beta2", beta2, -0.5f);
  BAD("beta2", beta2, NAN);
  BAD("eps", eps, -1e-8f);
  BAD("eps", eps, NAN);
  BAD("eps", eps, INFINITY);
  BAD("weight_decay", weight_decay, -0.01f);
  BAD("weight_decay", weight_decay, NAN);
  BAD("weight_decay", weight_decay, INFINITY);
  BAD("amsgrad", amsgrad, 2);
  BAD("amsgrad", amsgrad, -1);
#undef BAD
  return n;
}

static void test_hparams(void) {
  bad_hp bad[32];
  int n = make_bad_hparams(bad);
  adamjit_hparams hp;
  adamjit_hparams_init_default(&hp);
  int g = -7;
  for (int i = 0; i < n; i++) {
    EXPECT_CTX(adamjit_optimizer_set_group(fx.opt, 0, &bad[i].hp), ADAMJIT_ERR_INVALID_VALUE, bad[i].field);
    EXPECT_CTX(adamjit_optimizer_set_group(fx.opt, 1, &bad[i].hp), ADAMJIT_ERR_INVALID_VALUE, bad[i].field);
    EXPECT_CTX(adamjit_optimizer_add_group(fx.opt, &bad[i].hp, &g), ADAMJIT_ERR_INVALID_VALUE, bad[i].field);
    CHECK(g == -7);
    adamjit_optimizer_config cfg;
    adamjit_optimizer_config_init_default(&cfg);
    cfg.hparams = bad[i].hp;
    adamjit_optimizer* o = NULL;
    EXPECT_CTX(adamjit_optimizer_create(fx.ctx, &cfg, &o), ADAMJIT_ERR_INVALID_VALUE, bad[i].field);
    CHECK(o == NULL);
  }
  /* The edges of the ranges are valid (and a set_group with them is undone right away). */
  adamjit_hparams edge = hp;
  edge.lr = 0.0f;
  edge.beta1 = 0.0f;
  edge.beta2 = 0.0f;
  edge.eps = 0.0f;
  edge.weight_decay = 0.0f;
  edge.amsgrad = 1;
  CHECK_OK(adamjit_optimizer_set_group(fx.opt, 1, &edge));
  CHECK_OK(adamjit_optimizer_set_group(fx.opt, 1, &before.hp[1]));

  EXPECT_THREAD(adamjit_optimizer_add_group(NULL, &hp, &g), ADAMJIT_ERR_NULL_ARGUMENT, "opt");
  EXPECT_CTX(adamjit_optimizer_add_group(fx.opt, NULL, &g), ADAMJIT_ERR_NULL_ARGUMENT, "hp");
  EXPECT_CTX(adamjit_optimizer_add_group(fx.opt, &hp, NULL), ADAMJIT_ERR_NULL_ARGUMENT, "group");
  int count;
  EXPECT_THREAD(adamjit_optimizer_group_count(NULL, &count), ADAMJIT_ERR_NULL_ARGUMENT, "opt");
  EXPECT_CTX(adamjit_optimizer_group_count(fx.opt, NULL), ADAMJIT_ERR_NULL_ARGUMENT, "count");
  EXPECT_THREAD(adamjit_optimizer_get_group(NULL, 0, &hp), ADAMJIT_ERR_NULL_ARGUMENT, "opt");
  EXPECT_CTX(adamjit_optimizer_get_group(fx.opt, 0, NULL), ADAMJIT_ERR_NULL_ARGUMENT, "hp");
  EXPECT_CTX(adamjit_optimizer_get_group(fx.opt, 2, &hp), ADAMJIT_ERR_INVALID_INDEX, "group");
  EXPECT_CTX(adamjit_optimizer_get_group(fx.opt, -1, &hp), ADAMJIT_ERR_INVALID_INDEX, "group");
  EXPECT_THREAD(adamjit_optimizer_set_group(NULL, 0, &hp), ADAMJIT_ERR_NULL_ARGUMENT, "opt");
  EXPECT_CTX(adamjit_optimizer_set_group(fx.opt, 0, NULL), ADAMJIT_ERR_NULL_ARGUMENT, "hp");
  EXPECT_CTX(adamjit_optimizer_set_group(fx.opt, 2, &hp), ADAMJIT_ERR_INVALID_INDEX, "group");
  EXPECT_CTX(adamjit_optimizer_set_group(fx.opt, -1, &hp), ADAMJIT_ERR_INVALID_INDEX, "group");
}

/* ------------------------------------------------------ optimizer config */

static void expect_config_failure(adamjit_optimizer_config cfg, adamjit_status want, const char* needle, int line) {
  adamjit_optimizer* o = NULL;
  plant_marker();
  adamjit_status st = adamjit_optimizer_create(fx.ctx, &cfg, &o);
  check_failure(st, want, adamjit_context_last_error(fx.ctx), needle, "adamjit_optimizer_create", line);
  CHECK_MSG(o == NULL, "line %d: an optimizer came back from a failed create", line);
  if (st == ADAMJIT_OK) adamjit_optimizer_destroy(o);
}

static void test_config(void) {
  adamjit_optimizer_config ok;
  adamjit_optimizer_config_init_default(&ok);
  adamjit_optimizer_config c;
#define BAD_CONFIG(member, value, want, needle) \
  c = ok;                                       \
  c.member = value;                             \
  expect_config_failure(c, want, needle, __LINE__)
  BAD_CONFIG(optim_bits, 16, ADAMJIT_ERR_INVALID_VALUE, "optim_bits");
  BAD_CONFIG(optim_bits, 0, ADAMJIT_ERR_INVALID_VALUE, "optim_bits");
  BAD_CONFIG(optim_bits, ADAMJIT_INHERIT, ADAMJIT_ERR_INVALID_VALUE, "optim_bits"); /* nothing to inherit from */
  BAD_CONFIG(percentile_clipping, 101, ADAMJIT_ERR_INVALID_VALUE, "percentile");
  BAD_CONFIG(percentile_clipping, -2, ADAMJIT_ERR_INVALID_VALUE, "percentile");
  BAD_CONFIG(percentile_clipping, ADAMJIT_INHERIT, ADAMJIT_ERR_INVALID_VALUE, "percentile");
  BAD_CONFIG(quant_block_size, 100, ADAMJIT_ERR_INVALID_VALUE, "quant_block_size");
  BAD_CONFIG(quant_block_size, 32, ADAMJIT_ERR_INVALID_VALUE, "quant_block_size");
  BAD_CONFIG(quant_block_size, 8192, ADAMJIT_ERR_INVALID_VALUE, "quant_block_size");
  BAD_CONFIG(quant_block_size, 0, ADAMJIT_ERR_INVALID_VALUE, "quant_block_size");
  BAD_CONFIG(min_8bit_size, -5, ADAMJIT_ERR_INVALID_VALUE, "min_8bit_size");
  BAD_CONFIG(paged_min_elements, -1, ADAMJIT_ERR_INVALID_VALUE, "paged_min_elements");
  BAD_CONFIG(block_wise, 2, ADAMJIT_ERR_INVALID_VALUE, "block_wise");
  BAD_CONFIG(is_paged, 3, ADAMJIT_ERR_INVALID_VALUE, "is_paged");
  BAD_CONFIG(struct_size, 0, ADAMJIT_ERR_INVALID_SIZE, "struct_size");
  BAD_CONFIG(struct_size, sizeof(adamjit_optimizer_config) + 8, ADAMJIT_ERR_INVALID_SIZE, "struct_size");
  BAD_CONFIG(struct_size, (size_t)-1, ADAMJIT_ERR_INVALID_SIZE, "struct_size");
#undef BAD_CONFIG

  /* The edges of each range are accepted. */
  const int blocks[2] = {64, 4096}, pcts[2] = {0, 100};
  for (int i = 0; i < 2; i++) {
    adamjit_optimizer* o = NULL;
    c = ok;
    c.quant_block_size = blocks[i];
    c.percentile_clipping = pcts[i];
    c.min_8bit_size = 0;
    c.paged_min_elements = 0;
    c.block_wise = 0;
    c.is_paged = 1;
    CHECK_OK(adamjit_optimizer_create(fx.ctx, &c, &o));
    adamjit_optimizer_destroy(o);
  }

  adamjit_optimizer* o = NULL;
  EXPECT_THREAD(adamjit_optimizer_create(NULL, &ok, &o), ADAMJIT_ERR_NULL_ARGUMENT, "ctx");
  EXPECT_CTX(adamjit_optimizer_create(fx.ctx, &ok, NULL), ADAMJIT_ERR_NULL_ARGUMENT, "out");
  CHECK(o == NULL);
  adamjit_optimizer_destroy(NULL);
}

/* ------------------------------------------------------ tensor registration */

static void expect_desc_failure(adamjit_tensor_desc d, adamjit_status want, const char* needle, int line) {
  int idx = -7;
  plant_marker();
  adamjit_status st = adamjit_optimizer_add_tensor(fx.opt, &d, &idx);
  check_failure(st, want, adamjit_context_last_error(fx.ctx), needle, "adamjit_optimizer_add_tensor", line);
  CHECK_MSG(idx == -7, "line %d: an index came back from a failed add_tensor", line);
}

static void test_tensor_desc(void) {
  const adamjit_tensor_desc ok = good_desc();
  adamjit_tensor_desc d;
#define BAD_DESC(member, value, want, needle) \
  d = ok;                                     \
  d.member = value;                           \
  expect_desc_failure(d, want, needle, __LINE__)
  BAD_DESC(numel, 0, ADAMJIT_ERR_INVALID_SIZE, "numel");
  BAD_DESC(numel, -1, ADAMJIT_ERR_INVALID_SIZE, "numel");
  BAD_DESC(numel, INT64_MAX, ADAMJIT_ERR_INVALID_SIZE, "numel");
  BAD_DESC(numel, N + 1, ADAMJIT_ERR_INVALID_SIZE, "param"); /* more than adamjit_mem_alloc gave */
  BAD_DESC(param_dtype, (adamjit_dtype)7, ADAMJIT_ERR_INVALID_DTYPE, "dtype");
  BAD_DESC(grad_dtype, (adamjit_dtype)7, ADAMJIT_ERR_INVALID_DTYPE, "dtype");
  BAD_DESC(param_dtype, (adamjit_dtype)-1, ADAMJIT_ERR_INVALID_DTYPE, "dtype");
  BAD_DESC(group, 5, ADAMJIT_ERR_INVALID_INDEX, "group");
  BAD_DESC(group, 2, ADAMJIT_ERR_INVALID_INDEX, "group");
  BAD_DESC(group, -1, ADAMJIT_ERR_INVALID_INDEX, "group");
  BAD_DESC(param, NULL, ADAMJIT_ERR_NULL_ARGUMENT, "param");
  BAD_DESC(grad, NULL, ADAMJIT_ERR_NULL_ARGUMENT, "grad");
  BAD_DESC(optim_bits, 9, ADAMJIT_ERR_INVALID_VALUE, "optim_bits");
  BAD_DESC(optim_bits, -2, ADAMJIT_ERR_INVALID_VALUE, "optim_bits");
  BAD_DESC(percentile_clipping, 200, ADAMJIT_ERR_INVALID_VALUE, "percentile");
  BAD_DESC(percentile_clipping, -2, ADAMJIT_ERR_INVALID_VALUE, "percentile");
  BAD_DESC(quant_block_size, 100, ADAMJIT_ERR_INVALID_VALUE, "quant_block_size");
  BAD_DESC(quant_block_size, 8192, ADAMJIT_ERR_INVALID_VALUE, "quant_block_size");
  BAD_DESC(block_wise, 2, ADAMJIT_ERR_INVALID_VALUE, "block_wise");
  BAD_DESC(is_paged, 2, ADAMJIT_ERR_INVALID_VALUE, "is_paged");
  BAD_DESC(min_8bit_size, -5, ADAMJIT_ERR_INVALID_VALUE, "min_8bit_size");
  BAD_DESC(struct_size, 0, ADAMJIT_ERR_INVALID_SIZE, "struct_size");
  BAD_DESC(struct_size, sizeof(adamjit_tensor_desc) + 8, ADAMJIT_ERR_INVALID_SIZE, "struct_size");
#undef BAD_DESC
  /* A grad buffer too small for its dtype (fp32 grads in a buffer sized for N/2 floats). */
  adamjit_mem small = NULL;
  REQUIRE_OK(adamjit_mem_alloc(fx.ctx, N * 2, &small));
  d = ok;
  d.grad = small;
  expect_desc_failure(d, ADAMJIT_ERR_INVALID_SIZE, "grad", __LINE__);

  int idx = -7;
  EXPECT_THREAD(adamjit_optimizer_add_tensor(NULL, &ok, &idx), ADAMJIT_ERR_NULL_ARGUMENT, "opt");
  EXPECT_CTX(adamjit_optimizer_add_tensor(fx.opt, NULL, &idx), ADAMJIT_ERR_NULL_ARGUMENT, "desc");
  EXPECT_CTX(adamjit_optimizer_add_tensor(fx.opt, &ok, NULL), ADAMJIT_ERR_NULL_ARGUMENT, "index");
  int count;
  EXPECT_THREAD(adamjit_optimizer_tensor_count(NULL, &count), ADAMJIT_ERR_NULL_ARGUMENT, "opt");
  EXPECT_CTX(adamjit_optimizer_tensor_count(fx.opt, NULL), ADAMJIT_ERR_NULL_ARGUMENT, "count");

  EXPECT_THREAD(adamjit_optimizer_set_tensor_memory(NULL, 0, fx.param, fx.grad), ADAMJIT_ERR_NULL_ARGUMENT, "opt");
  EXPECT_CTX(adamjit_optimizer_set_tensor_memory(fx.opt, 0, NULL, fx.grad), ADAMJIT_ERR_NULL_ARGUMENT, "param");
  EXPECT_CTX(adamjit_optimizer_set_tensor_memory(fx.opt, 0, fx.param, NULL), ADAMJIT_ERR_NULL_ARGUMENT, "grad");
  EXPECT_CTX(adamjit_optimizer_set_tensor_memory(fx.opt, 1, fx.param, fx.grad), ADAMJIT_ERR_INVALID_INDEX, "index");
  EXPECT_CTX(adamjit_optimizer_set_tensor_memory(fx.opt, -1, fx.param, fx.grad), ADAMJIT_ERR_INVALID_INDEX, "index");
  EXPECT_CTX(adamjit_optimizer_set_tensor_memory(fx.opt, 0, fx.param, small), ADAMJIT_ERR_INVALID_SIZE, "grad");
  EXPECT_CTX(adamjit_optimizer_set_tensor_memory(fx.opt, 0, small, fx.grad), ADAMJIT_ERR_INVALID_SIZE, "param");
  adamjit_mem_free(fx.ctx, small);
}

/* ------------------------------------------------------------- queries */

static void test_queries(void) {
  uint64_t u = 99;
  EXPECT_THREAD(adamjit_optimizer_step(NULL, &u), ADAMJIT_ERR_NULL_ARGUMENT, "opt");
  EXPECT_THREAD(adamjit_optimizer_last_nonfinite(NULL, &u), ADAMJIT_ERR_NULL_ARGUMENT, "opt");
  EXPECT_CTX(adamjit_optimizer_last_nonfinite(fx.opt, NULL), ADAMJIT_ERR_NULL_ARGUMENT, "count");
  EXPECT_THREAD(adamjit_optimizer_state_bytes(NULL, &u), ADAMJIT_ERR_NULL_ARGUMENT, "opt");
  EXPECT_CTX(adamjit_optimizer_state_bytes(fx.opt, NULL), ADAMJIT_ERR_NULL_ARGUMENT, "bytes");
  CHECK(u == 99);

  adamjit_tensor_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  EXPECT_THREAD(adamjit_optimizer_tensor_info(NULL, 0, &info), ADAMJIT_ERR_NULL_ARGUMENT, "opt");
  EXPECT_CTX(adamjit_optimizer_tensor_info(fx.opt, 0, NULL), ADAMJIT_ERR_NULL_ARGUMENT, "info");
  EXPECT_CTX(adamjit_optimizer_tensor_info(fx.opt, 1, &info), ADAMJIT_ERR_INVALID_INDEX, "index");
  EXPECT_CTX(adamjit_optimizer_tensor_info(fx.opt, -1, &info), ADAMJIT_ERR_INVALID_INDEX, "index");
  info.struct_size = 0;
  EXPECT_CTX(adamjit_optimizer_tensor_info(fx.opt, 0, &info), ADAMJIT_ERR_INVALID_SIZE, "struct_size");

  /* read_state: a refused read leaves the caller's buffer alone. */
  float dst[N + 1];
  for (int i = 0; i <= N; i++) dst[i] = -123.0f;
  EXPECT_THREAD(adamjit_optimizer_read_state(NULL, 0, ADAMJIT_STATE_EXP_AVG, dst, N), ADAMJIT_ERR_NULL_ARGUMENT,
                "opt");
  EXPECT_CTX(adamjit_optimizer_read_state(fx.opt, 0, ADAMJIT_STATE_EXP_AVG, NULL, N), ADAMJIT_ERR_NULL_ARGUMENT,
             "dst");
  EXPECT_CTX(adamjit_optimizer_read_state(fx.opt, 1, ADAMJIT_STATE_EXP_AVG, dst, N), ADAMJIT_ERR_INVALID_INDEX,
             "index");
  EXPECT_CTX(adamjit_optimizer_read_state(fx.opt, -1, ADAMJIT_STATE_EXP_AVG, dst, N), ADAMJIT_ERR_INVALID_INDEX,
             "index");
  EXPECT_CTX(adamjit_optimizer_read_state(fx.opt, 0, ADAMJIT_STATE_EXP_AVG, dst, N - 1), ADAMJIT_ERR_INVALID_SIZE,
             "count");
  EXPECT_CTX(adamjit_optimizer_read_state(fx.opt, 0, ADAMJIT_STATE_EXP_AVG_SQ, dst, N + 1), ADAMJIT_ERR_INVALID_SIZE,
             "count");
  EXPECT_CTX(adamjit_optimizer_read_state(fx.opt, 0, ADAMJIT_STATE_EXP_AVG, dst, 0), ADAMJIT_ERR_INVALID_SIZE,
             "count");
  EXPECT_CTX(adamjit_optimizer_read_state(fx.opt, 0, (adamjit_state_kind)7, dst, N), ADAMJIT_ERR_INVALID_VALUE,
             "which");
  /* The tensor's group never had amsgrad: there is no running maximum to read. */
  plant_marker();
  adamjit_status st = adamjit_optimizer_read_state(fx.opt, 0, ADAMJIT_STATE_MAX_EXP_AVG_SQ, dst, N);
  CHECK_MSG(st == ADAMJIT_ERR_INVALID_VALUE || st == ADAMJIT_ERR_UNSUPPORTED, "MAX_EXP_AVG_SQ without amsgrad: %s",
            adamjit_status_string(st));
  check_failure(st, st == ADAMJIT_OK ? ADAMJIT_ERR_INVALID_VALUE : st, adamjit_context_last_error(fx.ctx), "amsgrad",
                "read_state(MAX_EXP_AVG_SQ) without amsgrad", __LINE__);
  int untouched = 1;
  for (int i = 0; i <= N; i++) untouched &= dst[i] == -123.0f;
  CHECK_MSG(untouched, "a refused read_state wrote into the caller's buffer");
}

/* ------------------------------------------------------------- checkpoints */

static void test_files(void) {
  EXPECT_THREAD(adamjit_optimizer_save(NULL, "x.safetensors"), ADAMJIT_ERR_NULL_ARGUMENT, "opt");
  EXPECT_CTX(adamjit_optimizer_save(fx.opt, NULL), ADAMJIT_ERR_NULL_ARGUMENT, "path");
  EXPECT_THREAD(adamjit_optimizer_load(NULL, "x.safetensors"), ADAMJIT_ERR_NULL_ARGUMENT, "opt");
  EXPECT_CTX(adamjit_optimizer_load(fx.opt, NULL), ADAMJIT_ERR_NULL_ARGUMENT, "path");
  const char* missing = "/nonexistent-adamjit-dir/no-such-checkpoint.safetensors";
  EXPECT_CTX(adamjit_optimizer_load(fx.opt, missing), ADAMJIT_ERR_IO, "no-such-checkpoint");
  EXPECT_CTX(adamjit_optimizer_save(fx.opt, missing), ADAMJIT_ERR_IO, "no-such-checkpoint");
}

/* -------------------------------------------- nothing changed, end to end */

/* After all the refused calls the optimizer steps exactly like one that never saw them. */
static void test_twin_agrees(adamjit_context* ctx) {
  fixture twin;
  fixture_make(&twin, ctx);
  for (int s = 0; s < 3; s++) {
    CHECK_OK(adamjit_optimizer_step(fx.opt, NULL));
    CHECK_OK(adamjit_optimizer_step(twin.opt, NULL));
  }
  float a[N], b[N];
  CHECK_OK(adamjit_mem_read(ctx, a, fx.param, 0, sizeof a));
  CHECK_OK(adamjit_mem_read(ctx, b, twin.param, 0, sizeof b));
  CHECK_MSG(memcmp(a, b, sizeof a) == 0, "params differ from a twin that saw no bad calls");
  for (int k = 0; k < 2; k++) {
    adamjit_state_kind kind = k ? ADAMJIT_STATE_EXP_AVG_SQ : ADAMJIT_STATE_EXP_AVG;
    CHECK_OK(adamjit_optimizer_read_state(fx.opt, 0, kind, a, N));
    CHECK_OK(adamjit_optimizer_read_state(twin.opt, 0, kind, b, N));
    CHECK_MSG(memcmp(a, b, sizeof a) == 0, "state %d differs from a twin that saw no bad calls", k);
  }
  int count = 0;
  CHECK_OK(adamjit_optimizer_tensor_count(fx.opt, &count));
  CHECK(count == 1);
  CHECK_OK(adamjit_optimizer_group_count(fx.opt, &count));
  CHECK(count == 2);
  fixture_free(&twin);
}

int main(void) {
  adamjit_context* ctx = test_cpu_context();
  fixture_make(&fx, ctx);
  take_snapshot(&before);
  CHECK(before.step == 2 && before.groups == 2 && before.tensors == 1);

  test_backend_queries();
  test_context_create();
  test_memory();
  test_hparams();
  test_config();
  test_tensor_desc();
  test_queries();
  test_files();
  test_twin_agrees(ctx);

  fixture_free(&fx);
  adamjit_context_destroy(ctx);
  return test_finish("test_bad_inputs");
}
