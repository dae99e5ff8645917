/* Shared pieces of the `adamjit` command: entry points, option parsing, error reporting. */
#ifndef ADAMJIT_TOOLS_CLI_H
#define ADAMJIT_TOOLS_CLI_H

#include <adamjit/adamjit.h>
#include <stdint.h>
#include <stdio.h>

/* Exit codes: scripts can tell a bad invocation (fix the command) from a failed run. */
enum { CLI_EXIT_OK = 0, CLI_EXIT_FAILURE = 1, CLI_EXIT_USAGE = 2 };

/* Each command gets argv[0] = its own name and returns the process exit code. */
int cmd_info(int argc, char** argv);
int cmd_train(int argc, char** argv);
int cmd_bench(int argc, char** argv);
int cmd_kernels(int argc, char** argv);
int cmd_tune(int argc, char** argv);
/* `adamjit bench --jit` (tools/bench_jit.c). */
int bench_jit(int argc, char** argv);

void cli_print_usage(FILE* out);

/* "adamjit: <message>" plus a pointer to --help on stderr; returns CLI_EXIT_USAGE. */
int cli_usage_error(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

/* "adamjit: <what>: <status>: <detail>" on stderr; returns CLI_EXIT_FAILURE. The detail comes
 * from the context when there is one, else from the thread's last error. */
int cli_library_error(const adamjit_context* ctx, adamjit_status st, const char* what_fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* "adamjit: <message>" on stderr; returns CLI_EXIT_FAILURE. For failures outside the library. */
int cli_error(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

/* A log callback for contexts: "adamjit: warning: <message>" (or error/info/debug) on stderr. */
void cli_log_stderr(adamjit_log_level level, const char* message, void* user);

/* 1 for -h, --help, help. */
int cli_is_help(const char* arg);

/* Matches argv[*i] against `name` given as "--name VALUE" or "--name=VALUE".
 * Returns 0 if it is another option, 1 with *value set (advancing *i past a separate
 * value), -1 if the value is missing (already reported). */
int cli_option(int argc, char** argv, int* i, const char* name, const char** value);

/* Matches a flag without a value. Returns 0 if it is another option, 1 if it matches,
 * -1 for "--flag=..." (already reported). */
int cli_flag(const char* arg, const char* name);

/* The cases of an option loop `for (int i = 1; i < argc; i++) { const char* a = argv[i];
 * const char* v = NULL; int r; ... }` filling the options struct `o`: a flag sets
 * o->field = 1, an option stores its text in o->field, a parsed option runs `ok` (an
 * expression that reports and gives 0 on bad input) on its text v. Each matching case
 * ends the iteration (continue) or returns CLI_EXIT_USAGE from the enclosing function. */
#define CLI_FLAG(name, field)                    \
  if ((r = cli_flag(a, name)) != 0) {            \
    if (r < 0) return CLI_EXIT_USAGE;            \
    o->field = 1;                                \
    continue;                                    \
  }
#define CLI_OPTION(name, field)                            \
  if ((r = cli_option(argc, argv, &i, name, &v)) != 0) {   \
    if (r < 0) return CLI_EXIT_USAGE;                      \
    o->field = v;                                          \
    continue;                                              \
  }
#define CLI_PARSED(name, ok)                               \
  if ((r = cli_option(argc, argv, &i, name, &v)) != 0) {   \
    if (r < 0 || !(ok)) return CLI_EXIT_USAGE;             \
    continue;                                              \
  }

/* Strict integer parse of the whole text within [min, max]; reports and returns 0 on failure. */
int cli_parse_int64(const char* option, const char* text, int64_t min, int64_t max, int64_t* out);
int cli_parse_int(const char* option, const char* text, int min, int max, int* out);

/* Backend name through adamjit_backend_from_name; reports and returns 0 if unknown. */
int cli_parse_backend(const char* option, const char* text, adamjit_backend* out);

/* Calls item(text, len, user) for each entry of a comma list; an empty entry is reported
 * as a usage error naming option. Returns 0 as soon as item does (it reports why). */
int cli_parse_list(const char* option, const char* text, int (*item)(const char* s, size_t len, void* user),
                   void* user);

/* An optimizer variant as `adamjit bench` and `adamjit tune` name them: "fp32" (32-bit state)
 * or "8bit-b<B>" (8-bit blockwise state, block B a power of two in 64..4096), with
 * "-amsgrad" after the bit width where allowed ("fp32-amsgrad", "8bit-amsgrad-b256"). */
typedef struct cli_variant {
  char name[24];
  int bits;
  int block; /* 0 at 32 bits */
  int amsgrad;
} cli_variant;

/* The library's default optimizer configuration with v's state (bits, block, amsgrad). */
void cli_variant_config(const cli_variant* v, adamjit_optimizer_config* cfg);

/* Parses a comma list of variants into out[max] (*count set); duplicates are refused.
 * Reports (usage error naming option) and returns 0 on bad input. */
int cli_parse_variants(const char* option, const char* text, int allow_amsgrad, cli_variant* out, int max,
                       int* count);

/* Seconds on the monotonic clock. */
double cli_now(void);

/* The median of v[0..n) (n >= 1); sorts v. */
double cli_median(double* v, int n);

/* "wg=../ept=../vec=.." of a kernel key (canonical keys end with them), or "" if it has none. */
const char* cli_launch_tokens(const char* key);

/* Number of OpenMP threads a parallel region would use here (1 without OpenMP). */
int cli_max_threads(void);

#endif /* ADAMJIT_TOOLS_CLI_H */
