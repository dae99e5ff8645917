/* Tuning on a context: overrides, the three databases, lookups and records (adamjit.h
 * "tuning"; the file format and its validation are jit/tuning.h).
 *
 * Cost. The planner asks at every step for every tensor (a 291-tensor model: 291 lookups
 * per step), so the databases are read once per context, on the first lookup, and only
 * their entries for this context's device are kept, in one array sorted by (kernel hash,
 * level from device down to vendor, database in search order, size-specific before
 * every-size). A lookup is then one binary search for the kernel's hash and a short scan
 * for the first entry whose bucket fits: the first match in the documented search order.
 * Overrides are few and are scanned linearly before that.
 *
 * Overrides apply whatever use_tuning says: they are explicit calls on this context, and
 * use_tuning = 0 exists to compare the databases' answers with the defaults (`adamjit bench
 * --tuned`), not to ignore what the caller asked for. */
#include "core/tuning.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/backend.h"
#include "core/kernel_plan.h"
#include "jit/engine.h"
#include "jit/tuning.h"

/* The databases in search order within a level. */
enum { DB_OVERLAY = 0, DB_CACHE = 1, DB_BUILTIN = 2, DB_COUNT = 3 };

typedef struct candidate {
  uint64_t hash;
  int level; /* adamjit_tuning_level */
  int db;
  int bucket;
  int index; /* in its database: the first of equal entries wins */
  aj_variant kernel;
} candidate;

struct aj_tuning {
  int loaded;      /* databases read and candidates built */
  int have_device; /* the identity could be had (always, on a GPU backend) */
  adamjit_tuning_device device;
  /* Paths are kept for the life of the context: plans hand them out as `source`. */
  char* path[DB_COUNT];
  aj_tuning_db db[DB_COUNT];
  candidate* cands;
  int n_cands;
  aj_variant* overrides;
  int n_overrides, cap_overrides;
};

static const char* const builtin_name = "built-in";

int aj_context_dialect(const adamjit_context* ctx) {
  return ctx->kind == ADAMJIT_BACKEND_OPENCL ? AJ_DIALECT_OPENCL : ctx->kind == ADAMJIT_BACKEND_CUDA ? AJ_DIALECT_CUDA : -1;
}

void aj_tuning_free(struct aj_tuning* t) {
  if (!t) return;
  for (int i = 0; i < DB_COUNT; i++) {
    aj_tuning_db_free(&t->db[i]);
    if (t->path[i] != builtin_name) free(t->path[i]);
  }
  free(t->cands);
  free(t->overrides);
  free(t);
}

static struct aj_tuning* tuning_of(adamjit_context* ctx) {
  if (!ctx->tuning) ctx->tuning = calloc(1, sizeof *ctx->tuning);
  return ctx->tuning;
}

