/* `adamjit bench`: median time of an fp32 AdamW step per tensor-size case, in GB/s of the
 * 28 bytes per element a fused in-place step must move (read p, g, m, v; write p, m, v),
 * against a roofline measured in the same run on the same buffers. */
#include "cli.h"
#include "rng.h"

#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

enum { BYTES_PER_ELEMENT = 28, MAX_CASES = 4, FILL_CHUNK = 1 << 16 };

typedef struct bench_case {
  const char* name;
  int tensors;
  int64_t elements_per_tensor;
} bench_case;

static const bench_case all_cases[MAX_CASES] = {
    {"1e6", 1, 1000000},
    {"1e7", 1, 10000000},
    {"1e8", 1, 100000000},
    /* many small tensors: shows per-tensor overhead (launches, parallel regions) */
    {"1000x1e4", 1000, 10000},
};

typedef struct bench_options {
  adamjit_backend backend;
  int json;
  int repeats;
  int warmup;
  int threads; /* 0: the library's default (all OpenMP threads) */
  int case_count;
  const bench_case* cases[MAX_CASES];
} bench_options;

/* One tensor as the roofline stream sees it. p and g are the optimizer's own buffers; m and
 * v are ours, of the same size, because the optimizer's state is not host-addressable. */
typedef struct stream_tensor {
  float* p;
  const float* g;
  float* m;
  float* v;
  int64_t n;
} stream_tensor;

/* Everything one case allocates, so that one function frees it whatever failed. */
typedef struct bench_run {
  adamjit_context* ctx;
  const bench_case* bc;
  adamjit_mem* param;
  adamjit_mem* grad;
  adamjit_optimizer* opt;
  stream_tensor* stream; /* NULL when there is no host roofline (GPU backends) */
  double* step_times;
  double* stream_times;
} bench_run;

typedef struct bench_result {
  double seconds; /* median per step */
  double gbps;
  double roofline_gbps; /* 0 where not measured */
  double ratio;
} bench_result;

/* ------------------------------------------------------------------ options */

static int parse_sizes(const char* text, bench_options* o) {
  o->case_count = 0;
  const char* item = text;
  for (;;) {
    size_t len = strcspn(item, ",");
    if (len == 0) {
      cli_usage_error("--sizes: empty entry in '%s'", text);
      return 0;
    }
    const bench_case* found = NULL;
    for (int c = 0; c < MAX_CASES; c++)
      if (strlen(all_cases[c].name) == len && strncmp(all_cases[c].name, item, len) == 0) found = &all_cases[c];
    if (!found) {
      cli_usage_error("--sizes: unknown case '%.*s' (expected a comma list of 1e6, 1e7, 1e8, 1000x1e4)", (int)len,
                      item);
      return 0;
    }
    for (int c = 0; c < o->case_count; c++)
      if (o->cases[c] == found) {
        cli_usage_error("--sizes: case '%s' is listed twice", found->name);
        return 0;
      }
    o->cases[o->case_count++] = found;
    if (item[len] == '\0') return 1;
    item += len + 1;
  }
}

static int parse_options(int argc, char** argv, bench_options* o) {
  memset(o, 0, sizeof *o);
  o->backend = ADAMJIT_BACKEND_AUTO;
  o->repeats = 7;
  o->warmup = 2;
  o->case_count = MAX_CASES;
  for (int c = 0; c < MAX_CASES; c++) o->cases[c] = &all_cases[c];
  for (int i = 1; i < argc; i++) {
    const char* v = NULL;
    int r;
    if (cli_is_help(argv[i])) {
      cli_print_usage(stdout);
      return -1;
    } else if ((r = cli_option(argc, argv, &i, "--backend", &v)) != 0) {
      if (r < 0 || !cli_parse_backend("--backend", v, &o->backend)) return CLI_EXIT_USAGE;
    } else if ((r = cli_option(argc, argv, &i, "--repeats", &v)) != 0) {
      if (r < 0 || !cli_parse_int("--repeats", v, 1, 10000, &o->repeats)) return CLI_EXIT_USAGE;
    } else if ((r = cli_option(argc, argv, &i, "--warmup", &v)) != 0) {
      if (r < 0 || !cli_parse_int("--warmup", v, 0, 10000, &o->warmup)) return CLI_EXIT_USAGE;
    } else if ((r = cli_option(argc, argv, &i, "--threads", &v)) != 0) {
      if (r < 0 || !cli_parse_int("--threads", v, 1, 4096, &o->threads)) return CLI_EXIT_USAGE;
    } else if ((r = cli_option(argc, argv, &i, "--sizes", &v)) != 0) {
      if (r < 0 || !parse_sizes(v, o)) return CLI_EXIT_USAGE;
    } else if ((r = cli_flag(argv[i], "--json")) != 0) {
      if (r < 0) return CLI_EXIT_USAGE;
      o->json = 1;
    } else {
      return cli_usage_error("bench: unknown option '%s'", argv[i]);
    }
  }
  return CLI_EXIT_OK;
}

