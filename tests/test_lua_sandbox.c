/* The Lua template host (jit/lua_host.h): rendering with params, and the sandbox: library
 * access, bytecode, runaway loops, huge strings and errors are refused with
 * ADAMJIT_ERR_TEMPLATE and a message naming the template and line, and the host renders
 * correctly after every failure. */
#include <time.h>

#include "harness.h"
#include "jit/lua_host.h"

/* The test makes a real bytecode chunk with a plain Lua state of its own (it links Lua). */
#include <lauxlib.h>
#include <lua.h>

static adamjit_context* ctx;
static aj_lua_host* host;

static double cpu_seconds(void) { return (double)clock() / CLOCKS_PER_SEC; }

static adamjit_status render(const char* name, const char* text, const aj_lua_param* p, int n, char** out,
                             size_t* len) {
  return aj_lua_render(host, name, text, strlen(text), p, n, out, len);
}

/* A good template renders exactly: proves the host is not poisoned by whatever came before. */
static void check_good_render(const char* after) {
  char* out = NULL;
  size_t len = 0;
  aj_lua_param p[1] = {{.name = "x", .kind = AJ_LUA_INTEGER, .i = 7}};
  adamjit_status st = render("good.lua", "emitf('ok ${x}')", p, 1, &out, &len);
  CHECK_MSG(st == ADAMJIT_OK && out && strcmp(out, "ok 7") == 0 && len == 4,
            "a good render after '%s' failed: %s", after, adamjit_context_last_error(ctx));
  free(out);
}

/* Expects the template to fail with ADAMJIT_ERR_TEMPLATE and a message holding each of up
 * to three substrings; then checks that the host still renders. */
static void expect_fail(const char* name, const char* text, size_t len, const char* want1, const char* want2,
                        const char* want3) {
  char* out = (char*)1;
  size_t out_len = 99;
  adamjit_status st = aj_lua_render(host, name, text, len, NULL, 0, &out, &out_len);
  const char* msg = adamjit_context_last_error(ctx);
  CHECK_MSG(st == ADAMJIT_ERR_TEMPLATE, "%s: status %s, expected the template error", name,
            adamjit_status_string(st));
  CHECK_MSG(out == NULL && out_len == 0, "%s: the output is not cleared on failure", name);
  const char* wants[3] = {want1, want2, want3};
  for (int k = 0; k < 3; k++)
    if (wants[k]) CHECK_MSG(strstr(msg, wants[k]) != NULL, "%s: message lacks \"%s\":\n%s", name, wants[k], msg);
  if (st == ADAMJIT_OK) free(out);
  check_good_render(name);
}

static void expect_fail_text(const char* name, const char* text, const char* w1, const char* w2, const char* w3) {
  expect_fail(name, text, strlen(text), w1, w2, w3);
}

