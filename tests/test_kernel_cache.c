/* Kernel caches (jit/cache.h): memory and disk hits, every key field, damaged and forged
 * entries, concurrent writers, unsafe directories, the directory chain, clear. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "jit/cache.h"
#include "tests/harness.h"

static char scratch[4096];
static adamjit_context* ctx;

/* Log capture: WARN messages delivered through the context's callback. */
static int n_warn;
static char last_warn[4096];

static void on_log(adamjit_log_level level, const char* message, void* user) {
  (void)user;
  if (level == ADAMJIT_LOG_WARN) {
    n_warn++;
    snprintf(last_warn, sizeof last_warn, "%s", message);
  }
}

static int rm_one(const char* path, const struct stat* st, int flag, struct FTW* ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static void rm_rf(const char* path) { nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS); }

/* scratch/name, in a static rotating buffer so a few can be live at once. */
static const char* sub(const char* name) {
  static char bufs[8][4200];
  static int i;
  char* b = bufs[i++ & 7];
  snprintf(b, sizeof bufs[0], "%s/%s", scratch, name);
  return b;
}

static aj_kernel_cache* open_cache(const char* dir) {
  aj_kernel_cache* c = NULL;
  REQUIRE_OK(aj_kernel_cache_create(ctx, dir, &c));
  return c;
}

static aj_cache_key base_key(void) {
  aj_cache_key k = {"__kernel void adamw(__global float* p) { p[0] += 1.0f; }", "-cl-std=CL1.2", "sm_90",
                    "nvrtc 13.0", NULL};
  return k;
}

static void fill(unsigned char* b, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++) b[i] = (unsigned char)(seed * 131u + i * 7u + (i >> 8));
}

/* Looks key up and checks where it was found and, on a hit, its bytes. */
static void expect(aj_kernel_cache* c, const aj_cache_key* k, aj_cache_where want, const void* bytes, size_t n,
                   int line) {
  const void* bin = (const void*)1;
  size_t size = 99;
  aj_cache_where where = (aj_cache_where)-1;
  CHECK_OK(aj_kernel_cache_lookup(c, k, &bin, &size, &where));
  CHECK_MSG(where == want, "line %d: where %d, want %d", line, (int)where, (int)want);
  if (want == AJ_CACHE_MISS) {
    CHECK_MSG(bin == NULL && size == 0, "line %d: a miss must give NULL, 0", line);
  } else if (where == want) {
    CHECK_MSG(size == n && bin && memcmp(bin, bytes, n) == 0, "line %d: wrong bytes (%zu, want %zu)", line, size, n);
  }
}
#define EXPECT(c, k, want, bytes, n) expect(c, k, want, bytes, n, __LINE__)

