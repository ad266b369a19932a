// airlock-extension: the extension process. `run` tries a skill without a host and
// `inspect` describes one (docs/CLI.md); `serve` (started by the host library) serves
// calls over an inherited socket; `zygote` forks new extensions for the host.
#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <iostream>
#include <string_view>

#include "cli/commands.h"
#include "cli/exit_codes.h"
#include "cli/zygote.h"
#include "engine/engine.h"
#include "serve/server.h"

#ifndef AIRLOCK_VERSION
#define AIRLOCK_VERSION "unknown"
#endif

using namespace airlock;

namespace airlock::cli {

std::string exit_code_table() {
  std::string t =
      "Exit codes:\n"
      "   0  ok\n"
      "   1  internal error of airlock-extension itself\n"
      "   2  usage: bad or missing arguments, unknown subcommand, unreadable --input-file\n"
      "      or --services\n"
      "   3  the skill could not be loaded (not wasm, not a skill, an import not provided, ...)\n";
  for (uint8_t c = 1; c <= kMaxCode; ++c) {
    char line[80];
    std::snprintf(line, sizeof line, "  %2d  the call failed: %s\n", exit_code_for(static_cast<Code>(c)),
                  std::string(to_string(static_cast<Code>(c))).c_str());
    t += line;
  }
  return t;
}

}  // namespace airlock::cli

namespace {

constexpr const char* kSubcommands[] = {"run", "inspect", "serve", "zygote", "compile"};
const std::vector<std::string> kLogLevels = {"trace", "debug", "info",     "warn", "warning",
                                             "error", "err",   "critical", "off"};

// The first argument that is not an option (or the value of --log-level) is the
// subcommand; one that does not exist is named, rather than CLI11's generic complaint.
bool check_subcommand(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--log-level") {
      ++i;
      continue;
    }
    if (a.starts_with("-")) continue;
    for (const char* s : kSubcommands) {
      if (a == s) return true;
    }
    std::cerr << "error: unknown subcommand '" << a << "' (expected run, inspect, serve, compile or zygote; see --help)\n";
    return false;
  }
  return true;
}

}  // namespace

