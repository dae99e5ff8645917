/* Quantization block sizes chosen per tensor (ADAMJIT_BLOCK_POLICY_*): the MEMORY rule at
 * registration, and the ERROR policy's measurement at a tensor's first step, with the
 * all-or-nothing resizing of its absmax buffers that the step needs around it. */
#ifndef ADAMJIT_CORE_BLOCK_POLICY_H
#define ADAMJIT_CORE_BLOCK_POLICY_H

#include "core/internal.h"

#define AJ_BLOCK_MIN 64
#define AJ_BLOCK_MAX 4096
#define AJ_BLOCK_SIZES 7 /* AJ_BLOCK_MIN << k, k < AJ_BLOCK_SIZES */

/* adamjit_optimizer_config.block_error_max by default. The error is dominated by m's (the
 * signed map's top decade has 64 steps), grows slowly with the block, and is relative to
 * the norm, so the largest elements weigh most. Measured once on 2^20 first-step
 * gradients by a scratch program around aj_block_errors (not in the repository; the step
 * logs these errors at INFO level for every tensor it measures, and test_block_policy
 * checks the choices they lead to). m's error at blocks 64 / 256 / 512 / 4096: N(0,1)
 * 0.0095 / 0.0109 / 0.0114 / 0.0131; uniform 0.0066 throughout; Laplace 0.0109 / 0.0130;
 * Student-t(3) 0.0113 / 0.0143; N(0,1) with 1% of the elements x10 0.0111 / 0.0151; with
 * 0.1% x30 0.0087 / 0.0114 (at 128: 0.0098). 0.011 thus keeps 256 for Gaussian gradients
 * (128..1024 for tensors of a few thousand elements, where the estimate is noisier), 4096
 * for uniform ones, and 64..128 for heavy tails and moderate outliers. Rare huge outliers
 * dominate the norm and leave larger blocks: the measure is an RMS error, not a worst
 * case. */
#define AJ_BLOCK_ERROR_MAX_DEFAULT 0.011

/* The MEMORY policy: the smallest block whose 4 * ceil(numel / block) absmax bytes are at
 * most overhead_max * numel (one state's code bytes); AJ_BLOCK_MAX when none is. */
int aj_block_for_memory(int64_t numel, double overhead_max);

/* The relative RMS round-trip error (||dequantized - x|| / ||x||, 0 for x = 0) of t's
 * first-step m = (1 - beta1) g (signed map) and v = (1 - beta2) g^2 (unsigned map) at each
 * block AJ_BLOCK_MIN << k, from the gradient now in t->grad (non-finite elements count as
 * 0). Reads the gradient through the backend in chunks; the host quantizer does the rest. */
adamjit_status aj_block_errors(adamjit_context* ctx, const aj_tensor* t, const adamjit_hparams* hp,
                               double err_m[AJ_BLOCK_SIZES], double err_v[AJ_BLOCK_SIZES]);

/* The ERROR policy's choice: the largest block whose larger error is <= error_max, else
 * AJ_BLOCK_MIN. */
int aj_block_for_error(const double err_m[AJ_BLOCK_SIZES], const double err_v[AJ_BLOCK_SIZES], double error_max);

/* The block changes of one step: for each tensor whose block was pending, the new absmax
 * buffers (before aj_block_apply) or the replaced ones (after). */
typedef struct aj_block_change {
  int tensor;
  int old_block, new_block;
  adamjit_mem absmax[3]; /* absmax1..3; [2] only for a tensor that keeps a running maximum */
  double err[AJ_BLOCK_SIZES]; /* the larger of m's and v's error per block, for the log */
} aj_block_change;

typedef struct aj_block_changes {
  aj_block_change* c;
  int n;
} aj_block_changes;

/* Measures every tensor whose block is pending and allocates zeroed absmax buffers for the
 * chosen blocks; the optimizer is not changed (on failure nothing stays allocated). Runs
 * after the step has given amsgrad tensors their running maximum, so absmax3 is resized
 * with the others. */
adamjit_status aj_block_measure(adamjit_optimizer* opt, aj_block_changes* out);
/* Installs the measured blocks (cannot fail): the tensors' blocks are final from now on. */
void aj_block_apply(adamjit_optimizer* opt, aj_block_changes* ch);
/* Undoes aj_block_apply after a failed step: the provisional blocks and their buffers return. */
void aj_block_revert(adamjit_optimizer* opt, aj_block_changes* ch);
/* Frees the buffers ch holds (the replaced ones once applied, the new ones otherwise). */
void aj_block_changes_free(adamjit_context* ctx, aj_block_changes* ch);

#endif
