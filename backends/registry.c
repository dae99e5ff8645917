/* Which backends this build has, and the context-less backend queries. */
#include <stdio.h>
#include <string.h>

#include "backends/backend.h"

const aj_backend_ops* aj_backend_lookup(adamjit_backend kind) {
  switch (kind) {
    case ADAMJIT_BACKEND_CPU: return &aj_cpu_backend;
    case ADAMJIT_BACKEND_OPENCL: return &aj_opencl_backend;
#ifdef ADAMJIT_HAVE_CUDA
    case ADAMJIT_BACKEND_CUDA: return &aj_cuda_backend;
#endif
    default: return NULL;
  }
}

const char* adamjit_backend_name(adamjit_backend backend) {
  switch (backend) {
    case ADAMJIT_BACKEND_AUTO: return "auto";
    case ADAMJIT_BACKEND_CPU: return "cpu";
    case ADAMJIT_BACKEND_OPENCL: return "opencl";
    case ADAMJIT_BACKEND_CUDA: return "cuda";
  }
  return NULL;
}

adamjit_status adamjit_backend_from_name(const char* name, adamjit_backend* out) {
  if (!name || !out) return aj_fail(NULL, ADAMJIT_ERR_NULL_ARGUMENT, "adamjit_backend_from_name: name and out are required");
  for (int b = ADAMJIT_BACKEND_AUTO; b <= ADAMJIT_BACKEND_CUDA; b++) {
    if (strcmp(name, adamjit_backend_name((adamjit_backend)b)) == 0) {
      *out = (adamjit_backend)b;
      return ADAMJIT_OK;
    }
  }
  return aj_fail(NULL, ADAMJIT_ERR_INVALID_VALUE, "unknown backend \"%s\" (expected auto, cpu, opencl or cuda)", name);
}

int adamjit_backend_is_built(adamjit_backend backend) { return aj_backend_lookup(backend) != NULL; }

/* The ops of a concrete backend kind, or a failure explaining why there are none. */
static adamjit_status built_ops(adamjit_backend backend, const aj_backend_ops** ops) {
  if (!adamjit_backend_name(backend) || backend == ADAMJIT_BACKEND_AUTO)
    return aj_fail(NULL, ADAMJIT_ERR_INVALID_VALUE, "backend %d is not a concrete backend (cpu, opencl, cuda)",
                   (int)backend);
  *ops = aj_backend_lookup(backend);
  if (!*ops)
    return aj_fail(NULL, ADAMJIT_ERR_BACKEND_UNAVAILABLE, "the %s backend is not built into this library",
                   adamjit_backend_name(backend));
  return ADAMJIT_OK;
}

adamjit_status adamjit_backend_probe(adamjit_backend backend) {
  const aj_backend_ops* ops;
  adamjit_status st = built_ops(backend, &ops);
  if (st) return st;
  char why[AJ_ERR_LEN] = "";
  st = ops->probe(why, sizeof why);
  if (st) return aj_fail(NULL, st, "%s backend: %s", adamjit_backend_name(backend), why);
  return ADAMJIT_OK;
}

adamjit_status adamjit_backend_device_count(adamjit_backend backend, int* count) {
  if (!count) return aj_fail(NULL, ADAMJIT_ERR_NULL_ARGUMENT, "adamjit_backend_device_count: count is NULL");
  const aj_backend_ops* ops;
  adamjit_status st = built_ops(backend, &ops);
  if (st) return st;
  char why[AJ_ERR_LEN] = "";
  st = ops->device_count(count, why, sizeof why);
  if (st) return aj_fail(NULL, st, "%s backend: %s", adamjit_backend_name(backend), why);
  return ADAMJIT_OK;
}

adamjit_status adamjit_backend_device_name(adamjit_backend backend, int index, char* name, size_t size) {
  if (!name) return aj_fail(NULL, ADAMJIT_ERR_NULL_ARGUMENT, "adamjit_backend_device_name: name is NULL");
  if (size == 0) return aj_fail(NULL, ADAMJIT_ERR_INVALID_SIZE, "adamjit_backend_device_name: size is 0");
  const aj_backend_ops* ops;
  adamjit_status st = built_ops(backend, &ops);
  if (st) return st;
  char why[AJ_ERR_LEN] = "";
  st = ops->device_name(index, name, size, why, sizeof why);
  if (st) return aj_fail(NULL, st, "%s backend: %s", adamjit_backend_name(backend), why);
  return ADAMJIT_OK;
}

/* The order AUTO tries: the fastest backend that is built and can run here (an OpenCL that
 * only has CPU devices is no faster than the CPU backend, see auto_ok). */
adamjit_backend aj_backend_auto(void) {
  static const adamjit_backend order[] = {ADAMJIT_BACKEND_CUDA, ADAMJIT_BACKEND_OPENCL, ADAMJIT_BACKEND_CPU};
  for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
    const aj_backend_ops* ops = aj_backend_lookup(order[i]);
    char why[AJ_ERR_LEN];
    if (ops && ops->probe(why, sizeof why) == ADAMJIT_OK && (!ops->auto_ok || ops->auto_ok())) return order[i];
  }
  return ADAMJIT_BACKEND_CPU;
}
