/* Tuning databases (adamjit.h "tuning"): records that a new context finds at device level,
 * the lookup order (override, device -> architecture -> vendor, overlay -> cache ->
 * built-in, size bucket before every size, defaults), databases rejected whole with a WARN
 * naming the reason, overrides that change the next step's kernel without changing its
 * results (bit for bit against the CPU backend), and bad inputs that change nothing.
 * The parts that need a GPU-dialect context run on OpenCL (PoCL in CI); without a device
 * they are skipped (77) after the CPU-context checks. */
#define _GNU_SOURCE /* mkdtemp, nftw (pocl_scratch.h) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adamjit/adamjit.h"
#include "harness.h"
#include "pocl_scratch.h"

static char cache_dir[512], overlay[512];
static char warnings[8192]; /* every WARN of the contexts below, for the rejection checks */

static void on_log(adamjit_log_level level, const char* message, void* user) {
  (void)user;
  if (level > ADAMJIT_LOG_WARN) return;
  size_t n = strlen(warnings);
  snprintf(warnings + n, sizeof warnings - n, "%s\n", message);
}

static adamjit_context* open_ctx(adamjit_backend kind, const char* db, int use_tuning) {
  adamjit_context_desc d;
  adamjit_context_desc_init_default(&d);
  CHECK(d.use_tuning == 1 && d.tuning_db == NULL);
  d.backend = kind;
  d.cache_dir = cache_dir;
  d.tuning_db = db;
  d.use_tuning = use_tuning;
  d.log_fn = on_log;
  adamjit_context* ctx = NULL;
  adamjit_status st = adamjit_context_create(&d, &ctx);
  return st ? NULL : ctx;
}

static void write_text(const char* path, const char* text) {
  FILE* f = fopen(path, "w");
  REQUIRE_OK(f ? ADAMJIT_OK : ADAMJIT_ERR_IO);
  fputs(text, f);
  fclose(f);
}

static char* read_text(const char* path) {
  FILE* f = fopen(path, "r");
  if (!f) return NULL;
  static char buf[1 << 16];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = '\0';
  fclose(f);
  return buf;
}

/* One lookup on a fresh context (databases are read once per context). */
static adamjit_tuning_result lookup_fresh(const char* db, int use_tuning, const char* key, int64_t numel) {
  adamjit_tuning_result r;
  memset(&r, 0, sizeof r);
  r.struct_size = sizeof r;
  adamjit_context* ctx = open_ctx(ADAMJIT_BACKEND_OPENCL, db, use_tuning);
  REQUIRE_OK(ctx ? ADAMJIT_OK : ADAMJIT_ERR_BACKEND_UNAVAILABLE);
  CHECK_OK(adamjit_tuning_lookup(ctx, key, numel, &r));
  adamjit_context_destroy(ctx);
  return r;
}

static int ends_with(const char* s, const char* tail) {
  size_t a = strlen(s), b = strlen(tail);
  return a >= b && strcmp(s + a - b, tail) == 0;
}

/* ------------------------------------------------------- CPU contexts */

