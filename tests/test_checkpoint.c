/* Checkpoints on the CPU backend through the public API: an exact round trip (32- and 8-bit
 * state), every kind of refusal leaving the optimizer bitwise unchanged, and atomic saves. */
#define _GNU_SOURCE /* memmem */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "halfprec.h"
#include "harness.h"

#define MAXT 8

typedef struct tspec {
  int64_t numel;
  adamjit_dtype pdt, gdt;
  int group;
  int pct;
  const char* name;
  int block;      /* quant_block_size override; 0 inherits */
  int tensorwise; /* 1: block_wise = 0 */
} tspec;

/* Two groups (group 1 uses amsgrad), clipping on one tensor, fp16/bf16 params on two. */
static const tspec BASE[] = {
    {1000, ADAMJIT_F32, ADAMJIT_F32, 0, 100, "w0", 0, 0},
    {257, ADAMJIT_F16, ADAMJIT_F16, 1, 100, "w1_f16", 0, 0},
    {33, ADAMJIT_F32, ADAMJIT_F32, 0, 90, "w2_clip", 0, 0},
    {64, ADAMJIT_BF16, ADAMJIT_F32, 1, 100, "w3_bf16", 0, 0},
};
#define NBASE ((int)(sizeof BASE / sizeof BASE[0]))

typedef struct rig {
  adamjit_optimizer* opt;
  int n;
  tspec s[MAXT];
  adamjit_mem param[MAXT], grad[MAXT];
} rig;

static adamjit_context* ctx;
static char scratch[200]; /* short enough that scratch + "/" + a test file name fits 300 */

/* ------------------------------------------------------------ helpers */

/* Fills backend memory with scale * uniform(-1, 1) values in dtype dt. */
static void fill(adamjit_mem mem, int64_t numel, adamjit_dtype dt, uint64_t seed, float scale) {
  size_t bytes = (size_t)numel * adamjit_dtype_size(dt);
  void* host = malloc(bytes);
  test_rng r = {seed * 0x9E3779B97F4A7C15ULL + 1};
  for (int64_t j = 0; j < numel; j++) put_elem(dt, host, j, scale * (float)test_rng_uniform(&r));
  REQUIRE_OK(adamjit_mem_write(ctx, mem, 0, host, bytes));
  free(host);
}

static void rig_create_bits(rig* r, const tspec* s, int n, int ngroups, uint64_t seed, int optim_bits) {
  memset(r, 0, sizeof *r);
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.optim_bits = optim_bits;
  /* Values that print badly in decimal, to prove the exact round trip of the groups. */
  cfg.hparams.lr = 0.0012345678f;
  cfg.hparams.beta1 = nextafterf(0.9f, 1.0f);
  cfg.hparams.weight_decay = 0.05f;
  cfg.hparams.eps = 1.4e-45f; /* the smallest subnormal */
  REQUIRE_OK(adamjit_optimizer_create(ctx, &cfg, &r->opt));
  for (int g = 1; g < ngroups; g++) {
    adamjit_hparams hp = {.lr = 3e-3f, .beta1 = 0.8f, .beta2 = 0.99f, .eps = 1e-7f, .weight_decay = 0.0f,
                          .amsgrad = g == 1};
    int idx;
    REQUIRE_OK(adamjit_optimizer_add_group(r->opt, &hp, &idx));
  }
  r->n = n;
  for (int i = 0; i < n; i++) {
    r->s[i] = s[i];
    REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)s[i].numel * adamjit_dtype_size(s[i].pdt), &r->param[i]));
    REQUIRE_OK(adamjit_mem_alloc(ctx, (size_t)s[i].numel * adamjit_dtype_size(s[i].gdt), &r->grad[i]));
    fill(r->param[i], s[i].numel, s[i].pdt, seed * 100 + (uint64_t)i, 1.0f);
    adamjit_tensor_desc d;
    adamjit_tensor_desc_init_default(&d);
    d.param = r->param[i];
    d.grad = r->grad[i];
    d.numel = s[i].numel;
    d.param_dtype = s[i].pdt;
    d.grad_dtype = s[i].gdt;
    d.group = s[i].group;
    d.percentile_clipping = s[i].pct;
    d.name = s[i].name;
    if (s[i].block) d.quant_block_size = s[i].block;
    if (s[i].tensorwise) d.block_wise = 0;
    int idx;
    REQUIRE_OK(adamjit_optimizer_add_tensor(r->opt, &d, &idx));
  }
}

static void rig_create(rig* r, const tspec* s, int n, int ngroups, uint64_t seed) {
  rig_create_bits(r, s, n, ngroups, seed, 32);
}

static void rig_destroy(rig* r) {
  adamjit_optimizer_destroy(r->opt);
  for (int i = 0; i < r->n; i++) {
    adamjit_mem_free(ctx, r->param[i]);
    adamjit_mem_free(ctx, r->grad[i]);
  }
}

/* One step with gradients that depend only on `seed` (so two rigs can take the same step).
 * Tensor 2's gradients grow with the seed, so percentile clipping engages. */
static void rig_step(rig* r, uint64_t seed) {
  for (int i = 0; i < r->n; i++) {
    float scale = i == 2 ? 0.1f * (float)(1 + seed % 7) : 0.5f;
    fill(r->grad[i], r->s[i].numel, r->s[i].gdt, 7777 + seed * 10 + (uint64_t)i, scale);
  }
  REQUIRE_OK(adamjit_optimizer_step(r->opt, NULL));
}

static void copy_params(rig* dst, const rig* src) {
  for (int i = 0; i < src->n; i++) {
    size_t bytes = (size_t)src->s[i].numel * adamjit_dtype_size(src->s[i].pdt);
    void* host = malloc(bytes);
    REQUIRE_OK(adamjit_mem_read(ctx, host, src->param[i], 0, bytes));
    REQUIRE_OK(adamjit_mem_write(ctx, dst->param[i], 0, host, bytes));
    free(host);
  }
}

/* ----------------------------------------------------------- snapshots */

typedef struct snap {
  int n, ngroups;
  void* params[MAXT];
  float *m[MAXT], *v[MAXT], *vmax[MAXT];
  adamjit_tensor_info info[MAXT];
  adamjit_hparams groups[4];
} snap;

