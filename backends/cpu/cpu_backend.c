/* The CPU backend: plain host memory and OpenMP. It is the embedded default and, written
 * independently of the kernel templates, the oracle the GPU backends are tested against.
 *
 * A step splits every tensor into fixed chunks and runs one parallel loop over all chunks
 * of all tensors, so one large tensor and a thousand small ones both keep every thread
 * busy with contiguous work. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <stdint.h>
#include <sys/mman.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#include "backends/backend.h"
#include "backends/cpu/cpu_kernels.h"

/* 32 Ki elements: 128 KiB per fp32 array, large enough to amortize scheduling and small
 * enough that a thousand 1e4-element tensors still spread over the threads. A multiple of
 * every quantization block size (64..4096), so blocks never straddle chunks. */
#define CPU_CHUNK ((size_t)1 << 15)
/* Below this many elements in a step, waking the thread team costs more than it saves (and
 * on a loaded machine a barrier can wait milliseconds for a descheduled thread). */
#define CPU_PARALLEL_MIN ((size_t)1 << 16)

/* Buffers from this size on are mapped on their own, aligned to and advised for transparent
 * huge pages (Linux), unless the environment has ADAMJIT_CPU_HUGE_PAGES=0. A step streams
 * every array once, and with 4 KiB pages it misses the TLB once per page and array (figures
 * in the README). Where the kernel has huge pages off, the advice does nothing. Builds with
 * AddressSanitizer take every buffer from calloc, which it surrounds with redzones. */
#define CPU_HUGE ((size_t)2 << 20)
#if defined(__SANITIZE_ADDRESS__)
#define CPU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CPU_ASAN 1
#endif
#endif
#if defined(__linux__) && defined(MADV_HUGEPAGE) && !defined(CPU_ASAN)
#define CPU_MAP_HUGE 1
#endif

typedef struct cpu_alloc {
  char* ptr;
  size_t bytes;
  void* map;      /* the whole mapping holding ptr, or NULL: ptr came from calloc */
  size_t map_len;
} cpu_alloc;

/* Zeroed memory for a buffer, huge-page backed where that is possible (see CPU_HUGE). */
static int cpu_alloc_zeroed(cpu_alloc* a, size_t bytes, int huge_pages) {
  *a = (cpu_alloc){NULL, bytes, NULL, 0};
#ifdef CPU_MAP_HUGE
  if (huge_pages && bytes >= CPU_HUGE) {
    size_t len = bytes + CPU_HUGE; /* room to align to a huge page */
    void* m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m != MAP_FAILED) {
      char* p = (char*)(((uintptr_t)m + CPU_HUGE - 1) & ~(uintptr_t)(CPU_HUGE - 1));
      (void)madvise(p, bytes, MADV_HUGEPAGE); /* advice: 4 KiB pages still work without it */
      *a = (cpu_alloc){p, bytes, m, len};
      return 1;
    }
  }
#endif
  a->ptr = calloc(1, bytes); /* zero pages come lazily from the kernel for large sizes */
  return a->ptr != NULL;
}

static void cpu_alloc_release(cpu_alloc* a) {
#ifdef CPU_MAP_HUGE
  if (a->map) {
    munmap(a->map, a->map_len);
    return;
  }
#endif
  free(a->ptr);
}

typedef struct cpu_backend {
  int threads;
  int quant_search; /* ADAMJIT_QUANT_SEARCH_* */
  int huge_pages;   /* large buffers on transparent huge pages (CPU_HUGE) */
  uint64_t last_nonfinite; /* of the last step, for read_nonfinite */
  cpu_alloc* allocs; /* memory from mem_alloc, so reads and writes into it can be bounds-checked */
  size_t n_allocs, cap_allocs;
} cpu_backend;

/* What a parallel pass leaves per chunk for the serial reduction after it. */
typedef struct chunk_partial {
  double sq;          /* clipping: sum of squares of the finite gradient elements */
  uint64_t nonfinite; /* clipping: their count */
  float max[3];       /* 8-bit, block_wise = 0: maxima of |m|, v, vmax */
} chunk_partial;

typedef struct cpu_chunk {
  int item;
  size_t begin, end;
} cpu_chunk;

static cpu_backend* B(adamjit_context* ctx) { return (cpu_backend*)ctx->bdata; }