static char* dup_string(const char* s) {
  size_t n = strlen(s) + 1;
  char* d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* Device strings come from drivers, some of which pad them (Intel's names end in blanks);
 * database entries are typed by people. */
static void trim(char* s) {
  size_t n = strlen(s), a = 0;
  while (n && isspace((unsigned char)s[n - 1])) s[--n] = '\0';
  while (s[a] && isspace((unsigned char)s[a])) a++;
  if (a) memmove(s, s + a, n - a + 1);
}

static adamjit_status device_identity(adamjit_context* ctx, adamjit_tuning_device* out) {
  memset(out, 0, sizeof *out);
  out->struct_size = sizeof *out;
  if (!ctx->ops->tuning_identity) return ADAMJIT_ERR_UNSUPPORTED;
  adamjit_status st = ctx->ops->tuning_identity(ctx, out);
  if (st) return st;
  trim(out->vendor);
  trim(out->architecture);
  trim(out->device);
  return ADAMJIT_OK;
}

/* The cache directory's database path, or NULL with the reason logged by the cache. */
static char* cache_db_path(adamjit_context* ctx, adamjit_status* st) {
  aj_jit* jit = NULL;
  *st = aj_context_jit(ctx, &jit);
  if (*st) return NULL;
  const char* dir = aj_kernel_cache_dir(aj_jit_cache(jit));
  if (!dir) {
    *st = ADAMJIT_ERR_CACHE;
    return NULL;
  }
  size_t n = strlen(dir) + sizeof "/tuning.json";
  char* p = malloc(n);
  if (!p) {
    *st = ADAMJIT_ERR_OUT_OF_MEMORY;
    return NULL;
  }
  snprintf(p, n, "%s/tuning.json", dir);
  return p;
}

/* Reads one database; a missing file is silent only for the cache's (it exists once
 * `adamjit tune` has run), while a user overlay that is not there is a mistyped path. */
static void load_file(adamjit_context* ctx, const char* path, int quiet_if_missing, aj_tuning_db* out) {
  char* text = NULL;
  size_t len = 0;
  int missing = 0;
  char why[600];
  adamjit_status st = aj_tuning_read_file(path, &text, &len, &missing, why, sizeof why);
  if (!st) st = aj_tuning_db_parse(text, len, out, why, sizeof why);
  free(text);
  if (st && !(missing && quiet_if_missing))
    aj_log(ctx, ADAMJIT_LOG_WARN, "tuning database %s ignored: %s", path, why);
  else if (!st)
    aj_log(ctx, ADAMJIT_LOG_DEBUG, "tuning database %s: %d entries", path, out->n);
}

static int cand_cmp(const void* pa, const void* pb) {
  const candidate *a = pa, *b = pb;
  if (a->hash != b->hash) return a->hash < b->hash ? -1 : 1;
  if (a->level != b->level) return b->level - a->level;
  if (a->db != b->db) return a->db - b->db;
  int sa = a->bucket == AJ_TUNING_ANY_SIZE, sb = b->bucket == AJ_TUNING_ANY_SIZE;
  if (sa != sb) return sa - sb;
  return a->index - b->index;
}

static void build_candidates(adamjit_context* ctx, struct aj_tuning* t) {
  free(t->cands);
  t->cands = NULL;
  t->n_cands = 0;
  int total = 0;
  for (int d = 0; d < DB_COUNT; d++) total += t->db[d].n;
  if (!total || !t->have_device) return;
  t->cands = malloc((size_t)total * sizeof *t->cands);
  if (!t->cands) {
    aj_log(ctx, ADAMJIT_LOG_WARN, "tuning: out of host memory; the default launch parameters are used");
    return;
  }
  for (int d = 0; d < DB_COUNT; d++)
    for (int i = 0; i < t->db[d].n; i++) {
      const aj_tuning_entry* e = &t->db[d].entries[i];
      if (!aj_tuning_entry_matches(e, &t->device)) continue;
      t->cands[t->n_cands++] =
          (candidate){.hash = e->hash, .level = (int)e->level, .db = d, .bucket = e->bucket, .index = i, .kernel = e->kernel};
    }
  qsort(t->cands, (size_t)t->n_cands, sizeof *t->cands, cand_cmp);
  aj_log(ctx, ADAMJIT_LOG_INFO, "tuning: %d database entries for %s (%s, %s)", t->n_cands, t->device.device,
         t->device.architecture, t->device.vendor);
}

static void load(adamjit_context* ctx, struct aj_tuning* t) {
  t->loaded = 1;
  t->have_device = device_identity(ctx, &t->device) == ADAMJIT_OK;
  if (!t->have_device) return;
  if (ctx->tuning_db && !t->path[DB_OVERLAY]) t->path[DB_OVERLAY] = dup_string(ctx->tuning_db);
  if (t->path[DB_OVERLAY]) load_file(ctx, t->path[DB_OVERLAY], 0, &t->db[DB_OVERLAY]);
  if (!t->path[DB_CACHE]) {
    adamjit_status st;
    t->path[DB_CACHE] = cache_db_path(ctx, &st);
  }
  if (t->path[DB_CACHE]) load_file(ctx, t->path[DB_CACHE], 1, &t->db[DB_CACHE]);
  t->path[DB_BUILTIN] = (char*)builtin_name;
  char why[600];
  if (aj_tuning_db_parse(aj_builtin_tuning_json, aj_builtin_tuning_json_len, &t->db[DB_BUILTIN], why, sizeof why))
    aj_log(ctx, ADAMJIT_LOG_WARN, "tuning database built-in ignored: %s", why);
  build_candidates(ctx, t);
}

/* The cache directory's database changed on disk (a record): read it again at the next
 * lookup, with the others as they were. */
static void reload_cache_db(adamjit_context* ctx, struct aj_tuning* t) {
  if (!t->loaded) return;
  aj_tuning_db_free(&t->db[DB_CACHE]);
  if (t->path[DB_CACHE]) load_file(ctx, t->path[DB_CACHE], 1, &t->db[DB_CACHE]);
  build_candidates(ctx, t);
}

static const aj_variant* find_override(const struct aj_tuning* t, const aj_variant* v, int* index) {
  for (int i = 0; i < t->n_overrides; i++)
    if (aj_tuning_same_kernel(&t->overrides[i], v)) {
      if (index) *index = i;
      return &t->overrides[i];
    }
  return NULL;
}

static void set_launch(aj_variant* dst, const aj_variant* src) {
  dst->wg_size = src->wg_size;
  dst->elems_per_thread = src->elems_per_thread;
  dst->vec_width = src->vec_width;
}

adamjit_tuning_level aj_tuning_apply(adamjit_context* ctx, aj_variant* u, int64_t numel, const char** source) {
  *source = "";
  if (!ctx || aj_context_dialect(ctx) != (int)u->dialect) return ADAMJIT_TUNING_DEFAULT;
  char why[160];
  if (aj_tuning_check_family(u, why, sizeof why)) return ADAMJIT_TUNING_DEFAULT;
  struct aj_tuning* t = ctx->tuning;
  if (t) {
    const aj_variant* o = find_override(t, u, NULL);
    if (o) {
      set_launch(u, o);
      return ADAMJIT_TUNING_OVERRIDE;
    }
  }
  if (!ctx->use_tuning) return ADAMJIT_TUNING_DEFAULT;
  if (!t && !(t = tuning_of(ctx))) return ADAMJIT_TUNING_DEFAULT;
  if (!t->loaded) load(ctx, t);
  if (!t->n_cands) return ADAMJIT_TUNING_DEFAULT;
  const uint64_t h = aj_tuning_kernel_hash(u);
  const int bucket = aj_tuning_bucket(numel < 1 ? 1 : numel);
  int lo = 0, hi = t->n_cands;
  while (lo < hi) { /* the first candidate of hash h */
    int mid = lo + (hi - lo) / 2;
    if (t->cands[mid].hash < h) lo = mid + 1;
    else hi = mid;
  }
  for (int i = lo; i < t->n_cands && t->cands[i].hash == h; i++) {
    const candidate* c = &t->cands[i];
    if (c->bucket != AJ_TUNING_ANY_SIZE && c->bucket != bucket) continue;
    if (!aj_tuning_same_kernel(&c->kernel, u)) continue; /* a hash collision */
    set_launch(u, &c->kernel);
    *source = t->path[c->db];
    return (adamjit_tuning_level)c->level;
  }
  return ADAMJIT_TUNING_DEFAULT;
}

/* ---------------------------------------------------------------- public */

const char* adamjit_tuning_level_name(adamjit_tuning_level level) {
  switch (level) {
    case ADAMJIT_TUNING_DEFAULT: return "default";
    case ADAMJIT_TUNING_VENDOR: return "vendor";
    case ADAMJIT_TUNING_ARCHITECTURE: return "architecture";
    case ADAMJIT_TUNING_DEVICE: return "device";
    case ADAMJIT_TUNING_OVERRIDE: return "override";
  }
  return NULL;
}

static adamjit_status need_gpu(adamjit_context* ctx, const char* fn) {
  if (aj_context_dialect(ctx) < 0)
    return aj_fail(ctx, ADAMJIT_ERR_UNSUPPORTED,
                   "%s: the %s backend launches no run-time kernels, so it has no launch parameters to tune", fn,
                   adamjit_backend_name(ctx->kind));
  return ADAMJIT_OK;
}

/* Checks a caller's output struct's struct_size (the fields up to it are written). */
static adamjit_status out_size(adamjit_context* ctx, size_t given, size_t full, const char* fn, const char* type) {
  if (given < sizeof(size_t) || given > full)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_SIZE, "%s: out->struct_size = %zu, expected sizeof(%s) = %zu", fn, given,
                   type, full);
  return ADAMJIT_OK;
}

adamjit_status adamjit_tuning_device_info(adamjit_context* ctx, adamjit_tuning_device* out) {
  const char* fn = "adamjit_tuning_device_info";
  AJ_CHECK_NULL(NULL, ctx, fn, "ctx");
  AJ_CHECK_NULL(ctx, out, fn, "out");
  adamjit_status st = need_gpu(ctx, fn);
  if (!st) st = out_size(ctx, out->struct_size, sizeof *out, fn, "adamjit_tuning_device");
  if (st) return st;
  adamjit_tuning_device full;
  st = device_identity(ctx, &full);
  if (st) return aj_fail(ctx, st, "%s: the %s backend cannot name its device", fn, adamjit_backend_name(ctx->kind));
  size_t given = out->struct_size;
  full.struct_size = given;
  memcpy(out, &full, given);
  return ADAMJIT_OK;
}

/* Parses key for a lookup-like call: the context's dialect, a tuned family. */
static adamjit_status parse_tuned_key(adamjit_context* ctx, const char* key, const char* fn, aj_variant* v) {
  adamjit_status st = aj_variant_parse(NULL, key, v);
  if (st) return aj_fail(ctx, st, "%s: %s", fn, adamjit_last_error());
  if ((int)v->dialect != aj_context_dialect(ctx))
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "%s: key \"%s\" is of dialect %s; this context's is %s", fn, key,
                   aj_dialect_name(v->dialect), aj_dialect_name((aj_dialect)aj_context_dialect(ctx)));
  return ADAMJIT_OK;
}

