/* Variant keys: validation, canonical text, parsing, hashing and the enumerated space.
 * The grammar and the rules live in variant.h. */
#include "jit/variant.h"

#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#include "core/internal.h"

/* Dimensions a family may have; the rest hold their neutral value (see variant.h). */
enum {
  DIM_P = 1 << 0,
  DIM_G = 1 << 1,
  DIM_B = 1 << 2,
  DIM_AMSGRAD = 1 << 3,
  DIM_WD = 1 << 4,
  DIM_CLIP = 1 << 5,
  DIM_GUARD = 1 << 6,
  DIM_MULTI = 1 << 7
};

#define DIMS_ADAMW (DIM_P | DIM_G | DIM_AMSGRAD | DIM_WD | DIM_CLIP | DIM_GUARD)

static const struct family_info {
  const char* name;
  int bits;
  unsigned dims;
  int tensor_block; /* also accepts block 0: one absmax for the whole tensor */
} families[AJ_KERNEL_FAMILY_COUNT] = {
    /* multi: many tensors through a table (backends/gpu/gpu_group.h); adamw8 blockwise only */
    [AJ_KERNEL_ADAMW32] = {"adamw32", 32, DIMS_ADAMW | DIM_MULTI, 0},
    [AJ_KERNEL_ADAMW8] = {"adamw8", 8, DIMS_ADAMW | DIM_B | DIM_MULTI, 1},
    [AJ_KERNEL_QUANTIZE] = {"quantize", 8, DIM_P | DIM_B | DIM_GUARD, 0},
    /* codes and finite absmax can only produce finite values: nothing to guard */
    [AJ_KERNEL_DEQUANTIZE] = {"dequantize", 8, DIM_P | DIM_B, 0},
    [AJ_KERNEL_SQNORM] = {"sqnorm", 32, DIM_G | DIM_GUARD, 0},
    /* fp32 partial sums in, fp32 history and scale out: only the guard varies */
    [AJ_KERNEL_CLIP] = {"clip", 32, DIM_GUARD, 0},
};

static const char* const dialects[AJ_DIALECT_COUNT] = {[AJ_DIALECT_OPENCL] = "opencl", [AJ_DIALECT_CUDA] = "cuda"};

static const adamjit_dtype all_dtypes[] = {ADAMJIT_F32, ADAMJIT_F16, ADAMJIT_BF16};
#define N_DTYPES ((int)(sizeof all_dtypes / sizeof all_dtypes[0]))

/* The longest text we ever accept: a valid key is under 100 characters even with every
 * token and the optional bits=, so anything much longer is a mistake and is refused before
 * it is echoed into a message. */
#define KEY_TEXT_LIMIT 256

static const struct family_info* family_of(int f) {
  return f >= 0 && f < AJ_KERNEL_FAMILY_COUNT ? &families[f] : NULL;
}

const char* aj_kernel_family_name(aj_kernel_family family) {
  const struct family_info* fi = family_of((int)family);
  return fi ? fi->name : NULL;
}

const char* aj_dialect_name(aj_dialect dialect) {
  int d = (int)dialect;
  return d >= 0 && d < AJ_DIALECT_COUNT ? dialects[d] : NULL;
}

static int is_pow2_in(int x, int lo, int hi) { return x >= lo && x <= hi && (x & (x - 1)) == 0; }

void aj_variant_init_default(aj_variant* v, aj_kernel_family family) {
  if (!v) return;
  memset(v, 0, sizeof *v);
  const struct family_info* fi = family_of((int)family);
  unsigned dims = fi ? fi->dims : DIMS_ADAMW;
  v->family = family;
  v->dialect = AJ_DIALECT_OPENCL;
  v->param_dtype = ADAMJIT_F32;
  v->grad_dtype = ADAMJIT_F32;
  v->state_bits = fi ? fi->bits : 32;
  v->block_size = (dims & DIM_B) ? 256 : 0;
  v->nonfinite_guard = (dims & DIM_GUARD) ? 1 : 0;
  v->wg_size = 256;
  v->elems_per_thread = 4;
  v->vec_width = 4;
}

