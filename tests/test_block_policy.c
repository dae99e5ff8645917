/* Quantization block sizes chosen per tensor (ADAMJIT_BLOCK_POLICY_*): the MEMORY rule at
 * registration, the ERROR policy's choice at the first step (provisional before, final
 * after), its run bit-identical to a FIXED run with the chosen blocks from the start, the
 * explicit per-tensor block winning, checkpoints, state bytes and bad inputs.
 *
 * Usage: test_block_policy [cpu|opencl|cuda]. cpu (default) runs everything on the CPU
 * backend; opencl and cuda run the ERROR-vs-FIXED and checkpoint cases on that backend and
 * compare them with the CPU backend bit for bit (skipped, 77, without such a device). */
#define _GNU_SOURCE /* mkdtemp, nftw (pocl_scratch.h) */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "adamjit/adamjit.h"
#include "halfprec.h"
#include "harness.h"
#include "pocl_scratch.h"

/* ------------------------------------------------------------ gradients */

typedef enum { G_GAUSS, G_OUTLIERS, G_UNIFORM, G_GAUSS_NONFINITE } grad_kind;

static double gauss(test_rng* r) {
  /* Irwin-Hall with 12 terms: close enough to N(0,1) here and free of libm differences. */
  double s = 0.0;
  for (int k = 0; k < 12; k++) s += 0.5 * test_rng_uniform(r);
  return s;
}

/* The gradient of tensor `seed` at step `step`, as dtype in buf. */
static void make_grad(grad_kind kind, adamjit_dtype dt, void* buf, int64_t n, int seed, int step) {
  test_rng r = {0x9e3779b97f4a7c15ull ^ ((unsigned long long)seed << 20) ^ (unsigned long long)step * 7919u};
  for (int64_t i = 0; i < n; i++) {
    double x;
    switch (kind) {
      case G_OUTLIERS: x = gauss(&r) * ((test_rng_next(&r) % 100) == 0 ? 10.0 : 1.0); break;
      case G_UNIFORM: x = test_rng_uniform(&r); break;
      case G_GAUSS_NONFINITE: x = (test_rng_next(&r) % 997) == 0 ? (i % 2 ? NAN : INFINITY) : gauss(&r); break;
      default: x = gauss(&r); break;
    }
    put_elem(dt, buf, i, x * 1e-2);
  }
}

/* ------------------------------------------------------------ a model */

typedef struct tspec {
  const char* name;
  int64_t numel;
  adamjit_dtype param_dtype, grad_dtype;
  grad_kind kind;
  int block;  /* explicit quant_block_size, or ADAMJIT_INHERIT */
  int policy; /* the descriptor's quant_block_policy */
} tspec;

enum { MAX_T = 8 };

typedef struct model {
  adamjit_context* ctx;
  adamjit_optimizer* opt;
  const tspec* specs;
  int n;
  adamjit_mem param[MAX_T], grad[MAX_T];
} model;

/* INFO lines of the ERROR policy's choices. */
static int choice_lines = 0;
static void count_choices(adamjit_log_level level, const char* message, void* user) {
  (void)user;
  if (level == ADAMJIT_LOG_INFO && strstr(message, "block policy error: tensor")) choice_lines++;
}

static adamjit_context* make_context(adamjit_backend backend) {
  adamjit_context_desc d;
  adamjit_context_desc_init_default(&d);
  d.backend = backend;
  d.log_fn = count_choices;
  d.log_level = ADAMJIT_LOG_INFO;
  adamjit_context* ctx = NULL;
  REQUIRE_OK(adamjit_context_create(&d, &ctx));
  return ctx;
}

/* Registers specs with cfg; blocks (or NULL) overrides each tensor's explicit block. The
 * params start from the same values in every model. */
