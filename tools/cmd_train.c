/* `adamjit train`: trains the same small MLP on the same data from the same initial weights
 * once per optimizer configuration and compares loss curves, held-out accuracy, state size
 * and step time. The parameters live in backend memory, as they would in a real trainer:
 * the host computes gradients, writes them to the backend, the library steps, and the host
 * reads the parameters back. */
#include "cli.h"
#include "mlp.h"
#include "rng.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* One row of the comparison. New optimizers (paged, ...) join by adding rows here. The 8-bit
 * rows keep the library's min_8bit_size (4096): the MLP's two large weights (4096 and 16384
 * elements) get 8-bit state, the small tensors stay 32-bit, as bitsandbytes does. */
typedef struct train_variant {
  const char* name;
  int optim_bits;
  int amsgrad;
  int percentile_clipping;
  int is_paged;
  int quant_block_size; /* 8-bit only; the provisional block under the ERROR policy */
  int block_wise;       /* 8-bit only; 0 = one absmax per tensor */
  int block_policy;     /* ADAMJIT_BLOCK_POLICY_*: how each 8-bit tensor's block is chosen */
  double block_limit;   /* MEMORY: block_overhead_max; ERROR: block_error_max; 0 = the default */
} train_variant;

/* The policy rows: MEMORY with half the default absmax budget (1/128 of the code bytes:
 * block 512 on both 8-bit tensors, a little less state than 8bit's 256), and ERROR with its
 * default limit, which measures each tensor's first gradient. */
#define POLICY_MEMORY_OVERHEAD (1.0 / 128)

static const train_variant variants[] = {
    {"32bit", 32, 0, 100, 0, 256, 1, ADAMJIT_BLOCK_POLICY_FIXED, 0.0},
    {"32bit-amsgrad", 32, 1, 100, 0, 256, 1, ADAMJIT_BLOCK_POLICY_FIXED, 0.0},
    {"32bit-pclip5", 32, 0, 5, 0, 256, 1, ADAMJIT_BLOCK_POLICY_FIXED, 0.0},
    {"8bit", 8, 0, 100, 0, 256, 1, ADAMJIT_BLOCK_POLICY_FIXED, 0.0},
    {"8bit-amsgrad", 8, 1, 100, 0, 256, 1, ADAMJIT_BLOCK_POLICY_FIXED, 0.0},
    {"8bit-b64", 8, 0, 100, 0, 64, 1, ADAMJIT_BLOCK_POLICY_FIXED, 0.0},
    {"8bit-b2048", 8, 0, 100, 0, 2048, 1, ADAMJIT_BLOCK_POLICY_FIXED, 0.0},
    {"8bit-nonblockwise", 8, 0, 100, 0, 256, 0, ADAMJIT_BLOCK_POLICY_FIXED, 0.0},
    {"8bit-policy-memory", 8, 0, 100, 0, 256, 1, ADAMJIT_BLOCK_POLICY_MEMORY, POLICY_MEMORY_OVERHEAD},
    {"8bit-policy-error", 8, 0, 100, 0, 256, 1, ADAMJIT_BLOCK_POLICY_ERROR, 0.0},
};
enum { VARIANT_COUNT = sizeof variants / sizeof variants[0] };

enum {
  DEFAULT_STEPS = 400,
  MAX_STEPS = 1000000,
  BATCH = 64,
  TRAIN_POINTS = 16384,
  TEST_POINTS = 2048,
  FINAL_LOSS_WINDOW = 20 /* steps averaged into "final loss": one batch is too noisy */
};

/* Schedule: linear warm-up over the first WARMUP_FRACTION of the steps, then cosine decay
 * to MIN_LR_FRACTION of the peak. Peaks of 3e-3..1e-2 all converge on this task; 5e-3 gets
 * within a few hundred steps to ~97% held-out accuracy with room to spare for less precise
 * (8-bit) optimizer state. */
#define PEAK_LR 5e-3
#define MIN_LR_FRACTION 0.1
#define WARMUP_FRACTION 0.1

