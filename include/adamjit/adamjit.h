/*
 * adamjit: AdamW optimizers (32-bit, 8-bit blockwise, paged) for C and C++ trainers.
 *
 * The one public header. Conventions:
 *  - Every fallible call returns an adamjit_status. On any error nothing has changed:
 *    input is validated completely before any state is touched.
 *  - adamjit_status_string() gives a static text per status; adamjit_context_last_error()
 *    gives the detail of the last failure on that context (like sqlite3_errmsg). Calls that
 *    have no context (adamjit_context_create, backend queries) leave their detail in
 *    adamjit_last_error(), which is per thread.
 *  - Descriptor structs begin with `struct_size` and are filled by an `_init_default()`
 *    function; a field value of 0 is always a real value, never "use the default".
 *  - The library never aborts, exits or prints. Diagnostics go to the log callback.
 *  - Handles are opaque. A context and everything created from it must be used by one
 *    thread at a time; different contexts are independent.
 */
#ifndef ADAMJIT_ADAMJIT_H
#define ADAMJIT_ADAMJIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(ADAMJIT_SHARED_BUILD)
#define ADAMJIT_API __declspec(dllexport)
#elif defined(__GNUC__)
#define ADAMJIT_API __attribute__((visibility("default")))
#else
#define ADAMJIT_API
#endif

/* ---------------------------------------------------------------- version */

#define ADAMJIT_VERSION_MAJOR 0
#define ADAMJIT_VERSION_MINOR 1
#define ADAMJIT_VERSION_PATCH 0
#define ADAMJIT_VERSION_NUMBER (ADAMJIT_VERSION_MAJOR * 10000 + ADAMJIT_VERSION_MINOR * 100 + ADAMJIT_VERSION_PATCH)
#define ADAMJIT_VERSION_STRING "0.1.0"

/* Version of the library actually loaded (may differ from the header compiled against). */
ADAMJIT_API unsigned adamjit_version_number(void);
ADAMJIT_API const char* adamjit_version_string(void);

/* ----------------------------------------------------------------- status */

/* Values are stable across releases; new codes are only ever appended. */
typedef enum adamjit_status {
  ADAMJIT_OK = 0,
  ADAMJIT_ERR_NULL_ARGUMENT = 1,        /* a required handle or pointer is NULL */
  ADAMJIT_ERR_INVALID_VALUE = 2,        /* a hyperparameter or option out of its range */
  ADAMJIT_ERR_INVALID_DTYPE = 3,        /* unknown or unsupported dtype */
  ADAMJIT_ERR_INVALID_SIZE = 4,         /* element counts, buffer sizes, struct_size */
  ADAMJIT_ERR_INVALID_INDEX = 5,        /* group or tensor index out of range */
  ADAMJIT_ERR_OUT_OF_MEMORY = 6,
  ADAMJIT_ERR_UNSUPPORTED = 7,          /* valid request this build or backend cannot do */
  ADAMJIT_ERR_BACKEND_UNAVAILABLE = 8,  /* backend not built, or no driver/device here */
  ADAMJIT_ERR_DRIVER = 9,               /* the GPU driver or runtime reported an error */
  ADAMJIT_ERR_TEMPLATE = 10,            /* a kernel template failed to render */
  ADAMJIT_ERR_COMPILE = 11,             /* a rendered kernel failed to compile */
  ADAMJIT_ERR_IO = 12,                  /* a file could not be read or written */
  ADAMJIT_ERR_CHECKPOINT_CORRUPT = 13,  /* a checkpoint file is malformed */
  ADAMJIT_ERR_CHECKPOINT_MISMATCH = 14, /* a valid checkpoint that does not fit this optimizer */
  ADAMJIT_ERR_CACHE = 15,               /* kernel cache unusable (reported, never fatal to a step) */
  ADAMJIT_ERR_TUNING_DB = 16,           /* tuning database malformed or mismatched */
  ADAMJIT_ERR_INTERNAL = 17
} adamjit_status;

/* Static, never NULL. */
ADAMJIT_API const char* adamjit_status_string(adamjit_status status);

/* Detail of the last failed context-less call on this thread ("" if none). */
ADAMJIT_API const char* adamjit_last_error(void);

/* ---------------------------------------------------------------- dtypes */

typedef enum adamjit_dtype {
  ADAMJIT_F32 = 0,
  ADAMJIT_F16 = 1, /* IEEE binary16 */
  ADAMJIT_BF16 = 2 /* bfloat16; stored rounded to nearest even */
} adamjit_dtype;

ADAMJIT_API const char* adamjit_dtype_name(adamjit_dtype dtype); /* "f32", "f16", "bf16"; NULL if unknown */
ADAMJIT_API size_t adamjit_dtype_size(adamjit_dtype dtype);      /* 0 if unknown */