/* The table search where the map allows it and the context did not ask for binary. */
static int use_table(const cpu_backend* b, const aj_qmap* q) {
  return q->table_ok && b->quant_search != ADAMJIT_QUANT_SEARCH_BINARY;
}

static adamjit_status cpu_probe(char* why, size_t why_size) { return ADAMJIT_OK; }

static adamjit_status cpu_device_count(int* count, char* why, size_t why_size) {
  *count = 1;
  return ADAMJIT_OK;
}

static int max_threads(void) {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

static adamjit_status cpu_device_name(int index, char* name, size_t size, char* why, size_t why_size) {
  if (index != 0) {
    snprintf(why, why_size, "device index %d out of range (the CPU backend has one device)", index);
    return ADAMJIT_ERR_INVALID_INDEX;
  }
  char model[256] = "unknown processor";
  FILE* f = fopen("/proc/cpuinfo", "r");
  if (f) {
    char line[512];
    while (fgets(line, sizeof line, f)) {
      char* colon = strchr(line, ':');
      if (strncmp(line, "model name", 10) == 0 && colon) {
        colon += 1 + (colon[1] == ' ');
        colon[strcspn(colon, "\n")] = '\0';
        snprintf(model, sizeof model, "%s", colon);
        break;
      }
    }
    fclose(f);
  }
  snprintf(name, size, "%s (%d OpenMP threads)", model, max_threads());
  return ADAMJIT_OK;
}

static adamjit_status cpu_init(adamjit_context* ctx, const adamjit_context_desc* desc) {
  if (desc->device_index != 0)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_INDEX, "cpu backend: device_index %d out of range (one device)",
                   desc->device_index);
  cpu_backend* b = calloc(1, sizeof *b);
  if (!b) return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "cpu backend: out of host memory");
  b->threads = desc->num_threads > 0 ? desc->num_threads : max_threads();
  b->quant_search = desc->quant_search;
  const char* huge = getenv("ADAMJIT_CPU_HUGE_PAGES");
  b->huge_pages = !(huge && strcmp(huge, "0") == 0);
  ctx->bdata = b;
  return ADAMJIT_OK;
}

static void cpu_shutdown(adamjit_context* ctx) {
  cpu_backend* b = B(ctx);
  if (!b) return;
  if (b->n_allocs) {
    /* Memory from adamjit_mem_alloc the caller never freed, or optimizer state of an
     * optimizer never destroyed: freed now, but worth knowing about. */
    size_t bytes = 0;
    for (size_t i = 0; i < b->n_allocs; i++) bytes += b->allocs[i].bytes;
    aj_log(ctx, ADAMJIT_LOG_WARN, "cpu backend: %zu buffers (%zu bytes) were still allocated when the context was "
           "destroyed; they are freed now", b->n_allocs, bytes);
  }
  for (size_t i = 0; i < b->n_allocs; i++) cpu_alloc_release(&b->allocs[i]);
  free(b->allocs);
  free(b);
  ctx->bdata = NULL;
}

static adamjit_status cpu_mem_alloc(adamjit_context* ctx, size_t bytes, int paged, adamjit_mem* out,
                                    adamjit_memory_kind* kind) {
  cpu_backend* b = B(ctx);
  if (b->n_allocs == b->cap_allocs) {
    size_t cap = b->cap_allocs ? 2 * b->cap_allocs : 64;
    cpu_alloc* a = realloc(b->allocs, cap * sizeof *a);
    if (!a) return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "cpu backend: out of host memory");
    b->allocs = a;
    b->cap_allocs = cap;
  }
  cpu_alloc* a = &b->allocs[b->n_allocs];
  if (!cpu_alloc_zeroed(a, bytes, b->huge_pages))
    return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "cpu backend: cannot allocate %zu bytes", bytes);
  b->n_allocs++;
  *out = a->ptr;
  *kind = ADAMJIT_MEMORY_HOST; /* paging is a no-op: the state is host memory already */
  return ADAMJIT_OK;
}

/* The allocation containing p, or NULL for memory the caller owns. */
static cpu_alloc* find_alloc(cpu_backend* b, const char* p) {
  for (size_t i = b->n_allocs; i-- > 0;) {
    cpu_alloc* a = &b->allocs[i];
    if (p >= a->ptr && p < a->ptr + a->bytes) return a;
  }
  return NULL;
}

