/* Rendering a variant into kernel source: prelude + body, from an override directory, the
 * ADAMJIT_TEMPLATE_PATH directory or the embedded table (jit/render.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* secure_getenv */
#endif
#include "jit/render.h"

#include <stddef.h>

#include "core/internal.h"

/* The kernels' scalar buffer is core's aj_step_scalars, float for float. */
_Static_assert(sizeof(aj_step_scalars) == AJ_STEP_SCALAR_COUNT * sizeof(float), "step scalar layout");
_Static_assert(offsetof(aj_step_scalars, beta2) == AJ_STEP_BETA2 * sizeof(float), "step scalar layout");
_Static_assert(offsetof(aj_step_scalars, eps) == AJ_STEP_EPS * sizeof(float), "step scalar layout");
_Static_assert(offsetof(aj_step_scalars, decay) == AJ_STEP_DECAY * sizeof(float), "step scalar layout");
_Static_assert(offsetof(aj_step_scalars, step_size) == AJ_STEP_SIZE * sizeof(float), "step scalar layout");
_Static_assert(offsetof(aj_step_scalars, inv_sqrt_c2) == AJ_STEP_INV_SQRT_C2 * sizeof(float), "step scalar layout");

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"

/* Templates are small (a few KiB); a bigger file is a mistake, not a template. */
#define AJ_TEMPLATE_FILE_MAX ((size_t)1 << 20)

static const char* const family_files[AJ_KERNEL_FAMILY_COUNT] = {
    "adamw32.lua", "adamw8.lua", "quantize.lua", "dequantize.lua", "sqnorm.lua", "clip.lua"};
static const char* const family_kernels[AJ_KERNEL_FAMILY_COUNT] = {
    "aj_adamw32", "aj_adamw8", "aj_quantize", "aj_dequantize", "aj_sqnorm", "aj_clip"};
/* adamw8 with b=0; the template derives these from kernel_name ("aj_adamw8" + suffix). */
static const char* const adamw8_tensor_kernels[] = {AJ_KERNEL_NAME_ADAMW8_ABSMAX, AJ_KERNEL_NAME_ADAMW8_REDUCE,
                                                   AJ_KERNEL_NAME_ADAMW8_UPDATE, AJ_KERNEL_NAME_ADAMW8_COMMIT};
/* adamw8 multi, opencl, vec=1 (kernel_templates/adamw8.lua). */
static const char* const adamw8_table_kernels[] = {AJ_KERNEL_NAME_ADAMW8_TABLE, AJ_KERNEL_NAME_ADAMW8_UPDATE};

const char* aj_render_template_file(aj_kernel_family family) {
  if ((int)family < 0 || (int)family >= AJ_KERNEL_FAMILY_COUNT) return NULL;
  return family_files[family];
}

const char* aj_render_kernel_name(const aj_variant* v) {
  if (!v || (int)v->family < 0 || (int)v->family >= AJ_KERNEL_FAMILY_COUNT) return NULL;
  return family_kernels[v->family];
}

int aj_render_kernel_names(const aj_variant* v, const char** names, int max) {
  /* format validates without leaving a message behind: this is a query, not an error path */
  if (!v || max < 0 || (max > 0 && !names) || aj_variant_format(v, NULL, 0) == 0) return -1;
  const char* const* list = &family_kernels[v->family];
  int count = 1;
  if (v->family == AJ_KERNEL_ADAMW8 && v->block_size == 0) {
    list = adamw8_tensor_kernels;
    count = (int)(sizeof adamw8_tensor_kernels / sizeof adamw8_tensor_kernels[0]);
  } else if (v->family == AJ_KERNEL_ADAMW8 && v->multi && v->dialect == AJ_DIALECT_OPENCL && v->vec_width == 1) {
    list = adamw8_table_kernels;
    count = 2;
  }
  for (int i = 0; i < count && i < max; i++) names[i] = list[i];
  return count;
}

/* One template's text: owned (read from a file, freed after) or borrowed (embedded). */
typedef struct tpl_text {
  const char* text;
  size_t len;
  char* owned;
  char label[512]; /* the name used in messages: the file path, or "<embedded>/name" */
} tpl_text;

/* Reads dir/name into t. Returns OK and sets *found when the file exists; OK with *found = 0
 * when it does not (the next source is tried); IO when it exists but cannot be read. */
static adamjit_status read_from_dir(adamjit_context* ctx, const char* dir, const char* name, tpl_text* t,
                                    int* found) {
  *found = 0;
  int n = snprintf(t->label, sizeof t->label, "%s/%s", dir, name);
  if (n < 0 || (size_t)n >= sizeof t->label)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "template directory path too long: %s", dir);
  FILE* f = fopen(t->label, "rb");
  if (!f) {
    if (errno == ENOENT || errno == ENOTDIR) return ADAMJIT_OK;
    return aj_fail(ctx, ADAMJIT_ERR_IO, "cannot open template %s: %s", t->label, strerror(errno));
  }
  size_t cap = 4096, len = 0;
  char* buf = malloc(cap);
  adamjit_status st = ADAMJIT_OK;
  while (buf) {
    if (len == cap) {
      if (cap >= AJ_TEMPLATE_FILE_MAX) {
        st = aj_fail(ctx, ADAMJIT_ERR_IO, "template %s is larger than %zu bytes", t->label, AJ_TEMPLATE_FILE_MAX);
        break;
      }
      char* nb = realloc(buf, cap * 2);
      if (!nb) break;
      buf = nb;
      cap *= 2;
    }
    size_t got = fread(buf + len, 1, cap - len, f);
    len += got;
    if (got == 0) {
      if (ferror(f)) st = aj_fail(ctx, ADAMJIT_ERR_IO, "cannot read template %s", t->label);
      break;
    }
  }
  fclose(f);
  if (!buf) return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "out of memory reading template %s", t->label);
  if (st != ADAMJIT_OK) {
    free(buf);
    return st;
  }
  t->owned = buf;
  t->text = buf;
  t->len = len;
  *found = 1;
  return ADAMJIT_OK;
}

