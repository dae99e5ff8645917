/* Loading a GPU library at run time: the first of several sonames (or the one an
 * environment variable names), with every failure's reason kept for the user. Shared by
 * the NVRTC, OpenCL and CUDA driver loaders. */
#ifndef ADAMJIT_JIT_DYNLIB_H
#define ADAMJIT_JIT_DYNLIB_H

#include <stddef.h>

#include "adamjit/adamjit.h"

/* Appends a reason to why[size] as "first; second; ...", truncating quietly. */
void aj_reason_append(char* why, size_t size, const char* fmt, ...) __attribute__((format(printf, 3, 4)));

/* dlopen(name, RTLD_NOW | RTLD_LOCAL), appending dlerror's text to why on failure. */
void* aj_dlopen_reason(const char* name, char* why, size_t why_size);

/* Calls open_one(name, user) for the library named by env_var when it is set (secure_getenv:
 * a set-uid program ignores it; then no other library is tried), else for each candidate
 * in order until one returns 1. open_one dlopens and resolves, appending its own reason on
 * failure. Returns 1 on success (why is then emptied), 0 with the reasons in why. */
int aj_dynlib_load_first(const char* env_var, const char* const* candidates, int n_candidates,
                         int (*open_one)(const char* name, void* user), void* user, char* why, size_t why_size);

/* What a loader's aj_*_available answers for library `what` (e.g. "OpenCL"), loaded (ok) or
 * not for `reason`: ADAMJIT_OK, or ADAMJIT_ERR_BACKEND_UNAVAILABLE with "<what> is
 * unavailable: <reason>" as the thread's last error. why[why_size], when given, receives
 * the reason ("" when loaded). */
adamjit_status aj_dynlib_status(int ok, const char* what, const char* reason, char* why, size_t why_size);

#endif
