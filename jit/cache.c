/* Kernel caches in memory and on disk. The design, the file format and the failure rules are
 * in cache.h; this file keeps to them. */
#include "jit/cache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/internal.h"

#define KEY_TAG "ajkey1"
#define KEY_TAG_LEN 6
#define FILE_MAGIC "AJKCACHE"
#define FILE_FORMAT 1u
#define FILE_HEADER 16u   /* magic + format + reserved */
#define FILE_OVERHEAD 40u /* header + two lengths + checksum */
#define HEX_LEN 32        /* XXH3-128 as hex */
/* Sanity cap on an entry file, so a damaged or hostile file cannot make us allocate
 * gigabytes. Kernel binaries are kilobytes to a few megabytes. */
#define MAX_ENTRY_BYTES ((uint64_t)1 << 30)

typedef struct aj_cache_entry {
  struct aj_cache_entry* next;
  uint64_t hash;
  unsigned char* key;
  size_t key_size;
  unsigned char* bin;
  size_t bin_size;
} aj_cache_entry;

struct aj_kernel_cache {
  adamjit_context* ctx;
  aj_cache_entry** buckets;
  size_t n_buckets; /* a power of two */
  size_t count;
  char* dir;          /* NULL: the disk cache is off */
  char off_why[1024]; /* why the disk cache is off, for aj_kernel_cache_clear */
};

/* ------------------------------------------------------------------ helpers */