static void cpu_mem_free(adamjit_context* ctx, adamjit_mem mem) {
  cpu_backend* b = B(ctx);
  cpu_alloc* a = find_alloc(b, mem);
  if (!a || a->ptr != (char*)mem) return; /* not ours: never free a caller's memory */
  cpu_alloc_release(a);
  *a = b->allocs[--b->n_allocs];
}

static adamjit_status cpu_mem_check(adamjit_context* ctx, adamjit_mem mem, size_t bytes, const char* what) {
  const cpu_alloc* a = find_alloc(B(ctx), mem);
  if (!a) return ADAMJIT_OK; /* caller-owned host memory: its size cannot be known here */
  size_t room = a->bytes - (size_t)((char*)mem - a->ptr);
  if (bytes > room)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_SIZE, "%s: %zu bytes needed but the buffer holds %zu", what, bytes, room);
  return ADAMJIT_OK;
}

static adamjit_status cpu_mem_write(adamjit_context* ctx, adamjit_mem dst, size_t offset, const void* src,
                                    size_t bytes) {
  memcpy((char*)dst + offset, src, bytes);
  return ADAMJIT_OK;
}

static adamjit_status cpu_mem_read(adamjit_context* ctx, void* dst, adamjit_mem src, size_t offset, size_t bytes) {
  memcpy(dst, (const char*)src + offset, bytes);
  return ADAMJIT_OK;
}

static adamjit_status cpu_mem_copy(adamjit_context* ctx, adamjit_mem dst, size_t dst_offset, adamjit_mem src,
                                   size_t src_offset, size_t bytes) {
  (void)ctx;
  memmove((char*)dst + dst_offset, (const char*)src + src_offset, bytes); /* two views of one buffer may overlap */
  return ADAMJIT_OK;
}

static adamjit_status cpu_synchronize(adamjit_context* ctx) { return ADAMJIT_OK; }

/* One item's kernel arguments: the 32-bit or the 8-bit form. */
typedef struct cpu_job {
  int bits;
  aj_cpu_adamw32_args a32;
  aj_cpu_adamw8_args a8;
} cpu_job;

static void fill_job(const cpu_backend* b, const aj_step_item* it, float grad_scale, cpu_job* job) {
  const aj_tensor* t = it->tensor;
  const adamjit_hparams* hp = &it->hp;
  aj_step_scalars sc;
  aj_step_scalars_compute(hp, t->step, &sc);
  job->bits = t->state_bits;
  if (t->state_bits == 32) {
    job->a32 = (aj_cpu_adamw32_args){
        .param = t->param, .grad = t->grad, .param_dtype = t->param_dtype, .grad_dtype = t->grad_dtype,
        .m = t->m, .v = t->v, .vmax = hp->amsgrad ? t->vmax : NULL, .beta1 = sc.beta1, .beta2 = sc.beta2,
        .eps = sc.eps, .decay = sc.decay, .step_size = sc.step_size, .inv_sqrt_c2 = sc.inv_sqrt_c2,
        .grad_scale = grad_scale};
  } else {
    job->a8 = (aj_cpu_adamw8_args){
        .param = t->param, .grad = t->grad, .param_dtype = t->param_dtype, .grad_dtype = t->grad_dtype,
        .c1 = t->m, .c2 = t->v, .c3 = hp->amsgrad ? t->vmax : NULL, .absmax1 = t->absmax1, .absmax2 = t->absmax2,
        .absmax3 = t->absmax3, .q1 = it->qmap1, .q2 = it->qmap2, .block_size = t->block_size,
        .block_wise = t->block_wise, .use_table = use_table(b, it->qmap1) && use_table(b, it->qmap2),
        .beta1 = sc.beta1, .beta2 = sc.beta2, .eps = sc.eps, .decay = sc.decay, .step_size = sc.step_size,
        .inv_sqrt_c2 = sc.inv_sqrt_c2, .grad_scale = grad_scale};
  }
}

static size_t count_chunks(const aj_step_item* items, int n, size_t* elements) {
  size_t total = 0;
  *elements = 0;
  for (int i = 0; i < n; i++) {
    total += ((size_t)items[i].tensor->numel + CPU_CHUNK - 1) / CPU_CHUNK;
    *elements += (size_t)items[i].tensor->numel;
  }
  return total;
}