static void fill_result(adamjit_tuning_result* full, const aj_variant* v, adamjit_tuning_level level,
                        const char* source) {
  memset(full, 0, sizeof *full);
  aj_variant_format(v, full->key, sizeof full->key);
  full->level = level;
  snprintf(full->source, sizeof full->source, "%s", source ? source : "");
}

/* The launch the library gives v (of the context's dialect) for numel elements. */
static adamjit_tuning_level resolve(adamjit_context* ctx, aj_variant* v, int64_t numel, const char** source) {
  /* A multi kernel launches with its tensors' update kernel's parameters (jit/tuning.h). */
  const int multi = v->multi;
  v->multi = 0;
  /* the key's own launch tokens are ignored: start where the planner starts */
  aj_variant d;
  aj_variant_init_default(&d, v->family);
  v->wg_size = d.wg_size;
  v->elems_per_thread = d.elems_per_thread;
  v->vec_width = d.vec_width;
  aj_plan_update_defaults(ctx, v, numel);
  adamjit_tuning_level level = aj_tuning_apply(ctx, v, numel, source);
  v->multi = multi;
  return level;
}

adamjit_status adamjit_tuning_lookup(adamjit_context* ctx, const char* key, int64_t numel, adamjit_tuning_result* out) {
  const char* fn = "adamjit_tuning_lookup";
  AJ_CHECK_NULL(NULL, ctx, fn, "ctx");
  AJ_CHECK_NULL(ctx, key, fn, "key");
  AJ_CHECK_NULL(ctx, out, fn, "out");
  adamjit_status st = need_gpu(ctx, fn);
  if (!st) st = out_size(ctx, out->struct_size, sizeof *out, fn, "adamjit_tuning_result");
  if (st) return st;
  if (numel < 1) return aj_fail(ctx, ADAMJIT_ERR_INVALID_SIZE, "%s: numel = %lld (expected >= 1)", fn, (long long)numel);
  aj_variant v;
  st = parse_tuned_key(ctx, key, fn, &v);
  if (st) return st;
  const char* source = "";
  adamjit_tuning_level level = resolve(ctx, &v, numel, &source);
  adamjit_tuning_result full;
  fill_result(&full, &v, level, source);
  size_t given = out->struct_size;
  full.struct_size = given;
  memcpy(out, &full, given);
  return ADAMJIT_OK;
}