/* ------------------------------------------------------------------ roofline */

typedef enum stream_pass { PASS_ZERO, PASS_STREAM } stream_pass;

/* One thread's share of one tensor: elements [lo, hi). */
static void stream_range(const stream_tensor* t, int64_t lo, int64_t hi, stream_pass pass) {
  float* restrict p = t->p;
  const float* restrict g = t->g;
  float* restrict m = t->m;
  float* restrict v = t->v;
  if (pass == PASS_ZERO) {
    memset(m + lo, 0, (size_t)(hi - lo) * sizeof(float));
    memset(v + lo, 0, (size_t)(hi - lo) * sizeof(float));
    return;
  }
  const float a = 1e-7f, b = 0.5f; /* keep values bounded over any number of passes */
#pragma omp simd
  for (int64_t j = lo; j < hi; j++) {
    const float gj = g[j];
    p[j] += a * gj;
    m[j] = m[j] * b + gj;
    v[j] = v[j] * b + gj * gj;
  }
}

/* The best case a fused step could reach: one in-place pass over the same bytes (4 reads,
 * 3 writes per element) with no arithmetic to speak of, the results stored so the compiler
 * cannot drop it. The static split is over all tensors' elements end to end: each thread
 * streams one contiguous run, so many small tensors cost no barrier or restart each (a
 * per-tensor split would halve every 1e4-element tensor and handicap the roofline). */
static void stream_pass_run(const stream_tensor* t, int count, int threads, stream_pass pass) {
  int64_t total = 0;
  for (int i = 0; i < count; i++) total += t[i].n;
  (void)threads;
#pragma omp parallel num_threads(threads)
  {
    int id = 0, nth = 1;
#ifdef _OPENMP
    id = omp_get_thread_num();
    nth = omp_get_num_threads();
#endif
    const int64_t begin = total * id / nth, end = total * (id + 1) / nth;
    int64_t base = 0; /* index of tensor i's first element in the concatenation */
    for (int i = 0; i < count && base < end; base += t[i].n, i++) {
      int64_t lo = begin > base ? begin - base : 0;
      int64_t hi = end - base < t[i].n ? end - base : t[i].n;
      if (lo < hi) stream_range(&t[i], lo, hi, pass);
    }
  }
}

static float* alloc_floats(int64_t n) {
  size_t bytes = ((size_t)n * sizeof(float) + 63) & ~(size_t)63; /* aligned_alloc wants a multiple */
  return aligned_alloc(64, bytes);
}

/* ------------------------------------------------------------------ one case */

static adamjit_status fill_random(adamjit_context* ctx, adamjit_mem mem, int64_t n, float scale, rng* r, float* chunk) {
  for (int64_t done = 0; done < n; done += FILL_CHUNK) {
    int64_t count = n - done < FILL_CHUNK ? n - done : FILL_CHUNK;
    for (int64_t j = 0; j < count; j++) chunk[j] = (float)(scale * (2.0 * rng_uniform(r) - 1.0));
    adamjit_status st = adamjit_mem_write(ctx, mem, (size_t)done * sizeof(float), chunk, (size_t)count * sizeof(float));
    if (st != ADAMJIT_OK) return st;
  }
  return ADAMJIT_OK;
}

static void bench_run_free(bench_run* run) {
  adamjit_optimizer_destroy(run->opt);
  for (int i = 0; i < run->bc->tensors; i++) {
    if (run->param) adamjit_mem_free(run->ctx, run->param[i]);
    if (run->grad) adamjit_mem_free(run->ctx, run->grad[i]);
    if (run->stream) {
      free(run->stream[i].m);
      free(run->stream[i].v);
    }
  }
  free(run->param);
  free(run->grad);
  free(run->stream);
  free(run->step_times);
  free(run->stream_times);
}

