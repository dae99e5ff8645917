/* `adamjit tune`: searches the launch parameters (wg, ept, vec) of the update kernels a GPU
 * backend launches for a list of tensors, and records the fastest correct ones in the cache
 * directory's tuning database (adamjit_tuning_record), where later contexts on the same
 * device find them.
 *
 * A task is one (update kernel, size bucket) among the tensors: the kernels come from
 * adamjit_optimizer_kernel_keys (the last key of a tensor is its update), the bucket is the
 * decade of the element count, as the database keys entries. Each task is measured on one
 * representative tensor, the largest of its bucket capped by --max-elements. For it:
 *   - the CPU backend steps seeded params and gradients TUNE_CHECK_STEPS times: the reference;
 *   - each candidate (the library's default first, then the cross product of the --wg,
 *     --ept and --vec lists) is set with adamjit_tuning_override, built, stepped on the
 *     same data by a fresh optimizer and compared with the reference (tune_check.c). A
 *     candidate that does not build, fails a step or disagrees is rejected, with the reason,
 *     and can never be recorded;
 *   - the others are timed: one warm-up step, then --repeats steps each followed by
 *     adamjit_context_synchronize; the median counts;
 *   - the default and the CONFIRM_TOP fastest are timed again, interleaved (confirm()).
 * The fastest of that round is recorded with the default's time from it. Every candidate's
 * outcome goes to a journal in the cache directory as soon as it is known (tune_journal.c),
 * so an interrupted or --budget-limited run resumes where it stopped. */
#include "cli.h"
#include "model_file.h"
#include "tune.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* Finalists re-timed side by side besides the default (see confirm()). */
#define CONFIRM_TOP 3

enum { MAX_VARIANTS = 8, MAX_TASKS = 256, MAX_WG = 6, MAX_EPT = 16, MAX_VEC = 4, MAX_DTYPES = 9, MAX_SIZES = 64 };
#define DEFAULT_MAX_ELEMENTS ((int64_t)1 << 24)
/* Large enough that a capped tensor keeps 8-bit state (min_8bit_size 4096) and many blocks. */
#define MIN_MAX_ELEMENTS ((int64_t)1 << 16)

static const char tune_help[] =
    "usage: adamjit tune --backend opencl|cuda (--tensors FILE | --sizes LIST) [options]\n"
    "\n"
    "Searches the launch parameters (work-group size, elements per thread, vector width) of\n"
    "the update kernels the tensors use, per (kernel, size bucket = decade of the element\n"
    "count). Every candidate is stepped on the same data as the CPU backend and rejected if\n"
    "its results differ beyond SPEC 7, the others are timed; the default and the 3 fastest\n"
    "are then timed again, interleaved, and the fastest of that round is recorded as a\n"
    "device-level entry in the tuning database of the cache directory (later contexts on\n"
    "this device use it; `adamjit bench --tuned` compares it with the defaults). Progress\n"
    "and an ETA go to stderr; every result goes to tune-journal.json in the cache directory,\n"
    "so a run that stops (Ctrl-C, --budget) resumes when started again.\n"
    "\n"
    "  --backend NAME       opencl, cuda or auto (default: the best GPU backend here)\n"
    "  --device SEL         the GPU whose name (or vendor or platform) contains SEL\n"
    "  --tensors FILE       a model description: 'name element-count param-dtype grad-dtype'\n"
    "                       per line (e.g. data/models/llama-7b.tensors)\n"
    "  --sizes LIST         or tensors of these element counts, e.g. 1e5,1e7 or 123456\n"
    "  --dtypes LIST        with --sizes: param:grad dtype pairs (f32, f16, bf16), e.g.\n"
    "                       f32:f32,bf16:bf16 (default f32:f32; 'bf16' means bf16:bf16)\n"
    "  --variants LIST      optimizer variants: fp32, fp32-amsgrad, 8bit-bB, 8bit-amsgrad-bB\n"
    "                       (B a power of two in 64..4096); default fp32,8bit-b256\n"
    "  --wg LIST            work-group sizes to try (powers of two in 32..1024; default all)\n"
    "  --ept LIST           elements per thread (blocks per work-item for blockwise 8-bit)\n"
    "                       to try, 1..16 (default 1,2,4,8,16)\n"
    "  --vec LIST           vector widths to try, 1, 2, 4, 8 (default all); only widths that\n"
    "                       divide ept are tried\n"
    "  --repeats N          timed steps per candidate, median reported (default 7)\n"
    "  --max-elements N     largest tensor timed (default 16777216 = 2^24); larger buckets are\n"
    "                       timed on this many elements and recorded for their own bucket\n"
    "  --budget SECONDS     start no new candidate after this long; run again to go on\n"
    "  --restart            forget the journal's results for these tasks and measure again\n"
    "  --cache-dir DIR      kernel cache, tuning database and journal (default\n"
    "                       $ADAMJIT_CACHE_DIR, else $XDG_CACHE_HOME/adamjit, else ~/.cache/adamjit)\n"
    "  --template-dir DIR   kernel template override directory (default $ADAMJIT_TEMPLATE_PATH)\n"
    "  --json               the results as one JSON object on stdout instead of a table\n"
    "  --quiet              no progress on stderr\n"
    "\n"
    "Exit status: 0 success (also when --budget stopped the run), 1 a task found no correct\n"
    "candidate or a run failed, 2 bad command line.\n";

/* ------------------------------------------------------------------ options */

typedef struct tune_options {
  adamjit_backend backend;
  const char* device;
  const char* tensors;
  const char* cache_dir;
  const char* template_dir;
  int64_t sizes[MAX_SIZES];
  int n_sizes;
  adamjit_dtype dtypes[MAX_DTYPES][2];
  int n_dtypes;
  cli_variant variants[MAX_VARIANTS];
  int n_variants;
  int wg[MAX_WG], n_wg;
  int ept[MAX_EPT], n_ept;
  int vec[MAX_VEC], n_vec;
  int repeats;
  int64_t max_elements;
  double budget; /* seconds; 0 = none */
  int restart, json, quiet;
} tune_options;

typedef struct int_list {
  const char* option;
  int* values;
  int* count;
  int max;
  int lo, hi;
  int pow2; /* values must be powers of two */
} int_list;