static void snap_take(rig* r, snap* s) {
  memset(s, 0, sizeof *s);
  s->n = r->n;
  REQUIRE_OK(adamjit_optimizer_group_count(r->opt, &s->ngroups));
  for (int g = 0; g < s->ngroups && g < 4; g++) REQUIRE_OK(adamjit_optimizer_get_group(r->opt, g, &s->groups[g]));
  for (int i = 0; i < r->n; i++) {
    int64_t n = r->s[i].numel;
    size_t pbytes = (size_t)n * adamjit_dtype_size(r->s[i].pdt);
    s->params[i] = malloc(pbytes);
    REQUIRE_OK(adamjit_mem_read(ctx, s->params[i], r->param[i], 0, pbytes));
    s->info[i].struct_size = sizeof s->info[i];
    REQUIRE_OK(adamjit_optimizer_tensor_info(r->opt, i, &s->info[i]));
    s->m[i] = malloc((size_t)n * sizeof(float));
    s->v[i] = malloc((size_t)n * sizeof(float));
    REQUIRE_OK(adamjit_optimizer_read_state(r->opt, i, ADAMJIT_STATE_EXP_AVG, s->m[i], n));
    REQUIRE_OK(adamjit_optimizer_read_state(r->opt, i, ADAMJIT_STATE_EXP_AVG_SQ, s->v[i], n));
    if (s->info[i].amsgrad) {
      s->vmax[i] = malloc((size_t)n * sizeof(float));
      REQUIRE_OK(adamjit_optimizer_read_state(r->opt, i, ADAMJIT_STATE_MAX_EXP_AVG_SQ, s->vmax[i], n));
    }
  }
}

static void snap_free(snap* s) {
  for (int i = 0; i < s->n; i++) {
    free(s->params[i]);
    free(s->m[i]);
    free(s->v[i]);
    free(s->vmax[i]);
  }
}

/* Bitwise equality; unless `what` is NULL, the first difference is named on stderr. */
static int snap_equal(const snap* a, const snap* b, const char* what) {
  const char* diff = NULL;
  int at = -1;
  if (a->n != b->n || a->ngroups != b->ngroups) diff = "tensor or group count";
  for (int g = 0; !diff && g < a->ngroups && g < 4; g++)
    if (memcmp(&a->groups[g], &b->groups[g], sizeof a->groups[g])) diff = "group hyperparameters", at = g;
  for (int i = 0; !diff && i < a->n; i++) {
    size_t n = (size_t)a->info[i].numel;
    at = i;
    if (memcmp(&a->info[i], &b->info[i], sizeof a->info[i])) diff = "tensor info (step, amsgrad, ...)";
    else if (memcmp(a->params[i], b->params[i], n * adamjit_dtype_size(a->info[i].param_dtype))) diff = "params";
    else if (memcmp(a->m[i], b->m[i], n * sizeof(float))) diff = "m";
    else if (memcmp(a->v[i], b->v[i], n * sizeof(float))) diff = "v";
    else if (a->vmax[i] && memcmp(a->vmax[i], b->vmax[i], n * sizeof(float))) diff = "vmax";
  }
  if (diff && what) fprintf(stderr, "%s: %s differ (index %d)\n", what, diff, at);
  return diff == NULL;
}

static int rigs_equal(rig* a, rig* b, const char* what) {
  snap x, y;
  snap_take(a, &x);
  snap_take(b, &y);
  int eq = snap_equal(&x, &y, what);
  snap_free(&x);
  snap_free(&y);
  return eq;
}

/* ------------------------------------------------------- file helpers */

static void write_all(const char* path, const void* buf, size_t n) {
  FILE* f = fopen(path, "wb");
  if (!f || fwrite(buf, 1, n, f) != n) {
    fprintf(stderr, "cannot write %s\n", path);
    exit(1);
  }
  fclose(f);
}

static void scratch_path(char* out, size_t size, const char* name) { snprintf(out, size, "%s/%s", scratch, name); }

/* Counts entries of `dir` whose name contains ".tmp." (leftover temporary files). */
static int count_temp_files(const char* dir) {
  DIR* d = opendir(dir);
  if (!d) return 0;
  int n = 0;
  for (struct dirent* e; (e = readdir(d));) n += strstr(e->d_name, ".tmp.") != NULL;
  closedir(d);
  return n;
}

static void remove_tree(const char* dir) {
  DIR* d = opendir(dir);
  if (!d) return;
  char p[512];
  for (struct dirent* e; (e = readdir(d));) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    struct stat sb;
    if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) {
      chmod(p, 0700);
      remove_tree(p);
    } else {
      unlink(p);
    }
  }
  closedir(d);
  rmdir(dir);
}

/* --------------------------------------------------------- refusals */

/* A load that must fail with `want`, a message naming the file (and `needle`), and no change. */
static void expect_refusal(rig* r, const char* path, adamjit_status want, const char* needle, const char* what) {
  snap before, after;
  snap_take(r, &before);
  adamjit_status st = adamjit_optimizer_load(r->opt, path);
  const char* msg = adamjit_context_last_error(ctx);
  printf("  %-34s -> %s: %s\n", what, adamjit_status_string(st), msg);
  CHECK_MSG(st == want, "%s: got %s, expected %s", what, adamjit_status_string(st), adamjit_status_string(want));
  CHECK_MSG(strstr(msg, path) != NULL, "%s: message does not name the file: %s", what, msg);
  if (needle) CHECK_MSG(strstr(msg, needle) != NULL, "%s: message lacks \"%s\": %s", what, needle, msg);
  snap_take(r, &after);
  CHECK_MSG(snap_equal(&before, &after, what), "%s: the optimizer changed", what);
  snap_free(&before);
  snap_free(&after);
}

/* Writes `good` modified by `edit` to a scratch file and expects the load to be refused. */
typedef struct variant {
  unsigned char* buf;
  size_t n;
  uint64_t header_len;
} variant;

static variant variant_of(const unsigned char* good, size_t n) {
  variant v = {malloc(n), n, 0};
  memcpy(v.buf, good, n);
  for (int k = 7; k >= 0; k--) v.header_len = (v.header_len << 8) | good[k];
  return v;
}

