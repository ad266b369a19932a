// The airlock-extension command line (docs/CLI.md), run as a process: --version, global
// options anywhere, readable argument errors, exit codes per status code, run --json,
// input from stdin, stubbed host services, --loop timing, inspect.
#include <cstring>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>

#include <nlohmann/json.hpp>

#include "runtime_test_util.h"

using airlock::testing::skill_path;
using airlock::testing::test_wasm_path;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

extern char** environ;

namespace {

struct Ran {
  int rc = -1;
  std::string out, err;
};

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/airlock_cli_test.XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  std::string file(const std::string& name, const std::string& content) const {
    std::string p = path_ + "/" + name;
    std::ofstream(p, std::ios::binary) << content;
    return p;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Runs airlock-extension with `args`, `stdin_data` on its stdin; waits for it to exit.
Ran run_cli(const std::vector<std::string>& args, const std::string& stdin_data = "") {
  TempDir dir;
  const std::string in = dir.file("stdin", stdin_data);
  const std::string out = dir.path() + "/stdout", err = dir.path() + "/stderr";
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, in.c_str(), O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  std::vector<std::string> argv_s = {AIRLOCK_EXTENSION_BIN};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  Ran r;
  int st = posix_spawn(&pid, AIRLOCK_EXTENSION_BIN, &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  EXPECT_EQ(st, 0) << "posix_spawn: " << st;
  if (st != 0) return r;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

std::string describe(const Ran& r) { return "rc=" + std::to_string(r.rc) + "\nstdout:\n" + r.out + "\nstderr:\n" + r.err; }

nlohmann::json parse_json(const Ran& r) {
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << describe(r);
  return j;
}

}  // namespace

// ---- global behaviour ---------------------------------------------------------------

TEST(Cli, VersionNamesTheProjectAndV8) {
  auto r = run_cli({"--version"});
  EXPECT_EQ(r.rc, 0) << describe(r);
  EXPECT_THAT(r.out, StartsWith("airlock-extension 0.1.0 ")) << describe(r);
  EXPECT_THAT(r.out, HasSubstr("V8 10.2.")) << describe(r);
  EXPECT_THAT(r.out, HasSubstr("skill ABI 1")) << describe(r);
}

TEST(Cli, UnknownSubcommandIsNamed) {
  auto r = run_cli({"frobnicate", "x.wasm"});
  EXPECT_EQ(r.rc, 2) << describe(r);
  EXPECT_THAT(r.err, HasSubstr("unknown subcommand 'frobnicate'")) << describe(r);
  auto r2 = run_cli({"--log-level", "warn", "frobnicate"});
  EXPECT_EQ(r2.rc, 2) << describe(r2);
  EXPECT_THAT(r2.err, HasSubstr("unknown subcommand 'frobnicate'")) << describe(r2);
}

TEST(Cli, NoSubcommandIsAUsageError) {
  auto r = run_cli({});
  EXPECT_EQ(r.rc, 2) << describe(r);
}

TEST(Cli, LogLevelIsAcceptedBeforeAndAfterTheSubcommand) {
  for (auto args : {std::vector<std::string>{"--log-level", "warn", "run", skill_path("echo"), "--input", "hi"},
                    std::vector<std::string>{"run", skill_path("echo"), "--input", "hi", "--log-level", "warn"},
                    std::vector<std::string>{"run", "--log-level=error", skill_path("echo"), "--input", "hi"}}) {
    auto r = run_cli(args);
    EXPECT_EQ(r.rc, 0) << describe(r);
    EXPECT_EQ(r.out, "hi") << describe(r);
  }
}

TEST(Cli, LogLevelFiltersSkillLines) {
  auto info = run_cli({"run", skill_path("printer"), "--input", "xyz"});
  EXPECT_EQ(info.rc, 0) << describe(info);
  EXPECT_THAT(info.err, HasSubstr("hello from printer: xyz")) << describe(info);
  auto err = run_cli({"run", skill_path("printer"), "--input", "xyz", "--log-level", "error"});
  EXPECT_EQ(err.rc, 0) << describe(err);
  EXPECT_THAT(err.err, Not(HasSubstr("hello from printer"))) << describe(err);
}

TEST(Cli, InvalidLogLevelIsAUsageError) {
  auto r = run_cli({"--log-level", "loud", "run", skill_path("echo")});
  EXPECT_EQ(r.rc, 2) << describe(r);
  EXPECT_THAT(r.err, HasSubstr("--log-level")) << describe(r);
  EXPECT_THAT(r.err, HasSubstr("loud")) << describe(r);
  auto r2 = run_cli({"run", skill_path("echo"), "--log-level", "verbose"});
  EXPECT_EQ(r2.rc, 2) << describe(r2);
}

TEST(Cli, RangeErrorsAreReadable) {
  const std::regex long_number("[0-9]{12,}");
  struct Case {
    std::vector<std::string> args;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{"--timeout-ms", "0"}, "--timeout-ms: Value 0 not in range 1 to 86400000"},
      {{"--max-memory-mb", "5000"}, "--max-memory-mb: Value 5000 not in range 1 to 4096"},
      {{"--loop", "0"}, "--loop: Value 0 not in range 1 to 1000000"},
      {{"--timeout-ms", "abc"}, "--timeout-ms"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> args = {"run", skill_path("echo")};
    args.insert(args.end(), c.args.begin(), c.args.end());
    auto r = run_cli(args);
    EXPECT_EQ(r.rc, 2) << describe(r);
    EXPECT_THAT(r.err, HasSubstr(c.says)) << describe(r);
    EXPECT_FALSE(std::regex_search(r.err, long_number)) << describe(r);
  }
}

TEST(Cli, ArgumentErrorsExit2) {
  EXPECT_EQ(run_cli({"run"}).rc, 2);                                         // no skill
  EXPECT_EQ(run_cli({"run", "/nonexistent/skill.wasm"}).rc, 2);              // no such file
  EXPECT_EQ(run_cli({"run", skill_path("echo"), "--bogus"}).rc, 2);           // unknown option
  EXPECT_EQ(run_cli({"run", skill_path("echo"), "--input", "a", "--stdin"}).rc, 2);  // two inputs
  EXPECT_EQ(run_cli({"run", skill_path("echo"), "--input-file", "/nonexistent"}).rc, 2);
  EXPECT_EQ(run_cli({"run", skill_path("echo"), "--service", "=x"}).rc, 2);
  EXPECT_EQ(run_cli({"run", skill_path("echo"), "--fresh", "sometimes"}).rc, 2);
  EXPECT_EQ(run_cli({"inspect"}).rc, 2);
}

TEST(Cli, HelpShowsTheExitCodeTable) {
  for (auto args : {std::vector<std::string>{"--help"}, std::vector<std::string>{"run", "--help"}}) {
    auto r = run_cli(args);
    EXPECT_EQ(r.rc, 0) << describe(r);
    EXPECT_THAT(r.out, HasSubstr("Exit codes:")) << describe(r);
    EXPECT_THAT(r.out, HasSubstr("2  usage")) << describe(r);
    EXPECT_THAT(r.out, HasSubstr("13  the call failed: Trap")) << describe(r);
    EXPECT_THAT(r.out, HasSubstr("14  the call failed: Timeout")) << describe(r);
  }
}

TEST(Cli, ServeAndZygoteStillParse) {
  auto r = run_cli({"serve", "--help"});
  EXPECT_EQ(r.rc, 0) << describe(r);
  for (const char* opt : {"--fd", "--side-fd", "--name", "--transport", "--parent-pid", "--sandbox",
                          "--sandbox-user", "--readable", "--max-total-memory-mb", "--shm-output-min-bytes"}) {
    EXPECT_THAT(r.out, HasSubstr(opt)) << describe(r);
  }
  auto z = run_cli({"zygote", "--help"});
  EXPECT_EQ(z.rc, 0) << describe(z);
  EXPECT_THAT(z.out, HasSubstr("--fd")) << describe(z);
}

// ---- run: exit codes -----------------------------------------------------------------

TEST(Cli, ExitCodePerStatusCode) {
  struct Case {
    std::vector<std::string> args;
    int rc;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{"run", skill_path("echo"), "--input", "ok"}, 0, ""},
      {{"run", skill_path("echo"), "no_such_function"}, 11, "NotFound"},
      {{"run", test_wasm_path("bad_signature")}, 12, "InvalidArgument"},
      {{"run", skill_path("trap"), "--input", "oob"}, 13, "Trap(memory out of bounds)"},
      {{"run", skill_path("spin"), "--timeout-ms", "50"}, 14, "Timeout"},
      {{"run", skill_path("hog"), "--max-memory-mb", "4"}, 16, "ResourceExhausted"},
      {{"run", skill_path("caller"), "--input", "kv.get|k", "--services", ""}, 2, ""},  // filled below
      {{"run", skill_path("fail"), "--input", "boom"}, 20, "Internal"},
      {{"run", test_wasm_path("not_a_skill")}, 3, "not an Airlock skill"},
      {{"run", test_wasm_path("missing_import")}, 3, "airlock.no_such_function"},
  };
  TempDir dir;
  const std::string svc = dir.file("svc.json", R"({"kv.get": {"error": "Unavailable", "message": "kv is down"}})");
  for (auto c : cases) {
    if (c.args.size() > 5 && c.args[5] == "") {
      c.args[5] = svc;
      c.rc = 19;
      c.says = "Unavailable";
    }
    auto r = run_cli(c.args);
    EXPECT_EQ(r.rc, c.rc) << describe(r);
    if (!c.says.empty()) {
      EXPECT_THAT(r.err, HasSubstr(c.says)) << describe(r);
    }
  }
}

// ---- run --json ----------------------------------------------------------------------

TEST(Cli, JsonOnSuccess) {
  auto r = run_cli({"run", skill_path("echo"), "--input", "héllo", "--json"});
  EXPECT_EQ(r.rc, 0) << describe(r);
  auto j = parse_json(r);
  std::vector<std::string> keys;
  for (auto& [k, v] : j.items()) keys.push_back(k);
  EXPECT_EQ(keys, (std::vector<std::string>{"code", "message", "ms", "ok", "output", "trap"}));  // sorted by nlohmann::json
  EXPECT_EQ(j["ok"], true);
  EXPECT_EQ(j["code"], "Ok");
  EXPECT_EQ(j["message"], "");
  EXPECT_TRUE(j["trap"].is_null());
  EXPECT_EQ(j["output"], "héllo");
  EXPECT_TRUE(j["ms"].is_number());
  EXPECT_GE(j["ms"].get<double>(), 0.0);
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << "one line: " << r.out;
  EXPECT_EQ(r.out.substr(0, 7), R"({"ok":t)") << "fields in the documented order";
}

TEST(Cli, JsonOnTrapAndTimeout) {
  auto t = run_cli({"run", skill_path("trap"), "--input", "div0", "--json"});
  EXPECT_EQ(t.rc, 13) << describe(t);
  auto j = parse_json(t);
  EXPECT_EQ(j["ok"], false);
  EXPECT_EQ(j["code"], "Trap");
  EXPECT_EQ(j["trap"], "divide by zero");
  EXPECT_THAT(j["message"].get<std::string>(), HasSubstr("skill 'trap'"));
  EXPECT_EQ(j["output"], "");

  auto s = run_cli({"run", skill_path("spin"), "--timeout-ms", "50", "--json"});
  EXPECT_EQ(s.rc, 14) << describe(s);
  auto k = parse_json(s);
  EXPECT_EQ(k["code"], "Timeout");
  EXPECT_TRUE(k["trap"].is_null());
  EXPECT_GE(k["ms"].get<double>(), 50.0);
}

TEST(Cli, JsonOnLoadFailure) {
  auto r = run_cli({"run", test_wasm_path("not_a_skill"), "--json"});
  EXPECT_EQ(r.rc, 3) << describe(r);
  auto j = parse_json(r);
  EXPECT_EQ(j["ok"], false);
  EXPECT_EQ(j["code"], "InvalidArgument");
  EXPECT_THAT(j["message"].get<std::string>(), HasSubstr("not an Airlock skill"));
}

TEST(Cli, JsonReplacesBytesThatAreNotUtf8) {
  // sum's output is 8 raw bytes: "abc" sums to 294 = 0x126.
  auto r = run_cli({"run", skill_path("sum"), "--input", "abc", "--json"});
  EXPECT_EQ(r.rc, 0) << describe(r);
  auto j = parse_json(r);
  EXPECT_EQ(j["ok"], true);
  EXPECT_TRUE(j["output"].is_string());
}

// ---- input ---------------------------------------------------------------------------

TEST(Cli, InputFromStdin) {
  const std::string data("from stdin\n\0binary", 18);
  for (auto args : {std::vector<std::string>{"--input", "-"}, std::vector<std::string>{"--input-file", "-"},
                    std::vector<std::string>{"--stdin"}}) {
    std::vector<std::string> a = {"run", skill_path("echo")};
    a.insert(a.end(), args.begin(), args.end());
    auto r = run_cli(a, data);
    EXPECT_EQ(r.rc, 0) << describe(r);
    EXPECT_EQ(r.out, data) << describe(r);
  }
}

TEST(Cli, InputFromFileAndFunctionAsPositional) {
  TempDir dir;
  auto f = dir.file("in.txt", "b a b");
  auto r = run_cli({"run", skill_path("wordfreq"), "run", "--input-file", f});
  EXPECT_EQ(r.rc, 0) << describe(r);
  EXPECT_EQ(r.out, "b 2\na 1\n");
  auto both = run_cli({"run", skill_path("wordfreq"), "run", "--func", "run"});
  EXPECT_EQ(both.rc, 2) << describe(both);
}

// ---- C++ and WASI through the CLI ----------------------------------------------------

TEST(Cli, CppSkillsRun) {
  auto r = run_cli({"run", skill_path("wordfreq"), "--input", "To be, or not to be"});
  EXPECT_EQ(r.rc, 0) << describe(r);
  EXPECT_EQ(r.out, "be 2\nto 2\nnot 1\nor 1\n");
  EXPECT_THAT(r.err, HasSubstr("wordfreq: 6 words, 4 distinct")) << describe(r);  // std::cout -> log
  auto p = run_cli({"run", skill_path("stdio_probe")});
  EXPECT_EQ(p.rc, 0) << describe(p);
  EXPECT_THAT(p.out, HasSubstr("fopen_read=NULL errno=76 (Capabilities insufficient)")) << describe(p);
}

// ---- host service stubs --------------------------------------------------------------

TEST(Cli, ServiceStubsAnswerTheSkill) {
  auto r = run_cli({"run", skill_path("caller"), "--input", "kv.get|key", "--service", "kv.get=VALUE",
                    "--service", "other=x=y"});
  EXPECT_EQ(r.rc, 0) << describe(r);
  EXPECT_EQ(r.out, "VALUE");
  auto eq = run_cli({"run", skill_path("caller"), "--input", "other", "--service", "other=x=y"});
  EXPECT_EQ(eq.out, "x=y") << describe(eq);  // the reply is everything after the first '='
  auto empty = run_cli({"run", skill_path("caller"), "--input", "e", "--service", "e="});
  EXPECT_EQ(empty.rc, 0) << describe(empty);
  EXPECT_EQ(empty.out, "");
}

TEST(Cli, UnknownServiceIsNotFoundAndNamed) {
  auto r = run_cli({"run", skill_path("caller"), "--input", "kv.put|x", "--service", "kv.get=VALUE"});
  EXPECT_EQ(r.rc, 11) << describe(r);
  EXPECT_THAT(r.err, HasSubstr("no host service 'kv.put'")) << describe(r);
  EXPECT_THAT(r.err, HasSubstr("kv.get")) << describe(r);
  auto none = run_cli({"run", skill_path("caller"), "--input", "kv.get|x"});
  EXPECT_EQ(none.rc, 11) << describe(none);
}

TEST(Cli, ServicesFile) {
  TempDir dir;
  auto f = dir.file("svc.json", R"({"kv.get": "from file", "cfg": {"a": 1},
                                    "down": {"error": "Unavailable", "message": "kv is down"},
                                    "over": "file"})");
  auto r = run_cli({"run", skill_path("caller"), "--input", "kv.get|", "--services", f});
  EXPECT_EQ(r.rc, 0) << describe(r);
  EXPECT_EQ(r.out, "from file");
  auto cfg = run_cli({"run", skill_path("caller"), "--input", "cfg", "--services", f});
  EXPECT_EQ(cfg.out, R"({"a":1})") << describe(cfg);
  auto down = run_cli({"run", skill_path("caller"), "--input", "down", "--services", f, "--json"});
  EXPECT_EQ(down.rc, 19) << describe(down);
  EXPECT_THAT(parse_json(down)["message"].get<std::string>(), HasSubstr("kv is down"));
  auto over = run_cli({"run", skill_path("caller"), "--input", "over", "--services", f, "--service", "over=flag"});
  EXPECT_EQ(over.out, "flag") << describe(over);  // --service wins over the file

  auto bad = run_cli({"run", skill_path("caller"), "--services", dir.file("bad.json", "[1, 2]")});
  EXPECT_EQ(bad.rc, 2) << describe(bad);
  EXPECT_THAT(bad.err, HasSubstr("not a JSON object")) << describe(bad);
  auto bad_code = run_cli({"run", skill_path("caller"), "--services", dir.file("c.json", R"({"a": {"error": "Nope"}})")});
  EXPECT_EQ(bad_code.rc, 2) << describe(bad_code);
}

// ---- --loop --------------------------------------------------------------------------

TEST(Cli, LoopPrintsTiming) {
  auto r = run_cli({"run", skill_path("echo"), "--input", "x", "--loop", "20"});
  EXPECT_EQ(r.rc, 0) << describe(r);
  EXPECT_EQ(r.out, "x");
  EXPECT_TRUE(std::regex_search(r.err, std::regex(R"(20 calls of run: median [0-9.]+ ms, p99 [0-9.]+ ms)")))
      << describe(r);
  auto j = run_cli({"run", skill_path("echo"), "--input", "x", "--loop", "20", "--json"});
  auto js = parse_json(j);
  EXPECT_EQ(js["loop"]["calls"], 20);
  EXPECT_LE(js["loop"]["median_ms"].get<double>(), js["loop"]["p99_ms"].get<double>());
  EXPECT_LE(js["loop"]["min_ms"].get<double>(), js["loop"]["median_ms"].get<double>());
}

TEST(Cli, LoopStopsAtTheFirstFailure) {
  auto r = run_cli({"run", skill_path("fail"), "--input", "x", "--loop", "5", "--json"});
  EXPECT_EQ(r.rc, 20) << describe(r);
  auto j = parse_json(r);
  EXPECT_EQ(j["loop"]["calls"], 1);
  EXPECT_THAT(j["message"].get<std::string>(), HasSubstr("call 1 of 5"));
}

// ---- inspect -------------------------------------------------------------------------

TEST(Cli, InspectDescribesASkill) {
  auto r = run_cli({"inspect", skill_path("caller")});
  EXPECT_EQ(r.rc, 0) << describe(r);
  for (const char* want : {"ABI version:  1", "loads:        yes", "asyncify:     yes", "memory:       2 pages initial",
                           "skill functions: run", "function run (i32, i32) -> i32",
                           "function airlock_abi_version () -> i32", "function airlock.call (i32, i32, i32, i32) -> i32",
                           "function wasi_snapshot_preview1.fd_seek (i32, i64, i32, i32) -> i32"}) {
    EXPECT_THAT(r.out, HasSubstr(want)) << describe(r);
  }
  EXPECT_THAT(r.out, Not(HasSubstr("not provided"))) << describe(r);
}

TEST(Cli, InspectJson) {
  auto r = run_cli({"inspect", skill_path("wordfreq"), "--json", "--max-memory-mb", "8"});
  EXPECT_EQ(r.rc, 0) << describe(r);
  auto j = parse_json(r);
  EXPECT_EQ(j["abi_version"], 1);
  EXPECT_EQ(j["loads"], true);
  EXPECT_EQ(j["asyncify"], true);
  EXPECT_EQ(j["skill_functions"], nlohmann::json::array({"run"}));
  EXPECT_EQ(j["memory"]["runtime_max_pages"], 128);
  bool found = false;
  for (auto& i : j["imports"]) {
    EXPECT_EQ(i["provided"], true) << i.dump();
    if (i["name"] == "fd_write") {
      found = true;
      EXPECT_EQ(i["module"], "wasi_snapshot_preview1");
      EXPECT_EQ(i["type"], "(i32, i32, i32, i32) -> i32");
    }
  }
  EXPECT_TRUE(found) << r.out;
}

TEST(Cli, InspectNamesWhatDoesNotLoad) {
  auto r = run_cli({"inspect", test_wasm_path("missing_import")});
  EXPECT_EQ(r.rc, 3) << describe(r);
  EXPECT_THAT(r.out, HasSubstr("airlock.no_such_function (i32, i32) -> ()  [not provided by this runtime]"))
      << describe(r);
  EXPECT_THAT(r.out, HasSubstr("loads:        no: InvalidArgument: skill 'missing_import'")) << describe(r);
  auto plain = run_cli({"inspect", test_wasm_path("minimal")});
  EXPECT_EQ(plain.rc, 0) << describe(plain);
  EXPECT_THAT(plain.out, HasSubstr("asyncify:     no")) << describe(plain);
  TempDir dir;
  auto junk = run_cli({"inspect", dir.file("junk.wasm", "not wasm at all")});
  EXPECT_EQ(junk.rc, 3) << describe(junk);
  EXPECT_THAT(junk.err, HasSubstr("bad magic")) << describe(junk);
}

// ---- compile (the compile cache's producer) --------------------------------------------

TEST(Cli, CompileWritesTopTierCodeForAModuleAndRefusesGarbage) {
  const std::string wasm = slurp(std::string(AIRLOCK_SKILL_DIR) + "/greet.wasm");
  auto r = run_cli({"compile", "--max-memory-mb", "16"}, wasm);
  ASSERT_EQ(r.rc, 0) << describe(r);
  ASSERT_GT(r.out.size(), wasm.size()) << "TurboFan code of every function";
  uint64_t len = 0;
  std::memcpy(&len, r.out.data(), 8);
  EXPECT_EQ(len, r.out.size() - 8) << "a length, then that much code";
  auto bad = run_cli({"compile"}, "not wasm at all");
  EXPECT_EQ(bad.rc, 3) << describe(bad);
  EXPECT_THAT(bad.err, HasSubstr("not a WebAssembly module"));
  EXPECT_TRUE(bad.out.empty());
  auto not_skill = run_cli({"compile"}, std::string("\0asm\x01\0\0\0", 8));
  EXPECT_EQ(not_skill.rc, 3) << describe(not_skill);
  EXPECT_THAT(not_skill.err, HasSubstr("not an Airlock skill"));
}
