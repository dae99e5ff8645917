/* The sandboxed Lua template host: see lua_host.h for what a template sees and why.
 *
 * One render = one lua_State made with our allocator, a count hook, a fresh environment,
 * one protected call, lua_close. Every Lua API call that can raise (library opening,
 * building the environment, pushing params) runs inside that protected call, so no error
 * ever reaches Lua's panic handler, which would abort the process. */
#include "jit/lua_host.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"

struct aj_lua_host {
  adamjit_context* ctx;
  aj_lua_limits limits;
  uint64_t last_instructions;
  size_t last_peak_memory;
};

enum { ABORT_NONE = 0, ABORT_INSTRUCTIONS = 1, ABORT_MEMORY = 2 };

/* Everything one render needs; the Lua state reaches it as its allocator's userdata
 * (lua_getallocf), which the hook, having no upvalues, needs too. */
typedef struct render_job {
  /* memory accounting of the Lua state */
  size_t mem_used, mem_peak, mem_limit;
  /* instruction budget */
  uint64_t instructions, max_instructions;
  /* set once a limit is hit: from then on the hook and our pcall re-raise, so a template
   * cannot catch the limit and go on */
  int aborted;
  /* rendered source, in C memory so a failed render leaves nothing to unwind in Lua */
  char* out;
  size_t out_len, out_cap, out_max;
  /* input */
  const char* name;
  const char* text;
  size_t text_len;
  const aj_lua_param* params;
  int n_params;
  /* result of the template's own call: LUA_OK, or the status of its load or run */
  int chunk_status;
} render_job;

static render_job* job_of(lua_State* L) {
  void* ud = NULL;
  lua_getallocf(L, &ud);
  return (render_job*)ud;
}

void aj_lua_limits_default(aj_lua_limits* limits) {
  if (!limits) return;
  limits->max_instructions = AJ_LUA_DEFAULT_MAX_INSTRUCTIONS;
  limits->max_memory = AJ_LUA_DEFAULT_MAX_MEMORY;
  limits->max_output = AJ_LUA_DEFAULT_MAX_OUTPUT;
}

/* ------------------------------------------------------------ allocator and hook */

/* lua_Alloc with a cap. When ptr is NULL, osize is a type tag, not a size. Refusing a
 * request makes Lua run an emergency collection and retry once before it raises a memory
 * error, so garbage never counts against the cap for long. Shrinking is never refused. */
static void* sb_alloc(void* ud, void* ptr, size_t osize, size_t nsize) {
  render_job* j = (render_job*)ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    j->mem_used -= old;
    return NULL;
  }
  if (nsize > old && nsize - old > j->mem_limit - j->mem_used) return NULL;
  void* p = realloc(ptr, nsize);
  if (!p) return NULL;
  j->mem_used = j->mem_used - old + nsize;
  if (j->mem_used > j->mem_peak) j->mem_peak = j->mem_used;
  return p;
}

static int raise_limit(lua_State* L, lua_Debug* ar, render_job* j) {
  /* name the line being run; luaL_error would name the caller's line instead */
  const char* src = "?";
  int line = 0;
  if (ar && lua_getinfo(L, "Sl", ar)) {
    src = ar->short_src;
    line = ar->currentline;
  }
  if (j->aborted == ABORT_MEMORY)
    lua_pushfstring(L, "%s:%d: template exceeded the memory limit (%I bytes)", src, line, (lua_Integer)j->mem_limit);
  else
    lua_pushfstring(L, "%s:%d: template exceeded the instruction limit (%I instructions)", src, line,
                    (lua_Integer)j->max_instructions);
  return lua_error(L);
}

static void sb_hook(lua_State* L, lua_Debug* ar) {
  render_job* j = job_of(L);
  j->instructions += AJ_LUA_HOOK_INTERVAL;
  if (!j->aborted && j->instructions > j->max_instructions) j->aborted = ABORT_INSTRUCTIONS;
  if (j->aborted) raise_limit(L, ar, j);
}

/* -------------------------------------------------------- functions for templates */

