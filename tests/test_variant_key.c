/* Variant keys (jit/variant.h): the text form round-trips over the whole supported space,
 * is canonical whatever the token order, refuses every malformed key with a message that
 * names the token, and the hash tells every kernel apart. */
#include "jit/variant.h"

#include <stdint.h>

#include "harness.h"

static const aj_kernel_family all_families[] = {AJ_KERNEL_ADAMW32,    AJ_KERNEL_ADAMW8, AJ_KERNEL_QUANTIZE,
                                                AJ_KERNEL_DEQUANTIZE, AJ_KERNEL_SQNORM, AJ_KERNEL_CLIP};
static const int expected_count[] = {216, 1656, 42, 21, 6, 2};
_Static_assert(sizeof all_families / sizeof all_families[0] == AJ_KERNEL_FAMILY_COUNT, "every family is tested");
static const aj_dialect all_dialects[] = {AJ_DIALECT_OPENCL, AJ_DIALECT_CUDA};

/* Every variant seen, for the collision check at the end. */
typedef struct {
  aj_variant v;
  uint64_t h;
} seen_variant;
static seen_variant* seen;
static size_t n_seen, cap_seen;

static void remember(const aj_variant* v) {
  if (n_seen == cap_seen) {
    cap_seen = cap_seen ? 2 * cap_seen : 4096;
    seen = realloc(seen, cap_seen * sizeof *seen);
    if (!seen) exit(2);
  }
  seen[n_seen].v = *v;
  seen[n_seen].h = aj_variant_hash(v);
  n_seen++;
}

static size_t longest_text;

/* format -> parse -> equal, the text is stable, and check agrees. */
static void round_trip(adamjit_context* ctx, const aj_variant* v) {
  char text[AJ_VARIANT_TEXT_MAX], again[AJ_VARIANT_TEXT_MAX];
  CHECK_MSG(aj_variant_check(ctx, v) == ADAMJIT_OK, "%s", adamjit_context_last_error(ctx));
  size_t n = aj_variant_format(v, text, sizeof text);
  CHECK(n > 0 && n < AJ_VARIANT_TEXT_MAX && n == strlen(text));
  if (n > longest_text) longest_text = n;
  CHECK(aj_variant_format(v, NULL, 0) == n); /* the length query agrees */
  aj_variant back;
  memset(&back, 0xA5, sizeof back);
  adamjit_status st = aj_variant_parse(ctx, text, &back);
  CHECK_MSG(st == ADAMJIT_OK, "%s: %s", text, adamjit_context_last_error(ctx));
  CHECK_MSG(aj_variant_equal(v, &back), "%s does not parse back to the same variant", text);
  CHECK(aj_variant_format(&back, again, sizeof again) == n);
  CHECK_MSG(strcmp(text, again) == 0, "%s formats again as %s", text, again);
  CHECK(aj_variant_hash(v) == aj_variant_hash(&back) && aj_variant_hash(v) != 0);
  remember(v);
}

static void test_defaults(void) {
  aj_variant v;
  for (int f = 0; f < AJ_KERNEL_FAMILY_COUNT; f++) {
    aj_variant_init_default(&v, all_families[f]);
    CHECK_STATUS(aj_variant_check(NULL, &v), ADAMJIT_OK);
    CHECK(v.dialect == AJ_DIALECT_OPENCL && v.wg_size == 256 && v.elems_per_thread == 4 && v.vec_width == 4);
    CHECK(v.amsgrad == 0 && v.weight_decay == 0 && v.clipping == 0);
  }
  aj_variant_init_default(&v, AJ_KERNEL_ADAMW8);
  CHECK(v.state_bits == 8 && v.block_size == 256 && v.nonfinite_guard == 1);
  aj_variant_init_default(&v, AJ_KERNEL_ADAMW32);
  CHECK(v.state_bits == 32 && v.block_size == 0 && v.nonfinite_guard == 1);
  aj_variant_init_default(&v, AJ_KERNEL_DEQUANTIZE);
  CHECK(v.state_bits == 8 && v.block_size == 256 && v.nonfinite_guard == 0);
  aj_variant_init_default(&v, AJ_KERNEL_CLIP);
  CHECK(v.state_bits == 32 && v.block_size == 0 && v.nonfinite_guard == 1 && v.param_dtype == ADAMJIT_F32 &&
        v.grad_dtype == ADAMJIT_F32);
  aj_variant_init_default(&v, (aj_kernel_family)99);
  CHECK_STATUS(aj_variant_check(NULL, &v), ADAMJIT_ERR_INVALID_VALUE);
  aj_variant_init_default(NULL, AJ_KERNEL_ADAMW32); /* NULL-safe */

  CHECK(strcmp(aj_kernel_family_name(AJ_KERNEL_SQNORM), "sqnorm") == 0);
  CHECK(strcmp(aj_kernel_family_name(AJ_KERNEL_CLIP), "clip") == 0);
  CHECK(aj_kernel_family_name((aj_kernel_family)AJ_KERNEL_FAMILY_COUNT) == NULL);
  CHECK(strcmp(aj_dialect_name(AJ_DIALECT_CUDA), "cuda") == 0);
  CHECK(aj_dialect_name((aj_dialect)-1) == NULL);

  /* The example of variant.h, spelled by hand. */
  aj_variant_init_default(&v, AJ_KERNEL_ADAMW8);
  v.dialect = AJ_DIALECT_CUDA;
  v.param_dtype = ADAMJIT_BF16;
  v.amsgrad = 1;
  v.weight_decay = 1;
  char text[AJ_VARIANT_TEXT_MAX];
  aj_variant_format(&v, text, sizeof text);
  CHECK_MSG(strcmp(text, "adamw8/cuda/p=bf16/g=f32/b=256/amsgrad/wd/nonfinite/wg=256/ept=4/vec=4") == 0, "%s", text);
}

