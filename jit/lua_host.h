/* The sandboxed Lua 5.4 host that renders kernel templates into kernel source. Internal.
 *
 * A template is a text chunk of Lua. Rendering runs it once and the kernel source is the
 * concatenation of everything it passed to emit()/emitf(), followed by the string the chunk
 * returns, if it returns one (returning nothing is usual; returning anything other than a
 * string or nil is an error).
 *
 * What a template sees (its whole _ENV; there is nothing else, not even _G):
 *   assert error ipairs pairs next select tonumber tostring type pcall rawequal rawlen
 *   rawget rawset setmetatable getmetatable unpack (= table.unpack) _VERSION
 *   string  the string library without string.dump
 *   math    the math library without math.random and math.randomseed (a render must be a
 *           pure function of template and params: the kernel caches key on the source)
 *   table   the table library
 *   load(text [, chunkname [, mode [, env]]])
 *           compiles a Lua text chunk like the standard load, but only from a string, only
 *           in mode "t" (asking for "b" or "bt" is an error), and with this render's
 *           environment as the default env. Syntax errors return nil, message.
 *   params  a fresh table per render holding the caller's aj_lua_param values: strings,
 *           numbers (floats), integers and booleans, by name.
 *   emit(...)
 *           appends each argument (strings or numbers; numbers print as tostring does, so
 *           an integer prints "256" and a float "256.0") to the output.
 *   emitf(text [, values])
 *           appends `text` with every ${name} replaced by tostring(values[name]); values
 *           defaults to params. Names are [A-Za-z_][A-Za-z0-9_]*. "$${" writes a literal
 *           "${". A name whose value is nil, or is not a string, number or boolean, is an
 *           error. Booleans print "true"/"false".
 *
 * Semantics worth knowing: pairs() order is unspecified (the string hash seed differs
 * between renders), so sort keys wherever the output depends on the order; pcall cannot
 * catch the instruction or memory limit (they end the render); setmetatable refuses a
 * metatable with a __gc field (finalizers run with hooks disabled, so they could loop
 * forever past the instruction limit).
 *
 * Isolation: every render runs in a fresh lua_State created for it and closed after it, so
 * nothing a template does (changing string.*, globals, metatables) reaches another render,
 * and a render that failed in any way (limit, memory, error) leaves nothing behind. The
 * cost is one state creation per render: about 20 us for an empty template (35 us for a
 * small one) measured by tests/test_lua_sandbox.c on the 2-core x86-64 dev machine, small
 * next to the 2 ms budget of a warm kernel load. A state kept per host would save that but
 * would need its library tables, string metatable and globals restored after every render
 * and after every memory error; a fresh state gets the isolation for free.
 *
 * Limits per render (aj_lua_limits; defaults below): an instruction budget checked by a
 * count hook every AJ_LUA_HOOK_INTERVAL VM instructions (endless loops); a memory cap
 * enforced by the state's allocator (huge strings, runaway tables); a cap on the output
 * size. Known gap: work done inside one C library call is not counted as instructions, so
 * a pathological backtracking pattern in string.find/match/gsub can run long; its memory
 * is still capped. Templates come from the library or a directory the user chose, so the
 * sandbox guards against mistakes and accidents rather than a determined adversary.
 *
 * Errors: every failure caused by the template returns ADAMJIT_ERR_TEMPLATE with a message
 * in the context that starts "template '<name>': " followed by Lua's message, which names
 * the chunk as "<name>:<line>:" (the chunk is loaded as "@<name>"), and for run-time errors
 * a stack traceback. Memory-limit failures read "template exceeded the memory limit (N
 * bytes)"; they name the template but not the line, because Lua raises memory errors
 * without running the message handler. Failures of the host itself (out of memory before
 * the template ran) return ADAMJIT_ERR_OUT_OF_MEMORY; bad arguments the usual statuses.
 */
#ifndef ADAMJIT_JIT_LUA_HOST_H
#define ADAMJIT_JIT_LUA_HOST_H

#include <stddef.h>
#include <stdint.h>

#include "adamjit/adamjit.h"

#define AJ_LUA_HOOK_INTERVAL 1000
#define AJ_LUA_DEFAULT_MAX_INSTRUCTIONS 50000000ull    /* about 0.2 s of Lua on one core */
#define AJ_LUA_DEFAULT_MAX_MEMORY ((size_t)64 << 20)  /* bytes the Lua state may hold */
#define AJ_LUA_DEFAULT_MAX_OUTPUT ((size_t)16 << 20)  /* bytes of rendered source */

typedef struct aj_lua_host aj_lua_host;

typedef struct aj_lua_limits {
  uint64_t max_instructions; /* VM instructions per render, counted in steps of AJ_LUA_HOOK_INTERVAL */
  size_t max_memory;         /* bytes allocated by the Lua state at any time */
  size_t max_output;         /* bytes of rendered source */
} aj_lua_limits;

typedef enum aj_lua_param_kind {
  AJ_LUA_STRING = 0,  /* s, NUL-terminated */
  AJ_LUA_NUMBER = 1,  /* n, a Lua float */
  AJ_LUA_INTEGER = 2, /* i, a Lua integer (prints without ".0": use it for sizes and counts) */
  AJ_LUA_BOOLEAN = 3  /* b, 0 or not */
} aj_lua_param_kind;

typedef struct aj_lua_param {
  const char* name; /* the key in `params`; names must be distinct */
  aj_lua_param_kind kind;
  const char* s;
  double n;
  int64_t i;
  int b;
} aj_lua_param;

void aj_lua_limits_default(aj_lua_limits* limits);

/* ctx receives the error messages of this host's renders (may be NULL: then they go to
 * adamjit_last_error()). The host keeps ctx; destroy the host first. */
adamjit_status aj_lua_host_create(adamjit_context* ctx, aj_lua_host** out);
void aj_lua_host_destroy(aj_lua_host* host); /* NULL-safe */

/* Replaces the limits (every field must be > 0). */
adamjit_status aj_lua_host_set_limits(aj_lua_host* host, const aj_lua_limits* limits);
void aj_lua_host_get_limits(const aj_lua_host* host, aj_lua_limits* limits);

/* Renders template_text (len bytes; it need not be NUL-terminated) named template_name
 * (used in messages; NULL reads "template"). On success *out_source is a NUL-terminated
 * malloc'ed string of *out_len bytes (plus the NUL) that the caller frees with free(). On
 * failure *out_source is NULL and *out_len 0. */
adamjit_status aj_lua_render(aj_lua_host* host, const char* template_name, const char* template_text, size_t len,
                             const aj_lua_param* params, int n_params, char** out_source, size_t* out_len);

/* What the last render (successful or not) used: VM instructions (a multiple of
 * AJ_LUA_HOOK_INTERVAL, rounded down) and the peak bytes held by its Lua state. */
void aj_lua_host_last_usage(const aj_lua_host* host, uint64_t* instructions, size_t* peak_memory);

#endif