/* Backend buffers with random params and grads, the optimizer with them registered. */
static int bench_run_setup(bench_run* run, const bench_options* o) {
  const bench_case* bc = run->bc;
  run->param = calloc((size_t)bc->tensors, sizeof *run->param);
  run->grad = calloc((size_t)bc->tensors, sizeof *run->grad);
  run->step_times = calloc((size_t)o->repeats, sizeof(double));
  run->stream_times = calloc((size_t)o->repeats, sizeof(double));
  float* chunk = malloc(FILL_CHUNK * sizeof(float));
  if (!run->param || !run->grad || !run->step_times || !run->stream_times || !chunk) {
    free(chunk);
    return cli_error("out of memory");
  }
  rng r = rng_stream(1, 4);
  size_t bytes = (size_t)bc->elements_per_tensor * sizeof(float);
  adamjit_status st = adamjit_optimizer_create(run->ctx, NULL, &run->opt);
  for (int i = 0; i < bc->tensors && st == ADAMJIT_OK; i++) {
    st = adamjit_mem_alloc(run->ctx, bytes, &run->param[i]);
    if (st == ADAMJIT_OK) st = adamjit_mem_alloc(run->ctx, bytes, &run->grad[i]);
    if (st == ADAMJIT_OK) st = fill_random(run->ctx, run->param[i], bc->elements_per_tensor, 1.0f, &r, chunk);
    if (st == ADAMJIT_OK) st = fill_random(run->ctx, run->grad[i], bc->elements_per_tensor, 1e-2f, &r, chunk);
    if (st != ADAMJIT_OK) break;
    adamjit_tensor_desc desc;
    adamjit_tensor_desc_init_default(&desc);
    desc.param = run->param[i];
    desc.grad = run->grad[i];
    desc.numel = bc->elements_per_tensor;
    int index;
    st = adamjit_optimizer_add_tensor(run->opt, &desc, &index);
  }
  free(chunk);
  if (st != ADAMJIT_OK) return cli_library_error(run->ctx, st, "setting up case %s", bc->name);
  return CLI_EXIT_OK;
}

/* Host-side stream buffers; only the CPU backend's memory handles are host pointers. */
static int bench_run_stream_setup(bench_run* run, int threads) {
  const bench_case* bc = run->bc;
  run->stream = calloc((size_t)bc->tensors, sizeof *run->stream);
  if (!run->stream) return cli_error("out of memory");
  for (int i = 0; i < bc->tensors; i++) {
    stream_tensor* t = &run->stream[i];
    t->p = (float*)run->param[i];
    t->g = (const float*)run->grad[i];
    t->n = bc->elements_per_tensor;
    t->m = alloc_floats(t->n);
    t->v = alloc_floats(t->n);
    if (!t->m || !t->v) return cli_error("out of memory for the roofline buffers of case %s", bc->name);
  }
  /* Touched first by the threads that will stream them, as the warm-up does for the state. */
  stream_pass_run(run->stream, bc->tensors, threads, PASS_ZERO);
  return CLI_EXIT_OK;
}

static int compare_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

