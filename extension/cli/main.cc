// airlock-extension: the extension process. `run` tries a skill without a host;
// `serve` (started by the host library) serves calls over an inherited socket.
#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <uv.h>

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>

#include "runtime/skill_runtime.h"
#include "cli/zygote.h"
#include "serve/server.h"

using namespace airlock;

namespace {

struct RunArgs {
  std::string skill_path;
  std::string input;
  std::string input_file;
  std::string func = "run";
  uint32_t timeout_ms = 10'000;
  uint32_t max_memory_mb = 64;
  std::string fresh = "reset";
  bool quiet = false;
};

int run_skill(const RunArgs& a) {
  std::string input = a.input;
  if (!a.input_file.empty()) {
    std::ifstream f(a.input_file, std::ios::binary);
    if (!f) {
      std::cerr << "error: cannot read input file '" << a.input_file << "'\n";
      return 2;
    }
    input.assign(std::istreambuf_iterator<char>(f), {});
  }
  runtime::SkillLimits limits;
  limits.timeout_ms = a.timeout_ms;
  limits.max_memory_mb = a.max_memory_mb;
  limits.fresh = a.fresh == "reinstantiate" ? runtime::FreshState::Reinstantiate
               : a.fresh == "reuse"         ? runtime::FreshState::Reuse
                                            : runtime::FreshState::Reset;
  uv_loop_t loop;
  uv_loop_init(&loop);
  int rc = 1;
  {
    runtime::SkillRuntime rt(&loop);
    std::string name = a.skill_path.substr(a.skill_path.find_last_of('/') + 1);
    if (name.size() > 5 && name.ends_with(".wasm")) name.resize(name.size() - 5);
    if (auto st = rt.load_file(name, a.skill_path, limits); !st.ok()) {
      std::cerr << "error: " << st.error().to_string() << "\n";
      return 1;
    }
    runtime::CallOptions opts;
    opts.func = a.func;
    rt.call(name, std::move(input), opts, [&](Result<std::string> r) {
      if (r.ok()) {
        std::fwrite(r->data(), 1, r->size(), stdout);
        if (!a.quiet && (r->empty() || r->back() != '\n') && isatty(1)) std::fputc('\n', stdout);
        std::fflush(stdout);
        rc = 0;
      } else {
        std::cerr << "error: " << r.error().to_string() << "\n";
        rc = 1;
      }
    });
    uv_run(&loop, UV_RUN_DEFAULT);
  }
  uv_run(&loop, UV_RUN_DEFAULT);  // let closed handles finish
  uv_loop_close(&loop);
  return rc;
}

}  // namespace

int run_cli(int argc, char** argv) {
  CLI::App app{"airlock-extension: runs WebAssembly skills for an Airlock host"};
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical, off")->capture_default_str();

  RunArgs ra;
  auto* run = app.add_subcommand("run", "Run one skill function once, without a host, and print its output");
  run->add_option("skill", ra.skill_path, "Path to the skill's .wasm file")->required()->check(CLI::ExistingFile);
  auto* in = run->add_option("--input", ra.input, "Input bytes, as a string");
  run->add_option("--input-file", ra.input_file, "Read the input from this file")->excludes(in);
  run->add_option("--func", ra.func, "Skill function to call")->capture_default_str();
  run->add_option("--timeout-ms", ra.timeout_ms, "Wall-clock limit for the call, waits included")
      ->capture_default_str()->check(CLI::PositiveNumber);
  run->add_option("--max-memory-mb", ra.max_memory_mb, "Maximum linear memory of the skill")
      ->capture_default_str()->check(CLI::Range(1, 4096));
  run->add_option("--fresh", ra.fresh, "Fresh state per call: reset, reinstantiate or reuse")
      ->capture_default_str()->check(CLI::IsMember({"reset", "reinstantiate", "reuse"}));

  serve::ServeOptions so;
  std::string transport = "msgpack";
  auto* srv = app.add_subcommand("serve", "Serve a host over an inherited socket (started by the host library)");
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
  std::string sandbox_mode = "on", sandbox_user;
  srv->add_option("--sandbox", sandbox_mode, "on: namespaces, an empty root, no capabilities, seccomp; off: none")
      ->capture_default_str()->check(CLI::IsMember({"on", "off"}));
  srv->add_option("--sandbox-user", sandbox_user, "UID:GID to run as when started as root");
  srv->add_option("--readable", so.sandbox.readable, "A path the extension may read (repeatable)");
  srv->add_option("--shm-output-min-bytes", so.shm_output_min_bytes,
                  "Outputs at least this large return in shared memory")->capture_default_str();

  int zygote_fd = 3;
  auto* zyg = app.add_subcommand("zygote", "Fork new extensions on request (started by the host library)");
  zyg->add_option("--fd", zygote_fd, "Inherited SOCK_SEQPACKET socket to the host")->capture_default_str();

  CLI11_PARSE(app, argc, argv);
  // Not registered by name: a zygote's child runs this again in the same address space.
  spdlog::set_default_logger(std::make_shared<spdlog::logger>(
      "airlock-extension", std::make_shared<spdlog::sinks::stderr_color_sink_st>()));
  spdlog::set_level(spdlog::level::from_str(log_level));
  if (run->parsed()) return run_skill(ra);
  if (srv->parsed()) {
    so.encoding = *proto::parse_encoding(transport);
    so.sandbox.enabled = sandbox_mode == "on";
    so.sandbox.last_words_fd = so.side_fd;
    if (!sandbox_user.empty()) {
      unsigned uid = 0, gid = 0;
      if (std::sscanf(sandbox_user.c_str(), "%u:%u", &uid, &gid) != 2) {
        std::cerr << "error: --sandbox-user wants UID:GID, got '" << sandbox_user << "'\n";
        return 2;
      }
      so.sandbox.uid = uid;
      so.sandbox.gid = gid;
    }
    return serve::serve(so);
  }
  if (zyg->parsed()) {
    return cli::run_zygote(zygote_fd, [](std::vector<std::string>& args) {
      std::vector<char*> av;
      for (auto& a : args) av.push_back(a.data());
      av.push_back(nullptr);
      return run_cli(static_cast<int>(args.size()), av.data());
    });
  }
  return 2;
}

int main(int argc, char** argv) { return run_cli(argc, argv); }