adamjit_status adamjit_optimizer_tensor_tuning(const adamjit_optimizer* opt, int index, adamjit_tuning_result* out) {
  const char* fn = "adamjit_optimizer_tensor_tuning";
  AJ_CHECK_NULL(NULL, opt, fn, "opt");
  adamjit_context* ctx = opt->ctx;
  AJ_CHECK_NULL(ctx, out, fn, "out");
  adamjit_status st = need_gpu(ctx, fn);
  if (!st) st = out_size(ctx, out->struct_size, sizeof *out, fn, "adamjit_tuning_result");
  if (st) return st;
  if (index < 0 || index >= opt->n_tensors)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_INDEX, "%s: index %d out of range (%d tensors)", fn, index, opt->n_tensors);
  const aj_tensor* t = &opt->tensors[index];
  aj_tensor_plan plan;
  aj_plan_tensor(ctx, t, &opt->groups[t->group], (aj_dialect)aj_context_dialect(ctx), &plan);
  adamjit_tuning_result full;
  fill_result(&full, &plan.update, plan.update_level, plan.update_source);
  size_t given = out->struct_size;
  full.struct_size = given;
  memcpy(out, &full, given);
  return ADAMJIT_OK;
}

/* A key that names its launch: wg=, ept= and vec= all written out, so that an override or
 * a record never takes a default the caller did not mean. */