static void test_cpu_only(void) {
  CHECK(strcmp(adamjit_tuning_level_name(ADAMJIT_TUNING_DEFAULT), "default") == 0);
  CHECK(strcmp(adamjit_tuning_level_name(ADAMJIT_TUNING_VENDOR), "vendor") == 0);
  CHECK(strcmp(adamjit_tuning_level_name(ADAMJIT_TUNING_ARCHITECTURE), "architecture") == 0);
  CHECK(strcmp(adamjit_tuning_level_name(ADAMJIT_TUNING_DEVICE), "device") == 0);
  CHECK(strcmp(adamjit_tuning_level_name(ADAMJIT_TUNING_OVERRIDE), "override") == 0);
  CHECK(adamjit_tuning_level_name((adamjit_tuning_level)9) == NULL);

  adamjit_context_desc d;
  adamjit_context_desc_init_default(&d);
  d.backend = ADAMJIT_BACKEND_CPU;
  d.use_tuning = 2;
  adamjit_context* bad = NULL;
  CHECK_STATUS(adamjit_context_create(&d, &bad), ADAMJIT_ERR_INVALID_VALUE);
  CHECK(strstr(adamjit_last_error(), "use_tuning") != NULL);

  adamjit_context* ctx = open_ctx(ADAMJIT_BACKEND_CPU, NULL, 1);
  REQUIRE_OK(ctx ? ADAMJIT_OK : ADAMJIT_ERR_INTERNAL);
  adamjit_tuning_device dev = {.struct_size = sizeof dev};
  adamjit_tuning_result r = {.struct_size = sizeof r};
  const char* key = "adamw32/opencl/p=f32/g=f32/wd/nonfinite/wg=64/ept=1/vec=1";
  CHECK_STATUS(adamjit_tuning_device_info(ctx, &dev), ADAMJIT_ERR_UNSUPPORTED);
  CHECK(strstr(adamjit_context_last_error(ctx), "cpu backend") != NULL);
  CHECK_STATUS(adamjit_tuning_lookup(ctx, key, 100, &r), ADAMJIT_ERR_UNSUPPORTED);
  CHECK_STATUS(adamjit_tuning_override(ctx, key), ADAMJIT_ERR_UNSUPPORTED);
  CHECK_STATUS(adamjit_tuning_override_clear(ctx, NULL), ADAMJIT_ERR_UNSUPPORTED);
  CHECK_STATUS(adamjit_tuning_record(ctx, key, 100, 1.0, 0.0), ADAMJIT_ERR_UNSUPPORTED);
  char path[600];
  CHECK_OK(adamjit_tuning_db_path(ctx, path, sizeof path));
  CHECK(ends_with(path, "/tuning.json") && strncmp(path, cache_dir, strlen(cache_dir)) == 0);
  CHECK_STATUS(adamjit_tuning_db_path(ctx, path, 4), ADAMJIT_ERR_INVALID_SIZE);
  CHECK(access(path, F_OK) != 0); /* nothing was recorded */

  adamjit_optimizer* opt = NULL;
  REQUIRE_OK(adamjit_optimizer_create(ctx, NULL, &opt));
  float* p = test_calloc(64, sizeof *p);
  adamjit_tensor_desc td;
  adamjit_tensor_desc_init_default(&td);
  td.param = p;
  td.grad = p;
  td.numel = 64;
  int index = -1;
  REQUIRE_OK(adamjit_optimizer_add_tensor(opt, &td, &index));
  CHECK_STATUS(adamjit_optimizer_tensor_tuning(opt, index, &r), ADAMJIT_ERR_UNSUPPORTED);
  CHECK(strstr(adamjit_context_last_error(ctx), "no run-time kernels") != NULL);
  adamjit_optimizer_destroy(opt);
  free(p);

  CHECK_STATUS(adamjit_tuning_lookup(NULL, key, 100, &r), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK_STATUS(adamjit_tuning_override(NULL, key), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK_STATUS(adamjit_tuning_record(NULL, key, 100, 1.0, 0.0), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK_STATUS(adamjit_tuning_device_info(NULL, &dev), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK_STATUS(adamjit_tuning_db_path(NULL, path, sizeof path), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK_STATUS(adamjit_optimizer_tensor_tuning(NULL, 0, &r), ADAMJIT_ERR_NULL_ARGUMENT);
  adamjit_context_destroy(ctx);
}

/* ------------------------------------------------------- lookups */

static adamjit_tuning_device device;
/* not in the built-in database (no wd), so only the files below answer for it */
static const char* const kernel = "adamw32/opencl/p=f32/g=f32/nonfinite";

static void overlay_entries(int vendor, int arch, int dev, const char* extra) {
  char text[8192];
  int n = snprintf(text, sizeof text, "{\"adamjit_tuning\": 1, \"entries\": [\n");
  const char* sep = "";
  if (vendor) {
    n += snprintf(text + n, sizeof text - n,
                  "%s{\"dialect\": \"opencl\", \"vendor\": \"%s\", \"kernel\": \"%s\", \"wg\": 32, \"ept\": 1, \"vec\": 1}\n",
                  sep, device.vendor, kernel);
    sep = ",";
  }
  if (arch) {
    n += snprintf(text + n, sizeof text - n,
                  "%s{\"dialect\": \"opencl\", \"architecture\": \"%s\", \"kernel\": \"%s\", \"wg\": 128, \"ept\": 1, "
                  "\"vec\": 1},\n"
                  "{\"dialect\": \"opencl\", \"architecture\": \"%s\", \"kernel\": \"%s\", \"bucket\": \"1e4\", \"wg\": 512, "
                  "\"ept\": 1, \"vec\": 1}\n",
                  sep, device.architecture, kernel, device.architecture, kernel);
    sep = ",";
  }
  if (dev) {
    n += snprintf(text + n, sizeof text - n,
                  "%s{\"dialect\": \"opencl\", \"vendor\": \"%s\", \"device\": \"%s\", \"kernel\": \"%s\", \"wg\": 256, "
                  "\"ept\": 2, \"vec\": 1, \"note\": \"a test\"}\n",
                  sep, device.vendor, device.device, kernel);
    sep = ",";
  }
  if (extra) n += snprintf(text + n, sizeof text - n, "%s%s\n", sep, extra);
  snprintf(text + n, sizeof text - n, "]}\n");
  write_text(overlay, text);
}

static void test_builtin_and_order(void) {
  adamjit_context* ctx = open_ctx(ADAMJIT_BACKEND_OPENCL, NULL, 1);
  device.struct_size = sizeof device;
  REQUIRE_OK(adamjit_tuning_device_info(ctx, &device));
  printf("device: dialect %s, vendor \"%s\", architecture \"%s\", device \"%s\"\n", device.dialect, device.vendor,
         device.architecture, device.device);
  CHECK(strcmp(device.dialect, "opencl") == 0);
  CHECK(device.vendor[0] && device.architecture[0] && device.device[0]);
  adamjit_tuning_result r = {.struct_size = sizeof r};
  CHECK_STATUS(adamjit_tuning_lookup(ctx, "adamw32/cuda/p=f32/g=f32", 10, &r), ADAMJIT_ERR_INVALID_VALUE);
  CHECK_STATUS(adamjit_tuning_lookup(ctx, "adamw32/opencl/p=f32/g=f32", 0, &r), ADAMJIT_ERR_INVALID_SIZE);
  CHECK_STATUS(adamjit_tuning_lookup(ctx, "adamw32/opencl/bogus", 10, &r), ADAMJIT_ERR_INVALID_VALUE);
  r.struct_size = 3;
  CHECK_STATUS(adamjit_tuning_lookup(ctx, "adamw32/opencl/p=f32/g=f32", 10, &r), ADAMJIT_ERR_INVALID_SIZE);
  r.struct_size = sizeof r;
  /* an untuned family answers its defaults */
  CHECK_OK(adamjit_tuning_lookup(ctx, "sqnorm/opencl/g=f32/nonfinite/wg=1024/ept=1/vec=1", 10, &r));
  CHECK(r.level == ADAMJIT_TUNING_DEFAULT && strcmp(r.source, "") == 0);
  CHECK_MSG(strcmp(r.key, "sqnorm/opencl/g=f32/nonfinite/wg=256/ept=4/vec=4") == 0, "%s", r.key);
  CHECK_OK(adamjit_tuning_lookup(ctx, "adamw8/opencl/b=0/wg=1024/ept=1/vec=1", 10, &r));
  CHECK_MSG(r.level == ADAMJIT_TUNING_DEFAULT && ends_with(r.key, "/b=0/wg=256/ept=4/vec=4"), "%s", r.key);
  adamjit_context_destroy(ctx);

  const int pocl = strcmp(device.architecture, "Portable Computing Language cpu") == 0;
  /* the built-in database: architecture-level entries for PoCL */
  r = lookup_fresh(NULL, 1, "adamw32/opencl/p=f32/g=f32/wd/nonfinite/wg=1024", 123456);
  if (pocl) {
    CHECK_MSG(r.level == ADAMJIT_TUNING_ARCHITECTURE && strcmp(r.source, "built-in") == 0, "%s %s",
              adamjit_tuning_level_name(r.level), r.source);
    /* data/tuning/builtin.json's measured entry for bucket 1e5 */
    CHECK_MSG(strcmp(r.key, "adamw32/opencl/p=f32/g=f32/wd/nonfinite/wg=256/ept=1/vec=1") == 0, "%s", r.key);
    r = lookup_fresh(NULL, 1, "adamw8/opencl/p=bf16/g=bf16/b=256/amsgrad/wd/nonfinite", 50000);
    CHECK_MSG(r.level == ADAMJIT_TUNING_ARCHITECTURE && ends_with(r.key, "/wg=128/ept=4/vec=1"), "%s", r.key);
    r = lookup_fresh(NULL, 1, "adamw8/opencl/p=bf16/g=bf16/b=256/amsgrad/wd/nonfinite", 50000000);
    CHECK_MSG(r.level == ADAMJIT_TUNING_ARCHITECTURE && ends_with(r.key, "/wg=128/ept=16/vec=1"), "%s", r.key);
  } else {
    printf("not PoCL: the built-in entries are not checked\n");
  }
  /* use_tuning = 0: the defaults, which for PoCL are the same values */
  r = lookup_fresh(NULL, 0, "adamw32/opencl/p=f32/g=f32/wd/nonfinite", 123456);
  CHECK(r.level == ADAMJIT_TUNING_DEFAULT && strcmp(r.source, "") == 0);
  CHECK_MSG(strcmp(r.key, "adamw32/opencl/p=f32/g=f32/wd/nonfinite/wg=64/ept=1/vec=1") == 0, "%s", r.key);
  /* a multi kernel answers its plain kernel's launch (PoCL: the any-size entry) */
  r = lookup_fresh(NULL, 1, "adamw32/opencl/p=f32/g=f32/wd/nonfinite/multi", 1000);
  CHECK_MSG(ends_with(r.key, "/multi/wg=64/ept=1/vec=1") &&
                r.level == (pocl ? ADAMJIT_TUNING_ARCHITECTURE : ADAMJIT_TUNING_DEFAULT),
            "%s", r.key);

  /* the overlay: each level answers when the more specific ones are gone */
  warnings[0] = '\0';
  overlay_entries(1, 1, 1, NULL);
  r = lookup_fresh(overlay, 1, kernel, 50000);
  CHECK_MSG(r.level == ADAMJIT_TUNING_DEVICE && ends_with(r.key, "/wg=256/ept=2/vec=1"), "%s", r.key);
  CHECK(strcmp(r.source, overlay) == 0);
  r = lookup_fresh(overlay, 0, kernel, 50000);
  CHECK(r.level == ADAMJIT_TUNING_DEFAULT);
  overlay_entries(1, 1, 0, NULL);
  r = lookup_fresh(overlay, 1, kernel, 50000); /* bucket 1e4: the size-specific entry */
  CHECK_MSG(r.level == ADAMJIT_TUNING_ARCHITECTURE && ends_with(r.key, "/wg=512/ept=1/vec=1"), "%s", r.key);
  r = lookup_fresh(overlay, 1, kernel, 500000); /* bucket 1e5: the every-size one */
  CHECK_MSG(r.level == ADAMJIT_TUNING_ARCHITECTURE && ends_with(r.key, "/wg=128/ept=1/vec=1"), "%s", r.key);
  overlay_entries(1, 0, 0, NULL);
  r = lookup_fresh(overlay, 1, kernel, 50000);
  CHECK_MSG(r.level == ADAMJIT_TUNING_VENDOR && ends_with(r.key, "/wg=32/ept=1/vec=1"), "%s", r.key);
  overlay_entries(0, 0, 0, NULL);
  r = lookup_fresh(overlay, 1, kernel, 50000);
  CHECK(r.level == ADAMJIT_TUNING_DEFAULT);
  CHECK_MSG(warnings[0] == '\0', "%s", warnings);
  /* a user overlay that is not there is worth a WARN (a mistyped path) */
  char missing[600];
  snprintf(missing, sizeof missing, "%s.nope", overlay);
  r = lookup_fresh(missing, 1, kernel, 50000);
  CHECK(r.level == ADAMJIT_TUNING_DEFAULT && strstr(warnings, ".nope") != NULL);
  /* $ADAMJIT_TUNING_DB when the desc names none */
  overlay_entries(1, 0, 0, NULL);
  setenv("ADAMJIT_TUNING_DB", overlay, 1);
  r = lookup_fresh(NULL, 1, kernel, 50000);
  CHECK(r.level == ADAMJIT_TUNING_VENDOR);
  unsetenv("ADAMJIT_TUNING_DB");
}

/* Each bad database is ignored whole (its valid device entry does not answer) with a WARN
 * that names the file and the reason. */
static void test_rejected(void) {
  char entry[1024];
  snprintf(entry, sizeof entry,
           "{\"dialect\": \"opencl\", \"device\": \"%s\", \"kernel\": \"%s\", \"wg\": 256, \"ept\": 1, \"vec\": 1}",
           device.device, kernel);
  struct {
    const char* what;
    char text[4096];
    const char* reason;
  } cases[6];
  int n = 0;
  cases[n].what = "bad JSON";
  snprintf(cases[n].text, sizeof cases[n].text, "{\"adamjit_tuning\": 1,\n \"entries\": [%s,\n ]\n", entry);
  cases[n++].reason = "not valid JSON (at line 3";
  cases[n].what = "wrong marker";
  snprintf(cases[n].text, sizeof cases[n].text, "{\"adamjit_tuning\": 2, \"entries\": [%s]}", entry);
  cases[n++].reason = "format version 2";
  cases[n].what = "no marker";
  snprintf(cases[n].text, sizeof cases[n].text, "{\"entries\": [%s]}", entry);
  cases[n++].reason = "not a tuning database";
  cases[n].what = "wrong dialect";
  snprintf(cases[n].text, sizeof cases[n].text,
           "{\"adamjit_tuning\": 1, \"entries\": [%s, {\"dialect\": \"opencl\", \"vendor\": \"x\", \"kernel\": "
           "\"adamw32/cuda/p=f32/g=f32\", \"wg\": 64, \"ept\": 1, \"vec\": 1}]}",
           entry);
  cases[n++].reason = "entries[1]: kernel \"adamw32/cuda/p=f32/g=f32\" is not of the entry's dialect";
  cases[n].what = "invalid wg";
  snprintf(cases[n].text, sizeof cases[n].text,
           "{\"adamjit_tuning\": 1, \"entries\": [%s, {\"dialect\": \"opencl\", \"vendor\": \"x\", \"kernel\": \"%s\", "
           "\"wg\": 48, \"ept\": 1, \"vec\": 1}]}",
           entry, kernel);
  cases[n++].reason = "entries[1]: launch parameters:";
  cases[n].what = "launch tokens in the kernel";
  snprintf(cases[n].text, sizeof cases[n].text,
           "{\"adamjit_tuning\": 1, \"entries\": [{\"dialect\": \"opencl\", \"vendor\": \"x\", \"kernel\": "
           "\"%s/wg=64\", \"wg\": 64, \"ept\": 1, \"vec\": 1}, %s]}",
           kernel, entry);
  cases[n++].reason = "entries[0]: kernel";
  for (int i = 0; i < n; i++) {
    write_text(overlay, cases[i].text);
    warnings[0] = '\0';
    adamjit_tuning_result r = lookup_fresh(overlay, 1, kernel, 1000);
    CHECK_MSG(r.level == ADAMJIT_TUNING_DEFAULT, "%s: answered at %s", cases[i].what, adamjit_tuning_level_name(r.level));
    CHECK_MSG(strstr(warnings, overlay) && strstr(warnings, cases[i].reason), "%s: the WARN was \"%s\"", cases[i].what,
              warnings);
    if (i == 4) CHECK_MSG(strstr(warnings, "48") != NULL, "%s", warnings);
  }
  /* the same valid entry alone answers, so the cases above failed for their reasons */
  char text[2048];
  snprintf(text, sizeof text, "{\"adamjit_tuning\": 1, \"entries\": [%s]}", entry);
  write_text(overlay, text);
  adamjit_tuning_result r = lookup_fresh(overlay, 1, kernel, 1000);
  CHECK(r.level == ADAMJIT_TUNING_DEVICE);
}

/* ------------------------------------------------------- records */

static void test_record(void) {
  adamjit_context* ctx = open_ctx(ADAMJIT_BACKEND_OPENCL, NULL, 1);
  char path[600];
  REQUIRE_OK(adamjit_tuning_db_path(ctx, path, sizeof path));
  unlink(path);
  const char* rec = "adamw32/opencl/p=f32/g=f32/nonfinite/wg=128/ept=2/vec=1";
  adamjit_tuning_result r = {.struct_size = sizeof r};
  CHECK_OK(adamjit_tuning_lookup(ctx, kernel, 30000, &r)); /* loads the databases before the record */
  CHECK(r.level == ADAMJIT_TUNING_DEFAULT);
  CHECK_OK(adamjit_tuning_record(ctx, rec, 30000, 0.001, 0.002));
  /* the same context sees its record */
  CHECK_OK(adamjit_tuning_lookup(ctx, kernel, 30000, &r));
  CHECK_MSG(r.level == ADAMJIT_TUNING_DEVICE && strcmp(r.key, rec) == 0 && strcmp(r.source, path) == 0, "%s %s", r.key,
            r.source);
  /* a second kernel and a replacement of the first */
  CHECK_OK(adamjit_tuning_record(ctx, "adamw8/opencl/p=f32/g=f32/b=256/wd/nonfinite/wg=64/ept=2/vec=1", 20000, 0.5, 0));
  CHECK_OK(adamjit_tuning_record(ctx, "adamw32/opencl/p=f32/g=f32/nonfinite/wg=256/ept=1/vec=1", 30000, 0.001, 0.002));
  adamjit_context_destroy(ctx);
  char* text = read_text(path);
  CHECK(text && strstr(text, "\"adamjit_tuning\"") && strstr(text, "\"measured\":\ttrue"));
  int entries = 0;
  for (const char* p = text; p && (p = strstr(p, "\"kernel\"")); p++) entries++;
  CHECK_MSG(entries == 2, "%d entries in\n%s", entries, text);

  /* a new context finds it at device level, for that bucket only */
  r = lookup_fresh(NULL, 1, kernel, 30000);
  CHECK_MSG(r.level == ADAMJIT_TUNING_DEVICE && strcmp(r.key, "adamw32/opencl/p=f32/g=f32/nonfinite/wg=256/ept=1/vec=1") == 0,
            "%s", r.key);
  r = lookup_fresh(NULL, 1, kernel, 300000);
  CHECK(r.level == ADAMJIT_TUNING_DEFAULT);
  /* the overlay comes before the cache's database at the same level */
  char entry[1024];
  snprintf(entry, sizeof entry,
           "{\"adamjit_tuning\": 1, \"entries\": [{\"dialect\": \"opencl\", \"device\": \"%s\", \"kernel\": \"%s\", "
           "\"wg\": 32, \"ept\": 1, \"vec\": 1}, {\"dialect\": \"opencl\", \"architecture\": \"%s\", \"kernel\": "
           "\"adamw8/opencl/p=f32/g=f32/b=256/wd/nonfinite\", \"wg\": 32, \"ept\": 1, \"vec\": 1}]}",
           device.device, kernel, device.architecture);
  write_text(overlay, entry);
  r = lookup_fresh(overlay, 1, kernel, 30000);
  CHECK_MSG(r.level == ADAMJIT_TUNING_DEVICE && ends_with(r.key, "/wg=32/ept=1/vec=1") && strcmp(r.source, overlay) == 0,
            "%s %s", r.key, r.source);
  /* ... but a device entry in the cache comes before an architecture entry in the overlay */
  r = lookup_fresh(overlay, 1, "adamw8/opencl/p=f32/g=f32/b=256/wd/nonfinite", 20000);
  CHECK_MSG(r.level == ADAMJIT_TUNING_DEVICE && ends_with(r.key, "/wg=64/ept=2/vec=1") && strcmp(r.source, path) == 0,
            "%s %s", r.key, r.source);

  /* a malformed file in the cache is reported, never overwritten */
  ctx = open_ctx(ADAMJIT_BACKEND_OPENCL, NULL, 1);
  write_text(path, "{\"adamjit_tuning\": 1, \"entries\": [ oops ]}");
  CHECK_STATUS(adamjit_tuning_record(ctx, rec, 30000, 0.001, 0.002), ADAMJIT_ERR_TUNING_DB);
  CHECK(strstr(adamjit_context_last_error(ctx), "not valid JSON") && strstr(adamjit_context_last_error(ctx), path));
  text = read_text(path);
  CHECK(text && strstr(text, "oops"));
  /* bad inputs */
  CHECK_STATUS(adamjit_tuning_record(ctx, NULL, 30000, 1, 0), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK_STATUS(adamjit_tuning_record(ctx, "adamw32/opencl/p=f32/g=f32/ept=1/vec=1", 30000, 1, 0),
               ADAMJIT_ERR_INVALID_VALUE);
  CHECK(strstr(adamjit_context_last_error(ctx), "wg=") != NULL);
  CHECK_STATUS(adamjit_tuning_record(ctx, rec, 0, 1, 0), ADAMJIT_ERR_INVALID_SIZE);
  CHECK_STATUS(adamjit_tuning_record(ctx, rec, 10, 0, 0), ADAMJIT_ERR_INVALID_VALUE);
  CHECK_STATUS(adamjit_tuning_record(ctx, rec, 10, 1, -1), ADAMJIT_ERR_INVALID_VALUE);
  unlink(path);
  adamjit_context_destroy(ctx);
}

/* ------------------------------------------------------- overrides */

/* Two small fp32 tensors, which the OpenCL backend updates in one grouped launch (the
 * "multi" kernel, which takes their plain kernel's launch), and an 8-bit one. */
enum { N_TENSORS = 3, N32 = 5000, N8 = 8192 };
static const int64_t sizes[N_TENSORS] = {N32, N8, 3000};

typedef struct rig {
  adamjit_context* ctx;
  adamjit_optimizer* opt;
  adamjit_mem p[N_TENSORS], g[N_TENSORS];
} rig;

static void rig_open(rig* r, adamjit_context* ctx, const float* init, const float* grad) {
  memset(r, 0, sizeof *r);
  r->ctx = ctx;
  REQUIRE_OK(adamjit_optimizer_create(ctx, NULL, &r->opt));
  for (int t = 0; t < N_TENSORS; t++) {
    size_t bytes = (size_t)sizes[t] * sizeof(float);
    REQUIRE_OK(adamjit_mem_alloc(ctx, bytes, &r->p[t]));
    REQUIRE_OK(adamjit_mem_alloc(ctx, bytes, &r->g[t]));
    REQUIRE_OK(adamjit_mem_write(ctx, r->p[t], 0, init, bytes));
    REQUIRE_OK(adamjit_mem_write(ctx, r->g[t], 0, grad, bytes));
    adamjit_tensor_desc d;
    adamjit_tensor_desc_init_default(&d);
    d.param = r->p[t];
    d.grad = r->g[t];
    d.numel = sizes[t];
    d.optim_bits = t == 1 ? 8 : 32;
    int index = -1;
    REQUIRE_OK(adamjit_optimizer_add_tensor(r->opt, &d, &index));
  }
}

static void rig_close(rig* r) {
  adamjit_optimizer_destroy(r->opt);
  for (int t = 0; t < N_TENSORS; t++) {
    adamjit_mem_free(r->ctx, r->p[t]);
    adamjit_mem_free(r->ctx, r->g[t]);
  }
}

static int same_params(rig* a, rig* b, float* x, float* y) {
  int same = 1;
  for (int t = 0; t < N_TENSORS; t++) {
    REQUIRE_OK(adamjit_mem_read(a->ctx, x, a->p[t], 0, (size_t)sizes[t] * sizeof(float)));
    REQUIRE_OK(adamjit_mem_read(b->ctx, y, b->p[t], 0, (size_t)sizes[t] * sizeof(float)));
    if (memcmp(x, y, (size_t)sizes[t] * sizeof(float))) {
      fprintf(stderr, "tensor %d differs from the CPU backend's\n", t);
      same = 0;
    }
  }
  return same;
}

static void test_override(void) {
  float* init = test_calloc(N8, sizeof(float));
  float* grad = test_calloc(N8, sizeof(float));
  float* x = test_calloc(N8, sizeof(float));
  float* y = test_calloc(N8, sizeof(float));
  for (int i = 0; i < N8; i++) {
    init[i] = (float)((i * 37 % 101) - 50) / 64.0f;
    grad[i] = (float)((i * 53 % 97) - 48) / 256.0f;
  }
  adamjit_context* gpu = open_ctx(ADAMJIT_BACKEND_OPENCL, NULL, 1);
  adamjit_context* cpu = open_ctx(ADAMJIT_BACKEND_CPU, NULL, 1);
  REQUIRE_OK(gpu && cpu ? ADAMJIT_OK : ADAMJIT_ERR_INTERNAL);
  rig a, b;
  rig_open(&a, gpu, init, grad);
  rig_open(&b, cpu, init, grad);
  adamjit_tuning_result before[2], r = {.struct_size = sizeof r};
  for (int t = 0; t < 2; t++) {
    before[t].struct_size = sizeof before[t];
    CHECK_OK(adamjit_optimizer_tensor_tuning(a.opt, t, &before[t]));
    CHECK(before[t].level != ADAMJIT_TUNING_OVERRIDE);
  }
  CHECK_STATUS(adamjit_optimizer_tensor_tuning(a.opt, N_TENSORS, &r), ADAMJIT_ERR_INVALID_INDEX);
  CHECK_OK(adamjit_optimizer_step(a.opt, NULL));
  CHECK_OK(adamjit_optimizer_step(b.opt, NULL));
  CHECK(same_params(&a, &b, x, y));

  const char* k32 = "adamw32/opencl/p=f32/g=f32/wd/nonfinite/wg=128/ept=2/vec=1";
  const char* k8 = "adamw8/opencl/p=f32/g=f32/b=256/wd/nonfinite/wg=64/ept=2/vec=1";
  /* bad overrides change nothing */
  CHECK_STATUS(adamjit_tuning_override(gpu, NULL), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK_STATUS(adamjit_tuning_override(gpu, "adamw32/opencl/p=f32/g=f32/wd/nonfinite/ept=2/vec=1"),
               ADAMJIT_ERR_INVALID_VALUE);
  CHECK(strstr(adamjit_context_last_error(gpu), "wg=") != NULL);
  CHECK_STATUS(adamjit_tuning_override(gpu, "adamw32/opencl/p=f32/g=f32/wd/nonfinite/wg=128/ept=2"),
               ADAMJIT_ERR_INVALID_VALUE);
  CHECK(strstr(adamjit_context_last_error(gpu), "vec=") != NULL);
  CHECK_STATUS(adamjit_tuning_override(gpu, "adamw32/cuda/p=f32/g=f32/wd/nonfinite/wg=128/ept=2/vec=1"),
               ADAMJIT_ERR_INVALID_VALUE);
  CHECK(strstr(adamjit_context_last_error(gpu), "dialect") != NULL);
  CHECK_STATUS(adamjit_tuning_override(gpu, "adamw32/opencl/p=f32/g=f32/wd/nonfinite/wg=48/ept=2/vec=1"),
               ADAMJIT_ERR_INVALID_VALUE);
  CHECK(strstr(adamjit_context_last_error(gpu), "48") != NULL);
  CHECK_STATUS(adamjit_tuning_override(gpu, "sqnorm/opencl/g=f32/nonfinite/wg=128/ept=2/vec=1"),
               ADAMJIT_ERR_INVALID_VALUE);
  CHECK_STATUS(adamjit_tuning_override(gpu, "adamw32/opencl/p=f32/g=f32/wd/nonfinite/multi/wg=128/ept=2/vec=1"),
               ADAMJIT_ERR_INVALID_VALUE);
  for (int t = 0; t < 2; t++) {
    CHECK_OK(adamjit_optimizer_tensor_tuning(a.opt, t, &r));
    CHECK(r.level == before[t].level && strcmp(r.key, before[t].key) == 0);
  }

  CHECK_OK(adamjit_tuning_override(gpu, k32));
  CHECK_OK(adamjit_tuning_override(gpu, "adamw8/opencl/p=f32/g=f32/b=256/wd/nonfinite/wg=32/ept=1/vec=1"));
  CHECK_OK(adamjit_tuning_override(gpu, k8)); /* replaces the one before */
  CHECK_OK(adamjit_optimizer_tensor_tuning(a.opt, 0, &r));
  CHECK_MSG(r.level == ADAMJIT_TUNING_OVERRIDE && strcmp(r.key, k32) == 0 && strcmp(r.source, "") == 0, "%s", r.key);
  CHECK_OK(adamjit_optimizer_tensor_tuning(a.opt, 1, &r));
  CHECK_MSG(r.level == ADAMJIT_TUNING_OVERRIDE && strcmp(r.key, k8) == 0, "%s", r.key);
  /* an override holds for every size */
  CHECK_OK(adamjit_tuning_lookup(gpu, "adamw32/opencl/p=f32/g=f32/wd/nonfinite", 7, &r));
  CHECK(r.level == ADAMJIT_TUNING_OVERRIDE && strcmp(r.key, k32) == 0);

  /* the next steps launch the overridden kernels, with the same results */
  for (int s = 0; s < 2; s++) {
    CHECK_OK(adamjit_optimizer_step(a.opt, NULL));
    CHECK_OK(adamjit_optimizer_step(b.opt, NULL));
  }
  CHECK(same_params(&a, &b, x, y));
  /* the steps built exactly those kernels: they are in the context's caches now */
  const char* built[2] = {"adamw32/opencl/p=f32/g=f32/wd/nonfinite/multi/wg=128/ept=2/vec=1", k8};
  for (int t = 0; t < 2; t++) {
    adamjit_kernel_build_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    CHECK_OK(adamjit_kernel_build(gpu, built[t], NULL, &info));
    CHECK_MSG(info.source != ADAMJIT_KERNEL_COMPILED, "%s was not built by the step", built[t]);
    adamjit_free(info.log);
  }

  CHECK_STATUS(adamjit_tuning_override_clear(gpu, "adamw32/opencl/bogus"), ADAMJIT_ERR_INVALID_VALUE);
  CHECK_OK(adamjit_tuning_override_clear(gpu, "adamw32/opencl/p=f32/g=f32/wd/nonfinite"));
  CHECK_OK(adamjit_optimizer_tensor_tuning(a.opt, 0, &r));
  CHECK(r.level == before[0].level && strcmp(r.key, before[0].key) == 0);
  CHECK_OK(adamjit_optimizer_tensor_tuning(a.opt, 1, &r));
  CHECK(r.level == ADAMJIT_TUNING_OVERRIDE);
  CHECK_OK(adamjit_tuning_override_clear(gpu, NULL));
  CHECK_OK(adamjit_optimizer_tensor_tuning(a.opt, 1, &r));
  CHECK(r.level == before[1].level && strcmp(r.key, before[1].key) == 0);

  rig_close(&a);
  rig_close(&b);
  adamjit_context_destroy(gpu);
  adamjit_context_destroy(cpu);
  free(init);
  free(grad);
  free(x);
  free(y);
}

int main(void) {
  char scratch[] = "tuning_db_pocl_XXXXXX";
  if (pocl_scratch_begin(scratch)) return 1;
  unsetenv("ADAMJIT_TUNING_DB");
  snprintf(cache_dir, sizeof cache_dir, "%s/cache", scratch);
  snprintf(overlay, sizeof overlay, "%s/overlay.json", scratch);
  test_cpu_only();
  adamjit_context* probe = open_ctx(ADAMJIT_BACKEND_OPENCL, NULL, 1);
  int have_gpu = probe != NULL;
  adamjit_context_destroy(probe);
  if (have_gpu) {
    test_builtin_and_order();
    test_rejected();
    test_record();
    test_override();
  }
  int rc = test_finish("test_tuning_db");
  pocl_scratch_end(scratch);
  if (rc == 0 && !have_gpu) {
    printf("OpenCL parts skipped: no OpenCL device (%s)\n", adamjit_last_error());
    return TEST_SKIP_CODE;
  }
  return rc;
}
