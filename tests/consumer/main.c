/* Built against an installed adamjit by tests/install_consumer.cmake: one real step. */
#include <adamjit/adamjit.h>
#include <stdio.h>

int main(void) {
  adamjit_context* ctx;
  adamjit_optimizer* opt;
  if (adamjit_context_create(NULL, &ctx) != ADAMJIT_OK) return 1;
  if (adamjit_optimizer_create(ctx, NULL, &opt) != ADAMJIT_OK) return 1;
  float p[4] = {1, 1, 1, 1}, g[4] = {1, -1, 0.5f, 0};
  adamjit_tensor_desc d;
  adamjit_tensor_desc_init_default(&d);
  d.param = p;
  d.grad = g;
  d.numel = 4;
  int index;
  if (adamjit_optimizer_add_tensor(opt, &d, &index) != ADAMJIT_OK) return 1;
  if (adamjit_optimizer_step(opt, NULL) != ADAMJIT_OK) return 1;
  printf("adamjit %s: p[0] = %.6f\n", adamjit_version_string(), p[0]);
  adamjit_optimizer_destroy(opt);
  adamjit_context_destroy(ctx);
  return p[0] < 1.0f && p[1] > 1.0f ? 0 : 1; /* the step moved against the gradient */
}
