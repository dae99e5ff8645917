/* The context side of the tuning databases (core/tuning.c; the format is jit/tuning.h):
 * what the planner asks at every step, and the context's lifetime hooks. */
#ifndef ADAMJIT_CORE_TUNING_H
#define ADAMJIT_CORE_TUNING_H

#include "core/internal.h"
#include "jit/variant.h"

/* Gives u (an update kernel of the context's dialect, launch parameters at the defaults)
 * the launch parameters of the first match in the lookup order of adamjit.h: an override,
 * then the databases (not when the context's use_tuning is 0). Returns the level that
 * answered (DEFAULT: u unchanged) and sets *source to the database's path, "built-in" or ""
 * (a string that lives as long as the context). Never fails: a database that cannot be
 * used was logged when it was loaded, and lookups then go on without it. */
adamjit_tuning_level aj_tuning_apply(adamjit_context* ctx, aj_variant* u, int64_t numel, const char** source);

/* The context's dialect, or -1 on the CPU backend. */
int aj_context_dialect(const adamjit_context* ctx);

void aj_tuning_free(struct aj_tuning* t); /* NULL-safe */

#endif
