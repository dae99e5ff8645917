/* The MLP of `adamjit train`: forward, softmax cross-entropy and backward in plain C. The
 * loops keep the output index innermost and contiguous so the compiler vectorizes them.
 * They stay single-threaded on purpose: a step is well under a millisecond of work, and
 * the ~10 OpenMP barriers per step it would need cost far more than they save whenever
 * the machine is shared (a parallel ctest run), while the optimizer step keeps all cores. */
#include "mlp.h"

#include "rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const int layer_dims[MLP_LAYERS + 1] = {MLP_INPUTS, MLP_HIDDEN, MLP_HIDDEN, MLP_CLASSES};

/* The task: CLUSTERS_PER_CLASS Gaussian blobs per class, centres ~ N(0, 1) per coordinate,
 * points = centre + N(0, CLUSTER_NOISE^2). With 32 dimensions two centres lie about 8 apart,
 * so the noise makes the closest blobs overlap a little: held-out accuracy ends near 97%
 * rather than a trivial 100%, and the several blobs per class need the hidden layers. */
enum { CLUSTERS_PER_CLASS = 4 };
#define CLUSTER_NOISE 1.0

int mlp_params_alloc(mlp_params* p) {
  int64_t total = 0;
  for (int l = 0; l < MLP_LAYERS; l++) {
    p->numel[2 * l] = (int64_t)layer_dims[l] * layer_dims[l + 1];
    p->numel[2 * l + 1] = layer_dims[l + 1];
    total += p->numel[2 * l] + p->numel[2 * l + 1];
  }
  p->storage = calloc((size_t)total, sizeof(float));
  if (!p->storage) return -1;
  float* next = p->storage;
  for (int t = 0; t < MLP_TENSORS; t++) {
    p->tensor[t] = next;
    next += p->numel[t];
  }
  return 0;
}

void mlp_params_free(mlp_params* p) {
  free(p->storage);
  memset(p, 0, sizeof *p);
}

void mlp_params_init(mlp_params* p, uint64_t seed) {
  rng r = rng_stream(seed, 2);
  for (int l = 0; l < MLP_LAYERS; l++) {
    /* He scaling keeps ReLU activations at a stable magnitude; the output layer gets the
     * plain 1/sqrt(fan_in) so the initial loss is near ln(classes). */
    double scale = (l + 1 < MLP_LAYERS ? sqrt(2.0) : 1.0) / sqrt((double)layer_dims[l]);
    float* w = p->tensor[2 * l];
    for (int64_t i = 0; i < p->numel[2 * l]; i++) w[i] = (float)(scale * rng_normal(&r));
    memset(p->tensor[2 * l + 1], 0, (size_t)p->numel[2 * l + 1] * sizeof(float));
  }
}

const char* mlp_tensor_name(int tensor) {
  static const char* const names[MLP_TENSORS] = {"fc1.weight", "fc1.bias", "fc2.weight",
                                                 "fc2.bias",   "fc3.weight", "fc3.bias"};
  return tensor >= 0 && tensor < MLP_TENSORS ? names[tensor] : "?";
}

int mlp_workspace_alloc(mlp_workspace* ws, int capacity) {
  memset(ws, 0, sizeof *ws);
  ws->capacity = capacity;
  int ok = (ws->input = malloc((size_t)capacity * MLP_INPUTS * sizeof(float))) != NULL;
  for (int l = 0; l < MLP_LAYERS; l++) {
    size_t bytes = (size_t)capacity * (size_t)layer_dims[l + 1] * sizeof(float);
    ok &= (ws->act[l] = malloc(bytes)) != NULL;
    ok &= (ws->delta[l] = malloc(bytes)) != NULL;
  }
  if (ok) return 0;
  mlp_workspace_free(ws);
  return -1;
}

void mlp_workspace_free(mlp_workspace* ws) {
  free(ws->input);
  for (int l = 0; l < MLP_LAYERS; l++) {
    free(ws->act[l]);
    free(ws->delta[l]);
  }
  memset(ws, 0, sizeof *ws);
}