/* --------------------------------------------------------------- backends */

typedef enum adamjit_backend {
  ADAMJIT_BACKEND_AUTO = 0, /* the best available: cuda, then opencl, then cpu */
  ADAMJIT_BACKEND_CPU = 1,
  ADAMJIT_BACKEND_OPENCL = 2,
  ADAMJIT_BACKEND_CUDA = 3
} adamjit_backend;

/* "auto", "cpu", "opencl", "cuda"; NULL if unknown. */
ADAMJIT_API const char* adamjit_backend_name(adamjit_backend backend);
/* Parses a name as above; ADAMJIT_ERR_INVALID_VALUE if unknown. */
ADAMJIT_API adamjit_status adamjit_backend_from_name(const char* name, adamjit_backend* out);
/* 1 if the backend was compiled into this library. */
ADAMJIT_API int adamjit_backend_is_built(adamjit_backend backend);
/* ADAMJIT_OK if the backend can run here (built, driver loads, a device exists); otherwise
 * the reason is in adamjit_last_error(). */
ADAMJIT_API adamjit_status adamjit_backend_probe(adamjit_backend backend);
/* Number of devices of an available backend (the CPU backend has exactly one). */
ADAMJIT_API adamjit_status adamjit_backend_device_count(adamjit_backend backend, int* count);
/* Human-readable device name, NUL-terminated and truncated to `size`. */
ADAMJIT_API adamjit_status adamjit_backend_device_name(adamjit_backend backend, int index, char* name, size_t size);

/* ---------------------------------------------------------------- context */

typedef struct adamjit_context adamjit_context;

typedef enum adamjit_log_level {
  ADAMJIT_LOG_ERROR = 0,
  ADAMJIT_LOG_WARN = 1,
  ADAMJIT_LOG_INFO = 2,
  ADAMJIT_LOG_DEBUG = 3
} adamjit_log_level;

typedef void (*adamjit_log_fn)(adamjit_log_level level, const char* message, void* user);

typedef struct adamjit_context_desc {
  size_t struct_size;          /* sizeof(adamjit_context_desc) */
  adamjit_backend backend;     /* default ADAMJIT_BACKEND_AUTO */
  int device_index;            /* default 0 */
  int num_threads;             /* CPU backend threads; default -1 = all OpenMP threads */
  /* The two directories below serve the run-time kernels: the GPU backends' steps and the
   * adamjit_kernel_* calls (the CPU backend's own step compiles nothing). Copied. */
  const char* cache_dir;       /* kernel cache directory; default NULL = $ADAMJIT_CACHE_DIR, else
                                  $XDG_CACHE_HOME/adamjit, else ~/.cache/adamjit */
  const char* template_dir;    /* template override directory; default NULL = $ADAMJIT_TEMPLATE_PATH */
  adamjit_log_fn log_fn;       /* default NULL: messages are dropped */
  void* log_user;              /* passed to log_fn */
  adamjit_log_level log_level; /* most verbose level delivered; default ADAMJIT_LOG_WARN */
  int quant_search;            /* nearest-code search of 8-bit quantization; default
                                  ADAMJIT_QUANT_SEARCH_AUTO (see below); results never depend on it */
  /* GPU backends: the device whose name (or vendor or platform name) contains this text,
   * ignoring case, instead of device_index; default NULL. On OpenCL, when this is NULL and
   * device_index is 0, $ADAMJIT_OPENCL_DEVICE (an index or a name) chooses. */
  const char* device_name;
  /* GPU backends: run everything on the caller's queue instead of the backend's own: an
   * in-order cl_command_queue on OpenCL (its context and device are used; params and grads
   * must be cl_mem of that context), a CUstream on CUDA. Default NULL. */
  void* queue;
  /* GPU backends: a user tuning database (a JSON file in the format `adamjit tune` writes),
   * searched before the cache directory's and the built-in one at every level (see
   * "tuning" below); default NULL = $ADAMJIT_TUNING_DB. A file that cannot be read, is
   * malformed or is not a tuning database is logged (WARN) with the reason and ignored. */
  const char* tuning_db;
  /* 1 (default): launch parameters from overrides and tuning databases; 0: the databases
   * are skipped and the library's per-dialect defaults used (`adamjit bench --tuned`
   * compares the two); overrides, explicit calls on the context, still apply. */
  int use_tuning;
} adamjit_context_desc;