static int int_item(const char* s, size_t len, void* user) {
  int_list* l = user;
  char text[32];
  if (len >= sizeof text) return cli_usage_error("%s: '%.*s' is not a number", l->option, (int)len, s), 0;
  memcpy(text, s, len);
  text[len] = '\0';
  int v;
  if (!cli_parse_int(l->option, text, l->lo, l->hi, &v)) return 0;
  if (l->pow2 && (v & (v - 1)) != 0)
    return cli_usage_error("%s: %d is not a power of two (expected %d..%d: %s)", l->option, v, l->lo, l->hi,
                           strcmp(l->option, "--wg") == 0 ? "32, 64, 128, 256, 512, 1024" : "1, 2, 4, 8"),
           0;
  for (int i = 0; i < *l->count; i++)
    if (l->values[i] == v) return cli_usage_error("%s: %d is listed twice", l->option, v), 0;
  if (*l->count == l->max) return cli_usage_error("%s: at most %d values", l->option, l->max), 0;
  l->values[(*l->count)++] = v;
  return 1;
}

static int parse_ints(const char* option, const char* text, int* values, int* count, int max, int lo, int hi,
                      int pow2) {
  int_list l = {option, values, count, max, lo, hi, pow2};
  *count = 0;
  return cli_parse_list(option, text, int_item, &l);
}

/* An element count: an integer or a power-of-ten form such as 1e7 or 2.5e6. */
static int size_item(const char* s, size_t len, void* user) {
  tune_options* o = user;
  char text[32], *end = NULL;
  if (len >= sizeof text) return cli_usage_error("--sizes: '%.*s' is not an element count", (int)len, s), 0;
  memcpy(text, s, len);
  text[len] = '\0';
  double v = strtod(text, &end);
  if (*end || text[0] < '0' || text[0] > '9' || !(v >= 1 && v <= 1e12) || v != floor(v))
    return cli_usage_error("--sizes: '%s' is not an element count (1..1e12, e.g. 100000 or 1e5)", text), 0;
  for (int i = 0; i < o->n_sizes; i++)
    if (o->sizes[i] == (int64_t)v) return cli_usage_error("--sizes: %s is listed twice", text), 0;
  if (o->n_sizes == MAX_SIZES) return cli_usage_error("--sizes: at most %d sizes", MAX_SIZES), 0;
  o->sizes[o->n_sizes++] = (int64_t)v;
  return 1;
}

static int dtype_item(const char* s, size_t len, void* user) {
  tune_options* o = user;
  const char* colon = memchr(s, ':', len);
  adamjit_dtype p, g;
  size_t plen = colon ? (size_t)(colon - s) : len;
  if (!model_dtype_parse(s, plen, &p) || (colon ? !model_dtype_parse(colon + 1, len - plen - 1, &g) : (g = p, 0)))
    return cli_usage_error("--dtypes: '%.*s' (expected param:grad dtypes from f32, f16, bf16, e.g. bf16:f32)",
                           (int)len, s),
           0;
  for (int i = 0; i < o->n_dtypes; i++)
    if (o->dtypes[i][0] == p && o->dtypes[i][1] == g)
      return cli_usage_error("--dtypes: '%.*s' is listed twice", (int)len, s), 0;
  if (o->n_dtypes == MAX_DTYPES) return cli_usage_error("--dtypes: at most %d pairs", MAX_DTYPES), 0;
  o->dtypes[o->n_dtypes][0] = p;
  o->dtypes[o->n_dtypes][1] = g;
  o->n_dtypes++;
  return 1;
}

/* Returns -1 to go on, else the exit code. */
static int parse(int argc, char** argv, tune_options* o) {
  memset(o, 0, sizeof *o);
  o->backend = ADAMJIT_BACKEND_AUTO;
  o->repeats = 7;
  o->max_elements = DEFAULT_MAX_ELEMENTS;
  cli_parse_variants("--variants", "fp32,8bit-b256", 1, o->variants, MAX_VARIANTS, &o->n_variants);
  parse_ints("--wg", "32,64,128,256,512,1024", o->wg, &o->n_wg, MAX_WG, 32, 1024, 1);
  parse_ints("--ept", "1,2,4,8,16", o->ept, &o->n_ept, MAX_EPT, 1, 16, 0);
  parse_ints("--vec", "1,2,4,8", o->vec, &o->n_vec, MAX_VEC, 1, 8, 1);
  const char* dtypes = NULL;
  for (int i = 1; i < argc; i++) {
    const char* a = argv[i];
    const char* v = NULL;
    int r;
    if (cli_is_help(a)) {
      fputs(tune_help, stdout);
      return CLI_EXIT_OK;
    }
    CLI_FLAG("--restart", restart)
    CLI_FLAG("--json", json)
    CLI_FLAG("--quiet", quiet)
    CLI_OPTION("--device", device)
    CLI_OPTION("--tensors", tensors)
    CLI_OPTION("--cache-dir", cache_dir)
    CLI_OPTION("--template-dir", template_dir)
    CLI_PARSED("--backend", cli_parse_backend("--backend", v, &o->backend))
    CLI_PARSED("--sizes", (o->n_sizes = 0, cli_parse_list("--sizes", v, size_item, o)))
    CLI_PARSED("--dtypes", (dtypes = v, o->n_dtypes = 0, cli_parse_list("--dtypes", v, dtype_item, o)))
    CLI_PARSED("--variants", cli_parse_variants("--variants", v, 1, o->variants, MAX_VARIANTS, &o->n_variants))
    CLI_PARSED("--wg", parse_ints("--wg", v, o->wg, &o->n_wg, MAX_WG, 32, 1024, 1))
    CLI_PARSED("--ept", parse_ints("--ept", v, o->ept, &o->n_ept, MAX_EPT, 1, 16, 0))
    CLI_PARSED("--vec", parse_ints("--vec", v, o->vec, &o->n_vec, MAX_VEC, 1, 8, 1))
    CLI_PARSED("--repeats", cli_parse_int("--repeats", v, 1, 10000, &o->repeats))
    CLI_PARSED("--max-elements",
           cli_parse_int64("--max-elements", v, MIN_MAX_ELEMENTS, (int64_t)1 << 34, &o->max_elements))
    if ((r = cli_option(argc, argv, &i, "--budget", &v)) != 0) {
      char* end = NULL;
      if (r < 0) return CLI_EXIT_USAGE;
      o->budget = strtod(v, &end);
      if (!*v || *end || !(o->budget > 0 && o->budget < 1e9))
        return cli_usage_error("--budget: '%s' is not a positive number of seconds", v);
      continue;
    }
    return cli_usage_error("tune: unknown option '%s'", a);
  }
  if (o->backend == ADAMJIT_BACKEND_CPU)
    return cli_usage_error("tune: the cpu backend launches no run-time kernels, so it has no launch parameters to "
                           "tune (use --backend opencl or cuda)");
  if (!o->tensors && !o->n_sizes)
    return cli_usage_error("tune: which tensors? Give --tensors FILE (e.g. data/models/llama-7b.tensors) or "
                           "--sizes LIST (e.g. --sizes 1e5,1e7)");
  if (o->tensors && o->n_sizes) return cli_usage_error("tune: --tensors and --sizes exclude each other");
  if (dtypes && !o->n_sizes) return cli_usage_error("tune: --dtypes goes with --sizes (a tensors file has its own)");
  if (!o->n_dtypes) {
    o->dtypes[0][0] = o->dtypes[0][1] = ADAMJIT_F32;
    o->n_dtypes = 1;
  }
  return -1;
}

