/* The journal of `adamjit tune` (tools/tune.h):
 *   {"format": "adamjit-tune-journal", "version": 1,
 *    "candidates": [{"device", "kernel", "bucket", "elements", "launch", "source",
 *                    "seconds" | "rejected"}, ...],
 *    "recorded": [{"device", "kernel", "bucket", "elements", "key", "seconds",
 *                  "default_seconds"}, ...]}
 * "device" is dialect|vendor|architecture|device name (adamjit_tuning_device_info). */
#include "tune.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define JOURNAL_FORMAT "adamjit-tune-journal"
#define JOURNAL_VERSION 1

static cJSON* journal_new(void) {
  cJSON* root = cJSON_CreateObject();
  if (!root) return NULL;
  cJSON_AddStringToObject(root, "format", JOURNAL_FORMAT);
  cJSON_AddNumberToObject(root, "version", JOURNAL_VERSION);
  cJSON_AddArrayToObject(root, "candidates");
  cJSON_AddArrayToObject(root, "recorded");
  return root;
}

static char* read_file(const char* path, int* missing) {
  FILE* f = fopen(path, "rb");
  *missing = !f && errno == ENOENT;
  if (!f) return NULL;
  char* text = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len + 4096 + 1 > cap) {
      cap = cap ? 2 * cap : 65536;
      char* grown = realloc(text, cap);
      if (!grown) { /* a truncated text would read as a broken journal and be replaced */
        free(text);
        fclose(f);
        errno = ENOMEM;
        return NULL;
      }
      text = grown;
    }
    size_t got = fread(text + len, 1, cap - len - 1, f);
    len += got;
    if (got == 0) break;
  }
  int failed = ferror(f) || !text, err = errno;
  fclose(f);
  if (failed) {
    free(text);
    errno = text ? err : ENOMEM;
    return NULL;
  }
  text[len] = '\0';
  return text;
}

static int well_formed(const cJSON* root) {
  const cJSON* format = cJSON_GetObjectItemCaseSensitive(root, "format");
  const cJSON* version = cJSON_GetObjectItemCaseSensitive(root, "version");
  return cJSON_IsObject(root) && cJSON_IsString(format) && strcmp(format->valuestring, JOURNAL_FORMAT) == 0 &&
         cJSON_IsNumber(version) && version->valueint == JOURNAL_VERSION &&
         cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(root, "candidates")) &&
         cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(root, "recorded"));
}

int tune_journal_open(tune_journal* j, const char* dir) {
  memset(j, 0, sizeof *j);
  if ((size_t)snprintf(j->path, sizeof j->path, "%s/tune-journal.json", dir) >= sizeof j->path) {
    cli_error("tune: cache directory path too long: %s", dir);
    return 0;
  }
  int missing = 0;
  char* text = read_file(j->path, &missing);
  if (text) {
    j->root = cJSON_Parse(text);
    free(text);
    if (!well_formed(j->root)) {
      /* Losing a journal costs measurements, never correctness: start afresh. */
      fprintf(stderr, "adamjit: warning: %s is not a tune journal of this version; starting a new one\n", j->path);
      cJSON_Delete(j->root);
      j->root = NULL;
    }
  } else if (!missing) {
    fprintf(stderr, "adamjit: warning: cannot read %s: %s; starting a new journal\n", j->path, strerror(errno));
  }
  if (!j->root) j->root = journal_new();
  if (!j->root) {
    cli_error("tune: out of memory");
    return 0;
  }
  return 1;
}

void tune_journal_close(tune_journal* j) {
  cJSON_Delete(j->root);
  j->root = NULL;
}

static int save(tune_journal* j) {
  char* text = cJSON_Print(j->root);
  if (!text) return !cli_error("tune: out of memory writing the journal");
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", j->path, (long)getpid());
  /* private like the rest of the cache directory, whatever the umask */
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  FILE* f = fd >= 0 ? fdopen(fd, "wb") : NULL;
  if (fd >= 0 && !f) close(fd);
  int ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
  if (f && fclose(f) != 0) ok = 0;
  free(text);
  /* rename: a reader (or a crash) sees the old journal or the new one, never half of one */
  if (!ok || rename(tmp, j->path) != 0) {
    int err = errno;
    remove(tmp);
    return !cli_error("tune: cannot write the journal %s: %s", j->path, strerror(err));
  }
  return 1;
}

static const char* text_of(const cJSON* o, const char* name) {
  const cJSON* item = cJSON_GetObjectItemCaseSensitive(o, name);
  return cJSON_IsString(item) ? item->valuestring : "";
}

/* A measurement depends on the tensor stepped, not on the bucket it stands for: buckets capped
 * to the same --max-elements share their candidates. */
static int same_measurement(const cJSON* o, const tune_entry_id* id) {
  const cJSON* elements = cJSON_GetObjectItemCaseSensitive(o, "elements");
  return strcmp(text_of(o, "device"), id->device) == 0 && strcmp(text_of(o, "kernel"), id->kernel) == 0 &&
         cJSON_IsNumber(elements) && (int64_t)elements->valuedouble == id->elements;
}

