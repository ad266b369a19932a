// The capability manifest (airlock/manifest.h): strict parsing, and what it declares
// holds in a running host (services narrowed per extension), and `airlockctl explain`.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "airlock/host.h"
#include "airlock/manifest.h"

using namespace airlock;
using ::testing::HasSubstr;

namespace {

TEST(Manifest, EveryFieldLandsInTheOptions) {
  auto o = parse_manifest(R"({
    "name": "summarizer", "services": ["kv.get"], "may_call": ["tok/run"], "readable": ["/srv/models"],
    "env": {"MODEL": "small"}, "network": "none",
    "limits": {"memory_mb": 32, "timeout_ms": 250, "total_memory_mb": 300, "start_timeout_ms": 4000},
    "restart": {"mode": "on-failure", "max_restarts": 2, "initial_backoff_ms": 20, "max_backoff_ms": 400}})");
  ASSERT_TRUE(o.ok()) << o.error().to_string();
  EXPECT_EQ(o->name, "summarizer");
  ASSERT_TRUE(o->services.has_value());
  EXPECT_THAT(*o->services, ::testing::ElementsAre("kv.get"));
  EXPECT_THAT(o->may_call, ::testing::ElementsAre("tok/run"));
  EXPECT_THAT(o->readable, ::testing::ElementsAre("/srv/models"));
  EXPECT_THAT(o->env, ::testing::ElementsAre("MODEL=small"));
  ASSERT_TRUE(o->limits.has_value());
  EXPECT_EQ(o->limits->max_memory_mb, 32u);
  EXPECT_EQ(o->limits->timeout_ms, 250u);
  EXPECT_EQ(o->max_memory_mb, 300u);
  EXPECT_EQ(o->start_timeout.count(), 4000);
  EXPECT_EQ(o->restart.mode, RestartPolicy::Mode::OnFailure);
  EXPECT_EQ(o->restart.max_restarts, 2u);
  EXPECT_EQ(o->restart.initial_backoff.count(), 20);
  EXPECT_EQ(o->restart.max_backoff.count(), 400);
}

TEST(Manifest, NothingIsAllowedByDefault) {
  auto o = parse_manifest(R"({"name": "bare"})");
  ASSERT_TRUE(o.ok()) << o.error().to_string();
  EXPECT_TRUE(o->may_call.empty());
  EXPECT_TRUE(o->readable.empty());
  EXPECT_TRUE(o->env.empty());
  EXPECT_FALSE(o->limits.has_value());
}

TEST(Manifest, MistakesAreErrorsNamingTheField) {
  const std::array<std::pair<const char*, const char*>, 9> bad = {{
      {R"({"name": "x", "readble": []})", "'readble' is not a manifest field"},
      {R"({"name": "x", "limits": {"memory": 1}})", "'limits.memory' is not a manifest field"},
      {R"({"name": "x", "limits": {"memory_mb": 0}})", "'limits.memory_mb' is 0, must be from 1 to 4096"},
      {R"({"name": "x", "limits": {"timeout_ms": -5}})", "'limits.timeout_ms' must be a whole number"},
      {R"({"name": "x", "network": "host"})", "'network' can only be \"none\""},
      {R"({"name": "x", "readable": ["relative/path"]})", "not an absolute path"},
      {R"({"services": []})", "'name' is required"},
      {R"({"name": "x", "restart": {"mode": "always"}})", "'restart.mode' must be"},
      {R"([1, 2])", "must be a JSON object"},
  }};
  for (const auto& [text, why] : bad) {
    auto o = parse_manifest(text, "m.json");
    ASSERT_FALSE(o.ok()) << text;
    EXPECT_EQ(o.error().code, Code::InvalidArgument) << text;
    EXPECT_THAT(o.error().message, HasSubstr(why)) << text;
    EXPECT_THAT(o.error().message, HasSubstr("m.json")) << text;
  }
  EXPECT_THAT(parse_manifest("{nope").error().message, HasSubstr("not valid JSON"));
  EXPECT_EQ(load_manifest("/nonexistent/m.json").error().code, Code::NotFound);
}

// The declared services hold at run time: a skill may call what its manifest names, and
// nothing else, even where the service itself admits every extension.
TEST(Manifest, ServicesItDoesNotDeclareAreRefused) {
  HostOptions ho;
  ho.extension_binary = AIRLOCK_EXTENSION_BIN;
  Host h(ho);
  h.register_service("kv.get", [](ServiceRequest req) { req.reply(CallResult(std::string("value of ") + std::string(req.input()))); });
  h.register_service("kv.put", [](ServiceRequest req) { req.reply(CallResult(std::string("stored"))); });
  auto o = parse_manifest(R"({"name": "narrow", "services": ["kv.get"]})");
  ASSERT_TRUE(o.ok()) << o.error().to_string();
  auto ext = h.spawn(*o);
  ASSERT_TRUE(ext.ok()) << ext.error().to_string();
  ASSERT_TRUE(ext->load_skill("caller", std::string(AIRLOCK_SKILL_DIR) + "/caller.wasm").ok());
  EXPECT_EQ(*ext->call("caller", "kv.get|k"), "value of k");
  auto r = ext->call("caller", "kv.put|k");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.error().message, HasSubstr("may not call host service 'kv.put' (ExtensionOptions::services)"));
}