/* ------------------------------------------------------------------ tasks */

typedef enum cand_state { CAND_PENDING, CAND_TIMED, CAND_REJECTED } cand_state;

typedef struct candidate {
  char key[ADAMJIT_KERNEL_KEY_MAX];
  char launch[40];  /* "wg=../ept=../vec=.." */
  char source[24];  /* hash of the rendered kernel, hex */
  cand_state state;
  int from_journal;
  double seconds;    /* median of its own timed steps */
  double confirmed;  /* median in the final interleaved round, 0 if not in it */
  char reason[512];
} candidate;

typedef struct tune_task {
  char kernel[ADAMJIT_KERNEL_KEY_MAX]; /* the update kernel without launch tokens */
  char bucket[16];
  int64_t numel; /* the largest tensor of the bucket: what is recorded */
  int64_t timed; /* what is stepped: numel capped by --max-elements */
  const cli_variant* variant;
  adamjit_dtype p, g;
  candidate* cands; /* [0] is the library's default */
  int n_cands;
  int best;      /* index of the fastest timed candidate, -1 if none */
  double best_seconds, default_seconds; /* as recorded (0: the default was rejected) */
  int rejected;  /* candidates rejected */
  int finished;  /* every candidate measured */
  int recorded;  /* 1: recorded by this run, 2: the database already had it */
  int failed;    /* no candidate passed, or an error */
} tune_task;

typedef struct tuner {
  const tune_options* o;
  adamjit_context* gpu;
  adamjit_context* cpu; /* the reference's, opened when first needed */
  adamjit_tuning_device dev;
  char device_id[600];
  char cache_dir[4096];
  char db_path[4096];
  tune_journal journal;
  tune_task tasks[MAX_TASKS];
  int n_tasks;
  int64_t pending;          /* candidates still to measure, all tasks */
  int measured;             /* candidates measured by this run */
  double measure_seconds;   /* their wall time together, for the ETA */
  double start;
  int stopped;              /* the budget ran out */
} tuner;