static void test_render_params(void) {
  const char* tpl =
      "emit('// ', params.name, '\\n')\n"
      "emitf('#define N ${n}\\n#define LR ${lr}\\n#define AMS ${ams}\\n')\n"
      "emit('#define WG ', params.wg, '\\n')\n"
      "if params.ams then emit('amsgrad\\n') end\n"
      "if not params.off then emit('off is false\\n') end\n"
      "emitf('$${keep} ${name} ${v}$\\n', {name = 'tbl', v = 3})\n"
      "local t = {} for i = 1, 3 do t[#t + 1] = tostring(i) end\n"
      "emit(table.concat(t, ','), '\\n', string.format('%.3f', math.pi), '\\n')\n"
      "local f = load('return 1 + 1') emit(f(), '\\n')\n"
      "assert(load('return io')() == nil)\n"
      "assert(pcall(error, 'caught') == false)\n"
      "return 'tail\\n'\n";
  aj_lua_param p[] = {
      {.name = "name", .kind = AJ_LUA_STRING, .s = "adamw"},
      {.name = "lr", .kind = AJ_LUA_NUMBER, .n = 0.5},
      {.name = "n", .kind = AJ_LUA_INTEGER, .i = 256},
      {.name = "ams", .kind = AJ_LUA_BOOLEAN, .b = 1},
      {.name = "off", .kind = AJ_LUA_BOOLEAN, .b = 0},
      {.name = "wg", .kind = AJ_LUA_NUMBER, .n = 64.0},
  };
  const char* want =
      "// adamw\n#define N 256\n#define LR 0.5\n#define AMS true\n#define WG 64.0\namsgrad\noff is false\n"
      "${keep} tbl 3$\n1,2,3\n3.142\n2\ntail\n";
  char* out = NULL;
  size_t len = 0;
  CHECK_OK(render("params.lua", tpl, p, 6, &out, &len));
  CHECK_MSG(out && strcmp(out, want) == 0, "rendered:\n%s\nexpected:\n%s\n(%s)", out ? out : "(null)", want,
            adamjit_context_last_error(ctx));
  CHECK(out && len == strlen(want));
  free(out);

  /* an empty template renders an empty string, not NULL */
  out = NULL;
  CHECK_OK(render("empty.lua", "", NULL, 0, &out, &len));
  CHECK(out && out[0] == '\0' && len == 0);
  free(out);

  /* the text need not be NUL-terminated: only len bytes are read */
  char buf[16];
  memcpy(buf, "emit('ab')XXXX", 14);
  out = NULL;
  CHECK_OK(aj_lua_render(host, "len.lua", buf, 10, NULL, 0, &out, &len));
  CHECK(out && strcmp(out, "ab") == 0);
  free(out);
}

static void test_library_access(void) {
  expect_fail_text("io.lua", "local f = io.open('/etc/passwd')", "template 'io.lua'", "io.lua:1:", "global 'io'");
  expect_fail_text("os.lua", "\nos.execute('true')", "os.lua:2:", "global 'os'", NULL);
  expect_fail_text("req.lua", "require('os')", "req.lua:1:", "global 'require'", NULL);
  expect_fail_text("dofile.lua", "dofile('/etc/passwd')", "dofile.lua:1:", "global 'dofile'", NULL);
  expect_fail_text("loadfile.lua", "loadfile('/etc/passwd')", "loadfile.lua:1:", "global 'loadfile'", NULL);
  expect_fail_text("loadb.lua", "load('return 1', 'x', 'b')", "loadb.lua:1:", "only text chunks", NULL);
  expect_fail_text("loadbt.lua", "load('return 1', 'x', 'bt')", "only text chunks", NULL, NULL);
  expect_fail_text("loadfn.lua", "load(function() return nil end)", "only a string", NULL, NULL);
  expect_fail_text("loadbin.lua", "assert(load('\\27Lua'))", "loadbin.lua:1:", "binary chunk", NULL);
  expect_fail_text("dump.lua", "string.dump(function() end)", "dump.lua:1:", "field 'dump'", NULL);
  expect_fail_text("dump2.lua", "getmetatable('').__index.dump(function() end)", "dump2.lua:1:", "dump", NULL);
  expect_fail_text("dump3.lua", "('').dump(function() end)", "dump3.lua:1:", "dump", NULL);
  expect_fail_text("debug.lua", "debug.traceback()", "debug.lua:1:", "global 'debug'", NULL);
  expect_fail_text("gc.lua", "collectgarbage()", "global 'collectgarbage'", NULL, NULL);
  expect_fail_text("G.lua", "_G.x = 1", "global '_G'", NULL, NULL);
  expect_fail_text("pkg.lua", "package.loaded.x = 1", "global 'package'", NULL, NULL);
  expect_fail_text("random.lua", "math.random()", "field 'random'", NULL, NULL);
  expect_fail_text("finalizer.lua", "setmetatable({}, {__gc = function() while true do end end})", "finalizer.lua:1:",
                   "__gc", NULL);
  expect_fail_text("print.lua", "print('hi')", "global 'print'", NULL, NULL);
}

typedef struct dump_buf {
  char data[4096];
  size_t len;
} dump_buf;

