// `airlock-extension inspect SKILL.wasm`: what a skill module declares (ABI version,
// exports, imports with their types, memory limits, asyncify) and whether this runtime
// loads it (docs/CLI.md).
#include <nlohmann/json.hpp>
#include <uv.h>

#include <fstream>
#include <iostream>
#include <iterator>

#include "cli/commands.h"
#include "cli/exit_codes.h"
#include "runtime/skill_runtime.h"
#include "runtime/wasm_info.h"

namespace airlock::cli {

namespace {

const engine::FuncType kSkillFuncType{{engine::ValType::I32, engine::ValType::I32}, {engine::ValType::I32}};

bool is_asyncified(const runtime::WasmInfo& info) {
  for (const char* e : {"asyncify_start_unwind", "asyncify_stop_unwind", "asyncify_start_rewind",
                        "asyncify_stop_rewind", "airlock_async_buffer"}) {
    if (!info.find_export(e)) return false;
  }
  return true;
}

// Exports the runtime itself uses; every other (i32, i32) -> i32 function is a skill function.
bool is_abi_export(const std::string& n) {
  return n == "memory" || n == "airlock_abi_version" || n == "airlock_alloc" || n == "_initialize" ||
         n == "airlock_async_buffer" || n.rfind("asyncify_", 0) == 0;
}

std::string kib(uint64_t pages) { return std::to_string(pages * 64) + " KiB"; }
std::string pages(uint64_t n) { return std::to_string(n) + (n == 1 ? " page" : " pages"); }

}  // namespace

int inspect_command(const InspectArgs& a) {
  std::ifstream f(a.skill_path, std::ios::binary);
  if (!f) {
    std::cerr << "error: cannot read '" << a.skill_path << "'\n";
    return kExitUsage;
  }
  std::vector<uint8_t> bytes{std::istreambuf_iterator<char>(f), {}};
  auto parsed = runtime::parse_wasm(bytes);
  if (!parsed.ok()) {
    if (a.json) {
      nlohmann::ordered_json j{{"path", a.skill_path}, {"size", bytes.size()}, {"loads", false},
                       {"load_error", "invalid wasm: " + parsed.error().message}};
      std::cout << j.dump(2) << std::endl;
    } else {
      std::cerr << "error: " << a.skill_path << ": invalid wasm: " << parsed.error().message << "\n";
    }
    return kExitLoad;
  }
  const runtime::WasmInfo& info = parsed.value();

  // Loading proves what parsing cannot: linking, the ABI version, _initialize.
  std::optional<Error> load_error;
  {
    uv_loop_t loop;
    uv_loop_init(&loop);
    {
      runtime::SkillRuntime rt(&loop);
      rt.set_log_sink([](int, std::string_view, std::string_view) {});  // _initialize's output is not ours to show
      runtime::SkillLimits limits;
      limits.max_memory_mb = a.max_memory_mb;
      std::string name = a.skill_path.substr(a.skill_path.find_last_of('/') + 1);
      if (name.size() > 5 && name.ends_with(".wasm")) name.resize(name.size() - 5);
      if (name.empty()) name = "skill";
      if (auto st = rt.load(name, bytes, limits); !st.ok()) load_error = st.error();
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
  }
  const bool asyncified = is_asyncified(info);
  const auto* abi = info.find_export("airlock_abi_version");

  nlohmann::ordered_json j;
  j["path"] = a.skill_path;
  j["size"] = bytes.size();
  // load() calls airlock_abi_version and accepts only 1.
  if (!load_error) {
    j["abi_version"] = 1;
  } else {
    j["abi_version"] = nullptr;
  }
  j["loads"] = !load_error;
  j["load_error"] = load_error ? nlohmann::ordered_json(load_error->to_string()) : nlohmann::ordered_json(nullptr);
  j["asyncify"] = asyncified;
  j["exports"] = nlohmann::ordered_json::array();
  std::vector<std::string> skill_functions;
  for (const auto& e : info.exports) {
    nlohmann::ordered_json x{{"name", e.name}, {"kind", std::string(runtime::to_string(e.kind))}};
    if (e.kind == runtime::WasmImport::Kind::Func) {
      x["type"] = e.type.to_string();
      if (!is_abi_export(e.name) && e.type == kSkillFuncType) skill_functions.push_back(e.name);
    }
    j["exports"].push_back(std::move(x));
  }
  j["skill_functions"] = skill_functions;
  j["imports"] = nlohmann::ordered_json::array();
  for (const auto& i : info.imports) {
    nlohmann::ordered_json x{{"module", i.module}, {"name", i.name}, {"kind", std::string(runtime::to_string(i.kind))}};
    if (i.kind == runtime::WasmImport::Kind::Func) {
      x["type"] = i.type.to_string();
      auto provided = runtime::provided_import_type(i.module, i.name);
      x["provided"] = provided.has_value() && *provided == i.type;
    } else {
      x["provided"] = false;
    }
    j["imports"].push_back(std::move(x));
  }
  if (info.memory) {
    const auto& m = *info.memory;
    j["memory"] = {{"imported", m.imported}, {"min_pages", m.min_pages},
                   {"max_pages", m.max_pages ? nlohmann::ordered_json(*m.max_pages) : nlohmann::ordered_json(nullptr)},
                   {"shared", m.shared}, {"memory64", m.memory64},
                   {"runtime_max_pages", a.max_memory_mb * 16u}};
  } else {
    j["memory"] = nullptr;
  }

  if (a.json) {
    std::cout << j.dump(2) << std::endl;
    return load_error ? kExitLoad : kExitOk;
  }

  std::cout << "skill:        " << a.skill_path << " (" << bytes.size() << " bytes)\n";
  std::cout << "ABI version:  ";
  if (!load_error) {
    std::cout << "1\n";
  } else if (!abi) {
    std::cout << "none (no airlock_abi_version export: not an Airlock skill)\n";
  } else {
    std::cout << "unknown (the skill does not load)\n";
  }
  std::cout << "loads:        " << (load_error ? "no: " + load_error->to_string() : std::string("yes")) << "\n";
  std::cout << "asyncify:     "
            << (asyncified ? "yes (airlock.wait and airlock.call can suspend)"
                           : "no (must not import airlock.wait or airlock.call)")
            << "\n";
  if (info.memory) {
    const auto& m = *info.memory;
    std::cout << "memory:       " << (m.imported ? "imported, " : "") << pages(m.min_pages) << " initial ("
              << kib(m.min_pages) << "), maximum "
              << (m.max_pages ? pages(*m.max_pages) + " (" + kib(*m.max_pages) + ")"
                              : std::string("none declared"))
              << "; the runtime caps it at " << pages(a.max_memory_mb * 16u) << " (" << a.max_memory_mb
              << " MiB, --max-memory-mb)" << (m.shared ? "; shared" : "") << (m.memory64 ? "; memory64" : "")
              << "\n";
  } else {
    std::cout << "memory:       none\n";
  }
  std::cout << "skill functions: ";
  if (skill_functions.empty()) std::cout << "none";
  for (size_t i = 0; i < skill_functions.size(); ++i) std::cout << (i ? ", " : "") << skill_functions[i];
  std::cout << "\nexports (" << info.exports.size() << "):\n";
  for (const auto& e : info.exports) {
    std::cout << "  " << runtime::to_string(e.kind) << " " << e.name;
    if (e.kind == runtime::WasmImport::Kind::Func) std::cout << " " << e.type.to_string();
    std::cout << "\n";
  }
  std::cout << "imports (" << info.imports.size() << "):\n";
  for (size_t n = 0; n < info.imports.size(); ++n) {
    const auto& i = info.imports[n];
    std::cout << "  " << runtime::to_string(i.kind) << " " << i.module << "." << i.name;
    if (i.kind == runtime::WasmImport::Kind::Func) std::cout << " " << i.type.to_string();
    if (!j["imports"][n]["provided"].get<bool>()) std::cout << "  [not provided by this runtime]";
    std::cout << "\n";
  }
  return load_error ? kExitLoad : kExitOk;
}

}  // namespace airlock::cli