static void model_init(model* m, adamjit_context* ctx, const adamjit_optimizer_config* cfg, const tspec* specs, int n,
                       const int* blocks) {
  memset(m, 0, sizeof *m);
  m->ctx = ctx;
  m->specs = specs;
  m->n = n;
  REQUIRE_OK(adamjit_optimizer_create(ctx, cfg, &m->opt));
  for (int i = 0; i < n; i++) {
    const tspec* s = &specs[i];
    size_t pb = (size_t)s->numel * adamjit_dtype_size(s->param_dtype);
    size_t gb = (size_t)s->numel * adamjit_dtype_size(s->grad_dtype);
    REQUIRE_OK(adamjit_mem_alloc(ctx, pb, &m->param[i]));
    REQUIRE_OK(adamjit_mem_alloc(ctx, gb, &m->grad[i]));
    void* host = test_calloc((size_t)s->numel, 4);
    test_rng r = {0x1234567ull + (unsigned long long)i};
    for (int64_t j = 0; j < s->numel; j++) put_elem(s->param_dtype, host, j, test_rng_uniform(&r));
    REQUIRE_OK(adamjit_mem_write(ctx, m->param[i], 0, host, pb));
    free(host);
    adamjit_tensor_desc d;
    adamjit_tensor_desc_init_default(&d);
    d.param = m->param[i];
    d.grad = m->grad[i];
    d.numel = s->numel;
    d.param_dtype = s->param_dtype;
    d.grad_dtype = s->grad_dtype;
    d.name = s->name;
    d.quant_block_size = blocks && blocks[i] ? blocks[i] : s->block;
    d.quant_block_policy = s->policy;
    int index = -1;
    REQUIRE_OK(adamjit_optimizer_add_tensor(m->opt, &d, &index));
  }
}

static void model_free(model* m) {
  adamjit_optimizer_destroy(m->opt);
  for (int i = 0; i < m->n; i++) {
    adamjit_mem_free(m->ctx, m->param[i]);
    adamjit_mem_free(m->ctx, m->grad[i]);
  }
}

/* Steps first..last (1-based), each with that step's gradients. */
static void model_steps(model* m, int first, int last) {
  for (int s = first; s <= last; s++) {
    for (int i = 0; i < m->n; i++) {
      const tspec* t = &m->specs[i];
      size_t gb = (size_t)t->numel * adamjit_dtype_size(t->grad_dtype);
      void* host = test_calloc(gb, 1);
      make_grad(t->kind, t->grad_dtype, host, t->numel, i, s);
      REQUIRE_OK(adamjit_mem_write(m->ctx, m->grad[i], 0, host, gb));
      free(host);
    }
    uint64_t nonfinite = 0;
    REQUIRE_OK(adamjit_optimizer_step(m->opt, &nonfinite));
  }
}

static adamjit_tensor_info info_of(const adamjit_optimizer* opt, int i) {
  adamjit_tensor_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  REQUIRE_OK(adamjit_optimizer_tensor_info(opt, i, &info));
  return info;
}

/* Everything a run leaves: params (raw bytes) and the dequantized states, per tensor. */
typedef struct snapshot {
  int n;
  unsigned char* param[MAX_T];
  float* state[MAX_T][3];
  int64_t numel[MAX_T];
  size_t param_bytes[MAX_T];
  int64_t block[MAX_T];
} snapshot;

static void snapshot_take(model* m, snapshot* s, int amsgrad) {
  memset(s, 0, sizeof *s);
  s->n = m->n;
  for (int i = 0; i < m->n; i++) {
    const tspec* t = &m->specs[i];
    s->numel[i] = t->numel;
    s->param_bytes[i] = (size_t)t->numel * adamjit_dtype_size(t->param_dtype);
    s->param[i] = test_calloc(s->param_bytes[i], 1);
    REQUIRE_OK(adamjit_mem_read(m->ctx, s->param[i], m->param[i], 0, s->param_bytes[i]));
    for (int k = 0; k < 2 + amsgrad; k++) {
      s->state[i][k] = test_calloc((size_t)t->numel, sizeof(float));
      REQUIRE_OK(adamjit_optimizer_read_state(m->opt, i, (adamjit_state_kind)k, s->state[i][k], t->numel));
    }
    s->block[i] = info_of(m->opt, i).quant_block_size;
  }
}

static void snapshot_free(snapshot* s) {
  for (int i = 0; i < s->n; i++) {
    free(s->param[i]);
    for (int k = 0; k < 3; k++) free(s->state[i][k]);
  }
}

/* Bit-identical params and states, and the same blocks. */
static int snapshot_same(const snapshot* a, const snapshot* b, const char* what) {
  int same = a->n == b->n;
  for (int i = 0; same && i < a->n; i++) {
    if (a->block[i] != b->block[i]) {
      fprintf(stderr, "%s: tensor %d has block %lld vs %lld\n", what, i, (long long)a->block[i], (long long)b->block[i]);
      same = 0;
    }
    if (memcmp(a->param[i], b->param[i], a->param_bytes[i]) != 0) {
      fprintf(stderr, "%s: tensor %d params differ\n", what, i);
      same = 0;
    }
    for (int k = 0; k < 3; k++) {
      if (!a->state[i][k] != !b->state[i][k] ||
          (a->state[i][k] && memcmp(a->state[i][k], b->state[i][k], (size_t)a->numel[i] * sizeof(float)) != 0)) {
        fprintf(stderr, "%s: tensor %d state %d differs\n", what, i, k);
        same = 0;
      }
    }
  }
  return same;
}