/* Appends to the output; raises (with the template's line) past the output limit. */
static void out_append(lua_State* L, render_job* j, const char* s, size_t n) {
  if (n > j->out_max - j->out_len)
    luaL_error(L, "template output exceeds the limit of %I bytes", (lua_Integer)j->out_max);
  if (j->out_len + n + 1 > j->out_cap) {
    size_t cap = j->out_cap ? j->out_cap : 4096;
    while (cap < j->out_len + n + 1) cap = cap > SIZE_MAX / 2 ? j->out_len + n + 1 : cap * 2;
    if (cap > j->out_max + 1) cap = j->out_max + 1;
    char* p = (char*)realloc(j->out, cap);
    if (!p) luaL_error(L, "out of memory growing the template output to %I bytes", (lua_Integer)cap);
    j->out = p;
    j->out_cap = cap;
  }
  memcpy(j->out + j->out_len, s, n);
  j->out_len += n;
  j->out[j->out_len] = '\0';
}

/* emit(...): strings and numbers, appended in order. */
static int sb_emit(lua_State* L) {
  render_job* j = job_of(L);
  int n = lua_gettop(L);
  for (int i = 1; i <= n; i++) {
    size_t len;
    const char* s = luaL_checklstring(L, i, &len);
    out_append(L, j, s, len);
  }
  return 0;
}

static int is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static int is_name_char(char c) { return is_name_start(c) || (c >= '0' && c <= '9'); }

/* emitf(text [, values]): ${name} substitution; upvalue 1 is this render's params. */
static int sb_emitf(lua_State* L) {
  render_job* j = job_of(L);
  size_t len;
  const char* t = luaL_checklstring(L, 1, &len);
  if (lua_isnoneornil(L, 2)) {
    lua_pushvalue(L, lua_upvalueindex(1));
  } else {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_pushvalue(L, 2);
  }
  int vals = lua_gettop(L);
  size_t lit = 0; /* start of the literal text not yet appended */
  size_t i = 0;
  while (i < len) {
    if (t[i] != '$' || i + 1 >= len) {
      i++;
      continue;
    }
    if (t[i + 1] == '$' && i + 2 < len && t[i + 2] == '{') { /* "$${" -> "${" */
      out_append(L, j, t + lit, i - lit);
      out_append(L, j, "${", 2);
      i += 3;
      lit = i;
      continue;
    }
    if (t[i + 1] != '{') {
      i++;
      continue;
    }
    size_t s = i + 2, e = s;
    while (e < len && is_name_char(t[e])) e++;
    if (e == s || !is_name_start(t[s]) || e >= len || t[e] != '}')
      return luaL_error(L, "emitf: malformed placeholder at byte %I (expected ${name})", (lua_Integer)(i + 1));
    out_append(L, j, t + lit, i - lit);
    lua_pushlstring(L, t + s, e - s);
    lua_gettable(L, vals);
    int ty = lua_type(L, -1);
    if (ty == LUA_TBOOLEAN) {
      const char* b = lua_toboolean(L, -1) ? "true" : "false";
      out_append(L, j, b, strlen(b));
    } else if (ty == LUA_TSTRING || ty == LUA_TNUMBER) {
      size_t vl;
      const char* v = lua_tolstring(L, -1, &vl);
      out_append(L, j, v, vl);
    } else if (ty == LUA_TNIL) {
      return luaL_error(L, "emitf: ${%s} is not set", lua_pushlstring(L, t + s, e - s));
    } else {
      const char* tn = luaL_typename(L, -1); /* before the push below moves the value */
      return luaL_error(L, "emitf: ${%s} is a %s; expected a string, number or boolean",
                        lua_pushlstring(L, t + s, e - s), tn);
    }
    lua_pop(L, 1);
    i = e + 1;
    lit = i;
  }
  out_append(L, j, t + lit, len - lit);
  return 0;
}

/* pcall that cannot catch the limits: once one is hit the error goes on up. */
static int sb_pcall(lua_State* L) {
  luaL_checkany(L, 1);
  render_job* j = job_of(L);
  int st = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
  if (st == LUA_ERRMEM && !j->aborted) j->aborted = ABORT_MEMORY;
  if (j->aborted) return lua_error(L);
  lua_pushboolean(L, st == LUA_OK);
  lua_insert(L, 1);
  return lua_gettop(L);
}

/* setmetatable without finalizers: __gc functions run with hooks off (no instruction
 * limit) and at lua_close, so a looping one would hang the render. */
static int sb_setmetatable(lua_State* L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int t = lua_type(L, 2);
  luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
  if (t == LUA_TTABLE) {
    lua_pushliteral(L, "__gc");
    if (lua_rawget(L, 2) != LUA_TNIL) return luaL_error(L, "setmetatable: __gc metamethods are not allowed in templates");
    lua_pop(L, 1);
  }
  if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL) return luaL_error(L, "cannot change a protected metatable");
  lua_settop(L, 2);
  lua_setmetatable(L, 1);
  return 1;
}