static void fill_chunks(const aj_step_item* items, int n, cpu_chunk* chunks) {
  size_t c = 0;
  for (int i = 0; i < n; i++) {
    size_t numel = (size_t)items[i].tensor->numel;
    for (size_t b = 0; b < numel; b += CPU_CHUNK)
      chunks[c++] = (cpu_chunk){i, b, b + CPU_CHUNK < numel ? b + CPU_CHUNK : numel};
  }
}

/* Percentile clipping: per-chunk partial sums in parallel, then each tensor's sum in chunk
 * order (deterministic), then the scale from its history. */
static void clip_scales(cpu_backend* b, const aj_step_item* items, int n, const cpu_chunk* chunks, size_t n_chunks,
                        int parallel, chunk_partial* partial, float* scales) {
  long long nc = (long long)n_chunks;
#pragma omp parallel for schedule(static) num_threads(b->threads) if (parallel)
  for (long long c = 0; c < nc; c++) {
    const aj_tensor* t = items[chunks[c].item].tensor;
    partial[c].sq = 0.0;
    partial[c].nonfinite = 0;
    if (t->percentile < 100)
      partial[c].sq = aj_cpu_grad_sumsq(t->grad, t->grad_dtype, chunks[c].begin, chunks[c].end, &partial[c].nonfinite);
  }
  size_t c = 0;
  for (int i = 0; i < n; i++) {
    aj_tensor* t = items[i].tensor;
    double sq = 0.0;
    uint64_t bad = 0;
    for (; c < n_chunks && chunks[c].item == i; c++) {
      sq += partial[c].sq;
      bad += partial[c].nonfinite;
    }
    scales[i] = t->percentile < 100 ? aj_clip_scale((float*)t->gnorm, t->step, t->percentile, (float)sq, bad != 0) : 1.0f;
  }
}

static int whole_tensor_absmax(const cpu_job* job) { return job->bits == 8 && !job->a8.block_wise; }

/* Pass one of 8-bit tensors with block_wise = 0: the tensor's new absmax values. */
static void tensor_absmax(cpu_backend* b, int n, const cpu_chunk* chunks, size_t n_chunks, int parallel,
                          chunk_partial* partial, cpu_job* jobs) {
  long long nc = (long long)n_chunks;
#pragma omp parallel for schedule(static) num_threads(b->threads) if (parallel)
  for (long long c = 0; c < nc; c++) {
    const cpu_job* job = &jobs[chunks[c].item];
    if (whole_tensor_absmax(job)) aj_cpu_adamw8_absmax(&job->a8, chunks[c].begin, chunks[c].end, partial[c].max);
  }
  size_t c = 0;
  for (int i = 0; i < n; i++) {
    float mx[3] = {0.0f, 0.0f, 0.0f};
    for (; c < n_chunks && chunks[c].item == i; c++)
      for (int k = 0; k < 3; k++) mx[k] = partial[c].max[k] > mx[k] ? partial[c].max[k] : mx[k];
    if (whole_tensor_absmax(&jobs[i])) memcpy(jobs[i].a8.new_absmax, mx, sizeof mx);
  }
}

static adamjit_status cpu_step(adamjit_context* ctx, aj_step_item* items, int n, uint64_t* nonfinite) {
  cpu_backend* b = B(ctx);
  size_t elements;
  size_t n_chunks = count_chunks(items, n, &elements);
  int parallel = elements >= CPU_PARALLEL_MIN;
  cpu_chunk* chunks = malloc(n_chunks * sizeof *chunks);
  cpu_job* jobs = malloc((size_t)n * sizeof *jobs);
  float* scales = malloc((size_t)n * sizeof *scales);
  chunk_partial* partial = malloc(n_chunks * sizeof *partial);
  if (!chunks || !jobs || !scales || !partial) {
    free(chunks);
    free(jobs);
    free(scales);
    free(partial);
    return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "cpu backend: out of host memory for the step plan");
  }
  fill_chunks(items, n, chunks);
  int clipping = 0, whole = 0;
  for (int i = 0; i < n; i++) clipping |= items[i].tensor->percentile < 100;
  if (clipping) {
    clip_scales(b, items, n, chunks, n_chunks, parallel, partial, scales);
  } else {
    for (int i = 0; i < n; i++) scales[i] = 1.0f;
  }
  for (int i = 0; i < n; i++) {
    fill_job(b, &items[i], scales[i], &jobs[i]);
    whole |= whole_tensor_absmax(&jobs[i]);
  }
  if (whole) tensor_absmax(b, n, chunks, n_chunks, parallel, partial, jobs);

  uint64_t bad = 0;
  long long nc = (long long)n_chunks;