ADAMJIT_API void adamjit_context_desc_init_default(adamjit_context_desc* desc);
/* desc may be NULL for all defaults. On failure *out is NULL and adamjit_last_error() says why. */
ADAMJIT_API adamjit_status adamjit_context_create(const adamjit_context_desc* desc, adamjit_context** out);
/* NULL-safe. Optimizers created from the context must be destroyed first. */
ADAMJIT_API void adamjit_context_destroy(adamjit_context* ctx);
/* The backend actually chosen (never AUTO). */
ADAMJIT_API adamjit_backend adamjit_context_backend(const adamjit_context* ctx);
/* Detail of the last failure on this context; "" if none. Valid until the next call on it. */
ADAMJIT_API const char* adamjit_context_last_error(const adamjit_context* ctx);
/* Waits until all work enqueued through this context is done (a no-op on the CPU). */
ADAMJIT_API adamjit_status adamjit_context_synchronize(adamjit_context* ctx);

/* ---------------------------------------------------------- backend memory */

/* A backend memory handle: a host pointer on the CPU backend, a cl_mem on OpenCL, a
 * CUdeviceptr cast through uintptr_t on CUDA. Params and grads are passed this way. */
typedef void* adamjit_mem;

/* Allocates `bytes` (> 0) of zero-filled backend memory. For tests, tools and users. */
ADAMJIT_API adamjit_status adamjit_mem_alloc(adamjit_context* ctx, size_t bytes, adamjit_mem* out);
/* NULL-safe. Only for memory from adamjit_mem_alloc. */
ADAMJIT_API void adamjit_mem_free(adamjit_context* ctx, adamjit_mem mem);
/* Copies host -> backend memory at a byte offset. Synchronous. */
ADAMJIT_API adamjit_status adamjit_mem_write(adamjit_context* ctx, adamjit_mem dst, size_t offset, const void* src,
                                             size_t bytes);
/* Copies bytes between two backend buffers of the context (device to device on a GPU),
 * in order with the context's other work; adamjit_context_synchronize waits for it. The
 * ranges must not overlap. */
ADAMJIT_API adamjit_status adamjit_mem_copy(adamjit_context* ctx, adamjit_mem dst, size_t dst_offset, adamjit_mem src,
                                            size_t src_offset, size_t bytes);
/* Copies backend memory -> host from a byte offset. Synchronous. */
ADAMJIT_API adamjit_status adamjit_mem_read(adamjit_context* ctx, void* dst, adamjit_mem src, size_t offset,
                                            size_t bytes);

/* ------------------------------------------------- blockwise quantization */

/* Quantization maps: 256 ascending values that 8-bit codes index (SPEC 3). */
#define ADAMJIT_QMAP_SIZE 256

typedef enum adamjit_qmap {
  ADAMJIT_QMAP_SIGNED = 0,   /* bitsandbytes' signed dynamic map (m): -0.99297 .. 1, 0 at index 127 */
  ADAMJIT_QMAP_UNSIGNED = 1, /* the unsigned dynamic map (v): 0 .. 1 */
  ADAMJIT_QMAP_CUSTOM = 2    /* the caller's 256 strictly ascending finite values */
} adamjit_qmap;

/* How a backend finds the nearest code. The choices give identical codes (each equals a
 * brute-force nearest search); they differ in speed, which `adamjit bench --quant` shows. */
#define ADAMJIT_QUANT_SEARCH_AUTO 0   /* the table where the map allows it, else binary */
#define ADAMJIT_QUANT_SEARCH_BINARY 1 /* branch-free binary search over the 255 midpoints */
#define ADAMJIT_QUANT_SEARCH_TABLE 2  /* a lookup by exponent and leading mantissa bits, then one
                                         comparison; needs a map with at most one midpoint per
                                         1/256 octave (both built-in maps qualify; other maps
                                         use the binary search) */

/* Copies a built-in dynamic map (SIGNED or UNSIGNED) to out[count]; count must be 256. */
ADAMJIT_API adamjit_status adamjit_qmap_values(adamjit_qmap which, float* out, int count);

typedef struct adamjit_quant_desc {
  size_t struct_size;       /* sizeof(adamjit_quant_desc) */
  adamjit_dtype dtype;      /* of the unquantized values; ADAMJIT_F32 */
  int64_t numel;            /* > 0; no default (0) */
  int block_size;           /* elements per absmax; 256; a power of two in 64..4096 */
  adamjit_qmap map;         /* ADAMJIT_QMAP_SIGNED */
  const float* custom_map;  /* host array, with map == ADAMJIT_QMAP_CUSTOM; NULL */
  int custom_map_size;      /* entries in custom_map; must be 256; 0 */
} adamjit_quant_desc;

ADAMJIT_API void adamjit_quant_desc_init_default(adamjit_quant_desc* desc);
/* Blockwise quantization, as bitsandbytes' quantize_blockwise: for each block b of
 * block_size elements (the last one may be shorter), absmax[b] = max |x| over the block and
 * codes[j] = the index of the map value nearest to x[j] / absmax[b] (code of 0 where
 * absmax[b] = 0). x: numel values of dtype; codes: numel bytes; absmax: ceil(numel /
 * block_size) floats; all backend memory. A NaN or Inf in x returns ADAMJIT_ERR_INVALID_VALUE
 * naming the first such element; codes and absmax are then unspecified. */