/* One flag dimension, for the table-driven checks below. */
struct flag_info {
  const char* field;
  const char* token;
  unsigned dim;
  size_t offset;
};

static const struct flag_info flags[] = {
    {"amsgrad", "amsgrad", DIM_AMSGRAD, offsetof(aj_variant, amsgrad)},
    {"weight_decay", "wd", DIM_WD, offsetof(aj_variant, weight_decay)},
    {"clipping", "clip", DIM_CLIP, offsetof(aj_variant, clipping)},
    {"nonfinite_guard", "nonfinite", DIM_GUARD, offsetof(aj_variant, nonfinite_guard)},
    {"multi", "multi", DIM_MULTI, offsetof(aj_variant, multi)},
};
#define N_FLAGS ((int)(sizeof flags / sizeof flags[0]))
_Static_assert(sizeof flags / sizeof flags[0] == 5, "aj_variant_enumerate nests one loop per flag");

static int flag_value(const aj_variant* v, int i) {
  int x;
  memcpy(&x, (const char*)v + flags[i].offset, sizeof x);
  return x;
}

static void set_flag(aj_variant* v, int i, int x) { memcpy((char*)v + flags[i].offset, &x, sizeof x); }

/* The validation shared by check, format and parse. Returns 1 if v is valid; otherwise 0
 * with a message in msg that names the field, its value and its token, so that the same
 * text serves the struct API and the text parser. Never logs: format and hash use it
 * silently. */
static int validate(const aj_variant* v, char* msg, size_t n) {
  const struct family_info* fi = family_of((int)v->family);
  if (!fi) {
    snprintf(msg, n, "aj_variant.family = %d: not a kernel family", (int)v->family);
    return 0;
  }
  if (!aj_dialect_name(v->dialect)) {
    snprintf(msg, n, "aj_variant.dialect = %d: not a dialect (opencl or cuda)", (int)v->dialect);
    return 0;
  }
  const struct {
    const char* field;
    const char* token;
    adamjit_dtype value;
    unsigned dim;
  } dts[2] = {{"param_dtype", "p", v->param_dtype, DIM_P}, {"grad_dtype", "g", v->grad_dtype, DIM_G}};
  for (int i = 0; i < 2; i++) {
    const char* name = adamjit_dtype_name(dts[i].value);
    if (!name) {
      snprintf(msg, n, "aj_variant.%s = %d (%s=?): not a dtype (f32, f16 or bf16)", dts[i].field, (int)dts[i].value,
               dts[i].token);
      return 0;
    }
    if (!(fi->dims & dts[i].dim) && dts[i].value != ADAMJIT_F32) {
      snprintf(msg, n, "aj_variant.%s = %s (%s=%s): family %s has no %s; it must stay f32", dts[i].field, name,
               dts[i].token, name, fi->name, dts[i].field);
      return 0;
    }
  }
  if (v->state_bits != fi->bits) {
    snprintf(msg, n, "aj_variant.state_bits = %d (bits=%d): family %s has %d-bit state", v->state_bits, v->state_bits,
             fi->name, fi->bits);
    return 0;
  }
  if (fi->dims & DIM_B) {
    if (fi->tensor_block && v->block_size == 0) {
      /* one absmax per tensor */
    } else if (!is_pow2_in(v->block_size, AJ_VARIANT_BLOCK_MIN, AJ_VARIANT_BLOCK_MAX)) {
      snprintf(msg, n, "aj_variant.block_size = %d (b=%d): must be %sa power of two in %d..%d", v->block_size,
               v->block_size, fi->tensor_block ? "0 (one absmax per tensor) or " : "", AJ_VARIANT_BLOCK_MIN,
               AJ_VARIANT_BLOCK_MAX);
      return 0;
    }
  } else if (v->block_size != 0) {
    snprintf(msg, n, "aj_variant.block_size = %d (b=%d): family %s has no quantization block; it must be 0",
             v->block_size, v->block_size, fi->name);
    return 0;
  }
  for (int i = 0; i < N_FLAGS; i++) {
    int x = flag_value(v, i);
    if (x != 0 && x != 1) {
      snprintf(msg, n, "aj_variant.%s = %d (%s): must be 0 or 1", flags[i].field, x, flags[i].token);
      return 0;
    }
    if (x && !(fi->dims & flags[i].dim)) {
      snprintf(msg, n, "aj_variant.%s = 1 (%s): does not apply to family %s", flags[i].field, flags[i].token, fi->name);
      return 0;
    }
  }
  if (v->multi && v->clipping) {
    snprintf(msg, n, "aj_variant.multi = 1 (multi) with clipping = 1 (clip): a grouped launch has no per-tensor norms");
    return 0;
  }
  /* b=0 is a program of four kernels around one tensor's maxima: nothing to share. */
  if (v->multi && fi->tensor_block && v->block_size == 0) {
    snprintf(msg, n, "aj_variant.multi = 1 (multi) with block_size = 0 (b=0): only blockwise 8-bit tensors are grouped");
    return 0;
  }
  if (!is_pow2_in(v->wg_size, AJ_VARIANT_WG_MIN, AJ_VARIANT_WG_MAX)) {
    snprintf(msg, n, "aj_variant.wg_size = %d (wg=%d): must be a power of two in %d..%d", v->wg_size, v->wg_size,
             AJ_VARIANT_WG_MIN, AJ_VARIANT_WG_MAX);
    return 0;
  }
  if (v->elems_per_thread < 1 || v->elems_per_thread > AJ_VARIANT_EPT_MAX) {
    snprintf(msg, n, "aj_variant.elems_per_thread = %d (ept=%d): must be in 1..%d", v->elems_per_thread,
             v->elems_per_thread, AJ_VARIANT_EPT_MAX);
    return 0;
  }
  if (!is_pow2_in(v->vec_width, 1, AJ_VARIANT_VEC_MAX)) {
    snprintf(msg, n, "aj_variant.vec_width = %d (vec=%d): must be 1, 2, 4 or 8", v->vec_width, v->vec_width);
    return 0;
  }
  /* A thread loads its elements as whole vectors; a remainder would need a scalar tail in
   * every template for no gain, so the key forbids it. */
  if (v->elems_per_thread % v->vec_width != 0) {
    snprintf(msg, n, "aj_variant.vec_width = %d (vec=%d): does not divide elems_per_thread = %d (ept=%d)",
             v->vec_width, v->vec_width, v->elems_per_thread, v->elems_per_thread);
    return 0;
  }
  return 1;
}

