/* `adamjit bench --jit`: what run-time kernels cost. For a model description (default the
 * shipped Llama-2-7B, data/models/llama-7b.tensors) and optimizer variants (fp32, 8bit-bB),
 * it collects the distinct kernels the GPU backends would launch for every tensor
 * (adamjit_optimizer_kernel_keys), then for each compiler that is available here (NVRTC
 * for the cuda dialect, the OpenCL driver for the opencl dialect):
 *   <compiler>-cold   compile time per kernel (median), from an empty cache
 *   <compiler>-warm   time per kernel to get the binary from the disk cache (median of
 *                     --repeats rounds, the memory cache emptied before each): render +
 *                     read + checksum, and for OpenCL the program created from the binary
 *   <compiler>-set    wall time to make the whole kernel set ready from the warm disk cache
 * The cache is a fresh scratch directory (removed at the end) unless --cache-dir is given. */
#define _XOPEN_SOURCE 700 /* nftw */
#include "cli.h"
#include "model_file.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { MAX_KEYS = 64, MAX_CONFIGS = 8 };
/* Targets of the issue: a kernel from the warm disk cache in <= 2 ms, the kernel set of a
 * 7B model ready in < 50 ms. */
#define WARM_TARGET_MS 2.0
#define SET_TARGET_MS 50.0

typedef struct jit_config {
  char name[16];
  int bits, block;
} jit_config;

typedef struct jit_options {
  const char* model;
  const char* cache_dir;
  const char* arch;
  const char* device;
  adamjit_backend backend;
  int repeats;
  int json;
  int n_configs;
  jit_config configs[MAX_CONFIGS];
} jit_options;

static int add_config(jit_options* o, const char* s, size_t len) {
  jit_config c;
  memset(&c, 0, sizeof c);
  if (len >= sizeof c.name) return cli_usage_error("--variants: '%.*s' is not a variant", (int)len, s), 0;
  memcpy(c.name, s, len);
  if (strcmp(c.name, "fp32") == 0) {
    c.bits = 32;
  } else if (strncmp(c.name, "8bit-b", 6) == 0) {
    c.bits = 8;
    if (!cli_parse_int("--variants", c.name + 6, 64, 4096, &c.block)) return 0;
    if (c.block & (c.block - 1)) return cli_usage_error("--variants: block %d is not a power of two", c.block), 0;
  } else {
    return cli_usage_error("--variants: '%s' (expected fp32 or 8bit-bB)", c.name), 0;
  }
  if (o->n_configs == MAX_CONFIGS) return cli_usage_error("--variants: at most %d", MAX_CONFIGS), 0;
  o->configs[o->n_configs++] = c;
  return 1;
}

static int parse_configs(jit_options* o, const char* text) {
  o->n_configs = 0;
  for (const char* s = text;;) {
    size_t len = strcspn(s, ",");
    if (len == 0) return cli_usage_error("--variants: empty entry in '%s'", text), 0;
    if (!add_config(o, s, len)) return 0;
    if (!s[len]) return 1;
    s += len + 1;
  }
}

/* Returns -1 to go on, else an exit code. */
static int parse(int argc, char** argv, jit_options* o) {
  memset(o, 0, sizeof *o);
  o->backend = ADAMJIT_BACKEND_CPU;
  o->repeats = 7;
  parse_configs(o, "fp32,8bit-b256");
  for (int i = 1; i < argc; i++) {
    const char* v = NULL;
    int r;
    if (cli_flag(argv[i], "--jit") == 1) continue;
    if (cli_is_help(argv[i])) {
      cli_print_usage(stdout);
      return CLI_EXIT_OK;
    }
    if ((r = cli_flag(argv[i], "--json")) != 0) {
      if (r < 0) return CLI_EXIT_USAGE;
      o->json = 1;
    } else if ((r = cli_option(argc, argv, &i, "--model", &v)) != 0) {
      if (r < 0) return CLI_EXIT_USAGE;
      o->model = v;
    } else if ((r = cli_option(argc, argv, &i, "--cache-dir", &v)) != 0) {
      if (r < 0) return CLI_EXIT_USAGE;
      o->cache_dir = v;
    } else if ((r = cli_option(argc, argv, &i, "--arch", &v)) != 0) {
      if (r < 0) return CLI_EXIT_USAGE;
      o->arch = v;
    } else if ((r = cli_option(argc, argv, &i, "--device", &v)) != 0) {
      if (r < 0) return CLI_EXIT_USAGE;
      o->device = v;
    } else if ((r = cli_option(argc, argv, &i, "--repeats", &v)) != 0) {
      if (r < 0 || !cli_parse_int("--repeats", v, 1, 1000, &o->repeats)) return CLI_EXIT_USAGE;
    } else if ((r = cli_option(argc, argv, &i, "--variants", &v)) != 0) {
      if (r < 0 || !parse_configs(o, v)) return CLI_EXIT_USAGE;
    } else if ((r = cli_option(argc, argv, &i, "--backend", &v)) != 0) {
      if (r < 0 || !cli_parse_backend("--backend", v, &o->backend)) return CLI_EXIT_USAGE;
    } else {
      return cli_usage_error("bench --jit: unknown option '%s'", argv[i]);
    }
  }
  return -1;
}

