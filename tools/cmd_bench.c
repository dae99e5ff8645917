/* `adamjit bench`: median time of an AdamW step per tensor-size case and optimizer variant
 * (fp32 state, or 8-bit blockwise state with a given block size), in GB/s of the bytes a
 * fused in-place step must move, against a roofline measured in the same run: an in-place
 * stream over the same parameter and gradient buffers that moves exactly those bytes.
 *
 *   fp32:       28 bytes/element: read p, g, m, v (4 each); write p, m, v.
 *   8-bit (B):  16 + 16/B bytes/element: read and write p (4 + 4), read g (4), read and
 *               write the m and v codes (1 + 1 each), and per block of B elements read and
 *               write the two fp32 absmax (16 bytes). The block count is exact per tensor
 *               (ceil(n/B)), so 16.0625 bytes/element at B = 256 up to rounding.
 *
 * With --quant it times adamjit_quantize_blockwise / adamjit_dequantize_blockwise instead,
 * with each nearest-code search (see print_quant_preamble for the byte counts). With --tuned
 * (GPU backends) it compares the launch parameters of the tuning databases with the
 * library's defaults, step for step in the same run (see run_tuned). */
#include "cli.h"
#include "rng.h"

#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

enum { FP32_BYTES_PER_ELEMENT = 28, MAX_CASES = 4, MAX_VARIANTS = 8, FILL_CHUNK = 1 << 16, QUANT_BLOCK = 256 };

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

/* An optimizer variant: "fp32" (bits 32) or "8bit-b<B>" (bits 8, block B); see cli.h. */
typedef cli_variant bench_variant;

typedef struct bench_options {
  adamjit_backend backend;
  int json;
  int quant;
  int tuned;
  const char* cache_dir;  /* kernel cache and its tuning database; NULL: the library's default */
  const char* tuning_db;  /* --tuned: a user tuning database; NULL: $ADAMJIT_TUNING_DB */
  int repeats;
  int warmup;
  int threads; /* 0: the library's default (all OpenMP threads) */
  int sizes_given;
  int case_count;
  const bench_case* cases[MAX_CASES];
  int variants_given;
  int variant_count;
  bench_variant variants[MAX_VARIANTS];
} bench_options;

/* One tensor as the roofline stream sees it. p and g are the optimizer's own buffers; the
 * state arrays are ours, shaped like the variant's state, because the optimizer's state is
 * not host-addressable. fp32 uses m and v; 8-bit uses c1, c2 (codes) and a1, a2 (absmax). */
typedef struct stream_tensor {
  float* p;
  const float* g;
  int64_t n;
  float* m;
  float* v;
  uint8_t* c1;
  uint8_t* c2;
  float* a1;
  float* a2;
} stream_tensor;

/* Parameters and gradients of one case, shared by its variants. */
typedef struct bench_buffers {
  adamjit_context* ctx;
  const bench_case* bc;
  adamjit_mem* param;
  adamjit_mem* grad;
} bench_buffers;

/* What one variant of one case allocates, so that one function frees it whatever failed. */
typedef struct bench_run {
  const bench_buffers* buf;
  const bench_variant* var;
  adamjit_optimizer* opt;
  stream_tensor* stream; /* the host roofline (CPU backend); NULL on GPU backends */
  adamjit_mem copy_src, copy_dst; /* the device roofline (GPU backends): a copy of the same bytes */
  size_t copy_bytes;
  double* step_times;
  double* stream_times;
} bench_run;

typedef struct bench_result {
  double seconds; /* median per step (or per quantization call over all tensors) */
  double bytes;   /* counted per step */
  double gbps;
  double roofline_gbps; /* 0 where not measured */
  double ratio;
} bench_result;

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Bytes one step of the variant moves over the case (see the top of the file). */
static double step_bytes(const bench_case* bc, const bench_variant* v) {
  int64_t n = bc->elements_per_tensor;
  double per_tensor = v->bits == 32 ? (double)FP32_BYTES_PER_ELEMENT * (double)n
                                    : 16.0 * (double)n + 16.0 * (double)ceil_div(n, v->block);
  return per_tensor * bc->tensors;
}

/* ------------------------------------------------------------------ options */

static int size_item(const char* s, size_t len, void* user) {
  bench_options* o = user;
  const bench_case* found = NULL;
  for (int c = 0; c < MAX_CASES; c++)
    if (strlen(all_cases[c].name) == len && strncmp(all_cases[c].name, s, len) == 0) found = &all_cases[c];
  if (!found) {
    cli_usage_error("--sizes: unknown case '%.*s' (expected a comma list of 1e6, 1e7, 1e8, 1000x1e4)", (int)len, s);
    return 0;
  }
  for (int c = 0; c < o->case_count; c++)
    if (o->cases[c] == found) {
      cli_usage_error("--sizes: case '%s' is listed twice", found->name);
      return 0;
    }
  o->cases[o->case_count++] = found;
  return 1;
}

static int parse_sizes(const char* text, bench_options* o) {
  o->case_count = 0;
  return cli_parse_list("--sizes", text, size_item, o);
}

static int parse_variants(const char* text, bench_options* o) {
  return cli_parse_variants("--variants", text, 0, o->variants, MAX_VARIANTS, &o->variant_count);
}

