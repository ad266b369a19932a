// airlock-demo: the README's first command ends here. Spawns an extension on each
// transport, loads the `greet` sample skill, calls it and prints what happened.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "airlock/host.h"

using namespace airlock;
using Clock = std::chrono::steady_clock;

static double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

int main(int argc, char** argv) {
  CLI::App app{"airlock-demo: spawn an extension on each transport, load a skill, call it"};
  std::string skill_dir = AIRLOCK_DEMO_SKILL_DIR;
  std::string input = "Ada,512,20";
  std::vector<std::string> transports = {"msgpack", "grpc"};
  app.add_option("--skills", skill_dir, "Folder with the sample skills (.wasm)")->capture_default_str();
  app.add_option("--input", input, "Input for greet: name[,kb[,ms]]")->capture_default_str();
  app.add_option("--transport", transports, "Transports to try")->capture_default_str()
      ->check(CLI::IsMember({"msgpack", "grpc"}));
  bool no_zygote = false;
  app.add_flag("--no-zygote", no_zygote, "Start extensions with exec instead of forking them from a zygote");
  CLI11_PARSE(app, argc, argv);

  const std::string wasm = skill_dir + "/greet.wasm";
  if (!std::filesystem::exists(wasm)) {
    std::fprintf(stderr, "error: %s not found (build the project first: tools/setup.sh)\n", wasm.c_str());
    return 1;
  }
  int failures = 0;
  for (const auto& t : transports) {
    HostOptions ho;
    ho.transport = t == "grpc" ? Transport::Grpc : Transport::Msgpack;
    ho.log_level = "warn";
    ho.use_zygote = !no_zygote;
    Host host(ho);
    auto t0 = Clock::now();
    ExtensionOptions eo;
    eo.name = "demo-" + t;
    auto ext = host.spawn(eo);
    if (!ext.ok()) {
      std::fprintf(stderr, "[%s] spawn failed: %s\n", t.c_str(), ext.error().to_string().c_str());
      failures++;
      continue;
    }
    double spawn_ms = ms_since(t0);
    t0 = Clock::now();
    if (auto st = ext->load_skill("greet", wasm); !st.ok()) {
      std::fprintf(stderr, "[%s] load failed: %s\n", t.c_str(), st.error().to_string().c_str());
      failures++;
      continue;
    }
    double load_ms = ms_since(t0);
    t0 = Clock::now();
    auto r = ext->call("greet", input);
    double call_ms = ms_since(t0);
    if (r.ok()) {
      std::printf("[%-7s] greet(\"%s\") -> \"%s\"   (spawn %.1f ms, load %.1f ms, call %.2f ms, pid %d)\n",
                  t.c_str(), input.c_str(), r->c_str(), spawn_ms, load_ms, call_ms, ext->pid());
    } else {
      std::printf("[%-7s] greet(\"%s\") failed: %s\n", t.c_str(), input.c_str(), r.error().to_string().c_str());
      failures++;
    }
  }
  return failures ? 1 : 0;
}