adamjit_status aj_variant_check(adamjit_context* ctx, const aj_variant* v) {
  if (!v) return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "aj_variant_check: variant is NULL");
  char msg[256];
  if (!validate(v, msg, sizeof msg)) return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "%s", msg);
  return ADAMJIT_OK;
}

/* Appends to a fixed buffer that is known to be large enough for any valid key. */
struct text {
  char buf[AJ_VARIANT_TEXT_MAX];
  size_t len;
};

static void advance(struct text* t, int k) {
  if (k > 0) t->len += (size_t)k;
  if (t->len >= sizeof t->buf) t->len = sizeof t->buf - 1; /* unreachable for a valid key */
}

/* One piece of the key: a token with a string or a number. */
static void put_str(struct text* t, const char* fmt, const char* s) {
  advance(t, snprintf(t->buf + t->len, sizeof t->buf - t->len, fmt, s));
}

static void put_int(struct text* t, const char* fmt, int x) {
  advance(t, snprintf(t->buf + t->len, sizeof t->buf - t->len, fmt, x));
}

size_t aj_variant_format(const aj_variant* v, char* buf, size_t size) {
  char msg[256];
  if (buf && size) buf[0] = '\0';
  if (!v || !validate(v, msg, sizeof msg)) return 0;
  const struct family_info* fi = &families[v->family];
  struct text t = {{0}, 0};
  put_str(&t, "%s", fi->name);
  put_str(&t, "/%s", dialects[v->dialect]);
  if (fi->dims & DIM_P) put_str(&t, "/p=%s", adamjit_dtype_name(v->param_dtype));
  if (fi->dims & DIM_G) put_str(&t, "/g=%s", adamjit_dtype_name(v->grad_dtype));
  if (fi->dims & DIM_B) put_int(&t, "/b=%d", v->block_size);
  for (int i = 0; i < N_FLAGS; i++)
    if (flag_value(v, i)) put_str(&t, "/%s", flags[i].token);
  put_int(&t, "/wg=%d", v->wg_size);
  put_int(&t, "/ept=%d", v->elems_per_thread);
  put_int(&t, "/vec=%d", v->vec_width);
  if (buf && size) {
    size_t k = t.len < size - 1 ? t.len : size - 1;
    memcpy(buf, t.buf, k);
    buf[k] = '\0';
  }
  return t.len;
}

