/* The OpenCL backend against the CPU backend (SPEC 7): the standard parity cases of
 * parity_harness.h (every param/grad dtype pair, 32- and 8-bit state, amsgrad, block sizes,
 * block_wise = 0, ragged tails, paged and unpaged state, non-finite gradients and
 * percentile clipping, over many steps), bit-identical where no clipping is involved.
 * Skipped (77) without an OpenCL device. */
#define _GNU_SOURCE /* mkdtemp, nftw (pocl_scratch.h) */
#include <stdio.h>

#include "adamjit/adamjit.h"
#include "halfprec.h"
#include "harness.h"
#include "parity_harness.h"
#include "pocl_scratch.h"

int main(void) {
  char scratch[] = "opencl_parity_pocl_XXXXXX";
  if (pocl_scratch_begin(scratch)) return 1;
  if (adamjit_backend_probe(ADAMJIT_BACKEND_OPENCL) != ADAMJIT_OK) {
    printf("skipped: %s\n", adamjit_last_error());
    pocl_scratch_end(scratch);
    return TEST_SKIP_CODE;
  }
  static char names[PARITY_MAX_CASES][96];
  static pcase cases[PARITY_MAX_CASES];
  int nc = parity_standard_cases(cases, names);
  parity_run_all(cases, nc, ADAMJIT_BACKEND_OPENCL);
  int rc = test_finish("test_opencl_parity");
  pocl_scratch_end(scratch);
  return rc;
}