static adamjit_optimizer_config config_of(int policy, int amsgrad) {
  adamjit_optimizer_config c;
  adamjit_optimizer_config_init_default(&c);
  c.optim_bits = 8;
  c.quant_block_policy = policy;
  c.hparams.amsgrad = amsgrad;
  return c;
}

/* The model of the ERROR runs: outliers (-> a small block), uniform (-> 4096), Gaussian with
 * half-precision gradients, non-finite elements and a ragged tail, an explicit block, and a
 * tensor too small for 8 bits. */
static const tspec error_model[] = {
    {"outliers", 65536, ADAMJIT_F32, ADAMJIT_F32, G_OUTLIERS, ADAMJIT_INHERIT, ADAMJIT_INHERIT},
    {"uniform", 65536, ADAMJIT_F32, ADAMJIT_BF16, G_UNIFORM, ADAMJIT_INHERIT, ADAMJIT_INHERIT},
    {"gauss", 40000, ADAMJIT_BF16, ADAMJIT_F16, G_GAUSS_NONFINITE, ADAMJIT_INHERIT, ADAMJIT_INHERIT},
    {"explicit", 20000, ADAMJIT_F32, ADAMJIT_F32, G_OUTLIERS, 1024, ADAMJIT_INHERIT},
    {"small", 1000, ADAMJIT_F32, ADAMJIT_F32, G_GAUSS, ADAMJIT_INHERIT, ADAMJIT_INHERIT},
};
enum { ERROR_T = sizeof error_model / sizeof error_model[0], STEPS = 4 };

static uint64_t state_bytes_8bit(int64_t n, int64_t block, int states) {
  return (uint64_t)states * ((uint64_t)n + 4 * (uint64_t)((n + block - 1) / block));
}

/* ------------------------------------------------------------ cases */

static int64_t memory_block_brute(int64_t n, double overhead) {
  for (int64_t b = 64; b <= 4096; b *= 2)
    if (4.0 * (double)((n + b - 1) / b) <= overhead * (double)n) return b;
  return 4096;
}

static void test_defaults(void) {
  adamjit_optimizer_config c;
  adamjit_optimizer_config_init_default(&c);
  CHECK(c.quant_block_policy == ADAMJIT_BLOCK_POLICY_FIXED);
  CHECK(c.block_overhead_max == 1.0 / 64);
  CHECK(c.block_error_max > 0.0 && c.block_error_max <= 1.0);
  adamjit_tensor_desc d;
  adamjit_tensor_desc_init_default(&d);
  CHECK(d.quant_block_policy == ADAMJIT_INHERIT);
}

