/* See dynlib.h. */
#include "jit/dynlib.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"

void aj_reason_append(char* why, size_t size, const char* fmt, ...) {
  size_t used = strnlen(why, size);
  if (used && used + 2 < size) {
    memcpy(why + used, "; ", 3);
    used += 2;
  }
  if (used + 1 >= size) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why + used, size - used, fmt, ap);
  va_end(ap);
}

void* aj_dlopen_reason(const char* name, char* why, size_t why_size) {
  dlerror();
  void* h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char* e = dlerror();
    aj_reason_append(why, why_size, "%s", e ? e : name);
  }
  return h;
}

int aj_dynlib_load_first(const char* env_var, const char* const* candidates, int n_candidates,
                         int (*open_one)(const char* name, void* user), void* user, char* why, size_t why_size) {
  const char* override = secure_getenv(env_var);
  if (override && *override) {
    if (open_one(override, user)) return 1;
    aj_reason_append(why, why_size, "(set by %s; no other library was tried)", env_var);
    return 0;
  }
  for (int i = 0; i < n_candidates; i++) {
    if (open_one(candidates[i], user)) {
      why[0] = '\0'; /* earlier candidates' errors are no longer a reason */
      return 1;
    }
  }
  return 0;
}

adamjit_status aj_dynlib_status(int ok, const char* what, const char* reason, char* why, size_t why_size) {
  if (why && why_size) snprintf(why, why_size, "%s", ok ? "" : reason);
  if (ok) return ADAMJIT_OK;
  return aj_fail(NULL, ADAMJIT_ERR_BACKEND_UNAVAILABLE, "%s is unavailable: %s", what, reason);
}
