/* Variant keys: the name of one run-time compiled kernel (issue 4, item 3). Internal.
 *
 * A key fixes everything a template needs to render one kernel: what the kernel computes
 * (family and the semantic dimensions) and how it is launched (work-group size, elements
 * per thread, vector width). Keys print as short text that researchers type on the command
 * line (`adamjit kernels adamw8/cuda/p=bf16/...`), so the text form is the primary form:
 * it is canonical, it round-trips exactly, and the hash of a key is the hash of its text.
 *
 * Text grammar (case-sensitive, no whitespace anywhere):
 *
 *   key    := family "/" dialect { "/" token }
 *   family := "adamw32" | "adamw8" | "quantize" | "dequantize" | "sqnorm" | "clip"
 *   dialect:= "opencl" | "cuda"
 *   token  := "p=" dtype        param dtype; for quantize/dequantize, the dtype of the
 *                               unquantized values
 *           | "g=" dtype        grad dtype (adamw32, adamw8, sqnorm)
 *           | "bits=" uint      state bits; optional, must equal the family's (see below)
 *           | "b=" uint         quantization block size, power of two in 64..4096
 *                               (adamw8, quantize, dequantize); adamw8 also takes b=0:
 *                               one absmax for the whole tensor (SPEC 3, block_wise =
 *                               false), rendered as a program of several kernels (see
 *                               kernel_templates/adamw8.lua). quantize and dequantize
 *                               refuse b=0: the library quantizes tensor-wide only inside
 *                               the 8-bit step, so nothing would launch such a kernel.
 *           | "amsgrad" | "wd" | "clip"   flags of the AdamW families: amsgrad, weight decay,
 *                               percentile clipping (the step reads a gradient scale)
 *           | "nonfinite"       flag: the kernel guards against NaN/Inf (all but dequantize;
 *                               for clip: the step's sqnorm count of non-finite gradient
 *                               elements is an argument, and a step with any is not recorded)
 *           | "multi"           flag (adamw32, and adamw8 with b > 0; not with clip): one
 *                               launch updates many tensors through a table of offsets
 *                               (backends/gpu/gpu_group.h)
 *           | "wg=" uint        work-group size, power of two in 32..1024
 *           | "ept=" uint       elements per thread, 1..16 (blockwise adamw8: blocks per
 *                               work-item, see below)
 *           | "vec=" uint       vector width, 1, 2, 4 or 8, dividing ept (blockwise adamw8:
 *                               the layout, see below)
 *   dtype  := "f32" | "f16" | "bf16"
 *   uint   := "0" | [1-9][0-9]*   (no sign, no leading zeros)
 *
 * Parsing takes the tokens after family/dialect in any order; each at most once. A token
 * that does not apply to the family is refused (p= on sqnorm, b= on adamw32, amsgrad on
 * quantize ...), as are unknown tokens, empty tokens (a doubled or trailing "/"), malformed
 * numbers and values out of range; the message names the token. Missing key=value tokens
 * take the values of aj_variant_init_default(); a missing flag means OFF. Note that this
 * makes "adamw32/opencl" the unguarded kernel although init_default turns the guard on:
 * flags have to be absent-means-off for the text to be unambiguous, and the guard is on by
 * default in the struct because that is what the library launches.
 *
 * The canonical text (aj_variant_format) is: family/dialect, then p=, g=, b= where they
 * apply, then the flags that are on in the order amsgrad, wd, clip, nonfinite, multi, then wg=,
 * ept=, vec= (always written). bits= is never written: the family determines it.
 *   adamw8/cuda/p=bf16/g=f32/b=256/amsgrad/wd/nonfinite/wg=256/ept=4/vec=4
 *
 * Dimensions that do not apply to a family hold a neutral value in the struct (dtype f32,
 * block 0, flag 0), so that equal kernels compare and hash equal; aj_variant_check refuses
 * anything else there. State bits are fixed by the family: 32 for adamw32, sqnorm and clip,
 * 8 for adamw8, quantize and dequantize (they read or write 8-bit codes).
 *
 * The clip family (percentile clipping finished on the device, SPEC 4: sum the sqnorm
 * partials, update the 100-float history, write the gradient scale) has no dtype, block or
 * AdamW flag: its inputs are always fp32 partial sums, and the step and percentile are
 * kernel arguments, so one kernel serves every step and every percentile. Its only
 * semantic dimension is "nonfinite" (whether the sqnorm pass before it counted non-finite
 * elements, which then keep the step out of the history); wg is its work-group size, and
 * ept and vec do not change it (they are accepted, like everywhere, so that the launch
 * part of every key reads the same):
 *   clip/cuda/nonfinite/wg=256/ept=4/vec=4
 *
 * Relations between the launch parameters and the block size (e.g. whether a work-group
 * covers a whole block) are the template's business: a template that cannot render a valid
 * key fails with ADAMJIT_ERR_UNSUPPORTED rather than this module guessing its layout.
 *
 * Blockwise adamw8 (b > 0) reads the launch tokens its own way, because a block's absmax
 * must be known before any of its codes (kernel_templates/adamw8.lua has the details; the
 * launch geometry is in backends/gpu/gpu_step.c):
 *   vec=1    "own blocks", for CPU devices: each work-item updates and requantizes ept
 *            consecutive whole blocks alone; a work-group covers wg * ept blocks.
 *   vec>1    "shared blocks", for GPUs: min(wg, block) work-items share each block (wg /
 *            block blocks side by side when wg > block) and each work-item works on ept
 *            blocks in turn; a work-group covers ept * max(wg, block) elements. As vec must
 *            divide ept, this layout takes an even ept.
 * In both, ept is the number of blocks a work-item works on (a group loads the maps into
 * local memory once for all of its blocks). adamw8 with b=0 and every other family use
 * ept as elements per thread.
 */
