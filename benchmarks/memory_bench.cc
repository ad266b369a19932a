// memory_bench: what extensions cost in RAM. For each count N: spawn N extensions (each
// loads `greet` and calls it once), read every process's RSS, PSS and USS from
// /proc/PID/smaps_rollup, tear down and check that no process is left. Then: one large
// buffer given to every extension, shared (memfd) vs copied (inline in the call).
// This program does not link V8: its own memory is the host's baseline.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <signal.h>

#include <cerrno>
#include <cmath>
#include <filesystem>
#include <set>
#include <thread>

#include "airlock/host.h"
#include "bench_util.h"

using namespace airlock;
using namespace airlock::bench;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Config {
  std::string transport = "msgpack", skills_dir = AIRLOCK_BENCH_SKILL_DIR, extension_binary;
  bool zygote = true;
  uint32_t large_mb = 256;
};

HostOptions host_options(const Config& cfg) {
  HostOptions ho;
  ho.transport = cfg.transport == "grpc" ? Transport::Grpc : Transport::Msgpack;
  ho.extension_binary = cfg.extension_binary;
  ho.log_level = "warn";
  ho.use_zygote = cfg.zygote;
  return ho;
}

// Every child process of this one (the extensions are forked from the zygote with
// CLONE_PARENT, so they are our children, like the zygote itself).
std::set<int> children() {
  std::set<int> pids;
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task", ec)) {
    std::ifstream f(task.path() / "children");
    for (int pid; f >> pid;) pids.insert(pid);
  }
  return pids;
}

bool gone(int pid) { return kill(pid, 0) != 0 && errno == ESRCH; }  // a zombie is not gone

// The extensions of one measurement, spawned with `skill` loaded into each.
struct Fleet {
  std::unique_ptr<Host> host;
  std::vector<Extension> exts;
  std::string error;
  double spawn_ms = 0;

  Fleet(const Config& cfg, HostOptions ho, int n, const std::string& skill, std::optional<SkillLimits> limits = {}) {
    host = std::make_unique<Host>(std::move(ho));
    auto t0 = Clock::now();
    for (int i = 0; i < n && error.empty(); ++i) {
      ExtensionOptions eo;
      eo.name = "mem-" + std::to_string(i);
      auto e = host->spawn(eo);
      if (!e.ok()) {
        error = "spawning extension " + std::to_string(i + 1) + " of " + std::to_string(n) + ": " + e.error().to_string();
      } else if (auto st = e->load_skill(skill, cfg.skills_dir + "/" + skill + ".wasm", limits); !st.ok()) {
        error = "loading " + skill + ": " + st.error().to_string();
      } else {
        exts.push_back(*e);
      }
      if ((i + 1) % 10 == 0 && i + 1 < n) std::fprintf(stderr, "  %d of %d extensions started\n", i + 1, n);
    }
    spawn_ms = us_since(t0) / 1000;
  }
  std::vector<int> pids() const {
    std::vector<int> v;
    for (const auto& e : exts) v.push_back(e.pid());
    return v;
  }
  int zygote_pid() const {  // the child that is not an extension
    auto all = children();
    for (int p : pids()) all.erase(p);
    return all.size() == 1 ? *all.begin() : 0;
  }
  // Destroys the host (it stops and reaps every process) and counts what is left of
  // the extensions and the zygote.
  size_t teardown() {
    auto watched = pids();
    if (int z = zygote_pid()) watched.push_back(z);
    exts.clear();
    host.reset();
    size_t left = 0;
    for (int p : watched) left += gone(p) ? 0 : 1;
    return left + children().size();
  }
};

// ---- extension scaling -------------------------------------------------------------------

struct CountRow {
  int n = 0;
  std::string status = "ok", error;
  ProcMem total, zygote, host;
  double spawn_ms = 0;
  size_t left = 0;
};

