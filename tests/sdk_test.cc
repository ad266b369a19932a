// The skill SDK beyond C: C++ skills (clang++-19 + Debian's wasm32 libc++) and the WASI
// preview 1 imports that wasi-libc's stdio and libc++'s iostreams pull in, each refused
// with a clean WASI errno where a skill has no business (files, sockets, sleeping).
#include <map>
#include <sstream>

#include "runtime_test_util.h"

using namespace airlock;
using airlock::testing::RuntimeFixture;
using ::testing::Contains;
using ::testing::HasSubstr;

namespace {

class SdkFixture : public RuntimeFixture {
 protected:
  void SetUp() override {
    RuntimeFixture::SetUp();
    rt_->set_log_sink([this](int, std::string_view skill, std::string_view line) {
      lines_.push_back(std::string(skill) + ": " + std::string(line));
    });
  }
  std::vector<std::string> lines_;
};

// "key=value" lines -> map.
std::map<std::string, std::string> parse_report(const std::string& text) {
  std::map<std::string, std::string> m;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    auto eq = line.find('=');
    if (eq != std::string::npos) m[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return m;
}

}  // namespace

TEST_F(SdkFixture, CppSkillCountsWords) {
  load("wordfreq");
  auto r = call("wordfreq", "The cat and the hat. THE END, and the cat!");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(*r, "the 4\nand 2\ncat 2\nend 1\nhat 1\n");
  EXPECT_THAT(lines_, Contains("wordfreq: wordfreq: 10 words, 5 distinct"));  // std::cout -> log
  auto empty = call("wordfreq", "");
  ASSERT_TRUE(empty.ok()) << empty.error().to_string();
  EXPECT_EQ(*empty, "");
}

TEST_F(SdkFixture, CppSkillStateIsFreshEveryCall) {
  load("wordfreq");
  for (int i = 0; i < 3; ++i) {
    auto r = call("wordfreq", "b a b");
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    EXPECT_EQ(*r, "b 2\na 1\n");
  }
}

TEST_F(SdkFixture, CppGlobalsVirtualsAndStdFunctionWork) {
  load("cxx_features");
  auto r = call("cxx_features", "1234");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(*r, "one 16 33 abab 7");  // kNames[4 % 3], 4*4, 2*16+1, COMPILE_OPTIONS
}

TEST_F(SdkFixture, CppOutOfRangeWithoutExceptionsTraps) {
  load("cxx_features");
  auto ok = call("cxx_features", "x", {.func = "at"});
  ASSERT_TRUE(ok.ok()) << ok.error().to_string();
  EXPECT_EQ(*ok, "one");
  auto r = call("cxx_features", "xyz", {.func = "at"});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Code::Trap) << r.error().to_string();
  // The instance was dropped; the next call gets a fresh one.
  auto again = call("cxx_features", "", {.func = "at"});
  ASSERT_TRUE(again.ok()) << again.error().to_string();
  EXPECT_EQ(*again, "zero");
}

TEST_F(SdkFixture, StdioSkillLoadsAndFopenFailsWithErrno) {
  load("stdio_probe");
  auto r = call("stdio_probe", "abc");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  auto m = parse_report(*r);
  // wasi-libc finds no preopened directory for the path: ENOTCAPABLE (76).
  EXPECT_EQ(m["fopen_read"], "NULL errno=76 (Capabilities insufficient)") << *r;
  EXPECT_EQ(m["fopen_write"], "NULL errno=76 (Capabilities insufficient)") << *r;
  EXPECT_EQ(m["time"], "ok clock=ok chrono=ok") << *r;
  EXPECT_EQ(m["nanosleep"], "-1 errno=58") << *r;  // ENOTSUP: poll_oneoff never blocks
  EXPECT_EQ(m["stdin"], "EOF") << *r;
  EXPECT_THAT(lines_, Contains("stdio_probe: stdio_probe: printf 3 bytes"));
  EXPECT_THAT(lines_, Contains("stdio_probe: stdio_probe: std::cout"));
  EXPECT_THAT(lines_, Contains("stdio_probe: stdio_probe: stderr"));
}

