// Runtime-private state of skills and calls, shared by skill_runtime.cc and the
// import implementations (abi_imports.cc, wasi.cc). Not part of any public API.
#pragma once

#include <sys/mman.h>

#include <deque>

#include <chrono>
#include <cstring>
#include <optional>

#include "airlock/loop_timer.h"
#include "runtime/input_window.h"
#include "runtime/memory_snapshot.h"
#include "runtime/output_buffer.h"
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

// What every live instance adds up to, for RuntimeLimits.
struct RuntimeUsage {
  uint64_t memory_bytes = 0;
  size_t instances = 0;
  // Memory of instances dropped since the last GC (its pages went back at the drop;
  // V8 frees its objects and address space only when it collects), and how many.
  uint64_t unreclaimed_bytes = 0;
  uint64_t uncollected_instances = 0;
};

// One instance's part of RuntimeUsage: counted while it lives, moved with it.
class MemoryShare {
 public:
  MemoryShare() = default;
  explicit MemoryShare(RuntimeUsage* u) : u_(u) { u_->instances++; }
  MemoryShare(MemoryShare&& o) noexcept : u_(std::exchange(o.u_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  MemoryShare& operator=(MemoryShare&& o) noexcept {
    if (this != &o) {
      reset();
      u_ = std::exchange(o.u_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  MemoryShare(const MemoryShare&) = delete;
  MemoryShare& operator=(const MemoryShare&) = delete;
  ~MemoryShare() { reset(); }
  void set(uint64_t bytes) {
    if (!u_) return;
    u_->memory_bytes = u_->memory_bytes - bytes_ + bytes;
    bytes_ = bytes;
  }
  void reset() {
    if (!u_) return;
    u_->memory_bytes -= bytes_;
    u_->unreclaimed_bytes += bytes_;
    u_->uncollected_instances++;
    u_->instances--;
    u_ = nullptr;
    bytes_ = 0;
  }

 private:
  RuntimeUsage* u_ = nullptr;
  uint64_t bytes_ = 0;
};

struct PooledInstance {
  PooledInstance() = default;
  PooledInstance(PooledInstance&&) = default;
  PooledInstance& operator=(PooledInstance&&) = default;
  ~PooledInstance() {
    unmap_window();
    unmap_output();
    discard_memory();
  }

  std::unique_ptr<engine::Instance> inst;
  MemoryShare share;  // its linear memory in RuntimeUsage
  // An instance of the skill's window variant: its memory has `window_bytes` grown for
  // mapped inputs at `window_offset`; `window` is the input mapped there during a call
  // (between calls those pages are zero again, and the instance waits in window_pool).
  InputWindow window;
  // A shared output the skill is writing (airlock.output_buffer) at `output_offset`, in
  // pages grown for it; `output_base`: the memory's start when they were.
  OutputBuffer output;
  uint64_t output_offset = 0;
  uint8_t* output_base = nullptr;
  // The pages grown for outputs, kept for the next one (zero between calls).
  uint64_t output_region_offset = 0, output_region_bytes = 0;
  uint64_t window_offset = 0;      // where in the memory those pages start
  uint64_t window_bytes = 0;       // how many (>= the window's length); 0: no window
  uint8_t* window_base = nullptr;  // the memory's start when they were grown
  const void* variant = nullptr;   // the window module it is an instance of (Skill::window_module)

  // Re-reads the memory size into the share (after wasm ran: it may have grown). The
  // window's pages are not the skill's memory: they do not count (mapped, they hold
  // the caller's buffer; unmapped, they are untouched zero pages).
  void account() { share.set(inst ? inst->memory().size() - window_bytes : 0); }
  void unmap_window() { undo(window, window_base); }
  void unmap_output() { undo(output, output_base); }
  void drop() {  // a trapped, terminated or grown instance: never reused
    unmap_window();
    unmap_output();
    discard_memory();
    inst.reset();
    share.reset();
  }
  // The memory's pages go back now, not when V8 collects the instance: a full GC to free
  // them cost a 1,000-call burst ~50 ms (one every 16 MiB of dropped memory, each
  // marking every live instance). Only V8's objects and the address space reservation
  // wait for a collection (SkillRuntime::finish).
  void discard_memory() {
    if (!inst) return;
    auto mem = inst->memory();
    if (!mem.empty()) (void)madvise(mem.data(), mem.size(), MADV_DONTNEED);
  }
  std::unique_ptr<Binding> binding;

 private:
  // A mapping inside the memory (InputWindow, OutputBuffer) is undone before the memory
  // goes. With the trap handler V8 grows memory in place; without it, a grow may move the
  // memory (and free the old range): then the range is no longer ours to touch.
  template <class Mapping>
  void undo(Mapping& m, const uint8_t* base) {
    if (!m.active()) return;
    if (inst && inst->memory().data() == base) {
      m.release();
    } else {
      m.forget();
    }
  }

 public:
  // Linear memory right after _initialize (FreshState::Reset). One per skill, shared by
  // its instances: instances of one module are alike after _initialize, and a private
  // copy each cost 1,000 concurrent calls ~190 MB of page-faulting copies.
  std::shared_ptr<const MemorySnapshot> snapshot;
  // Pooled: since when; trimmed: its memory was given back (SkillRuntime::trim_idle), so
  // it is all zero until the snapshot is restored onto it when it is next taken.
  std::chrono::steady_clock::time_point idle_since{};
  bool trimmed = false;
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
  // Reset-mode instances a burst left past the pool: memory given back, restored onto
  // zero when taken (SkillRuntime::finish). Oldest first.
  std::deque<PooledInstance> spares;
  std::shared_ptr<const MemorySnapshot> snapshot;  // taken from the first instance
  // A variant of the module (as loaded, limits applied: module->wire_bytes()) with room
  // for a mapped input of `window_module_pages` pages (compiled on the first such call,
  // kept for the next).
  std::shared_ptr<engine::Module> window_module;
  uint32_t window_module_pages = 0;
  // Idle instances of that variant, reset (memory as after _initialize, window pages
  // zero): the next mapped call skips instantiation, the memory growth and the GC that
  // dropping them needs (~0.5 ms of a 0.6 ms call on 50 MiB).
  std::vector<PooledInstance> window_pool;
  std::shared_ptr<const MemorySnapshot> window_snapshot;  // the variant's memory after _initialize
  std::string stdout_line, stderr_line;  // partial lines written by _initialize
  uint32_t init_log_lines = 0;           // lines logged by _initialize (same budget as a call)
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
  std::shared_ptr<WrittenOutput> written_output;  // CallOptions::written_output
  std::optional<std::string> error_msg;
  std::string reply;             // last airlock.call reply (or its error message)
  uint64_t wait_token = 0;       // identifies the pending wait/service reply
  bool sync_reply = false;       // the service replied before the import returned
  Timer* wait_timer = nullptr;
  Timer* deadline_timer = nullptr;
  std::string stdout_line, stderr_line;  // partial lines of fd_write
  uint32_t log_lines = 0;    // logged so far (RuntimeLimits::max_log_lines_per_call)
  uint64_t log_dropped = 0;  // past that budget
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
// Logs one line of the skill's: cut to kMaxLogLineBytes, and counted against the call's
// budget (RuntimeLimits::max_log_lines_per_call); past it, dropped and counted.
void log_line(Binding& b, int level, std::string_view line);
constexpr size_t kMaxLogLineBytes = 4096;

}  // namespace airlock::runtime
