/* `adamjit kernels`: the run-time kernel space, one kernel's source, compiles with their logs,
 * and the kernel cache. */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

static const char kernels_help[] =
    "usage: adamjit kernels [options] [KEY ...]\n"
    "\n"
    "Without KEYs: a summary of the kernel variant space and the cache directory.\n"
    "With KEYs: renders each kernel and compiles it with its dialect's compiler (NVRTC for\n"
    "cuda keys, the OpenCL driver for opencl keys), printing the target, whether the binary\n"
    "came from the cache, its size, the render and compile times and the compile log.\n"
    "\n"
    "  KEY                  e.g. adamw8/cuda/p=bf16/g=f32/b=256/amsgrad/wd/nonfinite/wg=256/ept=4/vec=4\n"
    "                       (tokens in any order; missing ones take their defaults)\n"
    "  --list               print every key of the supported space, one per line\n"
    "  --filter TEXT        with --list: only keys containing TEXT (e.g. adamw8/opencl)\n"
    "  --source             print the rendered source of each KEY instead of compiling\n"
    "  --arch ARCH          NVRTC target for cuda keys (default sm_80, or the GPU of --backend cuda)\n"
    "  --device SEL         OpenCL device for opencl keys, by index or name substring\n"
    "  --no-cache           compile even when a cached binary exists; store nothing\n"
    "  --log                print the compile log even when it is empty\n"
    "  --cache-dir DIR      kernel cache directory (default $ADAMJIT_CACHE_DIR, else\n"
    "                       $XDG_CACHE_HOME/adamjit, else ~/.cache/adamjit)\n"
    "  --template-dir DIR   template override directory (default $ADAMJIT_TEMPLATE_PATH)\n"
    "  --clear-cache        delete every cached kernel in the cache directory, then go on\n"
    "  --backend NAME       context to build in: cpu (default), opencl, cuda, auto\n"
    "\n"
    "Exit status: 0 success, 1 a render or compile failed, 2 bad command line.\n";

typedef struct kernels_opts {
  int list, source, no_cache, log, clear;
  const char* filter;
  const char* arch;
  const char* device;
  const char* cache_dir;
  const char* template_dir;
  adamjit_backend backend;
  char** keys;
  int n_keys;
} kernels_opts;

/* Returns -1 to go on, else the exit code. */
static int parse(int argc, char** argv, kernels_opts* o) {
  memset(o, 0, sizeof *o);
  o->backend = ADAMJIT_BACKEND_CPU;
  o->keys = calloc((size_t)argc, sizeof *o->keys);
  if (!o->keys) return cli_error("out of memory");
  for (int i = 1; i < argc; i++) {
    const char* a = argv[i];
    const char* v = NULL;
    int r;
    if (cli_is_help(a)) {
      fputs(kernels_help, stdout);
      return CLI_EXIT_OK;
    }
    CLI_FLAG("--list", list)
    CLI_FLAG("--source", source)
    CLI_FLAG("--no-cache", no_cache)
    CLI_FLAG("--log", log)
    CLI_FLAG("--clear-cache", clear)
    CLI_OPTION("--filter", filter)
    CLI_OPTION("--arch", arch)
    CLI_OPTION("--device", device)
    CLI_OPTION("--cache-dir", cache_dir)
    CLI_OPTION("--template-dir", template_dir)
    CLI_PARSED("--backend", cli_parse_backend("--backend", v, &o->backend))
    if (a[0] == '-') return cli_usage_error("kernels: unknown option '%s'", a);
    o->keys[o->n_keys++] = argv[i];
  }
  if (o->filter && !o->list) return cli_usage_error("kernels: --filter goes with --list");
  if (o->list && o->n_keys) return cli_usage_error("kernels: --list takes no KEY (use --filter)");
  if (o->source && !o->n_keys) return cli_usage_error("kernels: --source needs a KEY");
  /* Every key is checked before anything runs, so a typo in the fifth key wastes no compile. */
  for (int k = 0; k < o->n_keys; k++) {
    char canon[ADAMJIT_KERNEL_KEY_MAX];
    if (adamjit_kernel_key_canonical(o->keys[k], canon, sizeof canon) != ADAMJIT_OK)
      return cli_usage_error("kernels: bad key '%s': %s", o->keys[k], adamjit_last_error());
  }
  return -1;
}

static int list_keys(const char* filter) {
  int n = adamjit_kernel_variant_count();
  for (int i = 0; i < n; i++) {
    char key[ADAMJIT_KERNEL_KEY_MAX];
    adamjit_status st = adamjit_kernel_variant_key(i, key, sizeof key);
    if (st) return cli_library_error(NULL, st, "kernels: key %d", i);
    if (!filter || strstr(key, filter)) puts(key);
  }
  return CLI_EXIT_OK;
}