/* lua_Writer collecting lua_dump's output */
static int dump_writer(lua_State* L, const void* p, size_t sz, void* ud) {
  (void)L;
  dump_buf* bc = (dump_buf*)ud;
  if (sz > sizeof bc->data - bc->len) return 1;
  memcpy(bc->data + bc->len, p, sz);
  bc->len += sz;
  return 0;
}

static void test_bytecode_chunk(void) {
  /* a real precompiled chunk from a plain state of the test's own */
  lua_State* L = luaL_newstate();
  REQUIRE_OK(L ? ADAMJIT_OK : ADAMJIT_ERR_OUT_OF_MEMORY);
  CHECK(luaL_loadstring(L, "emit('from bytecode')") == LUA_OK);
  dump_buf bc = {.len = 0};
  CHECK(lua_dump(L, dump_writer, &bc, 0) == 0);
  CHECK(bc.len > 4 && bc.data[0] == 27);
  lua_close(L);
  expect_fail("bytecode.lua", bc.data, bc.len, "template 'bytecode.lua'", "binary chunk", "mode is 't'");
}

static void test_limits(void) {
  /* at the default limits: the cases the issue names */
  double t0 = cpu_seconds();
  expect_fail_text("loop.lua", "local x = 0\nwhile true do x = x + 1 end", "loop.lua:2:", "instruction limit", NULL);
  double t1 = cpu_seconds();
  CHECK_MSG(t1 - t0 < 1.0, "the endless loop took %.2f s of CPU", t1 - t0);
  expect_fail_text("rep.lua", "local s = string.rep('x', 1e9)", "template 'rep.lua'",
                   "template exceeded the memory limit", NULL);
  expect_fail_text("double.lua", "local s = 'x'\nwhile true do s = s .. s end", "template 'double.lua'",
                   "template exceeded the memory limit", NULL);
  /* what a render used: the doubling loop got close to the cap and never past it */
  char* none = NULL;
  size_t none_len = 0;
  CHECK_STATUS(render("double.lua", "local s = 'x' while true do s = s .. s end", NULL, 0, &none, &none_len),
               ADAMJIT_ERR_TEMPLATE);
  uint64_t instructions = 0;
  size_t peak = 0;
  aj_lua_host_last_usage(host, &instructions, &peak);
  CHECK_MSG(peak > AJ_LUA_DEFAULT_MAX_MEMORY / 4 && peak <= AJ_LUA_DEFAULT_MAX_MEMORY, "peak %zu", peak);
  CHECK(instructions < 1000000); /* about 30 doublings: less than one hook interval */

  /* the variations under smaller limits, which behave the same and keep the test fast */
  aj_lua_limits small, saved;
  aj_lua_host_get_limits(host, &saved);
  small = saved;
  small.max_instructions = 2000000;
  small.max_memory = (size_t)8 << 20;
  CHECK_OK(aj_lua_host_set_limits(host, &small));
  expect_fail_text("loop0.lua", "while true do end", "loop0.lua:1:", "instruction limit (2000000 instructions)", NULL);
  /* pcall cannot swallow a limit and go on */
  expect_fail_text("pcall_loop.lua", "while true do pcall(function() while true do end end) end", "instruction limit",
                   NULL, NULL);
  /* a to-be-closed variable's handler runs while the limit error unwinds: it is stopped too */
  expect_fail_text("close.lua",
                   "local x <close> = setmetatable({}, {__close = function() while true do end end})\n"
                   "while true do end",
                   "instruction limit", NULL, NULL);
  expect_fail_text("sort.lua", "local t = {} for i = 1, 100 do t[i] = i end\n"
                   "table.sort(t, function(a, b) while true do end end)", "sort.lua:2:", "instruction limit", NULL);
  expect_fail_text("pcall_rep.lua", "pcall(string.rep, 'x', 1e9)\nemit('survived')",
                   "template exceeded the memory limit (8388608 bytes)", NULL, NULL);
  expect_fail_text("table.lua", "local t = {} for i = 1, 1e9 do t[i] = i end", "template exceeded the memory limit",
                   NULL, NULL);
  expect_fail_text("concat.lua", "local t = {} for i = 1, 100 do t[i] = string.rep('y', 1e5) end emit(table.concat(t))",
                   "memory limit", NULL, NULL);
  /* unbounded recursion: the Lua stack reaches the memory limit before its own limit */
  expect_fail_text("rec.lua", "local function f() return f() + 1 end f()", "template 'rec.lua'", NULL, NULL);
  CHECK_OK(aj_lua_host_set_limits(host, &saved));

  /* output limit, and limits are per host and adjustable */
  aj_lua_limits lim = saved;
  lim.max_output = 100;
  CHECK_OK(aj_lua_host_set_limits(host, &lim));
  char* out = NULL;
  size_t len = 0;
  CHECK_OK(render("out100.lua", "emit(string.rep('x', 100))", NULL, 0, &out, &len));
  CHECK(out && len == 100);
  free(out);
  expect_fail_text("out101.lua", "emit(string.rep('x', 60))\nemit(string.rep('x', 41))", "out101.lua:2:",
                   "output exceeds the limit of 100 bytes", NULL);
  expect_fail_text("ret101.lua", "return string.rep('x', 101)", "output exceeds", NULL, NULL);
  lim = saved;
  lim.max_instructions = 10000;
  CHECK_OK(aj_lua_host_set_limits(host, &lim));
  expect_fail_text("small.lua", "for i = 1, 1e6 do end", "instruction limit (10000 instructions)", NULL, NULL);
  lim.max_instructions = 0;
  CHECK_STATUS(aj_lua_host_set_limits(host, &lim), ADAMJIT_ERR_INVALID_VALUE);
  CHECK_OK(aj_lua_host_set_limits(host, &saved));
  aj_lua_host_get_limits(host, &lim);
  CHECK(lim.max_instructions == AJ_LUA_DEFAULT_MAX_INSTRUCTIONS && lim.max_memory == AJ_LUA_DEFAULT_MAX_MEMORY);
}