/* Replaces the first `from` after `after` (or from the start) inside the header with `to`. */
static int header_replace(variant* v, const char* after, const char* from, const char* to) {
  char* h = (char*)v->buf + 8;
  char* start = h;
  if (after) {
    start = memmem(h, v->header_len, after, strlen(after));
    if (!start) return 0;
  }
  char* at = memmem(start, v->header_len - (size_t)(start - h), from, strlen(from));
  if (!at || strlen(from) != strlen(to)) return 0;
  memcpy(at, to, strlen(to));
  return 1;
}

static void refuse_variant(rig* r, variant* v, const char* name, adamjit_status want, const char* needle) {
  char p[300];
  scratch_path(p, sizeof p, name);
  write_all(p, v->buf, v->n);
  expect_refusal(r, p, want, needle, name);
  free(v->buf);
}

static void test_corrupt_files(rig* b, const char* good_path) {
  size_t n;
  unsigned char* good = test_read_file(good_path, &n);
  variant v = variant_of(good, n);
  uint64_t N = v.header_len, data = n - 8 - N;
  free(v.buf);
  printf("checkpoint: %zu bytes, header %llu, data %llu\n", n, (unsigned long long)N, (unsigned long long)data);

  size_t cuts[] = {0, 4, 8 + N / 2, 8 + N + data / 2, n - 1};
  for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
    char name[64];
    snprintf(name, sizeof name, "trunc_%zu", cuts[k]);
    v = variant_of(good, n);
    v.n = cuts[k];
    refuse_variant(b, &v, name, ADAMJIT_ERR_CHECKPOINT_CORRUPT, NULL);
  }
  v = variant_of(good, n);
  v.buf[8 + N + data / 2] ^= 0x10;
  refuse_variant(b, &v, "data_byte_flip", ADAMJIT_ERR_CHECKPOINT_CORRUPT, "checksum");
  v = variant_of(good, n);
  v.buf[8 + N] ^= 0x01; /* the first byte of data: an I64 step counter */
  refuse_variant(b, &v, "step_byte_flip", ADAMJIT_ERR_CHECKPOINT_CORRUPT, "checksum");

  v = variant_of(good, n);
  v.buf[8] = '['; /* the header's opening brace */
  refuse_variant(b, &v, "header_flip_brace", ADAMJIT_ERR_CHECKPOINT_CORRUPT, "JSON");
  v = variant_of(good, n);
  CHECK(header_replace(&v, NULL, "adamjit-optimizer", "adamjit-optimizeR"));
  refuse_variant(b, &v, "header_flip_format", ADAMJIT_ERR_CHECKPOINT_CORRUPT, "format");
  v = variant_of(good, n);
  CHECK(header_replace(&v, "\"state.0.state1\"", "[1000]", "[2000]"));
  refuse_variant(b, &v, "header_flip_shape", ADAMJIT_ERR_CHECKPOINT_CORRUPT, "state.0.state1");
  v = variant_of(good, n);
  CHECK(header_replace(&v, "\"state.0.state1\"", "\"F32\"", "\"F16\""));
  refuse_variant(b, &v, "header_f32_to_f16", ADAMJIT_ERR_CHECKPOINT_CORRUPT, "state.0.state1");
  v = variant_of(good, n);
  CHECK(header_replace(&v, NULL, "numel\\\":1000", "numel\\\":1001"));
  refuse_variant(b, &v, "metadata_numel_edit", ADAMJIT_ERR_CHECKPOINT_CORRUPT, "metadata_checksum");
  v = variant_of(good, n);
  CHECK(header_replace(&v, NULL, "0.0012345678", "0.0012345679")); /* one digit of group 0's lr */
  refuse_variant(b, &v, "metadata_lr_digit", ADAMJIT_ERR_CHECKPOINT_CORRUPT, "metadata_checksum");
  v = variant_of(good, n);
  CHECK(header_replace(&v, NULL, "xxh3-64:", "xxh3-65:"));
  refuse_variant(b, &v, "checksum_tag_edit", ADAMJIT_ERR_CHECKPOINT_CORRUPT, "checksum");
  v = variant_of(good, n);
  CHECK(header_replace(&v, "\"state.1.step\"", "\"I64\"", "\"U64\""));
  refuse_variant(b, &v, "step_dtype_edit", ADAMJIT_ERR_CHECKPOINT_CORRUPT, "state.1.step");

  uint64_t lens[] = {n, (uint64_t)1 << 40, 1};
  for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
    char name[64];
    snprintf(name, sizeof name, "header_len_%llu", (unsigned long long)lens[k]);
    v = variant_of(good, n);
    for (int b8 = 0; b8 < 8; b8++) v.buf[b8] = (unsigned char)(lens[k] >> (8 * b8));
    refuse_variant(b, &v, name, ADAMJIT_ERR_CHECKPOINT_CORRUPT, "header length");
  }
  /* Data appended after the last tensor: the entries no longer cover the file. */
  v = variant_of(good, n);
  v.buf = realloc(v.buf, n + 4);
  memset(v.buf + n, 0, 4);
  v.n = n + 4;
  refuse_variant(b, &v, "trailing_bytes", ADAMJIT_ERR_CHECKPOINT_CORRUPT, NULL);
  free(good);

  char missing[300];
  scratch_path(missing, sizeof missing, "does_not_exist.safetensors");
  expect_refusal(b, missing, ADAMJIT_ERR_IO, NULL, "nonexistent file");
  expect_refusal(b, scratch, ADAMJIT_ERR_IO, "directory", "directory as path");
}

