// spawn_bench: spawn -> ready of an extension, forked from the zygote vs exec'ed, and the
// first call after it (V8 warms up in the new process).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>

#include "airlock/host.h"
#include "bench_util.h"

using namespace airlock;
using namespace airlock::bench;

int main(int argc, char** argv) {
  CLI::App app{"spawn_bench: extension start-up with and without the zygote"};
  int n = 20;
  std::string json_path;
  app.add_option("-n,--spawns", n, "Extensions started per mode")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--json", json_path, "Also write the results as JSON to this file");
  CLI11_PARSE(app, argc, argv);

  nlohmann::json rows = nlohmann::json::array();
  std::printf("%-8s %5s | %10s %10s %10s %10s | %12s\n", "mode", "n", "median ms", "p99 ms", "min ms", "max ms",
              "1st call ms");
  for (bool zygote : {true, false}) {
    const char* mode = zygote ? "zygote" : "exec";
    std::fprintf(stderr, "[%s] %d spawns...\n", mode, n);
    HostOptions ho;
    ho.use_zygote = zygote;
    ho.log_level = "warn";
    Host host(ho);
    if (zygote) {  // start the zygote itself outside the measurement
      ExtensionOptions warm;
      warm.name = "warm";
      auto w = host.spawn(warm);
      if (w.ok()) w->stop(0ms);
    }
    std::vector<double> spawn_ms, first_ms;
    for (int i = 0; i < n; ++i) {
      ExtensionOptions eo;
      eo.name = std::string(mode) + std::to_string(i);
      auto t0 = Clock::now();
      auto ext = host.spawn(eo);
      if (!ext.ok()) {
        std::fprintf(stderr, "spawn failed: %s\n", ext.error().to_string().c_str());
        return 1;
      }
      spawn_ms.push_back(us_since(t0) / 1000);
      if (!ext->load_skill("echo", std::string(AIRLOCK_BENCH_SKILL_DIR) + "/echo.wasm").ok()) return 1;
      t0 = Clock::now();
      if (!ext->call("echo", "x").ok()) return 1;
      first_ms.push_back(us_since(t0) / 1000);
      ext->stop(0ms);
    }
    auto s = summarize(spawn_ms), f = summarize(first_ms);
    std::printf("%-8s %5d | %10.2f %10.2f %10.2f %10.2f | %12.2f\n", mode, n, s.median, s.p99, s.min, s.max, f.median);
    rows.push_back({{"mode", mode}, {"spawns", n}, {"spawn_ready_ms_median", s.median}, {"spawn_ready_ms_p99", s.p99},
                    {"spawn_ready_ms_min", s.min}, {"spawn_ready_ms_max", s.max}, {"first_call_ms_median", f.median}});
  }
  if (!json_path.empty()) write_results(json_path, rows);
  return 0;
}