static void test_memory(adamjit_context* ctx) {
  static const struct { int64_t numel; double overhead; int64_t block; } cases[] = {
      {4096, 1.0 / 64, 256},    {1 << 20, 1.0 / 64, 256}, {5000, 1.0 / 64, 512},    {100, 1.0 / 64, 4096},
      {1 << 20, 1.0 / 16, 64},  {1 << 20, 1.0, 64},       {1 << 20, 1.0 / 1024, 4096}, {1 << 20, 1.0 / 4096, 4096},
      {300000, 1.0 / 128, 1024}, {65, 1.0 / 16, 128},         {64, 1.0 / 16, 64},        {4097, 1.0 / 64, 512},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    CHECK(memory_block_brute(cases[k].numel, cases[k].overhead) == cases[k].block);
    adamjit_optimizer_config c = config_of(ADAMJIT_BLOCK_POLICY_MEMORY, 0);
    c.min_8bit_size = 0;
    c.block_overhead_max = cases[k].overhead;
    tspec s = {"t", cases[k].numel, ADAMJIT_F32, ADAMJIT_F32, G_GAUSS, ADAMJIT_INHERIT, ADAMJIT_INHERIT};
    model m;
    model_init(&m, ctx, &c, &s, 1, NULL);
    adamjit_tensor_info info = info_of(m.opt, 0);
    CHECK_MSG(info.quant_block_size == cases[k].block, "numel %lld overhead 1/%g: block %lld, expected %lld",
              (long long)cases[k].numel, 1.0 / cases[k].overhead, (long long)info.quant_block_size,
              (long long)cases[k].block);
    CHECK(info.quant_block_policy == ADAMJIT_BLOCK_POLICY_MEMORY);
    CHECK(info.state_bytes == state_bytes_8bit(cases[k].numel, cases[k].block, 2));
    /* Decided at registration: a step keeps it. */
    model_steps(&m, 1, 1);
    CHECK(info_of(m.opt, 0).quant_block_size == cases[k].block);
    model_free(&m);
  }

  /* Only 8-bit block-wise state has a block to choose; an explicit block wins; a tensor's
   * policy overrides the optimizer's. */
  adamjit_optimizer_config c = config_of(ADAMJIT_BLOCK_POLICY_MEMORY, 0);
  c.block_overhead_max = 1.0 / 16;
  tspec specs[] = {
      {"small", 1000, ADAMJIT_F32, ADAMJIT_F32, G_GAUSS, ADAMJIT_INHERIT, ADAMJIT_INHERIT},
      {"explicit", 1 << 16, ADAMJIT_F32, ADAMJIT_F32, G_GAUSS, 2048, ADAMJIT_INHERIT},
      {"fixed", 1 << 16, ADAMJIT_F32, ADAMJIT_F32, G_GAUSS, ADAMJIT_INHERIT, ADAMJIT_BLOCK_POLICY_FIXED},
      {"memory", 1 << 16, ADAMJIT_F32, ADAMJIT_F32, G_GAUSS, ADAMJIT_INHERIT, ADAMJIT_INHERIT},
  };
  model m;
  model_init(&m, ctx, &c, specs, 4, NULL);
  adamjit_tensor_info i0 = info_of(m.opt, 0), i1 = info_of(m.opt, 1), i2 = info_of(m.opt, 2), i3 = info_of(m.opt, 3);
  CHECK(i0.state_bits == 32 && i0.quant_block_size == 0 && i0.quant_block_policy == ADAMJIT_BLOCK_POLICY_FIXED);
  CHECK(i1.quant_block_size == 2048 && i1.quant_block_policy == ADAMJIT_BLOCK_POLICY_FIXED);
  CHECK(i2.quant_block_size == 256 && i2.quant_block_policy == ADAMJIT_BLOCK_POLICY_FIXED);
  CHECK(i3.quant_block_size == 64 && i3.quant_block_policy == ADAMJIT_BLOCK_POLICY_MEMORY);
  model_free(&m);

  c.block_wise = 0;
  c.optim_bits = 8;
  model_init(&m, ctx, &c, &specs[3], 1, NULL);
  i0 = info_of(m.opt, 0);
  CHECK(i0.quant_block_size == 1 << 16 && i0.quant_block_policy == ADAMJIT_BLOCK_POLICY_FIXED);
  model_free(&m);

  /* kernel keys see the block the tensor gets (MEMORY) or starts with (ERROR). */
  c = config_of(ADAMJIT_BLOCK_POLICY_MEMORY, 0);
  c.block_overhead_max = 1.0 / 16;
  REQUIRE_OK(adamjit_optimizer_create(ctx, &c, &m.opt));
  adamjit_tensor_desc d;
  adamjit_tensor_desc_init_default(&d);
  d.numel = 1 << 16;
  char keys[8][ADAMJIT_KERNEL_KEY_MAX];
  int count = 0;
  CHECK_OK(adamjit_optimizer_kernel_keys(m.opt, &d, "opencl", keys, 8, &count));
  int found = 0;
  for (int k = 0; k < count && k < 8; k++) found += strstr(keys[k], "adamw8/") && strstr(keys[k], "/b=64/");
  CHECK_MSG(found == 1, "no adamw8 key with b=64 among %d keys (first: %s)", count, count ? keys[0] : "");
  d.quant_block_policy = ADAMJIT_BLOCK_POLICY_ERROR;
  CHECK_OK(adamjit_optimizer_kernel_keys(m.opt, &d, "opencl", keys, 8, &count));
  found = 0;
  for (int k = 0; k < count && k < 8; k++) found += strstr(keys[k], "adamw8/") && strstr(keys[k], "/b=256/");
  CHECK_MSG(found == 1, "ERROR policy: no adamw8 key with the provisional b=256 among %d keys", count);
  adamjit_optimizer_destroy(m.opt);
}

