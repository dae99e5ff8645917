/* The `adamjit` command: dispatch and the option/error helpers every command shares. */
#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static const char usage_text[] =
    "usage: adamjit <command> [options]\n"
    "\n"
    "AdamW optimizers (32-bit, 8-bit blockwise, paged) for C and C++ trainers.\n"
    "\n"
    "commands:\n"
    "  info                 library version, backends compiled in, devices found; with\n"
    "                       --tensors FILE [--backend B] [--variants LIST]: each tensor's update\n"
    "                       kernel and where its launch parameters come from (tuning level, file)\n"
    "  train                train a small MLP with each optimizer configuration (32-bit, 8-bit),\n"
    "                       compare loss, accuracy, state bytes and step time\n"
    "  bench                time optimizer steps (fp32 and 8-bit state) and quantization\n"
    "                       against a memory-bandwidth roofline\n"
    "  kernels              the run-time kernel space: list keys, render a kernel's source,\n"
    "                       compile with NVRTC/OpenCL (log, size, time), clear the kernel cache;\n"
    "                       see 'adamjit kernels --help'\n"
    "  tune                 search the GPU kernels' launch parameters (work-group size, elements\n"
    "                       per thread, vector width) for a list of tensors, check every candidate\n"
    "                       against the CPU backend, record the fastest in the tuning database;\n"
    "                       resumable, with --budget SECONDS; see 'adamjit tune --help'\n"
    "  help                 this text (also -h, --help)\n"
    "\n"
    "train options:\n"
    "  --backend NAME       auto (default), cpu, opencl or cuda\n"
    "  --steps N            optimizer steps per configuration (default 400)\n"
    "  --seed N             seed of data and initial weights (default 1)\n"
    "  --out DIR            output directory (default ./adamjit-train-out); created if missing\n"
    "  --quiet              no progress output\n"
    "\n"
    "bench options:\n"
    "  --backend NAME       auto (default), cpu, opencl or cuda\n"
    "  --sizes LIST         comma list of cases from 1e6,1e7,1e8,1000x1e4 (default all)\n"
    "  --repeats N          timed steps per case; the median is reported (default 7)\n"
    "  --warmup N           untimed steps before timing (default 2)\n"
    "  --threads N          CPU threads (default: all OpenMP threads)\n"
    "  --variants LIST      comma list of optimizer variants: fp32 and 8bit-bB (8-bit state with\n"
    "                       block size B, a power of two in 64..4096); default fp32,8bit-b256\n"
    "  --quant              time adamjit_quantize_blockwise (table and binary nearest-code search)\n"
    "                       and adamjit_dequantize_blockwise instead of steps (sizes default 1e7,1e8)\n"
    "  --json               one JSON object per case, variant and line instead of a table\n"
    "  --tuned              GPU backends: each case and variant with the launch parameters of the\n"
    "                       tuning databases (see 'adamjit tune') and with the library's defaults,\n"
    "                       stepped alternately in the same run: the tuned speedup and both keys;\n"
    "                       --tuning-db FILE adds a user database (default $ADAMJIT_TUNING_DB)\n"
    "  --cache-dir DIR      kernel cache and tuning database directory (default $ADAMJIT_CACHE_DIR,\n"
    "                       else $XDG_CACHE_HOME/adamjit, else ~/.cache/adamjit)\n"
    "  --jit                time the run-time kernels instead: cold compile and warm disk-cache load\n"
    "                       per kernel (NVRTC and OpenCL, where available) and the whole kernel set\n"
    "                       of a model; with --model FILE (default data/models/llama-7b.tensors),\n"
    "                       --variants (fp32, 8bit-bB), --repeats, --json, --cache-dir DIR (default:\n"
    "                       a scratch directory), --arch sm_XX, --device SEL\n"
    "\n"
    "other options:\n"
    "  --version            print the version and exit\n"
    "\n"
    "Exit status: 0 success, 1 a run failed, 2 bad command line.\n";

void cli_print_usage(FILE* out) { fputs(usage_text, out); }

