/* Model description files: one tensor per line, "name element-count param-dtype grad-dtype",
 * '#' starts a comment, blank lines are skipped. Used by `adamjit bench --jit` (and the tuner):
 * data/models/llama-7b.tensors is the shipped example. */
#ifndef ADAMJIT_TOOLS_MODEL_FILE_H
#define ADAMJIT_TOOLS_MODEL_FILE_H

#include <adamjit/adamjit.h>
#include <stdint.h>

typedef struct model_tensor {
  char name[128];
  int64_t numel;
  adamjit_dtype param_dtype;
  adamjit_dtype grad_dtype;
} model_tensor;

typedef struct model_file {
  model_tensor* tensors;
  int count;
} model_file;

/* A dtype by its name ("f32", "f16", "bf16"), the first len characters of s; 0 if none. */
int model_dtype_parse(const char* s, size_t len, adamjit_dtype* out);

/* Reads path into *out. On failure prints "adamjit: <path>:<line>: <why>" and returns 0. */
int model_file_read(const char* path, model_file* out);
void model_file_free(model_file* m);

/* adamjit_optimizer_kernel_keys for a tensor of the file (its name, size and dtypes): the
 * kernels opt's backend would launch for it in `dialect`, the update kernel last. */
adamjit_status model_tensor_kernel_keys(adamjit_optimizer* opt, const model_tensor* t, const char* dialect,
                                        char (*keys)[ADAMJIT_KERNEL_KEY_MAX], int max, int* count);

/* The shipped model file `name` (e.g. "llama-7b.tensors"): the installed data directory,
 * else the source tree this tool was built from. Writes the path found into buf; 0 if none. */
int model_file_find(const char* name, char* buf, size_t size);

#endif