ADAMJIT_API adamjit_status adamjit_quantize_blockwise(adamjit_context* ctx, const adamjit_quant_desc* desc,
                                                      adamjit_mem x, adamjit_mem codes, adamjit_mem absmax);
/* The inverse: out[j] = map[codes[j]] * absmax[j / block_size], stored as dtype (rounded to
 * nearest even for f16/bf16). */
ADAMJIT_API adamjit_status adamjit_dequantize_blockwise(adamjit_context* ctx, const adamjit_quant_desc* desc,
                                                        adamjit_mem codes, adamjit_mem absmax, adamjit_mem out);

/* -------------------------------------------------------------- optimizer */

typedef struct adamjit_optimizer adamjit_optimizer;

/* Hyperparameters of one parameter group (SPEC 1). Changeable between steps. */
typedef struct adamjit_hparams {
  float lr;           /* 1e-3, >= 0 */
  float beta1;        /* 0.9, in [0, 1) */
  float beta2;        /* 0.999, in [0, 1) */
  float eps;          /* 1e-8, >= 0 */
  float weight_decay; /* 1e-2, >= 0 (decoupled, applied before the update as torch.optim.AdamW) */
  int amsgrad;        /* 0; 1 keeps the running maximum of v */
} adamjit_hparams;

ADAMJIT_API void adamjit_hparams_init_default(adamjit_hparams* hp);

/* Optimizer-wide configuration: the hyperparameters of group 0 and the storage defaults
 * that every tensor inherits unless its descriptor overrides them. */
typedef struct adamjit_optimizer_config {
  size_t struct_size;        /* sizeof(adamjit_optimizer_config) */
  adamjit_hparams hparams;   /* group 0 */
  int optim_bits;            /* 32; or 8 for blockwise-quantized m and v */
  int64_t min_8bit_size;     /* 4096: smaller tensors keep 32-bit state (strict <) */
  int percentile_clipping;   /* 100 = off; 0..99 clips at that index of the sorted last 100 norms */
  int block_wise;            /* 1; 0 = one absmax for the whole tensor (8-bit only) */
  int quant_block_size;      /* 256; power of two in 64..4096 */
  int is_paged;              /* 0; 1 = state of large tensors in pageable memory (SPEC 5) */
  int64_t paged_min_elements; /* 100000 */
  /* How each 8-bit blockwise tensor's quantization block is chosen (a tensor descriptor's
   * explicit quant_block_size always wins): */
  int quant_block_policy;     /* ADAMJIT_BLOCK_POLICY_FIXED: quant_block_size (default) */
  double block_overhead_max;  /* MEMORY policy: the largest absmax overhead allowed, absmax bytes
                                 per code byte; 1/64 (= block 256 for large tensors); in (0, 1] */
  double block_error_max;     /* ERROR policy: the largest relative quantization error allowed
                                 (see ADAMJIT_BLOCK_POLICY_ERROR); 0.011 (about block 256 for
                                 Gaussian gradients, 64..128 for heavy-tailed ones); in (0, 1] */
} adamjit_optimizer_config;

/* Block size policies (adamjit_optimizer_config.quant_block_policy). The chosen block is
 * reported by adamjit_optimizer_tensor_info and stored in checkpoints. */
#define ADAMJIT_BLOCK_POLICY_FIXED 0  /* quant_block_size for every tensor */
/* The smallest block (64..4096) whose absmax floats, ceil(numel / block) per state, take at
 * most block_overhead_max bytes per code byte of the tensor; decided at registration. */
#define ADAMJIT_BLOCK_POLICY_MEMORY 1
/* Measured on the tensor's first step: its gradient's first-step m and v are quantized with
 * every block size, and the largest block whose relative RMS round-trip error
 * (||dequantized - x|| / ||x||, the larger of m and v) is at most block_error_max is kept
 * (64 when none is); non-finite gradient elements count as 0. Until then quant_block_size is
 * the provisional block, and loading a checkpoint takes the file's block instead. On GPU
 * backends this reads the gradient to the host once, at the tensor's first step. */
#define ADAMJIT_BLOCK_POLICY_ERROR 2

ADAMJIT_API void adamjit_optimizer_config_init_default(adamjit_optimizer_config* config);

/* config may be NULL for all defaults. Group 0 exists from the start with config->hparams. */
ADAMJIT_API adamjit_status adamjit_optimizer_create(adamjit_context* ctx, const adamjit_optimizer_config* config,
                                                    adamjit_optimizer** out);
/* NULL-safe; frees all optimizer state (paged memory included). */
ADAMJIT_API void adamjit_optimizer_destroy(adamjit_optimizer* opt);