/* ERROR on `backend`: the choice, provisional then final, and the run equal to FIXED runs
 * with the chosen blocks. Returns the ERROR run's snapshot in *out. */
static void test_error_run(adamjit_context* ctx, int amsgrad, snapshot* out) {
  adamjit_optimizer_config c = config_of(ADAMJIT_BLOCK_POLICY_ERROR, amsgrad);
  model e;
  model_init(&e, ctx, &c, error_model, ERROR_T, NULL);
  for (int i = 0; i < ERROR_T; i++) {
    adamjit_tensor_info info = info_of(e.opt, i);
    if (i == 3) {
      CHECK(info.quant_block_size == 1024 && info.quant_block_policy == ADAMJIT_BLOCK_POLICY_FIXED);
    } else if (i == 4) {
      CHECK(info.state_bits == 32 && info.quant_block_policy == ADAMJIT_BLOCK_POLICY_FIXED);
    } else {
      CHECK_MSG(info.quant_block_size == 256 && info.quant_block_policy == ADAMJIT_BLOCK_POLICY_ERROR && info.step == 0,
                "%s: block %lld policy %d before the first step", error_model[i].name, (long long)info.quant_block_size,
                info.quant_block_policy);
      CHECK_MSG(info.state_bytes == state_bytes_8bit(error_model[i].numel, 256, 2 + amsgrad), "%s: %llu state bytes",
                error_model[i].name, (unsigned long long)info.state_bytes);
    }
  }
  int lines = choice_lines;
  model_steps(&e, 1, STEPS);
  CHECK_MSG(choice_lines - lines == 3, "%d INFO lines for 3 measured tensors", choice_lines - lines);
  int blocks[ERROR_T] = {0};
  for (int i = 0; i < ERROR_T; i++) {
    adamjit_tensor_info info = info_of(e.opt, i);
    blocks[i] = (int)info.quant_block_size;
    if (info.state_bits == 8)
      CHECK(info.state_bytes == state_bytes_8bit(error_model[i].numel, info.quant_block_size, 2 + amsgrad));
  }
  printf("ERROR policy%s chose blocks: outliers %d, uniform %d, gauss %d\n", amsgrad ? " (amsgrad)" : "", blocks[0],
         blocks[1], blocks[2]);
  CHECK_MSG(blocks[0] <= 128, "outliers: block %d, expected a small one", blocks[0]);
  CHECK_MSG(blocks[1] == 4096, "uniform: block %d, expected 4096", blocks[1]);
  CHECK_MSG(blocks[2] >= 128 && blocks[2] <= 1024, "gauss: block %d, expected about 256", blocks[2]);
  CHECK(blocks[3] == 1024);
  CHECK(info_of(e.opt, 0).quant_block_policy == ADAMJIT_BLOCK_POLICY_ERROR);
  uint64_t total = 0, sum = 0;
  CHECK_OK(adamjit_optimizer_state_bytes(e.opt, &total));
  for (int i = 0; i < ERROR_T; i++) sum += info_of(e.opt, i).state_bytes;
  CHECK(total == sum);
  snapshot_take(&e, out, amsgrad);
  model_free(&e);

  /* FIXED with the chosen blocks from the start: bit for bit the same run. */
  adamjit_optimizer_config f = config_of(ADAMJIT_BLOCK_POLICY_FIXED, amsgrad);
  model m;
  model_init(&m, ctx, &f, error_model, ERROR_T, blocks);
  model_steps(&m, 1, STEPS);
  snapshot s;
  snapshot_take(&m, &s, amsgrad);
  CHECK(snapshot_same(out, &s, amsgrad ? "ERROR vs FIXED (amsgrad)" : "ERROR vs FIXED"));
  snapshot_free(&s);
  model_free(&m);
}

/* Checkpoints: saved after the first step, loaded into a fresh ERROR optimizer, the run goes
 * on identically; a FIXED tensor with another block is MISMATCH; a file saved before the
 * first step leaves the block to be measured. */
