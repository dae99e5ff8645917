/* A fresh PoCL kernel cache for one OpenCL test: PoCL keeps compiled kernels under
 * ~/.cache/pocl, so a scratch directory makes every build a real one and leaves nothing
 * behind. POCL_CACHE_DIR must be set before PoCL loads, i.e. before the first OpenCL call. */
#ifndef ADAMJIT_TESTS_POCL_SCRATCH_H
#define ADAMJIT_TESTS_POCL_SCRATCH_H

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int pocl_scratch_remove_entry(const char* path, const struct stat* st, int flag, struct FTW* ftw) {
  (void)st, (void)flag, (void)ftw;
  return remove(path);
}

/* dir_template: a writable "name_XXXXXX" in the current directory. Returns 0 on success. */
static inline int pocl_scratch_begin(char* dir_template) {
  if (!mkdtemp(dir_template)) {
    fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
    return -1;
  }
  char cwd[4096], path[4200];
  if (!getcwd(cwd, sizeof cwd)) return -1;
  snprintf(path, sizeof path, "%s/%s", cwd, dir_template);
  setenv("POCL_CACHE_DIR", path, 1);
  return 0;
}

/* Removes the scratch directory and everything PoCL put in it. */
static inline void pocl_scratch_end(const char* dir) { nftw(dir, pocl_scratch_remove_entry, 16, FTW_DEPTH | FTW_PHYS); }

#endif