// Every WASI function wasi-libc declares, called directly: each links (right type) and
// answers with the documented errno; none traps.
TEST_F(SdkFixture, EveryWasiImportAnswersWithAnErrno) {
  load("wasi_all");
  auto r = call("wasi_all", "");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  std::map<std::string, int> got;
  std::istringstream in(*r);
  std::string name, rest;
  while (in >> name >> rest) {
    auto eq = rest.find('=');
    got[name + " " + rest.substr(0, eq)] = std::stoi(rest.substr(eq + 1));
  }
  constexpr int kBadf = 8, kInval = 28, kNotdir = 54, kNotsock = 57, kNotsup = 58, kSpipe = 70;
  const std::map<std::string, int> want = {
      {"fd_advise 1", kSpipe},          {"fd_advise 3", kBadf},
      {"fd_allocate 1", kNotsup},       {"fd_allocate 3", kBadf},
      {"fd_datasync 1", kInval},        {"fd_datasync 3", kBadf},
      {"fd_fdstat_get 1", 0},           {"fd_fdstat_get 3", kBadf},
      {"fd_fdstat_set_flags 1", kNotsup}, {"fd_fdstat_set_flags 3", kBadf},
      {"fd_fdstat_set_rights 1", kNotsup}, {"fd_fdstat_set_rights 3", kBadf},
      {"fd_filestat_get 1", 0},         {"fd_filestat_get 3", kBadf},
      {"fd_filestat_set_size 1", kInval}, {"fd_filestat_set_size 3", kBadf},
      {"fd_filestat_set_times 1", kNotsup}, {"fd_filestat_set_times 3", kBadf},
      {"fd_pread 1", kSpipe},           {"fd_pread 3", kBadf},
      {"fd_prestat_get 1", kBadf},      {"fd_prestat_get 3", kBadf},
      {"fd_prestat_dir_name 1", kBadf}, {"fd_prestat_dir_name 3", kBadf},
      {"fd_pwrite 1", kSpipe},          {"fd_pwrite 3", kBadf},
      {"fd_readdir 1", kNotdir},        {"fd_readdir 3", kBadf},
      {"fd_renumber 1", kNotsup},       {"fd_renumber 3", kBadf},
      {"fd_seek 1", kSpipe},            {"fd_seek 3", kBadf},
      {"fd_sync 1", kInval},            {"fd_sync 3", kBadf},
      {"fd_tell 1", kSpipe},            {"fd_tell 3", kBadf},
      {"path_create_directory 1", kNotdir}, {"path_create_directory 3", kBadf},
      {"path_filestat_get 1", kNotdir}, {"path_filestat_get 3", kBadf},
      {"path_filestat_set_times 1", kNotdir}, {"path_filestat_set_times 3", kBadf},
      {"path_link 1", kNotdir},         {"path_link 3", kBadf},
      {"path_open 1", kNotdir},         {"path_open 3", kBadf},
      {"path_readlink 1", kNotdir},     {"path_readlink 3", kBadf},
      {"path_remove_directory 1", kNotdir}, {"path_remove_directory 3", kBadf},
      {"path_rename 1", kNotdir},       {"path_rename 3", kBadf},
      {"path_symlink 1", kNotdir},      {"path_symlink 3", kBadf},
      {"path_unlink_file 1", kNotdir},  {"path_unlink_file 3", kBadf},
      {"sock_accept 1", kNotsock},      {"sock_accept 3", kBadf},
      {"sock_recv 1", kNotsock},        {"sock_recv 3", kBadf},
      {"sock_send 1", kNotsock},        {"sock_send 3", kBadf},
      {"sock_shutdown 1", kNotsock},    {"sock_shutdown 3", kBadf},
      {"fd_close 3", kBadf},            {"fd_close 5", kBadf},
      {"fd_read 0", 0},                 {"fd_read 3", kBadf},
      {"fd_write 3", kBadf},
      {"clock_time_get 1", 0},          {"clock_time_get 9", kInval},
      {"clock_res_get 0", 0},           {"random_get 0", 0},
      {"sched_yield 0", 0},             {"args_sizes_get 0", 0},
      {"environ_sizes_get 0", 0},
      {"poll_oneoff_sleep 0", kNotsup}, {"poll_oneoff_write 1", 0},
      {"poll_oneoff_many 0", kInval},
  };
  EXPECT_EQ(got, want) << *r;
}

TEST_F(SdkFixture, WasiPointersOutOfBoundsTrapTheCall) {
  load("wasi_all");
  auto r = call("wasi_all", "", {.func = "poll_oob"});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Code::InvalidArgument) << r.error().to_string();
  EXPECT_THAT(r.error().message, HasSubstr("out-of-bounds buffer"));
  auto again = call("wasi_all", "");  // the skill lives on, in a fresh instance
  EXPECT_TRUE(again.ok()) << again.error().to_string();
}

TEST_F(SdkFixture, RuntimeProvidesAllOfWasiPreview1) {
  // The 46 functions of wasi_snapshot_preview1 (witx), each with its type.
  const char* names[] = {
      "args_get", "args_sizes_get", "environ_get", "environ_sizes_get", "clock_res_get", "clock_time_get",
      "fd_advise", "fd_allocate", "fd_close", "fd_datasync", "fd_fdstat_get", "fd_fdstat_set_flags",
      "fd_fdstat_set_rights", "fd_filestat_get", "fd_filestat_set_size", "fd_filestat_set_times", "fd_pread",
      "fd_prestat_get", "fd_prestat_dir_name", "fd_pwrite", "fd_read", "fd_readdir", "fd_renumber", "fd_seek",
      "fd_sync", "fd_tell", "fd_write", "path_create_directory", "path_filestat_get", "path_filestat_set_times",
      "path_link", "path_open", "path_readlink", "path_remove_directory", "path_rename", "path_symlink",
      "path_unlink_file", "poll_oneoff", "proc_exit", "proc_raise", "random_get", "sched_yield", "sock_accept",
      "sock_recv", "sock_send", "sock_shutdown"};
  for (const char* n : names) {
    EXPECT_TRUE(runtime::provided_import_type("wasi_snapshot_preview1", n).has_value()) << n;
  }
  EXPECT_EQ(runtime::provided_import_type("wasi_snapshot_preview1", "proc_raise")->to_string(), "(i32) -> i32");
  EXPECT_EQ(runtime::provided_import_type("wasi_snapshot_preview1", "path_open")->to_string(),
            "(i32, i32, i32, i32, i32, i64, i64, i32, i32) -> i32");
  EXPECT_FALSE(runtime::provided_import_type("wasi_snapshot_preview1", "thread_spawn").has_value());
}
