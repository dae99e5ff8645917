/* `adamjit info`: what this library can run on this machine; with --tensors, which kernel
 * each tensor of a model file steps with on a backend, and where its launch parameters
 * come from (the tuning lookup, adamjit.h "tuning"). */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

#include "model_file.h"

static void print_devices(adamjit_backend backend) {
  int count = 0;
  adamjit_status st = adamjit_backend_device_count(backend, &count);
  if (st != ADAMJIT_OK) {
    printf("    device count unknown: %s: %s\n", adamjit_status_string(st), adamjit_last_error());
    return;
  }
  printf("    %d device%s\n", count, count == 1 ? "" : "s");
  for (int i = 0; i < count; i++) {
    char name[256];
    st = adamjit_backend_device_name(backend, i, name, sizeof name);
    if (st == ADAMJIT_OK)
      printf("      %d: %s\n", i, name);
    else
      printf("      %d: (name unknown: %s)\n", i, adamjit_status_string(st));
  }
}

static void print_backend(adamjit_backend backend) {
  const char* name = adamjit_backend_name(backend);
  if (!adamjit_backend_is_built(backend)) {
    printf("  %-7s not built into this library\n", name);
    return;
  }
  adamjit_status st = adamjit_backend_probe(backend);
  if (st != ADAMJIT_OK) {
    const char* why = adamjit_last_error();
    printf("  %-7s built, not available: %s%s%s\n", name, adamjit_status_string(st), *why ? ": " : "", why);
    return;
  }
  printf("  %-7s built, available\n", name);
  print_devices(backend);
}

/* Creating an AUTO context is the one way to learn which backend AUTO picks. */
static void print_auto_choice(void) {
  adamjit_context* ctx = NULL;
  adamjit_status st = adamjit_context_create(NULL, &ctx);
  if (st != ADAMJIT_OK) {
    const char* why = adamjit_last_error();
    printf("auto selects: nothing (%s%s%s)\n", adamjit_status_string(st), *why ? ": " : "", why);
    return;
  }
  printf("auto selects: %s\n", adamjit_backend_name(adamjit_context_backend(ctx)));
  adamjit_context_destroy(ctx);
}

#define INFO_MAX_VARIANTS 8

/* One optimizer per variant on ctx; per tensor the update kernel (the last key the backend
 * launches for it) and the lookup's answer for it. */
static int print_tensors(adamjit_context* ctx, const model_file* m, const cli_variant* variants, int n_variants) {
  adamjit_tuning_device dev;
  memset(&dev, 0, sizeof dev);
  dev.struct_size = sizeof dev;
  adamjit_status st = adamjit_tuning_device_info(ctx, &dev);
  if (st) return cli_library_error(ctx, st, "tuning device");
  printf("device: %s\n  vendor \"%s\", architecture \"%s\", dialect %s\n", dev.device, dev.vendor, dev.architecture,
         dev.dialect);
  char db[4096];
  if (adamjit_tuning_db_path(ctx, db, sizeof db) == ADAMJIT_OK) printf("cache database: %s\n", db);
  for (int v = 0; v < n_variants; v++) {
    adamjit_optimizer_config cfg;
    cli_variant_config(&variants[v], &cfg);
    adamjit_optimizer* opt = NULL;
    st = adamjit_optimizer_create(ctx, &cfg, &opt);
    if (st) return cli_library_error(ctx, st, "optimizer for %s", variants[v].name);
    int per_level[ADAMJIT_TUNING_OVERRIDE + 1] = {0};
    printf("\n%s:\n", variants[v].name);
    for (int i = 0; i < m->count && !st; i++) {
      const model_tensor* t = &m->tensors[i];
      char keys[4][ADAMJIT_KERNEL_KEY_MAX];
      int n = 0;
      st = model_tensor_kernel_keys(opt, t, dev.dialect, keys, 4, &n);
      if (st) break;
      adamjit_tuning_result r;
      memset(&r, 0, sizeof r);
      r.struct_size = sizeof r;
      st = adamjit_tuning_lookup(ctx, keys[n - 1], t->numel, &r);
      if (st) break;
      per_level[r.level]++;
      printf("  %-48s %11lld  %s  %s%s%s%s\n", t->name, (long long)t->numel, r.key, adamjit_tuning_level_name(r.level),
             r.source[0] ? " (" : "", r.source, r.source[0] ? ")" : "");
    }
    adamjit_optimizer_destroy(opt);
    if (st) return cli_library_error(ctx, st, "%s", variants[v].name);
    printf("  %d tensors:", m->count);
    for (int l = ADAMJIT_TUNING_OVERRIDE; l >= ADAMJIT_TUNING_DEFAULT; l--)
      if (per_level[l]) printf(" %d %s", per_level[l], adamjit_tuning_level_name((adamjit_tuning_level)l));
    printf("\n");
  }
  return CLI_EXIT_OK;
}

