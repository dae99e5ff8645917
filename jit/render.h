/* Rendering a variant key into kernel source (issue 4, item 2). Internal.
 *
 * The source of a variant is the render of kernel_templates/prelude.lua followed by the
 * render of the family's body (adamw32.lua, adamw8.lua, quantize.lua, dequantize.lua,
 * sqnorm.lua, clip.lua), both with the same params. Two renders rather than one template loading
 * another: each template stays a plain chunk with its own file name and line numbers in
 * error messages, and the sandbox needs no file access at all.
 *
 * Where the template text comes from, first match wins, per template file:
 *   1. override_dir (the argument; NULL or "" skips it), then
 *   2. $ADAMJIT_TEMPLATE_PATH (ignored when empty or in set-uid programs),
 *   3. the table embedded at build time from kernel_templates/ (cmake/embed_templates.cmake).
 * A directory that lacks a file falls through to the next source, so an override directory
 * may hold only the template being edited. A file that exists but cannot be read is an
 * error (ADAMJIT_ERR_IO), never silently replaced by the embedded copy.
 *
 * params every template sees (see jit/lua_host.h for the sandbox):
 *   family, dialect, kernel_name   strings ("adamw32", "cuda", "aj_adamw32")
 *   p, g                           dtype names "f32" / "f16" / "bf16"
 *   bits, block, wg, ept, vec      integers (block is 0 where it does not apply, and for
 *                                  adamw8 with one absmax per tensor)
 *   amsgrad, wd, clip, nonfinite, multi   booleans
 *   s_beta1 ... s_inv_sqrt_c2      integers: the indices of the per-step scalar buffer below
 * The kernel arguments of each family are documented at the top of its template.
 */
#ifndef ADAMJIT_JIT_RENDER_H
#define ADAMJIT_JIT_RENDER_H

#include <stddef.h>

#include "adamjit/adamjit.h"
#include "jit/lua_host.h"
#include "jit/variant.h"

/* The per-step scalar buffer the AdamW kernels read (float[AJ_STEP_SCALAR_COUNT] in device
 * memory), so a scheduler changing lr, or a new step, needs no recompile. */
enum {
  AJ_STEP_BETA1 = 0,
  AJ_STEP_BETA2 = 1,
  AJ_STEP_EPS = 2,
  AJ_STEP_DECAY = 3,      /* 1 - lr * weight_decay */
  AJ_STEP_SIZE = 4,       /* lr / (1 - beta1^t) */
  AJ_STEP_INV_SQRT_C2 = 5 /* 1 / sqrt(1 - beta2^t) */
};
#define AJ_STEP_SCALAR_COUNT 6

/* An embedded template: name is the file name ("adamw32.lua"). */
typedef struct aj_embedded_template {
  const char* name;
  const char* text;
  size_t length;
} aj_embedded_template;

/* The table generated at build time, and its size. */
extern const aj_embedded_template aj_embedded_templates[];
extern const size_t aj_embedded_template_count;

/* The template file of a family's body ("adamw32.lua", ...); NULL for an unknown family. */
const char* aj_render_template_file(aj_kernel_family family);

/* The kernel entry point of a family ("aj_adamw32", "aj_adamw8", "aj_quantize",
 * "aj_dequantize", "aj_sqnorm", "aj_clip"); NULL for NULL or an unknown family. Every
 * variant is its own program, so one name per family is enough, except for the programs
 * with several kernels below; for them this is the name of the kernel that does the
 * family's work (the update, for adamw8 with b=0). */
const char* aj_render_kernel_name(const aj_variant* v);

/* The kernels of an adamw8 program with b=0 (one absmax per tensor), in launch order; the
 * arguments and launch geometry of each are documented at the top of adamw8.lua. */
#define AJ_KERNEL_NAME_ADAMW8_ABSMAX "aj_adamw8_absmax" /* pass 1: per-group maxima */
#define AJ_KERNEL_NAME_ADAMW8_REDUCE "aj_adamw8_reduce" /* maxima folded to newmax */
#define AJ_KERNEL_NAME_ADAMW8_UPDATE "aj_adamw8"        /* pass 2: update + requantize */
#define AJ_KERNEL_NAME_ADAMW8_COMMIT "aj_adamw8_commit" /* absmax[0] = newmax */
/* blockwise adamw8 multi, opencl, own blocks (vec=1): the code table, built once per launch */
#define AJ_KERNEL_NAME_ADAMW8_TABLE "aj_adamw8_table"

/* Every kernel entry point in the program of v, in launch order: writes the first
 * min(count, max) names to names (static strings; names may be NULL when max is 0) and
 * returns the count: 4 for adamw8 with b=0 (the names above), 2 for adamw8 multi in the
 * opencl dialect with vec=1 (the table, then the update), 1 for every other valid variant;
 * -1 for NULL, an invalid variant or max < 0. */
int aj_render_kernel_names(const aj_variant* v, const char** names, int max);

/* Renders v (which must pass aj_variant_check) with host. On success *source is a malloc'ed
 * NUL-terminated string of *len bytes that the caller frees. Errors: NULL_ARGUMENT,
 * INVALID_VALUE (the variant), IO (an override file that exists but cannot be read),
 * TEMPLATE (the message names the template file and line, see jit/lua_host.h; also a
 * template missing from every source), OUT_OF_MEMORY. On failure *source is NULL, *len 0. */
adamjit_status aj_render_variant(adamjit_context* ctx, aj_lua_host* host, const aj_variant* v,
                                 const char* override_dir, char** source, size_t* len);

#endif
