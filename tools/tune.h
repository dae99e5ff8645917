/* Pieces of `adamjit tune` (tools/cmd_tune.c): the data and CPU reference every candidate
 * is checked against (tune_check.c) and the journal that makes a run resumable
 * (tune_journal.c). */
#ifndef ADAMJIT_TOOLS_TUNE_H
#define ADAMJIT_TOOLS_TUNE_H

#include <adamjit/adamjit.h>
#include <cjson/cJSON.h>
#include <stdint.h>

#include "cli.h"

/* Steps a candidate takes before its results are compared with the reference: enough for
 * the bias corrections and the state to matter, with a different gradient each step (the
 * second one holds NaN and Inf, so the non-finite guard and its count are checked too). */
#define TUNE_CHECK_STEPS 3

/* ------------------------------------------------------------------ tune_check.c */

/* A task's test tensor: seeded params and per-step grads in the tensor's dtypes, and what
 * the CPU backend makes of them. */
typedef struct tune_reference {
  const cli_variant* variant;
  int64_t n;
  adamjit_dtype p, g;
  void* init;                             /* n params */
  void* grads[TUNE_CHECK_STEPS];          /* n grads per step */
  uint64_t nonfinite[TUNE_CHECK_STEPS];   /* what each step counted */
  void* params;                           /* n params after the steps */
  float* state[3];                        /* m, v and (amsgrad) vmax after the steps */
  int state_bits;                         /* what the tensor is stored with: 32 or 8 */
} tune_reference;

/* The optimizer configuration of a variant as the tuner steps it (a learning rate large
 * enough that the params move visibly in a few steps). */
void tune_config(const cli_variant* v, adamjit_optimizer_config* cfg);

/* The optimizer every side uses: tune_config and one tensor on param/grad. */
adamjit_status tune_optimizer_open(adamjit_context* ctx, const cli_variant* v, adamjit_mem param, adamjit_mem grad,
                                   int64_t n, adamjit_dtype p, adamjit_dtype g, adamjit_optimizer** out);

/* Fills the data and steps it on the CPU context. Reports failures (cli_*) and returns 0. */
int tune_reference_make(tune_reference* r, adamjit_context* cpu, const cli_variant* v, int64_t n, adamjit_dtype p,
                        adamjit_dtype g);
void tune_reference_free(tune_reference* r);

/* Writes the initial params to param, then steps opt TUNE_CHECK_STEPS times with the
 * reference's grads written to grad; nonfinite gets each step's count. */
adamjit_status tune_reference_steps(const tune_reference* r, adamjit_context* ctx, adamjit_optimizer* opt,
                                    adamjit_mem param, adamjit_mem grad, uint64_t nonfinite[TUNE_CHECK_STEPS]);

/* Whether opt's tensor 0 (params in param) agrees with the reference within SPEC 7: 1 if so,
 * else 0 with the first disagreement in why. Returns -1 if reading failed (why says so). */
int tune_reference_compare(const tune_reference* r, adamjit_context* ctx, adamjit_optimizer* opt, adamjit_mem param,
                           const uint64_t nonfinite[TUNE_CHECK_STEPS], char* why, size_t size);

/* The rule tune_reference_compare applies, for the report. */
const char* tune_reference_rule(void);

/* ------------------------------------------------------------------ tune_journal.c */

/* tune-journal.json in the cache directory: every measured candidate (its time, or why it
 * was rejected) and every recorded task. A candidate is keyed by device, kernel, elements
 * timed, launch parameters and a hash of the rendered source (so an edited template or a
 * --template-dir is never mistaken for an earlier measurement); a record by device, kernel
 * and size bucket. Rewritten atomically after
 * every change, so an interrupted run loses at most the candidate it was measuring. */
typedef struct tune_journal {
  char path[4096];
  cJSON* root;
} tune_journal;

typedef struct tune_entry_id {
  const char* device;
  const char* kernel; /* the key without launch tokens */
  const char* bucket;
  int64_t elements;   /* elements timed */
} tune_entry_id;

/* Opens (or starts) the journal in dir. An unreadable or malformed journal is reported and
 * replaced; returns 0 only when the directory cannot take the file. */
int tune_journal_open(tune_journal* j, const char* dir);
void tune_journal_close(tune_journal* j);
/* Drops the task's record and every candidate of its measurement (--restart). */
void tune_journal_forget(tune_journal* j, const tune_entry_id* id);
/* 1 with *seconds (> 0) or reason (rejected: *seconds = 0) if the candidate is journalled. */
int tune_journal_find(const tune_journal* j, const tune_entry_id* id, const char* launch, const char* source,
                      double* seconds, char* reason, size_t size);
/* Adds or replaces a candidate (reason NULL: timed) and saves; 0 if the file cannot be written. */
int tune_journal_add(tune_journal* j, const tune_entry_id* id, const char* launch, const char* source, double seconds,
                     const char* reason);
/* The key recorded for the task (with the times recorded), or NULL. */
const char* tune_journal_recorded(const tune_journal* j, const tune_entry_id* id, double* seconds,
                                  double* default_seconds);
int tune_journal_set_recorded(tune_journal* j, const tune_entry_id* id, const char* key, double seconds,
                              double default_seconds);

#endif /* ADAMJIT_TOOLS_TUNE_H */
