/* checkpoint_writer OUTFILE: saves a small optimizer (two groups, amsgrad in one, percentile
 * clipping on one tensor, 8-bit blockwise state with amsgrad on one) after 3 steps with known
 * gradients, and writes OUTFILE.expect.json with what a safetensors reader must find in it
 * (check_safetensors.py reads both). Floats are printed with 9 significant digits, enough to
 * recover every fp32 value exactly. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adamjit/adamjit.h"

#define NT 4
#define STEPS 3
#define MAXN 150

static const int64_t NUMEL[NT] = {10, 7, 5, MAXN};
static const int GROUP[NT] = {0, 1, 0, 1};
static const int PCT[NT] = {100, 100, 50, 100};
static const char* NAME[NT] = {"w0", "w1_amsgrad", "w2_clip", "w3_8bit"};
/* Tensor 3 stores 8-bit state (min_8bit_size lowered for it) in blocks of 64: two full
 * blocks and a ragged one of 22. */
#define Q8_TENSOR 3
#define Q8_BLOCK 64

static float grad_value(int step, int t, int64_t j) {
  float sign = (j % 2) ? -1.0f : 1.0f;
  /* Tensor 2's gradients grow each step, so its clipping history holds distinct norms. */
  float growth = t == 2 ? (float)(step * step) : (float)step;
  return sign * 0.01f * (float)(j + 1) * growth + 0.001f * (float)t;
}

static int fail(const char* what, adamjit_status st) {
  fprintf(stderr, "checkpoint_writer: %s: %s: %s\n", what, adamjit_status_string(st), adamjit_last_error());
  return 1;
}

#define TRY(call, what)                        \
  do {                                         \
    adamjit_status st_ = (call);               \
    if (st_ != ADAMJIT_OK) return fail(what, st_); \
  } while (0)

static void print_floats(FILE* f, const float* x, int64_t n) {
  fputc('[', f);
  for (int64_t j = 0; j < n; j++) fprintf(f, "%s%.9g", j ? ", " : "", (double)x[j]);
  fputc(']', f);
}

static void print_group(FILE* f, const adamjit_hparams* hp) {
  fprintf(f, "{\"lr\": %.9g, \"betas\": [%.9g, %.9g], \"eps\": %.9g, \"weight_decay\": %.9g, \"amsgrad\": %s}",
          (double)hp->lr, (double)hp->beta1, (double)hp->beta2, (double)hp->eps, (double)hp->weight_decay,
          hp->amsgrad ? "true" : "false");
}

/* Percentile clipping's history after STEPS steps (SPEC 4): slot t % 100 holds step t's
 * squared norm, and step 1 filled every slot. */
static void print_gnorm(FILE* f, int t) {
  double sq[STEPS + 1];
  for (int s = 1; s <= STEPS; s++) {
    sq[s] = 0;
    for (int64_t j = 0; j < NUMEL[t]; j++) sq[s] += (double)grad_value(s, t, j) * (double)grad_value(s, t, j);
  }
  float hist[100];
  for (int k = 0; k < 100; k++) hist[k] = (float)sq[1];
  for (int s = 2; s <= STEPS; s++) hist[s % 100] = (float)sq[s];
  fprintf(f, "{\"dtype\": \"F32\", \"shape\": [100], \"rtol\": 1e-5, \"approx\": ");
  print_floats(f, hist, 100);
  fputc('}', f);
}

/* The moments of tensor t after STEPS steps in double precision, without quantization
 * (k = 0: m, 1: v, 2: the running maximum of v); an 8-bit state must decode close to them. */
static void reference_state(const adamjit_hparams* hp, int t, int k, double* out) {
  for (int64_t j = 0; j < NUMEL[t]; j++) {
    double m = 0, v = 0, vmax = 0;
    for (int s = 1; s <= STEPS; s++) {
      double g = grad_value(s, t, j);
      m = hp->beta1 * m + (1.0 - hp->beta1) * g;
      v = hp->beta2 * v + (1.0 - hp->beta2) * g * g;
      vmax = v > vmax ? v : vmax;
    }
    out[j] = k == 0 ? m : k == 1 ? v : vmax;
  }
}

