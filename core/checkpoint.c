/* Optimizer checkpoints as safetensors files (SPEC 6).
 *
 * Layout: an 8-byte little-endian header length N, N bytes of JSON (padded with spaces so
 * the data starts 8-aligned, as the safetensors package writes it), then the raw tensor
 * bytes, widest element first so every entry is aligned to its element size. Tensor keys
 * mirror bitsandbytes' state_dict; for tensor i:
 *
 *   state.<i>.step       I64 []        updates applied
 *   32-bit state:
 *   state.<i>.state1     F32 [numel]   m
 *   state.<i>.state2     F32 [numel]   v
 *   state.<i>.state3     F32 [numel]   running max of v (only while the tensor keeps one)
 *   8-bit state (blocks = ceil(numel / block_size), or 1 when block_wise = 0):
 *   state.<i>.state1     U8  [numel]   codes of m into the signed map
 *   state.<i>.state2     U8  [numel]   codes of v into the unsigned map
 *   state.<i>.state3     U8  [numel]   codes of the running max (unsigned map), if kept
 *   state.<i>.absmax1    F32 [blocks]  per-block scale of state1 (absmax2, absmax3 likewise)
 *   state.<i>.qmap1      F32 [256]     the signed dynamic map (SPEC 3)
 *   state.<i>.qmap2      F32 [256]     the unsigned dynamic map
 *   with percentile clipping:
 *   state.<i>.gnorm_vec  F32 [100]     the history of squared gradient norms
 *
 * value = qmap1[state1[j]] * absmax1[j / block_size] (qmap2 for state2/state3). The maps are
 * this library's constants: written for readers that dequantize, and on load required to
 * equal the built-in ones bit for bit (a checkpoint made with other maps is MISMATCH).
 *
 * "__metadata__" (string values only, as safetensors requires) holds format and version,
 * "param_groups" and "tensors" (JSON texts: hyperparameters; per tensor its name, numel,
 * dtypes, group, state_bits, block_wise, block_size, percentile_clipping), an xxh3-64
 * "metadata_checksum" of those two texts and an xxh3-64 "checksum" of the data region.
 * A load requires every tensor's storage (state_bits, and at 8 bits block_wise and, when
 * block-wise, block_size) to equal the optimizer's: MISMATCH naming the field otherwise. The
 * exception is a tensor whose ERROR policy has not measured yet (core/block_policy.h): it
 * takes the file's block size, the choice already made (or, from a file saved before the
 * first step, the provisional block, and measures at its first step as before).
 *
 * Saving streams the state through one host chunk into a temporary file that is renamed
 * over the target. Loading validates the whole header against the file and the optimizer,
 * streams the data into newly allocated backend buffers while hashing it, and only then
 * swaps the buffers in: every failure leaves the optimizer exactly as it was. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>
#include <xxhash.h>

#include "backends/backend.h"
#include "core/qmap.h"

/* Host buffers are written to the file as they are; safetensors data is little-endian. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoint.c assumes a little-endian host (safetensors stores little-endian data)"
#endif

#define CK_FORMAT "adamjit-optimizer"
#define CK_FORMAT_VERSION "1"
#define CK_CHECKSUM_PREFIX "xxh3-64:"
#define CK_CHUNK ((size_t)16 << 20)        /* host staging: state can be GBs, never held whole */
#define CK_MAX_HEADER ((uint64_t)100000000) /* the safetensors package's own limit */
#define CK_MAX_EXACT 9007199254740992.0     /* 2^53: JSON numbers are doubles, exact below this */
#define CK_MAX_DIMS 8

/* ------------------------------------------------------------ entries */

typedef enum ck_role {
  CK_STEP,
  CK_STATE1,
  CK_STATE2,
  CK_STATE3,
  CK_ABSMAX1,
  CK_ABSMAX2,
  CK_ABSMAX3,
  CK_QMAP1,
  CK_QMAP2,
  CK_GNORM
} ck_role;

/* One tensor of the file. Save fills it from the optimizer (mem borrowed); load fills it
 * from the optimizer too and then stages into it (mem owned until the commit). */
typedef struct ck_entry {
  char key[48];
  const char* dtype;  /* safetensors dtype name */
  size_t elem_size;
  int scalar;         /* shape [] instead of [count] */
  uint64_t count;     /* elements */
  uint64_t bytes;
  int tensor;
  ck_role role;
  int paged;          /* allocation hint for the staged buffer */
  adamjit_mem mem;
  adamjit_memory_kind kind;
  uint64_t begin;     /* offset in the data region */
  uint64_t step;      /* CK_STEP: the counter */
  unsigned char raw[8]; /* CK_STEP on load: the bytes as streamed from the file */
  const float* qmap;  /* CK_QMAP*: the built-in map, written by a save and required by a load */
  unsigned char* host; /* CK_QMAP* on load: the bytes as streamed from the file (owned) */
  size_t seq;         /* build order, keeps the layout sort stable */
} ck_entry;

typedef struct ck_list {
  ck_entry* e;
  size_t n, cap;
} ck_list;

static adamjit_status ck_push(adamjit_context* ctx, ck_list* L, int tensor, const char* suffix, ck_role role,
                              const char* dtype, size_t elem_size, uint64_t count, int scalar, int paged,
                              adamjit_mem mem) {
  if (L->n == L->cap) {
    size_t cap = L->cap ? 2 * L->cap : 16;
    ck_entry* e = realloc(L->e, cap * sizeof *e);
    if (!e) return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "checkpoint: out of host memory for the tensor list");
    L->e = e;
    L->cap = cap;
  }
  ck_entry* e = &L->e[L->n];
  memset(e, 0, sizeof *e);
  snprintf(e->key, sizeof e->key, "state.%d.%s", tensor, suffix);
  e->dtype = dtype;
  e->elem_size = elem_size;
  e->scalar = scalar;
  e->count = count;
  e->bytes = count * elem_size;
  e->tensor = tensor;
  e->role = role;
  e->paged = paged;
  e->mem = mem;
  e->seq = L->n++;
  return ADAMJIT_OK;
}

/* The one place that says what a tensor stores in a checkpoint (the table at the top); save
 * and load both use it. Each entry names the backend buffer it comes from (a save) or
 * replaces (a load); codes may be paged as the optimizer allocates them, absmax never. */
static adamjit_status ck_tensor_entries(adamjit_context* ctx, const aj_tensor* t, int i, int has_vmax, ck_list* L) {
  if (t->state_bits != 32 && t->state_bits != 8)
    return aj_fail(ctx, ADAMJIT_ERR_INTERNAL, "checkpoint: tensor %d (\"%s\") has %d-bit state", i, t->name,
                   t->state_bits);
  uint64_t n = (uint64_t)t->numel;
  adamjit_status st = ck_push(ctx, L, i, "step", CK_STEP, "I64", 8, 1, 1, 0, NULL);
  if (!st) L->e[L->n - 1].step = t->step; /* what a save writes; a load replaces it from the file */
  if (t->state_bits == 32) {
    if (!st) st = ck_push(ctx, L, i, "state1", CK_STATE1, "F32", 4, n, 0, t->paged, t->m);
    if (!st) st = ck_push(ctx, L, i, "state2", CK_STATE2, "F32", 4, n, 0, t->paged, t->v);
    if (!st && has_vmax) st = ck_push(ctx, L, i, "state3", CK_STATE3, "F32", 4, n, 0, t->paged, t->vmax);
  } else {
    uint64_t blocks = (uint64_t)aj_tensor_blocks(t);
    if (!st) st = ck_push(ctx, L, i, "state1", CK_STATE1, "U8", 1, n, 0, t->paged, t->m);
    if (!st) st = ck_push(ctx, L, i, "state2", CK_STATE2, "U8", 1, n, 0, t->paged, t->v);
    if (!st && has_vmax) st = ck_push(ctx, L, i, "state3", CK_STATE3, "U8", 1, n, 0, t->paged, t->vmax);
    if (!st) st = ck_push(ctx, L, i, "absmax1", CK_ABSMAX1, "F32", 4, blocks, 0, 0, t->absmax1);
    if (!st) st = ck_push(ctx, L, i, "absmax2", CK_ABSMAX2, "F32", 4, blocks, 0, 0, t->absmax2);
    if (!st && has_vmax) st = ck_push(ctx, L, i, "absmax3", CK_ABSMAX3, "F32", 4, blocks, 0, 0, t->absmax3);
    if (!st) st = ck_push(ctx, L, i, "qmap1", CK_QMAP1, "F32", 4, AJ_QMAP_SIZE, 0, 0, NULL);
    if (!st) L->e[L->n - 1].qmap = aj_qmap_builtin(1)->values;
    if (!st) st = ck_push(ctx, L, i, "qmap2", CK_QMAP2, "F32", 4, AJ_QMAP_SIZE, 0, 0, NULL);
    if (!st) L->e[L->n - 1].qmap = aj_qmap_builtin(0)->values;
  }
  /* The clipping history is tiny and never paged, as when the optimizer allocates it. */
  if (!st && t->percentile < 100)
    st = ck_push(ctx, L, i, "gnorm_vec", CK_GNORM, "F32", 4, AJ_CLIP_HISTORY, 0, 0, t->gnorm);
  return st;
}