#pragma omp parallel for schedule(static) num_threads(b->threads) reduction(+ : bad) if (parallel)
  for (long long c = 0; c < nc; c++) {
    const cpu_job* job = &jobs[chunks[c].item];
    bad += job->bits == 32 ? aj_cpu_adamw32(&job->a32, chunks[c].begin, chunks[c].end)
                           : aj_cpu_adamw8(&job->a8, chunks[c].begin, chunks[c].end);
  }
  /* block_wise = 0 quantized against the new absmax; it replaces the old only now, since
   * every chunk dequantized with the old one. */
  for (int i = 0; i < n; i++) {
    if (!whole_tensor_absmax(&jobs[i])) continue;
    aj_cpu_adamw8_args* a = &jobs[i].a8;
    a->absmax1[0] = a->new_absmax[0];
    a->absmax2[0] = a->new_absmax[1];
    if (a->c3) a->absmax3[0] = a->new_absmax[2];
  }

  b->last_nonfinite = bad;
  if (nonfinite) *nonfinite = bad;
  free(chunks);
  free(jobs);
  free(scales);
  free(partial);
  return ADAMJIT_OK;
}

static adamjit_status cpu_read_nonfinite(adamjit_context* ctx, uint64_t* nonfinite) {
  *nonfinite = B(ctx)->last_nonfinite;
  return ADAMJIT_OK;
}

/* Quantize and dequantize split into chunk ranges like the step (chunks hold whole blocks). */
static adamjit_status cpu_quantize(adamjit_context* ctx, const aj_quant_job* job) {
  cpu_backend* b = B(ctx);
  size_t numel = (size_t)job->numel;
  long long nc = (long long)((numel + CPU_CHUNK - 1) / CPU_CHUNK);
  int table = use_table(b, job->map);
  size_t first_bad = numel;
#pragma omp parallel for schedule(static) num_threads(b->threads) reduction(min : first_bad) if (numel >= CPU_PARALLEL_MIN)
  for (long long c = 0; c < nc; c++) {
    size_t begin = (size_t)c * CPU_CHUNK, end = begin + CPU_CHUNK < numel ? begin + CPU_CHUNK : numel;
    size_t r = aj_cpu_quantize(job->x, job->dtype, job->codes, job->absmax, job->block_size, job->map, table, begin, end);
    if (r < end && r < first_bad) first_bad = r;
  }
  if (first_bad < numel)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "adamjit_quantize_blockwise: x[%zu] is not finite", first_bad);
  return ADAMJIT_OK;
}

static adamjit_status cpu_dequantize(adamjit_context* ctx, const aj_quant_job* job) {
  cpu_backend* b = B(ctx);
  size_t numel = (size_t)job->numel;
  long long nc = (long long)((numel + CPU_CHUNK - 1) / CPU_CHUNK);
#pragma omp parallel for schedule(static) num_threads(b->threads) if (numel >= CPU_PARALLEL_MIN)
  for (long long c = 0; c < nc; c++) {
    size_t begin = (size_t)c * CPU_CHUNK, end = begin + CPU_CHUNK < numel ? begin + CPU_CHUNK : numel;
    aj_cpu_dequantize(job->codes, job->absmax, job->x, job->dtype, job->block_size, job->map, begin, end);
  }
  return ADAMJIT_OK;
}

const aj_backend_ops aj_cpu_backend = {
    .kind = ADAMJIT_BACKEND_CPU,
    .probe = cpu_probe,
    .device_count = cpu_device_count,
    .device_name = cpu_device_name,
    .init = cpu_init,
    .shutdown = cpu_shutdown,
    .mem_alloc = cpu_mem_alloc,
    .mem_free = cpu_mem_free,
    .mem_write = cpu_mem_write,
    .mem_read = cpu_mem_read,
    .mem_copy = cpu_mem_copy,
    .mem_check = cpu_mem_check,
    .synchronize = cpu_synchronize,
    .step = cpu_step,
    .read_nonfinite = cpu_read_nonfinite,
    .quantize = cpu_quantize,
    .dequantize = cpu_dequantize,
};