/* ------------------------------------------------------------------ parsing */

/* A slice of the key text. */
typedef struct {
  const char* s;
  size_t n;
} slice;

static int slice_is(slice a, const char* word) { return strlen(word) == a.n && memcmp(a.s, word, a.n) == 0; }

/* Decimal without sign or leading zeros, at most 9 digits so it fits an int. */
static int parse_uint(slice a, int* out) {
  if (a.n == 0 || a.n > 9 || (a.n > 1 && a.s[0] == '0')) return 0;
  int x = 0;
  for (size_t i = 0; i < a.n; i++) {
    if (a.s[i] < '0' || a.s[i] > '9') return 0;
    x = x * 10 + (a.s[i] - '0');
  }
  *out = x;
  return 1;
}

static int parse_dtype(slice a, adamjit_dtype* out) {
  for (int i = 0; i < N_DTYPES; i++)
    if (slice_is(a, adamjit_dtype_name(all_dtypes[i]))) {
      *out = all_dtypes[i];
      return 1;
    }
  return 0;
}

enum token_kind { TOK_DTYPE, TOK_UINT, TOK_FLAG };

/* Every token name. dim = 0: applies to every family. */
static const struct token_info {
  const char* name;
  enum token_kind kind;
  unsigned dim;
  size_t offset; /* of the field it sets */
} tokens[] = {
    {"p", TOK_DTYPE, DIM_P, offsetof(aj_variant, param_dtype)},
    {"g", TOK_DTYPE, DIM_G, offsetof(aj_variant, grad_dtype)},
    {"bits", TOK_UINT, 0, offsetof(aj_variant, state_bits)},
    {"b", TOK_UINT, DIM_B, offsetof(aj_variant, block_size)},
    {"amsgrad", TOK_FLAG, DIM_AMSGRAD, offsetof(aj_variant, amsgrad)},
    {"wd", TOK_FLAG, DIM_WD, offsetof(aj_variant, weight_decay)},
    {"clip", TOK_FLAG, DIM_CLIP, offsetof(aj_variant, clipping)},
    {"nonfinite", TOK_FLAG, DIM_GUARD, offsetof(aj_variant, nonfinite_guard)},
    {"multi", TOK_FLAG, DIM_MULTI, offsetof(aj_variant, multi)},
    {"wg", TOK_UINT, 0, offsetof(aj_variant, wg_size)},
    {"ept", TOK_UINT, 0, offsetof(aj_variant, elems_per_thread)},
    {"vec", TOK_UINT, 0, offsetof(aj_variant, vec_width)},
};
#define N_TOKENS ((int)(sizeof tokens / sizeof tokens[0]))

/* Splits off the segment up to the next '/' (or the end); *more says whether a '/' ended it. */
static slice next_segment(const char** p, int* more) {
  slice s = {*p, 0};
  while ((*p)[s.n] && (*p)[s.n] != '/') s.n++;
  *more = (*p)[s.n] == '/';
  *p += s.n + (*more ? 1 : 0);
  return s;
}

#define KEYFAIL(fmt, ...) \
  aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "variant key \"%s\": " fmt, text, __VA_ARGS__)