static int same_task(const cJSON* o, const tune_entry_id* id) {
  return same_measurement(o, id) && strcmp(text_of(o, "bucket"), id->bucket) == 0;
}

static cJSON* find_candidate(const tune_journal* j, const tune_entry_id* id, const char* launch, const char* source) {
  cJSON* item;
  cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(j->root, "candidates")) {
    if (same_measurement(item, id) && strcmp(text_of(item, "launch"), launch) == 0 &&
        strcmp(text_of(item, "source"), source) == 0)
      return item;
  }
  return NULL;
}

static void remove_matching(cJSON* array, const tune_entry_id* id, int (*match)(const cJSON*, const tune_entry_id*)) {
  for (cJSON* item = array ? array->child : NULL; item;) {
    cJSON* next = item->next;
    if (match(item, id)) cJSON_Delete(cJSON_DetachItemViaPointer(array, item));
    item = next;
  }
}

/* Candidates go by measurement, as tune_journal_find matches them (another bucket capped to
 * the same elements would otherwise hand its old times back); records by task. */
void tune_journal_forget(tune_journal* j, const tune_entry_id* id) {
  remove_matching(cJSON_GetObjectItemCaseSensitive(j->root, "candidates"), id, same_measurement);
  remove_matching(cJSON_GetObjectItemCaseSensitive(j->root, "recorded"), id, same_task);
}

int tune_journal_find(const tune_journal* j, const tune_entry_id* id, const char* launch, const char* source,
                      double* seconds, char* reason, size_t size) {
  const cJSON* item = find_candidate(j, id, launch, source);
  if (!item) return 0;
  const cJSON* secs = cJSON_GetObjectItemCaseSensitive(item, "seconds");
  const cJSON* rejected = cJSON_GetObjectItemCaseSensitive(item, "rejected");
  if (cJSON_IsNumber(secs) && secs->valuedouble > 0) {
    *seconds = secs->valuedouble;
    if (size) reason[0] = '\0';
    return 1;
  }
  if (cJSON_IsString(rejected)) {
    *seconds = 0.0;
    snprintf(reason, size, "%s", rejected->valuestring);
    return 1;
  }
  return 0; /* an entry of neither kind is measured again */
}

static cJSON* task_object(const tune_entry_id* id) {
  cJSON* o = cJSON_CreateObject();
  if (!o) return NULL;
  cJSON_AddStringToObject(o, "device", id->device);
  cJSON_AddStringToObject(o, "kernel", id->kernel);
  cJSON_AddStringToObject(o, "bucket", id->bucket);
  cJSON_AddNumberToObject(o, "elements", (double)id->elements);
  return o;
}

int tune_journal_add(tune_journal* j, const tune_entry_id* id, const char* launch, const char* source, double seconds,
                     const char* reason) {
  cJSON* array = cJSON_GetObjectItemCaseSensitive(j->root, "candidates");
  cJSON* old = find_candidate(j, id, launch, source);
  if (old) cJSON_Delete(cJSON_DetachItemViaPointer(array, old));
  cJSON* o = task_object(id);
  if (!o) return !cli_error("tune: out of memory");
  cJSON_AddStringToObject(o, "launch", launch);
  cJSON_AddStringToObject(o, "source", source);
  if (reason)
    cJSON_AddStringToObject(o, "rejected", reason);
  else
    cJSON_AddNumberToObject(o, "seconds", seconds);
  cJSON_AddItemToArray(array, o);
  return save(j);
}

static double number_of(const cJSON* o, const char* name) {
  const cJSON* item = cJSON_GetObjectItemCaseSensitive(o, name);
  return cJSON_IsNumber(item) ? item->valuedouble : 0.0;
}

const char* tune_journal_recorded(const tune_journal* j, const tune_entry_id* id, double* seconds,
                                  double* default_seconds) {
  const cJSON* item;
  cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(j->root, "recorded")) {
    if (same_task(item, id)) {
      *seconds = number_of(item, "seconds");
      *default_seconds = number_of(item, "default_seconds");
      return text_of(item, "key");
    }
  }
  return NULL;
}

int tune_journal_set_recorded(tune_journal* j, const tune_entry_id* id, const char* key, double seconds,
                              double default_seconds) {
  cJSON* array = cJSON_GetObjectItemCaseSensitive(j->root, "recorded");
  remove_matching(array, id, same_task);
  cJSON* o = task_object(id);
  if (!o) return !cli_error("tune: out of memory");
  cJSON_AddStringToObject(o, "key", key);
  cJSON_AddNumberToObject(o, "seconds", seconds);
  cJSON_AddNumberToObject(o, "default_seconds", default_seconds);
  cJSON_AddItemToArray(array, o);
  return save(j);
}
