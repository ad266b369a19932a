// Helpers for tests that drive a SkillRuntime on a private libuv loop.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <uv.h>

#include <fstream>
#include <iterator>
#include <optional>
#include <span>
#include <string>

#include "runtime/skill_runtime.h"

namespace airlock::testing {

inline std::string skill_path(const std::string& name) { return std::string(AIRLOCK_SKILL_DIR) + "/" + name + ".wasm"; }
inline std::string test_wasm_path(const std::string& name) {
  return std::string(AIRLOCK_TEST_WASM_DIR) + "/" + name + ".wasm";
}
inline std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << "cannot read " << path;
  return {std::istreambuf_iterator<char>(f), {}};
}

class RuntimeFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    uv_loop_init(&loop_);
    rt_ = std::make_unique<runtime::SkillRuntime>(&loop_);
  }
  void TearDown() override {
    rt_.reset();
    uv_run(&loop_, UV_RUN_DEFAULT);
    ASSERT_EQ(uv_loop_close(&loop_), 0) << "handles left open on the loop";
  }

  void load(const std::string& name, runtime::SkillLimits limits = {}) {
    auto st = rt_->load_file(name, skill_path(name), limits);
    ASSERT_TRUE(st.ok()) << st.error().to_string();
  }

  // Runs one call to completion on the loop.
  Result<std::string> call(const std::string& skill, std::string input, runtime::CallOptions opts = {}) {
    std::optional<Result<std::string>> out;
    rt_->call(skill, std::move(input), opts, [&](Result<std::string> r) { out.emplace(std::move(r)); });
    while (!out) uv_run(&loop_, UV_RUN_ONCE);
    return std::move(*out);
  }
  // The input passed as a view, not copied per call (what a shared buffer gives a call).
  Result<std::string> call_view(const std::string& skill, std::span<const uint8_t> input) {
    std::optional<Result<std::string>> out;
    rt_->call(skill, runtime::InputView{input, nullptr}, {}, [&](Result<std::string> r) { out.emplace(std::move(r)); });
    while (!out) uv_run(&loop_, UV_RUN_ONCE);
    return std::move(*out);
  }

  uv_loop_t loop_{};
  std::unique_ptr<runtime::SkillRuntime> rt_;
};

inline uint64_t le64(const std::string& s) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8 && i < s.size(); ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(s[i])) << (8 * i);
  return v;
}

inline size_t rss_kb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoul(line.substr(6));
  }
  return 0;
}

}  // namespace airlock::testing