static void test_checkpoint(adamjit_context* ctx, const char* dir) {
  char path[512], path0[512];
  snprintf(path, sizeof path, "%s/after1.safetensors", dir);
  snprintf(path0, sizeof path0, "%s/before1.safetensors", dir);
  adamjit_optimizer_config c = config_of(ADAMJIT_BLOCK_POLICY_ERROR, 1);
  model a, b;
  model_init(&a, ctx, &c, error_model, ERROR_T, NULL);
  CHECK_OK(adamjit_optimizer_save(a.opt, path0));
  model_steps(&a, 1, 1);
  CHECK_OK(adamjit_optimizer_save(a.opt, path));

  model_init(&b, ctx, &c, error_model, ERROR_T, NULL);
  for (int i = 0; i < ERROR_T; i++) { /* params are the trainer's to restore */
    size_t pb = (size_t)error_model[i].numel * adamjit_dtype_size(error_model[i].param_dtype);
    REQUIRE_OK(adamjit_mem_copy(ctx, b.param[i], 0, a.param[i], 0, pb));
  }
  CHECK_OK(adamjit_optimizer_load(b.opt, path));
  CHECK(info_of(b.opt, 0).quant_block_size == info_of(a.opt, 0).quant_block_size);
  CHECK(info_of(b.opt, 1).quant_block_size == 4096);
  model_steps(&a, 2, STEPS);
  model_steps(&b, 2, STEPS);
  snapshot sa, sb;
  snapshot_take(&a, &sa, 1);
  snapshot_take(&b, &sb, 1);
  CHECK(snapshot_same(&sa, &sb, "checkpoint after step 1, then steps 2.."));
  snapshot_free(&sa);
  snapshot_free(&sb);
  model_free(&b);

  /* A FIXED tensor must match the file's block. */
  int other = info_of(a.opt, 0).quant_block_size == 64 ? 128 : 64;
  int blocks[ERROR_T] = {other};
  adamjit_optimizer_config f = config_of(ADAMJIT_BLOCK_POLICY_FIXED, 1);
  model_init(&b, ctx, &f, error_model, ERROR_T, blocks);
  CHECK_STATUS(adamjit_optimizer_load(b.opt, path), ADAMJIT_ERR_CHECKPOINT_MISMATCH);
  CHECK(strstr(adamjit_last_error(), "block_size") != NULL);
  CHECK(info_of(b.opt, 0).quant_block_size == other && info_of(b.opt, 0).step == 0);
  model_free(&b);

  /* Saved before any step: the provisional block loads and the first step still measures. */
  adamjit_optimizer_config c512 = c;
  c512.quant_block_size = 512;
  model_init(&b, ctx, &c512, error_model, ERROR_T, NULL);
  CHECK_OK(adamjit_optimizer_load(b.opt, path0));
  CHECK(info_of(b.opt, 1).quant_block_size == 256 && info_of(b.opt, 1).step == 0);
  model_steps(&b, 1, 1);
  CHECK(info_of(b.opt, 1).quant_block_size == 4096);
  model_free(&b);
  model_free(&a);
  remove(path);
  remove(path0);
}