static adamjit_status find_template(adamjit_context* ctx, const char* override_dir, const char* name, tpl_text* t) {
  memset(t, 0, sizeof *t);
  /* secure_getenv: a set-uid program must not run templates its caller points it at. */
  const char* env = secure_getenv("ADAMJIT_TEMPLATE_PATH");
  const char* dirs[2] = {override_dir, env};
  for (int k = 0; k < 2; k++) {
    if (!dirs[k] || !dirs[k][0]) continue;
    int found = 0;
    adamjit_status st = read_from_dir(ctx, dirs[k], name, t, &found);
    if (st != ADAMJIT_OK || found) return st;
  }
  for (size_t i = 0; i < aj_embedded_template_count; i++) {
    if (strcmp(aj_embedded_templates[i].name, name) == 0) {
      t->text = aj_embedded_templates[i].text;
      t->len = aj_embedded_templates[i].length;
      snprintf(t->label, sizeof t->label, "<embedded>/%s", name);
      return ADAMJIT_OK;
    }
  }
  return aj_fail(ctx, ADAMJIT_ERR_TEMPLATE, "template '%s' not found (override directory, ADAMJIT_TEMPLATE_PATH, "
                 "embedded table)", name);
}

static aj_lua_param pstr(const char* name, const char* s) {
  aj_lua_param p = {name, AJ_LUA_STRING, s, 0.0, 0, 0};
  return p;
}
static aj_lua_param pint(const char* name, int64_t i) {
  aj_lua_param p = {name, AJ_LUA_INTEGER, NULL, 0.0, i, 0};
  return p;
}
static aj_lua_param pbool(const char* name, int b) {
  aj_lua_param p = {name, AJ_LUA_BOOLEAN, NULL, 0.0, 0, b != 0};
  return p;
}

/* Renders one template file into *out / *out_len. */
static adamjit_status render_one(adamjit_context* ctx, aj_lua_host* host, const char* override_dir,
                                 const char* name, const aj_lua_param* params, int n, char** out, size_t* out_len) {
  tpl_text t;
  adamjit_status st = find_template(ctx, override_dir, name, &t);
  if (st != ADAMJIT_OK) return st;
  /* The label (a path) is the chunk name, so Lua's "<label>:<line>:" names the file. */
  st = aj_lua_render(host, t.label, t.text, t.len, params, n, out, out_len);
  free(t.owned);
  return st;
}

adamjit_status aj_render_variant(adamjit_context* ctx, aj_lua_host* host, const aj_variant* v,
                                 const char* override_dir, char** source, size_t* len) {
  if (source) *source = NULL;
  if (len) *len = 0;
  if (!host || !v || !source || !len)
    return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "aj_render_variant: host, v, source and len must not be NULL");
  adamjit_status st = aj_variant_check(ctx, v);
  if (st != ADAMJIT_OK) return st;

  aj_lua_param params[] = {
      pstr("family", aj_kernel_family_name(v->family)),
      pstr("dialect", aj_dialect_name(v->dialect)),
      pstr("kernel_name", aj_render_kernel_name(v)),
      pstr("p", adamjit_dtype_name(v->param_dtype)),
      pstr("g", adamjit_dtype_name(v->grad_dtype)),
      pint("bits", v->state_bits),
      pint("block", v->block_size),
      pint("wg", v->wg_size),
      pint("ept", v->elems_per_thread),
      pint("vec", v->vec_width),
      pbool("amsgrad", v->amsgrad),
      pbool("wd", v->weight_decay),
      pbool("clip", v->clipping),
      pbool("nonfinite", v->nonfinite_guard),
      pbool("multi", v->multi),
      pint("s_beta1", AJ_STEP_BETA1),
      pint("s_beta2", AJ_STEP_BETA2),
      pint("s_eps", AJ_STEP_EPS),
      pint("s_decay", AJ_STEP_DECAY),
      pint("s_step_size", AJ_STEP_SIZE),
      pint("s_inv_sqrt_c2", AJ_STEP_INV_SQRT_C2),
  };
  const int n = (int)(sizeof params / sizeof params[0]);

  char *pre = NULL, *body = NULL;
  size_t pre_len = 0, body_len = 0;
  st = render_one(ctx, host, override_dir, "prelude.lua", params, n, &pre, &pre_len);
  if (st == ADAMJIT_OK) st = render_one(ctx, host, override_dir, family_files[v->family], params, n, &body, &body_len);
  if (st != ADAMJIT_OK) {
    free(pre);
    return st;
  }
  char* all = realloc(pre, pre_len + body_len + 1);
  if (!all) {
    free(pre);
    free(body);
    return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "out of memory joining the rendered kernel source");
  }
  memcpy(all + pre_len, body, body_len + 1);
  free(body);
  *source = all;
  *len = pre_len + body_len;
  return ADAMJIT_OK;
}
