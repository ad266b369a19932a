// The subcommands of airlock-extension that a person runs (docs/CLI.md): `run` tries a
// skill function without a host, `inspect` describes a skill module.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace airlock::cli {

struct RunArgs {
  std::string skill_path;
  std::string func = "run";
  std::string func_positional;
  std::string input;
  bool input_set = false;
  std::string input_file;
  bool read_stdin = false;
  uint32_t timeout_ms = 10'000;
  uint32_t max_memory_mb = 64;
  std::string fresh = "reset";
  bool json = false;
  uint32_t loop = 1;
  std::vector<std::string> services;  // NAME=REPLY
  std::string services_file;          // JSON object: name -> reply
};

struct InspectArgs {
  std::string skill_path;
  bool json = false;
  uint32_t max_memory_mb = 64;
};

struct CompileArgs {
  uint32_t max_memory_mb = 64;
  bool lazy_compilation = false;
  std::string guard_regions = "auto";
  bool sandbox = true;
  int uid = -1, gid = -1;  // --sandbox-user, when started as root
};

int run_command(const RunArgs& a);
int compile_command(const CompileArgs& a);  // compile_command.cc
int inspect_command(const InspectArgs& a);

}  // namespace airlock::cli