static void test_bad_inputs(adamjit_context* ctx) {
  adamjit_optimizer* opt = (adamjit_optimizer*)&opt;
  static const struct { int policy; double overhead, error; const char* field; } bad[] = {
      {3, 1.0 / 64, 0.01, "quant_block_policy"},   {ADAMJIT_INHERIT, 1.0 / 64, 0.01, "quant_block_policy"},
      {1, 0.0, 0.01, "block_overhead_max"},        {1, -1.0, 0.01, "block_overhead_max"},
      {0, 1.5, 0.01, "block_overhead_max"},        {0, NAN, 0.01, "block_overhead_max"},
      {2, 1.0 / 64, 0.0, "block_error_max"},       {2, 1.0 / 64, NAN, "block_error_max"},
      {2, 1.0 / 64, 2.0, "block_error_max"},       {2, 1.0 / 64, INFINITY, "block_error_max"},
  };
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
    adamjit_optimizer_config c = config_of(bad[k].policy, 0);
    c.block_overhead_max = bad[k].overhead;
    c.block_error_max = bad[k].error;
    opt = (adamjit_optimizer*)&opt;
    CHECK_STATUS(adamjit_optimizer_create(ctx, &c, &opt), ADAMJIT_ERR_INVALID_VALUE);
    CHECK(opt == NULL);
    CHECK_MSG(strstr(adamjit_last_error(), bad[k].field) != NULL, "case %zu: message '%s' does not name %s", k,
              adamjit_last_error(), bad[k].field);
  }
  /* The limits themselves are valid. */
  adamjit_optimizer_config c = config_of(ADAMJIT_BLOCK_POLICY_ERROR, 0);
  c.block_overhead_max = 1.0;
  c.block_error_max = 1.0;
  REQUIRE_OK(adamjit_optimizer_create(ctx, &c, &opt));

  adamjit_mem p = NULL, g = NULL;
  REQUIRE_OK(adamjit_mem_alloc(ctx, 8192 * 4, &p));
  REQUIRE_OK(adamjit_mem_alloc(ctx, 8192 * 4, &g));
  adamjit_tensor_desc d;
  adamjit_tensor_desc_init_default(&d);
  d.param = p;
  d.grad = g;
  d.numel = 8192;
  int bad_policies[] = {3, -2, 100};
  for (int k = 0; k < 3; k++) {
    d.quant_block_policy = bad_policies[k];
    int index = -7, count = -1;
    CHECK_STATUS(adamjit_optimizer_add_tensor(opt, &d, &index), ADAMJIT_ERR_INVALID_VALUE);
    CHECK(index == -7);
    CHECK(strstr(adamjit_last_error(), "adamjit_tensor_desc.quant_block_policy") != NULL);
    CHECK_OK(adamjit_optimizer_tensor_count(opt, &count));
    CHECK(count == 0);
  }
  /* Bad in the kernel keys' description too. */
  char keys[4][ADAMJIT_KERNEL_KEY_MAX];
  int count = 0;
  CHECK_STATUS(adamjit_optimizer_kernel_keys(opt, &d, "opencl", keys, 4, &count), ADAMJIT_ERR_INVALID_VALUE);
  /* An older caller's descriptor (without quant_block_policy) inherits. */
  d.quant_block_policy = 12345;
  d.struct_size = offsetof(adamjit_tensor_desc, quant_block_policy);
  int index = -1;
  CHECK_OK(adamjit_optimizer_add_tensor(opt, &d, &index));
  CHECK(info_of(opt, index).quant_block_policy == ADAMJIT_BLOCK_POLICY_ERROR);
  adamjit_optimizer_destroy(opt);
  adamjit_mem_free(ctx, p);
  adamjit_mem_free(ctx, g);
}

/* ------------------------------------------------------------ main */

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "cpu";
  adamjit_backend backend = ADAMJIT_BACKEND_CPU;
  if (strcmp(mode, "opencl") == 0)
    backend = ADAMJIT_BACKEND_OPENCL;
  else if (strcmp(mode, "cuda") == 0)
    backend = ADAMJIT_BACKEND_CUDA;
  else if (strcmp(mode, "cpu") != 0) {
    fprintf(stderr, "usage: test_block_policy [cpu|opencl|cuda]\n");
    return 2;
  }
  char scratch[] = "block_policy_XXXXXX";
  if (pocl_scratch_begin(scratch)) return 1;
  if (adamjit_backend_probe(backend) != ADAMJIT_OK) {
    printf("skipped: %s\n", adamjit_last_error());
    pocl_scratch_end(scratch);
    return TEST_SKIP_CODE;
  }
  adamjit_context* cpu = make_context(ADAMJIT_BACKEND_CPU);
  if (backend == ADAMJIT_BACKEND_CPU) {
    test_defaults();
    test_memory(cpu);
    test_bad_inputs(cpu);
    for (int amsgrad = 0; amsgrad < 2; amsgrad++) {
      snapshot s;
      test_error_run(cpu, amsgrad, &s);
      snapshot_free(&s);
    }
    test_checkpoint(cpu, scratch);
  } else {
    /* The GPU backend against itself (ERROR vs FIXED, checkpoints) and against the CPU. */
    adamjit_context* gpu = make_context(backend);
    for (int amsgrad = 0; amsgrad < 2; amsgrad++) {
      snapshot sg, sc;
      test_error_run(gpu, amsgrad, &sg);
      test_error_run(cpu, amsgrad, &sc);
      CHECK(snapshot_same(&sg, &sc, amsgrad ? "GPU vs CPU (amsgrad)" : "GPU vs CPU"));
      snapshot_free(&sg);
      snapshot_free(&sc);
    }
    test_checkpoint(gpu, scratch);
    adamjit_context_destroy(gpu);
  }
  adamjit_context_destroy(cpu);
  pocl_scratch_end(scratch);
  return test_finish(backend == ADAMJIT_BACKEND_CPU ? "test_block_policy" : "test_block_policy (GPU)");
}
