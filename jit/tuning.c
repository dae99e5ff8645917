/* Tuning databases: parsing, validation, matching and merging (jit/tuning.h). */
#include "jit/tuning.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The launch every lookup key is normalized to: aj_variant_init_default's, which is valid
 * for every family (vec=4 divides ept=4, as blockwise adamw8's shared layout wants). */
static void neutral_launch(aj_variant* v) {
  v->wg_size = 256;
  v->elems_per_thread = 4;
  v->vec_width = 4;
}

uint64_t aj_tuning_kernel_hash(const aj_variant* v) {
  aj_variant n = *v;
  neutral_launch(&n);
  return aj_variant_hash(&n);
}

int aj_tuning_same_kernel(const aj_variant* a, const aj_variant* b) {
  aj_variant x = *a, y = *b;
  neutral_launch(&x);
  neutral_launch(&y);
  return aj_variant_equal(&x, &y);
}

int aj_tuning_bucket(int64_t numel) {
  int k = 0;
  for (int64_t p = 10; numel >= p && k < 18; p *= 10) k++;
  return k;
}

size_t aj_tuning_kernel_text(const aj_variant* v, char* buf, size_t size) {
  char full[AJ_VARIANT_TEXT_MAX];
  size_t n = aj_variant_format(v, full, sizeof full);
  if (!n) {
    if (size) buf[0] = '\0';
    return 0;
  }
  /* the canonical text always ends in /wg=../ept=../vec=.. */
  char* launch = strstr(full, "/wg=");
  if (launch) *launch = '\0';
  return (size_t)snprintf(buf, size, "%s", full);
}

int aj_tuning_check_family(const aj_variant* v, char* why, size_t why_size) {
  if (v->family != AJ_KERNEL_ADAMW32 && v->family != AJ_KERNEL_ADAMW8) {
    snprintf(why, why_size, "%s kernels are not tuned (only the update kernels adamw32 and adamw8 are)",
             aj_kernel_family_name(v->family));
    return 1;
  }
  if (v->multi) {
    snprintf(why, why_size,
             "multi kernels launch with the parameters of their tensors' update kernel: tune the kernel without "
             "\"multi\"");
    return 1;
  }
  return 0;
}

/* ------------------------------------------------------------- parsing */

/* Line and column (1-based) of byte offset off in text. */
static void line_of(const char* text, size_t off, int* line, int* col) {
  *line = 1;
  *col = 1;
  for (size_t i = 0; i < off && text[i]; i++) {
    if (text[i] == '\n') {
      ++*line;
      *col = 1;
    } else {
      ++*col;
    }
  }
}

static int has_launch_token(const char* key) {
  for (const char* p = key; *p; p++)
    if ((p == key || p[-1] == '/') &&
        (strncmp(p, "wg=", 3) == 0 || strncmp(p, "ept=", 4) == 0 || strncmp(p, "vec=", 4) == 0))
      return 1;
  return 0;
}

/* An optional string member: 1 if absent, 1 and copied if a non-empty string that fits,
 * else 0 with why. */
static int opt_string(const cJSON* e, const char* name, char* dst, size_t size, char* why, size_t why_size) {
  const cJSON* m = cJSON_GetObjectItemCaseSensitive(e, name);
  dst[0] = '\0';
  if (!m) return 1;
  if (!cJSON_IsString(m) || !m->valuestring[0]) {
    snprintf(why, why_size, "\"%s\" is not a non-empty string", name);
    return 0;
  }
  if (strlen(m->valuestring) >= size) {
    snprintf(why, why_size, "\"%s\" is longer than %zu characters", name, size - 1);
    return 0;
  }
  memcpy(dst, m->valuestring, strlen(m->valuestring) + 1);
  return 1;
}

static int int_member(const cJSON* e, const char* name, int* out, char* why, size_t why_size) {
  const cJSON* m = cJSON_GetObjectItemCaseSensitive(e, name);
  if (!m) {
    snprintf(why, why_size, "\"%s\" is missing", name);
    return 0;
  }
  if (!cJSON_IsNumber(m) || m->valuedouble != floor(m->valuedouble) || m->valuedouble < 0 ||
      m->valuedouble > 1e6) {
    snprintf(why, why_size, "\"%s\" is not a whole number", name);
    return 0;
  }
  *out = (int)m->valuedouble;
  return 1;
}

static int parse_bucket(const char* s, int* k) {
  if (s[0] != '1' || s[1] != 'e' || s[2] < '0' || s[2] > '9') return 0;
  if (s[2] == '0' && s[3]) return 0; /* no leading zeros */
  char* end = NULL;
  long v = strtol(s + 2, &end, 10);
  if (*end || v > 18) return 0;
  *k = (int)v;
  return 1;
}

/* One entry, validated; 0 with why on failure. */
static int parse_entry(const cJSON* e, aj_tuning_entry* out, char* why, size_t why_size) {
  memset(out, 0, sizeof *out);
  if (!cJSON_IsObject(e)) {
    snprintf(why, why_size, "is not an object");
    return 0;
  }
  const cJSON* dialect = cJSON_GetObjectItemCaseSensitive(e, "dialect");
  const cJSON* kernel = cJSON_GetObjectItemCaseSensitive(e, "kernel");
  if (!cJSON_IsString(dialect) || (strcmp(dialect->valuestring, "opencl") && strcmp(dialect->valuestring, "cuda"))) {
    snprintf(why, why_size, "\"dialect\" must be \"opencl\" or \"cuda\"");
    return 0;
  }
  if (!opt_string(e, "vendor", out->vendor, sizeof out->vendor, why, why_size) ||
      !opt_string(e, "architecture", out->architecture, sizeof out->architecture, why, why_size) ||
      !opt_string(e, "device", out->device, sizeof out->device, why, why_size))
    return 0;
  out->level = out->device[0]         ? ADAMJIT_TUNING_DEVICE
               : out->architecture[0] ? ADAMJIT_TUNING_ARCHITECTURE
               : out->vendor[0]       ? ADAMJIT_TUNING_VENDOR
                                      : ADAMJIT_TUNING_DEFAULT;
  if (out->level == ADAMJIT_TUNING_DEFAULT) {
    snprintf(why, why_size, "names no \"vendor\", \"architecture\" or \"device\"");
    return 0;
  }
  if (!cJSON_IsString(kernel)) {
    snprintf(why, why_size, "\"kernel\" is missing or not a string");
    return 0;
  }
  if (has_launch_token(kernel->valuestring)) {
    snprintf(why, why_size, "kernel \"%s\" carries launch tokens (wg=, ept=, vec= belong in \"wg\", \"ept\", \"vec\")",
             kernel->valuestring);
    return 0;
  }
  aj_variant v;
  if (aj_variant_parse(NULL, kernel->valuestring, &v)) {
    snprintf(why, why_size, "kernel: %s", adamjit_last_error());
    return 0;
  }
  if (strcmp(aj_dialect_name(v.dialect), dialect->valuestring)) {
    snprintf(why, why_size, "kernel \"%s\" is not of the entry's dialect \"%s\"", kernel->valuestring,
             dialect->valuestring);
    return 0;
  }
  char fam[160];
  if (aj_tuning_check_family(&v, fam, sizeof fam)) {
    snprintf(why, why_size, "kernel \"%s\": %s", kernel->valuestring, fam);
    return 0;
  }
  if (!int_member(e, "wg", &v.wg_size, why, why_size) || !int_member(e, "ept", &v.elems_per_thread, why, why_size) ||
      !int_member(e, "vec", &v.vec_width, why, why_size))
    return 0;
  if (aj_variant_check(NULL, &v)) {
    snprintf(why, why_size, "launch parameters: %s", adamjit_last_error());
    return 0;
  }
  out->kernel = v;
  out->hash = aj_tuning_kernel_hash(&v);
  out->bucket = AJ_TUNING_ANY_SIZE;
  const cJSON* bucket = cJSON_GetObjectItemCaseSensitive(e, "bucket");
  if (bucket && (!cJSON_IsString(bucket) || !parse_bucket(bucket->valuestring, &out->bucket))) {
    snprintf(why, why_size, "\"bucket\" must be \"1e<k>\" with k in 0..18 (or absent for every size)");
    return 0;
  }
  static const char* const times[] = {"seconds", "default_seconds"};
  for (int i = 0; i < 2; i++) {
    const cJSON* t = cJSON_GetObjectItemCaseSensitive(e, times[i]);
    if (t && (!cJSON_IsNumber(t) || !(t->valuedouble >= 0) || !isfinite(t->valuedouble))) {
      snprintf(why, why_size, "\"%s\" is not a number >= 0", times[i]);
      return 0;
    }
  }
  const cJSON* measured = cJSON_GetObjectItemCaseSensitive(e, "measured");
  if (measured && !cJSON_IsBool(measured)) {
    snprintf(why, why_size, "\"measured\" is not true or false");
    return 0;
  }
  static const char* const strings[] = {"note", "library"};
  for (int i = 0; i < 2; i++) {
    const cJSON* s = cJSON_GetObjectItemCaseSensitive(e, strings[i]);
    if (s && !cJSON_IsString(s)) {
      snprintf(why, why_size, "\"%s\" is not a string", strings[i]);
      return 0;
    }
  }
  return 1;
}

static int same_slot(const aj_tuning_entry* a, const aj_tuning_entry* b) {
  return a->hash == b->hash && a->bucket == b->bucket && aj_tuning_same_kernel(&a->kernel, &b->kernel) &&
         strcmp(a->vendor, b->vendor) == 0 && strcmp(a->architecture, b->architecture) == 0 &&
         strcmp(a->device, b->device) == 0;
}

/* Parses text into a cJSON tree and checks the marker; the entries array in *entries. */
static adamjit_status parse_tree(const char* text, size_t len, cJSON** root, const cJSON** entries, char* why,
                                 size_t why_size) {
  const char* end = NULL;
  *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
  if (!*root) {
    int line, col;
    size_t off = end && end >= text ? (size_t)(end - text) : 0;
    line_of(text, off < len ? off : len, &line, &col);
    snprintf(why, why_size, "not valid JSON (at line %d, column %d)", line, col);
    return ADAMJIT_ERR_TUNING_DB;
  }
  const cJSON* marker = cJSON_GetObjectItemCaseSensitive(*root, "adamjit_tuning");
  if (!cJSON_IsObject(*root) || !marker) {
    snprintf(why, why_size, "not a tuning database (no \"adamjit_tuning\" member)");
  } else if (!cJSON_IsNumber(marker) || marker->valuedouble != AJ_TUNING_FORMAT) {
    char shown[64];
    if (cJSON_IsNumber(marker)) snprintf(shown, sizeof shown, "%g", marker->valuedouble);
    else snprintf(shown, sizeof shown, "not a number");
    snprintf(why, why_size, "format version %s (this library reads %d)", shown, AJ_TUNING_FORMAT);
  } else if (!cJSON_IsArray(*entries = cJSON_GetObjectItemCaseSensitive(*root, "entries"))) {
    snprintf(why, why_size, "\"entries\" is missing or not an array");
  } else {
    return ADAMJIT_OK;
  }
  cJSON_Delete(*root);
  *root = NULL;
  return ADAMJIT_ERR_TUNING_DB;
}

adamjit_status aj_tuning_db_parse(const char* text, size_t len, aj_tuning_db* out, char* why, size_t why_size) {
  memset(out, 0, sizeof *out);
  cJSON* root = NULL;
  const cJSON* list = NULL;
  adamjit_status st = parse_tree(text, len, &root, &list, why, why_size);
  if (st) return st;
  int n = cJSON_GetArraySize(list);
  aj_tuning_entry* entries = n ? calloc((size_t)n, sizeof *entries) : NULL;
  if (n && !entries) {
    cJSON_Delete(root);
    snprintf(why, why_size, "out of host memory");
    return ADAMJIT_ERR_OUT_OF_MEMORY;
  }
  int i = 0;
  const cJSON* e;
  cJSON_ArrayForEach(e, list) {
    char reason[400];
    if (!parse_entry(e, &entries[i], reason, sizeof reason)) {
      snprintf(why, why_size, "entries[%d]: %s", i, reason);
      st = ADAMJIT_ERR_TUNING_DB;
      break;
    }
    for (int j = 0; j < i && !st; j++)
      if (same_slot(&entries[j], &entries[i])) {
        snprintf(why, why_size, "entries[%d] has the same identity, kernel and bucket as entries[%d]", i, j);
        st = ADAMJIT_ERR_TUNING_DB;
      }
    if (st) break;
    i++;
  }
  cJSON_Delete(root);
  if (st) {
    free(entries);
    return st;
  }
  out->entries = entries;
  out->n = n;
  return ADAMJIT_OK;
}

void aj_tuning_db_free(aj_tuning_db* db) {
  if (!db) return;
  free(db->entries);
  memset(db, 0, sizeof *db);
}

adamjit_status aj_tuning_read_file(const char* path, char** text, size_t* len, int* missing, char* why,
                                   size_t why_size) {
  *text = NULL;
  *len = 0;
  *missing = 0;
  FILE* f = fopen(path, "rb");
  if (!f) {
    *missing = errno == ENOENT;
    snprintf(why, why_size, "cannot open: %s", strerror(errno));
    return ADAMJIT_ERR_IO;
  }
  size_t cap = 4096, n = 0;
  char* buf = malloc(cap);
  adamjit_status st = buf ? ADAMJIT_OK : ADAMJIT_ERR_OUT_OF_MEMORY;
  while (!st) {
    if (n + 1 >= cap) {
      if (cap >= AJ_TUNING_FILE_MAX) {
        snprintf(why, why_size, "larger than %zu MiB", AJ_TUNING_FILE_MAX >> 20);
        st = ADAMJIT_ERR_TUNING_DB;
        break;
      }
      char* grown = realloc(buf, cap * 2);
      if (!grown) {
        st = ADAMJIT_ERR_OUT_OF_MEMORY;
        break;
      }
      buf = grown;
      cap *= 2;
    }
    size_t got = fread(buf + n, 1, cap - 1 - n, f);
    n += got;
    if (got == 0) {
      if (ferror(f)) {
        snprintf(why, why_size, "read error: %s", strerror(errno));
        st = ADAMJIT_ERR_IO;
      }
      break;
    }
  }
  fclose(f);
  if (st == ADAMJIT_ERR_OUT_OF_MEMORY) snprintf(why, why_size, "out of host memory");
  if (st) {
    free(buf);
    return st;
  }
  buf[n] = '\0';
  *text = buf;
  *len = n;
  return ADAMJIT_OK;
}

int aj_tuning_entry_matches(const aj_tuning_entry* e, const adamjit_tuning_device* id) {
  if (strcmp(aj_dialect_name(e->kernel.dialect), id->dialect)) return 0;
  if (e->vendor[0] && strcmp(e->vendor, id->vendor)) return 0;
  if (e->architecture[0] && strcmp(e->architecture, id->architecture)) return 0;
  if (e->device[0] && strcmp(e->device, id->device)) return 0;
  return 1;
}

/* -------------------------------------------------------------- writing */

static int string_is(const cJSON* o, const char* name, const char* want) {
  const cJSON* m = cJSON_GetObjectItemCaseSensitive(o, name);
  return cJSON_IsString(m) ? strcmp(m->valuestring, want) == 0 : !*want;
}

adamjit_status aj_tuning_db_merge(const char* old_text, const aj_tuning_record* rec, char** out, char* why,
                                  size_t why_size) {
  *out = NULL;
  cJSON* root = NULL;
  const cJSON* list = NULL;
  adamjit_status st = ADAMJIT_OK;
  if (old_text && *old_text) {
    st = parse_tree(old_text, strlen(old_text), &root, &list, why, why_size);
    if (st) return st;
  } else {
    root = cJSON_CreateObject();
    if (root && (!cJSON_AddNumberToObject(root, "adamjit_tuning", AJ_TUNING_FORMAT) ||
                 !(list = cJSON_AddArrayToObject(root, "entries")))) {
      cJSON_Delete(root);
      root = NULL;
    }
    if (!root) {
      snprintf(why, why_size, "out of host memory");
      return ADAMJIT_ERR_OUT_OF_MEMORY;
    }
  }
  char kernel[AJ_VARIANT_TEXT_MAX], bucket[16] = "";
  aj_tuning_kernel_text(rec->kernel, kernel, sizeof kernel);
  if (rec->bucket != AJ_TUNING_ANY_SIZE) snprintf(bucket, sizeof bucket, "1e%d", rec->bucket);
  cJSON* e = cJSON_CreateObject();
  int ok = e != NULL;
  ok = ok && cJSON_AddStringToObject(e, "dialect", rec->id->dialect);
  ok = ok && cJSON_AddStringToObject(e, "vendor", rec->id->vendor);
  ok = ok && cJSON_AddStringToObject(e, "architecture", rec->id->architecture);
  ok = ok && cJSON_AddStringToObject(e, "device", rec->id->device);
  ok = ok && cJSON_AddStringToObject(e, "kernel", kernel);
  if (bucket[0]) ok = ok && cJSON_AddStringToObject(e, "bucket", bucket);
  ok = ok && cJSON_AddNumberToObject(e, "wg", rec->kernel->wg_size);
  ok = ok && cJSON_AddNumberToObject(e, "ept", rec->kernel->elems_per_thread);
  ok = ok && cJSON_AddNumberToObject(e, "vec", rec->kernel->vec_width);
  ok = ok && cJSON_AddNumberToObject(e, "seconds", rec->seconds);
  ok = ok && cJSON_AddNumberToObject(e, "default_seconds", rec->default_seconds);
  ok = ok && cJSON_AddBoolToObject(e, "measured", 1);
  ok = ok && cJSON_AddStringToObject(e, "library", rec->library);
  /* the entry this one replaces: the same identity (the vendor and architecture too: a
   * driver update may rename the architecture), kernel and bucket */
  int index = -1, i = 0;
  const cJSON* old;
  cJSON_ArrayForEach(old, list) {
    const cJSON* k = cJSON_GetObjectItemCaseSensitive(old, "kernel");
    aj_variant v;
    if (string_is(old, "dialect", rec->id->dialect) && string_is(old, "vendor", rec->id->vendor) &&
        string_is(old, "architecture", rec->id->architecture) && string_is(old, "device", rec->id->device) &&
        string_is(old, "bucket", bucket) && cJSON_IsString(k) && aj_variant_parse(NULL, k->valuestring, &v) == 0 &&
        aj_tuning_same_kernel(&v, rec->kernel)) {
      index = i;
      break;
    }
    i++;
  }
  if (ok) {
    if (index >= 0) ok = cJSON_ReplaceItemInArray((cJSON*)list, index, e);
    else ok = cJSON_AddItemToArray((cJSON*)list, e);
    if (ok) e = NULL; /* owned by the tree now */
  }
  cJSON_Delete(e);
  char* text = ok ? cJSON_Print(root) : NULL;
  cJSON_Delete(root);
  if (!text) {
    snprintf(why, why_size, "out of host memory");
    return ADAMJIT_ERR_OUT_OF_MEMORY;
  }
  /* cJSON's allocator is malloc unless cJSON_InitHooks says otherwise, which we never do */
  size_t n = strlen(text);
  *out = malloc(n + 2);
  if (*out) {
    memcpy(*out, text, n);
    memcpy(*out + n, "\n", 2);
  }
  cJSON_free(text);
  if (!*out) {
    snprintf(why, why_size, "out of host memory");
    return ADAMJIT_ERR_OUT_OF_MEMORY;
  }
  return ADAMJIT_OK;
}

adamjit_status aj_tuning_write_atomic(const char* path, const char* text, char* why, size_t why_size) {
  size_t plen = strlen(path);
  char* tmp = malloc(plen + 16);
  if (!tmp) {
    snprintf(why, why_size, "out of host memory");
    return ADAMJIT_ERR_OUT_OF_MEMORY;
  }
  /* same directory, so that rename replaces the file in one step */
  snprintf(tmp, plen + 16, "%s.tmp-XXXXXX", path);
  int fd = mkstemp(tmp);
  if (fd < 0) {
    snprintf(why, why_size, "cannot create a temporary file next to %s: %s", path, strerror(errno));
    free(tmp);
    return ADAMJIT_ERR_IO;
  }
  size_t len = strlen(text), done = 0;
  int err = 0;
  while (done < len && !err) {
    ssize_t w = write(fd, text + done, len - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) err = errno ? errno : EIO;
    else done += (size_t)w;
  }
  if (!err && fsync(fd)) err = errno;
  if (close(fd) && !err) err = errno;
  if (!err && rename(tmp, path)) err = errno;
  if (err) {
    snprintf(why, why_size, "cannot write %s: %s", path, strerror(err));
    unlink(tmp);
  }
  free(tmp);
  return err ? ADAMJIT_ERR_IO : ADAMJIT_OK;
}
