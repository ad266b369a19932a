// limits_bench: how quickly a skill past its time limit is stopped, whatever it is
// doing (a wasm loop, a loop through a host import, a start function, a parked wait),
// and what the checks cost ordinary calls, in one process (the skill runtime alone:
// the host adds nothing to when the extension stops a call).
//
//   limits_bench [--quick] [--limit-ms 200] [-n 20] [--json FILE] [--check]
//
// Target: every case stopped within limit + 100 ms at p99 (--check exits 1 otherwise).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <uv.h>

#include <cstdio>
#include <optional>

#include "bench_util.h"
#include "runtime/skill_runtime.h"

using namespace airlock;
using namespace airlock::bench;

namespace {

struct Case {
  std::string name, what, file, input;
  bool load_only = false;  // the limit applies to the load (a start function)
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"limits_bench: time from a skill's deadline to its stop, and the cost of the checks"};
  app.set_version_flag("--version", "limits_bench (Airlock) " AIRLOCK_BENCH_VERSION);
  uint32_t limit_ms = 200;
  int iters = 20;
  bool quick = false, check = false;
  std::string json_path;
  app.add_option("--limit-ms", limit_ms, "The time limit of every case")->capture_default_str()->check(CLI::Range(10, 10000));
  app.add_option("-n,--iterations", iters, "Runs per case")->capture_default_str()->check(CLI::Range(1, 1000));
  app.add_flag("--quick", quick, "5 runs per case");
  app.add_flag("--check", check, "Exit 1 if a case is stopped later than limit + 100 ms at p99");
  app.add_option("--json", json_path, "Also write the results as JSON to this file");
  CLI11_PARSE(app, argc, argv);
  if (quick) iters = 5;

  const std::string skills = AIRLOCK_BENCH_SKILL_DIR, hostile = AIRLOCK_BENCH_HOSTILE_DIR, wat = AIRLOCK_BENCH_WASM_DIR;
  const std::vector<Case> cases = {
      {"spin", "a loop in wasm", skills + "/spin.wasm", ""},
      {"log_loop", "a loop through a host import (1 MiB log lines)", hostile + "/log_loop.wasm", ""},
      {"start_loop", "a start function that loops (the load)", wat + "/start_loop.wasm", "", true},
      {"parked", "a call parked in a 10 s wait", skills + "/sleeper.wasm", "10000"},
  };

  uv_loop_t loop;
  uv_loop_init(&loop);
  nlohmann::json results = nlohmann::json::array();
  Table table{{"case", "what", "limit ms", "stopped after: median ms", "p99 ms", "over limit p99 ms", "target"},
              {},
              {false, false, true, true, true, true, false}};
  bool all_met = true;
  {
    runtime::SkillRuntime rt(&loop);
    rt.set_log_sink([](int, std::string_view, std::string_view) {});  // the lines cost the import, not a disk
    runtime::SkillLimits lim;
    lim.timeout_ms = limit_ms;
    for (const auto& c : cases) {
      std::fprintf(stderr, "limits_bench: %s (%d runs)\n", c.name.c_str(), iters);
      std::string file = read_file(c.file);
      std::vector<uint8_t> bytes(file.begin(), file.end());
      if (bytes.empty()) {
        std::fprintf(stderr, "limits_bench: cannot read %s\n", c.file.c_str());
        return 2;
      }
      if (!c.load_only && !rt.load(c.name, bytes, lim).ok()) {
        std::fprintf(stderr, "limits_bench: cannot load %s\n", c.name.c_str());
        return 2;
      }
      std::vector<double> ms;
      bool stopped_every_time = true;
      for (int i = 0; i < iters; ++i) {
        auto t0 = Clock::now();
        if (c.load_only) {
          auto st = rt.load(c.name, bytes, lim);
          stopped_every_time &= !st.ok() && st.error().code == Code::Timeout;
        } else {
          std::optional<Result<std::string>> r;
          rt.call(c.name, c.input, {}, [&](Result<std::string> x) { r.emplace(std::move(x)); });
          while (!r) uv_run(&loop, UV_RUN_ONCE);
          stopped_every_time &= !r->ok() && r->error().code == Code::Timeout;
        }
        ms.push_back(us_since(t0) / 1000);
      }
      auto s = summarize(ms);
      const double over = s.p99 - limit_ms;
      const bool met = stopped_every_time && over <= 100;
      all_met &= met;
      table.rows.push_back({c.name, c.what, strf("%u", limit_ms), strf("%.1f", s.median), strf("%.1f", s.p99),
                            strf("%.1f", over), met ? "met (<= 100)" : (stopped_every_time ? "NOT MET" : "NOT STOPPED")});
      results.push_back({{"case", c.name},
                         {"limit_ms", limit_ms},
                         {"stopped_ms_median", s.median},
                         {"stopped_ms_p99", s.p99},
                         {"over_limit_ms_p99", over},
                         {"stopped_every_time", stopped_every_time},
                         {"target_met", met}});
    }

    // What the checks cost ordinary calls: an 8-byte echo and a compute-bound sum over
    // 8 MiB (each import entry reads one flag; the watchdog arms per call as before).
    Table cost{{"call", "median us", "p99 us"}, {}, {false, true, true}};
    for (auto [name, input] : {std::pair<std::string, std::string>{"echo", "12345678"},
                               std::pair<std::string, std::string>{"sum", std::string(8u << 20, '\x03')}}) {
      runtime::SkillLimits l;
      std::string f = read_file(skills + "/" + name + ".wasm");
      if (!rt.load(name + "_cost", std::vector<uint8_t>(f.begin(), f.end()), l).ok()) continue;
      std::vector<double> us;
      const int n = name == "echo" ? 2000 : 30;
      for (int i = 0; i < n + 5; ++i) {
        std::optional<bool> ok;
        auto t0 = Clock::now();
        rt.call(name + "_cost", input, {}, [&](Result<std::string> r) { ok = r.ok(); });
        while (!ok) uv_run(&loop, UV_RUN_ONCE);
        if (i >= 5) us.push_back(us_since(t0));
      }
      auto s = summarize(us);
      cost.rows.push_back({name == "echo" ? "echo, 8 bytes" : "sum, 8 MiB", strf("%.1f", s.median), strf("%.1f", s.p99)});
      results.push_back({{"case", "cost_" + name}, {"call_us_median", s.median}, {"call_us_p99", s.p99}});
    }
    table.print();
    std::printf("\n");
    cost.print();
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  if (!json_path.empty()) write_results(json_path, results);
  std::printf("\n%s\n", all_met ? "all targets met" : "some targets NOT MET");
  return check && !all_met ? 1 : 0;
}