/* Adds a parameter group; its index is returned in *group (1, 2, ...). */
ADAMJIT_API adamjit_status adamjit_optimizer_add_group(adamjit_optimizer* opt, const adamjit_hparams* hp, int* group);
ADAMJIT_API adamjit_status adamjit_optimizer_group_count(const adamjit_optimizer* opt, int* count);
ADAMJIT_API adamjit_status adamjit_optimizer_get_group(const adamjit_optimizer* opt, int group, adamjit_hparams* hp);
/* Replaces a group's hyperparameters (schedulers call this between steps). Turning amsgrad
 * on for a group allocates the running maximum of each of its tensors, starting from zero,
 * at the next step; turned off, the maximum is kept (not updated) and is used again if
 * amsgrad is turned back on, as torch.optim.AdamW keeps max_exp_avg_sq in its state. */
ADAMJIT_API adamjit_status adamjit_optimizer_set_group(adamjit_optimizer* opt, int group, const adamjit_hparams* hp);

/* Per-tensor storage options use this value to inherit the optimizer's configuration. */
#define ADAMJIT_INHERIT (-1)

typedef struct adamjit_tensor_desc {
  size_t struct_size;         /* sizeof(adamjit_tensor_desc) */
  adamjit_mem param;          /* backend memory holding numel params (required) */
  adamjit_mem grad;           /* backend memory holding numel grads (required) */
  int64_t numel;              /* > 0 */
  adamjit_dtype param_dtype;  /* ADAMJIT_F32 */
  adamjit_dtype grad_dtype;   /* ADAMJIT_F32; may differ from param_dtype */
  int group;                  /* 0 */
  const char* name;           /* optional, copied; used in messages and checkpoints; NULL */
  /* Storage overrides (SPEC 1); ADAMJIT_INHERIT takes the optimizer's value. */
  int optim_bits;
  int64_t min_8bit_size;
  int percentile_clipping;
  int block_wise;
  int quant_block_size;
  int is_paged;
  int quant_block_policy;     /* ADAMJIT_INHERIT; ignored when quant_block_size is explicit */
} adamjit_tensor_desc;

ADAMJIT_API void adamjit_tensor_desc_init_default(adamjit_tensor_desc* desc);
/* Registers a tensor; optimizer state is allocated now (zeros). Its index (0, 1, ...) is
 * returned in *index. */
ADAMJIT_API adamjit_status adamjit_optimizer_add_tensor(adamjit_optimizer* opt, const adamjit_tensor_desc* desc,
                                                        int* index);
ADAMJIT_API adamjit_status adamjit_optimizer_tensor_count(const adamjit_optimizer* opt, int* count);
/* Points a registered tensor at other param/grad memory of the same size and dtypes. */
ADAMJIT_API adamjit_status adamjit_optimizer_set_tensor_memory(adamjit_optimizer* opt, int index, adamjit_mem param,
                                                               adamjit_mem grad);

/* One AdamW step over every registered tensor (each tensor's step counter advances by one).
 * Gradient elements that are NaN or +-Inf leave their param and state untouched; their
 * number is counted. If nonfinite_count is not NULL the step waits for the device and
 * stores the count; with NULL a GPU step stays asynchronous and the count can be fetched
 * later with adamjit_optimizer_last_nonfinite(). */
ADAMJIT_API adamjit_status adamjit_optimizer_step(adamjit_optimizer* opt, uint64_t* nonfinite_count);
/* Non-finite gradient elements met by the last step (waits for it to finish). After an
 * asynchronous step, ask before the next step of any optimizer on the same context. */
ADAMJIT_API adamjit_status adamjit_optimizer_last_nonfinite(adamjit_optimizer* opt, uint64_t* count);

typedef enum adamjit_memory_kind {
  ADAMJIT_MEMORY_DEVICE = 0, /* memory of the device that runs the step */
  ADAMJIT_MEMORY_HOST = 1,   /* ordinary host memory (the CPU backend's state) */
  ADAMJIT_MEMORY_PAGED = 2   /* pageable between host and device (SPEC 5) */
} adamjit_memory_kind;

typedef struct adamjit_tensor_info {
  size_t struct_size;        /* set by the caller: sizeof(adamjit_tensor_info); an older, smaller
                                size gets the fields it knows */
  int64_t numel;
  adamjit_dtype param_dtype;
  adamjit_dtype grad_dtype;
  int group;
  int state_bits;            /* 32 or 8: what is actually stored (min_8bit_size applied) */
  int64_t quant_block_size;  /* elements per absmax block (numel when block_wise = 0); 0 at 32 bits */
  int percentile_clipping;
  int amsgrad;               /* 1 if a running maximum of v is stored */
  adamjit_memory_kind memory;
  uint64_t state_bytes;      /* bytes of optimizer state owned for this tensor */
  uint64_t step;             /* updates applied so far */
  char name[64];             /* as registered (truncated), "" if none */
  int quant_block_policy;    /* the policy that chose quant_block_size (FIXED when explicit or
                                at 32 bits); ERROR before the first step: the block is provisional */
} adamjit_tensor_info;