typedef struct key_set {
  char keys[MAX_KEYS][ADAMJIT_KERNEL_KEY_MAX];
  int n;
} key_set;

static int add_key(key_set* s, const char* key) {
  for (int i = 0; i < s->n; i++)
    if (strcmp(s->keys[i], key) == 0) return 1;
  if (s->n == MAX_KEYS) return cli_error("bench --jit: more than %d distinct kernels", MAX_KEYS), 0;
  size_t len = strnlen(key, ADAMJIT_KERNEL_KEY_MAX - 1);
  memcpy(s->keys[s->n], key, len);
  s->keys[s->n++][len] = '\0';
  return 1;
}

/* The distinct kernels of every tensor under every config, for one dialect. */
static int collect_keys(adamjit_context* ctx, const jit_options* o, const model_file* m, const char* dialect,
                        key_set* out) {
  out->n = 0;
  for (int c = 0; c < o->n_configs; c++) {
    adamjit_optimizer_config cfg;
    adamjit_optimizer_config_init_default(&cfg);
    cfg.optim_bits = o->configs[c].bits;
    if (o->configs[c].bits == 8) cfg.quant_block_size = o->configs[c].block;
    adamjit_optimizer* opt = NULL;
    adamjit_status st = adamjit_optimizer_create(ctx, &cfg, &opt);
    if (st) return cli_library_error(ctx, st, "bench --jit: optimizer for %s", o->configs[c].name), 0;
    for (int t = 0; t < m->count; t++) {
      char keys[4][ADAMJIT_KERNEL_KEY_MAX];
      int n = 0;
      st = model_tensor_kernel_keys(opt, &m->tensors[t], dialect, keys, 4, &n);
      if (st) {
        adamjit_optimizer_destroy(opt);
        return cli_library_error(ctx, st, "bench --jit: kernels of %s", m->tensors[t].name), 0;
      }
      for (int k = 0; k < n && k < 4; k++)
        if (!add_key(out, keys[k])) {
          adamjit_optimizer_destroy(opt);
          return 0;
        }
    }
    adamjit_optimizer_destroy(opt);
  }
  return 1;
}

typedef struct dialect_result {
  int available;
  char why[512];
  char target[256];
  double cold_ms;  /* median per kernel */
  double warm_ms;  /* median per kernel */
  double set_ms;   /* median of the whole set's wall time */
} dialect_result;

static adamjit_status build(adamjit_context* ctx, const jit_options* o, const char* key, adamjit_kernel_build_info* info) {
  adamjit_kernel_build_desc d;
  adamjit_kernel_build_desc_init_default(&d);
  d.arch = o->arch;
  d.device = o->device;
  memset(info, 0, sizeof *info);
  info->struct_size = sizeof *info;
  return adamjit_kernel_build(ctx, key, &d, info);
}

