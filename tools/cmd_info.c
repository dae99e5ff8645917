/* `adamjit info`: what this library can run on this machine. */
#include "cli.h"

#include <string.h>

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

int cmd_info(int argc, char** argv) {
  for (int i = 1; i < argc; i++) {
    if (cli_is_help(argv[i])) {
      cli_print_usage(stdout);
      return CLI_EXIT_OK;
    }
    return cli_usage_error("info: unexpected argument '%s'", argv[i]);
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