static int ck_cmp_layout(const void* a, const void* b) {
  const ck_entry* x = a;
  const ck_entry* y = b;
  if (x->elem_size != y->elem_size) return x->elem_size > y->elem_size ? -1 : 1;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Orders entries widest element first and assigns contiguous offsets. The data region
 * starts 8-aligned, so every entry is then aligned to its own element size (the order the
 * safetensors package writes): readers can map arrays in place, also once 1-byte codes sit
 * among the F32 states. Returns the size of the data region. */
static uint64_t ck_layout(ck_list* L) {
  if (L->n) qsort(L->e, L->n, sizeof *L->e, ck_cmp_layout);
  uint64_t off = 0;
  for (size_t k = 0; k < L->n; k++) {
    L->e[k].begin = off;
    off += L->e[k].bytes;
  }
  return off;
}

/* Frees the staged buffers that were not committed (a save list owns none). */
static void ck_list_free(adamjit_context* ctx, ck_list* L, int owns_mem) {
  for (size_t k = 0; owns_mem && k < L->n; k++) {
    if (L->e[k].mem) ctx->ops->mem_free(ctx, L->e[k].mem);
    free(L->e[k].host);
  }
  free(L->e);
  memset(L, 0, sizeof *L);
}

/* ------------------------------------------------------ small helpers */

static void ck_put_u64(unsigned char* p, uint64_t v) {
  for (int k = 0; k < 8; k++) p[k] = (unsigned char)(v >> (8 * k));
}

static uint64_t ck_get_u64(const unsigned char* p) {
  uint64_t v = 0;
  for (int k = 7; k >= 0; k--) v = (v << 8) | p[k];
  return v;
}

static int ck_write_all(int fd, const void* buf, size_t n) {
  const char* p = buf;
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return errno;
    if (w == 0) return EIO;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int ck_pwrite_all(int fd, const void* buf, size_t n, uint64_t off) {
  const char* p = buf;
  while (n) {
    ssize_t w = pwrite(fd, p, n, (off_t)off);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return errno;
    if (w == 0) return EIO;
    p += w;
    n -= (size_t)w;
    off += (uint64_t)w;
  }
  return 0;
}

/* Returns 0, an errno, or -1 when the file ended before n bytes. */
static int ck_pread_all(int fd, void* buf, size_t n, uint64_t off) {
  char* p = buf;
  while (n) {
    ssize_t r = pread(fd, p, n, (off_t)off);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return errno;
    if (r == 0) return -1;
    p += r;
    n -= (size_t)r;
    off += (uint64_t)r;
  }
  return 0;
}

static void ck_hex64(char out[17], uint64_t v) { snprintf(out, 17, "%016" PRIx64, v); }

/* ------------------------------------------------------ header (save) */

/* The shortest decimal that reads back as f (at most 9 digits suffice for any float), as
 * the double that JSON readers will see: 0.01f is written 0.01, not 0.009999999776482582,
 * so a Python user reads the lr they set. Printing and parsing use the same locale. The
 * load reads the double back and rounds it to float, exactly the check made here. */
static cJSON* ck_float_json(float f) {
  char text[32];
  for (int digits = 1; digits <= 9; digits++) {
    snprintf(text, sizeof text, "%.*g", digits, (double)f);
    double d = strtod(text, NULL);
    if ((float)d == f) return cJSON_CreateNumber(d);
  }
  return cJSON_CreateNumber(f);
}

static int ck_add_float(cJSON* o, const char* key, float f) { return cJSON_AddItemToObject(o, key, ck_float_json(f)); }

static cJSON* ck_groups_json(const adamjit_optimizer* opt) {
  cJSON* arr = cJSON_CreateArray();
  for (int g = 0; arr && g < opt->n_groups; g++) {
    const adamjit_hparams* hp = &opt->groups[g];
    cJSON* o = cJSON_CreateObject();
    cJSON* betas = cJSON_CreateArray();
    int ok = o && betas && ck_add_float(o, "lr", hp->lr) && cJSON_AddItemToArray(betas, ck_float_json(hp->beta1)) &&
             cJSON_AddItemToArray(betas, ck_float_json(hp->beta2)) && cJSON_AddItemToObject(o, "betas", betas);
    if (!ok) cJSON_Delete(betas);
    ok = ok && ck_add_float(o, "eps", hp->eps) && ck_add_float(o, "weight_decay", hp->weight_decay) &&
         cJSON_AddBoolToObject(o, "amsgrad", hp->amsgrad != 0);
    if (!ok || !cJSON_AddItemToArray(arr, o)) {
      cJSON_Delete(o);
      cJSON_Delete(arr);
      return NULL;
    }
  }
  return arr;
}

static cJSON* ck_tensors_json(const adamjit_optimizer* opt) {
  cJSON* arr = cJSON_CreateArray();
  for (int i = 0; arr && i < opt->n_tensors; i++) {
    const aj_tensor* t = &opt->tensors[i];
    cJSON* o = cJSON_CreateObject();
    int ok = o && cJSON_AddStringToObject(o, "name", t->name) &&
             cJSON_AddNumberToObject(o, "numel", (double)t->numel) &&
             cJSON_AddStringToObject(o, "param_dtype", adamjit_dtype_name(t->param_dtype)) &&
             cJSON_AddStringToObject(o, "grad_dtype", adamjit_dtype_name(t->grad_dtype)) &&
             cJSON_AddNumberToObject(o, "group", t->group) && cJSON_AddNumberToObject(o, "state_bits", t->state_bits) &&
             cJSON_AddNumberToObject(o, "block_wise", t->block_wise) &&
             cJSON_AddNumberToObject(o, "block_size", t->block_size) &&
             cJSON_AddNumberToObject(o, "percentile_clipping", t->percentile);
    if (!ok || !cJSON_AddItemToArray(arr, o)) {
      cJSON_Delete(o);
      cJSON_Delete(arr);
      return NULL;
    }
  }
  return arr;
}

/* The JSON text of `value` (consumed), or NULL. Free with cJSON_free. */
static char* ck_json_text(cJSON* value) {
  char* text = value ? cJSON_PrintUnformatted(value) : NULL;
  cJSON_Delete(value);
  return text;
}

/* The data checksum covers the state; this one covers the configuration texts, so that a
 * flipped digit in a learning rate or a tensor's layout is refused too. */
static uint64_t ck_metadata_hash(const char* groups, const char* tensors) {
  return XXH3_64bits_withSeed(tensors, strlen(tensors), XXH3_64bits(groups, strlen(groups)));
}

static int ck_add_hash(cJSON* meta, const char* key, uint64_t hash) {
  char sum[sizeof CK_CHECKSUM_PREFIX + 16];
  char hex[17];
  ck_hex64(hex, hash);
  snprintf(sum, sizeof sum, "%s%s", CK_CHECKSUM_PREFIX, hex);
  return cJSON_AddStringToObject(meta, key, sum) != NULL;
}

static cJSON* ck_metadata_json(const adamjit_optimizer* opt, uint64_t checksum) {
  char* groups = ck_json_text(ck_groups_json(opt));
  char* tensors = ck_json_text(ck_tensors_json(opt));
  cJSON* meta = groups && tensors ? cJSON_CreateObject() : NULL;
  int ok = meta && cJSON_AddStringToObject(meta, "format", CK_FORMAT) &&
           cJSON_AddStringToObject(meta, "format_version", CK_FORMAT_VERSION) &&
           cJSON_AddStringToObject(meta, "adamjit_version", adamjit_version_string()) &&
           cJSON_AddStringToObject(meta, "param_groups", groups) && cJSON_AddStringToObject(meta, "tensors", tensors) &&
           ck_add_hash(meta, "metadata_checksum", ck_metadata_hash(groups, tensors)) &&
           ck_add_hash(meta, "checksum", checksum);
  cJSON_free(groups);
  cJSON_free(tensors);
  if (!ok) {
    cJSON_Delete(meta);
    return NULL;
  }
  return meta;
}

static cJSON* ck_entry_json(const ck_entry* e) {
  cJSON* o = cJSON_CreateObject();
  cJSON* shape = cJSON_CreateArray();
  cJSON* offs = cJSON_CreateArray();
  int ok = o && shape && offs && cJSON_AddStringToObject(o, "dtype", e->dtype);
  if (ok && !e->scalar) ok = cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)e->count));
  ok = ok && cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)e->begin)) &&
       cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(e->begin + e->bytes)));
  if (ok && cJSON_AddItemToObject(o, "shape", shape)) {
    shape = NULL;
    if (cJSON_AddItemToObject(o, "data_offsets", offs)) return o;
  }
  cJSON_Delete(shape);
  cJSON_Delete(offs);
  cJSON_Delete(o);
  return NULL;
}