ADAMJIT_API adamjit_status adamjit_optimizer_tensor_info(const adamjit_optimizer* opt, int index,
                                                         adamjit_tensor_info* info);
/* Bytes of optimizer state of all tensors together. */
ADAMJIT_API adamjit_status adamjit_optimizer_state_bytes(const adamjit_optimizer* opt, uint64_t* bytes);

typedef enum adamjit_state_kind {
  ADAMJIT_STATE_EXP_AVG = 0,    /* m */
  ADAMJIT_STATE_EXP_AVG_SQ = 1, /* v */
  ADAMJIT_STATE_MAX_EXP_AVG_SQ = 2 /* running max of v (amsgrad only) */
} adamjit_state_kind;

/* Copies one state of a tensor to host fp32 (dequantized if stored in 8 bits); `count`
 * must equal the tensor's numel. */
ADAMJIT_API adamjit_status adamjit_optimizer_read_state(adamjit_optimizer* opt, int index, adamjit_state_kind which,
                                                        float* dst, int64_t count);

/* Saves all optimizer state (step counters, m, v, clipping history, group hyperparameters)
 * to a safetensors file, atomically (a temporary file renamed over `path`). */
ADAMJIT_API adamjit_status adamjit_optimizer_save(adamjit_optimizer* opt, const char* path);
/* Loads a file written by adamjit_optimizer_save on any backend. The optimizer must have the
 * same tensors registered (count, numel, dtypes, state storage; a tensor whose block the
 * ERROR policy has not chosen yet takes the file's block size). Everything is validated
 * before anything changes: on failure the optimizer is exactly as it was. */
ADAMJIT_API adamjit_status adamjit_optimizer_load(adamjit_optimizer* opt, const char* path);

/* ------------------------------------------------------- run-time kernels */

/* The GPU backends render each kernel variant from a Lua template and compile it at run
 * time (NVRTC for CUDA, the OpenCL driver for OpenCL), caching binaries in memory and on
 * disk (adamjit_context_desc.cache_dir). These calls expose that machinery for tools and
 * researchers; they work in any context, including a CPU one (NVRTC needs no GPU).
 *
 * A kernel is named by a variant key, text such as
 *     adamw8/cuda/p=bf16/g=f32/b=256/amsgrad/wd/nonfinite/wg=256/ept=4/vec=4
 * family (adamw32 adamw8 quantize dequantize sqnorm) / dialect (opencl cuda) / tokens:
 * p= g= param and grad dtype, b= quantization block (64..4096), flags amsgrad wd clip
 * nonfinite, and launch parameters wg= (work-group size) ept= (elements per thread) vec=
 * (vector width). The README lists every token. */

/* Size of a buffer that holds any canonical key. */
#define ADAMJIT_KERNEL_KEY_MAX 128

/* Number of keys in the supported semantic space (every family, dialect and semantic
 * dimension, at the default launch parameters). */
ADAMJIT_API int adamjit_kernel_variant_count(void);
/* The index-th key of that space (0 <= index < count), in a fixed order. */
ADAMJIT_API adamjit_status adamjit_kernel_variant_key(int index, char* key, size_t size);
/* Parses a key and writes its canonical text (tokens in order, defaults filled in);
 * ADAMJIT_ERR_INVALID_VALUE names the bad token (in adamjit_last_error()). */
ADAMJIT_API adamjit_status adamjit_kernel_key_canonical(const char* key, char* out, size_t size);

/* Frees memory the library returned (rendered sources, compile logs). NULL-safe. */
ADAMJIT_API void adamjit_free(void* p);

/* Renders a key's kernel source with the context's templates (template_dir, then
 * $ADAMJIT_TEMPLATE_PATH, then the embedded ones). *source is NUL-terminated; adamjit_free it. */
ADAMJIT_API adamjit_status adamjit_kernel_render(adamjit_context* ctx, const char* key, char** source);

typedef struct adamjit_kernel_build_desc {
  size_t struct_size; /* sizeof(adamjit_kernel_build_desc) */
  /* cuda keys: the NVRTC target ("sm_80", "sm_90", "compute_90"); default NULL = the
   * context's GPU on a CUDA context, else "sm_80" */
  const char* arch;
  /* opencl keys: the device, by index or name substring; default NULL = the context's
   * device on an OpenCL context, else $ADAMJIT_OPENCL_DEVICE, else 0 */
  const char* device;
  int use_cache; /* 1 (default): look the binary up and store it; 0: always compile, store nothing */
} adamjit_kernel_build_desc;

ADAMJIT_API void adamjit_kernel_build_desc_init_default(adamjit_kernel_build_desc* desc);