static adamjit_status parse_launch_key(adamjit_context* ctx, const char* key, const char* fn, aj_variant* v) {
  static const char* const tokens[] = {"wg=", "ept=", "vec="};
  for (int i = 0; i < 3; i++) {
    size_t n = strlen(tokens[i]);
    int found = 0;
    for (const char* p = key; *p && !found; p++) found = (p == key || p[-1] == '/') && strncmp(p, tokens[i], n) == 0;
    if (!found)
      return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "%s: key \"%s\" has no %s token (wg=, ept= and vec= are all needed)",
                     fn, key, tokens[i]);
  }
  adamjit_status st = parse_tuned_key(ctx, key, fn, v);
  if (st) return st;
  char why[200];
  if (aj_tuning_check_family(v, why, sizeof why))
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "%s: key \"%s\": %s", fn, key, why);
  return ADAMJIT_OK;
}

/* The arguments shared by override and record: a GPU context and a full launch key. */
static adamjit_status launch_key_arg(adamjit_context* ctx, const char* key, const char* fn, aj_variant* v) {
  AJ_CHECK_NULL(NULL, ctx, fn, "ctx");
  AJ_CHECK_NULL(ctx, key, fn, "key");
  adamjit_status st = need_gpu(ctx, fn);
  return st ? st : parse_launch_key(ctx, key, fn, v);
}

adamjit_status adamjit_tuning_override(adamjit_context* ctx, const char* key) {
  const char* fn = "adamjit_tuning_override";
  aj_variant v;
  adamjit_status st = launch_key_arg(ctx, key, fn, &v);
  if (st) return st;
  struct aj_tuning* t = tuning_of(ctx);
  if (!t) return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
  int at = -1;
  if (find_override(t, &v, &at)) {
    t->overrides[at] = v;
  } else {
    if (t->n_overrides == t->cap_overrides) {
      int cap = t->cap_overrides ? 2 * t->cap_overrides : 8;
      aj_variant* grown = realloc(t->overrides, (size_t)cap * sizeof *grown);
      if (!grown) return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
      t->overrides = grown;
      t->cap_overrides = cap;
    }
    t->overrides[t->n_overrides++] = v;
  }
  char text[AJ_VARIANT_TEXT_MAX];
  aj_variant_format(&v, text, sizeof text);
  aj_log(ctx, ADAMJIT_LOG_INFO, "tuning: override %s", text);
  return ADAMJIT_OK;
}

adamjit_status adamjit_tuning_override_clear(adamjit_context* ctx, const char* key) {
  const char* fn = "adamjit_tuning_override_clear";
  AJ_CHECK_NULL(NULL, ctx, fn, "ctx");
  adamjit_status st = need_gpu(ctx, fn);
  if (st) return st;
  struct aj_tuning* t = ctx->tuning;
  if (!key) {
    if (t) t->n_overrides = 0;
    return ADAMJIT_OK;
  }
  aj_variant v;
  st = parse_tuned_key(ctx, key, fn, &v);
  if (st) return st;
  int at = -1;
  if (t && find_override(t, &v, &at)) {
    memmove(&t->overrides[at], &t->overrides[at + 1], (size_t)(t->n_overrides - at - 1) * sizeof *t->overrides);
    t->n_overrides--;
  }
  return ADAMJIT_OK;
}