static void test_enumerated_space(adamjit_context* ctx) {
  int total = 0;
  for (int f = 0; f < AJ_KERNEL_FAMILY_COUNT; f++)
    for (int d = 0; d < AJ_DIALECT_COUNT; d++) {
      int n = aj_variant_enumerate(all_families[f], all_dialects[d], NULL, 0);
      CHECK_MSG(n == expected_count[f], "family %d: %d variants, expected %d", f, n, expected_count[f]);
      if (n <= 0) continue;
      aj_variant* vs = test_calloc((size_t)n, sizeof *vs);
      CHECK(aj_variant_enumerate(all_families[f], all_dialects[d], vs, n) == n);
      for (int i = 0; i < n; i++) {
        CHECK(vs[i].family == all_families[f] && vs[i].dialect == all_dialects[d]);
        CHECK(vs[i].wg_size == 256 && vs[i].elems_per_thread == 4 && vs[i].vec_width == 4);
        round_trip(ctx, &vs[i]);
      }
      /* A short buffer takes a prefix of the same order. */
      aj_variant few[3];
      CHECK(aj_variant_enumerate(all_families[f], all_dialects[d], few, 3) == n);
      for (int i = 0; i < 3 && i < n; i++) CHECK(aj_variant_equal(&few[i], &vs[i]));
      free(vs);
      total += n;
    }
  CHECK_MSG(total == 3886, "%d variants in the space", total);
  CHECK(aj_variant_enumerate((aj_kernel_family)7, AJ_DIALECT_CUDA, NULL, 0) == -1);
  CHECK(aj_variant_enumerate(AJ_KERNEL_ADAMW32, (aj_dialect)2, NULL, 0) == -1);
  CHECK(aj_variant_enumerate(AJ_KERNEL_ADAMW32, AJ_DIALECT_CUDA, NULL, 5) == -1);
  CHECK(aj_variant_enumerate(AJ_KERNEL_ADAMW32, AJ_DIALECT_CUDA, NULL, -1) == -1);
}

/* Launch parameters around and inside their ranges on the first and last semantic variant
 * of every family and dialect: check accepts exactly the documented set, and every accepted
 * one round-trips. */
