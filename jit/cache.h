/* Kernel caches: compiled kernel binaries in memory and on disk (issue 4, item 5). Internal.
 *
 * What an entry is. A cache entry maps a KEY to a BINARY (opaque bytes: a cubin, PTX or an
 * OpenCL program binary). The key is everything that changes the binary:
 *   - source    the rendered kernel source text (not the variant name: a template edited
 *               in the override directory renders different text under the same name,
 *               and must not hit a stale binary)
 *   - options   the compile options, exactly as passed to the compiler
 *   - arch      the device architecture ("sm_90", or an OpenCL device + driver string)
 *   - compiler  the compiler's identity and version ("nvrtc 13.0", "pocl 6.0 llvm 18")
 *   - version   the library version; NULL means ADAMJIT_VERSION_STRING (the only reason to
 *               set it is a test that plays an older or newer library)
 * A NULL field is the same as "". The fields are serialized into one canonical byte
 * string: a tag ("ajkey1"), then each field in the order above as an 8-byte little-endian
 * length followed by its bytes. Lengths make the encoding unambiguous (source "a" + options
 * "b" never equals source "ab" + options ""), so two keys are equal exactly when their
 * serializations are equal byte for byte.
 *
 * In memory. Each aj_kernel_cache (one per context; not thread-safe, like the context)
 * holds a hash table from serialized key to a private copy of the binary. The table hash is
 * only a bucket index; a hit compares the full serialized key.
 *
 * On disk. The directory is, in order: the `dir` argument of aj_kernel_cache_create (the
 * context's cache_dir option), else $ADAMJIT_CACHE_DIR, else $XDG_CACHE_HOME/adamjit (only
 * an absolute XDG_CACHE_HOME counts, as the XDG spec says), else $HOME/.cache/adamjit. It
 * is created with mode 0700, parents as needed. A directory that is writable by group or
 * others, or not owned by the effective user, is refused: anyone who can write there could
 * plant a binary that we would then run on the GPU. Refusal turns the disk cache off with
 * one WARN through aj_log naming the directory and the reason; the memory cache keeps
 * working. Failing to create the directory does the same.
 *
 * One file per entry, named "ajk-<32 hex digits>.bin" where the digits are the XXH3-128 of
 * the serialized key. The name only finds the file: a lookup reads the key stored inside
 * and compares it in full with the wanted key, so a hash collision (or a file planted under
 * the wrong name) is a miss, never a wrong kernel. File layout, integers little-endian:
 *     8 bytes   magic "AJKCACHE"
 *     u32       format version (1)
 *     u32       0 (reserved)
 *     u64       K = length of the serialized key, then K bytes of it
 *     u64       B = length of the binary, then B bytes of it
 *     u64       XXH3-64 of every byte before it
 * and nothing after: the file size must be exactly 40 + K + B.
 *
 * Writes are atomic: the entry is written to a temporary file in the same directory
 * (".ajk-<hex>.tmp-XXXXXX" from mkstemp, mode 0600), fsync'ed and renamed over the final
 * name. Readers therefore see either the old complete file or the new complete file, never
 * a partial one, and processes storing the same entry at once are safe (the last rename
 * wins; both wrote the same bytes anyway). The directory itself is not fsync'ed: after a
 * crash an entry may be missing, which is only a miss.
 *
 * A damaged entry is a miss and is never loaded: a file that is truncated or too long, has
 * the wrong magic or format version, fails the checksum, or holds another key. Each of those
 * is logged at WARN (they do not happen in normal operation) and the next store for that key
 * replaces the file. A file we cannot open for reading (permissions) is a miss with a WARN
 * as well; a file that does not exist is a plain miss and is not logged. Disk write failures
 * are logged at WARN and do not fail the store: the binary is in memory, and the cache is
 * an optimisation, never a reason for a step to fail.
 *
 * No size limit or eviction yet: entries stay until aj_kernel_cache_clear(..DISK) or until
 * the user deletes them. Clearing removes only our entry files and our own temporary files
 * (names as above, exactly); any other file in the directory is left alone.
 */
#ifndef ADAMJIT_JIT_CACHE_H
#define ADAMJIT_JIT_CACHE_H

#include <stddef.h>

#include "adamjit/adamjit.h"

typedef struct aj_cache_key {
  const char* source;
  const char* options;
  const char* arch;
  const char* compiler;
  const char* version; /* NULL: ADAMJIT_VERSION_STRING */
} aj_cache_key;

typedef enum aj_cache_where {
  AJ_CACHE_MISS = 0,
  AJ_CACHE_MEMORY = 1,
  AJ_CACHE_DISK = 2
} aj_cache_where;

/* Flags of aj_kernel_cache_clear. */
#define AJ_CACHE_CLEAR_MEMORY 1u
#define AJ_CACHE_CLEAR_DISK 2u

typedef struct aj_kernel_cache aj_kernel_cache;

/* Serializes a key as described above into a malloc'ed buffer (*out, *size). */
adamjit_status aj_cache_key_serialize(adamjit_context* ctx, const aj_cache_key* key, unsigned char** out,
                                      size_t* size);

/* Creates a cache whose messages go to ctx (which must outlive it). dir may be NULL for the
 * default directory chain. A disk cache that cannot be used is not an error (see above);
 * errors are only bad arguments and out-of-memory. */
adamjit_status aj_kernel_cache_create(adamjit_context* ctx, const char* dir, aj_kernel_cache** out);
/* NULL-safe. Never touches the disk. */
void aj_kernel_cache_destroy(aj_kernel_cache* cache);

/* The disk cache directory in use, or NULL when the disk cache is off. */
const char* aj_kernel_cache_dir(const aj_kernel_cache* cache);

/* Looks the key up in memory, then on disk (a disk hit is copied into memory). On a hit,
 * *binary points at the cache's copy, valid until the next store or clear on this cache or
 * its destruction; on a miss *binary is NULL and *size 0. A miss is ADAMJIT_OK. where may
 * be NULL. */
adamjit_status aj_kernel_cache_lookup(aj_kernel_cache* cache, const aj_cache_key* key, const void** binary,
                                      size_t* size, aj_cache_where* where);

/* Stores a copy of binary[size] (size > 0) under key in memory and, when the disk cache is
 * on, on disk (replacing any entry there). Fails only for bad arguments or out-of-memory. */
adamjit_status aj_kernel_cache_store(aj_kernel_cache* cache, const aj_cache_key* key, const void* binary,
                                     size_t size);

/* Clears the memory cache and/or the disk directory (AJ_CACHE_CLEAR_* flags). Clearing the
 * disk when the disk cache is off, or failing to delete an entry, is ADAMJIT_ERR_CACHE with
 * the reason in the context message (the memory part is still done). */
adamjit_status aj_kernel_cache_clear(aj_kernel_cache* cache, unsigned flags);

/* Writes the path of key's entry file into buf (for tools and tests). ADAMJIT_ERR_CACHE
 * when the disk cache is off, ADAMJIT_ERR_INVALID_SIZE when buf is too small. */
adamjit_status aj_kernel_cache_entry_path(aj_kernel_cache* cache, const aj_cache_key* key, char* buf,
                                          size_t size);

#endif