static void put_le64(unsigned char* p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

static void put_le32(unsigned char* p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_le32(const unsigned char* p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int is_hex_lower(const char* s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
  return 1;
}

/* "ajk-<32 hex>.bin" */
static int is_entry_name(const char* name) {
  return strlen(name) == 4 + HEX_LEN + 4 && memcmp(name, "ajk-", 4) == 0 && is_hex_lower(name + 4, HEX_LEN) &&
         strcmp(name + 4 + HEX_LEN, ".bin") == 0;
}

/* ".ajk-<32 hex>.tmp-XXXXXX", where mkstemp fills the X's with letters and digits. */
static int is_temp_name(const char* name) {
  size_t n = strlen(name);
  if (n != 5 + HEX_LEN + 5 + 6 || memcmp(name, ".ajk-", 5) != 0 || !is_hex_lower(name + 5, HEX_LEN) ||
      memcmp(name + 5 + HEX_LEN, ".tmp-", 5) != 0)
    return 0;
  for (size_t i = n - 6; i < n; i++) {
    char c = name[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) return 0;
  }
  return 1;
}

adamjit_status aj_cache_key_serialize(adamjit_context* ctx, const aj_cache_key* key, unsigned char** out,
                                      size_t* size) {
  if (!key || !out || !size) return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "aj_cache_key_serialize: NULL argument");
  const char* fields[5] = {key->source, key->options, key->arch, key->compiler,
                           key->version ? key->version : ADAMJIT_VERSION_STRING};
  size_t lens[5];
  size_t total = KEY_TAG_LEN;
  for (int i = 0; i < 5; i++) {
    lens[i] = fields[i] ? strlen(fields[i]) : 0;
    total += 8 + lens[i];
  }
  unsigned char* buf = malloc(total);
  if (!buf) return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "kernel cache: out of memory serializing a key");
  unsigned char* p = buf;
  memcpy(p, KEY_TAG, KEY_TAG_LEN);
  p += KEY_TAG_LEN;
  for (int i = 0; i < 5; i++) {
    put_le64(p, lens[i]);
    p += 8;
    if (lens[i]) memcpy(p, fields[i], lens[i]);
    p += lens[i];
  }
  *out = buf;
  *size = total;
  return ADAMJIT_OK;
}

static void key_hex(const unsigned char* key, size_t key_size, char hex[HEX_LEN + 1]) {
  XXH128_hash_t h = XXH3_128bits(key, key_size);
  snprintf(hex, HEX_LEN + 1, "%016llx%016llx", (unsigned long long)h.high64, (unsigned long long)h.low64);
}

/* malloc'ed "<dir>/ajk-<hex>.bin", or NULL when out of memory. */
static char* entry_path(const char* dir, const char* hex) {
  size_t n = strlen(dir) + 1 + 4 + HEX_LEN + 4 + 1;
  char* p = malloc(n);
  if (p) snprintf(p, n, "%s/ajk-%s.bin", dir, hex);
  return p;
}

/* -------------------------------------------------------------- directory */

/* mkdir -p with mode 0700 for every directory it creates. Existing ones are left as they
 * are: the safety check below judges only the cache directory itself. */
static int make_dirs(char* path) {
  for (char* p = path + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    int r = mkdir(path, 0700);
    int e = errno;
    *p = '/';
    if (r != 0 && e != EEXIST) return e;
  }
  if (mkdir(path, 0700) != 0 && errno != EEXIST) return errno;
  return 0;
}

static void disk_off(aj_kernel_cache* c, const char* fmt, const char* dir, const char* why) {
  snprintf(c->off_why, sizeof c->off_why, fmt, dir, why);
  aj_log(c->ctx, ADAMJIT_LOG_WARN, "%s", c->off_why);
}

/* Picks the directory (see cache.h), creates it and checks that only we can write to it. */
static adamjit_status open_disk(aj_kernel_cache* c, const char* dir) {
  const char* suffix = "";
  const char* env;
  if (!dir || !*dir) {
    if ((env = getenv("ADAMJIT_CACHE_DIR")) && *env) {
      dir = env;
    } else if ((env = getenv("XDG_CACHE_HOME")) && env[0] == '/') {
      dir = env;
      suffix = "/adamjit";
    } else if ((env = getenv("HOME")) && *env) {
      dir = env;
      suffix = "/.cache/adamjit";
    } else {
      snprintf(c->off_why, sizeof c->off_why,
               "kernel cache: no directory (none given, ADAMJIT_CACHE_DIR, XDG_CACHE_HOME and HOME unset); disk "
               "cache off");
      aj_log(c->ctx, ADAMJIT_LOG_WARN, "%s", c->off_why);
      return ADAMJIT_OK;
    }
  }
  size_t n = strlen(dir) + strlen(suffix) + 1;
  char* path = malloc(n);
  if (!path) return aj_fail(c->ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "kernel cache: out of memory");
  snprintf(path, n, "%s%s", dir, suffix);
  /* Trailing slashes would make the entry names "dir//ajk-..."; harmless, but untidy. */
  for (size_t len = strlen(path); len > 1 && path[len - 1] == '/'; len--) path[len - 1] = '\0';

  int e = make_dirs(path);
  struct stat st;
  if (e) {
    disk_off(c, "kernel cache: cannot create directory '%s': %s; disk cache off", path, strerror(e));
  } else if (stat(path, &st) != 0) {
    disk_off(c, "kernel cache: cannot stat directory '%s': %s; disk cache off", path, strerror(errno));
  } else if (!S_ISDIR(st.st_mode)) {
    disk_off(c, "kernel cache: '%s' %s; disk cache off", path, "is not a directory");
  } else if (st.st_uid != geteuid()) {
    disk_off(c, "kernel cache: directory '%s' %s; disk cache off", path,
             "is not owned by the current user (another user could plant kernels there)");
  } else if (st.st_mode & (S_IWGRP | S_IWOTH)) {
    disk_off(c, "kernel cache: directory '%s' %s; disk cache off", path,
             "is writable by group or others (they could plant kernels there); chmod 700 it");
  } else {
    c->dir = path;
    aj_log(c->ctx, ADAMJIT_LOG_DEBUG, "kernel cache: directory '%s'", path);
    return ADAMJIT_OK;
  }
  free(path);
  return ADAMJIT_OK;
}

/* ----------------------------------------------------------------- memory */

static aj_cache_entry* mem_find(aj_kernel_cache* c, const unsigned char* key, size_t key_size, uint64_t hash) {
  for (aj_cache_entry* e = c->buckets[hash & (c->n_buckets - 1)]; e; e = e->next)
    if (e->hash == hash && e->key_size == key_size && memcmp(e->key, key, key_size) == 0) return e;
  return NULL;
}

static void mem_grow(aj_kernel_cache* c) {
  size_t n = c->n_buckets * 2;
  aj_cache_entry** b = calloc(n, sizeof *b);
  if (!b) return; /* a fuller table is slower, not wrong */
  for (size_t i = 0; i < c->n_buckets; i++) {
    aj_cache_entry* e = c->buckets[i];
    while (e) {
      aj_cache_entry* next = e->next;
      e->next = b[e->hash & (n - 1)];
      b[e->hash & (n - 1)] = e;
      e = next;
    }
  }
  free(c->buckets);
  c->buckets = b;
  c->n_buckets = n;
}

/* Puts key -> bin into memory, taking ownership of neither (both are copied). Returns the
 * entry, or NULL when out of memory (the table is then unchanged). */
static aj_cache_entry* mem_put(aj_kernel_cache* c, const unsigned char* key, size_t key_size, uint64_t hash,
                               const void* bin, size_t bin_size) {
  unsigned char* copy = malloc(bin_size);
  if (!copy) return NULL;
  memcpy(copy, bin, bin_size);
  aj_cache_entry* e = mem_find(c, key, key_size, hash);
  if (e) {
    free(e->bin);
    e->bin = copy;
    e->bin_size = bin_size;
    return e;
  }
  e = calloc(1, sizeof *e);
  unsigned char* kcopy = malloc(key_size);
  if (!e || !kcopy) {
    free(e);
    free(kcopy);
    free(copy);
    return NULL;
  }
  memcpy(kcopy, key, key_size);
  e->hash = hash;
  e->key = kcopy;
  e->key_size = key_size;
  e->bin = copy;
  e->bin_size = bin_size;
  size_t slot = hash & (c->n_buckets - 1);
  e->next = c->buckets[slot];
  c->buckets[slot] = e;
  if (++c->count > c->n_buckets) mem_grow(c);
  return e;
}

static void mem_clear(aj_kernel_cache* c) {
  for (size_t i = 0; i < c->n_buckets; i++) {
    aj_cache_entry* e = c->buckets[i];
    while (e) {
      aj_cache_entry* next = e->next;
      free(e->key);
      free(e->bin);
      free(e);
      e = next;
    }
    c->buckets[i] = NULL;
  }
  c->count = 0;
}

/* ------------------------------------------------------------------- disk */

/* Reads and validates the entry file at path. Returns 1 with a malloc'ed copy of the whole
 * file in *file and the binary's place in it on a valid entry for exactly this key; 0 on
 * any miss (logged, except a file that does not exist). */
static int disk_read(aj_kernel_cache* c, const char* path, const unsigned char* key, size_t key_size,
                     unsigned char** file, size_t* bin_off, size_t* bin_size) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno != ENOENT)
      aj_log(c->ctx, ADAMJIT_LOG_WARN, "kernel cache: cannot read entry '%s': %s; treated as a miss", path,
             strerror(errno));
    return 0;
  }
  const char* bad = NULL;
  unsigned char* buf = NULL;
  struct stat st;
  uint64_t fsize = 0;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    bad = "not a regular file";
  } else if ((uint64_t)st.st_size < FILE_OVERHEAD) {
    bad = "truncated";
  } else if ((uint64_t)st.st_size > MAX_ENTRY_BYTES) {
    bad = "larger than any kernel binary";
  } else {
    fsize = (uint64_t)st.st_size;
    buf = malloc((size_t)fsize);
    if (!buf) {
      bad = "out of memory reading it";
    } else {
      size_t got = 0;
      while (got < fsize) {
        ssize_t r = read(fd, buf + got, (size_t)fsize - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
      }
      if (got != fsize) bad = "short read";
    }
  }
  close(fd);

  uint64_t klen = 0, blen = 0;
  if (!bad && memcmp(buf, FILE_MAGIC, 8) != 0) bad = "wrong magic (not an adamjit cache entry)";
  if (!bad && (get_le32(buf + 8) != FILE_FORMAT || get_le32(buf + 12) != 0)) bad = "unknown format version";
  if (!bad) {
    klen = get_le64(buf + FILE_HEADER);
    /* Each length is checked against the bytes left before it is used, so a damaged length
     * can neither overflow the sum nor point outside the buffer. */
    if (klen > fsize - FILE_OVERHEAD) {
      bad = "truncated or corrupt (key length)";
    } else {
      blen = get_le64(buf + FILE_HEADER + 8 + klen);
      if (blen != fsize - FILE_OVERHEAD - klen) bad = "truncated or corrupt (binary length)";
    }
  }
  if (!bad && XXH3_64bits(buf, (size_t)fsize - 8) != get_le64(buf + fsize - 8)) bad = "checksum mismatch (corrupt)";
  if (!bad && (klen != key_size || memcmp(buf + FILE_HEADER + 8, key, key_size) != 0))
    bad = "holds a different key (hash collision or misplaced file)";
  if (bad) {
    aj_log(c->ctx, ADAMJIT_LOG_WARN, "kernel cache: entry '%s' %s; treated as a miss, the next store replaces it",
           path, bad);
    free(buf);
    return 0;
  }
  *file = buf;
  *bin_off = FILE_HEADER + 8 + (size_t)klen + 8;
  *bin_size = (size_t)blen;
  return 1;
}

