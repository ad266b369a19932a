// Runtime-private state of skills and calls, shared by skill_runtime.cc and the
// import implementations (abi_imports.cc, wasi.cc). Not part of any public API.
#pragma once

#include <chrono>
#include <cstring>
#include <optional>

#include "airlock/loop_timer.h"
#include "runtime/skill_runtime.h"
#include "runtime/wasm_info.h"

namespace airlock::runtime {

using Clock = std::chrono::steady_clock;

// What a host function finds through Instance::user_data.
struct Binding {
  SkillRuntime* rt = nullptr;
  SkillRuntime::Skill* skill = nullptr;
  SkillRuntime::Call* call = nullptr;  // null while _initialize runs
};

struct PooledInstance {
  std::unique_ptr<engine::Instance> inst;
  std::unique_ptr<Binding> binding;
  // Linear memory right after _initialize (FreshState::Reset). One per skill, shared by
  // its instances: instances of one module are alike after _initialize, and a private
  // copy each cost 1,000 concurrent calls ~190 MB of page-faulting copies.
  std::shared_ptr<const std::vector<uint8_t>> snapshot;
};

struct SkillRuntime::Skill {
  std::string name;
  SkillLimits limits;
  uint32_t max_pages = 0;
  std::shared_ptr<engine::Module> module;
  WasmInfo info;
  bool asyncified = false;
  bool has_initialize = false;
  std::vector<PooledInstance> pool;
  std::shared_ptr<const std::vector<uint8_t>> snapshot;  // taken from the first instance
  std::string stdout_line, stderr_line;  // partial lines written by _initialize
};

using Timer = LoopTimer;

struct SkillRuntime::Call {
  enum class State : uint8_t { Running, Unwinding, Suspended, Rewinding };
  uint64_t id = 0;
  uint64_t parent_id = 0;
  std::shared_ptr<Skill> skill;
  std::string func;
  std::string input;
  InputView input_view;  // used instead of `input` when set
  CallDone done;
  Clock::time_point deadline;
  uint32_t timeout_ms = 0;
  PooledInstance inst;
  int32_t in_ptr = 0;
  int32_t in_len = 0;
  State state = State::Running;
  int32_t resume_value = 0;      // what the suspending import returns after rewind
  std::string output;
  std::optional<std::string> error_msg;
  std::string reply;             // last airlock.call reply (or its error message)
  uint64_t wait_token = 0;       // identifies the pending wait/service reply
  bool sync_reply = false;       // the service replied before the import returned
  Timer* wait_timer = nullptr;
  Timer* deadline_timer = nullptr;
  std::string stdout_line, stderr_line;  // partial lines of fd_write
};

// Bounds-checked view of guest memory; a bad (ptr, len) traps the call.
inline std::span<uint8_t> guest_span(engine::Instance& inst, int32_t ptr, int32_t len) {
  auto mem = inst.memory();
  uint64_t p = static_cast<uint32_t>(ptr), n = static_cast<uint32_t>(len);
  if (p + n > mem.size()) {
    throw engine::HostTrap{make_error(Code::InvalidArgument,
                                      "skill passed an out-of-bounds buffer (ptr " + std::to_string(p) +
                                          ", len " + std::to_string(n) + ", memory " +
                                          std::to_string(mem.size()) + " bytes)")}; 
  }
  return mem.subspan(p, n);
}

inline std::string_view guest_string(engine::Instance& inst, int32_t ptr, int32_t len) {
  auto s = guest_span(inst, ptr, len);
  return {reinterpret_cast<const char*>(s.data()), s.size()};
}

Binding& binding_of(engine::Caller& caller);

// The host functions skills may import (abi_imports.cc: module "airlock"; wasi.cc:
// module "wasi_snapshot_preview1"). Stateless: they find their call via binding_of().
std::vector<engine::HostFunction> abi_imports();
std::vector<engine::HostFunction> wasi_imports();
// Appends text to a per-call (or per-skill during _initialize) line buffer and logs whole lines.
void write_output_lines(Binding& b, int fd, std::string_view text);

}  // namespace airlock::runtime
