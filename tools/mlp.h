/* A small ReLU MLP in plain C and the synthetic classification task `adamjit train` fits
 * with it. The network only computes on host arrays; the optimizer owns nothing here. */
#ifndef ADAMJIT_TOOLS_MLP_H
#define ADAMJIT_TOOLS_MLP_H

#include <stdint.h>

enum {
  MLP_INPUTS = 32,
  MLP_HIDDEN = 128,
  MLP_CLASSES = 8,
  MLP_LAYERS = 3,
  /* weight and bias of each layer are separate tensors: tensor 2l is layer l's weight
   * (inputs x outputs, row-major), 2l+1 its bias */
  MLP_TENSORS = 2 * MLP_LAYERS
};

/* Parameters, or gradients of the same shape. */
typedef struct mlp_params {
  float* tensor[MLP_TENSORS];
  int64_t numel[MLP_TENSORS];
  float* storage; /* one block holds all tensors */
} mlp_params;

/* Activations of one batch, reused across steps. */
typedef struct mlp_workspace {
  int capacity;             /* samples */
  float* input;             /* capacity x MLP_INPUTS, the gathered batch */
  float* act[MLP_LAYERS];   /* outputs of each layer (ReLU applied except the last) */
  float* delta[MLP_LAYERS]; /* d loss / d (layer output) */
} mlp_workspace;

/* A labelled set of MLP_INPUTS-dimensional points. */
typedef struct mlp_dataset {
  int count;
  float* x;   /* count x MLP_INPUTS */
  int* label; /* count, in [0, MLP_CLASSES) */
} mlp_dataset;

/* All return 0 on success, -1 if out of memory (leaving nothing allocated). */
int mlp_params_alloc(mlp_params* p);
void mlp_params_free(mlp_params* p);
/* He-initialised weights and zero biases, a pure function of seed. */
void mlp_params_init(mlp_params* p, uint64_t seed);
const char* mlp_tensor_name(int tensor);

int mlp_workspace_alloc(mlp_workspace* ws, int capacity);
void mlp_workspace_free(mlp_workspace* ws);

/* Gaussian clusters, several per class, so the classes are not linearly separable. Train
 * and test points come from the same distribution; both are pure functions of seed. */
int mlp_dataset_generate(mlp_dataset* train, int train_count, mlp_dataset* test, int test_count, uint64_t seed);
void mlp_dataset_free(mlp_dataset* d);

/* Forward and backward pass over n <= ws->capacity samples (indices into d): returns the
 * mean softmax cross-entropy and writes its gradient into grad. */
double mlp_train_batch(const mlp_params* p, mlp_params* grad, mlp_workspace* ws, const mlp_dataset* d,
                       const int* indices, int n);

/* Fraction of d classified correctly (argmax of the logits). */
double mlp_accuracy(const mlp_params* p, mlp_workspace* ws, const mlp_dataset* d);

#endif /* ADAMJIT_TOOLS_MLP_H */