int run_cli(int argc, char** argv) {
  CLI::App app{"airlock-extension: runs WebAssembly skills for an Airlock host"};
  app.require_subcommand(1);
  app.set_version_flag("--version",
                       std::string("airlock-extension ") + AIRLOCK_VERSION + " (skill ABI 1, " +
                           engine::engine_version() + ")",
                       "Print the version of airlock-extension and of its WebAssembly engine");
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "Log level (spdlog names): trace, debug, info, warn, error, critical, off")
      ->capture_default_str()
      ->check(CLI::IsMember(kLogLevels))
      ->type_name("LEVEL");
  const std::string exit_codes = cli::exit_code_table();

  cli::RunArgs ra;
  auto* run = app.add_subcommand(
      "run", "Call one skill function without a host (host services stubbed) and print its output");
  run->fallthrough();  // global options (--log-level) after the subcommand too
  run->add_option("skill", ra.skill_path, "Path to the skill's .wasm file")->required()->check(CLI::ExistingFile);
  auto* func_pos = run->add_option("function", ra.func_positional, "Skill function to call (default: run)");
  run->add_option("--func", ra.func, "Skill function to call (same as the positional FUNCTION)")
      ->capture_default_str()
      ->excludes(func_pos);
  auto* in = run->add_option_function<std::string>(
                    "--input",
                    [&ra](const std::string& v) {
                      ra.input = v;
                      ra.input_set = true;
                    },
                    "Input bytes, as a string ('-': read stdin)")
                 ->type_name("TEXT");
  auto* in_file = run->add_option("--input-file", ra.input_file, "Read the input from this file ('-': stdin)")
                      ->excludes(in);
  run->add_flag("--stdin", ra.read_stdin, "Read the input from stdin")->excludes(in)->excludes(in_file);
  run->add_option("--timeout-ms", ra.timeout_ms, "Wall-clock limit for each call, waits included (1..86400000)")
      ->capture_default_str()
      ->check(CLI::Range(uint32_t{1}, uint32_t{86'400'000}));
  run->add_option("--max-memory-mb", ra.max_memory_mb, "Maximum linear memory of the skill (1..4096)")
      ->capture_default_str()
      ->check(CLI::Range(uint32_t{1}, uint32_t{4096}));
  run->add_option("--fresh", ra.fresh, "Fresh state per call: reset, reinstantiate or reuse")
      ->capture_default_str()
      ->check(CLI::IsMember({"reset", "reinstantiate", "reuse"}));
  run->add_flag("--json", ra.json, "Print one JSON object {ok, code, message, trap, output, ms} instead of the output");
  run->add_option("--loop", ra.loop, "Call N times in a row and print timing (median, p99) to stderr (1..1000000)")
      ->capture_default_str()
      ->check(CLI::Range(uint32_t{1}, uint32_t{1'000'000}))
      ->type_name("N");
  run->add_option("--service", ra.services, "Stub a host service: NAME=REPLY (repeatable)")->type_name("NAME=REPLY");
  run->add_option("--services", ra.services_file,
                  "Stub host services from a JSON object: name -> reply (a string; {\"error\": \"Code\", "
                  "\"message\": ...} to fail)")
      ->check(CLI::ExistingFile)
      ->type_name("FILE");
  run->footer(exit_codes);

  cli::InspectArgs ia;
  auto* insp = app.add_subcommand(
      "inspect", "Describe a skill: ABI version, exports, imports (with types), memory limits, asyncify");
  insp->fallthrough();
  insp->add_option("skill", ia.skill_path, "Path to the skill's .wasm file")->required()->check(CLI::ExistingFile);
  insp->add_flag("--json", ia.json, "Print one JSON object");
  insp->add_option("--max-memory-mb", ia.max_memory_mb, "Memory limit to load it with (1..4096)")
      ->capture_default_str()
      ->check(CLI::Range(uint32_t{1}, uint32_t{4096}));
  insp->footer(exit_codes);

  serve::ServeOptions so;
  std::string transport = "msgpack";
  auto* srv = app.add_subcommand("serve", "Serve a host over an inherited socket (started by the host library)");
  srv->fallthrough();
  srv->add_option("--fd", so.fd, "Inherited connected AF_UNIX socket")->capture_default_str();
  srv->add_option("--side-fd", so.side_fd, "Inherited SOCK_SEQPACKET side channel for shared memory (-1: none)")
      ->capture_default_str();
  srv->add_option("--name", so.name, "Extension name (tags log lines)")->capture_default_str();
  srv->add_option("--transport", transport, "msgpack or grpc")->capture_default_str()
      ->check(CLI::IsMember({"msgpack", "grpc"}));
  srv->add_option("--parent-pid", so.parent_pid, "Exit at once unless this is our parent's pid");
  srv->add_option("--max-frame-bytes", so.max_frame_bytes, "Largest frame accepted or sent")->capture_default_str();
  srv->add_option("--max-memory-mb", so.default_max_memory_mb, "Default memory limit of skills")->capture_default_str();
  srv->add_option("--timeout-ms", so.default_timeout_ms, "Default time limit per call")->capture_default_str();
  srv->add_option("--max-total-memory-mb", so.max_total_memory_mb,
                  "Linear memory of all skill instances together")->capture_default_str();
  srv->add_option("--spin-us", so.spin_us, "After a frame, poll this long before sleeping (0: sleep at once)")
      ->capture_default_str()->check(CLI::Range(0, 10'000));
  srv->add_option("--ring-bytes", so.ring_bytes,
                  "Frames travel in the shared-memory ring pair (this many bytes each way) that the host offers "
                  "first on --side-fd; 0: on the socket")
      ->capture_default_str();
  std::string sandbox_mode = "on", sandbox_user;
  srv->add_option("--sandbox", sandbox_mode, "on: namespaces, an empty root, no capabilities, seccomp; off: none")
      ->capture_default_str()->check(CLI::IsMember({"on", "off"}));
  srv->add_option("--sandbox-user", sandbox_user, "UID:GID to run as when started as root");
  srv->add_option("--readable", so.sandbox.readable, "A path the extension may read (repeatable)");
  std::string lazy = "off", tier_up = "on", cacheable = "off";
  srv->add_option("--lazy-compilation", lazy, "on: compile each function at its first call")
      ->capture_default_str()->check(CLI::IsMember({"on", "off"}));
  srv->add_option("--tier-up", tier_up, "off: Liftoff code only, no background TurboFan")
      ->capture_default_str()->check(CLI::IsMember({"on", "off"}));
  srv->add_option("--guard-regions", so.guard_regions,
                  "on: MMU bounds checks (~10 GiB of address space per instance); off: explicit checks; "
                  "auto: on unless RLIMIT_AS cannot hold them")
      ->capture_default_str()->check(CLI::IsMember({"auto", "on", "off"}));
  srv->add_option("--shm-output-min-bytes", so.shm_output_min_bytes,
                  "Outputs at least this large return in shared memory")->capture_default_str();

  srv->add_option("--cacheable-code", cacheable, "on: code V8 can serialize for the host's compile cache (eager tier-up)")
      ->capture_default_str()->check(CLI::IsMember({"on", "off"}));

  cli::CompileArgs ca;
  std::string ca_lazy = "off", ca_sandbox = "on";
  auto* cmp = app.add_subcommand("compile",
                                 "Compile the module on stdin to the top tier and write its code, serialized, on stdout "
                                 "(a compile-cache entry; started by the host library)");
  cmp->fallthrough();
  cmp->add_option("--max-memory-mb", ca.max_memory_mb, "Memory limit the skill will be loaded with")->capture_default_str();
  cmp->add_option("--lazy-compilation", ca_lazy, "As the serving extensions")->capture_default_str()
      ->check(CLI::IsMember({"on", "off"}));
  cmp->add_option("--guard-regions", ca.guard_regions, "As the serving extensions")->capture_default_str()
      ->check(CLI::IsMember({"auto", "on", "off"}));
  cmp->add_option("--sandbox", ca_sandbox, "on or off, as the serving extensions")->capture_default_str()
      ->check(CLI::IsMember({"on", "off"}));
  std::string ca_user;
  cmp->add_option("--sandbox-user", ca_user, "UID:GID to run as when started as root");

  int zygote_fd = 3;
  auto* zyg = app.add_subcommand("zygote", "Fork new extensions on request (started by the host library)");
  zyg->fallthrough();
  zyg->add_option("--fd", zygote_fd, "Inherited SOCK_SEQPACKET socket to the host")->capture_default_str();

  app.footer(exit_codes);

  if (!check_subcommand(argc, argv)) return cli::kExitUsage;
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help, --version
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);  // prints the message
    return cli::kExitUsage;
  }
  // Not registered by name: a zygote's child runs this again in the same address space.
  spdlog::set_default_logger(std::make_shared<spdlog::logger>(
      "airlock-extension", std::make_shared<spdlog::sinks::stderr_color_sink_st>()));
  spdlog::set_level(spdlog::level::from_str(log_level));
  if (run->parsed()) return cli::run_command(ra);
  if (insp->parsed()) return cli::inspect_command(ia);
  if (srv->parsed()) {
    so.encoding = *proto::parse_encoding(transport);
    so.sandbox.enabled = sandbox_mode == "on";
    so.lazy_compilation = lazy == "on";
    so.tier_up = tier_up == "on";
    so.cacheable_code = cacheable == "on";
    so.sandbox.last_words_fd = so.side_fd;
    if (!sandbox_user.empty()) {
      unsigned uid = 0, gid = 0;
      if (std::sscanf(sandbox_user.c_str(), "%u:%u", &uid, &gid) != 2) {
        std::cerr << "error: --sandbox-user wants UID:GID, got '" << sandbox_user << "'\n";
        return cli::kExitUsage;
      }
      so.sandbox.uid = uid;
      so.sandbox.gid = gid;
    }
    return serve::serve(so);
  }
  if (cmp->parsed()) {
    ca.lazy_compilation = ca_lazy == "on";
    ca.sandbox = ca_sandbox == "on";
    if (!ca_user.empty()) {
      unsigned uid = 0, gid = 0;
      if (std::sscanf(ca_user.c_str(), "%u:%u", &uid, &gid) != 2) {
        std::cerr << "error: --sandbox-user wants UID:GID, got '" << ca_user << "'\n";
        return cli::kExitUsage;
      }
      ca.uid = static_cast<int>(uid);
      ca.gid = static_cast<int>(gid);
    }
    return cli::compile_command(ca);
  }
  if (zyg->parsed()) {
    return cli::run_zygote(zygote_fd, [](std::vector<std::string>& args) {
      std::vector<char*> av;
      for (auto& a : args) av.push_back(a.data());
      av.push_back(nullptr);
      return run_cli(static_cast<int>(args.size()), av.data());
    });
  }
  return cli::kExitUsage;
}

int main(int argc, char** argv) {
  try {
    return run_cli(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "error: internal: " << e.what() << "\n";
    return cli::kExitInternal;
  }
}