static int run_dialect(adamjit_context* ctx, const jit_options* o, const key_set* keys, dialect_result* r) {
  memset(r, 0, sizeof *r);
  double* cold = calloc((size_t)keys->n, sizeof *cold);
  double* warm = calloc((size_t)keys->n * (size_t)o->repeats, sizeof *warm);
  double* set = calloc((size_t)o->repeats, sizeof *set);
  int rc = CLI_EXIT_OK;
  if (!cold || !warm || !set) rc = cli_error("out of memory");
  /* Cold: the scratch cache is empty, so the first build of each key compiles (and stores). */
  for (int k = 0; k < keys->n && rc == CLI_EXIT_OK; k++) {
    adamjit_kernel_build_info info;
    adamjit_status st = build(ctx, o, keys->keys[k], &info);
    adamjit_free(info.log);
    if (st == ADAMJIT_ERR_BACKEND_UNAVAILABLE) { /* no NVRTC / no OpenCL device here: say so, go on */
      snprintf(r->why, sizeof r->why, "%s", adamjit_context_last_error(ctx));
      goto done;
    }
    if (st) {
      rc = cli_library_error(ctx, st, "bench --jit: %s", keys->keys[k]);
      break;
    }
    if (info.source != ADAMJIT_KERNEL_COMPILED) {
      rc = cli_error("bench --jit: %s came from the cache; give an empty --cache-dir for cold times", keys->keys[k]);
      break;
    }
    cold[k] = info.render_ms + info.build_ms;
    snprintf(r->target, sizeof r->target, "%s", info.target);
  }
  /* Warm: the memory cache emptied, every key from disk; timed per key and as a set. */
  for (int rep = 0; rep < o->repeats && rc == CLI_EXIT_OK; rep++) {
    adamjit_status st = adamjit_kernel_cache_clear(ctx, ADAMJIT_KERNEL_CACHE_MEMORY);
    if (st) {
      rc = cli_library_error(ctx, st, "bench --jit: clearing the memory cache");
      break;
    }
    double t0 = cli_now();
    for (int k = 0; k < keys->n && rc == CLI_EXIT_OK; k++) {
      adamjit_kernel_build_info info;
      st = build(ctx, o, keys->keys[k], &info);
      adamjit_free(info.log);
      if (st) rc = cli_library_error(ctx, st, "bench --jit: %s", keys->keys[k]);
      else if (info.source != ADAMJIT_KERNEL_FROM_DISK_CACHE)
        rc = cli_error("bench --jit: %s was not loaded from the disk cache (is the cache off?)", keys->keys[k]);
      warm[rep * keys->n + k] = info.render_ms + info.build_ms;
    }
    set[rep] = 1e3 * (cli_now() - t0);
  }
  if (rc == CLI_EXIT_OK) {
    r->available = 1;
    r->cold_ms = cli_median(cold, keys->n);
    r->warm_ms = cli_median(warm, keys->n * o->repeats);
    r->set_ms = cli_median(set, o->repeats);
  }
done:
  free(cold);
  free(warm);
  free(set);
  return rc;
}

static int remove_entry(const char* path, const struct stat* st, int flag, struct FTW* ftw) {
  (void)st, (void)flag, (void)ftw;
  return remove(path);
}

static void print_result(const char* dialect, const char* compiler, const model_file* m, const char* model,
                         const key_set* keys, const jit_options* o, const dialect_result* r) {
  if (!r->available) {
    /* the reason is free text: on stderr, so the JSON lines need no escaping */
    if (o->json)
      printf("{\"variant\":\"%s\",\"case\":\"%s\",\"dialect\":\"%s\",\"available\":false}\n", compiler, model,
             dialect);
    else
      printf("%-7s not measured: %s\n", compiler, r->why);
    if (o->json) fprintf(stderr, "adamjit: bench --jit: %s not measured: %s\n", compiler, r->why);
    return;
  }
  if (o->json) {
    printf("{\"variant\":\"%s-cold\",\"case\":\"%s\",\"dialect\":\"%s\",\"kernels\":%d,\"tensors\":%d,"
           "\"seconds_per_kernel\":%.6g}\n",
           compiler, model, dialect, keys->n, m->count, 1e-3 * r->cold_ms);
    printf("{\"variant\":\"%s-warm\",\"case\":\"%s\",\"dialect\":\"%s\",\"kernels\":%d,\"tensors\":%d,\"repeats\":%d,"
           "\"seconds_per_kernel\":%.6g,\"target_seconds\":%.6g,\"ratio\":%.4f,\"speedup_vs_cold\":%.2f}\n",
           compiler, model, dialect, keys->n, m->count, o->repeats, 1e-3 * r->warm_ms, 1e-3 * WARM_TARGET_MS,
           WARM_TARGET_MS / r->warm_ms, r->cold_ms / r->warm_ms);
    printf("{\"variant\":\"%s-set\",\"case\":\"%s\",\"dialect\":\"%s\",\"kernels\":%d,\"tensors\":%d,\"repeats\":%d,"
           "\"seconds\":%.6g,\"target_seconds\":%.6g,\"ratio\":%.4f}\n",
           compiler, model, dialect, keys->n, m->count, o->repeats, 1e-3 * r->set_ms, 1e-3 * SET_TARGET_MS,
           SET_TARGET_MS / r->set_ms);
  } else {
    printf("%-7s target %s\n", compiler, r->target);
    printf("  %-14s %9.2f ms/kernel\n", "cold compile", r->cold_ms);
    printf("  %-14s %9.3f ms/kernel  (target <= %.0f ms: %s; %.0fx faster than cold)\n", "warm load", r->warm_ms,
           WARM_TARGET_MS, r->warm_ms <= WARM_TARGET_MS ? "met" : "NOT met", r->cold_ms / r->warm_ms);
    printf("  %-14s %9.3f ms for all %d kernels  (target < %.0f ms: %s)\n", "warm set", r->set_ms, keys->n,
           SET_TARGET_MS, r->set_ms < SET_TARGET_MS ? "met" : "NOT met");
  }
  fflush(stdout);
}