static void progress(const tuner* t, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static void progress(const tuner* t, const char* fmt, ...) {
  if (t->o->quiet) return;
  va_list ap;
  va_start(ap, fmt);
  fputs("tune: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  fflush(stderr);
  va_end(ap);
}

static void strip_launch(const char* key, char* out, size_t size) {
  size_t len = 0;
  out[0] = '\0';
  for (const char* s = key; *s;) {
    size_t n = strcspn(s, "/");
    int launch = strncmp(s, "wg=", 3) == 0 || strncmp(s, "ept=", 4) == 0 || strncmp(s, "vec=", 4) == 0;
    if (!launch && len + n + 2 < size) {
      if (len) out[len++] = '/';
      memcpy(out + len, s, n);
      out[len += n] = '\0';
    }
    s += n;
    if (*s == '/') s++;
  }
}

/* The size bucket of a tensor, as the tuning database keys entries: the decade, "1e<k>". */
static void bucket_of(int64_t numel, char* out, size_t size) {
  int k = 0;
  for (int64_t x = numel; x >= 10; x /= 10) k++;
  snprintf(out, size, "1e%d", k);
}

/* FNV-1a: which source a journal entry measured. */
static void hash_text(const char* s, char* out, size_t size) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
  snprintf(out, size, "%016llx", (unsigned long long)h);
}

static tune_entry_id entry_id(const tuner* t, const tune_task* task) {
  return (tune_entry_id){t->device_id, task->kernel, task->bucket, task->timed};
}

/* The distinct (update kernel, bucket) pairs of every tensor under every variant. */
static int collect_tasks(tuner* t, const model_file* m) {
  for (int vi = 0; vi < t->o->n_variants; vi++) {
    const cli_variant* v = &t->o->variants[vi];
    adamjit_optimizer_config cfg;
    tune_config(v, &cfg);
    adamjit_optimizer* opt = NULL;
    adamjit_status st = adamjit_optimizer_create(t->gpu, &cfg, &opt);
    if (st != ADAMJIT_OK) return !cli_library_error(t->gpu, st, "tune: optimizer for %s", v->name);
    for (int i = 0; i < m->count && st == ADAMJIT_OK; i++) {
      const model_tensor* mt = &m->tensors[i];
      char keys[4][ADAMJIT_KERNEL_KEY_MAX];
      int n = 0;
      st = model_tensor_kernel_keys(opt, mt, t->dev.dialect, keys, 4, &n);
      if (st != ADAMJIT_OK || n < 1) {
        adamjit_optimizer_destroy(opt);
        if (st != ADAMJIT_OK) return !cli_library_error(t->gpu, st, "tune: the kernels of %s (%s)", mt->name, v->name);
        return !cli_error("tune: no kernels for %s (%s)", mt->name, v->name);
      }
      char kernel[ADAMJIT_KERNEL_KEY_MAX], bucket[16];
      strip_launch(keys[n - 1], kernel, sizeof kernel); /* the update kernel */
      bucket_of(mt->numel, bucket, sizeof bucket);
      tune_task* task = NULL;
      for (int k = 0; k < t->n_tasks && !task; k++)
        if (strcmp(t->tasks[k].kernel, kernel) == 0 && strcmp(t->tasks[k].bucket, bucket) == 0) task = &t->tasks[k];
      if (!task) {
        if (t->n_tasks == MAX_TASKS) {
          adamjit_optimizer_destroy(opt);
          return !cli_error("tune: more than %d (kernel, size bucket) tasks; tune fewer tensors or variants at once",
                            MAX_TASKS);
        }
        task = &t->tasks[t->n_tasks++];
        memset(task, 0, sizeof *task);
        snprintf(task->kernel, sizeof task->kernel, "%s", kernel);
        snprintf(task->bucket, sizeof task->bucket, "%s", bucket);
        task->variant = v;
        task->p = mt->param_dtype;
        task->g = mt->grad_dtype;
        task->best = -1;
      }
      if (mt->numel > task->numel) task->numel = mt->numel;
    }
    adamjit_optimizer_destroy(opt);
  }
  for (int k = 0; k < t->n_tasks; k++)
    t->tasks[k].timed = t->tasks[k].numel < t->o->max_elements ? t->tasks[k].numel : t->o->max_elements;
  return 1;
}

/* A context on the tuned device as the options name it, its warnings on stderr. */
static adamjit_status open_context(const tune_options* o, adamjit_backend backend, int use_tuning,
                                   adamjit_context** out) {
  adamjit_context_desc d;
  adamjit_context_desc_init_default(&d);
  d.backend = backend;
  d.device_name = o->device;
  d.cache_dir = o->cache_dir;
  d.template_dir = o->template_dir;
  d.use_tuning = use_tuning;
  d.log_fn = cli_log_stderr;
  return adamjit_context_create(&d, out);
}

/* What the library launches with no override and no database: a context with use_tuning = 0. */
static int default_keys(tuner* t, char (*out)[ADAMJIT_KERNEL_KEY_MAX]) {
  adamjit_context* ctx = NULL;
  adamjit_status st = open_context(t->o, adamjit_context_backend(t->gpu), 0, &ctx);
  if (st != ADAMJIT_OK) return !cli_library_error(NULL, st, "tune: a context without tuning (for the defaults)");
  for (int k = 0; k < t->n_tasks && st == ADAMJIT_OK; k++) {
    adamjit_tuning_result r;
    memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    st = adamjit_tuning_lookup(ctx, t->tasks[k].kernel, t->tasks[k].numel, &r);
    if (st == ADAMJIT_OK) snprintf(out[k], ADAMJIT_KERNEL_KEY_MAX, "%s", r.key);
    else cli_library_error(ctx, st, "tune: the default launch parameters of %s", t->tasks[k].kernel);
  }
  adamjit_context_destroy(ctx);
  return st == ADAMJIT_OK;
}

static void first_line(const char* text, char* out, size_t size) {
  size_t n = strcspn(text, "\n");
  if (n >= size) n = size - 1;
  memcpy(out, text, n);
  out[n] = '\0';
}

static void update_best(tune_task* task) {
  task->best = -1;
  task->rejected = 0;
  for (int i = 0; i < task->n_cands; i++) {
    const candidate* c = &task->cands[i];
    if (c->state == CAND_REJECTED) task->rejected++;
    if (c->state == CAND_TIMED && (task->best < 0 || c->seconds < task->cands[task->best].seconds)) task->best = i;
  }
}

/* Takes c's outcome from the journal if it has one (timed or rejected). */
static int from_journal(tuner* t, const tune_entry_id* id, candidate* c) {
  if (!tune_journal_find(&t->journal, id, c->launch, c->source, &c->seconds, c->reason, sizeof c->reason)) return 0;
  c->from_journal = 1;
  c->state = c->seconds > 0 ? CAND_TIMED : CAND_REJECTED;
  return 1;
}

/* A candidate: its key, launch tokens and source hash, and what the journal knows of it. */
static void add_candidate(tuner* t, tune_task* task, const char* text) {
  candidate* c = &task->cands[task->n_cands];
  memset(c, 0, sizeof *c);
  if (adamjit_kernel_key_canonical(text, c->key, sizeof c->key) != ADAMJIT_OK) {
    /* the lists were checked, so this is a combination the key grammar refuses */
    snprintf(c->key, sizeof c->key, "%s", text);
    snprintf(c->launch, sizeof c->launch, "%s", cli_launch_tokens(text));
    c->state = CAND_REJECTED;
    first_line(adamjit_last_error(), c->reason, sizeof c->reason);
    task->n_cands++;
    return;
  }
  for (int i = 0; i < task->n_cands; i++)
    if (strcmp(task->cands[i].key, c->key) == 0) return; /* the default, again */
  snprintf(c->launch, sizeof c->launch, "%s", cli_launch_tokens(c->key));
  char* src = NULL;
  adamjit_status st = adamjit_kernel_render(t->gpu, c->key, &src);
  if (st != ADAMJIT_OK) {
    char detail[400];
    first_line(adamjit_context_last_error(t->gpu), detail, sizeof detail);
    snprintf(c->reason, sizeof c->reason, "the template does not render it: %s: %s", adamjit_status_string(st),
             detail);
    c->state = CAND_REJECTED;
    task->n_cands++;
    return;
  }
  hash_text(src, c->source, sizeof c->source);
  adamjit_free(src);
  tune_entry_id id = entry_id(t, task);
  from_journal(t, &id, c);
  task->n_cands++;
}

static int make_candidates(tuner* t, tune_task* task, const char* default_key) {
  const tune_options* o = t->o;
  task->cands = calloc((size_t)(1 + o->n_wg * o->n_ept * o->n_vec), sizeof *task->cands);
  if (!task->cands) return !cli_error("tune: out of memory");
  add_candidate(t, task, default_key);
  for (int a = 0; a < o->n_wg; a++)
    for (int b = 0; b < o->n_ept; b++)
      for (int c = 0; c < o->n_vec; c++) {
        if (o->ept[b] % o->vec[c] != 0) continue; /* vec divides ept (jit/variant.h) */
        char key[ADAMJIT_KERNEL_KEY_MAX + 40];
        snprintf(key, sizeof key, "%s/wg=%d/ept=%d/vec=%d", task->kernel, o->wg[a], o->ept[b], o->vec[c]);
        add_candidate(t, task, key);
      }
  for (int i = 0; i < task->n_cands; i++) t->pending += task->cands[i].state == CAND_PENDING;
  update_best(task);
  return 1;
}

/* ------------------------------------------------------------------ measuring */

/* The representative tensor of a task on both sides: the reference and the GPU buffers. */
typedef struct task_data {
  tune_reference ref;
  adamjit_mem param, grad;
  int ready;
} task_data;

static void task_data_free(tuner* t, task_data* d) {
  if (d->ready) tune_reference_free(&d->ref);
  adamjit_mem_free(t->gpu, d->param);
  adamjit_mem_free(t->gpu, d->grad);
  memset(d, 0, sizeof *d);
}

static int task_data_make(tuner* t, const tune_task* task, task_data* d) {
  if (!t->cpu) {
    adamjit_context_desc cd;
    adamjit_context_desc_init_default(&cd);
    cd.backend = ADAMJIT_BACKEND_CPU;
    adamjit_status st = adamjit_context_create(&cd, &t->cpu);
    if (st != ADAMJIT_OK) return !cli_library_error(NULL, st, "tune: the cpu backend for the reference");
  }
  double t0 = cli_now();
  if (!tune_reference_make(&d->ref, t->cpu, task->variant, task->timed, task->p, task->g)) return 0;
  d->ready = 1;
  adamjit_status st = adamjit_mem_alloc(t->gpu, (size_t)task->timed * adamjit_dtype_size(task->p), &d->param);
  if (st == ADAMJIT_OK) st = adamjit_mem_alloc(t->gpu, (size_t)task->timed * adamjit_dtype_size(task->g), &d->grad);
  if (st != ADAMJIT_OK)
    return !cli_library_error(t->gpu, st, "tune: device buffers for %lld elements (lower --max-elements)",
                              (long long)task->timed);
  progress(t, "  reference: %lld elements, %d steps on the cpu backend (%.1f s)", (long long)task->timed,
           TUNE_CHECK_STEPS, cli_now() - t0);
  return 1;
}

static void reject(candidate* c, adamjit_context* ctx, adamjit_status st, const char* what) {
  char detail[400];
  first_line(adamjit_context_last_error(ctx), detail, sizeof detail);
  snprintf(c->reason, sizeof c->reason, "%s: %s%s%s", what, adamjit_status_string(st), *detail ? ": " : "", detail);
  c->state = CAND_REJECTED;
}

/* Checks and times one candidate. Returns 0 on a failure that is not the candidate's fault
 * (host memory, reading results back), which ends the run. */
static int measure(tuner* t, tune_task* task, task_data* d, candidate* c) {
  adamjit_status st = adamjit_tuning_override(t->gpu, c->key);
  if (st != ADAMJIT_OK) {
    reject(c, t->gpu, st, "the override is refused");
    return 1;
  }
  adamjit_kernel_build_desc bd;
  adamjit_kernel_build_desc_init_default(&bd); /* the context's device */
  adamjit_kernel_build_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  st = adamjit_kernel_build(t->gpu, c->key, &bd, &info);
  adamjit_free(info.log);
  if (st != ADAMJIT_OK) {
    reject(c, t->gpu, st, "build failed");
    return 1;
  }
  adamjit_optimizer* opt = NULL;
  st = tune_optimizer_open(t->gpu, task->variant, d->param, d->grad, task->timed, task->p, task->g, &opt);
  if (st != ADAMJIT_OK)
    return !cli_library_error(t->gpu, st, "tune: an optimizer for %lld elements", (long long)task->timed);
  adamjit_tuning_result tr;
  memset(&tr, 0, sizeof tr);
  tr.struct_size = sizeof tr;
  st = adamjit_optimizer_tensor_tuning(opt, 0, &tr);
  if (st != ADAMJIT_OK || strcmp(tr.key, c->key) != 0) {
    /* timing some other kernel under this candidate's name would record a wrong entry */
    if (st != ADAMJIT_OK)
      reject(c, t->gpu, st, "its launch parameters cannot be read back");
    else
      snprintf(c->reason, sizeof c->reason, "the step would launch %s, not the override (a library bug)", tr.key);
    c->state = CAND_REJECTED;
    adamjit_optimizer_destroy(opt);
    return 1;
  }
  uint64_t nonfinite[TUNE_CHECK_STEPS] = {0};
  st = tune_reference_steps(&d->ref, t->gpu, opt, d->param, d->grad, nonfinite);
  if (st != ADAMJIT_OK) {
    reject(c, t->gpu, st, "a step failed");
    adamjit_optimizer_destroy(opt);
    return 1;
  }
  int agree = tune_reference_compare(&d->ref, t->gpu, opt, d->param, nonfinite, c->reason, sizeof c->reason);
  if (agree < 0) {
    adamjit_optimizer_destroy(opt);
    return !cli_error("tune: %s: %s", c->key, c->reason);
  }
  if (!agree) {
    c->state = CAND_REJECTED;
    adamjit_optimizer_destroy(opt);
    return 1;
  }
  const int repeats = t->o->repeats;
  double* times = calloc((size_t)repeats, sizeof *times);
  if (!times) {
    adamjit_optimizer_destroy(opt);
    return !cli_error("tune: out of memory");
  }
  for (int it = -1; it < repeats && st == ADAMJIT_OK; it++) { /* it = -1: the warm-up */
    double t0 = cli_now();
    st = adamjit_optimizer_step(opt, NULL);
    if (st == ADAMJIT_OK) st = adamjit_context_synchronize(t->gpu);
    if (it >= 0) times[it] = cli_now() - t0;
  }
  if (st != ADAMJIT_OK) {
    reject(c, t->gpu, st, "a timed step failed");
  } else {
    c->seconds = cli_median(times, repeats);
    if (!(c->seconds > 0)) c->seconds = 1e-9; /* a clock too coarse must not read as "rejected" */
    c->state = CAND_TIMED;
  }
  free(times);
  adamjit_optimizer_destroy(opt);
  return 1;
}

static void format_duration(double s, char* out, size_t size) {
  if (s < 60)
    snprintf(out, size, "%.0fs", s);
  else if (s < 3600)
    snprintf(out, size, "%dm%02ds", (int)s / 60, (int)s % 60);
  else
    snprintf(out, size, "%dh%02dm", (int)s / 3600, (int)s % 3600 / 60);
}

/* Whether the journal recorded this task's fastest candidate and the database still answers
 * with it at device level; then nothing is recorded again. */
static int already_recorded(tuner* t, tune_task* task) {
  tune_entry_id id = entry_id(t, task);
  double seconds = 0.0, default_seconds = 0.0;
  const char* key = tune_journal_recorded(&t->journal, &id, &seconds, &default_seconds);
  adamjit_tuning_result r;
  memset(&r, 0, sizeof r);
  r.struct_size = sizeof r;
  if (!key || adamjit_tuning_lookup(t->gpu, task->kernel, task->numel, &r) != ADAMJIT_OK ||
      r.level != ADAMJIT_TUNING_DEVICE || strcmp(r.key, key) != 0)
    return 0;
  for (int i = 0; i < task->n_cands; i++)
    if (strcmp(task->cands[i].key, key) == 0 && task->cands[i].state == CAND_TIMED) {
      task->best = i;
      task->best_seconds = seconds;
      task->default_seconds = default_seconds;
      return 1;
    }
  return 0; /* recorded from candidates this run no longer has: measure afresh */
}

/* Timing one candidate after another lets the machine's load drift between them (a shared
 * host, a GPU changing clocks), and the minimum over many noisy times favours a lucky one.
 * So the default and the CONFIRM_TOP fastest are timed again, interleaved step by step on one
 * optimizer (the override switched before each step, the kernels already built), and the
 * fastest there wins, with the default's time from the same round. Returns 0 on a failure
 * that ends the run. */
static int confirm(tuner* t, int index, task_data* d) {
  tune_task* task = &t->tasks[index];
  int fin[1 + CONFIRM_TOP], n = 0;
  if (task->cands[0].state == CAND_TIMED) fin[n++] = 0;
  for (int k = 0; k < CONFIRM_TOP; k++) {
    int pick = -1;
    for (int i = 1; i < task->n_cands; i++) {
      const candidate* c = &task->cands[i];
      int taken = 0;
      for (int j = 0; j < n; j++) taken |= fin[j] == i;
      if (!taken && c->state == CAND_TIMED && (pick < 0 || c->seconds < task->cands[pick].seconds)) pick = i;
    }
    if (pick < 0) break;
    fin[n++] = pick;
  }
  task->best_seconds = task->cands[task->best].seconds;
  task->default_seconds = task->cands[0].state == CAND_TIMED ? task->cands[0].seconds : 0.0;
  if (n < 2) return 1;
  if (!d->ready && !task_data_make(t, task, d)) return 0;
  adamjit_optimizer* opt = NULL;
  adamjit_status st =
      tune_optimizer_open(t->gpu, task->variant, d->param, d->grad, task->timed, task->p, task->g, &opt);
  if (st != ADAMJIT_OK)
    return !cli_library_error(t->gpu, st, "tune: an optimizer for %lld elements", (long long)task->timed);
  const int rounds = t->o->repeats < 5 ? 5 : t->o->repeats;
  double* times = calloc((size_t)(n * rounds), sizeof *times);
  if (!times) {
    adamjit_optimizer_destroy(opt);
    return !cli_error("tune: out of memory");
  }
  const tune_reference* r = &d->ref;
  st = adamjit_mem_write(t->gpu, d->param, 0, r->init, (size_t)r->n * adamjit_dtype_size(r->p));
  /* the last check step's gradients: finite, so every step does the whole update */
  if (st == ADAMJIT_OK)
    st = adamjit_mem_write(t->gpu, d->grad, 0, r->grads[TUNE_CHECK_STEPS - 1], (size_t)r->n * adamjit_dtype_size(r->g));
  for (int round = -1; round < rounds && st == ADAMJIT_OK; round++) { /* round -1: a warm-up of each */
    for (int j = 0; j < n && st == ADAMJIT_OK; j++) {
      const int f = (round + 1 + j) % n; /* the order rotates: nobody always follows the same one */
      st = adamjit_tuning_override(t->gpu, task->cands[fin[f]].key);
      double t0 = cli_now();
      if (st == ADAMJIT_OK) st = adamjit_optimizer_step(opt, NULL);
      if (st == ADAMJIT_OK) st = adamjit_context_synchronize(t->gpu);
      if (round >= 0) times[f * rounds + round] = cli_now() - t0;
    }
  }
  adamjit_optimizer_destroy(opt);
  adamjit_tuning_override_clear(t->gpu, NULL);
  if (st != ADAMJIT_OK) {
    free(times);
    return !cli_library_error(t->gpu, st, "tune: %s, bucket %s: the final round", task->kernel, task->bucket);
  }
  char line[1024];
  size_t used = (size_t)snprintf(line, sizeof line, "task %d/%d: final round (%s%d fastest, interleaved):", index + 1,
                                 t->n_tasks, fin[0] == 0 ? "the default and the " : "the ", n - (fin[0] == 0));
  for (int j = 0; j < n; j++) {
    double* v = times + j * rounds;
    candidate* c = &task->cands[fin[j]];
    c->confirmed = cli_median(v, rounds);
    if (!(c->confirmed > 0)) c->confirmed = 1e-9;
    if (j == 0 || c->confirmed < task->cands[task->best].confirmed) task->best = fin[j];
    if (used < sizeof line)
      used += (size_t)snprintf(line + used, sizeof line - used, " %s %.4f ms%s", c->launch, 1e3 * c->confirmed,
                               j + 1 < n ? "," : "");
  }
  free(times);
  task->best_seconds = task->cands[task->best].confirmed;
  task->default_seconds = fin[0] == 0 ? task->cands[0].confirmed : 0.0;
  progress(t, "%s", line);
  return 1;
}

/* Records the winner in the database and the journal. */
static int record(tuner* t, tune_task* task) {
  tune_entry_id id = entry_id(t, task);
  const candidate* best = &task->cands[task->best];
  adamjit_status st = adamjit_tuning_record(t->gpu, best->key, task->numel, task->best_seconds, task->default_seconds);
  if (st != ADAMJIT_OK) return !cli_library_error(t->gpu, st, "tune: recording %s", best->key);
  task->recorded = 1;
  return tune_journal_set_recorded(&t->journal, &id, best->key, task->best_seconds, task->default_seconds);
}

/* After every candidate is known: the warning about a rejected default, the final round and
 * the record. Returns 0 on a failure that ends the run. */
static int finish_task(tuner* t, int index, task_data* data) {
  tune_task* task = &t->tasks[index];
  if (task->cands[0].state == CAND_REJECTED)
    fprintf(stderr, "adamjit: warning: %s, bucket %s: the library's default launch parameters (%s) were rejected: %s\n",
            task->kernel, task->bucket, task->cands[0].launch, task->cands[0].reason);
  if (task->best < 0) {
    task->failed = 1;
    cli_error("tune: %s, bucket %s: no candidate passed the check against the CPU reference; nothing recorded",
              task->kernel, task->bucket);
    return 1;
  }
  if (already_recorded(t, task))
    task->recorded = 2;
  else if (!confirm(t, index, data) || !record(t, task))
    return 0;
  const candidate* b = &task->cands[task->best];
  char versus[64] = "the default was rejected";
  if (task->default_seconds > 0) snprintf(versus, sizeof versus, "default %.4f ms", 1e3 * task->default_seconds);
  progress(t, "task %d/%d: %s %s, %.4f ms (%s)", index + 1, t->n_tasks,
           task->recorded == 2 ? "already recorded:" : "recorded", b->launch, 1e3 * task->best_seconds, versus);
  return 1;
}

static int run_task(tuner* t, int index) {
  tune_task* task = &t->tasks[index];
  const tune_entry_id id = entry_id(t, task);
  int journalled = 0, pending = 0;
  for (int i = 0; i < task->n_cands; i++) {
    candidate* c = &task->cands[i];
    /* measured meanwhile by an earlier task timed on the same tensor (buckets capped alike) */
    if (c->state == CAND_PENDING && from_journal(t, &id, c)) t->pending--;
    journalled += task->cands[i].from_journal;
    pending += task->cands[i].state == CAND_PENDING;
  }
  update_best(task); /* what the report shows if the budget ends the run here */
  if (t->stopped && pending) return 1; /* the budget is spent; a task fully in the journal still gets recorded */
  char capped[96] = "";
  if (task->timed < task->numel)
    snprintf(capped, sizeof capped, "; timed on %lld, the --max-elements cap", (long long)task->timed);
  progress(t, "task %d/%d: %s, bucket %s (largest %lld elements%s; %s): %d candidates, %d from the journal", index + 1,
           t->n_tasks, task->kernel, task->bucket, (long long)task->numel, capped, task->variant->name,
           task->n_cands, journalled);
  task_data data;
  memset(&data, 0, sizeof data);
  int ok = 1;
  for (int i = 0; i < task->n_cands && ok; i++) {
    candidate* c = &task->cands[i];
    if (c->state != CAND_PENDING) continue;
    if (t->o->budget > 0 && cli_now() - t->start >= t->o->budget) {
      t->stopped = 1;
      break;
    }
    if (!data.ready && !(ok = task_data_make(t, task, &data))) break;
    double t0 = cli_now();
    if (!(ok = measure(t, task, &data, c))) break;
    ok = tune_journal_add(&t->journal, &id, c->launch, c->source, c->seconds,
                          c->state == CAND_REJECTED ? c->reason : NULL);
    t->measured++;
    t->pending--;
    t->measure_seconds += cli_now() - t0;
    update_best(task);
    char eta[32], best[128] = "none yet";
    format_duration(t->measure_seconds / t->measured * (double)t->pending, eta, sizeof eta);
    if (task->best >= 0)
      snprintf(best, sizeof best, "%.4f ms (%s)", 1e3 * task->cands[task->best].seconds,
               task->cands[task->best].launch);
    if (c->state == CAND_TIMED)
      progress(t, "task %d/%d candidate %d/%d %s%s: %.4f ms; best %s; ETA %s", index + 1, t->n_tasks, i + 1,
               task->n_cands, c->launch, i == 0 ? " (default)" : "", 1e3 * c->seconds, best, eta);
    else
      progress(t, "task %d/%d candidate %d/%d %s%s: REJECTED: %s; best %s; ETA %s", index + 1, t->n_tasks, i + 1,
               task->n_cands, c->launch, i == 0 ? " (default)" : "", c->reason, best, eta);
  }
  adamjit_tuning_override_clear(t->gpu, NULL);
  update_best(task);
  task->finished = ok;
  for (int i = 0; i < task->n_cands; i++)
    if (task->cands[i].state == CAND_PENDING) task->finished = 0;
  if (ok && task->finished) ok = finish_task(t, index, &data);
  task_data_free(t, &data);
  if (!ok) task->failed = 1;
  return ok;
}

/* ------------------------------------------------------------------ results */

/* The times a task reports: as recorded (from the final round) once it is, else as measured. */
static void task_times(const tune_task* task, double* default_seconds, double* best_seconds) {
  if (task->recorded) {
    *default_seconds = task->default_seconds;
    *best_seconds = task->best_seconds;
  } else {
    *default_seconds = task->cands[0].state == CAND_TIMED ? task->cands[0].seconds : 0.0;
    *best_seconds = task->best >= 0 ? task->cands[task->best].seconds : 0.0;
  }
}

static const char* task_status(const tune_task* task) {
  return task->failed             ? "failed"
         : !task->finished        ? "unfinished"
         : task->recorded == 2    ? "already recorded"
                                  : "recorded";
}

static void print_table(const tuner* t) {
  printf("adamjit tune: %s device \"%s\" (%s; architecture \"%s\")\n", t->dev.dialect, t->dev.device, t->dev.vendor,
         t->dev.architecture);
  printf("tuning database: %s\njournal: %s\ncheck: %s\n", t->db_path, t->journal.path, tune_reference_rule());
  printf("default ms, best ms: medians of a final round that times the default and the %d fastest interleaved\n\n",
         CONFIRM_TOP);
  printf("%-54s %-6s %11s %10s %10s %8s %-22s %8s  %s\n", "kernel", "bucket", "timed elems", "default ms", "best ms",
         "speedup", "best launch", "rejected", "status");
  for (int k = 0; k < t->n_tasks; k++) {
    const tune_task* task = &t->tasks[k];
    const candidate* b = task->best >= 0 ? &task->cands[task->best] : NULL;
    double def, best;
    task_times(task, &def, &best);
    char dms[16] = "-", bms[16] = "-", speed[16] = "-";
    if (def > 0) snprintf(dms, sizeof dms, "%.4f", 1e3 * def);
    if (best > 0) snprintf(bms, sizeof bms, "%.4f", 1e3 * best);
    if (best > 0 && def > 0) snprintf(speed, sizeof speed, "%.2f", def / best);
    printf("%-54s %-6s %11lld %10s %10s %8s %-22s %4d/%-3d  %s\n", task->kernel, task->bucket,
           (long long)task->timed, dms, bms, speed, b ? b->launch : "-", task->rejected, task->n_cands,
           task_status(task));
  }
}

static void print_json(const tuner* t) {
  cJSON* root = cJSON_CreateObject();
  cJSON* dev = cJSON_AddObjectToObject(root, "device");
  cJSON_AddStringToObject(dev, "dialect", t->dev.dialect);
  cJSON_AddStringToObject(dev, "vendor", t->dev.vendor);
  cJSON_AddStringToObject(dev, "architecture", t->dev.architecture);
  cJSON_AddStringToObject(dev, "device", t->dev.device);
  cJSON_AddStringToObject(root, "database", t->db_path);
  cJSON_AddStringToObject(root, "journal", t->journal.path);
  cJSON_AddBoolToObject(root, "complete", !t->stopped);
  cJSON_AddNumberToObject(root, "remaining_candidates", (double)t->pending);
  cJSON_AddNumberToObject(root, "repeats", t->o->repeats);
  cJSON* tasks = cJSON_AddArrayToObject(root, "tasks");
  for (int k = 0; k < t->n_tasks; k++) {
    const tune_task* task = &t->tasks[k];
    double def, best;
    task_times(task, &def, &best);
    cJSON* o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "kernel", task->kernel);
    cJSON_AddStringToObject(o, "bucket", task->bucket);
    cJSON_AddStringToObject(o, "variant", task->variant->name);
    cJSON_AddNumberToObject(o, "elements", (double)task->numel);
    cJSON_AddNumberToObject(o, "timed_elements", (double)task->timed);
    cJSON_AddStringToObject(o, "default_key", task->cands[0].key);
    cJSON_AddNumberToObject(o, "default_seconds", def);
    if (task->best >= 0) {
      cJSON_AddStringToObject(o, "best_key", task->cands[task->best].key);
      cJSON_AddNumberToObject(o, "best_seconds", best);
      cJSON_AddNumberToObject(o, "speedup", def > 0 ? def / best : 0.0);
    } else {
      cJSON_AddNullToObject(o, "best_key");
    }
    cJSON_AddStringToObject(o, "status", task_status(task));
    cJSON_AddNumberToObject(o, "candidates", task->n_cands);
    cJSON_AddNumberToObject(o, "rejected", task->rejected);
    cJSON* cands = cJSON_AddArrayToObject(o, "results");
    for (int i = 0; i < task->n_cands; i++) {
      const candidate* c = &task->cands[i];
      cJSON* co = cJSON_CreateObject();
      cJSON_AddStringToObject(co, "launch", c->launch);
      if (c->state == CAND_TIMED) cJSON_AddNumberToObject(co, "seconds", c->seconds);
      if (c->confirmed > 0) cJSON_AddNumberToObject(co, "final_round_seconds", c->confirmed);
      if (c->state == CAND_REJECTED) cJSON_AddStringToObject(co, "rejected", c->reason);
      if (c->state == CAND_PENDING) cJSON_AddBoolToObject(co, "pending", 1);
      if (c->from_journal) cJSON_AddBoolToObject(co, "journal", 1);
      cJSON_AddItemToArray(cands, co);
    }
    cJSON_AddItemToArray(tasks, o);
  }
  char* text = cJSON_Print(root);
  if (text) puts(text);
  free(text);
  cJSON_Delete(root);
}