typedef struct train_options {
  adamjit_backend backend;
  int steps;
  uint64_t seed;
  const char* out_dir;
  int quiet;
} train_options;

typedef struct train_result {
  double* loss; /* per step */
  double final_loss;
  double accuracy;
  double step_ms;
  uint64_t state_bytes;
  int64_t params;        /* parameters of all tensors */
  int64_t params_8bit;   /* of the tensors whose state is actually stored in 8 bits */
  uint64_t bytes_8bit;   /* state bytes of those tensors */
  uint64_t nonfinite;
  char blocks[64];       /* the 8-bit tensors' quantization blocks, "64x1 512x1"; "-" if none */
} train_result;

/* Everything one configuration's run needs; reused across configurations. */
typedef struct trainer {
  const train_options* options;
  adamjit_context* ctx;
  mlp_dataset train, test;
  mlp_params params, grads; /* host copies */
  mlp_workspace ws;
  adamjit_mem param_mem[MLP_TENSORS];
  adamjit_mem grad_mem[MLP_TENSORS];
  int* order; /* TRAIN_POINTS sample indices, reshuffled every epoch */
} trainer;

/* ------------------------------------------------------------------ options */

static int parse_options(int argc, char** argv, train_options* o) {
  o->backend = ADAMJIT_BACKEND_AUTO;
  o->steps = DEFAULT_STEPS;
  o->seed = 1;
  o->out_dir = "adamjit-train-out";
  o->quiet = 0;
  for (int i = 1; i < argc; i++) {
    const char* v = NULL;
    int r;
    if (cli_is_help(argv[i])) {
      cli_print_usage(stdout);
      return -1;
    } else if ((r = cli_option(argc, argv, &i, "--backend", &v)) != 0) {
      if (r < 0 || !cli_parse_backend("--backend", v, &o->backend)) return CLI_EXIT_USAGE;
    } else if ((r = cli_option(argc, argv, &i, "--steps", &v)) != 0) {
      if (r < 0 || !cli_parse_int("--steps", v, 1, MAX_STEPS, &o->steps)) return CLI_EXIT_USAGE;
    } else if ((r = cli_option(argc, argv, &i, "--seed", &v)) != 0) {
      int64_t seed;
      if (r < 0 || !cli_parse_int64("--seed", v, 0, INT64_MAX, &seed)) return CLI_EXIT_USAGE;
      o->seed = (uint64_t)seed;
    } else if ((r = cli_option(argc, argv, &i, "--out", &v)) != 0) {
      if (r < 0) return CLI_EXIT_USAGE;
      if (!*v) return cli_usage_error("--out: the directory name is empty");
      o->out_dir = v;
    } else if ((r = cli_flag(argv[i], "--quiet")) != 0) {
      if (r < 0) return CLI_EXIT_USAGE;
      o->quiet = 1;
    } else {
      return cli_usage_error("train: unknown option '%s'", argv[i]);
    }
  }
  return CLI_EXIT_OK;
}

/* mkdir -p: creates the missing parents too. */
static int make_dirs(const char* path) {
  char buf[PATH_MAX];
  if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
    errno = ENAMETOOLONG;
    return -1;
  }
  for (char* p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(buf, 0777) != 0 && errno != EEXIST) return -1;
    *p = '/';
  }
  if (mkdir(buf, 0777) != 0 && errno != EEXIST) return -1;
  struct stat st;
  if (stat(buf, &st) != 0) return -1;
  if (!S_ISDIR(st.st_mode)) {
    errno = ENOTDIR;
    return -1;
  }
  return 0;
}

static int join_path(char* buf, size_t size, const char* dir, const char* file) {
  return snprintf(buf, size, "%s/%s", dir, file) < (int)size ? 0 : -1;
}

/* ------------------------------------------------------------------ progress */

typedef struct progress {
  int enabled;
  int tty;
  double last_print;
} progress;