int cli_usage_error(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("adamjit: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputs("\nTry 'adamjit --help' for more information.\n", stderr);
  va_end(ap);
  return CLI_EXIT_USAGE;
}

int cli_error(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("adamjit: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return CLI_EXIT_FAILURE;
}

int cli_library_error(const adamjit_context* ctx, adamjit_status st, const char* what_fmt, ...) {
  /* A context call that failed before recording detail still may have left it per thread. */
  const char* detail = ctx ? adamjit_context_last_error(ctx) : "";
  if (!detail || !*detail) detail = adamjit_last_error();
  va_list ap;
  va_start(ap, what_fmt);
  fputs("adamjit: ", stderr);
  vfprintf(stderr, what_fmt, ap);
  fprintf(stderr, ": %s", adamjit_status_string(st));
  if (detail && *detail) fprintf(stderr, ": %s", detail);
  fputc('\n', stderr);
  va_end(ap);
  return CLI_EXIT_FAILURE;
}

void cli_log_stderr(adamjit_log_level level, const char* message, void* user) {
  (void)user;
  static const char* const names[] = {"error", "warning", "info", "debug"};
  const char* name = (int)level >= 0 && (int)level < 4 ? names[level] : "log";
  fprintf(stderr, "adamjit: %s: %s\n", name, message);
}

int cli_is_help(const char* arg) {
  return strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0 || strcmp(arg, "help") == 0;
}

int cli_option(int argc, char** argv, int* i, const char* name, const char** value) {
  const char* arg = argv[*i];
  size_t len = strlen(name);
  if (strncmp(arg, name, len) != 0) return 0;
  if (arg[len] == '=') {
    *value = arg + len + 1;
    return 1;
  }
  if (arg[len] != '\0') return 0; /* a longer option name that merely starts the same */
  if (*i + 1 >= argc) {
    cli_usage_error("option '%s' needs a value", name);
    return -1;
  }
  *value = argv[++*i];
  return 1;
}

int cli_flag(const char* arg, const char* name) {
  size_t len = strlen(name);
  if (strncmp(arg, name, len) != 0) return 0;
  if (arg[len] == '\0') return 1;
  if (arg[len] == '=') {
    cli_usage_error("option '%s' takes no value", name);
    return -1;
  }
  return 0;
}

int cli_parse_int64(const char* option, const char* text, int64_t min, int64_t max, int64_t* out) {
  char* end = NULL;
  errno = 0;
  long long v = strtoll(text, &end, 10);
  /* strtoll accepts leading blanks and stops at junk; both would hide typos. */
  if (*text == '\0' || *text == ' ' || *text == '\t' || *end != '\0') {
    cli_usage_error("%s: '%s' is not an integer", option, text);
    return 0;
  }
  if (errno == ERANGE || v < min || v > max) {
    cli_usage_error("%s: %s is out of range (%" PRId64 "..%" PRId64 ")", option, text, min, max);
    return 0;
  }
  *out = (int64_t)v;
  return 1;
}

int cli_parse_int(const char* option, const char* text, int min, int max, int* out) {
  int64_t v;
  if (!cli_parse_int64(option, text, min, max, &v)) return 0;
  *out = (int)v;
  return 1;
}

int cli_parse_backend(const char* option, const char* text, adamjit_backend* out) {
  if (adamjit_backend_from_name(text, out) != ADAMJIT_OK) {
    cli_usage_error("%s: unknown backend '%s' (expected auto, cpu, opencl or cuda)", option, text);
    return 0;
  }
  return 1;
}

double cli_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int compare_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

double cli_median(double* v, int n) {
  qsort(v, (size_t)n, sizeof *v, compare_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

const char* cli_launch_tokens(const char* key) {
  const char* s = strstr(key, "/wg=");
  return s ? s + 1 : "";
}

int cli_max_threads(void) {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

static int print_version(void) {
  printf("adamjit %s (library %s)\n", ADAMJIT_VERSION_STRING, adamjit_version_string());
  return CLI_EXIT_OK;
}

int main(int argc, char** argv) {
  if (argc < 2) return cli_usage_error("missing command (expected info, train, bench, kernels or tune)");
  const char* command = argv[1];
  if (cli_is_help(command)) {
    cli_print_usage(stdout);
    return CLI_EXIT_OK;
  }
  if (strcmp(command, "--version") == 0 || strcmp(command, "version") == 0) return print_version();

  static const struct {
    const char* name;
    int (*run)(int argc, char** argv);
  } commands[] = {{"info", cmd_info}, {"train", cmd_train}, {"bench", cmd_bench}, {"kernels", cmd_kernels},
                 {"tune", cmd_tune}};
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
    if (strcmp(command, commands[i].name) == 0) return commands[i].run(argc - 1, argv + 1);
  }
  if (command[0] == '-') return cli_usage_error("unknown option '%s' (a command comes first)", command);
  return cli_usage_error("unknown command '%s' (expected info, train, bench, kernels or tune)", command);
}