/* The whole header, padded with spaces to a multiple of 8 bytes; malloc'd, or NULL when out
 * of memory. The checksum is fixed width, so the text's length does not depend on it. */
static char* ck_header_text(const adamjit_optimizer* opt, const ck_list* L, uint64_t checksum, size_t* len) {
  cJSON* root = cJSON_CreateObject();
  int ok = root && cJSON_AddItemToObject(root, "__metadata__", ck_metadata_json(opt, checksum));
  for (size_t k = 0; ok && k < L->n; k++) ok = cJSON_AddItemToObject(root, L->e[k].key, ck_entry_json(&L->e[k]));
  char* text = ok ? cJSON_PrintUnformatted(root) : NULL;
  cJSON_Delete(root);
  if (!text) return NULL;
  size_t n = strlen(text);
  size_t padded = (n + 7) / 8 * 8;
  char* out = malloc(padded + 1);
  if (out) {
    memcpy(out, text, n);
    memset(out + n, ' ', padded - n);
    out[padded] = '\0';
    *len = padded;
  }
  cJSON_free(text);
  return out;
}

/* ------------------------------------------------- metadata parsing */

/* An integer field: a JSON number that is integral and within [lo, hi]. */
static int ck_json_int(const cJSON* obj, const char* key, double lo, double hi, int64_t* out) {
  const cJSON* it = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!cJSON_IsNumber(it)) return 0;
  double d = it->valuedouble;
  if (!(d >= lo && d <= hi) || d != (double)(int64_t)d) return 0;
  *out = (int64_t)d;
  return 1;
}

/* A float field: a finite JSON number within float range, converted exactly as saved. */
static int ck_json_float(const cJSON* it, float* out) {
  if (!cJSON_IsNumber(it)) return 0;
  double d = it->valuedouble;
  if (!isfinite(d) || fabs(d) > 3.4028234663852886e38) return 0;
  *out = (float)d;
  return 1;
}

static int ck_parse_group(const cJSON* o, adamjit_hparams* hp) {
  if (!cJSON_IsObject(o)) return 0;
  const cJSON* betas = cJSON_GetObjectItemCaseSensitive(o, "betas");
  const cJSON* ams = cJSON_GetObjectItemCaseSensitive(o, "amsgrad");
  if (!cJSON_IsArray(betas) || cJSON_GetArraySize(betas) != 2) return 0;
  if (!ck_json_float(cJSON_GetObjectItemCaseSensitive(o, "lr"), &hp->lr) ||
      !ck_json_float(cJSON_GetArrayItem(betas, 0), &hp->beta1) ||
      !ck_json_float(cJSON_GetArrayItem(betas, 1), &hp->beta2) ||
      !ck_json_float(cJSON_GetObjectItemCaseSensitive(o, "eps"), &hp->eps) ||
      !ck_json_float(cJSON_GetObjectItemCaseSensitive(o, "weight_decay"), &hp->weight_decay))
    return 0;
  if (cJSON_IsBool(ams))
    hp->amsgrad = cJSON_IsTrue(ams);
  else if (cJSON_IsNumber(ams) && (ams->valuedouble == 0.0 || ams->valuedouble == 1.0))
    hp->amsgrad = ams->valuedouble == 1.0; /* tolerated for hand-written files */
  else
    return 0;
  return 1;
}

/* Parses the "param_groups" text into *out (malloc'd, n entries). Structural problems are
 * CORRUPT; a count that differs from `expect` is MISMATCH. Values are range-checked with
 * aj_check_hparams, so a loaded group is one set_group would accept. */
static adamjit_status ck_parse_groups(adamjit_context* ctx, const char* path, const char* text, int expect,
                                      adamjit_hparams** out) {
  cJSON* arr = cJSON_Parse(text);
  adamjit_status st = ADAMJIT_OK;
  adamjit_hparams* groups = NULL;
  if (!cJSON_IsArray(arr)) {
    st = aj_fail(ctx, ADAMJIT_ERR_CHECKPOINT_CORRUPT, "checkpoint '%s': metadata \"param_groups\" is not a JSON array",
                 path);
  } else if (cJSON_GetArraySize(arr) != expect) {
    st = aj_fail(ctx, ADAMJIT_ERR_CHECKPOINT_MISMATCH,
                 "checkpoint '%s' has %d parameter groups but this optimizer has %d", path, cJSON_GetArraySize(arr),
                 expect);
  } else if (!(groups = calloc((size_t)expect + 1, sizeof *groups))) {
    st = aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "checkpoint '%s': out of host memory", path);
  }
  for (int g = 0; !st && g < expect; g++) {
    if (!ck_parse_group(cJSON_GetArrayItem(arr, g), &groups[g])) {
      st = aj_fail(ctx, ADAMJIT_ERR_CHECKPOINT_CORRUPT,
                   "checkpoint '%s': param_groups[%d] lacks a field or has one of the wrong type (needs lr, "
                   "betas[2], eps, weight_decay as finite floats and amsgrad as a bool)", path, g);
    } else if (aj_check_hparams(ctx, &groups[g]) != ADAMJIT_OK) {
      char why[AJ_ERR_LEN];
      memcpy(why, ctx->err, sizeof why); /* aj_fail is about to overwrite it */
      st = aj_fail(ctx, ADAMJIT_ERR_CHECKPOINT_CORRUPT, "checkpoint '%s': param_groups[%d]: %s", path, g, why);
    }
  }
  cJSON_Delete(arr);
  if (st) {
    free(groups);
    return st;
  }
  *out = groups;
  return ADAMJIT_OK;
}

/* Compares one "tensors" record with a registered tensor: CORRUPT when the record is
 * malformed, MISMATCH (naming the field) when it describes a different tensor. *block gets
 * the block size the tensor loads with. */