/* Optimizers registered differently from the checkpoint. */
static void test_mismatches(const char* good_path) {
  tspec s[MAXT];
  rig r;

  memcpy(s, BASE, sizeof BASE);
  s[0].numel = 999;
  rig_create(&r, s, NBASE, 2, 5);
  rig_step(&r, 1);
  expect_refusal(&r, good_path, ADAMJIT_ERR_CHECKPOINT_MISMATCH, "numel", "wrong numel");
  rig_destroy(&r);

  memcpy(s, BASE, sizeof BASE);
  s[1].pdt = ADAMJIT_F32;
  rig_create(&r, s, NBASE, 2, 5);
  expect_refusal(&r, good_path, ADAMJIT_ERR_CHECKPOINT_MISMATCH, "param_dtype", "wrong param dtype");
  rig_destroy(&r);

  memcpy(s, BASE, sizeof BASE);
  s[3].gdt = ADAMJIT_BF16;
  rig_create(&r, s, NBASE, 2, 5);
  expect_refusal(&r, good_path, ADAMJIT_ERR_CHECKPOINT_MISMATCH, "grad_dtype", "wrong grad dtype");
  rig_destroy(&r);

  memcpy(s, BASE, sizeof BASE);
  s[2].pct = 80;
  rig_create(&r, s, NBASE, 2, 5);
  expect_refusal(&r, good_path, ADAMJIT_ERR_CHECKPOINT_MISMATCH, "percentile", "wrong percentile");
  rig_destroy(&r);

  memcpy(s, BASE, sizeof BASE);
  s[2].group = 1;
  rig_create(&r, s, NBASE, 2, 5);
  expect_refusal(&r, good_path, ADAMJIT_ERR_CHECKPOINT_MISMATCH, "group", "wrong group of a tensor");
  rig_destroy(&r);

  memcpy(s, BASE, sizeof BASE);
  rig_create(&r, s, NBASE - 1, 2, 5);
  rig_step(&r, 1);
  expect_refusal(&r, good_path, ADAMJIT_ERR_CHECKPOINT_MISMATCH, "tensors", "too few tensors");
  rig_destroy(&r);

  memcpy(s, BASE, sizeof BASE);
  s[NBASE] = BASE[0];
  rig_create(&r, s, NBASE + 1, 2, 5);
  expect_refusal(&r, good_path, ADAMJIT_ERR_CHECKPOINT_MISMATCH, "tensors", "too many tensors");
  rig_destroy(&r);

  memcpy(s, BASE, sizeof BASE);
  rig_create(&r, s, NBASE, 3, 5);
  expect_refusal(&r, good_path, ADAMJIT_ERR_CHECKPOINT_MISMATCH, "groups", "wrong group count");
  rig_destroy(&r);
}

/* ------------------------------------------------------------ 8-bit state */

/* An 8-bit optimizer (min_8bit_size 4096): tensors 0-3 store codes and absmax, tensor 4 falls
 * back to fp32 state. Tensor 2 is clipped as in BASE and keeps one absmax for the whole
 * tensor; group 1 uses amsgrad (state3/absmax3). */
static const tspec Q8[] = {
    {5000, ADAMJIT_F32, ADAMJIT_F32, 0, 100, "q_ragged", 0, 0},          /* 19 blocks of 256 + 136 */
    {4100, ADAMJIT_F16, ADAMJIT_F16, 0, 100, "q_f16_b64", 64, 0},        /* 64 blocks of 64 + 4 */
    {4500, ADAMJIT_BF16, ADAMJIT_F32, 0, 90, "q_bf16_tensorwise", 0, 1}, /* one absmax */
    {6000, ADAMJIT_F32, ADAMJIT_F32, 1, 100, "q_amsgrad", 0, 0},         /* 23 blocks + 112 */
    {300, ADAMJIT_F32, ADAMJIT_F32, 0, 100, "small_fp32", 0, 0},         /* below min_8bit_size */
};
#define NQ8 ((int)(sizeof Q8 / sizeof Q8[0]))
static const int Q8_BITS[NQ8] = {8, 8, 8, 8, 32};
static const int64_t Q8_BLOCK[NQ8] = {256, 64, 4500, 256, 0}; /* tensor_info's quant_block_size */

/* One entry of a checkpoint image, found in its header text. */
typedef struct span {
  int found;
  char dtype[8];
  int64_t count; /* the one dimension */
  uint64_t begin, end;
} span;

static uint64_t header_len_of(const unsigned char* file) {
  uint64_t n = 0;
  for (int k = 7; k >= 0; k--) n = (n << 8) | file[k];
  return n;
}

static span entry_span(const unsigned char* file, const char* key) {
  span sp = {0};
  uint64_t hl = header_len_of(file);
  char pat[80];
  snprintf(pat, sizeof pat, "\"%s\":{", key);
  const char* at = memmem(file + 8, hl, pat, strlen(pat));
  if (!at) return sp;
  unsigned long long c, b, e;
  if (sscanf(at + strlen(pat), "\"dtype\":\"%7[^\"]\",\"shape\":[%llu],\"data_offsets\":[%llu,%llu]}", sp.dtype,
             &c, &b, &e) == 4) {
    sp.found = 1;
    sp.count = (int64_t)c;
    sp.begin = b;
    sp.end = e;
  }
  return sp;
}

static int span_is(const unsigned char* file, int i, const char* suffix, const char* dtype, int64_t count) {
  char key[48];
  snprintf(key, sizeof key, "state.%d.%s", i, suffix);
  span sp = entry_span(file, key);
  int ok = sp.found && strcmp(sp.dtype, dtype) == 0 && sp.count == count;
  if (!ok)
    fprintf(stderr, "%s: found %d, dtype %s, count %lld; expected %s [%lld]\n", key, sp.found, sp.dtype,
            (long long)sp.count, dtype, (long long)count);
  return ok;
}

static const unsigned char* span_data(const unsigned char* file, span sp) {
  return file + 8 + header_len_of(file) + sp.begin;
}

/* The file's maps are the library's, and what read_state returns for an 8-bit tensor is
 * qmap[code] * absmax[block] computed from the file's own bytes: the file holds the state. */