/* load for templates: string chunks, text mode only, this render's env by default
 * (upvalue 1) rather than the state's real globals. */
static int sb_load(lua_State* L) {
  render_job* j = job_of(L);
  if (lua_type(L, 1) != LUA_TSTRING) return luaL_error(L, "load: templates may load only a string of Lua text");
  size_t len;
  const char* s = lua_tolstring(L, 1, &len);
  const char* chunkname = luaL_optstring(L, 2, "=(load)");
  const char* mode = luaL_optstring(L, 3, "t");
  if (strcmp(mode, "t") != 0)
    return luaL_error(L, "load: only text chunks (mode 't') are allowed in templates, not mode '%s'", mode);
  int env = lua_isnone(L, 4) ? lua_upvalueindex(1) : 4;
  int st = luaL_loadbufferx(L, s, len, chunkname, "t");
  if (st == LUA_OK) {
    lua_pushvalue(L, env);
    if (!lua_setupvalue(L, -2, 1)) lua_pop(L, 1);
    return 1;
  }
  if (st == LUA_ERRMEM) {
    if (!j->aborted) j->aborted = ABORT_MEMORY;
    return lua_error(L);
  }
  luaL_pushfail(L);
  lua_insert(L, -2);
  return 2;
}

/* Message handler of the template's call: the message plus a traceback. Non-string error
 * objects are described, not converted through their metamethods (template code again). */
static int sb_msgh(lua_State* L) {
  const char* msg = lua_tostring(L, 1);
  if (!msg) msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* ------------------------------------------------------------------ the render */

static const char* const base_whitelist[] = {"assert", "error",    "ipairs", "pairs",        "next",
                                             "select", "tonumber", "tostring", "type",       "rawequal",
                                             "rawlen", "rawget",   "rawset", "getmetatable", "_VERSION"};

/* Opens one library without making it a global (only the base library writes globals). */
static void open_lib(lua_State* L, const char* name, lua_CFunction open) {
  luaL_requiref(L, name, open, 0);
}

static void set_nil(lua_State* L, int table, const char* field) {
  table = lua_absindex(L, table); /* the push below would move a relative index */
  lua_pushnil(L);
  lua_setfield(L, table, field);
}

/* Runs protected with the job as light userdata. Returns one value: nil on success, the
 * error message when the template failed to load or run (chunk_status says which). */
static int sb_main(lua_State* L) {
  render_job* j = (render_job*)lua_touserdata(L, 1);
  lua_settop(L, 0);

  /* the real globals: only base, and even there drop what reads files or loads code, in
   * case a path to them is ever found (the template gets its own env, never this one) */
  luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
  int g = lua_gettop(L);
  static const char* const unsafe[] = {"dofile", "loadfile", "load", "collectgarbage", "print", "require"};
  for (size_t k = 0; k < sizeof unsafe / sizeof unsafe[0]; k++) set_nil(L, g, unsafe[k]);

  lua_createtable(L, 0, 32);
  int env = lua_gettop(L);
  for (size_t k = 0; k < sizeof base_whitelist / sizeof base_whitelist[0]; k++) {
    lua_getfield(L, g, base_whitelist[k]);
    lua_setfield(L, env, base_whitelist[k]);
  }
  lua_pushcfunction(L, sb_pcall);
  lua_setfield(L, env, "pcall");
  lua_pushcfunction(L, sb_setmetatable);
  lua_setfield(L, env, "setmetatable");
  lua_pushvalue(L, env);
  lua_pushcclosure(L, sb_load, 1);
  lua_setfield(L, env, "load");

  /* the library tables themselves: this state dies with the render, so a template that
   * changes them changes only its own render. string.dump goes from the real table,
   * which is also what getmetatable("").__index reaches. */
  open_lib(L, LUA_STRLIBNAME, luaopen_string);
  set_nil(L, -1, "dump");
  lua_setfield(L, env, "string");
  open_lib(L, LUA_MATHLIBNAME, luaopen_math);
  set_nil(L, -1, "random");
  set_nil(L, -1, "randomseed");
  lua_setfield(L, env, "math");
  open_lib(L, LUA_TABLIBNAME, luaopen_table);
  lua_getfield(L, -1, "unpack");
  lua_setfield(L, env, "unpack");
  lua_setfield(L, env, "table");

  lua_createtable(L, 0, j->n_params);
  int params = lua_gettop(L);
  for (int k = 0; k < j->n_params; k++) {
    const aj_lua_param* p = &j->params[k];
    switch (p->kind) {
      case AJ_LUA_STRING: lua_pushstring(L, p->s); break;
      case AJ_LUA_NUMBER: lua_pushnumber(L, (lua_Number)p->n); break;
      case AJ_LUA_INTEGER: lua_pushinteger(L, (lua_Integer)p->i); break;
      case AJ_LUA_BOOLEAN: lua_pushboolean(L, p->b != 0); break;
    }
    lua_setfield(L, params, p->name);
  }
  lua_pushvalue(L, params);
  lua_setfield(L, env, "params");
  lua_pushcfunction(L, sb_emit);
  lua_setfield(L, env, "emit");
  lua_pushvalue(L, params);
  lua_pushcclosure(L, sb_emitf, 1);
  lua_setfield(L, env, "emitf");

  /* "@name" makes Lua's messages read "name:line:" */
  const char* chunkname = lua_pushfstring(L, "@%s", j->name);
  lua_pushcfunction(L, sb_msgh);
  int msgh = lua_gettop(L);
  int st = luaL_loadbufferx(L, j->text, j->text_len, chunkname, "t");
  if (st != LUA_OK) {
    j->chunk_status = st;
    return 1;
  }
  lua_pushvalue(L, env);
  lua_setupvalue(L, -2, 1); /* a main chunk's one upvalue is _ENV */
  st = lua_pcall(L, 0, 1, msgh);
  if (st != LUA_OK) {
    j->chunk_status = st;
    return 1;
  }
  int rt = lua_type(L, -1);
  if (rt == LUA_TSTRING) {
    size_t n;
    const char* s = lua_tolstring(L, -1, &n);
    out_append(L, j, s, n);
  } else if (rt != LUA_TNIL) {
    j->chunk_status = LUA_ERRRUN;
    lua_pushfstring(L, "%s: the template returned a %s; expected a string or nothing", j->name,
                    luaL_typename(L, -1));
    return 1;
  }
  lua_pushnil(L);
  return 1;
}

adamjit_status aj_lua_host_create(adamjit_context* ctx, aj_lua_host** out) {
  if (!out) return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "aj_lua_host_create: out is NULL");
  *out = NULL;
  aj_lua_host* h = (aj_lua_host*)calloc(1, sizeof *h);
  if (!h) return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "aj_lua_host_create: out of memory");
  h->ctx = ctx;
  aj_lua_limits_default(&h->limits);
  *out = h;
  return ADAMJIT_OK;
}