adamjit_status adamjit_tuning_db_path(adamjit_context* ctx, char* buf, size_t size) {
  const char* fn = "adamjit_tuning_db_path";
  AJ_CHECK_NULL(NULL, ctx, fn, "ctx");
  AJ_CHECK_NULL(ctx, buf, fn, "buf");
  adamjit_status st = ADAMJIT_OK;
  char* path = cache_db_path(ctx, &st);
  if (!path) {
    if (st == ADAMJIT_ERR_CACHE) return aj_fail(ctx, st, "%s: the disk cache is off (see the log)", fn);
    if (st == ADAMJIT_ERR_OUT_OF_MEMORY) return aj_fail(ctx, st, "%s: out of host memory", fn);
    return st;
  }
  size_t n = strlen(path);
  if (n >= size) st = aj_fail(ctx, ADAMJIT_ERR_INVALID_SIZE, "%s: %zu bytes needed", fn, n + 1);
  else memcpy(buf, path, n + 1);
  free(path);
  return st;
}

adamjit_status adamjit_tuning_record(adamjit_context* ctx, const char* key, int64_t numel, double seconds,
                                     double default_seconds) {
  const char* fn = "adamjit_tuning_record";
  aj_variant v;
  adamjit_status st = launch_key_arg(ctx, key, fn, &v);
  if (st) return st;
  if (numel < 1) return aj_fail(ctx, ADAMJIT_ERR_INVALID_SIZE, "%s: numel = %lld (expected >= 1)", fn, (long long)numel);
  if (!(seconds > 0) || !isfinite(seconds))
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "%s: seconds = %g (expected a time > 0)", fn, seconds);
  if (!(default_seconds >= 0) || !isfinite(default_seconds))
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "%s: default_seconds = %g (expected >= 0; 0 = not measured)", fn,
                   default_seconds);
  adamjit_tuning_device dev;
  st = device_identity(ctx, &dev);
  if (st) return aj_fail(ctx, st, "%s: the %s backend cannot name its device", fn, adamjit_backend_name(ctx->kind));
  char* path = cache_db_path(ctx, &st);
  if (!path) {
    if (st == ADAMJIT_ERR_CACHE) return aj_fail(ctx, st, "%s: the disk cache is off (see the log), nowhere to record", fn);
    if (st == ADAMJIT_ERR_OUT_OF_MEMORY) return aj_fail(ctx, st, "%s: out of host memory", fn);
    return st;
  }
  char why[600];
  char *old = NULL, *text = NULL;
  size_t len = 0;
  int missing = 0;
  st = aj_tuning_read_file(path, &old, &len, &missing, why, sizeof why);
  if (st && missing) {
    st = ADAMJIT_OK; /* the first record makes the file */
  } else if (st) {
    st = aj_fail(ctx, st, "%s: %s: %s", fn, path, why);
  } else {
    /* Never replace a file we cannot read as a database: it may be a hand-edited one with
     * a typo, and the user decides whether it goes. */
    aj_tuning_db check;
    adamjit_status bad = aj_tuning_db_parse(old, len, &check, why, sizeof why);
    aj_tuning_db_free(&check);
    if (bad)
      st = aj_fail(ctx, bad == ADAMJIT_ERR_OUT_OF_MEMORY ? bad : ADAMJIT_ERR_TUNING_DB,
                   "%s: %s is not a valid tuning database (%s); fix or delete it", fn, path, why);
  }
  aj_tuning_record rec = {.id = &dev,
                          .kernel = &v,
                          .bucket = aj_tuning_bucket(numel),
                          .seconds = seconds,
                          .default_seconds = default_seconds,
                          .library = ADAMJIT_VERSION_STRING};
  if (!st) {
    st = aj_tuning_db_merge(old, &rec, &text, why, sizeof why);
    if (st) st = aj_fail(ctx, st, "%s: %s", fn, why);
  }
  if (!st) {
    st = aj_tuning_write_atomic(path, text, why, sizeof why);
    if (st) st = aj_fail(ctx, st, "%s: %s", fn, why);
  }
  if (!st) {
    char k[AJ_VARIANT_TEXT_MAX];
    aj_variant_format(&v, k, sizeof k);
    aj_log(ctx, ADAMJIT_LOG_INFO, "tuning: recorded %s for 1e%d elements in %s", k, rec.bucket, path);
    if (ctx->tuning) reload_cache_db(ctx, ctx->tuning);
  }
  free(old);
  free(text);
  free(path);
  return st;
}