TEST(Airlockctl, ExplainSaysWhatEachLayerAllows) {
  const std::string path = ::testing::TempDir() + "/explain.json";
  std::ofstream(path) << R"({"name": "summarizer", "services": ["kv.get"], "readable": ["/srv/models"],
                             "limits": {"memory_mb": 64, "timeout_ms": 500}})";
  FILE* p = popen((std::string(AIRLOCKCTL_BIN) + " explain " + path).c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  EXPECT_EQ(pclose(p), 0) << out;
  EXPECT_THAT(out, HasSubstr("extension 'summarizer'"));
  EXPECT_THAT(out, HasSubstr("up to 64 MiB of linear memory per instance"));
  EXPECT_THAT(out, HasSubstr("up to 500 ms per call"));
  EXPECT_THAT(out, HasSubstr("call host services: kv.get"));
  EXPECT_THAT(out, HasSubstr("call skills of other extensions: none"));
  EXPECT_THAT(out, HasSubstr("can read /srv/models (read-only)"));
  EXPECT_THAT(out, HasSubstr("network  none"));
  EXPECT_THAT(out, HasSubstr("execve"));
}

}  // namespace

namespace {

std::string run_ctl(const std::string& args, int* status) {
  FILE* p = popen((std::string(AIRLOCKCTL_BIN) + " " + args + " 2>&1").c_str(), "r");
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  *status = pclose(p);
  return out;
}

TEST(Airlockctl, RunLogsEveryCommandAndCompareSetsTwoRunsSideBySide) {
  const std::string dir = ::testing::TempDir() + "/ctl-" + std::to_string(getpid());
  const std::string script = dir + "/mini.cmds";
  std::filesystem::create_directories(dir);
  std::ofstream(script) << "# a comment\n2 add_c\nexecute_skill sample_c1 Ada 100 5\np_execute_all Bob 0 0 3\n"
                           "drop_cached_skill\ncached_skills\nexecute_all Cy 0 0\ndelete_skill\nskills\nstop\n";
  int st = 0;
  std::string out = run_ctl("run " + script + " --log " + dir + "/a", &st);
  ASSERT_EQ(st, 0) << out;
  EXPECT_THAT(out, HasSubstr("took(ms)"));
  EXPECT_THAT(out, HasSubstr("rss diff(KB)"));
  EXPECT_THAT(out, HasSubstr("2 add_c"));
  EXPECT_THAT(out, HasSubstr("Total time (ms):"));
  EXPECT_THAT(out, HasSubstr("Maximum rss memory (KB):"));
  EXPECT_THAT(out, HasSubstr("cached_skills: 1"));  // one of two was dropped
  EXPECT_THAT(out, HasSubstr("skills: 1"));         // ... and one deleted
  // p_execute_all: 3 calls of each of the 2 skills, all answered.
  EXPECT_THAT(out, HasSubstr("cpu(ms)"));
  EXPECT_THAT(out, ::testing::ContainsRegex("p_execute_all Bob 0 0 3 +[0-9,]+ +[0-9,]+ +-?[0-9,]+ +-?[0-9,]+ +6 +0"));
  ASSERT_EQ(run_ctl("run " + script + " --log " + dir + "/b", &st).empty(), false);
  ASSERT_EQ(st, 0);
  out = run_ctl("compare " + dir + "/a/mini.log " + dir + "/b/mini.log", &st);
  ASSERT_EQ(st, 0) << out;
  EXPECT_THAT(out, HasSubstr("vs a(%)"));
  EXPECT_THAT(out, ::testing::ContainsRegex("execute_skill sample_c1 Ada 100 5 +a +[0-9,]+"));
  EXPECT_THAT(out, HasSubstr("Total time (ms)"));
  std::filesystem::remove_all(dir);
}

TEST(Airlockctl, AScriptMistakeNamesTheLineBeforeAnythingRuns) {
  const std::string script = ::testing::TempDir() + "/bad-" + std::to_string(getpid()) + ".cmds";
  std::ofstream(script) << "add_c\nexecute_skill sample_c1 Ada 100\n";
  int st = 0;
  std::string out = run_ctl("run " + script, &st);
  EXPECT_NE(st, 0);
  EXPECT_THAT(out, HasSubstr(":2: 'execute_skill' takes 4 argument(s), got 3"));
  std::ofstream(script) << "add_c\nfrobnicate\n";
  out = run_ctl("run " + script, &st);
  EXPECT_NE(st, 0);
  EXPECT_THAT(out, HasSubstr(":2: unknown command 'frobnicate'"));
}

}  // namespace