/* The space by family and dialect: keys share their first two tokens. */
static int summary(adamjit_context* ctx) {
  int n = adamjit_kernel_variant_count();
  printf("kernel variant space: %d keys at the default launch parameters (wg, ept, vec)\n", n);
  char prev[ADAMJIT_KERNEL_KEY_MAX] = "";
  int count = 0;
  for (int i = 0; i <= n; i++) {
    char key[ADAMJIT_KERNEL_KEY_MAX] = "";
    if (i < n && adamjit_kernel_variant_key(i, key, sizeof key) != ADAMJIT_OK) return cli_error("kernels: key %d", i);
    char* second = strchr(key, '/');
    char* third = second ? strchr(second + 1, '/') : NULL;
    if (third) *third = '\0';
    if (strcmp(key, prev) != 0) {
      if (count) printf("  %-20s %5d\n", prev, count);
      snprintf(prev, sizeof prev, "%s", key);
      count = 0;
    }
    count++;
  }
  char dir[4096];
  if (adamjit_kernel_cache_dir(ctx, dir, sizeof dir) == ADAMJIT_OK)
    printf("kernel cache: %s\n", dir);
  else
    printf("kernel cache: off (%s)\n", adamjit_context_last_error(ctx));
  printf("see 'adamjit kernels --help' to list, render or compile keys\n");
  return CLI_EXIT_OK;
}

static const char* source_name(int source) {
  switch (source) {
    case ADAMJIT_KERNEL_FROM_MEMORY_CACHE: return "memory cache";
    case ADAMJIT_KERNEL_FROM_DISK_CACHE: return "disk cache";
    default: return "compiled";
  }
}

static int build_one(adamjit_context* ctx, const kernels_opts* o, const char* text) {
  char key[ADAMJIT_KERNEL_KEY_MAX];
  adamjit_kernel_key_canonical(text, key, sizeof key); /* validated in parse() */
  if (o->source) {
    char* src = NULL;
    adamjit_status st = adamjit_kernel_render(ctx, key, &src);
    if (st) return cli_library_error(ctx, st, "kernels: render %s", key);
    fputs(src, stdout);
    adamjit_free(src);
    return CLI_EXIT_OK;
  }
  adamjit_kernel_build_desc d;
  adamjit_kernel_build_desc_init_default(&d);
  d.arch = o->arch;
  d.device = o->device;
  d.use_cache = !o->no_cache;
  adamjit_kernel_build_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  adamjit_status st = adamjit_kernel_build(ctx, key, &d, &info);
  if (st) {
    int rc = cli_library_error(ctx, st, "kernels: build %s", key);
    if (info.log && *info.log) fprintf(stderr, "--- compile log ---\n%s\n", info.log);
    adamjit_free(info.log);
    return rc;
  }
  const char* dialect = strchr(key, '/'); /* family/dialect/... */
  const int cuda = dialect && strncmp(dialect + 1, "cuda", 4) == 0 && (dialect[5] == '/' || dialect[5] == '\0');
  printf("%s\n  target %s%s, %s, binary %zu bytes, source %zu bytes, render %.2f ms, %s %.2f ms\n", key,
         info.target, cuda ? (info.is_cubin ? " (cubin)" : " (ptx)") : "", source_name(info.source),
         info.binary_bytes, info.source_bytes, info.render_ms,
         info.source == ADAMJIT_KERNEL_COMPILED ? "compile" : "load", info.build_ms);
  if (info.log && (*info.log || o->log)) printf("  --- compile log ---\n%s%s", info.log, *info.log ? "\n" : "(empty)\n");
  adamjit_free(info.log);
  return CLI_EXIT_OK;
}

int cmd_kernels(int argc, char** argv) {
  kernels_opts o;
  int rc = parse(argc, argv, &o);
  if (rc >= 0) {
    free(o.keys);
    return rc;
  }
  if (o.list && !o.clear) {
    rc = list_keys(o.filter);
    free(o.keys);
    return rc;
  }
  adamjit_context_desc cd;
  adamjit_context_desc_init_default(&cd);
  cd.backend = o.backend;
  cd.cache_dir = o.cache_dir;
  cd.template_dir = o.template_dir;
  cd.log_fn = cli_log_stderr; /* cache warnings (an unsafe directory, a corrupt entry) */
  adamjit_context* ctx = NULL;
  adamjit_status st = adamjit_context_create(&cd, &ctx);
  if (st) {
    free(o.keys);
    return cli_library_error(NULL, st, "kernels: context on the %s backend", adamjit_backend_name(o.backend));
  }
  rc = CLI_EXIT_OK;
  if (o.clear) {
    char dir[4096] = "";
    adamjit_kernel_cache_dir(ctx, dir, sizeof dir);
    st = adamjit_kernel_cache_clear(ctx, ADAMJIT_KERNEL_CACHE_MEMORY | ADAMJIT_KERNEL_CACHE_DISK);
    if (st) rc = cli_library_error(ctx, st, "kernels: --clear-cache");
    else printf("cleared the kernel cache in %s\n", dir);
  }
  if (rc == CLI_EXIT_OK) {
    if (o.list) rc = list_keys(o.filter);
    else if (o.n_keys == 0 && !o.clear) rc = summary(ctx);
    for (int k = 0; k < o.n_keys; k++)
      if (build_one(ctx, &o, o.keys[k]) != CLI_EXIT_OK) rc = CLI_EXIT_FAILURE; /* go on: report every key */
  }
  adamjit_context_destroy(ctx);
  free(o.keys);
  return rc;
}
