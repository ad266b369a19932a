// wait_bench: N concurrent calls that each wait (greet with a wait), on one extension:
// total time, per-call latency, and host + extension memory while they are all waiting.
// The scenario of issue 3 (1,000 x 100 ms) and of Pharia Kernel's published test.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <future>
#include <mutex>
#include <thread>

#include "airlock/host.h"
#include "bench_util.h"

using namespace airlock;
using namespace airlock::bench;

namespace {
// kB of VmRSS / Pss from /proc/PID/status and smaps_rollup.
double field_mb(const std::string& path, const std::string& key) {
  std::ifstream f(path);
  for (std::string line; std::getline(f, line);) {
    if (line.rfind(key, 0) == 0) return std::stod(line.substr(key.size())) / 1024.0;
  }
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"wait_bench: many concurrent waiting calls on one extension"};
  int n = 1000, wait_ms = 100, kb = 0;
  std::vector<std::string> transports = {"msgpack", "grpc"};
  std::string json_path;
  app.add_option("-n,--calls", n, "Concurrent calls")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--wait-ms", wait_ms, "How long each call waits inside the skill")->capture_default_str()
      ->check(CLI::Range(0, 600'000).description("0 to 600000"));
  app.add_option("--kb", kb, "Kilobytes each call allocates (greet)")->capture_default_str()
      ->check(CLI::Range(0, 1 << 20).description("0 to 1048576"));
  app.add_option("--transport", transports, "msgpack, grpc or both")->capture_default_str()
      ->check(CLI::IsMember({"msgpack", "grpc"}));
  app.add_option("--json", json_path, "Also write the results as JSON to this file");
  CLI11_PARSE(app, argc, argv);

  nlohmann::json rows = nlohmann::json::array();
  int failed_calls = 0;
  std::printf("%-8s %6s %8s | %9s %9s %9s | %9s %9s %9s | %9s %9s %9s %5s\n", "transport", "calls", "wait ms",
              "total ms", "median ms", "p99 ms", "host RSS", "ext RSS", "ext PSS", "ext RSS0", "ext after",
              "after 1s", "ok");
  for (const auto& t : transports) {
    HostOptions ho;
    ho.transport = t == "grpc" ? Transport::Grpc : Transport::Msgpack;
    ho.log_level = "warn";
    Host host(ho);
    ExtensionOptions eo;
    eo.name = "waits";
    auto ext = host.spawn(eo);
    if (!ext.ok() || !ext->load_skill("greet", std::string(AIRLOCK_BENCH_SKILL_DIR) + "/greet.wasm").ok()) {
      std::fprintf(stderr, "[%s] setup failed\n", t.c_str());
      return 1;
    }
    std::fprintf(stderr, "[%s] %d calls waiting %d ms each...\n", t.c_str(), n, wait_ms);
    std::string input = "W," + std::to_string(kb) + "," + std::to_string(wait_ms);
    const std::string ep0 = "/proc/" + std::to_string(ext->pid());
    (void)ext->call("greet", "W,0,0");  // the first instance exists before the baseline
    const double ext_rss0 = field_mb(ep0 + "/status", "VmRSS:");
    std::vector<double> lat(static_cast<size_t>(n));
    std::atomic<int> ok{0}, left{n};
    std::mutex err_mu;
    std::string first_error;
    std::promise<void> all;
    auto t0 = Clock::now();
    for (int i = 0; i < n; ++i) {
      ext->call_async("greet", input, {}, [&, i, start = Clock::now()](CallResult r) {
        lat[static_cast<size_t>(i)] = us_since(start) / 1000;
        if (r.ok()) {
          ok++;
        } else if (std::lock_guard lk(err_mu); first_error.empty()) {
          first_error = r.error().to_string();
        }
        if (--left == 0) all.set_value();
      });
    }
    // Sample memory while the calls wait (half-way through the wait).
    std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms / 2));
    double host_rss = field_mb("/proc/self/status", "VmRSS:");
    std::string ep = "/proc/" + std::to_string(ext->pid());
    double ext_rss = field_mb(ep + "/status", "VmRSS:"), ext_pss = field_mb(ep + "/smaps_rollup", "Pss:");
    all.get_future().wait();
    double total = us_since(t0) / 1000;
    // Does the memory of finished calls go back? Right after, and after a second idle.
    const double ext_after = field_mb(ep + "/status", "VmRSS:");
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const double ext_idle = field_mb(ep + "/status", "VmRSS:");
    auto s = summarize(lat);
    std::printf("%-8s %6d %8d | %9.1f %9.1f %9.1f | %8.1fM %8.1fM %8.1fM | %8.1fM %8.1fM %8.1fM %5d\n", t.c_str(), n,
                wait_ms, total, s.median, s.p99, host_rss, ext_rss, ext_pss, ext_rss0, ext_after, ext_idle, ok.load());
    rows.push_back({{"transport", t}, {"calls", n}, {"wait_ms", wait_ms}, {"kb", kb}, {"total_ms", total},
                    {"median_ms", s.median}, {"p99_ms", s.p99}, {"host_rss_mb", host_rss},
                    {"ext_rss_mb", ext_rss}, {"ext_pss_mb", ext_pss}, {"ext_rss_before_mb", ext_rss0},
                    {"ext_rss_after_mb", ext_after}, {"ext_rss_after_idle_mb", ext_idle}, {"ok", ok.load()}});
    failed_calls += n - ok.load();
    if (!first_error.empty()) std::fprintf(stderr, "[%s] first error: %s\n", t.c_str(), first_error.c_str());
  }
  if (!json_path.empty()) write_results(json_path, rows);
  if (failed_calls > 0) {
    std::fprintf(stderr, "wait_bench: %d call(s) failed\n", failed_calls);
    return 1;
  }
  return 0;
}