static void progress_report(progress* p, const char* variant, int step, int steps, double loss) {
  if (!p->enabled) return;
  if (p->tty) {
    /* A redraw per step would cost more than the step on a slow terminal. */
    double now = cli_now();
    if (step != steps && now - p->last_print < 0.1) return;
    p->last_print = now;
    fprintf(stderr, "\r%-18s step %*d/%d  loss %.4f", variant, (int)log10(steps) + 1, step, steps, loss);
    if (step == steps) fputc('\n', stderr);
    fflush(stderr);
    return;
  }
  int every = (steps + 9) / 10;
  if (step % every == 0 || step == steps)
    fprintf(stderr, "%s: step %d/%d (%d%%) loss %.4f\n", variant, step, steps, (int)(100.0 * step / steps), loss);
}

/* ------------------------------------------------------------------ training */

static double scheduled_lr(int step, int steps) {
  int warmup = (int)(WARMUP_FRACTION * steps);
  if (warmup < 1) warmup = 1;
  if (step < warmup) return PEAK_LR * (step + 1) / warmup;
  double decay_steps = steps - warmup > 1 ? steps - warmup - 1 : 1;
  double frac = (step - warmup) / decay_steps;
  double min_lr = PEAK_LR * MIN_LR_FRACTION;
  return min_lr + (PEAK_LR - min_lr) * 0.5 * (1.0 + cos(3.141592653589793 * frac));
}

/* The scheduler: every group gets the step's learning rate, the rest of its settings stay. */
static adamjit_status apply_lr(adamjit_optimizer* opt, double lr) {
  int groups = 0;
  adamjit_status st = adamjit_optimizer_group_count(opt, &groups);
  for (int g = 0; st == ADAMJIT_OK && g < groups; g++) {
    adamjit_hparams hp;
    st = adamjit_optimizer_get_group(opt, g, &hp);
    if (st != ADAMJIT_OK) break;
    hp.lr = (float)lr;
    st = adamjit_optimizer_set_group(opt, g, &hp);
  }
  return st;
}

