/* Tuning databases: per-device launch parameters of the update kernels (issue 7; the public
 * side is "tuning" in adamjit.h, the context side core/tuning.c). Internal.
 *
 * File format (JSON, UTF-8):
 *
 *   {"adamjit_tuning": 1,
 *    "entries": [
 *      {"dialect": "opencl", "architecture": "Portable Computing Language cpu",
 *       "kernel": "adamw32/opencl/p=f32/g=f32/wd/nonfinite", "bucket": "1e7",
 *       "wg": 64, "ept": 1, "vec": 1,
 *       "seconds": 0.0123, "default_seconds": 0.0131, "measured": true, "note": "..."}]}
 *
 * "adamjit_tuning" is the format marker and version (this library reads 1). Per entry:
 *   dialect       "opencl" or "cuda"; the kernel's dialect must be the same.
 *   vendor, architecture, device
 *                 the device identity (adamjit_tuning_device). Which of them are present
 *                 gives the entry's level: "device" = device level (vendor and
 *                 architecture, if also given, must match too), else "architecture" =
 *                 architecture level (vendor must match if given), else "vendor" = vendor
 *                 level. Matching is exact string equality with the values
 *                 adamjit_tuning_device_info reports (which are trimmed of surrounding
 *                 white space). An entry with none of the three is refused.
 *   kernel        a variant key (jit/variant.h) without launch tokens: the launch lives in
 *                 wg/ept/vec, and a key carrying wg=/ept=/vec= as well would say it twice,
 *                 so such an entry is refused rather than one of the two silently winning.
 *                 Only the update kernels are tuned (adamw32, adamw8 blockwise and b=0);
 *                 sqnorm and clip are small and keep their defaults, so entries for other
 *                 families are refused. "multi" kernels (many small tensors per launch,
 *                 backends/gpu/gpu_group.h) launch with the parameters their tensors'
 *                 update kernel got, so a multi key is refused too: tune the plain kernel.
 *   bucket        optional: "1e<k>" (k = 0..18) for tensors of [10^k, 10^(k+1)) elements;
 *                 absent = every size.
 *   wg, ept, vec  required integers, valid for the kernel (aj_variant_check with them set:
 *                 wg a power of two in 32..1024, ept 1..16, vec 1/2/4/8 dividing ept).
 *   seconds, default_seconds   optional numbers >= 0 (what `adamjit tune` measured).
 *   measured      optional boolean; note, library: optional strings. Other members are
 *                 ignored, so that newer writers can add information.
 * Two entries of the same identity, kernel and bucket are refused (which one would win?).
 *
 * A database is taken whole or not at all: any error (unreadable file, bad JSON, wrong
 * marker or version, a bad entry) rejects the file with a reason naming the line (JSON
 * errors) or the entry index, and lookups go on with the other databases. */
#ifndef ADAMJIT_JIT_TUNING_H
#define ADAMJIT_JIT_TUNING_H

#include <stddef.h>
#include <stdint.h>

#include "adamjit/adamjit.h"
#include "jit/variant.h"

#define AJ_TUNING_FORMAT 1
/* Largest database file read (a few hundred bytes per entry). */
#define AJ_TUNING_FILE_MAX ((size_t)16 << 20)
/* bucket value of an entry for every size */
#define AJ_TUNING_ANY_SIZE (-1)

typedef struct aj_tuning_entry {
  adamjit_tuning_level level; /* VENDOR, ARCHITECTURE or DEVICE */
  aj_variant kernel;          /* with the entry's wg/ept/vec */
  uint64_t hash;              /* aj_tuning_kernel_hash(&kernel) */
  int bucket;                 /* k of "1e<k>", or AJ_TUNING_ANY_SIZE */
  /* "" where absent */
  char vendor[128];
  char architecture[128];
  char device[256];
} aj_tuning_entry;

typedef struct aj_tuning_db {
  aj_tuning_entry* entries;
  int n;
} aj_tuning_db;

/* The hash of what a kernel computes, its launch parameters left out (replaced by fixed
 * valid values): entries and lookups of the same kernel meet under it. 0 if v is invalid. */
uint64_t aj_tuning_kernel_hash(const aj_variant* v);
/* 1 if a and b are the same kernel apart from their launch parameters. */
int aj_tuning_same_kernel(const aj_variant* a, const aj_variant* b);

/* The size bucket of numel (>= 1): k with 10^k <= numel < 10^(k+1). */
int aj_tuning_bucket(int64_t numel);

/* Writes the canonical key of v without its launch tokens ("adamw32/opencl/p=f32/g=f32/
 * nonfinite"); returns its length, 0 for an invalid v. */
size_t aj_tuning_kernel_text(const aj_variant* v, char* buf, size_t size);

/* 0 when v is a kernel the databases tune; otherwise writes why not to why. */
int aj_tuning_check_family(const aj_variant* v, char* why, size_t why_size);

/* Parses and validates a whole database from `text` (len bytes, need not be NUL-terminated).
 * On success *out holds every entry (aj_tuning_db_free it). On failure returns
 * ADAMJIT_ERR_TUNING_DB (or ADAMJIT_ERR_OUT_OF_MEMORY) with the reason in why and *out
 * empty. Nothing is logged. */
adamjit_status aj_tuning_db_parse(const char* text, size_t len, aj_tuning_db* out, char* why, size_t why_size);

/* Reads a file into a malloc'd NUL-terminated buffer. ADAMJIT_ERR_IO with the reason in why
 * (*missing = 1 when the file does not exist), ADAMJIT_ERR_TUNING_DB when it is larger than
 * AJ_TUNING_FILE_MAX, ADAMJIT_ERR_OUT_OF_MEMORY. */
adamjit_status aj_tuning_read_file(const char* path, char** text, size_t* len, int* missing, char* why,
                                   size_t why_size);

void aj_tuning_db_free(aj_tuning_db* db); /* NULL-safe; leaves it empty */

/* 1 if entry e applies to the device id (dialect and the identity fields the entry gives). */
int aj_tuning_entry_matches(const aj_tuning_entry* e, const adamjit_tuning_device* id);

/* A device-level entry to merge into a database file. */
typedef struct aj_tuning_record {
  const adamjit_tuning_device* id;
  const aj_variant* kernel; /* with the launch parameters to record */
  int bucket;               /* k, or AJ_TUNING_ANY_SIZE */
  double seconds, default_seconds;
  const char* library;      /* version string */
} aj_tuning_record;

/* The text of database `old_text` (NULL or "" for a new one) with rec merged in: an entry of
 * the same dialect, vendor, architecture, device, kernel and bucket is replaced in place,
 * else rec is appended. Other entries keep every member they had. old_text must pass
 * aj_tuning_db_parse (the caller checks, so that a malformed file is reported, never
 * overwritten). *out is malloc'd and NUL-terminated. */
adamjit_status aj_tuning_db_merge(const char* old_text, const aj_tuning_record* rec, char** out, char* why,
                                  size_t why_size);

/* Writes text to path atomically: a temporary file in the same directory, fsync'ed, renamed
 * over path. ADAMJIT_ERR_IO with the reason in why. */
adamjit_status aj_tuning_write_atomic(const char* path, const char* text, char* why, size_t why_size);

/* The database built into the library (data/tuning/builtin.json), NUL-terminated. */
extern const char aj_builtin_tuning_json[];
extern const size_t aj_builtin_tuning_json_len;

#endif