static int write_all(int fd, const unsigned char* p, size_t n) {
  while (n) {
    ssize_t r = write(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

/* Writes the entry atomically: temp file, fsync, rename. Failures are logged, not returned:
 * the store has already succeeded in memory. */
static void disk_write(aj_kernel_cache* c, const char* hex, const unsigned char* key, size_t key_size, const void* bin,
                       size_t bin_size) {
  size_t fsize = FILE_OVERHEAD + key_size + bin_size;
  unsigned char* buf = malloc(fsize);
  size_t tn = strlen(c->dir) + 1 + 5 + HEX_LEN + 5 + 6 + 1;
  char* tmp = malloc(tn);
  char* path = entry_path(c->dir, hex);
  if (!buf || !tmp || !path) {
    aj_log(c->ctx, ADAMJIT_LOG_WARN, "kernel cache: out of memory writing an entry to '%s'", c->dir);
    goto done;
  }
  memcpy(buf, FILE_MAGIC, 8);
  put_le32(buf + 8, FILE_FORMAT);
  put_le32(buf + 12, 0);
  put_le64(buf + FILE_HEADER, key_size);
  memcpy(buf + FILE_HEADER + 8, key, key_size);
  put_le64(buf + FILE_HEADER + 8 + key_size, bin_size);
  memcpy(buf + FILE_HEADER + 16 + key_size, bin, bin_size);
  put_le64(buf + fsize - 8, XXH3_64bits(buf, fsize - 8));

  snprintf(tmp, tn, "%s/.ajk-%s.tmp-XXXXXX", c->dir, hex);
  int fd = mkostemp(tmp, O_CLOEXEC); /* mode 0600, a fresh name per writer */
  if (fd < 0) {
    aj_log(c->ctx, ADAMJIT_LOG_WARN, "kernel cache: cannot create a file in '%s': %s; entry not saved", c->dir,
           strerror(errno));
    goto done;
  }
  const char* step = NULL;
  int e = 0;
  if (write_all(fd, buf, fsize) != 0) step = "write";
  /* fsync before rename: otherwise a crash could leave the final name pointing at a file
   * whose data never reached the disk (the checksum would catch it, but as a loss). */
  else if (fsync(fd) != 0) step = "fsync";
  if (step) e = errno;
  if (close(fd) != 0 && !step) {
    step = "close";
    e = errno;
  }
  if (!step && rename(tmp, path) != 0) {
    step = "rename";
    e = errno;
  }
  if (step) {
    unlink(tmp);
    aj_log(c->ctx, ADAMJIT_LOG_WARN, "kernel cache: %s of '%s' failed: %s; entry not saved", step, path, strerror(e));
  }
done:
  free(buf);
  free(tmp);
  free(path);
}

/* -------------------------------------------------------------------- API */

adamjit_status aj_kernel_cache_create(adamjit_context* ctx, const char* dir, aj_kernel_cache** out) {
  if (!out) return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "aj_kernel_cache_create: out is NULL");
  *out = NULL;
  aj_kernel_cache* c = calloc(1, sizeof *c);
  if (c) {
    c->n_buckets = 64;
    c->buckets = calloc(c->n_buckets, sizeof *c->buckets);
  }
  if (!c || !c->buckets) {
    free(c);
    return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "kernel cache: out of memory");
  }
  c->ctx = ctx;
  adamjit_status st = open_disk(c, dir);
  if (st != ADAMJIT_OK) {
    aj_kernel_cache_destroy(c);
    return st;
  }
  *out = c;
  return ADAMJIT_OK;
}

void aj_kernel_cache_destroy(aj_kernel_cache* cache) {
  if (!cache) return;
  mem_clear(cache);
  free(cache->buckets);
  free(cache->dir);
  free(cache);
}

const char* aj_kernel_cache_dir(const aj_kernel_cache* cache) { return cache ? cache->dir : NULL; }

adamjit_status aj_kernel_cache_lookup(aj_kernel_cache* cache, const aj_cache_key* key, const void** binary,
                                      size_t* size, aj_cache_where* where) {
  if (where) *where = AJ_CACHE_MISS;
  if (!cache || !key || !binary || !size)
    return aj_fail(cache ? cache->ctx : NULL, ADAMJIT_ERR_NULL_ARGUMENT, "aj_kernel_cache_lookup: NULL argument");
  *binary = NULL;
  *size = 0;
  unsigned char* k;
  size_t ks;
  adamjit_status st = aj_cache_key_serialize(cache->ctx, key, &k, &ks);
  if (st != ADAMJIT_OK) return st;
  uint64_t hash = XXH3_64bits(k, ks);
  aj_cache_entry* e = mem_find(cache, k, ks, hash);
  if (e) {
    *binary = e->bin;
    *size = e->bin_size;
    if (where) *where = AJ_CACHE_MEMORY;
  } else if (cache->dir) {
    char hex[HEX_LEN + 1];
    key_hex(k, ks, hex);
    char* path = entry_path(cache->dir, hex);
    unsigned char* file = NULL;
    size_t off = 0, bs = 0;
    if (!path) {
      st = aj_fail(cache->ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "kernel cache: out of memory");
    } else if (disk_read(cache, path, k, ks, &file, &off, &bs)) {
      e = mem_put(cache, k, ks, hash, file + off, bs);
      if (!e) {
        st = aj_fail(cache->ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "kernel cache: out of memory loading '%s'", path);
      } else {
        *binary = e->bin;
        *size = e->bin_size;
        if (where) *where = AJ_CACHE_DISK;
      }
    }
    free(file);
    free(path);
  }
  free(k);
  return st;
}

adamjit_status aj_kernel_cache_store(aj_kernel_cache* cache, const aj_cache_key* key, const void* binary,
                                     size_t size) {
  if (!cache || !key || !binary)
    return aj_fail(cache ? cache->ctx : NULL, ADAMJIT_ERR_NULL_ARGUMENT, "aj_kernel_cache_store: NULL argument");
  if (size == 0) return aj_fail(cache->ctx, ADAMJIT_ERR_INVALID_SIZE, "aj_kernel_cache_store: empty binary");
  unsigned char* k;
  size_t ks;
  adamjit_status st = aj_cache_key_serialize(cache->ctx, key, &k, &ks);
  if (st != ADAMJIT_OK) return st;
  if (!mem_put(cache, k, ks, XXH3_64bits(k, ks), binary, size)) {
    free(k);
    return aj_fail(cache->ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "kernel cache: out of memory storing a %zu-byte binary",
                   size);
  }
  if (cache->dir) {
    char hex[HEX_LEN + 1];
    key_hex(k, ks, hex);
    disk_write(cache, hex, k, ks, binary, size);
  }
  free(k);
  return ADAMJIT_OK;
}

adamjit_status aj_kernel_cache_clear(aj_kernel_cache* cache, unsigned flags) {
  if (!cache) return aj_fail(NULL, ADAMJIT_ERR_NULL_ARGUMENT, "aj_kernel_cache_clear: cache is NULL");
  if (flags & AJ_CACHE_CLEAR_MEMORY) mem_clear(cache);
  if (!(flags & AJ_CACHE_CLEAR_DISK)) return ADAMJIT_OK;
  if (!cache->dir) return aj_fail(cache->ctx, ADAMJIT_ERR_CACHE, "cannot clear the disk cache: %s", cache->off_why);
  DIR* d = opendir(cache->dir);
  if (!d)
    return aj_fail(cache->ctx, ADAMJIT_ERR_CACHE, "cannot clear the kernel cache: opening '%s': %s", cache->dir,
                   strerror(errno));
  int failed = 0, first_errno = 0;
  char first[256] = "";
  struct dirent* de;
  /* Temp files are ours too (a crashed writer leaves them). Removing one that another
   * process is still writing only makes that process's rename fail, which it logs as a
   * lost entry: a miss later, never a bad binary. */
  while ((de = readdir(d)) != NULL) {
    if (!is_entry_name(de->d_name) && !is_temp_name(de->d_name)) continue;
    if (unlinkat(dirfd(d), de->d_name, 0) != 0 && errno != ENOENT) {
      if (!failed++) {
        first_errno = errno;
        snprintf(first, sizeof first, "%s", de->d_name);
      }
    }
  }
  closedir(d);
  if (failed)
    return aj_fail(cache->ctx, ADAMJIT_ERR_CACHE, "cannot clear the kernel cache: %d file(s) in '%s' not removed (%s: %s)",
                   failed, cache->dir, first, strerror(first_errno));
  aj_log(cache->ctx, ADAMJIT_LOG_INFO, "kernel cache: cleared '%s'", cache->dir);
  return ADAMJIT_OK;
}

adamjit_status aj_kernel_cache_entry_path(aj_kernel_cache* cache, const aj_cache_key* key, char* buf, size_t size) {
  if (!cache || !key || !buf)
    return aj_fail(cache ? cache->ctx : NULL, ADAMJIT_ERR_NULL_ARGUMENT, "aj_kernel_cache_entry_path: NULL argument");
  if (!cache->dir) return aj_fail(cache->ctx, ADAMJIT_ERR_CACHE, "%s", cache->off_why);
  unsigned char* k;
  size_t ks;
  adamjit_status st = aj_cache_key_serialize(cache->ctx, key, &k, &ks);
  if (st != ADAMJIT_OK) return st;
  char hex[HEX_LEN + 1];
  key_hex(k, ks, hex);
  free(k);
  int n = snprintf(buf, size, "%s/ajk-%s.bin", cache->dir, hex);
  if (n < 0 || (size_t)n >= size)
    return aj_fail(cache->ctx, ADAMJIT_ERR_INVALID_SIZE, "kernel cache: path buffer of %zu bytes too small", size);
  return ADAMJIT_OK;
}
