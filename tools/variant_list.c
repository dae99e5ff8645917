/* Comma lists and optimizer variant names, shared by `adamjit bench` and `adamjit tune` so
 * that a variant means the same optimizer configuration in both. */
#include "cli.h"

#include <string.h>

int cli_parse_list(const char* option, const char* text, int (*item)(const char* s, size_t len, void* user),
                   void* user) {
  for (const char* s = text;;) {
    size_t len = strcspn(s, ",");
    if (len == 0) {
      cli_usage_error("%s: empty entry in '%s'", option, text);
      return 0;
    }
    if (!item(s, len, user)) return 0;
    if (s[len] == '\0') return 1;
    s += len + 1;
  }
}

typedef struct variant_parse {
  const char* option;
  int allow_amsgrad;
  cli_variant* out;
  int max;
  int* count;
} variant_parse;

/* The block of "b<digits>": the library's range (SPEC 1), a power of two in 64..4096, written
 * without zeros in front. Returns 0 if the text is not that. */
static int parse_block(const char* s, size_t len) {
  if (len < 2 || len > 5 || s[0] != 'b' || s[1] == '0') return 0;
  int block = 0;
  for (size_t i = 1; i < len; i++) {
    if (s[i] < '0' || s[i] > '9') return 0;
    block = 10 * block + (s[i] - '0');
  }
  return block >= 64 && block <= 4096 && (block & (block - 1)) == 0 ? block : 0;
}

static int variant_item(const char* s, size_t len, void* user) {
  variant_parse* p = user;
  cli_variant v;
  memset(&v, 0, sizeof v);
  static const char ams[] = "-amsgrad";
  const size_t alen = sizeof ams - 1;
  const char* const expected =
      p->allow_amsgrad ? "fp32, fp32-amsgrad, 8bit-b<block size> or 8bit-amsgrad-b<block size>, e.g. 8bit-b256"
                       : "fp32 or 8bit-b<block size>, e.g. 8bit-b256";
  if (len >= 4 && strncmp(s, "fp32", 4) == 0 && (len == 4 || (len == 4 + alen && strncmp(s + 4, ams, alen) == 0))) {
    v.bits = 32;
    v.amsgrad = len > 4;
  } else if (len > 5 && strncmp(s, "8bit-", 5) == 0) {
    size_t at = 5;
    if (len > at + alen && strncmp(s + at, ams + 1, alen - 1) == 0 && s[at + alen - 1] == '-') {
      v.amsgrad = 1;
      at += alen;
    }
    v.bits = 8;
    v.block = parse_block(s + at, len - at);
    if (!v.block) {
      if (s[at] == 'b' && len - at > 1)
        cli_usage_error("%s: '%.*s': the block size must be a power of two in 64..4096", p->option, (int)len, s);
      else
        cli_usage_error("%s: unknown variant '%.*s' (expected %s)", p->option, (int)len, s, expected);
      return 0;
    }
  } else {
    cli_usage_error("%s: unknown variant '%.*s' (expected %s)", p->option, (int)len, s, expected);
    return 0;
  }
  if (v.amsgrad && !p->allow_amsgrad) {
    cli_usage_error("%s: '%.*s': amsgrad variants are not measured here (expected %s)", p->option, (int)len, s,
                    expected);
    return 0;
  }
  if (v.bits == 32)
    snprintf(v.name, sizeof v.name, "fp32%s", v.amsgrad ? ams : "");
  else
    snprintf(v.name, sizeof v.name, "8bit-%sb%d", v.amsgrad ? "amsgrad-" : "", v.block);
  for (int i = 0; i < *p->count; i++)
    if (strcmp(p->out[i].name, v.name) == 0) {
      cli_usage_error("%s: '%s' is listed twice", p->option, v.name);
      return 0;
    }
  if (*p->count == p->max) {
    cli_usage_error("%s: at most %d variants", p->option, p->max);
    return 0;
  }
  p->out[(*p->count)++] = v;
  return 1;
}

int cli_parse_variants(const char* option, const char* text, int allow_amsgrad, cli_variant* out, int max,
                       int* count) {
  variant_parse p = {option, allow_amsgrad, out, max, count};
  *count = 0;
  return cli_parse_list(option, text, variant_item, &p);
}

void cli_variant_config(const cli_variant* v, adamjit_optimizer_config* cfg) {
  adamjit_optimizer_config_init_default(cfg);
  cfg->optim_bits = v->bits;
  if (v->bits == 8) cfg->quant_block_size = v->block;
  cfg->hparams.amsgrad = v->amsgrad;
}