static int write_expect_body(FILE* f, adamjit_optimizer* opt) {
  fprintf(f, "{\n  \"tensor_count\": %d,\n  \"groups\": [", NT);
  for (int g = 0; g < 2; g++) {
    adamjit_hparams hp;
    TRY(adamjit_optimizer_get_group(opt, g, &hp), "get_group");
    fputs(g ? ", " : "", f);
    print_group(f, &hp);
  }
  fputs("],\n  \"names\": [", f);
  for (int t = 0; t < NT; t++) fprintf(f, "%s\"%s\"", t ? ", " : "", NAME[t]);
  fputs("],\n  \"keys\": {", f);
  const char* sep = "\n";
  for (int t = 0; t < NT; t++) {
    adamjit_tensor_info info = {.struct_size = sizeof info};
    TRY(adamjit_optimizer_tensor_info(opt, t, &info), "tensor_info");
    fprintf(f, "%s    \"state.%d.step\": {\"dtype\": \"I64\", \"shape\": [], \"value\": %llu}", sep, t,
            (unsigned long long)info.step);
    sep = ",\n";
    static const char* suffix[3] = {"state1", "state2", "state3"};
    int q8 = info.state_bits == 8;
    for (int k = 0; k < (info.amsgrad ? 3 : 2); k++) {
      float x[MAXN];
      TRY(adamjit_optimizer_read_state(opt, t, (adamjit_state_kind)k, x, NUMEL[t]), "read_state");
      /* 8-bit: U8 codes whose decoding qmap[code] * absmax[j / block] is read_state's value */
      fprintf(f, "%s    \"state.%d.%s\": {\"dtype\": \"%s\", \"shape\": [%lld], ", sep, t, suffix[k],
              q8 ? "U8" : "F32", (long long)NUMEL[t]);
      if (q8)
        fprintf(f, "\"decode\": {\"qmap\": \"state.%d.qmap%d\", \"absmax\": \"state.%d.absmax%d\", \"block\": %lld}, ",
                t, k == 0 ? 1 : 2, t, k + 1, (long long)info.quant_block_size);
      fputs("\"values\": ", f);
      print_floats(f, x, NUMEL[t]);
      if (q8) {
        /* within 5% of the block's absmax: three steps of rounding to the map (its widest
         * gap, near 1, is about 1.4% of the absmax) */
        adamjit_hparams hp;
        TRY(adamjit_optimizer_get_group(opt, GROUP[t], &hp), "get_group");
        double ref[MAXN];
        reference_state(&hp, t, k, ref);
        fputs(", \"ref_tol\": 0.05, \"reference\": [", f);
        for (int64_t j = 0; j < NUMEL[t]; j++) fprintf(f, "%s%.9g", j ? ", " : "", ref[j]);
        fputc(']', f);
      }
      fputc('}', f);
    }
    if (q8) {
      int64_t blocks = (NUMEL[t] + info.quant_block_size - 1) / info.quant_block_size;
      for (int k = 0; k < (info.amsgrad ? 3 : 2); k++)
        fprintf(f, "%s    \"state.%d.absmax%d\": {\"dtype\": \"F32\", \"shape\": [%lld], "
                "\"absmax_of\": \"state.%d.%s\"}", sep, t, k + 1, (long long)blocks, t, suffix[k]);
      for (int q = 0; q < 2; q++) {
        float map[256];
        TRY(adamjit_qmap_values(q ? ADAMJIT_QMAP_UNSIGNED : ADAMJIT_QMAP_SIGNED, map, 256), "qmap_values");
        fprintf(f, "%s    \"state.%d.qmap%d\": {\"dtype\": \"F32\", \"shape\": [256], \"qmap\": \"%s\", \"values\": ",
                sep, t, q + 1, q ? "unsigned" : "signed");
        print_floats(f, map, 256);
        fputc('}', f);
      }
    }
    if (PCT[t] < 100) {
      fprintf(f, "%s    \"state.%d.gnorm_vec\": ", sep, t);
      print_gnorm(f, t);
    }
  }
  fputs("\n  }\n}\n", f);
  return 0;
}

static int write_expect(const char* path, adamjit_optimizer* opt) {
  FILE* f = fopen(path, "w");
  if (!f) {
    perror(path);
    return 1;
  }
  int rc = write_expect_body(f, opt);
  return (fclose(f) != 0) | rc;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: checkpoint_writer OUTFILE\n");
    return 2;
  }
  adamjit_context_desc desc;
  adamjit_context_desc_init_default(&desc);
  desc.backend = ADAMJIT_BACKEND_CPU;
  adamjit_context* ctx;
  TRY(adamjit_context_create(&desc, &ctx), "context_create");
  adamjit_optimizer* opt;
  TRY(adamjit_optimizer_create(ctx, NULL, &opt), "optimizer_create");
  adamjit_hparams hp = {.lr = 3e-3f, .beta1 = 0.8f, .beta2 = 0.99f, .eps = 1e-7f, .weight_decay = 0.1f, .amsgrad = 1};
  int group;
  TRY(adamjit_optimizer_add_group(opt, &hp, &group), "add_group");

  adamjit_mem param[NT], grad[NT];
  for (int t = 0; t < NT; t++) {
    size_t bytes = (size_t)NUMEL[t] * sizeof(float);
    TRY(adamjit_mem_alloc(ctx, bytes, &param[t]), "mem_alloc");
    TRY(adamjit_mem_alloc(ctx, bytes, &grad[t]), "mem_alloc");
    float p[MAXN];
    for (int64_t j = 0; j < NUMEL[t]; j++) p[j] = 0.5f - 0.1f * (float)j;
    TRY(adamjit_mem_write(ctx, param[t], 0, p, bytes), "mem_write");
    adamjit_tensor_desc d;
    adamjit_tensor_desc_init_default(&d);
    d.param = param[t];
    d.grad = grad[t];
    d.numel = NUMEL[t];
    d.group = GROUP[t];
    d.percentile_clipping = PCT[t];
    d.name = NAME[t];
    if (t == Q8_TENSOR) {
      d.optim_bits = 8;
      d.min_8bit_size = 0;
      d.quant_block_size = Q8_BLOCK;
    }
    int index;
    TRY(adamjit_optimizer_add_tensor(opt, &d, &index), "add_tensor");
  }
  for (int s = 1; s <= STEPS; s++) {
    for (int t = 0; t < NT; t++) {
      float g[MAXN];
      for (int64_t j = 0; j < NUMEL[t]; j++) g[j] = grad_value(s, t, j);
      TRY(adamjit_mem_write(ctx, grad[t], 0, g, (size_t)NUMEL[t] * sizeof(float)), "mem_write");
    }
    TRY(adamjit_optimizer_step(opt, NULL), "step");
  }
  TRY(adamjit_optimizer_save(opt, argv[1]), "save");

  size_t n = strlen(argv[1]);
  char* expect = malloc(n + sizeof ".expect.json");
  memcpy(expect, argv[1], n);
  memcpy(expect + n, ".expect.json", sizeof ".expect.json");
  int rc = write_expect(expect, opt);
  free(expect);

  adamjit_optimizer_destroy(opt);
  for (int t = 0; t < NT; t++) {
    adamjit_mem_free(ctx, param[t]);
    adamjit_mem_free(ctx, grad[t]);
  }
  adamjit_context_destroy(ctx);
  return rc;
}