static int parse_options(int argc, char** argv, bench_options* o) {
  memset(o, 0, sizeof *o);
  o->backend = ADAMJIT_BACKEND_AUTO;
  o->repeats = 7;
  o->warmup = 2;
  o->case_count = MAX_CASES;
  for (int c = 0; c < MAX_CASES; c++) o->cases[c] = &all_cases[c];
  if (!parse_variants("fp32,8bit-b256", o)) return CLI_EXIT_USAGE;
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
      o->sizes_given = 1;
    } else if ((r = cli_option(argc, argv, &i, "--variants", &v)) != 0) {
      if (r < 0 || !parse_variants(v, o)) return CLI_EXIT_USAGE;
      o->variants_given = 1;
    } else if ((r = cli_flag(argv[i], "--json")) != 0) {
      if (r < 0) return CLI_EXIT_USAGE;
      o->json = 1;
    } else if ((r = cli_flag(argv[i], "--quant")) != 0) {
      if (r < 0) return CLI_EXIT_USAGE;
      o->quant = 1;
    } else if ((r = cli_flag(argv[i], "--tuned")) != 0) {
      if (r < 0) return CLI_EXIT_USAGE;
      o->tuned = 1;
    } else if ((r = cli_option(argc, argv, &i, "--cache-dir", &v)) != 0) {
      if (r < 0) return CLI_EXIT_USAGE;
      o->cache_dir = v;
    } else if ((r = cli_option(argc, argv, &i, "--tuning-db", &v)) != 0) {
      if (r < 0) return CLI_EXIT_USAGE;
      o->tuning_db = v;
    } else {
      return cli_usage_error("bench: unknown option '%s'", argv[i]);
    }
  }
  if (o->quant && o->variants_given)
    return cli_usage_error("--variants chooses optimizer steps; --quant times quantization instead");
  if (o->tuned && o->quant) return cli_usage_error("--tuned compares optimizer steps; --quant times quantization");
  if (o->tuned && o->backend == ADAMJIT_BACKEND_CPU)
    return cli_usage_error("--tuned: the cpu backend launches no run-time kernels, so it has no launch parameters "
                           "to tune (use --backend opencl or cuda)");
  if (o->tuning_db && !o->tuned) return cli_usage_error("--tuning-db goes with --tuned");
  if (o->quant && !o->sizes_given) {
    o->case_count = 0;
    if (!parse_sizes("1e7,1e8", o)) return CLI_EXIT_USAGE;
  }
  return CLI_EXIT_OK;
}

/* ------------------------------------------------------------------ roofline */