static double median(double* v, int n) {
  qsort(v, (size_t)n, sizeof *v, compare_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Step and stream alternate, so both see the same machine noise (this is a shared VM). */
static int bench_run_time(bench_run* run, const bench_options* o, int threads) {
  for (int it = 0; it < o->warmup + o->repeats; it++) {
    double t0 = cli_now();
    adamjit_status st = adamjit_optimizer_step(run->opt, NULL);
    if (st == ADAMJIT_OK) st = adamjit_context_synchronize(run->ctx);
    double t1 = cli_now();
    if (st != ADAMJIT_OK) return cli_library_error(run->ctx, st, "case %s: optimizer step", run->bc->name);
    if (run->stream) stream_pass_run(run->stream, run->bc->tensors, threads, PASS_STREAM);
    double t2 = cli_now();
    if (it >= o->warmup) {
      run->step_times[it - o->warmup] = t1 - t0;
      run->stream_times[it - o->warmup] = t2 - t1;
    }
  }
  return CLI_EXIT_OK;
}

static int bench_case_run(adamjit_context* ctx, const bench_case* bc, const bench_options* o, int threads,
                          bench_result* res) {
  bench_run run = {.ctx = ctx, .bc = bc};
  int rc = bench_run_setup(&run, o);
  if (rc == CLI_EXIT_OK && adamjit_context_backend(ctx) == ADAMJIT_BACKEND_CPU)
    rc = bench_run_stream_setup(&run, threads);
  if (rc == CLI_EXIT_OK) rc = bench_run_time(&run, o, threads);
  if (rc == CLI_EXIT_OK) {
    double bytes = (double)BYTES_PER_ELEMENT * (double)bc->tensors * (double)bc->elements_per_tensor;
    res->seconds = median(run.step_times, o->repeats);
    res->gbps = bytes / res->seconds / 1e9;
    res->roofline_gbps = run.stream ? bytes / median(run.stream_times, o->repeats) / 1e9 : 0.0;
    res->ratio = res->roofline_gbps > 0 ? res->gbps / res->roofline_gbps : 0.0;
  }
  bench_run_free(&run);
  return rc;
}

/* ------------------------------------------------------------------ output */

static void print_preamble(int argc, char** argv, adamjit_context* ctx, const bench_options* o, int threads) {
  printf("adamjit");
  for (int i = 0; i < argc; i++) printf(" %s", argv[i]);
  adamjit_backend backend = adamjit_context_backend(ctx);
  char device[256] = "";
  if (adamjit_backend_device_name(backend, 0, device, sizeof device) != ADAMJIT_OK) device[0] = '\0';
  printf("\nbackend %s%s%s%s", adamjit_backend_name(backend), *device ? " (" : "", device, *device ? ")" : "");
  if (backend == ADAMJIT_BACKEND_CPU) printf(", %d thread%s", threads, threads == 1 ? "" : "s");
  printf("; fp32 AdamW, %d bytes/element; median of %d steps after %d warm-up\n", BYTES_PER_ELEMENT, o->repeats,
         o->warmup);
  if (backend == ADAMJIT_BACKEND_CPU)
    printf("roofline: in-place OpenMP stream over the same param/grad buffers and m/v arrays of the same size\n\n");
  else
    printf("roofline: not available on the %s backend yet (shown as 0)\n\n", adamjit_backend_name(backend));
  printf("%-9s %10s %8s %10s %8s %14s %6s\n", "case", "elements", "tensors", "ms/step", "GB/s", "roofline GB/s",
         "ratio");
  fflush(stdout);
}

static void print_row(const bench_case* bc, const bench_result* r) {
  printf("%-9s %10lld %8d %10.3f %8.2f %14.2f %6.2f\n", bc->name, (long long)bc->tensors * bc->elements_per_tensor,
         bc->tensors, 1e3 * r->seconds, r->gbps, r->roofline_gbps, r->ratio);
  fflush(stdout);
}

static void print_json(adamjit_context* ctx, const bench_case* bc, const bench_options* o, int threads,
                       const bench_result* r) {
  printf("{\"backend\":\"%s\",\"variant\":\"fp32\",\"case\":\"%s\",\"elements\":%lld,\"tensors\":%d,"
         "\"threads\":%d,\"repeats\":%d,\"warmup\":%d,\"seconds_per_step\":%.9g,\"gbps\":%.4f,"
         "\"roofline_gbps\":%.4f,\"ratio\":%.4f}\n",
         adamjit_backend_name(adamjit_context_backend(ctx)), bc->name,
         (long long)bc->tensors * bc->elements_per_tensor, bc->tensors, threads, o->repeats, o->warmup, r->seconds,
         r->gbps, r->roofline_gbps, r->ratio);
  fflush(stdout);
}

/* ------------------------------------------------------------------ command */

int cmd_bench(int argc, char** argv) {
  bench_options o;
  int rc = parse_options(argc, argv, &o);
  if (rc < 0) return CLI_EXIT_OK; /* --help */
  if (rc != CLI_EXIT_OK) return rc;

  adamjit_context_desc desc;
  adamjit_context_desc_init_default(&desc);
  desc.backend = o.backend;
  if (o.threads > 0) desc.num_threads = o.threads;
  adamjit_context* ctx = NULL;
  adamjit_status st = adamjit_context_create(&desc, &ctx);
  if (st != ADAMJIT_OK) return cli_library_error(NULL, st, "opening the %s backend", adamjit_backend_name(o.backend));
  /* The library's default (-1) is every OpenMP thread; the roofline uses the same count. */
  int threads = o.threads > 0 ? o.threads : cli_max_threads();

  if (!o.json) print_preamble(argc, argv, ctx, &o, threads);
  for (int c = 0; c < o.case_count && rc == CLI_EXIT_OK; c++) {
    bench_result r = {0};
    rc = bench_case_run(ctx, o.cases[c], &o, threads, &r);
    if (rc != CLI_EXIT_OK) break;
    if (o.json)
      print_json(ctx, o.cases[c], &o, threads, &r);
    else
      print_row(o.cases[c], &r);
  }
  adamjit_context_destroy(ctx);
  return rc;
}