static adamjit_status ck_check_tensor(adamjit_context* ctx, const char* path, int i, const cJSON* o,
                                      const aj_tensor* t, int* block) {
  int64_t numel, group, bits, block_wise, block_size, pct;
  const cJSON* name = cJSON_GetObjectItemCaseSensitive(o, "name");
  const char* pd = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "param_dtype"));
  const char* gd = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "grad_dtype"));
  if (!cJSON_IsObject(o) || !cJSON_IsString(name) || !pd || !gd ||
      !ck_json_int(o, "numel", 1, CK_MAX_EXACT, &numel) || !ck_json_int(o, "group", 0, INT32_MAX, &group) ||
      !ck_json_int(o, "state_bits", 0, 64, &bits) || !ck_json_int(o, "block_wise", 0, 1, &block_wise) ||
      !ck_json_int(o, "block_size", 0, INT32_MAX, &block_size) ||
      !ck_json_int(o, "percentile_clipping", 0, 100, &pct))
    return aj_fail(ctx, ADAMJIT_ERR_CHECKPOINT_CORRUPT,
                   "checkpoint '%s': metadata tensors[%d] lacks a field or has one of the wrong type", path, i);
#define CK_DIFF(what, fmt, file, mine)                                                                         \
  return aj_fail(ctx, ADAMJIT_ERR_CHECKPOINT_MISMATCH,                                                         \
                 "checkpoint '%s': tensor %d (\"%s\") has " what " " fmt " in the checkpoint but " fmt          \
                 " in this optimizer",                                                                         \
                 path, i, t->name, file, mine)
  if (numel != t->numel) CK_DIFF("numel", "%lld", (long long)numel, (long long)t->numel);
  if (strcmp(pd, adamjit_dtype_name(t->param_dtype)) != 0)
    CK_DIFF("param_dtype", "%s", pd, adamjit_dtype_name(t->param_dtype));
  if (strcmp(gd, adamjit_dtype_name(t->grad_dtype)) != 0)
    CK_DIFF("grad_dtype", "%s", gd, adamjit_dtype_name(t->grad_dtype));
  if (group != t->group) CK_DIFF("group", "%d", (int)group, t->group);
  if (bits != t->state_bits) CK_DIFF("state_bits", "%d", (int)bits, t->state_bits);
  /* Block parameters shape only 8-bit state (a 32-bit tensor stores none of them), and the
   * block size only block-wise state (block_wise = 0 keeps one absmax per tensor). */
  if (t->state_bits == 8 && block_wise != t->block_wise) CK_DIFF("block_wise", "%d", (int)block_wise, t->block_wise);
  *block = t->block_size;
  if (t->state_bits == 8 && t->block_wise && t->block_pending) {
    if (block_size < 64 || block_size > 4096 || (block_size & (block_size - 1)))
      return aj_fail(ctx, ADAMJIT_ERR_CHECKPOINT_CORRUPT,
                     "checkpoint '%s': metadata tensors[%d] has block_size %lld, not a power of two in 64..4096", path,
                     i, (long long)block_size);
    *block = (int)block_size;
  } else if (t->state_bits == 8 && t->block_wise && block_size != t->block_size) {
    CK_DIFF("block_size", "%d", (int)block_size, t->block_size);
  }
  if (pct != t->percentile) CK_DIFF("percentile_clipping", "%d", (int)pct, t->percentile);
#undef CK_DIFF
  if (strcmp(name->valuestring, t->name) != 0)
    aj_log(ctx, ADAMJIT_LOG_WARN, "checkpoint '%s': tensor %d was saved as \"%s\" and loads into \"%s\"", path, i,
           name->valuestring, t->name);
  return ADAMJIT_OK;
}

static adamjit_status ck_check_tensors(adamjit_context* ctx, const char* path, const char* text,
                                       const adamjit_optimizer* opt, int* blocks) {
  cJSON* arr = cJSON_Parse(text);
  adamjit_status st = ADAMJIT_OK;
  if (!cJSON_IsArray(arr))
    st = aj_fail(ctx, ADAMJIT_ERR_CHECKPOINT_CORRUPT, "checkpoint '%s': metadata \"tensors\" is not a JSON array",
                 path);
  else if (cJSON_GetArraySize(arr) != opt->n_tensors)
    st = aj_fail(ctx, ADAMJIT_ERR_CHECKPOINT_MISMATCH, "checkpoint '%s' has %d tensors but this optimizer has %d",
                 path, cJSON_GetArraySize(arr), opt->n_tensors);
  int i = 0;
  for (const cJSON* o = st ? NULL : arr->child; o && !st; o = o->next, i++)
    st = ck_check_tensor(ctx, path, i, o, &opt->tensors[i], &blocks[i]);
  cJSON_Delete(arr);
  return st;
}

static int ck_parse_checksum(const char* s, uint64_t* out) {
  size_t plen = strlen(CK_CHECKSUM_PREFIX);
  if (!s || strncmp(s, CK_CHECKSUM_PREFIX, plen) != 0 || strlen(s + plen) != 16) return 0;
  uint64_t v = 0;
  for (const char* p = s + plen; *p; p++) {
    int d = (*p >= '0' && *p <= '9') ? *p - '0' : (*p >= 'a' && *p <= 'f') ? *p - 'a' + 10 : -1;
    if (d < 0) return 0;
    v = (v << 4) | (uint64_t)d;
  }
  *out = v;
  return 1;
}

/* ------------------------------------------------------------- save */

/* mkstemp creates 0600 files; a checkpoint gets what any new file of the user would (0666
 * minus the umask) or, when it replaces a file, that file's permissions. umask() cannot be
 * read without setting it (racy in a threaded trainer), so Linux's /proc is asked; 0644
 * elsewhere. */
static mode_t ck_new_file_mode(const char* path) {
  struct stat sb;
  if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) return sb.st_mode & 07777;
  mode_t mode = 0644;
  FILE* f = fopen("/proc/self/status", "r");
  if (!f) return mode;
  char line[256];
  unsigned mask;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "Umask: %o", &mask) == 1) {
      mode = 0666 & ~(mode_t)mask;
      break;
    }
  fclose(f);
  return mode;
}

typedef struct ck_writer {
  adamjit_context* ctx;
  const char* path; /* the target, for messages */
  int fd;
  unsigned char* buf;
  size_t cap, fill;
  XXH3_state_t* hash;
} ck_writer;

static adamjit_status ck_io_error(ck_writer* w, int err, const char* what) {
  return aj_fail(w->ctx, ADAMJIT_ERR_IO, "cannot save checkpoint '%s': %s failed: %s", w->path, what, strerror(err));
}

static adamjit_status ck_flush(ck_writer* w) {
  if (!w->fill) return ADAMJIT_OK;
  XXH3_64bits_update(w->hash, w->buf, w->fill);
  int err = ck_write_all(w->fd, w->buf, w->fill);
  w->fill = 0;
  return err ? ck_io_error(w, err, "writing the data") : ADAMJIT_OK;
}

/* Appends bytes from host memory through the staging buffer. */
static adamjit_status ck_append_host(ck_writer* w, const unsigned char* p, size_t n) {
  for (size_t k = 0; k < n; k++) {
    if (w->fill == w->cap) {
      adamjit_status st = ck_flush(w);
      if (st) return st;
    }
    w->buf[w->fill++] = p[k];
  }
  return ADAMJIT_OK;
}

/* Appends one entry's bytes through the staging buffer, reading backend memory piecewise. */
static adamjit_status ck_append_entry(ck_writer* w, const ck_entry* e) {
  if (e->role == CK_STEP) {
    unsigned char raw[8];
    ck_put_u64(raw, e->step);
    return ck_append_host(w, raw, sizeof raw);
  }
  if (e->qmap) return ck_append_host(w, (const unsigned char*)e->qmap, (size_t)e->bytes);
  if (!e->mem)
    return aj_fail(w->ctx, ADAMJIT_ERR_INTERNAL, "cannot save checkpoint '%s': %s has no buffer", w->path, e->key);
  for (uint64_t done = 0; done < e->bytes;) {
    if (w->fill == w->cap) {
      adamjit_status st = ck_flush(w);
      if (st) return st;
    }
    size_t n = w->cap - w->fill;
    if ((uint64_t)n > e->bytes - done) n = (size_t)(e->bytes - done);
    adamjit_status st = w->ctx->ops->mem_read(w->ctx, w->buf + w->fill, e->mem, (size_t)done, n);
    if (st) return st;
    w->fill += n;
    done += n;
  }
  return ADAMJIT_OK;
}