#ifndef ADAMJIT_JIT_VARIANT_H
#define ADAMJIT_JIT_VARIANT_H

#include <stddef.h>
#include <stdint.h>

#include "adamjit/adamjit.h"

typedef enum aj_kernel_family {
  AJ_KERNEL_ADAMW32 = 0,    /* AdamW step with 32-bit m/v */
  AJ_KERNEL_ADAMW8 = 1,     /* AdamW step with blockwise 8-bit m/v */
  AJ_KERNEL_QUANTIZE = 2,   /* blockwise quantize */
  AJ_KERNEL_DEQUANTIZE = 3, /* blockwise dequantize */
  AJ_KERNEL_SQNORM = 4,     /* per-tensor squared-norm reduction of a gradient */
  AJ_KERNEL_CLIP = 5        /* percentile clipping: history update and gradient scale */
} aj_kernel_family;
#define AJ_KERNEL_FAMILY_COUNT 6

typedef enum aj_dialect {
  AJ_DIALECT_OPENCL = 0,
  AJ_DIALECT_CUDA = 1
} aj_dialect;
#define AJ_DIALECT_COUNT 2

/* Bounds of the dimensions, shared with the templates and the tuner. */
#define AJ_VARIANT_BLOCK_MIN 64
#define AJ_VARIANT_BLOCK_MAX 4096
#define AJ_VARIANT_WG_MIN 32
#define AJ_VARIANT_WG_MAX 1024
#define AJ_VARIANT_EPT_MAX 16
#define AJ_VARIANT_VEC_MAX 8

/* A buffer of this size holds any canonical key with its NUL (the longest is 81 characters). */
#define AJ_VARIANT_TEXT_MAX 128

typedef struct aj_variant {
  aj_kernel_family family;
  aj_dialect dialect;
  adamjit_dtype param_dtype; /* f32 where it does not apply (sqnorm) */
  adamjit_dtype grad_dtype;  /* f32 where it does not apply (quantize, dequantize) */
  int state_bits;            /* fixed by the family: 32 or 8 */
  int block_size;            /* 64..4096, power of two, for adamw8/quantize/dequantize; else 0.
                                adamw8 also 0: one absmax per tensor (block_wise = false) */
  int amsgrad;               /* 0/1, AdamW families only */
  int weight_decay;          /* 0/1, AdamW families only */
  int clipping;              /* 0/1 percentile clipping, AdamW families only */
  int nonfinite_guard;       /* 0/1, all families but dequantize */
  int multi;                 /* 0/1, adamw32 and blockwise adamw8: many tensors per launch through a
                                table (not with clip) */
  int wg_size;               /* power of two, 32..1024 */
  int elems_per_thread;      /* 1..16 */
  int vec_width;             /* 1, 2, 4 or 8, dividing elems_per_thread */
} aj_variant;