static void check_decoded(const unsigned char* file, rig* r, int i) {
  static const char* code_key[3] = {"state1", "state2", "state3"};
  static const char* absmax_key[3] = {"absmax1", "absmax2", "absmax3"};
  float builtin[2][256];
  REQUIRE_OK(adamjit_qmap_values(ADAMJIT_QMAP_SIGNED, builtin[0], 256));
  REQUIRE_OK(adamjit_qmap_values(ADAMJIT_QMAP_UNSIGNED, builtin[1], 256));
  char key[48];
  for (int q = 0; q < 2; q++) {
    snprintf(key, sizeof key, "state.%d.qmap%d", i, q + 1);
    span sp = entry_span(file, key);
    CHECK_MSG(sp.found && memcmp(span_data(file, sp), builtin[q], sizeof builtin[q]) == 0,
              "%s is not the built-in map", key);
  }
  adamjit_tensor_info info = {.struct_size = sizeof info};
  REQUIRE_OK(adamjit_optimizer_tensor_info(r->opt, i, &info));
  int64_t n = info.numel, block = info.quant_block_size;
  float* state = malloc((size_t)n * sizeof *state);
  for (int k = 0; k < (info.amsgrad ? 3 : 2); k++) {
    REQUIRE_OK(adamjit_optimizer_read_state(r->opt, i, (adamjit_state_kind)k, state, n));
    snprintf(key, sizeof key, "state.%d.%s", i, code_key[k]);
    span cs = entry_span(file, key);
    snprintf(key, sizeof key, "state.%d.%s", i, absmax_key[k]);
    span as = entry_span(file, key);
    if (!cs.found || !as.found) {
      CHECK_MSG(0, "tensor %d lacks %s or %s", i, code_key[k], absmax_key[k]);
      continue;
    }
    const unsigned char* codes = span_data(file, cs);
    const unsigned char* absmax = span_data(file, as);
    int64_t bad = -1, nonzero = 0;
    for (int64_t j = 0; j < n && bad < 0; j++) {
      float a;
      memcpy(&a, absmax + (j / block) * 4, 4);
      float want = builtin[k == 0 ? 0 : 1][codes[j]] * a;
      if (memcmp(&want, &state[j], sizeof want) != 0) bad = j;
      nonzero += state[j] != 0.0f;
    }
    CHECK_MSG(bad < 0, "tensor %d %s[%lld] does not decode to read_state's value", i, code_key[k], (long long)bad);
    CHECK_MSG(nonzero > n / 2, "tensor %d %s is mostly zero (%lld of %lld): the test proves little", i, code_key[k],
              (long long)nonzero, (long long)n);
  }
  free(state);
}

/* Rewrites the data checksum of a file image after an edit of its data. */
static void fix_checksum(variant* v) {
  static const char tag[] = "\"checksum\":\"xxh3-64:";
  uint64_t h = XXH3_64bits(v->buf + 8 + v->header_len, v->n - 8 - v->header_len);
  char hex[17];
  snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
  unsigned char* at = memmem(v->buf + 8, v->header_len, tag, strlen(tag));
  CHECK(at != NULL);
  if (at) memcpy(at + strlen(tag), hex, 16);
}

static void test_8bit_corrupt(rig* b, const char* good_path) {
  size_t n;
  unsigned char* good = test_read_file(good_path, &n);
  span codes = entry_span(good, "state.0.state1");
  span absmax = entry_span(good, "state.3.absmax3");
  span q1 = entry_span(good, "state.0.qmap1");
  span q2 = entry_span(good, "state.3.qmap2");
  CHECK(codes.found && absmax.found && q1.found && q2.found);
  uint64_t base = 8 + header_len_of(good);

  variant v = variant_of(good, n);
  v.buf[base + codes.begin + 4321] ^= 0x01;
  refuse_variant(b, &v, "q8_code_byte_flip", ADAMJIT_ERR_CHECKPOINT_CORRUPT, "checksum");
  v = variant_of(good, n);
  v.buf[base + absmax.begin + 6] ^= 0x40; /* absmax3[1] of the amsgrad tensor */
  refuse_variant(b, &v, "q8_absmax_byte_flip", ADAMJIT_ERR_CHECKPOINT_CORRUPT, "checksum");
  v = variant_of(good, n);
  v.buf[base + q1.begin + 100 * 4] ^= 0x01;
  refuse_variant(b, &v, "q8_qmap_byte_flip", ADAMJIT_ERR_CHECKPOINT_CORRUPT, "checksum");

  /* The checksum helper reproduces the saved checksum, so the edits below are intact files. */
  v = variant_of(good, n);
  fix_checksum(&v);
  CHECK_MSG(memcmp(v.buf, good, n) == 0, "fix_checksum changed an unedited file");
  free(v.buf);

  /* A map one ulp off, and one that differs only in the sign of a zero: other maps. */
  v = variant_of(good, n);
  float x;
  memcpy(&x, v.buf + base + q1.begin + 200 * 4, 4);
  x = nextafterf(x, 2.0f);
  memcpy(v.buf + base + q1.begin + 200 * 4, &x, 4);
  fix_checksum(&v);
  refuse_variant(b, &v, "q8_qmap1_one_ulp", ADAMJIT_ERR_CHECKPOINT_MISMATCH, "different quantization map");
  v = variant_of(good, n);
  memcpy(&x, v.buf + base + q2.begin, 4);
  CHECK(x == 0.0f);
  x = -0.0f;
  memcpy(v.buf + base + q2.begin, &x, 4);
  fix_checksum(&v);
  refuse_variant(b, &v, "q8_qmap2_negative_zero", ADAMJIT_ERR_CHECKPOINT_MISMATCH, "different quantization map");

  /* Header edits: codes with another dtype, a running maximum without its absmax. */
  v = variant_of(good, n);
  CHECK(header_replace(&v, "\"state.0.state1\"", "\"U8\"", "\"I8\""));
  refuse_variant(b, &v, "q8_codes_as_i8", ADAMJIT_ERR_CHECKPOINT_CORRUPT, "state.0.state1");
  v = variant_of(good, n);
  CHECK(header_replace(&v, NULL, "\"state.3.absmax3\"", "\"state.3.absmax9\""));
  refuse_variant(b, &v, "q8_absmax3_renamed", ADAMJIT_ERR_CHECKPOINT_CORRUPT, "state.3.absmax3");
  v = variant_of(good, n);
  CHECK(header_replace(&v, NULL, "\"state.3.state3\"", "\"state.3.state9\""));
  refuse_variant(b, &v, "q8_state3_renamed", ADAMJIT_ERR_CHECKPOINT_CORRUPT, "\"state.3.state3\" is missing");
  free(good);
}