/* ------------------------------------------------------------------ command */

static int tensors_of(const tune_options* o, model_file* m) {
  if (o->tensors) return model_file_read(o->tensors, m) ? CLI_EXIT_OK : CLI_EXIT_FAILURE;
  memset(m, 0, sizeof *m);
  m->tensors = calloc((size_t)(o->n_sizes * o->n_dtypes), sizeof *m->tensors);
  if (!m->tensors) return cli_error("out of memory");
  for (int s = 0; s < o->n_sizes; s++)
    for (int d = 0; d < o->n_dtypes; d++) {
      model_tensor* mt = &m->tensors[m->count++];
      snprintf(mt->name, sizeof mt->name, "size%lld.%s.%s", (long long)o->sizes[s], adamjit_dtype_name(o->dtypes[d][0]),
               adamjit_dtype_name(o->dtypes[d][1]));
      mt->numel = o->sizes[s];
      mt->param_dtype = o->dtypes[d][0];
      mt->grad_dtype = o->dtypes[d][1];
    }
  return CLI_EXIT_OK;
}

static int open_gpu(tuner* t) {
  adamjit_status st = open_context(t->o, t->o->backend, 1, &t->gpu);
  if (st != ADAMJIT_OK)
    return cli_library_error(NULL, st, "tune: opening the %s backend%s%s", adamjit_backend_name(t->o->backend),
                             t->o->device ? " with device " : "", t->o->device ? t->o->device : "");
  if (adamjit_context_backend(t->gpu) == ADAMJIT_BACKEND_CPU)
    return cli_error("tune: no GPU backend is available here (adamjit info lists the backends), and the cpu backend "
                     "launches no run-time kernels to tune");
  memset(&t->dev, 0, sizeof t->dev);
  t->dev.struct_size = sizeof t->dev;
  st = adamjit_tuning_device_info(t->gpu, &t->dev);
  if (st != ADAMJIT_OK) return cli_library_error(t->gpu, st, "tune: naming the device");
  snprintf(t->device_id, sizeof t->device_id, "%s|%s|%s|%s", t->dev.dialect, t->dev.vendor, t->dev.architecture,
           t->dev.device);
  st = adamjit_kernel_cache_dir(t->gpu, t->cache_dir, sizeof t->cache_dir);
  if (st != ADAMJIT_OK)
    return cli_library_error(t->gpu, st, "tune: the tuning database lives in the kernel cache directory, which is off");
  st = adamjit_tuning_db_path(t->gpu, t->db_path, sizeof t->db_path);
  if (st != ADAMJIT_OK) return cli_library_error(t->gpu, st, "tune: the tuning database path");
  return CLI_EXIT_OK;
}