/* "adamw32", "adamw8", "quantize", "dequantize", "sqnorm", "clip"; NULL if unknown. */
const char* aj_kernel_family_name(aj_kernel_family family);
/* "opencl", "cuda"; NULL if unknown. */
const char* aj_dialect_name(aj_dialect dialect);

/* Defaults: dialect opencl, f32 params and grads (where they apply), the family's state
 * bits, block 256 where a block applies (bitsandbytes' and the optimizer config's default;
 * adamw8's b=0 is never the default),
 * amsgrad/wd/clip off, the non-finite guard on where it applies, and launch parameters
 * wg=256, ept=4, vec=4 (a float4 per thread and 1024 elements per work-group: a size every
 * OpenCL device and CUDA GPU accepts, and a starting point the tuner improves on; the
 * library launches the update kernels with per-dialect values, core/kernel_plan.c). An
 * unknown family gives the adamw32 defaults with that family recorded, which check refuses. */
void aj_variant_init_default(aj_variant* v, aj_kernel_family family);

/* ADAMJIT_OK if every field is in range and consistent with the family; otherwise
 * ADAMJIT_ERR_INVALID_VALUE (NULL_ARGUMENT for v == NULL) with a message naming the field,
 * its value and its token. ctx may be NULL (the message then goes to adamjit_last_error). */
adamjit_status aj_variant_check(adamjit_context* ctx, const aj_variant* v);

/* Writes the canonical text of a valid variant, NUL-terminated and truncated to `size` like
 * snprintf, and returns its length (without the NUL); buf may be NULL when size is 0.
 * Returns 0 and writes "" (if size > 0) when v is NULL or fails aj_variant_check. */
size_t aj_variant_format(const aj_variant* v, char* buf, size_t size);

/* Parses a key (grammar above) into *out, which is written only on success. Errors:
 * ADAMJIT_ERR_NULL_ARGUMENT (text or out NULL), ADAMJIT_ERR_INVALID_VALUE naming the token. */
adamjit_status aj_variant_parse(adamjit_context* ctx, const char* text, aj_variant* out);

/* XXH3-64 of the canonical text, so that a hash names the same kernel in every process and
 * release that prints the same key. 0 for NULL or an invalid variant. */
uint64_t aj_variant_hash(const aj_variant* v);

/* 1 if a and b name the same kernel (all fields equal), else 0; NULL equals only NULL. */
int aj_variant_equal(const aj_variant* a, const aj_variant* b);

/* The supported semantic space of one family and dialect at the default launch parameters:
 * the cross product of the dimensions that apply to the family. Writes the first
 * min(count, max) variants to out (out may be NULL when max is 0) in a fixed order and
 * returns the count, or -1 for an unknown family or dialect or max < 0. Counts per dialect:
 *   adamw32    3 p x 3 g x 2 amsgrad x 2 wd x 2 nonfinite x 3 of (clip, multi) = 216
 *   adamw8     without multi: 3 p x 3 g x 8 blocks (64..4096, then 0) x 2 amsgrad x 2 wd
 *              x 2 clip x 2 nonfinite = 1152; multi (blockwise, no clip): 3 p x 3 g
 *              x 7 blocks x 2 amsgrad x 2 wd x 2 nonfinite = 504            = 1656
 *   quantize   3 p x 7 blocks x 2 nonfinite                                = 42
 *   dequantize 3 p x 7 blocks                                              = 21
 *   sqnorm     3 g x 2 nonfinite                                           = 6
 *   clip       2 nonfinite                                                 = 2
 * 1943 per dialect, 3886 for both. adamw8 lists the blockwise space first in its old order
 * (p, g, block, then the flags), then the b=0 variants in the same order, then the multi
 * variants in the blockwise order, so the first 1008 are what they were before b=0 existed
 * and the first 1152 what they were before adamw8 had multi. */
int aj_variant_enumerate(aj_kernel_family family, aj_dialect dialect, aj_variant* out, int max);

#endif