static void test_launch_parameters(adamjit_context* ctx) {
  static const int wgs[] = {0, 16, 32, 48, 64, 128, 256, 512, 1024, 2048};
  int accepted = 0;
  for (int f = 0; f < AJ_KERNEL_FAMILY_COUNT; f++)
    for (int d = 0; d < AJ_DIALECT_COUNT; d++) {
      int n = aj_variant_enumerate(all_families[f], all_dialects[d], NULL, 0);
      aj_variant* vs = test_calloc((size_t)n, sizeof *vs);
      aj_variant_enumerate(all_families[f], all_dialects[d], vs, n);
      const aj_variant* bases[2] = {&vs[0], &vs[n - 1]};
      for (int b = 0; b < 2; b++)
        for (size_t w = 0; w < sizeof wgs / sizeof wgs[0]; w++)
          for (int ept = -1; ept <= 17; ept++)
            for (int vec = 0; vec <= 9; vec++) {
              aj_variant v = *bases[b];
              v.wg_size = wgs[w];
              v.elems_per_thread = ept;
              v.vec_width = vec;
              int wg_ok = wgs[w] >= 32 && wgs[w] <= 1024 && wgs[w] != 48;
              int vec_ok = vec == 1 || vec == 2 || vec == 4 || vec == 8;
              int want = wg_ok && ept >= 1 && ept <= 16 && vec_ok && ept % vec == 0;
              adamjit_status st = aj_variant_check(ctx, &v);
              CHECK_MSG((st == ADAMJIT_OK) == want, "wg=%d ept=%d vec=%d: %s", wgs[w], ept, vec,
                        adamjit_context_last_error(ctx));
              if (want) {
                round_trip(ctx, &v);
                accepted++;
              } else {
                CHECK(st == ADAMJIT_ERR_INVALID_VALUE);
                char buf[8] = "x";
                CHECK(aj_variant_format(&v, buf, sizeof buf) == 0 && buf[0] == '\0');
                CHECK(aj_variant_hash(&v) == 0);
              }
            }
      free(vs);
    }
  CHECK(accepted > 0);
}

static aj_variant parsed(adamjit_context* ctx, const char* text) {
  aj_variant v;
  memset(&v, 0, sizeof v);
  adamjit_status st = aj_variant_parse(ctx, text, &v);
  CHECK_MSG(st == ADAMJIT_OK, "%s: %s", text, adamjit_context_last_error(ctx));
  return v;
}

static void test_hand_written(adamjit_context* ctx) {
  static const char* canonical = "adamw8/cuda/p=bf16/g=f16/b=1024/amsgrad/clip/nonfinite/wg=128/ept=8/vec=2";
  static const char* shuffled[] = {
      "adamw8/cuda/vec=2/nonfinite/ept=8/b=1024/clip/g=f16/wg=128/amsgrad/p=bf16",
      "adamw8/cuda/wg=128/ept=8/vec=2/amsgrad/clip/nonfinite/b=1024/g=f16/p=bf16",
      "adamw8/cuda/bits=8/clip/amsgrad/p=bf16/g=f16/b=1024/nonfinite/vec=2/ept=8/wg=128",
  };
  aj_variant want = parsed(ctx, canonical);
  CHECK(want.family == AJ_KERNEL_ADAMW8 && want.dialect == AJ_DIALECT_CUDA && want.param_dtype == ADAMJIT_BF16 &&
        want.grad_dtype == ADAMJIT_F16 && want.state_bits == 8 && want.block_size == 1024 && want.amsgrad == 1 &&
        want.weight_decay == 0 && want.clipping == 1 && want.nonfinite_guard == 1 && want.wg_size == 128 &&
        want.elems_per_thread == 8 && want.vec_width == 2);
  for (size_t i = 0; i < sizeof shuffled / sizeof shuffled[0]; i++) {
    aj_variant v = parsed(ctx, shuffled[i]);
    CHECK_MSG(aj_variant_equal(&v, &want), "%s", shuffled[i]);
    char text[AJ_VARIANT_TEXT_MAX];
    aj_variant_format(&v, text, sizeof text);
    CHECK_MSG(strcmp(text, canonical) == 0, "%s formats as %s", shuffled[i], text);
  }

  /* Missing key=value tokens take the defaults, missing flags are off. */
  aj_variant v = parsed(ctx, "adamw8/opencl");
  aj_variant d;
  aj_variant_init_default(&d, AJ_KERNEL_ADAMW8);
  d.nonfinite_guard = 0;
  CHECK(aj_variant_equal(&v, &d));
  v = parsed(ctx, "sqnorm/cuda/g=bf16/nonfinite/wg=1024");
  CHECK(v.family == AJ_KERNEL_SQNORM && v.grad_dtype == ADAMJIT_BF16 && v.param_dtype == ADAMJIT_F32 &&
        v.nonfinite_guard == 1 && v.wg_size == 1024 && v.block_size == 0 && v.state_bits == 32);
  v = parsed(ctx, "quantize/opencl/p=f16/b=64/bits=8");
  CHECK(v.family == AJ_KERNEL_QUANTIZE && v.param_dtype == ADAMJIT_F16 && v.block_size == 64 && v.state_bits == 8);
  v = parsed(ctx, "dequantize/cuda/b=4096/ept=16/vec=8/wg=32");
  CHECK(v.block_size == 4096 && v.elems_per_thread == 16 && v.vec_width == 8 && v.wg_size == 32);
  v = parsed(ctx, "adamw32/opencl/ept=3/vec=1"); /* any ept the vector width divides */
  CHECK(v.elems_per_thread == 3 && v.vec_width == 1);

  /* multi: adamw32 and blockwise adamw8, never with clip, written after the other flags. */
  v = parsed(ctx, "adamw32/cuda/multi/p=f16/nonfinite");
  CHECK(v.multi == 1 && v.param_dtype == ADAMJIT_F16 && v.nonfinite_guard == 1);
  char mtext[AJ_VARIANT_TEXT_MAX];
  aj_variant_format(&v, mtext, sizeof mtext);
  CHECK_MSG(strcmp(mtext, "adamw32/cuda/p=f16/g=f32/nonfinite/multi/wg=256/ept=4/vec=4") == 0, "%s", mtext);
  aj_variant none;
  CHECK_STATUS(aj_variant_parse(ctx, "adamw32/cuda/multi/clip", &none), ADAMJIT_ERR_INVALID_VALUE);
  v = parsed(ctx, "adamw8/opencl/multi/b=64/vec=1/amsgrad");
  CHECK(v.multi == 1 && v.block_size == 64 && v.amsgrad == 1);
  aj_variant_format(&v, mtext, sizeof mtext);
  CHECK_MSG(strcmp(mtext, "adamw8/opencl/p=f32/g=f32/b=64/amsgrad/multi/wg=256/ept=4/vec=1") == 0, "%s", mtext);
  round_trip(ctx, &v);
  CHECK_STATUS(aj_variant_parse(ctx, "adamw8/cuda/multi/b=0", &none), ADAMJIT_ERR_INVALID_VALUE);
  CHECK_MSG(strstr(adamjit_context_last_error(ctx), "b=0") != NULL, "%s", adamjit_context_last_error(ctx));
  CHECK_STATUS(aj_variant_parse(ctx, "adamw8/cuda/multi/clip", &none), ADAMJIT_ERR_INVALID_VALUE);
  CHECK_STATUS(aj_variant_parse(ctx, "quantize/cuda/multi", &none), ADAMJIT_ERR_INVALID_VALUE);
  CHECK_STATUS(aj_variant_parse(ctx, "sqnorm/opencl/multi", &none), ADAMJIT_ERR_INVALID_VALUE);

  /* A context-less parse reports through the thread's message. */
  aj_variant_init_default(&v, AJ_KERNEL_ADAMW32);
  CHECK_STATUS(aj_variant_parse(NULL, "adamw32/opencl/wd", &v), ADAMJIT_OK);
  CHECK(v.weight_decay == 1 && v.nonfinite_guard == 0);
}