int cmd_tune(int argc, char** argv) {
  tune_options o;
  int rc = parse(argc, argv, &o);
  if (rc >= 0) return rc;
  model_file m;
  if ((rc = tensors_of(&o, &m)) != CLI_EXIT_OK) return rc;
  tuner* t = calloc(1, sizeof *t);
  if (!t) {
    model_file_free(&m);
    return cli_error("out of memory");
  }
  t->o = &o;
  t->start = cli_now();
  char (*defaults)[ADAMJIT_KERNEL_KEY_MAX] = NULL;
  rc = open_gpu(t);
  if (rc == CLI_EXIT_OK && !tune_journal_open(&t->journal, t->cache_dir)) rc = CLI_EXIT_FAILURE;
  if (rc == CLI_EXIT_OK && !collect_tasks(t, &m)) rc = CLI_EXIT_FAILURE;
  if (rc == CLI_EXIT_OK && !(defaults = calloc((size_t)t->n_tasks + 1, sizeof *defaults)))
    rc = cli_error("out of memory");
  if (rc == CLI_EXIT_OK && !default_keys(t, defaults)) rc = CLI_EXIT_FAILURE;
  for (int k = 0; k < t->n_tasks && rc == CLI_EXIT_OK; k++) {
    if (o.restart) {
      tune_entry_id id = entry_id(t, &t->tasks[k]);
      tune_journal_forget(&t->journal, &id);
    }
    if (!make_candidates(t, &t->tasks[k], defaults[k])) rc = CLI_EXIT_FAILURE;
  }
  if (rc == CLI_EXIT_OK) {
    int total = 0;
    for (int k = 0; k < t->n_tasks; k++) total += t->tasks[k].n_cands;
    progress(t, "%s device \"%s\": %d task%s, %d candidates, %lld to measure (the rest from the journal %s)",
             t->dev.dialect, t->dev.device, t->n_tasks, t->n_tasks == 1 ? "" : "s", total, (long long)t->pending,
             t->journal.path);
  }
  int failed = 0;
  for (int k = 0; k < t->n_tasks && rc == CLI_EXIT_OK; k++) {
    if (!run_task(t, k)) rc = CLI_EXIT_FAILURE;
    failed |= t->tasks[k].failed;
  }
  if (rc == CLI_EXIT_OK) {
    if (o.json)
      print_json(t);
    else
      print_table(t);
    if (t->stopped) {
      int unfinished = 0;
      for (int k = 0; k < t->n_tasks; k++) unfinished += !t->tasks[k].finished;
      fprintf(stderr,
              "adamjit: tune: the budget of %g s is spent: %lld candidate%s of %d task%s remain (nothing recorded for "
              "those tasks); run the same command again to resume from the journal %s\n",
              o.budget, (long long)t->pending, t->pending == 1 ? "" : "s", unfinished, unfinished == 1 ? "" : "s",
              t->journal.path);
    }
    if (failed) rc = CLI_EXIT_FAILURE;
  }
  for (int k = 0; k < t->n_tasks; k++) free(t->tasks[k].cands);
  free(defaults);
  tune_journal_close(&t->journal);
  adamjit_context_destroy(t->cpu);
  adamjit_context_destroy(t->gpu);
  free(t);
  model_file_free(&m);
  return rc;
}