/* Writes header and data to w->fd. The checksum must be in the header, which precedes the
 * data: rather than reading (possibly GBs of device) state twice, a header with a zero
 * checksum is written first and rewritten in place once the data is hashed. The checksum is
 * fixed width, so the header's length cannot change (checked anyway). */
static adamjit_status ck_write_contents(ck_writer* w, const adamjit_optimizer* opt, const ck_list* L) {
  size_t hlen = 0, hlen2 = 0;
  char* header = ck_header_text(opt, L, 0, &hlen);
  if (!header) return aj_fail(w->ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "cannot save checkpoint '%s': out of host memory",
                              w->path);
  unsigned char len8[8];
  ck_put_u64(len8, hlen);
  int err = ck_write_all(w->fd, len8, 8);
  if (!err) err = ck_write_all(w->fd, header, hlen);
  free(header);
  if (err) return ck_io_error(w, err, "writing the header");

  XXH3_64bits_reset(w->hash);
  adamjit_status st = ADAMJIT_OK;
  for (size_t k = 0; !st && k < L->n; k++) st = ck_append_entry(w, &L->e[k]);
  if (!st) st = ck_flush(w);
  if (st) return st;

  header = ck_header_text(opt, L, XXH3_64bits_digest(w->hash), &hlen2);
  if (!header) return aj_fail(w->ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "cannot save checkpoint '%s': out of host memory",
                              w->path);
  if (hlen2 != hlen) {
    free(header);
    return aj_fail(w->ctx, ADAMJIT_ERR_INTERNAL, "cannot save checkpoint '%s': header length changed (%zu -> %zu)",
                   w->path, hlen, hlen2);
  }
  err = ck_pwrite_all(w->fd, header, hlen, 8);
  free(header);
  return err ? ck_io_error(w, err, "rewriting the header") : ADAMJIT_OK;
}

/* The directory entry of a rename is durable only once the directory is synced; failing that
 * is reported but not fatal (the new file is complete and in place). */
static void ck_sync_dir(adamjit_context* ctx, const char* path) {
  const char* slash = strrchr(path, '/');
  char* dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
  int fd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
  if (fd < 0 || fsync(fd) != 0)
    aj_log(ctx, ADAMJIT_LOG_WARN, "checkpoint '%s': could not sync its directory: %s", path, strerror(errno));
  if (fd >= 0) close(fd);
  free(dir);
}

/* Everything of a save that touches the file system; on failure the temporary file is gone
 * and `path` is as it was. */
static adamjit_status ck_save_file(ck_writer* w, const adamjit_optimizer* opt, const ck_list* L) {
  size_t plen = strlen(w->path);
  char* tmp = malloc(plen + sizeof ".tmp.XXXXXX");
  if (!tmp) return aj_fail(w->ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "cannot save checkpoint '%s': out of host memory",
                           w->path);
  memcpy(tmp, w->path, plen);
  memcpy(tmp + plen, ".tmp.XXXXXX", sizeof ".tmp.XXXXXX");
  mode_t mode = ck_new_file_mode(w->path);
  w->fd = mkstemp(tmp);
  if (w->fd < 0) {
    adamjit_status st = aj_fail(w->ctx, ADAMJIT_ERR_IO, "cannot save checkpoint '%s': creating the temporary file "
                                "'%s' failed: %s", w->path, tmp, strerror(errno));
    free(tmp);
    return st;
  }
  adamjit_status st = fchmod(w->fd, mode) == 0 ? ADAMJIT_OK : ck_io_error(w, errno, "setting its permissions");
  if (!st) st = ck_write_contents(w, opt, L);
  if (!st && fsync(w->fd) != 0) st = ck_io_error(w, errno, "fsync");
  if (close(w->fd) != 0 && !st) st = ck_io_error(w, errno, "close");
  w->fd = -1;
  if (!st && rename(tmp, w->path) != 0) st = ck_io_error(w, errno, "renaming the temporary file over it");
  if (st)
    unlink(tmp);
  else
    ck_sync_dir(w->ctx, w->path);
  free(tmp);
  return st;
}

/* The hyperparameters must come back bit for bit: proven on the text before writing, with
 * the parser the load uses, so a file is never written that would load different values. */
static adamjit_status ck_check_groups_exact(const adamjit_optimizer* opt, const char* path) {
  adamjit_context* ctx = opt->ctx;
  cJSON* groups = ck_groups_json(opt);
  char* text = groups ? cJSON_PrintUnformatted(groups) : NULL;
  cJSON_Delete(groups);
  if (!text) return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "cannot save checkpoint '%s': out of host memory", path);
  adamjit_hparams* back = NULL;
  adamjit_status st = ck_parse_groups(ctx, path, text, opt->n_groups, &back);
  cJSON_free(text);
  for (int g = 0; !st && g < opt->n_groups; g++) {
    const adamjit_hparams *a = &opt->groups[g], *b = &back[g];
    if (memcmp(&a->lr, &b->lr, sizeof a->lr) || memcmp(&a->beta1, &b->beta1, sizeof a->beta1) ||
        memcmp(&a->beta2, &b->beta2, sizeof a->beta2) || memcmp(&a->eps, &b->eps, sizeof a->eps) ||
        memcmp(&a->weight_decay, &b->weight_decay, sizeof a->weight_decay) || (a->amsgrad != 0) != b->amsgrad)
      st = aj_fail(ctx, ADAMJIT_ERR_INTERNAL, "cannot save checkpoint '%s': group %d does not survive JSON printing "
                   "exactly", path, g);
  }
  free(back);
  return st;
}

adamjit_status adamjit_optimizer_save(adamjit_optimizer* opt, const char* path) {
  if (!opt) return aj_fail(NULL, ADAMJIT_ERR_NULL_ARGUMENT, "adamjit_optimizer_save: opt is NULL");
  adamjit_context* ctx = opt->ctx;
  if (!path) return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "adamjit_optimizer_save: path is NULL");

  ck_list L = {0};
  adamjit_status st = ADAMJIT_OK;
  for (int i = 0; !st && i < opt->n_tensors; i++)
    st = ck_tensor_entries(ctx, &opt->tensors[i], i, opt->tensors[i].vmax != NULL, &L);
  if (!st) st = ck_check_groups_exact(opt, path);
  if (st) {
    ck_list_free(ctx, &L, 0);
    return st;
  }

  uint64_t data_bytes = ck_layout(&L);
  ck_writer w = {.ctx = ctx, .path = path, .fd = -1};
  w.cap = data_bytes < CK_CHUNK ? (size_t)data_bytes : CK_CHUNK;
  if (w.cap < 8) w.cap = 8;
  w.buf = malloc(w.cap);
  w.hash = XXH3_createState();
  if (!w.buf || !w.hash)
    st = aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "cannot save checkpoint '%s': out of host memory for a %zu-byte "
                 "buffer", path, w.cap);
  if (!st) st = ck_save_file(&w, opt, &L);
  free(w.buf);
  XXH3_freeState(w.hash);
  ck_list_free(ctx, &L, 0);
  if (!st)
    aj_log(ctx, ADAMJIT_LOG_INFO, "saved optimizer state (%d tensors, %" PRIu64 " data bytes) to '%s'",
           opt->n_tensors, data_bytes, path);
  return st;
}

/* ------------------------------------------------------------- load */

/* safetensors' dtypes and their sizes: a file is checked against its own declared layout
 * before anything about this optimizer is asked. */
static size_t ck_dtype_size(const char* name) {
  static const struct { const char* name; size_t size; } table[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1}, {"I16", 2}, {"U16", 2},
      {"F16", 2},  {"BF16", 2}, {"I32", 4}, {"U32", 4},     {"F32", 4},     {"F64", 8},     {"I64", 8}, {"U64", 8},
  };
  for (size_t k = 0; k < sizeof table / sizeof table[0]; k++)
    if (strcmp(name, table[k].name) == 0) return table[k].size;
  return 0;
}

/* A tensor entry of the file's header. */
typedef struct ck_file_entry {
  const char* key; /* points into the parsed header */
  const char* dtype;
  int ndim;
  uint64_t shape0; /* the first dimension (the only one our entries have) */
  uint64_t count;
  uint64_t begin, end;
  ck_entry* target; /* where its bytes go */
} ck_file_entry;