CountRow measure_count(const Config& cfg, int n) {
  CountRow row;
  row.n = n;
  Fleet f(cfg, host_options(cfg), n, "greet");
  for (size_t i = 0; f.error.empty() && i < f.exts.size(); ++i) {
    auto r = f.exts[i].call("greet", "Ada");
    if (!r.ok() || *r != "Hello, Ada!") f.error = "greet in extension " + std::to_string(i) + ": " + (r.ok() ? "wrong answer '" + *r + "'" : r.error().to_string());
  }
  row.spawn_ms = f.spawn_ms;
  if (f.error.empty()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // let background compilation settle
    for (int pid : f.pids()) {
      ProcMem m = proc_mem(pid);
      if (!m.ok) f.error = "cannot read /proc/" + std::to_string(pid) + "/smaps_rollup";
      row.total.rss += m.rss, row.total.pss += m.pss, row.total.uss += m.uss;
    }
    if (int z = f.zygote_pid()) row.zygote = proc_mem(z);
    row.host = proc_mem(0);
  }
  if (!f.error.empty()) row.status = "failed", row.error = f.error;
  row.left = f.teardown();
  if (row.left && row.status == "ok") row.status = "failed", row.error = std::to_string(row.left) + " process(es) left after teardown";
  return row;
}

// ---- large buffer distribution ----------------------------------------------------------

struct LargeRow {
  LargeRow(std::string m, int count) : mode(std::move(m)), n(count) {}
  std::string mode;
  int n = 0;
  std::string status = "ok", error;
  double total_mb = kNaN, after_mb = kNaN, host_peak_mb = kNaN, seconds = kNaN;
};