static void shuffle(int* order, int count, rng* r) {
  for (int i = count - 1; i > 0; i--) {
    int j = (int)rng_below(r, (uint64_t)i + 1);
    int t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
}

/* Creates the optimizer of one configuration with the tensors registered: weights in group
 * 0 with weight decay, biases in group 1 without (the usual practice), both scheduled. */
static int build_optimizer(trainer* tr, const train_variant* v, adamjit_optimizer** out) {
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  cfg.hparams.lr = (float)scheduled_lr(0, tr->options->steps);
  cfg.hparams.amsgrad = v->amsgrad;
  cfg.optim_bits = v->optim_bits;
  cfg.percentile_clipping = v->percentile_clipping;
  cfg.is_paged = v->is_paged;
  cfg.quant_block_size = v->quant_block_size;
  cfg.block_wise = v->block_wise;
  cfg.quant_block_policy = v->block_policy;
  if (v->block_limit > 0.0 && v->block_policy == ADAMJIT_BLOCK_POLICY_MEMORY) cfg.block_overhead_max = v->block_limit;
  if (v->block_limit > 0.0 && v->block_policy == ADAMJIT_BLOCK_POLICY_ERROR) cfg.block_error_max = v->block_limit;
  adamjit_optimizer* opt = NULL;
  adamjit_status st = adamjit_optimizer_create(tr->ctx, &cfg, &opt);
  if (st != ADAMJIT_OK) return cli_library_error(tr->ctx, st, "creating the %s optimizer", v->name);

  adamjit_hparams bias_hp = cfg.hparams;
  bias_hp.weight_decay = 0.0f;
  int bias_group = 0;
  st = adamjit_optimizer_add_group(opt, &bias_hp, &bias_group);
  if (st != ADAMJIT_OK) {
    adamjit_optimizer_destroy(opt);
    return cli_library_error(tr->ctx, st, "adding the bias group to %s", v->name);
  }
  for (int t = 0; t < MLP_TENSORS; t++) {
    adamjit_tensor_desc desc;
    adamjit_tensor_desc_init_default(&desc);
    desc.param = tr->param_mem[t];
    desc.grad = tr->grad_mem[t];
    desc.numel = tr->params.numel[t];
    desc.group = t % 2 ? bias_group : 0;
    desc.name = mlp_tensor_name(t);
    int index;
    st = adamjit_optimizer_add_tensor(opt, &desc, &index);
    if (st != ADAMJIT_OK) {
      adamjit_optimizer_destroy(opt);
      return cli_library_error(tr->ctx, st, "registering %s with %s", desc.name, v->name);
    }
  }
  *out = opt;
  return CLI_EXIT_OK;
}

static adamjit_status upload_params(trainer* tr) {
  adamjit_status st = ADAMJIT_OK;
  for (int t = 0; t < MLP_TENSORS && st == ADAMJIT_OK; t++)
    st = adamjit_mem_write(tr->ctx, tr->param_mem[t], 0, tr->params.tensor[t],
                           (size_t)tr->params.numel[t] * sizeof(float));
  return st;
}

/* Gradients to the backend, one step, parameters back: the part that is timed. */
static adamjit_status optimizer_round_trip(trainer* tr, adamjit_optimizer* opt, uint64_t* nonfinite) {
  adamjit_status st = ADAMJIT_OK;
  for (int t = 0; t < MLP_TENSORS && st == ADAMJIT_OK; t++)
    st = adamjit_mem_write(tr->ctx, tr->grad_mem[t], 0, tr->grads.tensor[t],
                           (size_t)tr->grads.numel[t] * sizeof(float));
  if (st == ADAMJIT_OK) st = adamjit_optimizer_step(opt, nonfinite);
  for (int t = 0; t < MLP_TENSORS && st == ADAMJIT_OK; t++)
    st = adamjit_mem_read(tr->ctx, tr->params.tensor[t], tr->param_mem[t], 0,
                          (size_t)tr->params.numel[t] * sizeof(float));
  return st;
}

/* "64x1 512x1": how many 8-bit tensors got each block, smallest first ("-" when none). */
static void summarize_blocks(const int64_t block_of[MLP_TENSORS], char* out, size_t size) {
  size_t len = 0;
  int64_t last = 0;
  out[0] = '\0';
  for (;;) {
    int64_t next = 0; /* the smallest block above `last` */
    int count = 0;
    for (int t = 0; t < MLP_TENSORS; t++)
      if (block_of[t] > last && (next == 0 || block_of[t] < next)) next = block_of[t];
    if (next == 0) break;
    for (int t = 0; t < MLP_TENSORS; t++) count += block_of[t] == next;
    int w = snprintf(out + len, size - len, "%s%" PRId64 "x%d", len ? " " : "", next, count);
    if (w < 0 || (size_t)w >= size - len) break;
    len += (size_t)w;
    last = next;
  }
  if (!len) snprintf(out, size, "-");
}

static int run_variant(trainer* tr, const train_variant* v, train_result* res) {
  const int steps = tr->options->steps;
  mlp_params_init(&tr->params, tr->options->seed);
  adamjit_status st = upload_params(tr);
  if (st != ADAMJIT_OK) return cli_library_error(tr->ctx, st, "copying the initial weights to the backend");
  adamjit_optimizer* opt = NULL;
  int rc = build_optimizer(tr, v, &opt);
  if (rc != CLI_EXIT_OK) return rc;

  /* The same batch sequence for every configuration. */
  rng order_rng = rng_stream(tr->options->seed, 3);
  for (int i = 0; i < TRAIN_POINTS; i++) tr->order[i] = i;
  int cursor = TRAIN_POINTS;
  progress prog = {!tr->options->quiet, isatty(fileno(stderr)), 0.0};
  double step_seconds = 0.0;
  res->nonfinite = 0;

  for (int s = 0; s < steps; s++) {
    if (cursor + BATCH > TRAIN_POINTS) {
      shuffle(tr->order, TRAIN_POINTS, &order_rng);
      cursor = 0;
    }
    res->loss[s] = mlp_train_batch(&tr->params, &tr->grads, &tr->ws, &tr->train, tr->order + cursor, BATCH);
    cursor += BATCH;
    st = apply_lr(opt, scheduled_lr(s, steps));
    if (st != ADAMJIT_OK) {
      rc = cli_library_error(tr->ctx, st, "setting the learning rate of %s", v->name);
      goto done;
    }
    uint64_t nonfinite = 0;
    double t0 = cli_now();
    st = optimizer_round_trip(tr, opt, &nonfinite);
    step_seconds += cli_now() - t0;
    if (st != ADAMJIT_OK) {
      rc = cli_library_error(tr->ctx, st, "%s step %d", v->name, s + 1);
      goto done;
    }
    res->nonfinite += nonfinite;
    progress_report(&prog, v->name, s + 1, steps, res->loss[s]);
  }

  int window = steps < FINAL_LOSS_WINDOW ? steps : FINAL_LOSS_WINDOW;
  res->final_loss = 0.0;
  for (int s = steps - window; s < steps; s++) res->final_loss += res->loss[s] / window;
  res->accuracy = mlp_accuracy(&tr->params, &tr->ws, &tr->test);
  res->step_ms = 1e3 * step_seconds / steps;
  st = adamjit_optimizer_state_bytes(opt, &res->state_bytes);
  if (st != ADAMJIT_OK) {
    rc = cli_library_error(tr->ctx, st, "reading the state size of %s", v->name);
    goto done;
  }
  res->params = res->params_8bit = 0;
  res->bytes_8bit = 0;
  int64_t block_of[MLP_TENSORS];
  for (int t = 0; t < MLP_TENSORS; t++) {
    adamjit_tensor_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    st = adamjit_optimizer_tensor_info(opt, t, &info);
    if (st != ADAMJIT_OK) {
      rc = cli_library_error(tr->ctx, st, "reading the state of %s in %s", mlp_tensor_name(t), v->name);
      goto done;
    }
    res->params += info.numel;
    block_of[t] = info.state_bits == 8 ? info.quant_block_size : 0;
    if (info.state_bits == 8) {
      res->params_8bit += info.numel;
      res->bytes_8bit += info.state_bytes;
    }
  }
  summarize_blocks(block_of, res->blocks, sizeof res->blocks);
done:
  adamjit_optimizer_destroy(opt);
  return rc;
}

/* ------------------------------------------------------------------ setup */

static int trainer_init(trainer* tr, const train_options* o) {
  memset(tr, 0, sizeof *tr);
  tr->options = o;
  if (mlp_dataset_generate(&tr->train, TRAIN_POINTS, &tr->test, TEST_POINTS, o->seed) != 0 ||
      mlp_params_alloc(&tr->params) != 0 || mlp_params_alloc(&tr->grads) != 0 ||
      mlp_workspace_alloc(&tr->ws, BATCH) != 0 || !(tr->order = malloc(TRAIN_POINTS * sizeof(int))))
    return cli_error("out of memory");

  adamjit_context_desc desc;
  adamjit_context_desc_init_default(&desc);
  desc.backend = o->backend;
  adamjit_status st = adamjit_context_create(&desc, &tr->ctx);
  if (st != ADAMJIT_OK) return cli_library_error(NULL, st, "opening the %s backend", adamjit_backend_name(o->backend));
  for (int t = 0; t < MLP_TENSORS; t++) {
    size_t bytes = (size_t)tr->params.numel[t] * sizeof(float);
    st = adamjit_mem_alloc(tr->ctx, bytes, &tr->param_mem[t]);
    if (st == ADAMJIT_OK) st = adamjit_mem_alloc(tr->ctx, bytes, &tr->grad_mem[t]);
    if (st != ADAMJIT_OK) return cli_library_error(tr->ctx, st, "allocating backend memory for %s", mlp_tensor_name(t));
  }
  return CLI_EXIT_OK;
}

static void trainer_free(trainer* tr) {
  if (tr->ctx) {
    for (int t = 0; t < MLP_TENSORS; t++) {
      adamjit_mem_free(tr->ctx, tr->param_mem[t]);
      adamjit_mem_free(tr->ctx, tr->grad_mem[t]);
    }
    adamjit_context_destroy(tr->ctx);
  }
  free(tr->order);
  mlp_workspace_free(&tr->ws);
  mlp_params_free(&tr->params);
  mlp_params_free(&tr->grads);
  mlp_dataset_free(&tr->train);
  mlp_dataset_free(&tr->test);
}

static void print_header(const trainer* tr) {
  adamjit_backend backend = adamjit_context_backend(tr->ctx);
  char device[256] = "";
  if (adamjit_backend_device_name(backend, 0, device, sizeof device) != ADAMJIT_OK) device[0] = '\0';
  int64_t total = 0;
  for (int t = 0; t < MLP_TENSORS; t++) total += tr->params.numel[t];
  adamjit_hparams defaults;
  adamjit_hparams_init_default(&defaults);
  printf("adamjit train: backend %s%s%s%s, %d steps per configuration, seed %" PRIu64 "\n",
         adamjit_backend_name(backend), *device ? " (" : "", device, *device ? ")" : "", tr->options->steps,
         tr->options->seed);
  printf("model: MLP %d-%d-%d-%d with ReLU, %" PRId64 " parameters in %d tensors; batch %d; "
         "%d training / %d held-out points in %d classes\n",
         MLP_INPUTS, MLP_HIDDEN, MLP_HIDDEN, MLP_CLASSES, total, MLP_TENSORS, BATCH, TRAIN_POINTS, TEST_POINTS,
         MLP_CLASSES);
  printf("tensors (elements):");
  for (int t = 0; t < MLP_TENSORS; t++)
    printf("%s %s %" PRId64, t ? "," : "", mlp_tensor_name(t), tr->params.numel[t]);
  adamjit_optimizer_config cfg;
  adamjit_optimizer_config_init_default(&cfg);
  printf("\n8-bit configurations: state of tensors with >= %" PRId64
         " elements in 8 bits (min_8bit_size), smaller ones in 32 bits, as bitsandbytes\n",
         cfg.min_8bit_size);
  printf("schedule: linear warm-up to lr %g over %d%% of the steps, cosine decay to %g; "
         "weight decay %g on weights, 0 on biases\n",
         PEAK_LR, (int)(100 * WARMUP_FRACTION), PEAK_LR * MIN_LR_FRACTION, defaults.weight_decay);
  fflush(stdout);
}

/* ------------------------------------------------------------------ output */

/* The row a configuration's state size is compared with: 32-bit state, the same amsgrad
 * setting (its running maximum is one more state), no clipping. -1 if there is none. */
static int baseline_of(int i) {
  for (int b = 0; b < VARIANT_COUNT; b++)
    if (variants[b].optim_bits == 32 && variants[b].amsgrad == variants[i].amsgrad &&
        variants[b].percentile_clipping == 100 && !variants[b].is_paged)
      return b;
  return -1;
}

static double bytes_per_param(const train_result* r) {
  return r->params > 0 ? (double)r->state_bytes / (double)r->params : 0.0;
}

/* Fraction of the baseline's state bytes saved (negative: more bytes); 0 without baseline. */
static double saving(const train_result* res, int i) {
  int b = baseline_of(i);
  if (b < 0 || res[b].state_bytes == 0) return 0.0;
  return 1.0 - (double)res[i].state_bytes / (double)res[b].state_bytes;
}

static void print_table(const train_result* res) {
  printf("\n%-18s %10s %9s %12s %8s %9s %9s %10s  %s\n", "config", "final loss", "accuracy", "state bytes", "B/param",
         "vs 32bit", "step ms", "non-finite", "8-bit blocks");
  for (int i = 0; i < VARIANT_COUNT; i++) {
    char versus[32] = "-"; /* the baselines themselves, and rows without one */
    if (baseline_of(i) >= 0 && baseline_of(i) != i) snprintf(versus, sizeof versus, "%+.1f%%", -100.0 * saving(res, i));
    printf("%-18s %10.4f %8.2f%% %12" PRIu64 " %8.3f %9s %9.4f %10" PRIu64 "  %s\n", variants[i].name,
           res[i].final_loss, 100.0 * res[i].accuracy, res[i].state_bytes, bytes_per_param(&res[i]), versus,
           res[i].step_ms, res[i].nonfinite, res[i].blocks);
  }
  adamjit_optimizer_config defaults;
  adamjit_optimizer_config_init_default(&defaults);
  printf("(vs 32bit: state bytes against the 32-bit configuration with the same amsgrad setting; 8-bit blocks: "
         "block size x tensors, with block_wise = 0 one block per tensor)\n");
  printf("block policies: 8bit-policy-memory takes the smallest block whose absmax floats stay within 1/%g of the "
         "code bytes; 8bit-policy-error measures each tensor's first gradient and takes the largest block whose "
         "relative quantization error of m and v stays within %g\n",
         1.0 / POLICY_MEMORY_OVERHEAD, defaults.block_error_max);
  for (int i = 0; i < VARIANT_COUNT; i++) {
    int b = baseline_of(i);
    if (variants[i].optim_bits != 8 || b < 0) continue;
    const train_result* r = &res[i];
    printf("%s: %" PRIu64 " state bytes (%.3f B/param) vs %" PRIu64 " (%.3f B/param) for %s: %.1f%% less",
           variants[i].name, r->state_bytes, bytes_per_param(r), res[b].state_bytes, bytes_per_param(&res[b]),
           variants[b].name, 100.0 * saving(res, i));
    if (r->params_8bit > 0)
      printf("; the %" PRId64 " params with 8-bit state take %.3f B/param", r->params_8bit,
             (double)r->bytes_8bit / (double)r->params_8bit);
    printf("\n");
  }
}

static int write_loss_curves(const char* path, const train_result* res, int steps) {
  FILE* f = fopen(path, "w");
  if (!f) return cli_error("cannot write %s: %s", path, strerror(errno));
  fputs("step", f);
  for (int i = 0; i < VARIANT_COUNT; i++) fprintf(f, ",%s", variants[i].name);
  fputc('\n', f);
  for (int s = 0; s < steps; s++) {
    fprintf(f, "%d", s + 1);
    for (int i = 0; i < VARIANT_COUNT; i++) fprintf(f, ",%.6g", res[i].loss[s]);
    fputc('\n', f);
  }
  if (fclose(f) != 0) return cli_error("cannot write %s: %s", path, strerror(errno));
  return CLI_EXIT_OK;
}

static int write_summary(const char* path, const train_result* res) {
  FILE* f = fopen(path, "w");
  if (!f) return cli_error("cannot write %s: %s", path, strerror(errno));
  /* Columns are only ever appended, so readers of older files keep working. */
  fputs("config,final_loss,accuracy,state_bytes,step_ms,bytes_per_param,state_saving_vs_32bit,blocks\n", f);
  for (int i = 0; i < VARIANT_COUNT; i++)
    fprintf(f, "%s,%.6f,%.6f,%" PRIu64 ",%.6f,%.6f,%.6f,%s\n", variants[i].name, res[i].final_loss, res[i].accuracy,
            res[i].state_bytes, res[i].step_ms, bytes_per_param(&res[i]), saving(res, i), res[i].blocks);
  if (fclose(f) != 0) return cli_error("cannot write %s: %s", path, strerror(errno));
  return CLI_EXIT_OK;
}

static int on_path(const char* program) {
  const char* path = getenv("PATH");
  if (!path) return 0;
  char dir[PATH_MAX];
  while (*path) {
    size_t len = strcspn(path, ":");
    /* An empty PATH entry means the current directory. */
    if (len < sizeof dir - 1 &&
        snprintf(dir, sizeof dir, "%.*s/%s", (int)len, len ? path : ".", program) < (int)sizeof dir &&
        access(dir, X_OK) == 0)
      return 1;
    path += len + (path[len] == ':');
  }
  return 0;
}

/* gnuplot strings in single quotes take every character literally except ' itself (''). */
static void put_gnuplot_string(FILE* f, const char* s) {
  fputc('\'', f);
  for (; *s; s++) {
    if (*s == '\'') fputc('\'', f);
    fputc(*s, f);
  }
  fputc('\'', f);
}

/* Returns 1 if the plot was written. A missing or failing gnuplot is only a warning: the
 * CSV files already hold the results. */
static int plot_loss_curves(const char* csv, const char* png) {
  if (!on_path("gnuplot")) {
    printf("note: install gnuplot (e.g. apt-get install gnuplot-nox) to get loss_curves.png\n");
    return 0;
  }
  fflush(stdout);
  FILE* gp = popen("gnuplot", "w");
  if (!gp) {
    fprintf(stderr, "adamjit: warning: cannot run gnuplot: %s\n", strerror(errno));
    return 0;
  }
  fputs("if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) { set terminal pngcairo size 960,600 } "
        "else { set terminal png size 960,600 }\n",
        gp);
  fputs("set output ", gp);
  put_gnuplot_string(gp, png);
  fputs("\nset datafile separator ','\nset key autotitle columnhead\nset logscale y\n"
        "set xlabel 'step'\nset ylabel 'training loss (batch)'\nset title 'adamjit train: loss per step'\n"
        "set grid\nplot for [i=2:*] ",
        gp);
  put_gnuplot_string(gp, csv);
  fputs(" using 1:i with lines lw 1.5\n", gp);
  int status = pclose(gp);
  if (status != 0) {
    if (status > 0 && WIFEXITED(status))
      fprintf(stderr, "adamjit: warning: gnuplot failed (exit %d); no loss_curves.png\n", WEXITSTATUS(status));
    else
      fprintf(stderr, "adamjit: warning: gnuplot did not finish normally; no loss_curves.png\n");
    return 0;
  }
  return 1;
}

static int write_outputs(const train_options* o, const train_result* res) {
  char curves[PATH_MAX], summary[PATH_MAX], png[PATH_MAX];
  if (join_path(curves, sizeof curves, o->out_dir, "loss_curves.csv") != 0 ||
      join_path(summary, sizeof summary, o->out_dir, "summary.csv") != 0 ||
      join_path(png, sizeof png, o->out_dir, "loss_curves.png") != 0)
    return cli_error("output directory name too long: %s", o->out_dir);
  int rc = write_loss_curves(curves, res, o->steps);
  if (rc == CLI_EXIT_OK) rc = write_summary(summary, res);
  if (rc != CLI_EXIT_OK) return rc;
  int plotted = plot_loss_curves(curves, png);
  printf("wrote %s\n      %s\n", curves, summary);
  if (plotted) printf("      %s\n", png);
  return CLI_EXIT_OK;
}

/* ------------------------------------------------------------------ command */

int cmd_train(int argc, char** argv) {
  train_options o;
  int rc = parse_options(argc, argv, &o);
  if (rc < 0) return CLI_EXIT_OK; /* --help */
  if (rc != CLI_EXIT_OK) return rc;
  /* Fail on an unusable output directory before spending time on training. */
  if (make_dirs(o.out_dir) != 0)
    return cli_error("cannot create output directory '%s': %s", o.out_dir, strerror(errno));

  double t0 = cli_now();
  trainer tr;
  train_result res[VARIANT_COUNT];
  memset(res, 0, sizeof res);
  rc = trainer_init(&tr, &o);
  for (int i = 0; i < VARIANT_COUNT && rc == CLI_EXIT_OK; i++)
    if (!(res[i].loss = calloc((size_t)o.steps, sizeof(double)))) rc = cli_error("out of memory");
  if (rc == CLI_EXIT_OK) print_header(&tr);
  for (int i = 0; i < VARIANT_COUNT && rc == CLI_EXIT_OK; i++) rc = run_variant(&tr, &variants[i], &res[i]);
  trainer_free(&tr);
  if (rc == CLI_EXIT_OK) {
    print_table(res);
    printf("\n%d configurations x %d steps in %.1f s\n", VARIANT_COUNT, o.steps, cli_now() - t0);
    rc = write_outputs(&o, res);
  }
  for (int i = 0; i < VARIANT_COUNT; i++) free(res[i].loss);
  return rc;
}
