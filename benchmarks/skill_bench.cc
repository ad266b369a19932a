// skill_bench: what a skill costs inside one extension, no IPC: compile, load
// (parse + limit + compile + first instance), and a call under each fresh-state mode.
#include <algorithm>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <uv.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <optional>

#include "bench_util.h"
#include "engine/engine.h"
#include "runtime/skill_runtime.h"
#include "runtime/wasm_info.h"

using namespace airlock;
using namespace airlock::bench;

int main(int argc, char** argv) {
  CLI::App app{"skill_bench: compile, load and per-call cost of sample skills in one process"};
  std::string dir = AIRLOCK_BENCH_SKILL_DIR;
  int iters = 200;
  std::string json_path;
  std::vector<std::string> skills = {"echo", "sum", "greet", "counter"};
  app.add_option("--skills-dir", dir, "Folder with the sample skills")->capture_default_str();
  app.add_option("--skills", skills, "Skills to measure")->capture_default_str();
  app.add_option("-n,--iterations", iters, "Measured iterations per figure")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--json", json_path, "Also write the results as JSON to this file");
  std::vector<std::string> modes = {"reuse", "reset", "reinstantiate"};
  app.add_option("--modes", modes, "Fresh-state modes to measure")->capture_default_str()
      ->check(CLI::IsMember({"reuse", "reset", "reinstantiate"}));
  CLI11_PARSE(app, argc, argv);

  uv_loop_t loop;
  uv_loop_init(&loop);
  nlohmann::json out = nlohmann::json::array();
  std::printf("%-8s %8s | %10s %10s | %-14s %10s %10s\n", "skill", "size KB", "compile ms", "load ms", "call mode",
              "median us", "p99 us");
  {
    auto engine = engine::create_v8_engine();
    runtime::SkillRuntime rt(&loop);
    for (const auto& name : skills) {
      std::string file = read_file(dir + "/" + name + ".wasm");
      std::vector<uint8_t> bytes(file.begin(), file.end());
      if (bytes.empty()) {
        std::fprintf(stderr, "skip %s: cannot read %s/%s.wasm\n", name.c_str(), dir.c_str(), name.c_str());
        continue;
      }
      auto limited = runtime::limit_memory(bytes, 1024);
      std::vector<double> compile, load;
      for (int i = 0; i < std::clamp(iters / 10, 5, 200); ++i) {
        auto t = Clock::now();
        auto m = engine->compile(limited.value());
        compile.push_back(us_since(t) / 1000);
        t = Clock::now();
        auto st = rt.load(name + "_probe", bytes);
        load.push_back(us_since(t) / 1000);
        (void)rt.unload(name + "_probe");
      }
      auto cs = summarize(compile), ls = summarize(load);
      nlohmann::json row = {{"skill", name}, {"wasm_bytes", bytes.size()}, {"compile_ms_median", cs.median},
                            {"load_ms_median", ls.median}};
      const char* input = name == "greet" ? "Ada" : "12345678";
      for (auto [mode, label] : {std::pair{runtime::FreshState::Reuse, "reuse"},
                                 std::pair{runtime::FreshState::Reset, "reset"},
                                 std::pair{runtime::FreshState::Reinstantiate, "reinstantiate"}}) {
        if (std::find(modes.begin(), modes.end(), label) == modes.end()) continue;
        runtime::SkillLimits lim;
        lim.fresh = mode;
        std::string sk = name + "_" + label;
        if (!rt.load(sk, bytes, lim).ok()) continue;
        std::vector<double> t;
        for (int i = 0; i < iters + 5; ++i) {
          std::optional<bool> ok;
          auto t0 = Clock::now();
          rt.call(sk, input, {}, [&](Result<std::string> r) { ok = r.ok(); });
          while (!ok) uv_run(&loop, UV_RUN_ONCE);
          if (i >= 5) t.push_back(us_since(t0));
        }
        auto s = summarize(t);
        std::printf("%-8s %8.1f | %10.2f %10.2f | %-14s %10.1f %10.1f\n", name.c_str(), bytes.size() / 1024.0,
                    cs.median, ls.median, label, s.median, s.p99);
        row[std::string("call_us_median_") + label] = s.median;
        row[std::string("call_us_p99_") + label] = s.p99;
        (void)rt.unload(sk);
      }
      out.push_back(row);
    }
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  if (!json_path.empty()) write_results(json_path, out);
  return 0;
}