typedef struct ck_loader {
  adamjit_optimizer* opt;
  adamjit_context* ctx;
  const char* path;
  int fd;
  uint64_t file_size, header_len, data_bytes;
  char* header;
  cJSON* root;
  const cJSON* meta;
  ck_file_entry* fe;     /* sorted by begin */
  ck_file_entry** by_key; /* sorted by key */
  size_t n_fe;
  adamjit_hparams* groups;
  int* blocks;           /* per tensor: the block size it loads with */
  uint64_t checksum;
  ck_list L;             /* what this optimizer expects, with the staged buffers */
} ck_loader;

static adamjit_status ck_corrupt(ck_loader* ld, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static adamjit_status ck_corrupt(ck_loader* ld, const char* fmt, ...) {
  char what[AJ_ERR_LEN / 2];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  return aj_fail(ld->ctx, ADAMJIT_ERR_CHECKPOINT_CORRUPT, "checkpoint '%s' is corrupt: %s", ld->path, what);
}

static adamjit_status ck_open(ck_loader* ld) {
  ld->fd = open(ld->path, O_RDONLY | O_CLOEXEC);
  if (ld->fd < 0)
    return aj_fail(ld->ctx, ADAMJIT_ERR_IO, "cannot open checkpoint '%s': %s", ld->path, strerror(errno));
  struct stat sb;
  if (fstat(ld->fd, &sb) != 0)
    return aj_fail(ld->ctx, ADAMJIT_ERR_IO, "cannot stat checkpoint '%s': %s", ld->path, strerror(errno));
  if (!S_ISREG(sb.st_mode))
    return aj_fail(ld->ctx, ADAMJIT_ERR_IO, "cannot load checkpoint '%s': not a regular file%s", ld->path,
                   S_ISDIR(sb.st_mode) ? " (a directory)" : "");
  ld->file_size = (uint64_t)sb.st_size;
  return ADAMJIT_OK;
}

static adamjit_status ck_read_fail(ck_loader* ld, int err, const char* what) {
  if (err < 0) return ck_corrupt(ld, "the file ended while reading %s", what);
  return aj_fail(ld->ctx, ADAMJIT_ERR_IO, "cannot read checkpoint '%s' (%s): %s", ld->path, what, strerror(err));
}

/* Reads and parses the header: length in bounds, a JSON object followed only by padding. */
static adamjit_status ck_read_header(ck_loader* ld) {
  if (ld->file_size < 8)
    return ck_corrupt(ld, "the file has %" PRIu64 " bytes, fewer than the 8-byte header length", ld->file_size);
  unsigned char len8[8];
  int err = ck_pread_all(ld->fd, len8, 8, 0);
  if (err) return ck_read_fail(ld, err, "the header length");
  uint64_t n = ck_get_u64(len8);
  if (n < 2 || n > CK_MAX_HEADER)
    return ck_corrupt(ld, "header length %" PRIu64 " is outside 2..%" PRIu64, n, CK_MAX_HEADER);
  if (n > ld->file_size - 8)
    return ck_corrupt(ld, "header length %" PRIu64 " runs past the end of the %" PRIu64 "-byte file", n,
                      ld->file_size);
  ld->header_len = n;
  ld->data_bytes = ld->file_size - 8 - n;
  ld->header = malloc((size_t)n + 1);
  if (!ld->header) return aj_fail(ld->ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "checkpoint '%s': out of host memory", ld->path);
  err = ck_pread_all(ld->fd, ld->header, (size_t)n, 8);
  if (err) return ck_read_fail(ld, err, "the header");
  ld->header[n] = '\0';
  const char* end = NULL;
  ld->root = cJSON_ParseWithLengthOpts(ld->header, (size_t)n, &end, 0);
  if (!ld->root) /* on failure `end` is the error position (cJSON's global one is not thread-safe) */
    return ck_corrupt(ld, "the header is not valid JSON (error near byte %ld of the header)",
                      end ? (long)(end - ld->header) : -1L);
  for (const char* p = end; p < ld->header + n; p++)
    if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
      return ck_corrupt(ld, "the header has data after its JSON object (byte %ld)", (long)(p - ld->header));
  if (!cJSON_IsObject(ld->root)) return ck_corrupt(ld, "the header is not a JSON object");
  return ADAMJIT_OK;
}

/* An integral, non-negative JSON number below 2^53. */
static int ck_json_u64(const cJSON* it, uint64_t* out) {
  if (!cJSON_IsNumber(it)) return 0;
  double d = it->valuedouble;
  if (!(d >= 0 && d < CK_MAX_EXACT) || d != (double)(uint64_t)d) return 0;
  *out = (uint64_t)d;
  return 1;
}

/* Checks one header entry by the safetensors rules alone. */
static adamjit_status ck_parse_entry(ck_loader* ld, const cJSON* item, ck_file_entry* fe) {
  const char* key = item->string;
  const cJSON* dtype = cJSON_GetObjectItemCaseSensitive(item, "dtype");
  const cJSON* shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
  const cJSON* offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
  if (!cJSON_IsObject(item) || !cJSON_IsString(dtype) || !cJSON_IsArray(shape) || !cJSON_IsArray(offs))
    return ck_corrupt(ld, "entry \"%s\" needs \"dtype\" (string), \"shape\" and \"data_offsets\" (arrays)", key);
  size_t esize = ck_dtype_size(dtype->valuestring);
  if (!esize) return ck_corrupt(ld, "entry \"%s\" has unknown dtype \"%s\"", key, dtype->valuestring);
  fe->key = key;
  fe->dtype = dtype->valuestring;
  fe->ndim = cJSON_GetArraySize(shape);
  if (fe->ndim > CK_MAX_DIMS) return ck_corrupt(ld, "entry \"%s\" has %d dimensions", key, fe->ndim);
  fe->count = 1;
  int d = 0;
  for (const cJSON* dim = shape->child; dim; dim = dim->next, d++) {
    uint64_t v;
    if (!ck_json_u64(dim, &v)) return ck_corrupt(ld, "entry \"%s\": shape[%d] is not a non-negative integer", key, d);
    if (d == 0) fe->shape0 = v;
    if (v && fe->count > (uint64_t)CK_MAX_EXACT / v) return ck_corrupt(ld, "entry \"%s\": shape is too large", key);
    fe->count *= v;
  }
  if (cJSON_GetArraySize(offs) != 2 || !ck_json_u64(offs->child, &fe->begin) ||
      !ck_json_u64(offs->child->next, &fe->end) || fe->end < fe->begin)
    return ck_corrupt(ld, "entry \"%s\": data_offsets must be [begin, end] with 0 <= begin <= end", key);
  if (fe->end - fe->begin != fe->count * esize)
    return ck_corrupt(ld, "entry \"%s\": data_offsets span %" PRIu64 " bytes but %" PRIu64 " elements of %s take "
                      "%" PRIu64, key, fe->end - fe->begin, fe->count, fe->dtype, fe->count * (uint64_t)esize);
  return ADAMJIT_OK;
}

static int ck_cmp_begin(const void* a, const void* b) {
  const ck_file_entry* x = a;
  const ck_file_entry* y = b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  return x->end < y->end ? -1 : x->end > y->end;
}

static int ck_cmp_key(const void* a, const void* b) {
  return strcmp((*(ck_file_entry* const*)a)->key, (*(ck_file_entry* const*)b)->key);
}

/* Collects every entry, then checks that they tile the data region exactly, without gaps or
 * overlaps, and that no key repeats. */
static adamjit_status ck_parse_entries(ck_loader* ld) {
  size_t n = 0;
  for (const cJSON* it = ld->root->child; it; it = it->next) n += strcmp(it->string, "__metadata__") != 0;
  ld->fe = calloc(n + 1, sizeof *ld->fe);
  ld->by_key = calloc(n + 1, sizeof *ld->by_key);
  if (!ld->fe || !ld->by_key)
    return aj_fail(ld->ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "checkpoint '%s': out of host memory", ld->path);
  for (const cJSON* it = ld->root->child; it; it = it->next) {
    if (strcmp(it->string, "__metadata__") == 0) {
      if (ld->meta) return ck_corrupt(ld, "the header has two \"__metadata__\" objects");
      ld->meta = it;
      continue;
    }
    adamjit_status st = ck_parse_entry(ld, it, &ld->fe[ld->n_fe]);
    if (st) return st;
    ld->n_fe++;
  }
  qsort(ld->fe, ld->n_fe, sizeof *ld->fe, ck_cmp_begin);
  uint64_t pos = 0;
  for (size_t k = 0; k < ld->n_fe; k++) {
    if (ld->fe[k].begin != pos)
      return ck_corrupt(ld, "entry \"%s\" starts at data offset %" PRIu64 " but the previous entry ends at %" PRIu64
                        " (entries must be contiguous)", ld->fe[k].key, ld->fe[k].begin, pos);
    pos = ld->fe[k].end;
    ld->by_key[k] = &ld->fe[k];
  }
  if (pos != ld->data_bytes)
    return ck_corrupt(ld, "the entries cover %" PRIu64 " data bytes but the file holds %" PRIu64
                      " after its header (file size %" PRIu64 ")", pos, ld->data_bytes, ld->file_size);
  qsort(ld->by_key, ld->n_fe, sizeof *ld->by_key, ck_cmp_key);
  for (size_t k = 1; k < ld->n_fe; k++)
    if (strcmp(ld->by_key[k - 1]->key, ld->by_key[k]->key) == 0)
      return ck_corrupt(ld, "entry \"%s\" appears twice", ld->by_key[k]->key);
  return ADAMJIT_OK;
}

static ck_file_entry* ck_find(ck_loader* ld, const char* key) {
  ck_file_entry probe = {.key = key};
  ck_file_entry* pp = &probe;
  ck_file_entry** hit = bsearch(&pp, ld->by_key, ld->n_fe, sizeof *ld->by_key, ck_cmp_key);
  return hit ? *hit : NULL;
}

static const char* ck_meta_string(ck_loader* ld, const char* key) {
  return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ld->meta, key));
}

