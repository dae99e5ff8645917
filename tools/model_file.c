/* Model description files (tools/model_file.h). */
#include "model_file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

int model_dtype_parse(const char* s, size_t len, adamjit_dtype* out) {
  static const adamjit_dtype all[] = {ADAMJIT_F32, ADAMJIT_F16, ADAMJIT_BF16};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) {
    const char* name = adamjit_dtype_name(all[i]);
    if (strlen(name) == len && strncmp(name, s, len) == 0) {
      *out = all[i];
      return 1;
    }
  }
  return 0;
}

int model_file_read(const char* path, model_file* out) {
  memset(out, 0, sizeof *out);
  FILE* f = fopen(path, "r");
  if (!f) {
    cli_error("%s: %s", path, strerror(errno));
    return 0;
  }
  char line[1024];
  int lineno = 0, cap = 0, ok = 1;
  while (ok && fgets(line, sizeof line, f)) {
    lineno++;
    if (!strchr(line, '\n') && !feof(f)) {
      ok = !cli_error("%s:%d: line longer than %zu characters", path, lineno, sizeof line - 1);
      break;
    }
    char* hash = strchr(line, '#');
    if (hash) *hash = '\0';
    char name[256], pd[16], gd[16], count[32], extra[2];
    int fields = sscanf(line, "%255s %31s %15s %15s %1s", name, count, pd, gd, extra);
    if (fields <= 0) continue; /* blank or comment */
    if (fields != 4) {
      ok = !cli_error("%s:%d: expected 'name element-count param-dtype grad-dtype'", path, lineno);
      break;
    }
    model_tensor t;
    memset(&t, 0, sizeof t);
    if (strlen(name) >= sizeof t.name) {
      ok = !cli_error("%s:%d: tensor name longer than %zu characters", path, lineno, sizeof t.name - 1);
      break;
    }
    snprintf(t.name, sizeof t.name, "%s", name);
    char* end = NULL;
    errno = 0;
    long long n = strtoll(count, &end, 10);
    if (*end || errno || n <= 0) {
      ok = !cli_error("%s:%d: element count '%s' is not a positive integer", path, lineno, count);
      break;
    }
    t.numel = n;
    if (!model_dtype_parse(pd, strlen(pd), &t.param_dtype) || !model_dtype_parse(gd, strlen(gd), &t.grad_dtype)) {
      ok = !cli_error("%s:%d: dtypes '%s' '%s' (expected f32, f16 or bf16)", path, lineno, pd, gd);
      break;
    }
    if (out->count == cap) {
      cap = cap ? 2 * cap : 64;
      model_tensor* grown = realloc(out->tensors, (size_t)cap * sizeof *grown);
      if (!grown) {
        ok = !cli_error("out of memory reading %s", path);
        break;
      }
      out->tensors = grown;
    }
    out->tensors[out->count++] = t;
  }
  if (ok && ferror(f)) ok = !cli_error("%s: read error", path);
  fclose(f);
  if (ok && out->count == 0) ok = !cli_error("%s: no tensors", path);
  if (!ok) model_file_free(out);
  return ok;
}

void model_file_free(model_file* m) {
  free(m->tensors);
  memset(m, 0, sizeof *m);
}

adamjit_status model_tensor_kernel_keys(adamjit_optimizer* opt, const model_tensor* t, const char* dialect,
                                        char (*keys)[ADAMJIT_KERNEL_KEY_MAX], int max, int* count) {
  adamjit_tensor_desc d;
  adamjit_tensor_desc_init_default(&d);
  d.numel = t->numel;
  d.param_dtype = t->param_dtype;
  d.grad_dtype = t->grad_dtype;
  d.name = t->name;
  return adamjit_optimizer_kernel_keys(opt, &d, dialect, keys, max, count);
}

int model_file_find(const char* name, char* buf, size_t size) {
  const char* dirs[] = {ADAMJIT_INSTALLED_MODELS_DIR, ADAMJIT_SOURCE_MODELS_DIR};
  for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
    snprintf(buf, size, "%s/%s", dirs[i], name);
    if (access(buf, R_OK) == 0) return 1;
  }
  return 0;
}