/* 8-bit optimizers whose storage differs from the checkpoint's. */
static void test_8bit_mismatches(const char* good_path) {
  tspec s[MAXT];
  rig r;

  memcpy(s, Q8, sizeof Q8);
  s[0].block = 128;
  rig_create_bits(&r, s, NQ8, 2, 5, 8);
  expect_refusal(&r, good_path, ADAMJIT_ERR_CHECKPOINT_MISMATCH, "block_size", "q8: other block size");
  rig_destroy(&r);

  memcpy(s, Q8, sizeof Q8);
  s[2].tensorwise = 0;
  rig_create_bits(&r, s, NQ8, 2, 5, 8);
  rig_step(&r, 1);
  expect_refusal(&r, good_path, ADAMJIT_ERR_CHECKPOINT_MISMATCH, "block_wise", "q8: block-wise, file tensor-wise");
  rig_destroy(&r);

  memcpy(s, Q8, sizeof Q8);
  s[0].tensorwise = 1;
  rig_create_bits(&r, s, NQ8, 2, 5, 8);
  expect_refusal(&r, good_path, ADAMJIT_ERR_CHECKPOINT_MISMATCH, "block_wise", "q8: tensor-wise, file block-wise");
  rig_destroy(&r);

  memcpy(s, Q8, sizeof Q8);
  rig_create_bits(&r, s, NQ8, 2, 5, 32);
  rig_step(&r, 1);
  expect_refusal(&r, good_path, ADAMJIT_ERR_CHECKPOINT_MISMATCH, "state_bits", "q8: 32-bit optimizer");
  rig_destroy(&r);

  /* The other way: an 8-bit optimizer and the 32-bit file of the same tensors. */
  rig_create_bits(&r, Q8, NQ8, 2, 5, 32);
  rig_step(&r, 1);
  char p32[300];
  scratch_path(p32, sizeof p32, "q8_as_32bit.safetensors");
  CHECK_OK(adamjit_optimizer_save(r.opt, p32));
  rig_destroy(&r);
  rig_create_bits(&r, Q8, NQ8, 2, 5, 8);
  expect_refusal(&r, p32, ADAMJIT_ERR_CHECKPOINT_MISMATCH, "state_bits", "q8: 32-bit file");
  rig_destroy(&r);

  /* Without blocks the block size stores nothing: a tensor-wise tensor configured with
   * another one loads the file. */
  memcpy(s, Q8, sizeof Q8);
  s[2].block = 1024;
  rig_create_bits(&r, s, NQ8, 2, 5, 8);
  CHECK_OK(adamjit_optimizer_load(r.opt, good_path));
  rig_step(&r, 1);
  rig_destroy(&r);
}

/* The 8-bit round trip: bit-exact codes and absmax (the two files are equal), equal
 * dequantized state, and two optimizers that step in lockstep afterwards. */
static void test_8bit(void) {
  char path[300], p2[300];
  scratch_path(path, sizeof path, "q8.safetensors");
  scratch_path(p2, sizeof p2, "q8_b.safetensors");
  rig a, b;
  rig_create_bits(&a, Q8, NQ8, 2, 21, 8);
  adamjit_tensor_info info = {.struct_size = sizeof info};
  for (int i = 0; i < NQ8; i++) {
    REQUIRE_OK(adamjit_optimizer_tensor_info(a.opt, i, &info));
    CHECK_MSG(info.state_bits == Q8_BITS[i] && info.quant_block_size == Q8_BLOCK[i],
              "tensor %d: state_bits %d, block %lld", i, info.state_bits, (long long)info.quant_block_size);
  }
  for (uint64_t s = 1; s <= 5; s++) rig_step(&a, s);
  CHECK_OK(adamjit_optimizer_save(a.opt, path));

  size_t n = 0;
  unsigned char* f = test_read_file(path, &n);
  REQUIRE_OK(f ? ADAMJIT_OK : ADAMJIT_ERR_IO);
  for (int i = 0; i < NQ8 - 1; i++) {
    int64_t numel = Q8[i].numel, blocks = (numel + Q8_BLOCK[i] - 1) / Q8_BLOCK[i];
    CHECK(span_is(f, i, "state1", "U8", numel) && span_is(f, i, "state2", "U8", numel));
    CHECK(span_is(f, i, "absmax1", "F32", blocks) && span_is(f, i, "absmax2", "F32", blocks));
    CHECK(span_is(f, i, "qmap1", "F32", 256) && span_is(f, i, "qmap2", "F32", 256));
    char k3[48];
    snprintf(k3, sizeof k3, "state.%d.state3", i);
    CHECK((i == 3) == entry_span(f, k3).found); /* only the amsgrad group keeps a running maximum */
    if (i == 3) CHECK(span_is(f, i, "state3", "U8", numel) && span_is(f, i, "absmax3", "F32", blocks));
    check_decoded(f, &a, i);
  }
  CHECK(span_is(f, 2, "gnorm_vec", "F32", 100));
  CHECK(!entry_span(f, "state.0.state3").found && !entry_span(f, "state.0.absmax3").found);
  CHECK(span_is(f, 4, "state1", "F32", 300) && !entry_span(f, "state.4.absmax1").found &&
        !entry_span(f, "state.4.qmap1").found);
  free(f);

  /* B: other params, a step of its own, and amsgrad in group 0, so tensor 0 holds codes and
   * absmax3 of a running maximum that the checkpoint (without one) must remove. */
  rig_create_bits(&b, Q8, NQ8, 2, 22, 8);
  adamjit_hparams hp;
  REQUIRE_OK(adamjit_optimizer_get_group(b.opt, 0, &hp));
  hp.amsgrad = 1;
  REQUIRE_OK(adamjit_optimizer_set_group(b.opt, 0, &hp));
  rig_step(&b, 99);
  REQUIRE_OK(adamjit_optimizer_tensor_info(b.opt, 0, &info));
  CHECK(info.amsgrad == 1);
  CHECK(!rigs_equal(&a, &b, NULL));

  CHECK_OK(adamjit_optimizer_load(b.opt, path));
  copy_params(&b, &a);
  CHECK_MSG(rigs_equal(&a, &b, "q8 right after load"), "8-bit state after load differs from the saved optimizer");
  REQUIRE_OK(adamjit_optimizer_tensor_info(b.opt, 0, &info));
  CHECK(info.step == 5 && info.amsgrad == 0 && info.state_bits == 8);
  REQUIRE_OK(adamjit_optimizer_tensor_info(b.opt, 3, &info));
  CHECK(info.step == 5 && info.amsgrad == 1);
  for (uint64_t s = 6; s <= 8; s++) {
    rig_step(&a, s);
    rig_step(&b, s);
  }
  CHECK_MSG(rigs_equal(&a, &b, "q8 3 steps after load"), "8-bit A and B diverged after the load");

  /* Codes and absmax are bitwise the same: the same state saves to the same bytes. */
  CHECK_OK(adamjit_optimizer_save(b.opt, p2));
  CHECK_OK(adamjit_optimizer_save(a.opt, path));
  size_t n1 = 0, n2 = 0;
  unsigned char* f1 = test_read_file(path, &n1);
  unsigned char* f2 = test_read_file(p2, &n2);
  CHECK_MSG(f1 && f2 && n1 == n2 && memcmp(f1, f2, n1) == 0, "the 8-bit state of A and B saves differently");
  free(f1);
  free(f2);

  test_8bit_corrupt(&b, path);
  test_8bit_mismatches(path);
  for (uint64_t s = 9; s <= 10; s++) {
    rig_step(&a, s);
    rig_step(&b, s);
  }
  CHECK_MSG(rigs_equal(&a, &b, "q8 after the refusals"), "a refused load changed the 8-bit B");
  /* amsgrad turned on after the load starts tensor 0's running maximum (codes and absmax3)
   * from zero in both, so the load must have left B without a stale one. */
  adamjit_hparams hp0;
  REQUIRE_OK(adamjit_optimizer_get_group(a.opt, 0, &hp0));
  hp0.amsgrad = 1;
  REQUIRE_OK(adamjit_optimizer_set_group(a.opt, 0, &hp0));
  REQUIRE_OK(adamjit_optimizer_set_group(b.opt, 0, &hp0));
  for (uint64_t s = 11; s <= 12; s++) {
    rig_step(&a, s);
    rig_step(&b, s);
  }
  REQUIRE_OK(adamjit_optimizer_tensor_info(b.opt, 0, &info));
  CHECK(info.amsgrad == 1);
  CHECK_MSG(rigs_equal(&a, &b, "q8 with amsgrad turned on"), "8-bit A and B diverged once amsgrad was turned on");
  rig_destroy(&a);
  rig_destroy(&b);
}