static long file_size(const char* path) {
  struct stat st;
  return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static int count_files(const char* dir, int* temps, int* entries) {
  DIR* d = opendir(dir);
  int n = 0;
  *temps = *entries = 0;
  if (!d) return -1;
  struct dirent* de;
  while ((de = readdir(d))) {
    if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
    n++;
    if (strstr(de->d_name, ".tmp-")) ++*temps;
    if (!strncmp(de->d_name, "ajk-", 4)) ++*entries;
  }
  closedir(d);
  return n;
}

static void test_hits_and_key_fields(void) {
  const char* dir = sub("basic");
  unsigned char bin[3000];
  fill(bin, sizeof bin, 1);
  aj_cache_key k = base_key();

  aj_kernel_cache* a = open_cache(dir);
  CHECK(aj_kernel_cache_dir(a) && strcmp(aj_kernel_cache_dir(a), dir) == 0);
  EXPECT(a, &k, AJ_CACHE_MISS, NULL, 0);
  CHECK_OK(aj_kernel_cache_store(a, &k, bin, sizeof bin));
  EXPECT(a, &k, AJ_CACHE_MEMORY, bin, sizeof bin);

  struct stat st;
  CHECK(stat(dir, &st) == 0 && (st.st_mode & 0777) == 0700);

  /* A second cache object stands for a new process: it finds the entry on disk, then in
   * its own memory. */
  aj_kernel_cache* b = open_cache(dir);
  EXPECT(b, &k, AJ_CACHE_DISK, bin, sizeof bin);
  EXPECT(b, &k, AJ_CACHE_MEMORY, bin, sizeof bin);

  /* Every field of the key takes part. */
  aj_kernel_cache* c = open_cache(dir);
  aj_cache_key v = k;
  v.source = "__kernel void adamw(__global float* p) { p[0] += 2.0f; }";
  EXPECT(c, &v, AJ_CACHE_MISS, NULL, 0);
  v = k;
  v.options = "-cl-std=CL2.0";
  EXPECT(c, &v, AJ_CACHE_MISS, NULL, 0);
  v = k;
  v.arch = "sm_80";
  EXPECT(c, &v, AJ_CACHE_MISS, NULL, 0);
  v = k;
  v.compiler = "nvrtc 12.4";
  EXPECT(c, &v, AJ_CACHE_MISS, NULL, 0);
  v = k;
  v.version = "0.0.9";
  EXPECT(c, &v, AJ_CACHE_MISS, NULL, 0);
  v = k;
  v.version = ADAMJIT_VERSION_STRING; /* NULL means this version */
  EXPECT(c, &v, AJ_CACHE_DISK, bin, sizeof bin);
  /* Moving bytes between fields is a different key (length-prefixed serialization). */
  v = k;
  v.arch = "sm_9";
  v.compiler = "0nvrtc 13.0";
  EXPECT(c, &v, AJ_CACHE_MISS, NULL, 0);
  unsigned char *s1, *s2;
  size_t n1, n2;
  aj_cache_key x = {"ab", "", NULL, NULL, NULL}, y = {"a", "b", NULL, NULL, NULL};
  REQUIRE_OK(aj_cache_key_serialize(ctx, &x, &s1, &n1));
  REQUIRE_OK(aj_cache_key_serialize(ctx, &y, &s2, &n2));
  CHECK(n1 == n2 && memcmp(s1, s2, n1) != 0);
  free(s1);
  free(s2);

  /* A store replaces the binary in memory and on disk. */
  unsigned char bin2[100];
  fill(bin2, sizeof bin2, 2);
  CHECK_OK(aj_kernel_cache_store(a, &k, bin2, sizeof bin2));
  EXPECT(a, &k, AJ_CACHE_MEMORY, bin2, sizeof bin2);
  aj_kernel_cache* d = open_cache(dir);
  EXPECT(d, &k, AJ_CACHE_DISK, bin2, sizeof bin2);

  /* Many entries: the memory table grows and keeps them all. */
  char src[64];
  for (int i = 0; i < 300; i++) {
    snprintf(src, sizeof src, "kernel %d", i);
    aj_cache_key m = {src, "", "", "", NULL};
    unsigned char one = (unsigned char)i;
    CHECK_OK(aj_kernel_cache_store(d, &m, &one, 1));
  }
  for (int i = 0; i < 300; i++) {
    snprintf(src, sizeof src, "kernel %d", i);
    aj_cache_key m = {src, "", "", "", NULL};
    unsigned char one = (unsigned char)i;
    EXPECT(d, &m, AJ_CACHE_MEMORY, &one, 1);
  }

  /* Bad arguments. */
  const void* bp;
  size_t bs;
  CHECK_STATUS(aj_kernel_cache_lookup(NULL, &k, &bp, &bs, NULL), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK_STATUS(aj_kernel_cache_lookup(a, NULL, &bp, &bs, NULL), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK_STATUS(aj_kernel_cache_store(a, &k, NULL, 4), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK_STATUS(aj_kernel_cache_store(a, &k, bin, 0), ADAMJIT_ERR_INVALID_SIZE);
  CHECK_STATUS(aj_kernel_cache_create(ctx, NULL, NULL), ADAMJIT_ERR_NULL_ARGUMENT);
  char small[8];
  CHECK_STATUS(aj_kernel_cache_entry_path(a, &k, small, sizeof small), ADAMJIT_ERR_INVALID_SIZE);

  aj_kernel_cache_destroy(a);
  aj_kernel_cache_destroy(b);
  aj_kernel_cache_destroy(c);
  aj_kernel_cache_destroy(d);
  aj_kernel_cache_destroy(NULL);
}

/* Damages k's entry with `how`, then checks: a fresh cache misses with a WARN, stores again,
 * and a third one hits on disk. */
enum damage { TRUNCATE, FLIP, MAGIC, EXTEND, EMPTY };

static void damage_case(const char* dir, enum damage how, unsigned seed) {
  unsigned char bin[500];
  fill(bin, sizeof bin, seed);
  char src[64];
  snprintf(src, sizeof src, "damaged kernel %u", seed);
  aj_cache_key k = base_key();
  k.source = src;
  aj_kernel_cache* a = open_cache(dir);
  CHECK_OK(aj_kernel_cache_store(a, &k, bin, sizeof bin));
  char path[4200];
  REQUIRE_OK(aj_kernel_cache_entry_path(a, &k, path, sizeof path));
  long size = file_size(path);
  CHECK(size > 500);
  int fd = open(path, O_RDWR);
  CHECK(fd >= 0);
  unsigned char byte;
  switch (how) {
    case TRUNCATE:
      CHECK(ftruncate(fd, size - 9) == 0);
      break;
    case FLIP: /* a byte in the middle of the binary: only the checksum can tell */
      CHECK(pread(fd, &byte, 1, size / 2) == 1);
      byte ^= 0x10;
      CHECK(pwrite(fd, &byte, 1, size / 2) == 1);
      break;
    case MAGIC:
      CHECK(pwrite(fd, "X", 1, 0) == 1);
      break;
    case EXTEND:
      CHECK(pwrite(fd, "junk", 4, size) == 4);
      break;
    case EMPTY:
      CHECK(ftruncate(fd, 0) == 0);
      break;
  }
  close(fd);

  aj_kernel_cache* b = open_cache(dir);
  int w = n_warn;
  EXPECT(b, &k, AJ_CACHE_MISS, NULL, 0);
  CHECK_MSG(n_warn == w + 1 && strstr(last_warn, path), "damage %d: expected a WARN naming the entry", (int)how);
  CHECK_OK(aj_kernel_cache_store(b, &k, bin, sizeof bin));
  aj_kernel_cache* c = open_cache(dir);
  EXPECT(c, &k, AJ_CACHE_DISK, bin, sizeof bin);
  aj_kernel_cache_destroy(a);
  aj_kernel_cache_destroy(b);
  aj_kernel_cache_destroy(c);
}

static void test_damaged_entries(void) {
  const char* dir = sub("damaged");
  damage_case(dir, TRUNCATE, 10);
  damage_case(dir, FLIP, 11);
  damage_case(dir, MAGIC, 12);
  damage_case(dir, EXTEND, 13);
  damage_case(dir, EMPTY, 14);

  /* A hash collision, simulated: key A's entry placed under key B's file name. */
  aj_cache_key ka = base_key(), kb = base_key();
  ka.source = "kernel A";
  kb.source = "kernel B";
  unsigned char ba[64], bb[80];
  fill(ba, sizeof ba, 20);
  fill(bb, sizeof bb, 21);
  aj_kernel_cache* a = open_cache(dir);
  CHECK_OK(aj_kernel_cache_store(a, &ka, ba, sizeof ba));
  char pa[4200], pb[4200];
  REQUIRE_OK(aj_kernel_cache_entry_path(a, &ka, pa, sizeof pa));
  REQUIRE_OK(aj_kernel_cache_entry_path(a, &kb, pb, sizeof pb));
  CHECK(strcmp(pa, pb) != 0);
  CHECK(rename(pa, pb) == 0);
  aj_kernel_cache* b = open_cache(dir);
  int w = n_warn;
  EXPECT(b, &kb, AJ_CACHE_MISS, NULL, 0);
  CHECK_MSG(n_warn == w + 1 && strstr(last_warn, "different key"), "forged entry: got '%s'", last_warn);
  CHECK_OK(aj_kernel_cache_store(b, &kb, bb, sizeof bb));
  aj_kernel_cache* c = open_cache(dir);
  EXPECT(c, &kb, AJ_CACHE_DISK, bb, sizeof bb);
  EXPECT(c, &ka, AJ_CACHE_MISS, NULL, 0); /* A's own file was moved away */

  /* An entry we may not read is a miss. Root reads anything, so the check needs a user. */
  if (geteuid() == 0) {
    printf("test_kernel_cache: running as root: skipping the unreadable-entry check\n");
  } else {
    CHECK(chmod(pb, 0) == 0);
    aj_kernel_cache* d = open_cache(dir);
    w = n_warn;
    EXPECT(d, &kb, AJ_CACHE_MISS, NULL, 0);
    CHECK(n_warn == w + 1);
    CHECK_OK(aj_kernel_cache_store(d, &kb, bb, sizeof bb)); /* rename replaces it */
    aj_kernel_cache_destroy(d);
    d = open_cache(dir);
    EXPECT(d, &kb, AJ_CACHE_DISK, bb, sizeof bb);
    aj_kernel_cache_destroy(d);
  }
  aj_kernel_cache_destroy(a);
  aj_kernel_cache_destroy(b);
  aj_kernel_cache_destroy(c);
}

/* Two processes store the same entry and their own entries at once, and read the shared
 * one from disk between stores: a reader must see a complete entry or none. */
#define CONC_ITERS 200
#define CONC_OWN 8
#define CONC_BIN 16384

static int child(const char* dir, int id) {
  static unsigned char shared[CONC_BIN], own[CONC_BIN];
  fill(shared, sizeof shared, 99);
  aj_cache_key ks = base_key();
  ks.source = "shared kernel";
  n_warn = 0; /* the count inherited from the parent is not this writer's */
  aj_kernel_cache* w = open_cache(dir);
  aj_kernel_cache* r = open_cache(dir);
  int bad = 0;
  char src[64];
  for (int i = 0; i < CONC_ITERS; i++) {
    snprintf(src, sizeof src, "kernel of process %d, #%d", id, i % CONC_OWN);
    aj_cache_key ko = base_key();
    ko.source = src;
    fill(own, sizeof own, (unsigned)(id * 100 + i % CONC_OWN));
    if (aj_kernel_cache_store(w, &ks, shared, sizeof shared) != ADAMJIT_OK) bad++;
    if (aj_kernel_cache_store(w, &ko, own, sizeof own) != ADAMJIT_OK) bad++;
    aj_kernel_cache_clear(r, AJ_CACHE_CLEAR_MEMORY);
    const void* bin;
    size_t size;
    aj_cache_where where;
    if (aj_kernel_cache_lookup(r, &ks, &bin, &size, &where) != ADAMJIT_OK || where != AJ_CACHE_DISK ||
        size != sizeof shared || memcmp(bin, shared, size) != 0)
      bad++;
  }
  aj_kernel_cache_destroy(w);
  aj_kernel_cache_destroy(r);
  if (bad || n_warn) fprintf(stderr, "writer %d: %d bad lookups, %d warnings (last: %s)\n", id, bad, n_warn, last_warn);
  return bad || n_warn ? 1 : 0;
}

static void test_concurrent_writers(void) {
  const char* dir = sub("concurrent");
  aj_kernel_cache* c = open_cache(dir); /* creates the directory before the race */
  pid_t pids[2];
  for (int id = 0; id < 2; id++) {
    fflush(NULL);
    pids[id] = fork();
    if (pids[id] == 0) _exit(child(dir, id));
    CHECK(pids[id] > 0);
  }
  for (int id = 0; id < 2; id++) {
    int status = 0;
    if (pids[id] <= 0) continue;
    CHECK(waitpid(pids[id], &status, 0) == pids[id]);
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writer %d saw a bad entry or a warning", id);
  }
  int temps, entries;
  int n = count_files(dir, &temps, &entries);
  CHECK_MSG(n == 1 + 2 * CONC_OWN && entries == n && temps == 0, "%d files, %d entries, %d temp files", n, entries,
            temps);
  /* Every entry left is valid and holds the last bytes stored. */
  static unsigned char want[CONC_BIN];
  int w = n_warn;
  aj_cache_key k = base_key();
  k.source = "shared kernel";
  fill(want, sizeof want, 99);
  EXPECT(c, &k, AJ_CACHE_DISK, want, sizeof want);
  char src[64];
  for (int id = 0; id < 2; id++)
    for (int j = 0; j < CONC_OWN; j++) {
      snprintf(src, sizeof src, "kernel of process %d, #%d", id, j);
      k.source = src;
      fill(want, sizeof want, (unsigned)(id * 100 + j));
      EXPECT(c, &k, AJ_CACHE_DISK, want, sizeof want);
    }
  CHECK(n_warn == w);
  aj_kernel_cache_destroy(c);
}

static void test_unsafe_directories(void) {
  const char* dir = sub("unsafe");
  CHECK(mkdir(dir, 0700) == 0);
  CHECK(chmod(dir, 0777) == 0);
  int w = n_warn;
  aj_kernel_cache* c = open_cache(dir);
  CHECK(aj_kernel_cache_dir(c) == NULL);
  CHECK_MSG(n_warn == w + 1 && strstr(last_warn, dir) && strstr(last_warn, "writable"), "got '%s'", last_warn);
  aj_cache_key k = base_key();
  unsigned char bin[32];
  fill(bin, sizeof bin, 30);
  EXPECT(c, &k, AJ_CACHE_MISS, NULL, 0);
  CHECK_OK(aj_kernel_cache_store(c, &k, bin, sizeof bin));
  EXPECT(c, &k, AJ_CACHE_MEMORY, bin, sizeof bin);
  int temps, entries;
  CHECK(count_files(dir, &temps, &entries) == 0);
  CHECK_STATUS(aj_kernel_cache_clear(c, AJ_CACHE_CLEAR_DISK | AJ_CACHE_CLEAR_MEMORY), ADAMJIT_ERR_CACHE);
  CHECK(strstr(adamjit_context_last_error(ctx), "writable") != NULL);
  EXPECT(c, &k, AJ_CACHE_MISS, NULL, 0); /* the memory part was still cleared */
  char path[4200];
  CHECK_STATUS(aj_kernel_cache_entry_path(c, &k, path, sizeof path), ADAMJIT_ERR_CACHE);
  aj_kernel_cache_destroy(c);

  /* Group-writable alone is enough to refuse. */
  const char* gdir = sub("unsafe-group");
  CHECK(mkdir(gdir, 0700) == 0 && chmod(gdir, 0770) == 0);
  c = open_cache(gdir);
  CHECK(aj_kernel_cache_dir(c) == NULL);
  aj_kernel_cache_destroy(c);

  /* Owned by somebody else: only root can make such a directory to try it with. */
  if (geteuid() == 0) {
    const char* odir = sub("other-owner");
    CHECK(mkdir(odir, 0700) == 0 && chown(odir, 65534, 65534) == 0);
    w = n_warn;
    c = open_cache(odir);
    CHECK(aj_kernel_cache_dir(c) == NULL);
    CHECK_MSG(n_warn == w + 1 && strstr(last_warn, "not owned"), "got '%s'", last_warn);
    aj_kernel_cache_destroy(c);
  } else {
    printf("test_kernel_cache: not root: skipping the other-owner directory check\n");
  }

  /* A path through a file cannot be created: disk off, memory on. */
  const char* file = sub("a-file");
  FILE* f = fopen(file, "w");
  CHECK(f != NULL);
  if (f) fclose(f);
  w = n_warn;
  c = open_cache(sub("a-file/cache"));
  CHECK(aj_kernel_cache_dir(c) == NULL && n_warn == w + 1);
  CHECK_OK(aj_kernel_cache_store(c, &k, bin, sizeof bin));
  EXPECT(c, &k, AJ_CACHE_MEMORY, bin, sizeof bin);
  aj_kernel_cache_destroy(c);
}

static void check_default_dir(const char* want, int line) {
  aj_kernel_cache* c = open_cache(NULL);
  const char* got = aj_kernel_cache_dir(c);
  CHECK_MSG(got && strcmp(got, want) == 0, "line %d: dir '%s', want '%s'", line, got ? got : "(off)", want);
  struct stat st;
  CHECK_MSG(stat(want, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 0777) == 0700, "line %d: %s not 0700",
            line, want);
  aj_kernel_cache_destroy(c);
}

static void test_directory_chain(void) {
  unsetenv("ADAMJIT_CACHE_DIR");
  unsetenv("XDG_CACHE_HOME");
  setenv("HOME", sub("home"), 1);
  check_default_dir(sub("home/.cache/adamjit"), __LINE__);
  setenv("XDG_CACHE_HOME", "relative/xdg", 1); /* relative: ignored, as the XDG spec says */
  check_default_dir(sub("home/.cache/adamjit"), __LINE__);
  setenv("XDG_CACHE_HOME", sub("xdg"), 1);
  check_default_dir(sub("xdg/adamjit"), __LINE__);
  setenv("ADAMJIT_CACHE_DIR", sub("env/deep/dir"), 1);
  check_default_dir(sub("env/deep/dir"), __LINE__);

  /* An explicit directory wins over the environment; trailing slashes are dropped. */
  char explicit_dir[4200];
  snprintf(explicit_dir, sizeof explicit_dir, "%s/", sub("explicit"));
  aj_kernel_cache* c = open_cache(explicit_dir);
  CHECK(aj_kernel_cache_dir(c) && strcmp(aj_kernel_cache_dir(c), sub("explicit")) == 0);
  aj_kernel_cache_destroy(c);

  /* An entry written through the env directory is found through it again. */
  aj_cache_key k = base_key();
  unsigned char bin[40];
  fill(bin, sizeof bin, 40);
  c = open_cache(NULL);
  CHECK_OK(aj_kernel_cache_store(c, &k, bin, sizeof bin));
  aj_kernel_cache_destroy(c);
  c = open_cache(sub("env/deep/dir"));
  EXPECT(c, &k, AJ_CACHE_DISK, bin, sizeof bin);
  aj_kernel_cache_destroy(c);

  unsetenv("ADAMJIT_CACHE_DIR");
  unsetenv("XDG_CACHE_HOME");
  unsetenv("HOME");
  int w = n_warn;
  c = open_cache(NULL);
  CHECK(aj_kernel_cache_dir(c) == NULL && n_warn == w + 1);
  aj_kernel_cache_destroy(c);
}

static void test_clear(void) {
  const char* dir = sub("clear");
  aj_kernel_cache* c = open_cache(dir);
  unsigned char bin[50];
  fill(bin, sizeof bin, 50);
  char src[32];
  for (int i = 0; i < 5; i++) {
    snprintf(src, sizeof src, "clear me %d", i);
    aj_cache_key k = base_key();
    k.source = src;
    CHECK_OK(aj_kernel_cache_store(c, &k, bin, sizeof bin));
  }
  /* Files that are not ours, some with names close to ours, and a crashed writer's temp. */
  const char* foreign[] = {"notes.txt", "ajk-0123.bin", "ajk-0123456789abcdef0123456789abcdef.bin.bak",
                           "AJK-0123456789ABCDEF0123456789ABCDEF.bin"};
  for (size_t i = 0; i < sizeof foreign / sizeof *foreign; i++) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, foreign[i]);
    FILE* f = fopen(p, "w");
    CHECK(f != NULL);
    if (f) fclose(f);
  }
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s/.ajk-0123456789abcdef0123456789abcdef.tmp-aB3xY9", dir);
  FILE* f = fopen(tmp, "w");
  CHECK(f != NULL);
  if (f) fclose(f);

  int temps, entries;
  CHECK(count_files(dir, &temps, &entries) == 5 + 4 + 1);
  CHECK_OK(aj_kernel_cache_clear(c, AJ_CACHE_CLEAR_DISK));
  CHECK(count_files(dir, &temps, &entries) == 4 && temps == 0);
  for (size_t i = 0; i < sizeof foreign / sizeof *foreign; i++) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, foreign[i]);
    CHECK_MSG(access(p, F_OK) == 0, "clear removed foreign file %s", foreign[i]);
  }
  /* Disk only: memory still hits; then memory too. */
  aj_cache_key k = base_key();
  k.source = "clear me 0";
  EXPECT(c, &k, AJ_CACHE_MEMORY, bin, sizeof bin);
  CHECK_OK(aj_kernel_cache_clear(c, AJ_CACHE_CLEAR_MEMORY));
  EXPECT(c, &k, AJ_CACHE_MISS, NULL, 0);
  aj_kernel_cache_destroy(c);
}

int main(void) {
  if (!getcwd(scratch, sizeof scratch - 64)) return 1;
  strcat(scratch, "/kernel_cache_scratch");
  rm_rf(scratch);
  if (mkdir(scratch, 0700) != 0) {
    fprintf(stderr, "cannot create %s: %s\n", scratch, strerror(errno));
    return 1;
  }
  adamjit_context_desc d;
  adamjit_context_desc_init_default(&d);
  d.backend = ADAMJIT_BACKEND_CPU;
  d.log_fn = on_log;
  d.log_level = ADAMJIT_LOG_WARN;
  REQUIRE_OK(adamjit_context_create(&d, &ctx));

  test_hits_and_key_fields();
  test_damaged_entries();
  test_concurrent_writers();
  test_unsafe_directories();
  test_directory_chain();
  test_clear();

  adamjit_context_destroy(ctx);
  rm_rf(scratch);
  return test_finish("test_kernel_cache");
}