static void test_errors(void) {
  expect_fail_text("syntax.lua", "emit('a')\nlocal x = 1\nlocal y = = 2\n", "template 'syntax.lua'", "syntax.lua:3:",
                   "unexpected symbol");
  expect_fail_text("unclosed.lua", "if true then\nemit('a')\n", "unclosed.lua:", "'end' expected", NULL);
  expect_fail_text("runtime.lua", "local function check(x)\n  error('bad value ' .. x)\nend\ncheck(42)\n",
                   "runtime.lua:2: bad value 42", "stack traceback:", "runtime.lua:4:");
  expect_fail_text("arith.lua", "local t = nil\nemit(t.field)", "arith.lua:2:", "attempt to index a nil value", NULL);
  expect_fail_text("errobj.lua", "error({})", "error object is a table value", NULL, NULL);
  expect_fail_text("emitnil.lua", "emit('a', nil)", "emitnil.lua:1:", "bad argument #2 to 'emit'", NULL);
  expect_fail_text("emitf_missing.lua", "\nemitf('x ${nope} y')", "emitf_missing.lua:2:", "${nope} is not set", NULL);
  expect_fail_text("emitf_table.lua", "emitf('${t}', {t = {}})", "${t} is a table", NULL, NULL);
  expect_fail_text("emitf_bad.lua", "emitf('${1x}')", "malformed placeholder", NULL, NULL);
  expect_fail_text("emitf_open.lua", "emitf('${abc')", "malformed placeholder", NULL, NULL);
  expect_fail_text("return.lua", "return {}", "returned a table", NULL, NULL);
  /* a long name is shortened by Lua in positions, but the prefix keeps it whole */
  expect_fail_text("kernel_templates/a_rather_long_directory_name/and_a_long_template_name.lua", "error('x')",
                   "template 'kernel_templates/a_rather_long_directory_name/and_a_long_template_name.lua'",
                   "and_a_long_template_name.lua:1: x", NULL);

  /* argument checks */
  char* out = NULL;
  size_t len = 0;
  CHECK_STATUS(aj_lua_render(NULL, "x", "", 0, NULL, 0, &out, &len), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK_STATUS(aj_lua_render(host, "x", NULL, 0, NULL, 0, &out, &len), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK_STATUS(aj_lua_render(host, "x", "", 0, NULL, 0, NULL, &len), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK_STATUS(aj_lua_render(host, "x", "", 0, NULL, 1, &out, &len), ADAMJIT_ERR_NULL_ARGUMENT);
  CHECK_STATUS(aj_lua_render(host, "x", "", 0, NULL, -1, &out, &len), ADAMJIT_ERR_INVALID_SIZE);
  aj_lua_param dup[2] = {{.name = "a", .kind = AJ_LUA_INTEGER}, {.name = "a", .kind = AJ_LUA_BOOLEAN}};
  CHECK_STATUS(aj_lua_render(host, "x", "", 0, dup, 2, &out, &len), ADAMJIT_ERR_INVALID_VALUE);
  CHECK(strstr(adamjit_context_last_error(ctx), "'a' is given twice") != NULL);
  aj_lua_param nulls[1] = {{.name = "a", .kind = AJ_LUA_STRING, .s = NULL}};
  CHECK_STATUS(aj_lua_render(host, "x", "", 0, nulls, 1, &out, &len), ADAMJIT_ERR_NULL_ARGUMENT);
  aj_lua_param badkind[1] = {{.name = "a", .kind = (aj_lua_param_kind)42}};
  CHECK_STATUS(aj_lua_render(host, "x", "", 0, badkind, 1, &out, &len), ADAMJIT_ERR_INVALID_VALUE);
  CHECK(out == NULL && len == 0);
  CHECK_STATUS(aj_lua_host_create(ctx, NULL), ADAMJIT_ERR_NULL_ARGUMENT);
  aj_lua_host_destroy(NULL);
}

/* Changes a template makes to libraries, metatables, params or globals stay in its render. */
static void test_isolation(void) {
  const char* vandal =
      "string.format = nil\n"
      "getmetatable('').__index.upper = nil\n"
      "math.pi = 3\n"
      "table.concat = nil\n"
      "leaked = 'yes'\n"
      "params.injected = 1\n"
      "emit = nil\n";
  char* out = NULL;
  size_t len = 0;
  CHECK_OK(render("vandal.lua", vandal, NULL, 0, &out, &len));
  free(out);
  const char* probe =
      "assert(string.format('%d', 5) == '5')\n"
      "assert(('a'):upper() == 'A')\n"
      "assert(math.pi > 3.14)\n"
      "assert(table.concat({1, 2}) == '12')\n"
      "assert(leaked == nil)\n"
      "assert(params.injected == nil)\n"
      "emit('clean')\n";
  out = NULL;
  CHECK_OK(render("probe.lua", probe, NULL, 0, &out, &len));
  CHECK_MSG(out && strcmp(out, "clean") == 0, "%s", adamjit_context_last_error(ctx));
  free(out);
}

/* The cost of a fresh state per render, printed for the record. */
static void measure_render_cost(const char* what, const char* tpl) {
  aj_lua_param p[1] = {{.name = "lr", .kind = AJ_LUA_NUMBER, .n = 1e-3}};
  enum { N = 200 };
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  int ok = 1;
  for (int k = 0; k < N; k++) {
    char* out = NULL;
    size_t len = 0;
    if (render("cost.lua", tpl, p, 1, &out, &len) != ADAMJIT_OK) ok = 0;
    free(out);
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  CHECK(ok);
  double us = ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / 1e3 / N;
  printf("render with a fresh Lua state: %.1f us per render (%s)\n", us, what);
}

int main(void) {
  ctx = test_cpu_context();
  REQUIRE_OK(aj_lua_host_create(ctx, &host));
  test_render_params();
  test_library_access();
  test_bytecode_chunk();
  test_limits();
  test_errors();
  test_isolation();
  measure_render_cost("empty template: the state's own cost", "");
  measure_render_cost("8 lines through emitf",
                      "for i = 1, 8 do emitf('float v${i} = x[${i}] * ${lr};\\n', {i = i, lr = params.lr}) end");
  aj_lua_host_destroy(host);
  adamjit_context_destroy(ctx);
  return test_finish("test_lua_sandbox");
}