/* adamw8's b=0 (one absmax per tensor) and the clip family: text, order in the space, and
 * that nothing else takes them. */
static void test_tensor_block_and_clip(adamjit_context* ctx) {
  aj_variant v = parsed(ctx, "adamw8/cuda/b=0/amsgrad/p=bf16");
  CHECK(v.family == AJ_KERNEL_ADAMW8 && v.block_size == 0 && v.amsgrad == 1 && v.param_dtype == ADAMJIT_BF16 &&
        v.state_bits == 8);
  char text[AJ_VARIANT_TEXT_MAX];
  aj_variant_format(&v, text, sizeof text);
  CHECK_MSG(strcmp(text, "adamw8/cuda/p=bf16/g=f32/b=0/amsgrad/wg=256/ept=4/vec=4") == 0, "%s", text);
  round_trip(ctx, &v);
  aj_variant w = parsed(ctx, "adamw8/cuda/p=bf16/b=256/amsgrad");
  CHECK(!aj_variant_equal(&v, &w) && aj_variant_hash(&v) != aj_variant_hash(&w));
  aj_variant_init_default(&w, AJ_KERNEL_ADAMW8);
  w.block_size = 0;
  CHECK_OK(aj_variant_check(ctx, &w));

  v = parsed(ctx, "clip/cuda/nonfinite/wg=32/vec=1/ept=1");
  CHECK(v.family == AJ_KERNEL_CLIP && v.nonfinite_guard == 1 && v.wg_size == 32 && v.block_size == 0 &&
        v.state_bits == 32 && v.amsgrad == 0 && v.clipping == 0);
  aj_variant_format(&v, text, sizeof text);
  CHECK_MSG(strcmp(text, "clip/cuda/nonfinite/wg=32/ept=1/vec=1") == 0, "%s", text);
  v = parsed(ctx, "clip/opencl/bits=32");
  aj_variant_format(&v, text, sizeof text);
  CHECK_MSG(strcmp(text, "clip/opencl/wg=256/ept=4/vec=4") == 0, "%s", text);
  aj_variant_init_default(&w, AJ_KERNEL_CLIP);
  aj_variant_format(&w, text, sizeof text);
  CHECK_MSG(strcmp(text, "clip/opencl/nonfinite/wg=256/ept=4/vec=4") == 0, "%s", text);

  /* The adamw8 space: the blockwise keys first, in the order they had before b=0 existed
   * (p, g, block 64..4096, amsgrad, wd, clip, nonfinite), then the same with b=0, then the
   * blockwise ones with multi (no clip). */
  int n = aj_variant_enumerate(AJ_KERNEL_ADAMW8, AJ_DIALECT_CUDA, NULL, 0);
  aj_variant* vs = test_calloc((size_t)n, sizeof *vs);
  aj_variant_enumerate(AJ_KERNEL_ADAMW8, AJ_DIALECT_CUDA, vs, n);
  static const adamjit_dtype dts[3] = {ADAMJIT_F32, ADAMJIT_F16, ADAMJIT_BF16};
  int i = 0, mismatches = 0;
  for (int run = 0; run < 3; run++)
    for (int ip = 0; ip < 3; ip++)
      for (int ig = 0; ig < 3; ig++)
        for (int b = run == 1 ? 0 : 64; run == 1 ? b == 0 : b <= 4096; b = run == 1 ? 1 : 2 * b)
          for (int f = 0; f < 16; f++) {
            if (run == 2 && (f >> 1) & 1) continue; /* multi has no clip */
            aj_variant e;
            aj_variant_init_default(&e, AJ_KERNEL_ADAMW8);
            e.dialect = AJ_DIALECT_CUDA;
            e.param_dtype = dts[ip];
            e.grad_dtype = dts[ig];
            e.block_size = b;
            e.amsgrad = (f >> 3) & 1;
            e.weight_decay = (f >> 2) & 1;
            e.clipping = (f >> 1) & 1;
            e.nonfinite_guard = f & 1;
            e.multi = run == 2;
            if (i < n && !aj_variant_equal(&e, &vs[i]) && mismatches++ < 5) {
              char a[AJ_VARIANT_TEXT_MAX], got[AJ_VARIANT_TEXT_MAX];
              aj_variant_format(&e, a, sizeof a);
              aj_variant_format(&vs[i], got, sizeof got);
              fprintf(stderr, "adamw8 variant %d: %s, expected %s\n", i, got, a);
            }
            i++;
          }
  CHECK(i == n && i == 1656);
  CHECK(mismatches == 0);
  free(vs);
  aj_variant cl[2];
  CHECK(aj_variant_enumerate(AJ_KERNEL_CLIP, AJ_DIALECT_OPENCL, cl, 2) == 2);
  CHECK(cl[0].nonfinite_guard == 0 && cl[1].nonfinite_guard == 1 && cl[0].family == AJ_KERNEL_CLIP);

  /* The message of an out-of-range adamw8 block offers 0; the others do not. */
  aj_variant_init_default(&w, AJ_KERNEL_ADAMW8);
  w.block_size = 32;
  CHECK_STATUS(aj_variant_check(ctx, &w), ADAMJIT_ERR_INVALID_VALUE);
  CHECK(strstr(adamjit_context_last_error(ctx), "0 (one absmax per tensor)") != NULL);
  aj_variant_init_default(&w, AJ_KERNEL_QUANTIZE);
  w.block_size = 0;
  CHECK_STATUS(aj_variant_check(ctx, &w), ADAMJIT_ERR_INVALID_VALUE);
  CHECK(strstr(adamjit_context_last_error(ctx), "block_size = 0 (b=0)") != NULL);
  CHECK(strstr(adamjit_context_last_error(ctx), "one absmax") == NULL);
  aj_variant_init_default(&w, AJ_KERNEL_DEQUANTIZE);
  w.block_size = 0;
  CHECK_STATUS(aj_variant_check(ctx, &w), ADAMJIT_ERR_INVALID_VALUE);
  /* clip keeps the neutral values of the dimensions it does not have */
  aj_variant_init_default(&w, AJ_KERNEL_CLIP);
  w.block_size = 256;
  CHECK_STATUS(aj_variant_check(ctx, &w), ADAMJIT_ERR_INVALID_VALUE);
  aj_variant_init_default(&w, AJ_KERNEL_CLIP);
  w.grad_dtype = ADAMJIT_F16;
  CHECK_STATUS(aj_variant_check(ctx, &w), ADAMJIT_ERR_INVALID_VALUE);
  aj_variant_init_default(&w, AJ_KERNEL_CLIP);
  w.clipping = 1;
  CHECK_STATUS(aj_variant_check(ctx, &w), ADAMJIT_ERR_INVALID_VALUE);
  aj_variant_init_default(&w, AJ_KERNEL_CLIP);
  w.state_bits = 8;
  CHECK_STATUS(aj_variant_check(ctx, &w), ADAMJIT_ERR_INVALID_VALUE);
}