/* ---------------------------------------------------------- the tests */

/* Saves A, loads into B (with different state of its own), and checks they then run in
 * lockstep. B ends up as the target of the refusal tests. */
static void test_round_trip(rig* a, rig* b, const char* path) {
  for (uint64_t s = 1; s <= 5; s++) rig_step(a, s);
  CHECK_OK(adamjit_optimizer_save(a->opt, path));

  /* B: other params, a step of its own, and amsgrad in group 0 so that tensor 0 holds a
   * running maximum that the checkpoint (without one) must remove. */
  rig_create(b, BASE, NBASE, 2, 2);
  adamjit_hparams hp;
  REQUIRE_OK(adamjit_optimizer_get_group(b->opt, 0, &hp));
  hp.amsgrad = 1;
  REQUIRE_OK(adamjit_optimizer_set_group(b->opt, 0, &hp));
  rig_step(b, 99);
  CHECK(!rigs_equal(a, b, NULL)); /* B really has other state before the load */

  CHECK_OK(adamjit_optimizer_load(b->opt, path));
  copy_params(b, a); /* params live in the model checkpoint, not the optimizer's */
  CHECK_MSG(rigs_equal(a, b, "right after load"), "state after load differs from the saved optimizer");
  adamjit_tensor_info info = {.struct_size = sizeof info};
  REQUIRE_OK(adamjit_optimizer_tensor_info(b->opt, 0, &info));
  CHECK(info.step == 5 && info.amsgrad == 0);
  REQUIRE_OK(adamjit_optimizer_tensor_info(b->opt, 1, &info));
  CHECK(info.step == 5 && info.amsgrad == 1);

  for (uint64_t s = 6; s <= 8; s++) {
    rig_step(a, s);
    rig_step(b, s);
  }
  CHECK_MSG(rigs_equal(a, b, "3 steps after load"), "A and B diverged after the load");

  /* The same state saves to the same bytes. */
  char p2[300];
  scratch_path(p2, sizeof p2, "b.safetensors");
  CHECK_OK(adamjit_optimizer_save(b->opt, p2));
  CHECK_OK(adamjit_optimizer_save(a->opt, path));
  size_t n1 = 0, n2 = 0;
  unsigned char* f1 = test_read_file(path, &n1);
  unsigned char* f2 = test_read_file(p2, &n2);
  CHECK(f1 && f2 && n1 == n2 && memcmp(f1, f2, n1) == 0);
  free(f1);
  free(f2);
}