// Peak RSS (VmHWM) of a process in MiB; clear_peak() restarts it at the current RSS.
double peak_rss(int pid) {
  std::ifstream f("/proc/" + (pid > 0 ? std::to_string(pid) : std::string("self")) + "/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::atof(line.c_str() + 6) / 1024;
  return kNaN;
}
bool clear_peak(int pid) {
  std::ofstream f("/proc/" + (pid > 0 ? std::to_string(pid) : std::string("self")) + "/clear_refs");
  f << "5";
  f.flush();
  return static_cast<bool>(f);
}

// Copied: each extension receives the whole buffer in its call to `sum` (checked
// against the sum computed here). One extension at a time, so the host holds one copy
// in flight; each extension's cost is its peak RSS during the call over its RSS before
// (the received frame, the input string and the copy in the skill's linear memory are
// all private pages: RSS = USS for them); "after" is USS growth still resident after
// the call returned (buffers kept for reuse, linear memory not yet collected).
LargeRow measure_copied(const Config& cfg, int n, const std::string& buffer, uint64_t expect) {
  LargeRow row("copied", n);
  HostOptions ho = host_options(cfg);
  ho.max_frame_bytes = static_cast<uint32_t>(buffer.size() + (1u << 20));
  SkillLimits lim{static_cast<uint32_t>(buffer.size() >> 20) + 64, 120'000};
  Fleet f(cfg, ho, n, "sum", lim);
  auto t0 = Clock::now();
  double total = 0, after = 0, host_peak = 0;
  clear_peak(0);
  double host_before = proc_mem(0).rss;
  for (size_t i = 0; f.error.empty() && i < f.exts.size(); ++i) {
    int pid = f.exts[i].pid();
    (void)f.exts[i].call("sum", "warm");
    ProcMem before = proc_mem(pid);
    if (!clear_peak(pid)) f.error = "cannot reset the peak RSS of pid " + std::to_string(pid) + " (/proc/PID/clear_refs)";
    auto r = f.exts[i].call("sum", buffer, {.func = "run", .timeout = std::chrono::milliseconds(120'000)});
    if (!r.ok()) {
      f.error = "sum in extension " + std::to_string(i) + ": " + r.error().to_string();
      break;
    }
    uint64_t got = 0;
    for (int b = 7; b >= 0 && r->size() == 8; --b) got = got << 8 | static_cast<unsigned char>((*r)[b]);
    if (r->size() != 8 || got != expect) {
      f.error = "sum in extension " + std::to_string(i) + " returned a wrong answer";
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    total += peak_rss(pid) - before.rss;
    after += proc_mem(pid).uss - before.uss;
    std::fprintf(stderr, "  copied: extension %zu of %d done\n", i + 1, n);
  }
  host_peak = peak_rss(0) - host_before;
  row.seconds = us_since(t0) / 1e6;
  if (f.error.empty()) {
    row.total_mb = total, row.after_mb = after, row.host_peak_mb = host_peak;
  } else {
    row.status = "failed", row.error = f.error;
  }
  if (size_t left = f.teardown(); left && row.status == "ok") row.status = "failed", row.error = std::to_string(left) + " process(es) left";
  return row;
}

// Shared: the host writes the buffer once into a sealed memfd and every extension maps
// it. Not possible yet: a SharedBuffer comes from one extension's pool
// (Extension::allocate) and a call to another extension refuses it.
LargeRow measure_shared(const Config&, int n, const std::string&, uint64_t) {
  LargeRow row("shared", n);
  row.status = "skipped";
  row.error = "not measured: a SharedBuffer belongs to one extension (Extension::allocate); one buffer for all is not in the API";
  return row;
}

double mem_available_mb() {
  std::ifstream f("/proc/meminfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("MemAvailable:", 0) == 0) return std::atof(line.c_str() + 13) / 1024;
  return 0;
}

std::string mb(double v) { return std::isnan(v) ? "-" : strf("%.1f", v); }
nlohmann::json num(double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"memory_bench: RAM per extension (RSS, PSS, USS from /proc/PID/smaps_rollup) for N extensions, and one\n"
               "large buffer given to every extension, shared vs copied. Table on stdout, progress on stderr."};
  Config cfg;
  std::vector<int> counts = {1, 5, 10, 20, 50};
  int max_ext = 100;
  bool small_only = false, large_only = false, no_zygote = false;
  std::string json_path;
  app.add_option("--counts", counts, "Extension counts to measure, e.g. 1,5,10")->delimiter(',')->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--max-extensions", max_ext, "Skip counts above this")->capture_default_str()->check(CLI::PositiveNumber);
  auto* so = app.add_flag("--small-only", small_only, "Only the extension-scaling measurement");
  app.add_flag("--large-only", large_only, "Only the large-buffer distribution")->excludes(so);
  app.add_option("--large-mb", cfg.large_mb, "Size of the large buffer in MiB")->capture_default_str()->check(CLI::Range(1, 3000));
  app.add_option("--transport", cfg.transport, "Transport")->capture_default_str()->check(CLI::IsMember({"msgpack", "grpc"}));
  app.add_option("--json", json_path, "Also write the results as JSON to this file");
  app.add_flag("--no-zygote", no_zygote, "Start extensions with exec instead of forking them from a zygote");
  app.add_option("--skills-dir", cfg.skills_dir, "Folder with the sample skills (.wasm)")->capture_default_str();
  app.add_option("--extension", cfg.extension_binary, "airlock-extension binary (default: the host library's choice)");
  CLI11_PARSE(app, argc, argv);
  cfg.zygote = !no_zygote;
  spdlog::set_default_logger(spdlog::stderr_color_mt("airlock"));
  spdlog::set_level(spdlog::level::warn);

  const ProcMem base = proc_mem(0);  // before any Host exists
  std::vector<CountRow> rows;
  std::vector<std::pair<int, std::string>> skipped;  // count, reason
  if (!large_only) {
    for (int n : counts) {
      if (n > max_ext) {
        skipped.emplace_back(n, "above --max-extensions " + std::to_string(max_ext));
        continue;
      }
      std::fprintf(stderr, "[scaling] %d extension(s) ...\n", n);
      rows.push_back(measure_count(cfg, n));
      const auto& r = rows.back();
      if (r.status == "ok") {
        std::fprintf(stderr, "[scaling] %d extension(s): PSS %.1f MB per extension, %zu left after teardown\n", n, r.total.pss / n, r.left);
      } else {
        std::fprintf(stderr, "[scaling] %d extension(s): failed: %s\n", n, r.error.c_str());
      }
    }
  }

  std::vector<LargeRow> large;
  if (!small_only) {
    std::fprintf(stderr, "[large] preparing a %u MiB buffer ...\n", cfg.large_mb);
    std::string buffer(size_t{cfg.large_mb} << 20, '\0');
    uint64_t x = 0x9E3779B97F4A7C15ull, expect = 0;
    for (size_t i = 0; i + 8 <= buffer.size(); i += 8) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      std::memcpy(buffer.data() + i, &x, 8);
    }
    for (unsigned char c : buffer) expect += c;
    for (int n : counts) {
      if (n > max_ext) continue;
      large.push_back(measure_shared(cfg, n, buffer, expect));
      // Copied needs, per extension, about 3 copies at its peak and ~1-2 resident after.
      double need = 3.0 * n * cfg.large_mb, avail = mem_available_mb();
      if (need > 0.7 * avail) {
        LargeRow r("copied", n);
        r.status = "skipped";
        r.error = strf("would need about %.1f GB (3 copies per extension), %.1f GB available", need / 1024, avail / 1024);
        large.push_back(r);
        continue;
      }
      std::fprintf(stderr, "[large] copied to %d extension(s) ...\n", n);
      large.push_back(measure_copied(cfg, n, buffer, expect));
      const auto& r = large.back();
      std::fprintf(stderr, "[large] copied to %d extension(s): %s (%.1f s)\n", n,
                   r.status == "ok" ? strf("%.1f MB in total", r.total_mb).c_str() : r.error.c_str(), r.seconds);
    }
  }

  // ---- report ----
  Machine m = machine();
  std::string bar(100, '=');
  std::printf("%s\nAIRLOCK MEMORY BENCHMARK SUMMARY  (transport %s%s; MB = MiB)\n%s\n", bar.c_str(), cfg.transport.c_str(),
              cfg.zygote ? ", extensions forked from a zygote" : ", no zygote", bar.c_str());
  std::printf("Machine: %s, %u cores, %.1f GB RAM, %s, commit %s, %s build\n\n", m.cpu.c_str(), m.cores, m.memory_gb,
              m.kernel.c_str(), m.commit.c_str(), m.build_type.c_str());
  std::printf("Baseline Memory Usage (this host process, before any extension):\n  RSS %.1f MB, PSS %.1f MB, USS %.1f MB\n\n",
              base.rss, base.pss, base.uss);
  size_t n_ok = 0, n_failed = 0, n_skipped = skipped.size();
  if (!large_only) {
    std::printf("Extension scaling (each extension: greet loaded and called once):\n");
    Table t{{"Extensions", "RSS total", "PSS total", "USS total", "RSS/Ext", "PSS/Ext", "USS/Ext", "Zygote PSS", "Host RSS",
             "Spawn all (ms)", "Left after teardown"},
            {},
            std::vector<bool>(11, true)};
    for (const auto& r : rows) {
      if (r.status != "ok") {
        ++n_failed;
        t.rows.push_back({std::to_string(r.n), "failed: " + r.error});
        continue;
      }
      ++n_ok;
      double n = r.n;
      t.rows.push_back({std::to_string(r.n), mb(r.total.rss), mb(r.total.pss), mb(r.total.uss), mb(r.total.rss / n),
                        mb(r.total.pss / n), mb(r.total.uss / n), cfg.zygote ? mb(r.zygote.pss) : "-", mb(r.host.rss),
                        strf("%.0f", r.spawn_ms), std::to_string(r.left)});
    }
    t.print();
    std::printf("PSS: shared pages (libnode/V8 text, the zygote's pre-loaded heap) divided among their users; "
                "USS: pages only that extension holds.\n\n");
  }
  if (!small_only) {
    std::printf("%u MB BUFFER DISTRIBUTION (one buffer given to every extension):\n", cfg.large_mb);
    Table t{{"Mode", "Extensions", "Buffer (MB)", "Total RAM (MB)", "RAM/Ext (MB)", "Resident after (MB)", "Host peak (MB)", "Status"},
            {},
            {false, true, true, true, true, true, true, false}};
    for (const auto& r : large) {
      if (r.status == "ok") ++n_ok;
      else if (r.status == "failed") ++n_failed;
      else ++n_skipped;
      t.rows.push_back({r.mode, std::to_string(r.n), strf("%u", cfg.large_mb), mb(r.total_mb), mb(r.total_mb / r.n),
                        mb(r.after_mb), mb(r.host_peak_mb), r.status == "ok" ? "ok" : r.status + ": " + r.error});
    }
    t.print();
    std::printf("Copied: Total RAM = sum over extensions of (peak RSS during the call - RSS before it): the frame\n"
                "received, the call's input and its copy in the skill's linear memory. Resident after = USS growth\n"
                "still held once the call returned (buffers kept for reuse, linear memory awaiting V8's GC).\n");
    std::printf("\nMemory Sharing Analysis:\n");
    bool any = false;
    for (const auto& s : large) {
      if (s.mode != "shared") continue;
      for (const auto& c : large) {
        if (c.mode != "copied" || c.n != s.n) continue;
        any = true;
        if (s.status == "ok" && c.status == "ok") {
          std::printf("  %d extension(s): memory saved by sharing: %.1f MB (%.1f%%)\n", s.n, c.total_mb - s.total_mb,
                      100 * (c.total_mb - s.total_mb) / c.total_mb);
        } else {
          std::printf("  %d extension(s): memory saved by sharing: n/a (shared: %s; copied: %s)\n", s.n,
                      s.status == "ok" ? "ok" : s.error.c_str(), c.status == "ok" ? mb(c.total_mb).append(" MB").c_str() : c.error.c_str());
        }
      }
    }
    if (!any) std::printf("  n/a\n");
  }
  for (const auto& [n, why] : skipped) std::printf("Skipped: %d extensions: %s\n", n, why.c_str());

  std::printf("\nTargets (this run):\n");
  for (const auto& r : rows) {
    if (r.n != 10) continue;
    if (r.status != "ok") std::printf("  PSS per extension at 10 extensions: failed: %s\n", r.error.c_str());
    else std::printf("  PSS per extension at 10 extensions: %.1f MB (target ≤ 20 MB) %s\n", r.total.pss / 10, r.total.pss / 10 <= 20 ? "met" : "NOT MET");
  }
  for (const auto& r : large) {
    if (r.mode == "shared") {
      std::printf("  shared %u MB buffer, %d extension(s), total ≤ 1.1× its size: %s\n", cfg.large_mb, r.n,
                  r.status != "ok" ? (r.status + ": " + r.error).c_str()
                                   : strf("%.2f× %s", r.total_mb / cfg.large_mb, r.total_mb <= 1.1 * cfg.large_mb ? "met" : "NOT MET").c_str());
    } else if (r.status == "ok") {
      std::printf("  copied %u MB buffer, %d extension(s), expected ≈ N× = %d×: %.2f× its size at the peaks (%.2f× per extension)\n",
                  cfg.large_mb, r.n, r.n, r.total_mb / cfg.large_mb, r.total_mb / cfg.large_mb / r.n);
    }
  }
  std::printf("\nSummary: %zu successful, %zu failed, %zu skipped (Total: %zu)\n", n_ok, n_failed, n_skipped, n_ok + n_failed + n_skipped);

  if (!json_path.empty()) {
    nlohmann::json jc = nlohmann::json::array(), jl = nlohmann::json::array();
    for (const auto& r : rows) {
      bool ok = r.status == "ok";
      double n = r.n;
      jc.push_back({{"extensions", r.n},
                    {"status", r.status},
                    {"error", r.error.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.error)},
                    {"rss_mb_total", ok ? num(r.total.rss) : nullptr},
                    {"pss_mb_total", ok ? num(r.total.pss) : nullptr},
                    {"uss_mb_total", ok ? num(r.total.uss) : nullptr},
                    {"rss_mb_per_ext", ok ? num(r.total.rss / n) : nullptr},
                    {"pss_mb_per_ext", ok ? num(r.total.pss / n) : nullptr},
                    {"uss_mb_per_ext", ok ? num(r.total.uss / n) : nullptr},
                    {"zygote_rss_mb", ok && cfg.zygote ? num(r.zygote.rss) : nullptr},
                    {"zygote_pss_mb", ok && cfg.zygote ? num(r.zygote.pss) : nullptr},
                    {"host_rss_mb", ok ? num(r.host.rss) : nullptr},
                    {"spawn_ms_total", r.spawn_ms},
                    {"processes_left", r.left}});
    }
    for (const auto& [n, why] : skipped) jc.push_back({{"extensions", n}, {"status", "skipped"}, {"error", why}});
    for (const auto& r : large) {
      jl.push_back({{"mode", r.mode},
                    {"extensions", r.n},
                    {"buffer_mb", cfg.large_mb},
                    {"total_mb", num(r.total_mb)},
                    {"per_ext_mb", num(r.total_mb / r.n)},
                    {"resident_after_mb_total", num(r.after_mb)},
                    {"host_peak_mb", num(r.host_peak_mb)},
                    {"status", r.status},
                    {"error", r.error.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.error)}});
    }
    nlohmann::json doc = {{"machine", to_json(m)},
                          {"config", {{"transport", cfg.transport}, {"use_zygote", cfg.zygote}, {"counts", counts},
                                      {"max_extensions", max_ext}, {"large_mb", cfg.large_mb}, {"skill", "greet"}}},
                          {"baseline", {{"host_rss_mb", base.rss}, {"host_pss_mb", base.pss}, {"host_uss_mb", base.uss}}},
                          {"counts", jc},
                          {"large", jl}};
    std::ofstream f(json_path);
    f << doc.dump(2) << "\n";
    if (!f) {
      std::fprintf(stderr, "error: cannot write %s\n", json_path.c_str());
      return 1;
    }
  }
  return n_failed ? 1 : 0;
}