#define ADAMJIT_KERNEL_COMPILED 0         /* not in the caches: compiled now */
#define ADAMJIT_KERNEL_FROM_MEMORY_CACHE 1
#define ADAMJIT_KERNEL_FROM_DISK_CACHE 2

typedef struct adamjit_kernel_build_info {
  size_t struct_size;   /* set by the caller: sizeof(adamjit_kernel_build_info) */
  int source;           /* ADAMJIT_KERNEL_COMPILED / _FROM_MEMORY_CACHE / _FROM_DISK_CACHE */
  double render_ms;     /* template rendering */
  double build_ms;      /* compile, or cache read + program creation */
  size_t source_bytes;
  size_t binary_bytes;
  int is_cubin;         /* cuda: 1 CUBIN, 0 PTX (a GPU newer than NVRTC) */
  char target[256];     /* cuda: the architecture compiled for; opencl: the device name */
  char* log;            /* the compile log when compiled ("" if silent), else NULL; adamjit_free it */
} adamjit_kernel_build_info;

/* Renders and builds a key's kernel with its dialect's compiler, through the caches. info
 * may be NULL. A compile error is ADAMJIT_ERR_COMPILE with the log in the context message
 * (and, when info is given, all of it in info->log). */
ADAMJIT_API adamjit_status adamjit_kernel_build(adamjit_context* ctx, const char* key,
                                                const adamjit_kernel_build_desc* desc,
                                                adamjit_kernel_build_info* info);

/* The keys of the kernels a GPU backend launches, in order, for a tensor described by desc
 * (param and grad may be NULL: only sizes, dtypes, group and storage overrides count) in
 * opt's configuration, for dialect "opencl" or "cuda". Writes up to max keys, sets *count
 * to how many there are (at most 4). With `adamjit kernels KEY...` or adamjit_kernel_build
 * this fills a kernel cache before a job starts. Any context will do (a CPU one too). */
ADAMJIT_API adamjit_status adamjit_optimizer_kernel_keys(const adamjit_optimizer* opt, const adamjit_tensor_desc* desc,
                                                         const char* dialect, char (*keys)[ADAMJIT_KERNEL_KEY_MAX],
                                                         int max, int* count);

#define ADAMJIT_KERNEL_CACHE_MEMORY 1u
#define ADAMJIT_KERNEL_CACHE_DISK 2u
/* Empties the context's memory cache and/or the disk cache directory (only the library's
 * own entry files are removed). ADAMJIT_ERR_CACHE when the disk cache is off. */
ADAMJIT_API adamjit_status adamjit_kernel_cache_clear(adamjit_context* ctx, unsigned which);
/* The disk cache directory in use; ADAMJIT_ERR_CACHE (with the reason logged) when the
 * disk cache is off, ADAMJIT_ERR_INVALID_SIZE when buf is too small. */
ADAMJIT_API adamjit_status adamjit_kernel_cache_dir(adamjit_context* ctx, char* buf, size_t size);

/* ----------------------------------------------------------------- tuning */

/* The launch parameters (wg=, ept=, vec=) of the update kernels a GPU backend launches
 * (adamw32 and adamw8; sqnorm and clip keep their defaults) come from, first match wins:
 *   1. an override on the context (adamjit_tuning_override);
 *   2. the tuning databases, searched device -> architecture -> vendor; at each level the
 *      user overlay (adamjit_context_desc.tuning_db / $ADAMJIT_TUNING_DB), then the cache
 *      directory's database (written by `adamjit tune` through adamjit_tuning_record), then
 *      the database built into the library; within a database an entry for the tensor's
 *      size bucket (the decade of its element count: "1e7" = [1e7, 1e8)) before one for
 *      every size;
 *   3. the library's per-dialect defaults.
 * Entries name a kernel by its key without launch tokens (README "Tuning" has the file
 * format); a "multi" kernel (many small tensors in one launch) launches with the
 * parameters its tensors' plain update kernel gets. The CPU backend launches no run-time
 * kernels: these calls answer ADAMJIT_ERR_UNSUPPORTED there, adamjit_tuning_db_path
 * excepted. Lookups never fail a step: a database that cannot be used is logged (WARN)
 * when the context first reads it, and the others still answer. */

typedef enum adamjit_tuning_level {
  ADAMJIT_TUNING_DEFAULT = 0,      /* the library's per-dialect defaults */
  ADAMJIT_TUNING_VENDOR = 1,       /* a database entry for the device's vendor */
  ADAMJIT_TUNING_ARCHITECTURE = 2, /* ... for its architecture */
  ADAMJIT_TUNING_DEVICE = 3,       /* ... for this very device */
  ADAMJIT_TUNING_OVERRIDE = 4      /* adamjit_tuning_override on this context */
} adamjit_tuning_level;