void aj_lua_host_destroy(aj_lua_host* host) { free(host); }

adamjit_status aj_lua_host_set_limits(aj_lua_host* host, const aj_lua_limits* limits) {
  if (!host || !limits)
    return aj_fail(host ? host->ctx : NULL, ADAMJIT_ERR_NULL_ARGUMENT, "aj_lua_host_set_limits: %s is NULL",
                   host ? "limits" : "host");
  if (limits->max_instructions == 0 || limits->max_memory == 0 || limits->max_output == 0)
    return aj_fail(host->ctx, ADAMJIT_ERR_INVALID_VALUE, "aj_lua_host_set_limits: every limit must be > 0");
  /* the output buffer holds max_output + 1 bytes */
  if (limits->max_output >= SIZE_MAX / 2)
    return aj_fail(host->ctx, ADAMJIT_ERR_INVALID_VALUE, "aj_lua_host_set_limits: max_output is too large");
  host->limits = *limits;
  return ADAMJIT_OK;
}

void aj_lua_host_get_limits(const aj_lua_host* host, aj_lua_limits* limits) {
  if (host && limits) *limits = host->limits;
}

void aj_lua_host_last_usage(const aj_lua_host* host, uint64_t* instructions, size_t* peak_memory) {
  if (instructions) *instructions = host ? host->last_instructions : 0;
  if (peak_memory) *peak_memory = host ? host->last_peak_memory : 0;
}

