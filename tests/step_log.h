/* The optimizer step's DEBUG line, "step: T tensors, G of them in L grouped launches",
 * captured from the log of a context made by step_log_context: what the tests of grouped
 * launches read to count launches. Include after harness.h. */
#ifndef ADAMJIT_TESTS_STEP_LOG_H
#define ADAMJIT_TESTS_STEP_LOG_H

static char step_log_line[512];

static void step_log_capture(adamjit_log_level level, const char* message, void* user) {
  (void)user;
  if (level == ADAMJIT_LOG_DEBUG && strncmp(message, "step:", 5) == 0)
    snprintf(step_log_line, sizeof step_log_line, "%s", message);
}

/* A context of `kind` whose DEBUG log feeds step_log_line. */
static adamjit_status step_log_context(adamjit_backend kind, adamjit_context** out) {
  adamjit_context_desc d;
  adamjit_context_desc_init_default(&d);
  d.backend = kind;
  d.log_fn = step_log_capture;
  d.log_level = ADAMJIT_LOG_DEBUG;
  return adamjit_context_create(&d, out);
}

/* The last step's counts; 0 if no step line was logged. */
static int step_log_counts(int* tensors, int* grouped, int* launches) {
  *tensors = *grouped = *launches = 0;
  return sscanf(step_log_line, "step: %d tensors, %d of them in %d grouped launches", tensors, grouped, launches) ==
         3;
}

#endif