static int info_tensors(const char* path, adamjit_backend backend, const char* variant_list) {
  cli_variant variants[INFO_MAX_VARIANTS];
  int n_variants = 0;
  if (!cli_parse_variants("--variants", variant_list, 1, variants, INFO_MAX_VARIANTS, &n_variants))
    return CLI_EXIT_USAGE;
  model_file m;
  if (!model_file_read(path, &m)) return CLI_EXIT_FAILURE;
  adamjit_context_desc desc;
  adamjit_context_desc_init_default(&desc);
  desc.backend = backend;
  desc.log_fn = cli_log_stderr;
  adamjit_context* ctx = NULL;
  adamjit_status st = adamjit_context_create(&desc, &ctx);
  int rc;
  if (st) {
    rc = cli_library_error(NULL, st, "context on the %s backend", adamjit_backend_name(backend));
  } else if (adamjit_context_backend(ctx) == ADAMJIT_BACKEND_CPU) {
    printf("%s: %d tensors. The cpu backend launches no run-time kernels: its loops are compiled into the\n"
           "library, so there are no kernel keys or launch parameters to show. Use --backend opencl or cuda.\n",
           path, m.count);
    rc = CLI_EXIT_OK;
  } else {
    printf("%s: %d tensors on the %s backend\n", path, m.count, adamjit_backend_name(adamjit_context_backend(ctx)));
    rc = print_tensors(ctx, &m, variants, n_variants);
  }
  adamjit_context_destroy(ctx);
  model_file_free(&m);
  return rc;
}

int cmd_info(int argc, char** argv) {
  const char *tensors = NULL, *backend_name = NULL, *variants = NULL;
  for (int i = 1; i < argc; i++) {
    if (cli_is_help(argv[i])) {
      cli_print_usage(stdout);
      return CLI_EXIT_OK;
    }
    const char* value = NULL;
    int r;
    if ((r = cli_option(argc, argv, &i, "--tensors", &value))) {
      if (r < 0) return CLI_EXIT_USAGE;
      tensors = value;
    } else if ((r = cli_option(argc, argv, &i, "--backend", &value))) {
      if (r < 0) return CLI_EXIT_USAGE;
      backend_name = value;
    } else if ((r = cli_option(argc, argv, &i, "--variants", &value))) {
      if (r < 0) return CLI_EXIT_USAGE;
      variants = value;
    } else {
      return cli_usage_error("info: unexpected argument '%s'", argv[i]);
    }
  }
  if (!tensors && (backend_name || variants)) return cli_usage_error("info: --backend and --variants need --tensors");
  if (tensors) {
    adamjit_backend backend = ADAMJIT_BACKEND_AUTO;
    if (backend_name && !cli_parse_backend("--backend", backend_name, &backend)) return CLI_EXIT_USAGE;
    return info_tensors(tensors, backend, variants ? variants : "fp32,8bit-b256");
  }
  printf("adamjit library %s (this tool was compiled against %s)\n", adamjit_version_string(),
         ADAMJIT_VERSION_STRING);
  printf("backends:\n");
  static const adamjit_backend all[] = {ADAMJIT_BACKEND_CPU, ADAMJIT_BACKEND_OPENCL, ADAMJIT_BACKEND_CUDA};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) print_backend(all[i]);
  print_auto_choice();
  printf("OpenMP threads: %d\n", cli_max_threads());
  return CLI_EXIT_OK;
}