/* The library's CPU loops come in AVX-512, AVX2 and baseline versions picked at load time
 * (backends/cpu/cpu_elem.h); the streams get the same choice, or a one-thread roofline
 * would measure SSE2 conversions instead of memory. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define BENCH_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define BENCH_CLONES
#endif

typedef enum stream_pass { PASS_ZERO, PASS_STREAM } stream_pass;

/* fp32 state: one thread's share of one tensor, elements [lo, hi). */
BENCH_CLONES static void stream_fp32(const stream_tensor* t, int64_t lo, int64_t hi, stream_pass pass) {
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

/* 8-bit state: one thread's share of one tensor, whole blocks [blo, bhi) of `block`. */
BENCH_CLONES static void stream_8bit(const stream_tensor* t, int64_t blo, int64_t bhi, int block, stream_pass pass) {
  float* restrict p = t->p;
  const float* restrict g = t->g;
  uint8_t* restrict c1 = t->c1;
  uint8_t* restrict c2 = t->c2;
  for (int64_t bl = blo; bl < bhi; bl++) {
    const int64_t lo = bl * block, hi = lo + block < t->n ? lo + block : t->n;
    if (pass == PASS_ZERO) {
      memset(c1 + lo, 0, (size_t)(hi - lo));
      memset(c2 + lo, 0, (size_t)(hi - lo));
      t->a1[bl] = t->a2[bl] = 0.0f;
      continue;
    }
    const float a = 1e-7f;
    const float s1 = t->a1[bl], s2 = t->a2[bl]; /* each absmax read once per block ... */
#pragma omp simd
    for (int64_t j = lo; j < hi; j++) {
      p[j] += a * g[j];
      c1[j] = (uint8_t)(c1[j] + 1u);
      c2[j] = (uint8_t)(c2[j] + 3u);
    }
    t->a1[bl] = 0.5f * s1 + 1.0f; /* ... and written once */
    t->a2[bl] = 0.5f * s2 + 1.0f;
  }
}

/* The best case a fused step could reach: one in-place pass over the same bytes with no
 * arithmetic to speak of, the results stored so the compiler cannot drop it. The static
 * split is over all tensors' elements (8-bit: blocks) end to end: each thread streams one
 * contiguous run, so many small tensors cost no barrier or restart each (a per-tensor split
 * would halve every 1e4-element tensor and handicap the roofline). block = 0: fp32 state. */
static void stream_pass_run(const stream_tensor* t, int count, int threads, int block, stream_pass pass) {
  int64_t total = 0; /* elements, or blocks at 8 bits */
  for (int i = 0; i < count; i++) total += block ? ceil_div(t[i].n, block) : t[i].n;
  (void)threads;
#pragma omp parallel num_threads(threads)
  {
    int id = 0, nth = 1;
#ifdef _OPENMP
    id = omp_get_thread_num();
    nth = omp_get_num_threads();
#endif
    const int64_t begin = total * id / nth, end = total * (id + 1) / nth;
    int64_t base = 0; /* index of tensor i's first unit in the concatenation */
    for (int i = 0; i < count && base < end; i++) {
      const int64_t units = block ? ceil_div(t[i].n, block) : t[i].n;
      int64_t lo = begin > base ? begin - base : 0;
      int64_t hi = end - base < units ? end - base : units;
      if (lo < hi) {
        if (block)
          stream_8bit(&t[i], lo, hi, block, pass);
        else
          stream_fp32(&t[i], lo, hi, pass);
      }
      base += units;
    }
  }
}

/* The roofline's own arrays come from the CPU backend as its state does, so that both
 * stream through the same kind of pages (huge pages from 2 MiB on, unless
 * ADAMJIT_CPU_HUGE_PAGES=0: backends/cpu/cpu_backend.c). NULL when that fails. */
static void* stream_alloc(adamjit_context* ctx, size_t bytes) {
  adamjit_mem m = NULL;
  return adamjit_mem_alloc(ctx, bytes, &m) == ADAMJIT_OK ? m : NULL;
}

/* ------------------------------------------------------------------ timing helpers */

static void fill_result(bench_result* res, double bytes, double* times, double* stream_times, int repeats) {
  res->bytes = bytes;
  res->seconds = cli_median(times, repeats);
  res->gbps = bytes / res->seconds / 1e9;
  res->roofline_gbps = stream_times ? bytes / cli_median(stream_times, repeats) / 1e9 : 0.0;
  res->ratio = res->roofline_gbps > 0 ? res->gbps / res->roofline_gbps : 0.0;
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

static void bench_buffers_free(bench_buffers* buf) {
  for (int i = 0; i < buf->bc->tensors; i++) {
    if (buf->param) adamjit_mem_free(buf->ctx, buf->param[i]);
    if (buf->grad) adamjit_mem_free(buf->ctx, buf->grad[i]);
  }
  free(buf->param);
  free(buf->grad);
}

/* Backend buffers with random params and grads. */
static int bench_buffers_setup(bench_buffers* buf) {
  const bench_case* bc = buf->bc;
  buf->param = calloc((size_t)bc->tensors, sizeof *buf->param);
  buf->grad = calloc((size_t)bc->tensors, sizeof *buf->grad);
  float* chunk = malloc(FILL_CHUNK * sizeof(float));
  if (!buf->param || !buf->grad || !chunk) {
    free(chunk);
    return cli_error("out of memory");
  }
  rng r = rng_stream(1, 4);
  size_t bytes = (size_t)bc->elements_per_tensor * sizeof(float);
  adamjit_status st = ADAMJIT_OK;
  for (int i = 0; i < bc->tensors && st == ADAMJIT_OK; i++) {
    st = adamjit_mem_alloc(buf->ctx, bytes, &buf->param[i]);
    if (st == ADAMJIT_OK) st = adamjit_mem_alloc(buf->ctx, bytes, &buf->grad[i]);
    if (st == ADAMJIT_OK) st = fill_random(buf->ctx, buf->param[i], bc->elements_per_tensor, 1.0f, &r, chunk);
    if (st == ADAMJIT_OK) st = fill_random(buf->ctx, buf->grad[i], bc->elements_per_tensor, 1e-2f, &r, chunk);
  }
  free(chunk);
  if (st != ADAMJIT_OK) return cli_library_error(buf->ctx, st, "setting up case %s", bc->name);
  return CLI_EXIT_OK;
}

static void bench_run_free(bench_run* run) {
  adamjit_optimizer_destroy(run->opt);
  if (run->stream) {
    for (int i = 0; i < run->buf->bc->tensors; i++) {
      stream_tensor* t = &run->stream[i];
      void* arrays[] = {t->m, t->v, t->c1, t->c2, t->a1, t->a2};
      for (size_t k = 0; k < sizeof arrays / sizeof *arrays; k++) adamjit_mem_free(run->buf->ctx, arrays[k]);
    }
  }
  free(run->stream);
  adamjit_mem_free(run->buf->ctx, run->copy_src);
  adamjit_mem_free(run->buf->ctx, run->copy_dst);
  free(run->step_times);
  free(run->stream_times);
}

/* The variant's optimizer with the case's tensors registered. */
static int bench_run_setup(bench_run* run, const bench_options* o) {
  const bench_buffers* buf = run->buf;
  const bench_case* bc = buf->bc;
  run->step_times = calloc((size_t)o->repeats, sizeof(double));
  run->stream_times = calloc((size_t)o->repeats, sizeof(double));
  if (!run->step_times || !run->stream_times) return cli_error("out of memory");
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.optim_bits = run->var->bits;
  if (run->var->bits == 8) cfg.quant_block_size = run->var->block;
  adamjit_status st = adamjit_optimizer_create(buf->ctx, &cfg, &run->opt);
  for (int i = 0; i < bc->tensors && st == ADAMJIT_OK; i++) {
    adamjit_tensor_desc desc;
    adamjit_tensor_desc_init_default(&desc);
    desc.param = buf->param[i];
    desc.grad = buf->grad[i];
    desc.numel = bc->elements_per_tensor;
    int index;
    st = adamjit_optimizer_add_tensor(run->opt, &desc, &index);
    if (st != ADAMJIT_OK) break;
    /* Every case is above min_8bit_size; make sure no tensor silently fell back to fp32. */
    adamjit_tensor_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    st = adamjit_optimizer_tensor_info(run->opt, index, &info);
    if (st == ADAMJIT_OK && info.state_bits != run->var->bits)
      return cli_error("case %s, %s: tensor %d has %d-bit state", bc->name, run->var->name, index, info.state_bits);
  }
  if (st != ADAMJIT_OK) return cli_library_error(buf->ctx, st, "setting up case %s, %s", bc->name, run->var->name);
  return CLI_EXIT_OK;
}

/* Host-side stream buffers shaped like the variant's state; only the CPU backend's memory
 * handles are host pointers. */
static int bench_run_stream_setup(bench_run* run, int threads) {
  const bench_case* bc = run->buf->bc;
  adamjit_context* ctx = run->buf->ctx;
  run->stream = calloc((size_t)bc->tensors, sizeof *run->stream);
  if (!run->stream) return cli_error("out of memory");
  const int block = run->var->bits == 8 ? run->var->block : 0;
  for (int i = 0; i < bc->tensors; i++) {
    stream_tensor* t = &run->stream[i];
    t->p = (float*)run->buf->param[i];
    t->g = (const float*)run->buf->grad[i];
    t->n = bc->elements_per_tensor;
    int ok;
    if (block) {
      size_t blocks = (size_t)ceil_div(t->n, block);
      t->c1 = stream_alloc(ctx, (size_t)t->n);
      t->c2 = stream_alloc(ctx, (size_t)t->n);
      t->a1 = stream_alloc(ctx, blocks * sizeof(float));
      t->a2 = stream_alloc(ctx, blocks * sizeof(float));
      ok = t->c1 && t->c2 && t->a1 && t->a2;
    } else {
      t->m = stream_alloc(ctx, (size_t)t->n * sizeof(float));
      t->v = stream_alloc(ctx, (size_t)t->n * sizeof(float));
      ok = t->m && t->v;
    }
    if (!ok) return cli_error("out of memory for the roofline buffers of case %s", bc->name);
  }
  /* Touched first by the threads that will stream them, as the warm-up does for the state. */
  stream_pass_run(run->stream, bc->tensors, threads, block, PASS_ZERO);
  return CLI_EXIT_OK;
}

/* GPU backends: the roofline is a device-to-device copy that reads and writes as many bytes
 * as the step moves in total (half each way), i.e. the device's copy bandwidth. */
static int bench_run_copy_setup(bench_run* run) {
  adamjit_context* ctx = run->buf->ctx;
  run->copy_bytes = (size_t)(step_bytes(run->buf->bc, run->var) / 2.0);
  adamjit_status st = adamjit_mem_alloc(ctx, run->copy_bytes, &run->copy_src);
  if (st == ADAMJIT_OK) st = adamjit_mem_alloc(ctx, run->copy_bytes, &run->copy_dst);
  if (st != ADAMJIT_OK) return cli_library_error(ctx, st, "allocating the device-copy roofline buffers");
  return CLI_EXIT_OK;
}

/* Step and stream alternate, so both see the same machine noise (this is a shared VM). */
static int bench_run_time(bench_run* run, const bench_options* o, int threads) {
  const int block = run->var->bits == 8 ? run->var->block : 0;
  for (int it = 0; it < o->warmup + o->repeats; it++) {
    double t0 = cli_now();
    adamjit_status st = adamjit_optimizer_step(run->opt, NULL);
    if (st == ADAMJIT_OK) st = adamjit_context_synchronize(run->buf->ctx);
    double t1 = cli_now();
    if (st != ADAMJIT_OK)
      return cli_library_error(run->buf->ctx, st, "case %s, %s: optimizer step", run->buf->bc->name, run->var->name);
    if (run->stream) stream_pass_run(run->stream, run->buf->bc->tensors, threads, block, PASS_STREAM);
    if (run->copy_src) {
      st = adamjit_mem_copy(run->buf->ctx, run->copy_dst, 0, run->copy_src, 0, run->copy_bytes);
      if (st == ADAMJIT_OK) st = adamjit_context_synchronize(run->buf->ctx);
      if (st != ADAMJIT_OK) return cli_library_error(run->buf->ctx, st, "device-copy roofline");
    }
    double t2 = cli_now();
    if (it >= o->warmup) {
      run->step_times[it - o->warmup] = t1 - t0;
      run->stream_times[it - o->warmup] = t2 - t1;
    }
  }
  return CLI_EXIT_OK;
}

static int bench_variant_run(const bench_buffers* buf, const bench_variant* var, const bench_options* o, int threads,
                             bench_result* res) {
  bench_run run = {.buf = buf, .var = var};
  int rc = bench_run_setup(&run, o);
  if (rc == CLI_EXIT_OK)
    rc = adamjit_context_backend(buf->ctx) == ADAMJIT_BACKEND_CPU ? bench_run_stream_setup(&run, threads)
                                                                  : bench_run_copy_setup(&run);
  if (rc == CLI_EXIT_OK) rc = bench_run_time(&run, o, threads);
  if (rc == CLI_EXIT_OK) fill_result(res, step_bytes(buf->bc, var), run.step_times, run.stream_times, o->repeats);
  bench_run_free(&run);
  return rc;
}

/* ------------------------------------------------------------------ step output */

static const char* backend_of(adamjit_context* ctx) { return adamjit_backend_name(adamjit_context_backend(ctx)); }

static void print_device(int argc, char** argv, adamjit_context* ctx, int threads) {
  printf("adamjit");
  for (int i = 0; i < argc; i++) printf(" %s", argv[i]);
  adamjit_backend backend = adamjit_context_backend(ctx);
  char device[256] = "";
  if (adamjit_backend_device_name(backend, 0, device, sizeof device) != ADAMJIT_OK) device[0] = '\0';
  printf("\nbackend %s%s%s%s", adamjit_backend_name(backend), *device ? " (" : "", device, *device ? ")" : "");
  if (backend == ADAMJIT_BACKEND_CPU) printf(", %d thread%s", threads, threads == 1 ? "" : "s");
}

static void print_preamble(int argc, char** argv, adamjit_context* ctx, const bench_options* o, int threads) {
  print_device(argc, argv, ctx, threads);
  printf("; AdamW step, median of %d steps after %d warm-up\n", o->repeats, o->warmup);
  printf("bytes/element: fp32 %d (read p g m v, write p m v); 8bit-bB 16 + 16/B (read+write p, read g,\n"
         "read+write the m and v codes, read+write both fp32 absmax once per block of B)\n",
         FP32_BYTES_PER_ELEMENT);
  if (adamjit_context_backend(ctx) == ADAMJIT_BACKEND_CPU)
    printf("roofline: in-place OpenMP stream over the same param/grad buffers and state arrays shaped like the\n"
           "variant's (fp32 m, v; or uint8 codes and per-block absmax), moving the same bytes\n");
  else
    printf("roofline: a device-to-device copy (adamjit_mem_copy) reading and writing as many bytes as the step\n"
           "moves, timed alternately with the steps\n");
  printf("vs fp32: fp32 step time / this variant's step time for the same case (> 1: faster than fp32)\n");
  const int gpu = adamjit_context_backend(ctx) != ADAMJIT_BACKEND_CPU;
  if (gpu) printf("vs cpu: the CPU backend's step time for the same case and variant, measured in this run / this one's\n");
  printf("\n%-9s %-10s %10s %8s %10s %8s %7s %14s %6s %8s%s\n", "case", "variant", "elements", "tensors", "ms/step",
         "GB/s", "B/elem", "roofline GB/s", "ratio", "vs fp32", gpu ? "  vs cpu" : "");
  fflush(stdout);
}

static int64_t case_elements(const bench_case* bc) { return (int64_t)bc->tensors * bc->elements_per_tensor; }

static void print_row(const bench_case* bc, const bench_variant* v, const bench_result* r, double fp32_seconds,
                      double cpu_seconds) {
  char versus[16] = "-", cpu[16] = "";
  if (fp32_seconds > 0 && v->bits != 32) snprintf(versus, sizeof versus, "%.2f", fp32_seconds / r->seconds);
  if (cpu_seconds > 0) snprintf(cpu, sizeof cpu, " %7.2f", cpu_seconds / r->seconds);
  printf("%-9s %-10s %10lld %8d %10.3f %8.2f %7.3f %14.2f %6.2f %8s%s\n", bc->name, v->name,
         (long long)case_elements(bc), bc->tensors, 1e3 * r->seconds, r->gbps, r->bytes / (double)case_elements(bc),
         r->roofline_gbps, r->ratio, versus, cpu);
  fflush(stdout);
}

/* The common keys of every JSON line; the caller adds its own and the closing brace. */
static void print_json_head(adamjit_context* ctx, const char* variant, const bench_case* bc, const bench_options* o,
                            int threads, const bench_result* r) {
  printf("{\"backend\":\"%s\",\"variant\":\"%s\",\"case\":\"%s\",\"elements\":%lld,\"tensors\":%d,"
         "\"threads\":%d,\"repeats\":%d,\"warmup\":%d,\"seconds_per_step\":%.9g,\"gbps\":%.4f,"
         "\"roofline_gbps\":%.4f,\"ratio\":%.4f,\"bytes_per_element\":%.6g",
         backend_of(ctx), variant, bc->name, (long long)case_elements(bc), bc->tensors, threads, o->repeats, o->warmup,
         r->seconds, r->gbps, r->roofline_gbps, r->ratio, r->bytes / (double)case_elements(bc));
}

/* On a GPU backend each case and variant also runs on a CPU context (own buffers, same
 * sizes) in the same run: "vs cpu" = CPU step time / this backend's step time. */
static int cpu_reference(const bench_case* bc, const bench_variant* v, const bench_options* o, int threads,
                         double* seconds) {
  adamjit_context_desc desc;
  adamjit_context_desc_init_default(&desc);
  desc.backend = ADAMJIT_BACKEND_CPU;
  if (o->threads > 0) desc.num_threads = o->threads;
  adamjit_context* cpu = NULL;
  adamjit_status st = adamjit_context_create(&desc, &cpu);
  if (st != ADAMJIT_OK) return cli_library_error(NULL, st, "opening the cpu backend for the comparison");
  bench_buffers buf = {.ctx = cpu, .bc = bc};
  bench_result r = {0};
  int rc = bench_buffers_setup(&buf);
  if (rc == CLI_EXIT_OK) rc = bench_variant_run(&buf, v, o, threads, &r);
  bench_buffers_free(&buf);
  adamjit_context_destroy(cpu);
  *seconds = r.seconds;
  return rc;
}

static int run_steps(int argc, char** argv, adamjit_context* ctx, const bench_options* o, int threads) {
  if (!o->json) print_preamble(argc, argv, ctx, o, threads);
  const int gpu = adamjit_context_backend(ctx) != ADAMJIT_BACKEND_CPU;
  int rc = CLI_EXIT_OK;
  for (int c = 0; c < o->case_count && rc == CLI_EXIT_OK; c++) {
    bench_buffers buf = {.ctx = ctx, .bc = o->cases[c]};
    rc = bench_buffers_setup(&buf);
    /* fp32 first where asked for, so every 8-bit row can be compared with it. */
    int order[MAX_VARIANTS], n = 0;
    for (int i = 0; i < o->variant_count; i++)
      if (o->variants[i].bits == 32) order[n++] = i;
    for (int i = 0; i < o->variant_count; i++)
      if (o->variants[i].bits != 32) order[n++] = i;
    double fp32_seconds = 0.0;
    for (int k = 0; k < n && rc == CLI_EXIT_OK; k++) {
      const bench_variant* v = &o->variants[order[k]];
      bench_result r = {0};
      rc = bench_variant_run(&buf, v, o, threads, &r);
      double cpu_seconds = 0.0;
      if (rc == CLI_EXIT_OK && gpu) rc = cpu_reference(buf.bc, v, o, threads, &cpu_seconds);
      if (rc != CLI_EXIT_OK) break;
      if (v->bits == 32) fp32_seconds = r.seconds;
      if (o->json) {
        print_json_head(ctx, v->name, buf.bc, o, threads, &r);
        printf(",\"block_size\":%d,\"speedup_vs_fp32\":%.4f", v->bits == 8 ? v->block : 0,
               fp32_seconds > 0 && v->bits != 32 ? fp32_seconds / r.seconds : 0.0);
        if (gpu) printf(",\"cpu_seconds_per_step\":%.9g,\"speedup_vs_cpu\":%.4f", cpu_seconds, cpu_seconds / r.seconds);
        printf("}\n");
        fflush(stdout);
      } else {
        print_row(buf.bc, v, &r, fp32_seconds, gpu ? cpu_seconds : 0.0);
      }
    }
    bench_buffers_free(&buf);
  }
  return rc;
}

/* ------------------------------------------------------------------ tuned vs default */

/* `--tuned`: each case and variant stepped on two contexts of the same device, one taking
 * launch parameters from overrides and tuning databases (use_tuning = 1) and one with the
 * library's defaults only (use_tuning = 0), each with its own copy of the same data. Their
 * steps alternate, so both see the same machine noise; the ratio is default / tuned. Both
 * contexts share the cache directory, so the kernels of the launches they have in common
 * are compiled once. */

typedef struct tuned_side {
  bench_buffers buf;
  bench_run run;
  adamjit_tuning_result launch; /* tensor 0's update kernel as its steps launch it */
} tuned_side;

static int tuned_side_setup(tuned_side* t, const bench_variant* v, const bench_options* o) {
  int rc = bench_run_setup(&t->run, o);
  if (rc != CLI_EXIT_OK) return rc;
  memset(&t->launch, 0, sizeof t->launch);
  t->launch.struct_size = sizeof t->launch;
  adamjit_status st = adamjit_optimizer_tensor_tuning(t->run.opt, 0, &t->launch);
  if (st != ADAMJIT_OK)
    return cli_library_error(t->buf.ctx, st, "case %s, %s: launch parameters", t->buf.bc->name, v->name);
  return CLI_EXIT_OK;
}

static int tuned_variant_run(tuned_side* side, const bench_variant* v, const bench_options* o, double seconds[2]) {
  for (int k = 0; k < 2; k++) side[k].run = (bench_run){.buf = &side[k].buf, .var = v};
  int rc = CLI_EXIT_OK;
  for (int k = 0; k < 2 && rc == CLI_EXIT_OK; k++) rc = tuned_side_setup(&side[k], v, o);
  for (int it = 0; it < o->warmup + o->repeats && rc == CLI_EXIT_OK; it++) {
    for (int j = 0; j < 2; j++) {
      const int k = (it + j) % 2; /* who goes first alternates: neither inherits the other's caches every time */
      adamjit_context* ctx = side[k].buf.ctx;
      double t0 = cli_now();
      adamjit_status st = adamjit_optimizer_step(side[k].run.opt, NULL);
      if (st == ADAMJIT_OK) st = adamjit_context_synchronize(ctx);
      double t1 = cli_now();
      if (st != ADAMJIT_OK) {
        rc = cli_library_error(ctx, st, "case %s, %s (%s launch parameters): optimizer step", side[k].buf.bc->name,
                               v->name, k == 0 ? "tuned" : "default");
        break;
      }
      if (it >= o->warmup) side[k].run.step_times[it - o->warmup] = t1 - t0;
    }
  }
  for (int k = 0; k < 2; k++) {
    if (rc == CLI_EXIT_OK) seconds[k] = cli_median(side[k].run.step_times, o->repeats);
    bench_run_free(&side[k].run);
    memset(&side[k].run, 0, sizeof side[k].run);
  }
  return rc;
}

static void print_tuned_preamble(int argc, char** argv, adamjit_context* tuned, const bench_options* o) {
  print_device(argc, argv, tuned, 0);
  printf("; AdamW step, median of %d steps after %d warm-up\n", o->repeats, o->warmup);
  char db[4096] = "";
  if (adamjit_tuning_db_path(tuned, db, sizeof db) != ADAMJIT_OK)
    snprintf(db, sizeof db, "(none: the disk cache is off)");
  printf("tuned: launch parameters from overrides and tuning databases (the user's, %s, the built-in one);\n"
         "default: the library's per-dialect defaults. The two contexts step alternately on the same device.\n"
         "speedup: default ms / tuned ms (> 1: the tuned parameters are faster); level: where the tuned ones\n"
         "came from\n\n",
         db);
  printf("%-9s %-10s %10s %7s %11s %9s %7s %-12s %-20s %-20s %s\n", "case", "variant", "elements", "tensors",
         "default ms", "tuned ms", "speedup", "level", "tuned launch", "default launch", "kernel (tensor 0)");
  fflush(stdout);
}

static int open_tuning_context(const bench_options* o, int use_tuning, adamjit_context** out) {
  adamjit_context_desc desc;
  adamjit_context_desc_init_default(&desc);
  desc.backend = o->backend;
  desc.cache_dir = o->cache_dir;
  desc.tuning_db = o->tuning_db;
  desc.use_tuning = use_tuning;
  desc.log_fn = cli_log_stderr; /* a tuning database that is ignored says why */
  adamjit_status st = adamjit_context_create(&desc, out);
  if (st != ADAMJIT_OK) return cli_library_error(NULL, st, "opening the %s backend", adamjit_backend_name(o->backend));
  return CLI_EXIT_OK;
}

static int run_tuned(int argc, char** argv, const bench_options* o) {
  adamjit_context* ctx[2] = {NULL, NULL}; /* tuned, default */
  int rc = open_tuning_context(o, 1, &ctx[0]);
  if (rc == CLI_EXIT_OK && adamjit_context_backend(ctx[0]) == ADAMJIT_BACKEND_CPU)
    rc = cli_error("bench --tuned: no GPU backend is available here, and the cpu backend launches no run-time "
                   "kernels, so there are no launch parameters to compare (adamjit info lists the backends)");
  if (rc == CLI_EXIT_OK) {
    /* The same backend and device as the first, whatever AUTO and $ADAMJIT_OPENCL_DEVICE chose. */
    bench_options same = *o;
    same.backend = adamjit_context_backend(ctx[0]);
    rc = open_tuning_context(&same, 0, &ctx[1]);
  }
  if (rc == CLI_EXIT_OK && !o->json) print_tuned_preamble(argc, argv, ctx[0], o);
  for (int c = 0; c < o->case_count && rc == CLI_EXIT_OK; c++) {
    tuned_side side[2];
    memset(side, 0, sizeof side);
    for (int k = 0; k < 2; k++) {
      side[k].buf.ctx = ctx[k];
      side[k].buf.bc = o->cases[c];
      if (rc == CLI_EXIT_OK) rc = bench_buffers_setup(&side[k].buf);
    }
    for (int i = 0; i < o->variant_count && rc == CLI_EXIT_OK; i++) {
      const bench_variant* v = &o->variants[i];
      double seconds[2] = {0, 0};
      rc = tuned_variant_run(side, v, o, seconds);
      if (rc != CLI_EXIT_OK) break;
      const bench_case* bc = o->cases[c];
      const adamjit_tuning_result* tr = &side[0].launch;
      const char* level = adamjit_tuning_level_name(tr->level);
      if (o->json) {
        printf("{\"backend\":\"%s\",\"variant\":\"%s\",\"case\":\"%s\",\"elements\":%lld,\"tensors\":%d,"
               "\"repeats\":%d,\"warmup\":%d,\"default_seconds_per_step\":%.9g,\"tuned_seconds_per_step\":%.9g,"
               "\"tuned_speedup\":%.4f,\"tuned_key\":\"%s\",\"tuned_level\":\"%s\",\"default_key\":\"%s\"}\n",
               backend_of(ctx[0]), v->name, bc->name, (long long)case_elements(bc), bc->tensors, o->repeats,
               o->warmup, seconds[1], seconds[0], seconds[1] / seconds[0], tr->key, level ? level : "?",
               side[1].launch.key);
      } else {
        char kernel[ADAMJIT_KERNEL_KEY_MAX];
        snprintf(kernel, sizeof kernel, "%s", tr->key);
        char* cut = strstr(kernel, "/wg=");
        if (cut) *cut = '\0';
        printf("%-9s %-10s %10lld %7d %11.3f %9.3f %7.2f %-12s %-20s %-20s %s\n", bc->name, v->name,
               (long long)case_elements(bc), bc->tensors, 1e3 * seconds[1], 1e3 * seconds[0], seconds[1] / seconds[0],
               level ? level : "?", cli_launch_tokens(tr->key), cli_launch_tokens(side[1].launch.key), kernel);
      }
      fflush(stdout);
    }
    for (int k = 0; k < 2; k++) bench_buffers_free(&side[k].buf);
  }
  adamjit_context_destroy(ctx[1]);
  adamjit_context_destroy(ctx[0]);
  return rc;
}

/* ------------------------------------------------------------------ quantization */

typedef struct quant_variant {
  const char* name;
  int search; /* adamjit_context_desc.quant_search */
  int dequantize;
} quant_variant;

static const quant_variant quant_variants[] = {
    {"quantize-table", ADAMJIT_QUANT_SEARCH_TABLE, 0},
    {"quantize-binary", ADAMJIT_QUANT_SEARCH_BINARY, 0},
    {"dequantize", ADAMJIT_QUANT_SEARCH_AUTO, 1},
};
enum { QUANT_VARIANTS = sizeof quant_variants / sizeof quant_variants[0] };

/* Per tensor: x (fp32 in), codes, absmax, out (fp32, dequantize only). */
typedef struct quant_tensor {
  adamjit_mem x, codes, absmax, out;
} quant_tensor;

/* Bytes per call over the case: quantize reads 4 and writes 1 per element plus one fp32
 * absmax per block; dequantize reads 1 and writes 4 per element plus one absmax read. */
static double quant_bytes(const bench_case* bc) {
  int64_t n = bc->elements_per_tensor;
  return (5.0 * (double)n + 4.0 * (double)ceil_div(n, QUANT_BLOCK)) * bc->tensors;
}

/* One thread's share of one tensor's blocks [blo, bhi) for the quantization roofline. */
BENCH_CLONES static void quant_stream_range(const quant_tensor* t, int64_t n, int64_t blo, int64_t bhi,
                                            int dequantize) {
  uint8_t* restrict codes = (uint8_t*)t->codes;
  float* restrict absmax = (float*)t->absmax;
  for (int64_t bl = blo; bl < bhi; bl++) {
    const int64_t lo = bl * QUANT_BLOCK, hi = lo + QUANT_BLOCK < n ? lo + QUANT_BLOCK : n;
    if (dequantize) {
      const float s = absmax[bl];
      float* restrict out = (float*)t->out;
#pragma omp simd
      for (int64_t j = lo; j < hi; j++) out[j] = (float)codes[j] * s;
    } else {
      const float* restrict x = (const float*)t->x;
#pragma omp simd
      for (int64_t j = lo; j < hi; j++) codes[j] = (uint8_t)(int32_t)(x[j] * 100.0f + 128.0f);
      absmax[bl] = x[lo];
    }
  }
}

/* The roofline of the calls: the same bytes over the same buffers, one OpenMP pass with a
 * trivial conversion (float -> byte and one float per block; byte -> float times the
 * block's float), statically split by blocks end to end as the step stream. */
static void quant_stream(const quant_tensor* qt, int count, int64_t n, int threads, int dequantize) {
  const int64_t per = ceil_div(n, QUANT_BLOCK), total = per * count;
  (void)threads;
#pragma omp parallel num_threads(threads)
  {
    int id = 0, nth = 1;
#ifdef _OPENMP
    id = omp_get_thread_num();
    nth = omp_get_num_threads();
#endif
    const int64_t begin = total * id / nth, end = total * (id + 1) / nth;
    for (int64_t u = begin; u < end;) {
      const int64_t i = u / per, stop = (i + 1) * per < end ? (i + 1) * per : end;
      quant_stream_range(&qt[i], n, u - i * per, stop - i * per, dequantize);
      u = stop;
    }
  }
}

static void quant_free(adamjit_context* ctx, quant_tensor* qt, int count) {
  for (int i = 0; qt && i < count; i++) {
    adamjit_mem_free(ctx, qt[i].x);
    adamjit_mem_free(ctx, qt[i].codes);
    adamjit_mem_free(ctx, qt[i].absmax);
    adamjit_mem_free(ctx, qt[i].out);
  }
  free(qt);
  adamjit_context_destroy(ctx);
}

/* One variant of one case in its own context (the search mode is a context setting). */
static int quant_run(const bench_case* bc, const quant_variant* qv, const bench_options* o, int threads,
                     bench_result* res) {
  adamjit_context_desc desc;
  adamjit_context_desc_init_default(&desc);
  desc.backend = o->backend;
  desc.cache_dir = o->cache_dir;
  if (o->threads > 0) desc.num_threads = o->threads;
  desc.quant_search = qv->search;
  adamjit_context* ctx = NULL;
  adamjit_status st = adamjit_context_create(&desc, &ctx);
  if (st != ADAMJIT_OK) return cli_library_error(NULL, st, "opening the %s backend", adamjit_backend_name(o->backend));
  const int64_t n = bc->elements_per_tensor;
  quant_tensor* qt = calloc((size_t)bc->tensors, sizeof *qt);
  double* times = calloc((size_t)o->repeats, sizeof(double));
  double* stream_times = calloc((size_t)o->repeats, sizeof(double));
  float* chunk = malloc(FILL_CHUNK * sizeof(float));
  int rc = CLI_EXIT_OK;
  if (!qt || !times || !stream_times || !chunk) rc = cli_error("out of memory");
  adamjit_quant_desc qd;
  adamjit_quant_desc_init_default(&qd);
  qd.numel = n;
  qd.block_size = QUANT_BLOCK;
  rng r = rng_stream(1, 5);
  for (int i = 0; rc == CLI_EXIT_OK && i < bc->tensors; i++) {
    st = adamjit_mem_alloc(ctx, (size_t)n * sizeof(float), &qt[i].x);
    if (st == ADAMJIT_OK) st = adamjit_mem_alloc(ctx, (size_t)n, &qt[i].codes);
    if (st == ADAMJIT_OK) st = adamjit_mem_alloc(ctx, (size_t)ceil_div(n, QUANT_BLOCK) * sizeof(float), &qt[i].absmax);
    if (st == ADAMJIT_OK && qv->dequantize) st = adamjit_mem_alloc(ctx, (size_t)n * sizeof(float), &qt[i].out);
    if (st == ADAMJIT_OK) st = fill_random(ctx, qt[i].x, n, 1.0f, &r, chunk);
    /* Real codes to decode (and every page of the buffers touched before timing). */
    if (st == ADAMJIT_OK) st = adamjit_quantize_blockwise(ctx, &qd, qt[i].x, qt[i].codes, qt[i].absmax);
    if (st != ADAMJIT_OK) rc = cli_library_error(ctx, st, "setting up %s, case %s", qv->name, bc->name);
  }
  const int host = adamjit_context_backend(ctx) == ADAMJIT_BACKEND_CPU;
  for (int it = 0; rc == CLI_EXIT_OK && it < o->warmup + o->repeats; it++) {
    double t0 = cli_now();
    for (int i = 0; i < bc->tensors && st == ADAMJIT_OK; i++)
      st = qv->dequantize ? adamjit_dequantize_blockwise(ctx, &qd, qt[i].codes, qt[i].absmax, qt[i].out)
                          : adamjit_quantize_blockwise(ctx, &qd, qt[i].x, qt[i].codes, qt[i].absmax);
    if (st == ADAMJIT_OK) st = adamjit_context_synchronize(ctx);
    double t1 = cli_now();
    if (st != ADAMJIT_OK) {
      rc = cli_library_error(ctx, st, "%s, case %s", qv->name, bc->name);
      break;
    }
    if (host) quant_stream(qt, bc->tensors, n, threads, qv->dequantize);
    double t2 = cli_now();
    if (it >= o->warmup) {
      times[it - o->warmup] = t1 - t0;
      stream_times[it - o->warmup] = t2 - t1;
    }
  }
  if (rc == CLI_EXIT_OK) fill_result(res, quant_bytes(bc), times, host ? stream_times : NULL, o->repeats);
  free(chunk);
  free(times);
  free(stream_times);
  quant_free(ctx, qt, qt ? bc->tensors : 0);
  return rc;
}

static void print_quant_preamble(int argc, char** argv, adamjit_context* ctx, const bench_options* o, int threads) {
  print_device(argc, argv, ctx, threads);
  printf("; blockwise quantization of fp32 values uniform in [-1, 1], block %d, signed map;\n"
         "median of %d calls after %d warm-up (one call per tensor)\n",
         QUANT_BLOCK, o->repeats, o->warmup);
  printf("bytes/element: quantize 4 read + 1 written + 4/%d absmax written; dequantize 1 read + 4 written +\n"
         "4/%d absmax read; quantize-table and quantize-binary differ only in the nearest-code search\n",
         QUANT_BLOCK, QUANT_BLOCK);
  if (adamjit_context_backend(ctx) == ADAMJIT_BACKEND_CPU)
    printf("roofline: OpenMP stream over the same buffers moving the same bytes (a plain float<->byte conversion)\n\n");
  else
    printf("roofline: not available on the %s backend yet (shown as 0)\n\n", backend_of(ctx));
  printf("%-9s %-16s %10s %8s %10s %8s %14s %6s\n", "case", "variant", "elements", "tensors", "ms/call", "GB/s",
         "roofline GB/s", "ratio");
  fflush(stdout);
}

static int run_quant(int argc, char** argv, adamjit_context* ctx, const bench_options* o, int threads) {
  if (!o->json) print_quant_preamble(argc, argv, ctx, o, threads);
  int rc = CLI_EXIT_OK;
  for (int c = 0; c < o->case_count && rc == CLI_EXIT_OK; c++) {
    const bench_case* bc = o->cases[c];
    bench_result r[QUANT_VARIANTS];
    memset(r, 0, sizeof r);
    for (int k = 0; k < QUANT_VARIANTS && rc == CLI_EXIT_OK; k++) {
      rc = quant_run(bc, &quant_variants[k], o, threads, &r[k]);
      if (rc != CLI_EXIT_OK) break;
      if (o->json) {
        print_json_head(ctx, quant_variants[k].name, bc, o, threads, &r[k]);
        printf(",\"block_size\":%d}\n", QUANT_BLOCK);
      } else {
        printf("%-9s %-16s %10lld %8d %10.3f %8.2f %14.2f %6.2f\n", bc->name, quant_variants[k].name,
               (long long)case_elements(bc), bc->tensors, 1e3 * r[k].seconds, r[k].gbps, r[k].roofline_gbps,
               r[k].ratio);
      }
      fflush(stdout);
    }
    if (rc == CLI_EXIT_OK && !o->json)
      printf("%-9s table search: %.2fx the speed of the binary search\n", bc->name, r[1].seconds / r[0].seconds);
  }
  return rc;
}

/* ------------------------------------------------------------------ command */

int cmd_bench(int argc, char** argv) {
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], "--jit") == 0) return bench_jit(argc, argv);
  bench_options o;
  int rc = parse_options(argc, argv, &o);
  if (rc < 0) return CLI_EXIT_OK; /* --help */
  if (rc != CLI_EXIT_OK) return rc;
  if (o.tuned) return run_tuned(argc, argv, &o);

  adamjit_context_desc desc;
  adamjit_context_desc_init_default(&desc);
  desc.backend = o.backend;
  desc.cache_dir = o.cache_dir;
  if (o.threads > 0) desc.num_threads = o.threads;
  adamjit_context* ctx = NULL;
  adamjit_status st = adamjit_context_create(&desc, &ctx);
  if (st != ADAMJIT_OK) return cli_library_error(NULL, st, "opening the %s backend", adamjit_backend_name(o.backend));
  /* The library's default (-1) is every OpenMP thread; the roofline uses the same count. */
  int threads = o.threads > 0 ? o.threads : cli_max_threads();
  /* --quant opens a context per search mode; this one names the backend and device. */
  if (o.quant && o.backend == ADAMJIT_BACKEND_AUTO) o.backend = adamjit_context_backend(ctx);
  rc = o.quant ? run_quant(argc, argv, ctx, &o, threads) : run_steps(argc, argv, ctx, &o, threads);
  adamjit_context_destroy(ctx);
  return rc;
}