static adamjit_status check_params(adamjit_context* ctx, const aj_lua_param* params, int n) {
  if (n < 0) return aj_fail(ctx, ADAMJIT_ERR_INVALID_SIZE, "aj_lua_render: n_params is %d", n);
  if (n > 0 && !params) return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "aj_lua_render: params is NULL");
  for (int k = 0; k < n; k++) {
    const aj_lua_param* p = &params[k];
    if (!p->name) return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "aj_lua_render: params[%d].name is NULL", k);
    if (p->kind != AJ_LUA_STRING && p->kind != AJ_LUA_NUMBER && p->kind != AJ_LUA_INTEGER &&
        p->kind != AJ_LUA_BOOLEAN)
      return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "aj_lua_render: params[%d] ('%s') has unknown kind %d", k,
                     p->name, (int)p->kind);
    if (p->kind == AJ_LUA_STRING && !p->s)
      return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "aj_lua_render: params[%d] ('%s') is a NULL string", k,
                     p->name);
    for (int m = 0; m < k; m++)
      if (strcmp(params[m].name, p->name) == 0)
        return aj_fail(ctx, ADAMJIT_ERR_INVALID_VALUE, "aj_lua_render: parameter '%s' is given twice", p->name);
  }
  return ADAMJIT_OK;
}

adamjit_status aj_lua_render(aj_lua_host* host, const char* template_name, const char* template_text, size_t len,
                             const aj_lua_param* params, int n_params, char** out_source, size_t* out_len) {
  if (out_source) *out_source = NULL;
  if (out_len) *out_len = 0;
  if (!host) return aj_fail(NULL, ADAMJIT_ERR_NULL_ARGUMENT, "aj_lua_render: host is NULL");
  adamjit_context* ctx = host->ctx;
  if (!template_text || !out_source || !out_len)
    return aj_fail(ctx, ADAMJIT_ERR_NULL_ARGUMENT, "aj_lua_render: %s is NULL",
                   !template_text ? "template_text" : !out_source ? "out_source" : "out_len");
  adamjit_status st = check_params(ctx, params, n_params);
  if (st != ADAMJIT_OK) return st;
  const char* name = template_name ? template_name : "template";

  render_job j;
  memset(&j, 0, sizeof j);
  j.mem_limit = host->limits.max_memory;
  j.max_instructions = host->limits.max_instructions;
  j.out_max = host->limits.max_output;
  j.name = name;
  j.text = template_text;
  j.text_len = len;
  j.params = params;
  j.n_params = n_params;

  lua_State* L = lua_newstate(sb_alloc, &j);
  if (!L) {
    host->last_instructions = 0;
    host->last_peak_memory = j.mem_peak;
    return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY,
                   "template '%s': cannot create a Lua state (out of memory, or a memory limit of %zu bytes is "
                   "too small)",
                   name, j.mem_limit);
  }
  lua_sethook(L, sb_hook, LUA_MASKCOUNT, AJ_LUA_HOOK_INTERVAL);
  lua_pushcfunction(L, sb_main);
  lua_pushlightuserdata(L, &j);
  int ps = lua_pcall(L, 1, 1, 0);

  if (ps == LUA_OK && j.chunk_status == LUA_OK) {
    st = ADAMJIT_OK;
  } else {
    /* ps != OK: the setup or the output step failed (memory, output limit); otherwise the
     * template's load or run did. Either way the message is on top. */
    int status = ps != LUA_OK ? ps : j.chunk_status;
    const char* msg = lua_tostring(L, -1);
    if (!msg) msg = "(no error message)";
    if (status == LUA_ERRMEM || j.aborted == ABORT_MEMORY) {
      st = aj_fail(ctx, ADAMJIT_ERR_TEMPLATE, "template '%s': template exceeded the memory limit (%zu bytes): %s",
                   name, j.mem_limit, msg);
    } else if (status == LUA_ERRERR) {
      st = aj_fail(ctx, ADAMJIT_ERR_TEMPLATE, "template '%s': error while reporting an error: %s", name, msg);
    } else {
      st = aj_fail(ctx, ADAMJIT_ERR_TEMPLATE, "template '%s': %s", name, msg);
    }
  }
  host->last_instructions = j.instructions;
  lua_close(L);
  host->last_peak_memory = j.mem_peak;

  if (st != ADAMJIT_OK) {
    free(j.out);
    return st;
  }
  if (!j.out) { /* nothing emitted: still a valid, empty string */
    j.out = (char*)malloc(1);
    if (!j.out) return aj_fail(ctx, ADAMJIT_ERR_OUT_OF_MEMORY, "template '%s': out of memory", name);
    j.out[0] = '\0';
  }
  *out_source = j.out;
  *out_len = j.out_len;
  return ADAMJIT_OK;
}