adamjit_status aj_variant_parse(adamjit_context* ctx, const char* text, aj_variant* out) {
  if (!text) return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "aj_variant_parse: text is NULL");
  if (!out) return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "aj_variant_parse: out is NULL");
  size_t len = strlen(text);
  if (len > KEY_TEXT_LIMIT)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "variant key \"%.40s...\": %zu characters, longer than any valid key",
                   text, len);
  if (len == 0)
    return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE,
                   "variant key \"\": empty; expected family/dialect[/token...], e.g. adamw32/cuda/p=bf16");

  const char* p = text;
  int more = 0;
  slice fam = next_segment(&p, &more);
  int family = -1;
  for (int i = 0; i < AJ_KERNEL_FAMILY_COUNT; i++)
    if (slice_is(fam, families[i].name)) family = i;
  if (family < 0)
    return KEYFAIL("unknown kernel family \"%.*s\" (adamw32, adamw8, quantize, dequantize, sqnorm or clip)",
                   (int)fam.n, fam.s);
  if (!more) return KEYFAIL("no dialect after \"%.*s\" (expected %.*s/opencl or %.*s/cuda)", (int)fam.n, fam.s,
                            (int)fam.n, fam.s, (int)fam.n, fam.s);
  slice dia = next_segment(&p, &more);
  int dialect = -1;
  for (int i = 0; i < AJ_DIALECT_COUNT; i++)
    if (slice_is(dia, dialects[i])) dialect = i;
  if (dialect < 0) return KEYFAIL("unknown dialect \"%.*s\" (opencl or cuda)", (int)dia.n, dia.s);

  const struct family_info* fi = &families[family];
  aj_variant v;
  aj_variant_init_default(&v, (aj_kernel_family)family);
  v.dialect = (aj_dialect)dialect;
  /* Absent flags are off (variant.h says why the guard differs from init_default). */
  for (int i = 0; i < N_FLAGS; i++) set_flag(&v, i, 0);

  unsigned seen = 0;
  slice prev = dia;
  while (more) {
    slice tok = next_segment(&p, &more);
    if (tok.n == 0)
      return KEYFAIL("empty token after \"%.*s\" (a doubled or trailing '/')", (int)prev.n, prev.s);
    slice name = tok, value = {NULL, 0};
    const char* eq = memchr(tok.s, '=', tok.n);
    if (eq) {
      name.n = (size_t)(eq - tok.s);
      value.s = eq + 1;
      value.n = tok.n - name.n - 1;
    }
    int ti = -1;
    for (int i = 0; i < N_TOKENS; i++)
      if (slice_is(name, tokens[i].name)) ti = i;
    if (ti < 0) return KEYFAIL("unknown token \"%.*s\"", (int)tok.n, tok.s);
    const struct token_info* t = &tokens[ti];
    if (seen & (1u << ti)) return KEYFAIL("duplicate token \"%.*s\" (%s is already given)", (int)tok.n, tok.s, t->name);
    seen |= 1u << ti;
    if (t->dim && !(fi->dims & t->dim))
      return KEYFAIL("token \"%.*s\" does not apply to family %s", (int)tok.n, tok.s, fi->name);
    char* field = (char*)&v + t->offset;
    if (t->kind == TOK_FLAG) {
      if (eq) return KEYFAIL("token \"%.*s\": %s is a flag and takes no value (write it to turn it on)", (int)tok.n,
                             tok.s, t->name);
      int one = 1;
      memcpy(field, &one, sizeof one);
    } else if (!eq) {
      return KEYFAIL("token \"%.*s\" needs a value (%s=...)", (int)tok.n, tok.s, t->name);
    } else if (t->kind == TOK_DTYPE) {
      adamjit_dtype dt;
      if (!parse_dtype(value, &dt)) return KEYFAIL("token \"%.*s\": unknown dtype (f32, f16 or bf16)", (int)tok.n, tok.s);
      memcpy(field, &dt, sizeof dt);
    } else {
      int x;
      if (!parse_uint(value, &x))
        return KEYFAIL("token \"%.*s\": malformed number (decimal digits, no sign or leading zeros)", (int)tok.n, tok.s);
      memcpy(field, &x, sizeof x);
    }
    prev = tok;
  }
  /* Every token was well-formed and applicable; ranges and relations are checked once, by
   * the same code as the struct API, whose messages name the token (b=100, vec=8 ...). */
  char msg[256];
  if (!validate(&v, msg, sizeof msg)) return KEYFAIL("%s", msg);
  *out = v;
  return ADAMJIT_OK;
}