static int dataset_alloc(mlp_dataset* d, int count) {
  d->count = count;
  d->x = malloc((size_t)count * MLP_INPUTS * sizeof(float));
  d->label = malloc((size_t)count * sizeof(int));
  if (d->x && d->label) return 0;
  mlp_dataset_free(d);
  return -1;
}

void mlp_dataset_free(mlp_dataset* d) {
  free(d->x);
  free(d->label);
  memset(d, 0, sizeof *d);
}

static void dataset_sample(mlp_dataset* d, const double* centres, rng* r) {
  /* Dividing by the total standard deviation gives inputs of unit variance. */
  const double norm = 1.0 / sqrt(1.0 + CLUSTER_NOISE * CLUSTER_NOISE);
  for (int i = 0; i < d->count; i++) {
    int label = (int)rng_below(r, MLP_CLASSES);
    int cluster = label * CLUSTERS_PER_CLASS + (int)rng_below(r, CLUSTERS_PER_CLASS);
    const double* c = centres + (size_t)cluster * MLP_INPUTS;
    float* x = d->x + (size_t)i * MLP_INPUTS;
    for (int k = 0; k < MLP_INPUTS; k++) x[k] = (float)(norm * (c[k] + CLUSTER_NOISE * rng_normal(r)));
    d->label[i] = label;
  }
}

int mlp_dataset_generate(mlp_dataset* train, int train_count, mlp_dataset* test, int test_count, uint64_t seed) {
  memset(train, 0, sizeof *train);
  memset(test, 0, sizeof *test);
  enum { CENTRES = MLP_CLASSES * CLUSTERS_PER_CLASS };
  double centres[CENTRES * MLP_INPUTS];
  if (dataset_alloc(train, train_count) != 0 || dataset_alloc(test, test_count) != 0) {
    mlp_dataset_free(train);
    return -1;
  }
  rng r = rng_stream(seed, 1);
  for (int i = 0; i < CENTRES * MLP_INPUTS; i++) centres[i] = rng_normal(&r);
  dataset_sample(train, centres, &r);
  dataset_sample(test, centres, &r);
  return 0;
}

/* out = in * W + b (n samples), ReLU if asked. Zero inputs (ReLU's many) are skipped. */
static void layer_forward(const float* in, int n, int nin, int nout, const float* w, const float* b, float* out,
                          int relu) {
  for (int s = 0; s < n; s++) {
    const float* x = in + (size_t)s * nin;
    float* o = out + (size_t)s * nout;
    memcpy(o, b, (size_t)nout * sizeof(float));
    for (int k = 0; k < nin; k++) {
      const float a = x[k];
      if (a == 0.0f) continue;
      const float* row = w + (size_t)k * nout;
      for (int j = 0; j < nout; j++) o[j] += a * row[j];
    }
    if (relu)
      for (int j = 0; j < nout; j++) o[j] = o[j] > 0.0f ? o[j] : 0.0f;
  }
}

/* Gradients of one layer from dout = d loss / d out: dW, db, and (if din is not NULL)
 * d loss / d in, masked by ReLU because `in` is the previous layer's ReLU output. */
static void layer_backward(const float* in, int n, int nin, int nout, const float* w, const float* dout, float* dw,
                           float* db, float* din) {
  for (int k = 0; k < nin; k++) {
    float* row = dw + (size_t)k * nout;
    memset(row, 0, (size_t)nout * sizeof(float));
    for (int s = 0; s < n; s++) {
      const float a = in[(size_t)s * nin + k];
      if (a == 0.0f) continue;
      const float* d = dout + (size_t)s * nout;
      for (int j = 0; j < nout; j++) row[j] += a * d[j];
    }
  }
  memset(db, 0, (size_t)nout * sizeof(float));
  for (int s = 0; s < n; s++)
    for (int j = 0; j < nout; j++) db[j] += dout[(size_t)s * nout + j];
  if (!din) return;
  for (int s = 0; s < n; s++) {
    const float* d = dout + (size_t)s * nout;
    for (int k = 0; k < nin; k++) {
      float acc = 0.0f;
      if (in[(size_t)s * nin + k] > 0.0f) {
        const float* row = w + (size_t)k * nout;
#pragma omp simd reduction(+ : acc)
        for (int j = 0; j < nout; j++) acc += d[j] * row[j];
      }
      din[(size_t)s * nin + k] = acc;
    }
  }
}