/* The metadata: ours, a version we know, and describing this optimizer's tensors and groups. */
static adamjit_status ck_check_metadata(ck_loader* ld) {
  if (!cJSON_IsObject(ld->meta)) return ck_corrupt(ld, "the header has no \"__metadata__\" object");
  for (const cJSON* it = ld->meta->child; it; it = it->next)
    if (!cJSON_IsString(it)) return ck_corrupt(ld, "__metadata__ value \"%s\" is not a string", it->string);
  const char* format = ck_meta_string(ld, "format");
  const char* version = ck_meta_string(ld, "format_version");
  const char* groups = ck_meta_string(ld, "param_groups");
  const char* tensors = ck_meta_string(ld, "tensors");
  const char* sum = ck_meta_string(ld, "checksum");
  if (!format || strcmp(format, CK_FORMAT) != 0)
    return ck_corrupt(ld, "__metadata__ \"format\" is %s%s%s, expected \"" CK_FORMAT "\" (not an adamjit optimizer "
                      "checkpoint)", format ? "\"" : "", format ? format : "missing", format ? "\"" : "");
  if (!version || strcmp(version, CK_FORMAT_VERSION) != 0)
    return ck_corrupt(ld, "__metadata__ \"format_version\" is %s, this library reads version " CK_FORMAT_VERSION,
                      version ? version : "missing");
  if (!groups || !tensors) return ck_corrupt(ld, "__metadata__ lacks \"param_groups\" or \"tensors\"");
  if (!ck_parse_checksum(sum, &ld->checksum))
    return ck_corrupt(ld, "__metadata__ \"checksum\" is %s, expected \"" CK_CHECKSUM_PREFIX "\" and 16 hex digits",
                      sum ? sum : "missing");
  const char* meta_sum = ck_meta_string(ld, "metadata_checksum");
  uint64_t meta_hash;
  if (!ck_parse_checksum(meta_sum, &meta_hash))
    return ck_corrupt(ld, "__metadata__ \"metadata_checksum\" is %s, expected \"" CK_CHECKSUM_PREFIX
                      "\" and 16 hex digits", meta_sum ? meta_sum : "missing");
  if (meta_hash != ck_metadata_hash(groups, tensors))
    return ck_corrupt(ld, "__metadata__ \"param_groups\" or \"tensors\" does not match \"metadata_checksum\" "
                      "(the configuration text was altered)");
  ld->blocks = calloc((size_t)ld->opt->n_tensors + 1, sizeof *ld->blocks);
  if (!ld->blocks) return aj_fail(ld->ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "checkpoint '%s': out of host memory", ld->path);
  adamjit_status st = ck_check_tensors(ld->ctx, ld->path, tensors, ld->opt, ld->blocks);
  if (!st) st = ck_parse_groups(ld->ctx, ld->path, groups, ld->opt->n_groups, &ld->groups);
  return st;
}

/* Builds the list of entries this optimizer expects (the running maximum where the file has
 * state3 or absmax3, so that a file with only one of them is told which one it lacks) and
 * pairs every file entry with one of them. */
static adamjit_status ck_match_entries(ck_loader* ld) {
  adamjit_status st = ADAMJIT_OK;
  for (int i = 0; !st && i < ld->opt->n_tensors; i++) {
    char key[48], key2[48];
    snprintf(key, sizeof key, "state.%d.state3", i);
    snprintf(key2, sizeof key2, "state.%d.absmax3", i);
    int has_vmax = ck_find(ld, key) != NULL || (ld->opt->tensors[i].state_bits == 8 && ck_find(ld, key2) != NULL);
    aj_tensor as_loaded = ld->opt->tensors[i]; /* with the block it loads with: absmax sizes follow */
    as_loaded.block_size = ld->blocks[i];
    st = ck_tensor_entries(ld->ctx, &as_loaded, i, has_vmax, &ld->L);
  }
  /* The builder lent the live buffers; this list owns only what staging allocates. */
  for (size_t k = 0; k < ld->L.n; k++) ld->L.e[k].mem = NULL;
  for (size_t k = 0; !st && k < ld->L.n; k++) {
    ck_entry* e = &ld->L.e[k];
    ck_file_entry* fe = ck_find(ld, e->key);
    if (!fe) return ck_corrupt(ld, "entry \"%s\" is missing", e->key);
    if (strcmp(fe->dtype, e->dtype) != 0)
      return ck_corrupt(ld, "entry \"%s\" has dtype %s, expected %s", e->key, fe->dtype, e->dtype);
    if (e->scalar ? fe->ndim != 0 : (fe->ndim != 1 || fe->shape0 != e->count))
      return ck_corrupt(ld, "entry \"%s\" has %d dimensions and %" PRIu64 " elements, expected shape %s%" PRIu64 "%s",
                        e->key, fe->ndim, fe->count, e->scalar ? "[] (" : "[", e->count,
                        e->scalar ? " element)" : "]");
    fe->target = e;
  }
  for (size_t k = 0; !st && k < ld->n_fe; k++)
    if (!ld->fe[k].target) return ck_corrupt(ld, "entry \"%s\" does not belong to this checkpoint's tensors",
                                             ld->fe[k].key);
  return st;
}

/* New zeroed buffers for every state entry; the live ones stay untouched until the commit.
 * The maps are read into host memory, only to be compared with the built-in ones. */
static adamjit_status ck_stage(ck_loader* ld) {
  for (size_t k = 0; k < ld->L.n; k++) {
    ck_entry* e = &ld->L.e[k];
    if (e->role == CK_STEP) continue;
    if (e->qmap) {
      if (!(e->host = malloc((size_t)e->bytes)))
        return aj_fail(ld->ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "checkpoint '%s': out of host memory", ld->path);
      continue;
    }
    adamjit_status st = ld->ctx->ops->mem_alloc(ld->ctx, (size_t)e->bytes, e->paged, &e->mem, &e->kind);
    if (st) return st;
  }
  return ADAMJIT_OK;
}

/* Delivers [pos, pos+len) of the data region (in buf) to the entries it overlaps, starting
 * at *cursor in file order. */