static void test_null_arguments(rig* b, const char* path) {
  CHECK_STATUS(adamjit_optimizer_load(NULL, path), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK(adamjit_last_error()[0] != '\0');
  CHECK_STATUS(adamjit_optimizer_save(NULL, path), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK(adamjit_last_error()[0] != '\0');
  CHECK_STATUS(adamjit_optimizer_load(b->opt, NULL), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK(adamjit_context_last_error(ctx)[0] != '\0');
  CHECK_STATUS(adamjit_optimizer_save(b->opt, NULL), ADAMJIT_ERR_NULL_ARGUMENT);
}

/* Saves that cannot complete fail with IO and leave no temporary file behind. */
static void test_save_failures(rig* a) {
  char p[300];
  scratch_path(p, sizeof p, "no_such_dir/ckpt.safetensors");
  CHECK_STATUS(adamjit_optimizer_save(a->opt, p), ADAMJIT_ERR_IO);
  CHECK(strstr(adamjit_context_last_error(ctx), "no_such_dir") != NULL);

  /* The target is a directory: the temporary file is written, then the rename fails. */
  scratch_path(p, sizeof p, "a_directory");
  CHECK(mkdir(p, 0700) == 0);
  CHECK_STATUS(adamjit_optimizer_save(a->opt, p), ADAMJIT_ERR_IO);
  printf("  save over a directory -> %s\n", adamjit_context_last_error(ctx));
  CHECK_MSG(count_temp_files(scratch) == 0, "a temporary file was left in %s", scratch);
}

/* Saving over a file replaces it; a failed save leaves it intact. */
static void test_atomic_replace(rig* a) {
  char p[300];
  scratch_path(p, sizeof p, "replace.safetensors");
  CHECK_OK(adamjit_optimizer_save(a->opt, p));
  CHECK(chmod(p, 0640) == 0);
  size_t n_old = 0;
  unsigned char* old = test_read_file(p, &n_old);
  rig_step(a, 42);
  CHECK_OK(adamjit_optimizer_save(a->opt, p));
  adamjit_tensor_info saved_info = {.struct_size = sizeof saved_info};
  REQUIRE_OK(adamjit_optimizer_tensor_info(a->opt, 2, &saved_info));
  struct stat sb;
  CHECK(stat(p, &sb) == 0 && (sb.st_mode & 0777) == 0640); /* the replaced file's mode is kept */
  size_t n_new = 0;
  unsigned char* cur = test_read_file(p, &n_new);
  CHECK(cur && n_new == n_old && memcmp(cur, old, n_old) != 0);
  free(old);

  /* A file-size limit makes the write fail part way (this works even as root). */
  rig_step(a, 43);
  struct rlimit saved, lim;
  getrlimit(RLIMIT_FSIZE, &saved);
  lim = saved;
  lim.rlim_cur = 4096;
  signal(SIGXFSZ, SIG_IGN);
  CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
  CHECK_STATUS(adamjit_optimizer_save(a->opt, p), ADAMJIT_ERR_IO);
  setrlimit(RLIMIT_FSIZE, &saved);
  printf("  save past a file-size limit -> %s\n", adamjit_context_last_error(ctx));
  size_t n_after = 0;
  unsigned char* after = test_read_file(p, &n_after);
  CHECK_MSG(after && n_after == n_new && memcmp(after, cur, n_new) == 0, "a failed save changed the existing file");
  CHECK_MSG(count_temp_files(scratch) == 0, "a failed save left a temporary file");
  free(after);
  free(cur);

  /* And the replaced file loads: the state of the second save. */
  rig c;
  rig_create(&c, BASE, NBASE, 2, 3);
  CHECK_OK(adamjit_optimizer_load(c.opt, p));
  adamjit_tensor_info info = {.struct_size = sizeof info};
  REQUIRE_OK(adamjit_optimizer_tensor_info(c.opt, 2, &info));
  CHECK(info.step == saved_info.step && info.step > 1); /* the second save's, not the first's */
  rig_destroy(&c);

  /* A read-only directory refuses the temporary file (meaningless as root, who may write). */
  if (geteuid() != 0) {
    char dir[256];
    scratch_path(dir, sizeof dir, "readonly");
    CHECK(mkdir(dir, 0700) == 0);
    snprintf(p, sizeof p, "%s/ckpt.safetensors", dir);
    CHECK_OK(adamjit_optimizer_save(a->opt, p));
    CHECK(chmod(dir, 0500) == 0);
    CHECK_STATUS(adamjit_optimizer_save(a->opt, p), ADAMJIT_ERR_IO);
    CHECK(chmod(dir, 0700) == 0);
  }
}

/* State larger than the 16 MiB staging chunk, so entries straddle chunk boundaries both
 * when saving and when loading (about 40 MB of file). */
static void test_large_state(void) {
  const tspec big[] = {
      {3, ADAMJIT_F32, ADAMJIT_F32, 0, 90, "small_clip", 0, 0},
      {4500001, ADAMJIT_F32, ADAMJIT_F32, 1, 100, "big_amsgrad", 0, 0},
      {5, ADAMJIT_BF16, ADAMJIT_BF16, 0, 100, "tail", 0, 0},
  };
  rig x, y;
  rig_create(&x, big, 3, 2, 11);
  rig_create(&y, big, 3, 2, 12);
  rig_step(&x, 1);
  rig_step(&x, 2);
  char p[300];
  scratch_path(p, sizeof p, "large.safetensors");
  CHECK_OK(adamjit_optimizer_save(x.opt, p));
  CHECK_OK(adamjit_optimizer_load(y.opt, p));
  copy_params(&y, &x);
  CHECK_MSG(rigs_equal(&x, &y, "large state after load"), "large state did not round-trip");
  unlink(p);
  rig_destroy(&x);
  rig_destroy(&y);
}

static void test_empty_optimizer(void) {
  rig e, f;
  rig_create(&e, BASE, 0, 1, 1);
  rig_create(&f, BASE, 0, 1, 1);
  adamjit_hparams hp;
  REQUIRE_OK(adamjit_optimizer_get_group(e.opt, 0, &hp));
  hp.lr = 0.5f;
  REQUIRE_OK(adamjit_optimizer_set_group(e.opt, 0, &hp));
  char p[300];
  scratch_path(p, sizeof p, "empty.safetensors");
  CHECK_OK(adamjit_optimizer_save(e.opt, p));
  CHECK_OK(adamjit_optimizer_load(f.opt, p));
  adamjit_hparams got;
  REQUIRE_OK(adamjit_optimizer_get_group(f.opt, 0, &got));
  CHECK(memcmp(&got, &hp, sizeof hp) == 0);
  rig_destroy(&e);
  rig_destroy(&f);
}

int main(void) {
  ctx = test_cpu_context();
  snprintf(scratch, sizeof scratch, "test_checkpoint.XXXXXX");
  if (!mkdtemp(scratch)) {
    perror("mkdtemp");
    return 1;
  }
  char path[300];
  scratch_path(path, sizeof path, "a.safetensors");

  rig a, b;
  rig_create(&a, BASE, NBASE, 2, 1);
  test_round_trip(&a, &b, path);
  test_null_arguments(&b, path);
  test_corrupt_files(&b, path);
  test_mismatches(path);

  /* B's hidden state (the clipping history) survived the refusals: still in lockstep. */
  for (uint64_t s = 9; s <= 10; s++) {
    rig_step(&a, s);
    rig_step(&b, s);
  }
  CHECK_MSG(rigs_equal(&a, &b, "after the refusals"), "a refused load changed B");

  test_save_failures(&a);
  test_atomic_replace(&a);
  test_empty_optimizer();
  test_large_state();
  test_8bit();

  rig_destroy(&a);
  rig_destroy(&b);
  adamjit_context_destroy(ctx);
  remove_tree(scratch);
  return test_finish("test_checkpoint");
}