/* Every malformed key is refused with the expected status, a message naming the token, and
 * *out untouched. */
static void test_malformed(adamjit_context* ctx) {
  static const struct {
    const char* key;
    const char* names; /* a part of the message */
  } bad[] = {
      {"adamw16/opencl", "\"adamw16\""},
      {"ADAMW32/opencl", "\"ADAMW32\""},
      {" adamw32/opencl", "\" adamw32\""},
      {"adamw32", "no dialect"},
      {"adamw32/metal", "\"metal\""},
      {"adamw32/opencl/foo=1", "\"foo=1\""},
      {"adamw32/opencl/fast", "\"fast\""},
      {"adamw32/opencl/wg=64/wg=128", "\"wg=128\""},
      {"adamw32/opencl/wd/amsgrad/wd", "duplicate token \"wd\""},
      {"adamw8/opencl/b=100", "b=100"},
      {"adamw8/opencl/b=8192", "b=8192"},
      {"adamw8/opencl/b=32", "b=32"},
      {"quantize/opencl/b=0", "b=0"},
      {"dequantize/cuda/b=0", "b=0"},
      {"adamw8/opencl/b=00", "\"b=00\""},
      {"adamw8/opencl/b=-0", "\"b=-0\""},
      {"adamw8/opencl/b=0/b=0", "duplicate token \"b=0\""},
      {"clip", "no dialect"},
      {"clip/metal", "\"metal\""},
      {"clip/opencl/clip", "token \"clip\" does not apply to family clip"},
      {"clip/opencl/b=0", "\"b=0\""},
      {"clip/opencl/p=f32", "\"p=f32\""},
      {"clip/cuda/g=f16", "\"g=f16\""},
      {"clip/cuda/amsgrad", "\"amsgrad\""},
      {"clip/cuda/wd", "\"wd\""},
      {"clip/cuda/bits=8", "bits=8"},
      {"clip/cuda/wg=16", "wg=16"},
      {"clips/cuda", "\"clips\""},
      {"adamw32/opencl/wg=48", "wg=48"},
      {"adamw32/opencl/wg=16", "wg=16"},
      {"adamw32/opencl/wg=2048", "wg=2048"},
      {"adamw32/opencl/ept=0", "ept=0"},
      {"adamw32/opencl/ept=17", "ept=17"},
      {"adamw32/opencl/vec=3", "vec=3"},
      {"adamw32/opencl/vec=16/ept=16", "vec=16"},
      {"adamw32/opencl/vec=8/ept=4", "vec=8"},
      {"adamw32/opencl/vec=8", "vec=8"}, /* against the default ept=4 */
      {"adamw32/opencl/p=f64", "p=f64"},
      {"adamw32/opencl/g=", "\"g=\""},
      {"adamw32/opencl/b=256", "\"b=256\""},
      {"adamw32/opencl/bits=8", "bits=8"},
      {"adamw8/opencl/bits=32", "bits=32"},
      {"sqnorm/cuda/p=f16", "\"p=f16\""},
      {"quantize/cuda/g=f16", "\"g=f16\""},
      {"quantize/cuda/amsgrad", "\"amsgrad\""},
      {"sqnorm/cuda/wd", "\"wd\""},
      {"dequantize/opencl/nonfinite", "\"nonfinite\""},
      {"adamw32/opencl/wg=0256", "\"wg=0256\""},
      {"adamw32/opencl/wg=+256", "\"wg=+256\""},
      {"adamw32/opencl/wg=-256", "\"wg=-256\""},
      {"adamw32/opencl/wg=256x", "\"wg=256x\""},
      {"adamw32/opencl/wg=0x100", "\"wg=0x100\""},
      {"adamw32/opencl/wg=99999999999", "\"wg=99999999999\""},
      {"adamw32/opencl/wg=", "\"wg=\""},
      {"adamw32/opencl/wg", "\"wg\""},
      {"adamw32/opencl/amsgrad=1", "\"amsgrad=1\""},
      {"adamw32/opencl/wg=256 ", "\"wg=256 \""},
      {"", "empty"},
      {"adamw32/opencl/", "empty token after \"opencl\""},
      {"adamw32/opencl/wd/", "empty token after \"wd\""},
      {"adamw32//wd", "\"\""},
      {"adamw32/opencl//wd", "empty token after \"opencl\""},
      {"/adamw32/opencl", "\"\""},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    aj_variant out, before;
    memset(&out, 0x5A, sizeof out);
    before = out;
    adamjit_status st = aj_variant_parse(ctx, bad[i].key, &out);
    CHECK_MSG(st == ADAMJIT_ERR_INVALID_VALUE, "\"%s\" gave %s", bad[i].key, adamjit_status_string(st));
    const char* msg = adamjit_context_last_error(ctx);
    CHECK_MSG(strstr(msg, bad[i].names) != NULL, "\"%s\": message \"%s\" does not name %s", bad[i].key, msg,
              bad[i].names);
    CHECK_MSG(memcmp(&out, &before, sizeof out) == 0, "\"%s\" wrote *out", bad[i].key);
    /* The same without a context, through the thread's message. */
    CHECK(aj_variant_parse(NULL, bad[i].key, &out) == ADAMJIT_ERR_INVALID_VALUE);
    CHECK(strstr(adamjit_last_error(), bad[i].names) != NULL);
  }
  char longkey[400];
  memset(longkey, 'w', sizeof longkey - 1);
  longkey[sizeof longkey - 1] = '\0';
  aj_variant out;
  CHECK_STATUS(aj_variant_parse(ctx, longkey, &out), ADAMJIT_ERR_INVALID_VALUE);
  CHECK(strstr(adamjit_context_last_error(ctx), "longer than any valid key") != NULL);
  CHECK_STATUS(aj_variant_parse(ctx, NULL, &out), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK(strstr(adamjit_context_last_error(ctx), "text") != NULL);
  CHECK_STATUS(aj_variant_parse(ctx, "adamw32/opencl", NULL), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK_STATUS(aj_variant_parse(NULL, NULL, &out), ADAMJIT_ERR_NULL_ARGUMENT);
}

/* The struct API names the field and its value. */
static void test_check_messages(adamjit_context* ctx) {
  static const struct {
    const char* field;
    int value;
    const char* names;
  } bad[] = {
      {"family", 9, "family = 9"},
      {"dialect", 2, "dialect = 2"},
      {"param_dtype", 3, "param_dtype = 3"},
      {"grad_dtype", -1, "grad_dtype = -1"},
      {"state_bits", 16, "state_bits = 16"},
      {"block_size", 100, "block_size = 100 (b=100)"},
      {"amsgrad", 2, "amsgrad = 2"},
      {"weight_decay", -1, "weight_decay = -1"},
      {"clipping", 7, "clipping = 7"},
      {"nonfinite_guard", 3, "nonfinite_guard = 3"},
      {"wg_size", 48, "wg_size = 48 (wg=48)"},
      {"elems_per_thread", 0, "elems_per_thread = 0 (ept=0)"},
      {"vec_width", 3, "vec_width = 3 (vec=3)"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    aj_variant v;
    aj_variant_init_default(&v, AJ_KERNEL_ADAMW8);
    int x = bad[i].value;
    if (!strcmp(bad[i].field, "family")) v.family = (aj_kernel_family)x;
    if (!strcmp(bad[i].field, "dialect")) v.dialect = (aj_dialect)x;
    if (!strcmp(bad[i].field, "param_dtype")) v.param_dtype = (adamjit_dtype)x;
    if (!strcmp(bad[i].field, "grad_dtype")) v.grad_dtype = (adamjit_dtype)x;
    if (!strcmp(bad[i].field, "state_bits")) v.state_bits = x;
    if (!strcmp(bad[i].field, "block_size")) v.block_size = x;
    if (!strcmp(bad[i].field, "amsgrad")) v.amsgrad = x;
    if (!strcmp(bad[i].field, "weight_decay")) v.weight_decay = x;
    if (!strcmp(bad[i].field, "clipping")) v.clipping = x;
    if (!strcmp(bad[i].field, "nonfinite_guard")) v.nonfinite_guard = x;
    if (!strcmp(bad[i].field, "wg_size")) v.wg_size = x;
    if (!strcmp(bad[i].field, "elems_per_thread")) v.elems_per_thread = x;
    if (!strcmp(bad[i].field, "vec_width")) v.vec_width = x;
    CHECK_STATUS(aj_variant_check(ctx, &v), ADAMJIT_ERR_INVALID_VALUE);
    const char* msg = adamjit_context_last_error(ctx);
    CHECK_MSG(strstr(msg, bad[i].names) != NULL, "%s: message \"%s\"", bad[i].field, msg);
  }
  /* Dimensions outside the family must hold their neutral values. */
  aj_variant v;
  aj_variant_init_default(&v, AJ_KERNEL_ADAMW32);
  v.block_size = 256;
  CHECK_STATUS(aj_variant_check(ctx, &v), ADAMJIT_ERR_INVALID_VALUE);
  CHECK(strstr(adamjit_context_last_error(ctx), "block_size = 256") != NULL);
  aj_variant_init_default(&v, AJ_KERNEL_SQNORM);
  v.param_dtype = ADAMJIT_BF16;
  CHECK_STATUS(aj_variant_check(ctx, &v), ADAMJIT_ERR_INVALID_VALUE);
  CHECK(strstr(adamjit_context_last_error(ctx), "param_dtype = bf16") != NULL);
  aj_variant_init_default(&v, AJ_KERNEL_DEQUANTIZE);
  v.nonfinite_guard = 1;
  CHECK_STATUS(aj_variant_check(ctx, &v), ADAMJIT_ERR_INVALID_VALUE);
  aj_variant_init_default(&v, AJ_KERNEL_QUANTIZE);
  v.weight_decay = 1;
  CHECK_STATUS(aj_variant_check(ctx, &v), ADAMJIT_ERR_INVALID_VALUE);
  CHECK_STATUS(aj_variant_check(ctx, NULL), ADAMJIT_ERR_NULL_ARGUMENT);
}

static void test_format_buffer(void) {
  aj_variant v;
  aj_variant_init_default(&v, AJ_KERNEL_ADAMW32);
  char full[AJ_VARIANT_TEXT_MAX];
  size_t n = aj_variant_format(&v, full, sizeof full);
  CHECK(strcmp(full, "adamw32/opencl/p=f32/g=f32/nonfinite/wg=256/ept=4/vec=4") == 0);
  char small[8];
  memset(small, 'x', sizeof small);
  CHECK(aj_variant_format(&v, small, sizeof small) == n); /* snprintf-like: the full length */
  CHECK(memcmp(small, full, 7) == 0 && small[7] == '\0');
  CHECK(aj_variant_format(NULL, small, sizeof small) == 0 && small[0] == '\0');
  CHECK(aj_variant_hash(NULL) == 0);
  CHECK(aj_variant_equal(NULL, NULL) == 1);
  CHECK(aj_variant_equal(&v, NULL) == 0 && aj_variant_equal(NULL, &v) == 0);
  aj_variant w = v;
  CHECK(aj_variant_equal(&v, &w));
  w.vec_width = 2;
  CHECK(!aj_variant_equal(&v, &w) && aj_variant_hash(&v) != aj_variant_hash(&w));
}

static int by_hash(const void* a, const void* b) {
  uint64_t x = ((const seen_variant*)a)->h, y = ((const seen_variant*)b)->h;
  return x < y ? -1 : x > y;
}

/* Equal hashes only for equal variants (the launch sample revisits the default launch). */
static void test_no_collisions(void) {
  qsort(seen, n_seen, sizeof *seen, by_hash);
  size_t distinct = n_seen ? 1 : 0;
  for (size_t i = 1; i < n_seen; i++) {
    if (seen[i].h != seen[i - 1].h) {
      distinct++;
      continue;
    }
    char a[AJ_VARIANT_TEXT_MAX], b[AJ_VARIANT_TEXT_MAX];
    aj_variant_format(&seen[i].v, a, sizeof a);
    aj_variant_format(&seen[i - 1].v, b, sizeof b);
    CHECK_MSG(aj_variant_equal(&seen[i].v, &seen[i - 1].v), "hash collision: %s and %s", a, b);
  }
  printf("hashed %zu variants, %zu distinct; longest key %zu characters\n", n_seen, distinct, longest_text);
  CHECK(distinct >= 3886);
}

int main(void) {
  adamjit_context* ctx = test_cpu_context();
  test_defaults();
  test_enumerated_space(ctx);
  test_launch_parameters(ctx);
  test_hand_written(ctx);
  test_tensor_block_and_clip(ctx);
  test_malformed(ctx);
  test_check_messages(ctx);
  test_format_buffer();
  test_no_collisions();
  free(seen);
  adamjit_context_destroy(ctx);
  return test_finish("test_variant_key");
}