static void gather(mlp_workspace* ws, const mlp_dataset* d, const int* indices, int first, int n) {
  for (int s = 0; s < n; s++) {
    int i = indices ? indices[s] : first + s;
    memcpy(ws->input + (size_t)s * MLP_INPUTS, d->x + (size_t)i * MLP_INPUTS, MLP_INPUTS * sizeof(float));
  }
}

static const float* forward(const mlp_params* p, mlp_workspace* ws, int n) {
  const float* in = ws->input;
  for (int l = 0; l < MLP_LAYERS; l++) {
    layer_forward(in, n, layer_dims[l], layer_dims[l + 1], p->tensor[2 * l], p->tensor[2 * l + 1], ws->act[l],
                  l + 1 < MLP_LAYERS);
    in = ws->act[l];
  }
  return in;
}

/* Mean cross-entropy of the logits; writes its gradient (softmax - onehot) / n into dlogits. */
static double softmax_cross_entropy(const float* logits, const mlp_dataset* d, const int* indices, int n,
                                    float* dlogits) {
  double loss = 0.0;
  for (int s = 0; s < n; s++) {
    const float* z = logits + (size_t)s * MLP_CLASSES;
    float* dz = dlogits + (size_t)s * MLP_CLASSES;
    const int label = d->label[indices[s]];
    float zmax = z[0];
    for (int c = 1; c < MLP_CLASSES; c++) zmax = z[c] > zmax ? z[c] : zmax;
    double sum = 0.0;
    for (int c = 0; c < MLP_CLASSES; c++) sum += exp((double)(z[c] - zmax));
    const double log_sum = log(sum);
    loss += log_sum - (double)(z[label] - zmax);
    for (int c = 0; c < MLP_CLASSES; c++) {
      double prob = exp((double)(z[c] - zmax) - log_sum);
      dz[c] = (float)((prob - (c == label ? 1.0 : 0.0)) / n);
    }
  }
  return loss / n;
}

double mlp_train_batch(const mlp_params* p, mlp_params* grad, mlp_workspace* ws, const mlp_dataset* d,
                       const int* indices, int n) {
  gather(ws, d, indices, 0, n);
  const float* logits = forward(p, ws, n);
  double loss = softmax_cross_entropy(logits, d, indices, n, ws->delta[MLP_LAYERS - 1]);
  for (int l = MLP_LAYERS - 1; l >= 0; l--) {
    const float* in = l > 0 ? ws->act[l - 1] : ws->input;
    layer_backward(in, n, layer_dims[l], layer_dims[l + 1], p->tensor[2 * l], ws->delta[l], grad->tensor[2 * l],
                   grad->tensor[2 * l + 1], l > 0 ? ws->delta[l - 1] : NULL);
  }
  return loss;
}

static int argmax(const float* z, int count) {
  int best = 0;
  for (int c = 1; c < count; c++)
    if (z[c] > z[best]) best = c;
  return best;
}

double mlp_accuracy(const mlp_params* p, mlp_workspace* ws, const mlp_dataset* d) {
  int correct = 0;
  for (int first = 0; first < d->count; first += ws->capacity) {
    int n = d->count - first < ws->capacity ? d->count - first : ws->capacity;
    gather(ws, d, NULL, first, n);
    const float* logits = forward(p, ws, n);
    for (int s = 0; s < n; s++) correct += argmax(logits + (size_t)s * MLP_CLASSES, MLP_CLASSES) == d->label[first + s];
  }
  return d->count > 0 ? (double)correct / d->count : 0.0;
}
