// airlockctl: operator tools for Airlock hosts.
//   explain MANIFEST        what an extension with this capability manifest may do, per layer
//   run SCRIPT.cmds         the seeds' command scripts against a real Host, with a run log
//   compare A.log B.log     two run logs side by side
//   serve-metrics [SCRIPT]  the host's Prometheus metrics over HTTP, during a script and after
#include <CLI/CLI.hpp>

#include <signal.h>

#include <filesystem>
#include <fstream>
#include <iostream>

#include "airlock/host.h"
#include "airlock/manifest.h"
#include "explain.h"
#include "run_log.h"
#include "script_runner.h"

int main(int argc, char** argv) {
  namespace ctl = airlock::ctl;
  CLI::App app{"airlockctl: operator tools for Airlock hosts"};
  app.set_version_flag("--version", std::string("airlockctl ") + AIRLOCK_VERSION);
  app.require_subcommand(1);

  std::string manifest;
  auto* ex = app.add_subcommand("explain", "Print what an extension with this capability manifest can and cannot do");
  ex->add_option("MANIFEST", manifest, "A JSON capability manifest (airlock/manifest.h)")->required();

  ctl::RunOptions ro;
  ro.skill_wasm = AIRLOCK_SAMPLE_SKILL;
  std::string log_dir, transport = "msgpack";
  bool no_tier_up = false;
  std::string guards = "auto";
  // `run` and `serve-metrics` take the same options (one of them is parsed).
  auto run_options = [&](CLI::App* sub) {
    sub->add_option("--log", log_dir, "Write NAME.log (the seeds' format) and NAME.json into this folder");
    sub->add_option("--extensions", ro.extensions, "Extensions the skills are spread over")->capture_default_str()
        ->check(CLI::Range(1, 1024).description("1 to 1024"));
    sub->add_option("--cache-kb", ro.cache_kb, "Loaded skills' wasm bytes at most (KB); past it the least recently called are unloaded")
        ->capture_default_str()
        ->check(CLI::Range(1, 64 << 20));
    sub->add_option("--transport", transport, "msgpack or grpc")->capture_default_str()->check(CLI::IsMember({"msgpack", "grpc"}));
    sub->add_option("--skill", ro.skill_wasm, "The sample skill (input ARG,MEM_KB,WAIT_MS)")->capture_default_str();
    sub->add_flag("--lazy-compilation", ro.engine.lazy_compilation, "Extensions compile each function at its first call");
    sub->add_flag("--no-tier-up", no_tier_up, "Extensions run Liftoff code only (no background TurboFan)");
    sub->add_option("--guard-regions", guards, "auto, on or off (airlock::GuardRegions)")->capture_default_str()
        ->check(CLI::IsMember({"auto", "on", "off"}));
    sub->add_flag("--distinct", ro.distinct, "Make every added skill a distinct module (a custom section naming it), so each is compiled");
    sub->add_option("--compile-cache", ro.compile_cache_dir, "A folder for the compile cache (HostOptions::compile_cache_dir)");
    sub->add_option("--extension-binary", ro.extension_binary, "airlock-extension to run (default: the library's choice)");
  };
  auto* run = app.add_subcommand("run", "Run a command script (tools/cmds/README.md) against a real host");
  run->add_option("SCRIPT", ro.script, "The .cmds file")->required();
  run_options(run);
  run->add_option("--metrics", ro.metrics_address, "Serve the host's Prometheus metrics at HOST:PORT/metrics during the run");
  auto* serve = app.add_subcommand("serve-metrics",
                                   "Serve the host's Prometheus metrics (HOST:PORT/metrics) while running a command script, "
                                   "then until SIGINT or SIGTERM");
  serve->add_option("SCRIPT", ro.script, "The .cmds file (without one: extensions and metrics, no skills)");
  run_options(serve);
  std::string listen = "127.0.0.1:9464";
  serve->add_option("--listen", listen, "HOST:PORT to serve on (port 0: any free one)")->capture_default_str();

  std::string log_a, log_b;
  auto* cmp = app.add_subcommand("compare", "Print two run logs side by side");
  cmp->add_option("A", log_a, "The first run's .log or .json")->required();
  cmp->add_option("B", log_b, "The second run's .log or .json")->required();
  CLI11_PARSE(app, argc, argv);

  if (ex->parsed()) {
    auto o = airlock::load_manifest(manifest);
    if (!o.ok()) {
      std::cerr << "airlockctl: " << o.error().message << "\n";
      return 1;
    }
    std::cout << ctl::explain(*o, manifest);
    return 0;
  }
  if (serve->parsed()) {
    ro.metrics_address = listen;
    ro.hold = true;
    // Blocked in every thread (all start after this), so that sigwait() gets them.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
  }
  if (run->parsed() || serve->parsed()) {
    ro.transport = transport == "grpc" ? airlock::Transport::Grpc : airlock::Transport::Msgpack;
    ro.engine.tier_up = !no_tier_up;
    ro.engine.guard_regions = guards == "on"    ? airlock::GuardRegions::On
                              : guards == "off" ? airlock::GuardRegions::Off
                                                : airlock::GuardRegions::Auto;
    auto log = ctl::run_script(ro, std::cerr);
    if (!log.ok()) {
      std::cerr << "airlockctl: " << log.error().message << "\n";
      return 1;
    }
    const std::string text = ctl::format_log(*log);
    std::cout << text;
    if (!log_dir.empty()) {
      std::filesystem::create_directories(log_dir);
      const std::string base = (std::filesystem::path(log_dir) / (ro.script.empty() ? std::filesystem::path("serve-metrics") : std::filesystem::path(ro.script).stem())).string();
      std::ofstream(base + ".log") << text;
      std::ofstream(base + ".json") << ctl::to_json(*log).dump(2) << "\n";
      std::cerr << "log: " << base << ".log, " << base << ".json\n";
    }
    int failed = 0;
    for (const auto& c : log->commands) failed += c.failed;
    return failed ? 1 : 0;
  }
  auto a = ctl::read_log(log_a);
  auto b = a.ok() ? ctl::read_log(log_b) : a;
  if (!a.ok() || !b.ok()) {
    std::cerr << "airlockctl: " << (a.ok() ? b : a).error().message << "\n";
    return 1;
  }
  std::cout << ctl::compare(*a, *b);
  return 0;
}