/* "default", "vendor", "architecture", "device", "override"; NULL if unknown. */
ADAMJIT_API const char* adamjit_tuning_level_name(adamjit_tuning_level level);

/* How a context's device is named in tuning databases. */
typedef struct adamjit_tuning_device {
  size_t struct_size;       /* set by the caller: sizeof(adamjit_tuning_device) */
  char dialect[16];         /* "opencl" or "cuda" */
  char vendor[128];         /* OpenCL: CL_DEVICE_VENDOR; CUDA: "NVIDIA" */
  char architecture[128];   /* CUDA: "sm_90"; OpenCL: "sm_XY" on NVIDIA, else the platform
                               name and device type, e.g. "Portable Computing Language cpu" */
  char device[256];         /* the device name */
} adamjit_tuning_device;

ADAMJIT_API adamjit_status adamjit_tuning_device_info(adamjit_context* ctx, adamjit_tuning_device* out);

/* Where one kernel's launch parameters came from. */
typedef struct adamjit_tuning_result {
  size_t struct_size;              /* set by the caller: sizeof(adamjit_tuning_result) */
  char key[ADAMJIT_KERNEL_KEY_MAX]; /* the kernel with the launch parameters it gets */
  adamjit_tuning_level level;
  char source[512];                /* the database file that answered, "built-in", or "" */
} adamjit_tuning_result;

/* The launch parameters this context gives the kernel `key` (its launch tokens are ignored;
 * its dialect must be the context's) for a tensor of numel (>= 1) elements. Families that
 * are not tuned answer their defaults. */
ADAMJIT_API adamjit_status adamjit_tuning_lookup(adamjit_context* ctx, const char* key, int64_t numel,
                                                 adamjit_tuning_result* out);
/* The same for the update kernel of a registered tensor, as its next step launches it. */
ADAMJIT_API adamjit_status adamjit_optimizer_tensor_tuning(const adamjit_optimizer* opt, int index,
                                                           adamjit_tuning_result* out);

/* Makes the kernel named by key (wg=, ept= and vec= all given) use those launch parameters
 * on this context for tensors of every size, from the next step on (it is compiled then,
 * unless cached). Replaces an earlier override of the same kernel. The values are checked
 * like any key's; whether the template accepts them is known when it is built.
 * ADAMJIT_ERR_INVALID_VALUE (nothing changed) for a missing launch token, a bad key, a key
 * of another dialect than the context's, or a kernel that is not tuned (not adamw32 or
 * adamw8, or "multi"). */
ADAMJIT_API adamjit_status adamjit_tuning_override(adamjit_context* ctx, const char* key);
/* Removes the override of key's kernel (launch tokens ignored; none there is not an
 * error), or every override (key NULL). */
ADAMJIT_API adamjit_status adamjit_tuning_override_clear(adamjit_context* ctx, const char* key);

/* Records key's launch parameters for its kernel and numel's size bucket in the cache
 * directory's tuning database, as a device-level entry for this context's device, with the
 * measured step time (seconds, > 0) and the default parameters' time in the same run
 * (default_seconds, > 0, or 0 if not measured). Replaces the entry of the same device,
 * kernel and bucket; the file is rewritten atomically. The key is checked as by
 * adamjit_tuning_override. ADAMJIT_ERR_CACHE when the disk cache is off;
 * ADAMJIT_ERR_TUNING_DB when the file there is not a valid database (it is left as it is:
 * fix or delete it). */
ADAMJIT_API adamjit_status adamjit_tuning_record(adamjit_context* ctx, const char* key, int64_t numel,
                                                 double seconds, double default_seconds);
/* The path of the cache directory's tuning database (it may not exist yet); any context.
 * ADAMJIT_ERR_CACHE when the disk cache is off. */
ADAMJIT_API adamjit_status adamjit_tuning_db_path(adamjit_context* ctx, char* buf, size_t size);

/* ----------------------------------------------------------------- paging */

/* Moves the optimizer's paged state (the tensors whose memory is ADAMJIT_MEMORY_PAGED, see
 * is_paged and SPEC 5) out to host memory, so that the device memory it occupied is free,
 * e.g. for an evaluation between two steps. Waits until it has moved (after everything
 * enqueued before it). The next step brings the state back to the device by itself;
 * results are the same either way. On CUDA the managed memory is prefetched to the host
 * (where the device cannot prefetch managed memory it moves on demand, and this logs that
 * and does nothing). A no-op, logged at INFO, on the CPU backend (state is host memory)
 * and on OpenCL (paged buffers already live in host memory), and when no tensor is paged. */
ADAMJIT_API adamjit_status adamjit_optimizer_page_out(adamjit_optimizer* opt);

#ifdef __cplusplus
}
#endif

#endif /* ADAMJIT_ADAMJIT_H */