/* ------------------------------------------------------- identity and space */

uint64_t aj_variant_hash(const aj_variant* v) {
  char buf[AJ_VARIANT_TEXT_MAX];
  size_t n = aj_variant_format(v, buf, sizeof buf);
  return n ? (uint64_t)XXH3_64bits(buf, n) : 0;
}

int aj_variant_equal(const aj_variant* a, const aj_variant* b) {
  if (!a || !b) return a == b;
  /* Field by field: memcmp would also compare padding, which no field layout promises away. */
  return a->family == b->family && a->dialect == b->dialect && a->param_dtype == b->param_dtype &&
         a->grad_dtype == b->grad_dtype && a->state_bits == b->state_bits && a->block_size == b->block_size &&
         a->amsgrad == b->amsgrad && a->weight_decay == b->weight_decay && a->clipping == b->clipping &&
         a->nonfinite_guard == b->nonfinite_guard && a->multi == b->multi && a->wg_size == b->wg_size &&
         a->elems_per_thread == b->elems_per_thread && a->vec_width == b->vec_width;
}

int aj_variant_enumerate(aj_kernel_family family, aj_dialect dialect, aj_variant* out, int max) {
  const struct family_info* fi = family_of((int)family);
  if (!fi || !aj_dialect_name(dialect) || max < 0 || (max > 0 && !out)) return -1;
  /* A dimension that does not apply contributes its single neutral value. */
  int np = (fi->dims & DIM_P) ? N_DTYPES : 1;
  int ng = (fi->dims & DIM_G) ? N_DTYPES : 1;
  /* Runs of the same cross product: the blockwise sizes, then (adamw8 only) the whole-
   * tensor block 0, so that adding b=0 left the order of the blockwise keys unchanged, then
   * (adamw8 only) the blockwise sizes with multi. */
  int blocks[3][8], nb[3] = {0, 0, 0};
  if (fi->dims & DIM_B) {
    for (int b = AJ_VARIANT_BLOCK_MIN; b <= AJ_VARIANT_BLOCK_MAX; b *= 2) blocks[0][nb[0]++] = b;
    if (fi->tensor_block) blocks[1][nb[1]++] = 0;
  } else {
    blocks[0][nb[0]++] = 0;
  }
  int nf[N_FLAGS];
  for (int i = 0; i < N_FLAGS; i++) nf[i] = (fi->dims & flags[i].dim) ? 2 : 1;

  /* adamw8's multi variants only in the third run, so that the keys listed before adamw8
   * had multi keep their order; adamw32 keeps multi as its innermost flag. */
  const int multi_run = fi->tensor_block && (fi->dims & DIM_MULTI);
  if (multi_run) {
    memcpy(blocks[2], blocks[0], sizeof blocks[0]);
    nb[2] = nb[0];
  }
  int count = 0;
  for (int run = 0; run < 3; run++)
    for (int ip = 0; ip < np; ip++)
      for (int ig = 0; ig < ng; ig++)
        for (int ib = 0; ib < nb[run]; ib++)
          for (int f0 = 0; f0 < nf[0]; f0++)
            for (int f1 = 0; f1 < nf[1]; f1++)
              for (int f2 = 0; f2 < nf[2]; f2++)
                for (int f3 = 0; f3 < nf[3]; f3++)
                  for (int f4 = 0; f4 < nf[4]; f4++) {
                  if (f2 && f4) continue; /* multi has no clipping (validate) */
                  if (multi_run && f4 != (run == 2)) continue;
                  if (count < max) {
                    aj_variant* v = &out[count];
                    aj_variant_init_default(v, family);
                    v->dialect = dialect;
                    v->param_dtype = all_dtypes[ip];
                    v->grad_dtype = all_dtypes[ig];
                    v->block_size = blocks[run][ib];
                    set_flag(v, 0, f0);
                    set_flag(v, 1, f1);
                    set_flag(v, 2, f2);
                    set_flag(v, 3, f3);
                    set_flag(v, 4, f4);
                  }
                  count++;
                }
  return count;
}