static adamjit_status ck_scatter(ck_loader* ld, const unsigned char* buf, uint64_t pos, size_t len, size_t* cursor) {
  uint64_t stop = pos + len;
  while (*cursor < ld->n_fe) {
    ck_file_entry* fe = &ld->fe[*cursor];
    uint64_t a = fe->begin > pos ? fe->begin : pos;
    uint64_t b = fe->end < stop ? fe->end : stop;
    if (a < b) {
      ck_entry* e = fe->target;
      if (e->role == CK_STEP) {
        memcpy(e->raw + (a - fe->begin), buf + (a - pos), (size_t)(b - a));
      } else if (e->host) {
        memcpy(e->host + (a - fe->begin), buf + (a - pos), (size_t)(b - a));
      } else {
        adamjit_status st = ld->ctx->ops->mem_write(ld->ctx, e->mem, (size_t)(a - fe->begin), buf + (a - pos),
                                                    (size_t)(b - a));
        if (st) return st;
      }
    }
    if (fe->end > stop) break;
    (*cursor)++;
  }
  return ADAMJIT_OK;
}

/* Streams the data region into the staged buffers and checks it against the checksum. */
static adamjit_status ck_stream(ck_loader* ld) {
  size_t cap = ld->data_bytes < CK_CHUNK ? (size_t)ld->data_bytes : CK_CHUNK;
  unsigned char* buf = malloc(cap ? cap : 1);
  XXH3_state_t* hash = XXH3_createState();
  adamjit_status st = ADAMJIT_OK;
  if (!buf || !hash) st = aj_fail(ld->ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "checkpoint '%s': out of host memory", ld->path);
  if (!st) XXH3_64bits_reset(hash);
  size_t cursor = 0;
  for (uint64_t pos = 0; !st && pos < ld->data_bytes;) {
    size_t n = ld->data_bytes - pos < cap ? (size_t)(ld->data_bytes - pos) : cap;
    int err = ck_pread_all(ld->fd, buf, n, 8 + ld->header_len + pos);
    if (err) {
      st = ck_read_fail(ld, err, "the data");
      break;
    }
    XXH3_64bits_update(hash, buf, n);
    st = ck_scatter(ld, buf, pos, n, &cursor);
    pos += n;
  }
  if (!st) {
    uint64_t got = XXH3_64bits_digest(hash);
    if (got != ld->checksum) {
      char want_hex[17], got_hex[17];
      ck_hex64(want_hex, ld->checksum);
      ck_hex64(got_hex, got);
      st = ck_corrupt(ld, "the data does not match its checksum (header " CK_CHECKSUM_PREFIX "%s, data "
                      CK_CHECKSUM_PREFIX "%s): the file was altered or damaged", want_hex, got_hex);
    }
  }
  free(buf);
  XXH3_freeState(hash);
  return st;
}

/* The values that are checked, not just stored: step counters, and the maps, which must be
 * this library's bit for bit (the data is intact by now, so a different map was written on
 * purpose by something else: the codes would mean other values here). */
static adamjit_status ck_check_values(ck_loader* ld) {
  for (size_t k = 0; k < ld->L.n; k++) {
    ck_entry* e = &ld->L.e[k];
    if (e->role == CK_STEP) {
      e->step = ck_get_u64(e->raw);
      if (e->step > (uint64_t)INT64_MAX) return ck_corrupt(ld, "entry \"%s\" holds a negative step counter", e->key);
    } else if (e->qmap && memcmp(e->host, e->qmap, (size_t)e->bytes) != 0) {
      size_t j = 0;
      float got = 0.0f;
      for (; j < AJ_QMAP_SIZE; j++) {
        memcpy(&got, e->host + j * sizeof got, sizeof got);
        if (memcmp(&got, &e->qmap[j], sizeof got) != 0) break;
      }
      return aj_fail(ld->ctx, ADAMJIT_ERR_CHECKPOINT_MISMATCH,
                     "checkpoint '%s' was written with a different quantization map: entry \"%s\"[%zu] is %.9g, "
                     "this library's %s dynamic map has %.9g there", ld->path, e->key, j, (double)got,
                     e->role == CK_QMAP1 ? "signed" : "unsigned", (double)e->qmap[j]);
    }
  }
  return ADAMJIT_OK;
}

/* Swaps the staged state in. Cannot fail: everything it needs exists already. */
static void ck_commit(ck_loader* ld) {
  adamjit_context* ctx = ld->ctx;
  adamjit_optimizer* opt = ld->opt;
  /* A tensor without state3 in the file restarts its running maximum from zero if amsgrad
   * is used later, like a tensor that never had it (at 8 bits its absmax3 goes with it). */
  for (int i = 0; i < opt->n_tensors; i++) {
    aj_tensor* t = &opt->tensors[i];
    if (t->vmax) ctx->ops->mem_free(ctx, t->vmax);
    if (t->absmax3) ctx->ops->mem_free(ctx, t->absmax3);
    t->vmax = NULL;
    t->absmax3 = NULL;
  }
  for (size_t k = 0; k < ld->L.n; k++) {
    ck_entry* e = &ld->L.e[k];
    aj_tensor* t = &opt->tensors[e->tensor];
    adamjit_mem* slot = NULL;
    switch (e->role) {
      case CK_STEP: t->step = e->step; continue;
      case CK_STATE1: slot = &t->m; t->memory = e->kind; break;
      case CK_STATE2: slot = &t->v; break;
      case CK_STATE3: slot = &t->vmax; break;
      case CK_ABSMAX1: slot = &t->absmax1; break;
      case CK_ABSMAX2: slot = &t->absmax2; break;
      case CK_ABSMAX3: slot = &t->absmax3; break;
      case CK_QMAP1:
      case CK_QMAP2: continue; /* the library's constants, checked against the file */
      case CK_GNORM: slot = &t->gnorm; break;
    }
    if (*slot) ctx->ops->mem_free(ctx, *slot);
    *slot = e->mem;
    e->mem = NULL; /* owned by the tensor now */
  }
  /* A pending block taken from a file that has stepped is final; from one that has not, the
   * first step still measures. */
  for (int i = 0; i < opt->n_tensors; i++) {
    aj_tensor* t = &opt->tensors[i];
    t->block_size = ld->blocks[i];
    t->block_pending = t->block_pending && t->step == 0;
  }
  memcpy(opt->groups, ld->groups, (size_t)opt->n_groups * sizeof *opt->groups);
}

static void ck_loader_free(ck_loader* ld) {
  ck_list_free(ld->ctx, &ld->L, 1);
  if (ld->fd >= 0) close(ld->fd);
  cJSON_Delete(ld->root);
  free(ld->header);
  free(ld->fe);
  free(ld->by_key);
  free(ld->groups);
  free(ld->blocks);
}

adamjit_status adamjit_optimizer_load(adamjit_optimizer* opt, const char* path) {
  if (!opt) return aj_fail(NULL, ADAMJIT_ERR_NULL_ARGUMENT, "adamjit_optimizer_load: opt is NULL");
  if (!path) return aj_fail(opt->ctx, ADAMJIT_ERR_NULL_ARGUMENT, "adamjit_optimizer_load: path is NULL");
  ck_loader ld = {.opt = opt, .ctx = opt->ctx, .path = path, .fd = -1};
  /* Order matters for the message: first the file against its own layout (CORRUPT), then
   * against this optimizer (MISMATCH), then the data itself (CORRUPT). */
  adamjit_status st = ck_open(&ld);
  if (!st) st = ck_read_header(&ld);
  if (!st) st = ck_parse_entries(&ld);
  if (!st) st = ck_check_metadata(&ld);
  if (!st) st = ck_match_entries(&ld);
  if (!st) st = ck_stage(&ld);
  if (!st) st = ck_stream(&ld);
  if (!st) st = ck_check_values(&ld);
  if (!st) {
    ck_commit(&ld);
    aj_log(ld.ctx, ADAMJIT_LOG_INFO, "loaded optimizer state (%d tensors) from '%s'", opt->n_tensors, path);
  }
  ck_loader_free(&ld);
  return st;
}