int bench_jit(int argc, char** argv) {
  jit_options o;
  int rc = parse(argc, argv, &o);
  if (rc >= 0) return rc;
  char model_path[4096];
  if (!o.model) {
    if (!model_file_find("llama-7b.tensors", model_path, sizeof model_path))
      return cli_error("bench --jit: data/models/llama-7b.tensors not found; give --model FILE");
    o.model = model_path;
  }
  model_file m;
  if (!model_file_read(o.model, &m)) return CLI_EXIT_FAILURE;
  const char* model_name = strrchr(o.model, '/') ? strrchr(o.model, '/') + 1 : o.model;

  char scratch[4096];
  const char* cache_dir = o.cache_dir;
  if (!cache_dir) {
    const char* tmp = getenv("TMPDIR");
    snprintf(scratch, sizeof scratch, "%s/adamjit-bench-jit-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(scratch)) {
      model_file_free(&m);
      return cli_error("bench --jit: cannot create a scratch cache directory %s", scratch);
    }
    cache_dir = scratch;
  }
  /* PoCL keeps its own cache of compiled kernels (~/.cache/pocl): a cold OpenCL compile is
   * only cold in a fresh one. Set before the first OpenCL call loads PoCL; a caller's own
   * setting is kept (then OpenCL "cold" may be a PoCL cache hit). */
  char pocl_dir[4200];
  int own_pocl_dir = 0;
  if (!getenv("POCL_CACHE_DIR")) {
    snprintf(pocl_dir, sizeof pocl_dir, "%s/pocl", cache_dir);
    own_pocl_dir = setenv("POCL_CACHE_DIR", pocl_dir, 1) == 0;
  }
  adamjit_context_desc cd;
  adamjit_context_desc_init_default(&cd);
  cd.backend = o.backend;
  cd.cache_dir = cache_dir;
  cd.log_fn = cli_log_stderr;
  adamjit_context* ctx = NULL;
  adamjit_status st = adamjit_context_create(&cd, &ctx);
  if (st) rc = cli_library_error(NULL, st, "bench --jit: context");
  else rc = CLI_EXIT_OK;

  static const char* const dialects[2] = {"cuda", "opencl"};
  static const char* const compilers[2] = {"nvrtc", "opencl"};
  if (rc == CLI_EXIT_OK && !o.json) {
    double params = 0;
    for (int t = 0; t < m.count; t++) params += (double)m.tensors[t].numel;
    printf("adamjit bench --jit: %s (%d tensors, %.3g parameters), optimizer variants", o.model, m.count, params);
    for (int c = 0; c < o.n_configs; c++) printf(" %s", o.configs[c].name);
    printf("\ncache: %s; warm = memory cache emptied, binary from disk (median of %d rounds)\n", cache_dir,
           o.repeats);
  }
  for (int d = 0; d < 2 && rc == CLI_EXIT_OK; d++) {
    key_set* keys = calloc(1, sizeof *keys);
    if (!keys) rc = cli_error("out of memory");
    else if (!collect_keys(ctx, &o, &m, dialects[d], keys)) rc = CLI_EXIT_FAILURE;
    dialect_result r;
    if (rc == CLI_EXIT_OK) rc = run_dialect(ctx, &o, keys, &r);
    if (rc == CLI_EXIT_OK) {
      if (!o.json) {
        printf("\n%s kernels of this model (%d):\n", dialects[d], keys->n);
        for (int k = 0; k < keys->n; k++) printf("  %s\n", keys->keys[k]);
      }
      print_result(dialects[d], compilers[d], &m, model_name, keys, &o, &r);
    }
    free(keys);
  }
  adamjit_context_destroy(ctx);
  if (own_pocl_dir) nftw(pocl_dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
  if (!o.cache_dir) nftw(cache_dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
  model_file_free(&m);
  return rc;
}
