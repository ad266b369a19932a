// The skill runtime: loads skills (wasm modules) into one engine and runs calls on a
// libuv loop thread. A call that waits (airlock.wait, airlock.call) is suspended with
// asyncify and parked without holding the thread, so one runtime holds thousands of
// waiting calls. Every call runs on a fresh instance state (see FreshState).
//
// Threading: construct, use and destroy on the loop's thread. Completion callbacks run
// on that thread too (possibly before call() returns).
#pragma once

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "airlock/status.h"
#include "engine/engine.h"
#include "runtime/output_buffer.h"

namespace airlock::runtime {

// How a call gets a state no other call has seen.
enum class FreshState : uint8_t {
  Reset,          // reuse an instance after restoring its memory snapshot (default; falls back to a new instance)
  Reinstantiate,  // always a new instance (slowest, simplest)
  Reuse,          // keep one instance across calls (the skill author opts out of isolation)
};

struct SkillLimits {
  uint32_t max_memory_mb = 64;
  uint32_t timeout_ms = 10'000;  // wall clock per call, waits included
  FreshState fresh = FreshState::Reset;
  uint32_t max_table_entries = 100'000;  // per table (8 bytes of engine heap each)
};

// Limits of the whole runtime (one extension), whatever its skills do. Past one, the
// call that would cross it fails with ResourceExhausted naming it; the runtime lives on.
struct RuntimeLimits {
  // Linear memory of every live instance together: pooled, running and parked calls.
  uint64_t max_memory_bytes = uint64_t(2) << 30;
  // Live instances: with the trap handler each reserves ~10 GiB of address space, so
  // ~12,000 exhaust the 47-bit user space (V8 then fails every instantiation).
  uint32_t max_instances = 8192;
  uint32_t max_calls_in_flight = 16384;
  // Per call: lines logged (airlock.log, stdout, stderr; each cut to 4 KiB) before the
  // rest is dropped and counted.
  uint32_t max_log_lines_per_call = 1000;
  // A shared input at least this large is mapped into the skill's memory, not copied
  // (a fresh instance per such call: ~0.1 ms, where copying 1 MiB takes ~0.1-0.3 ms).
  uint64_t map_inputs_from_bytes = 1 << 20;
};

struct CallOptions {
  std::string func = "run";
  uint32_t timeout_ms = 0;  // 0: the skill's limit; otherwise min(this, the skill's limit)
  uint64_t parent_id = 0;   // the request this call belongs to (call chains)
  // Where an output the skill wrote into a slot of the runtime's OutputSource
  // (airlock.output_buffer) is named, instead of copied into the result string (which
  // is then empty); null: it is copied.
  std::shared_ptr<WrittenOutput> written_output = nullptr;
};

// Who is calling a host service: passed to the service handler.
struct ServiceCall {
  uint64_t call_id;     // the skill call making the request
  uint64_t parent_id;   // that call's parent request
  std::string_view skill;
  std::chrono::steady_clock::time_point deadline;
};

using CallDone = std::function<void(Result<std::string>)>;

// Input bytes the runtime does not own (e.g. a shared-memory mapping): copied straight
// into the skill's memory; `keep` holds whatever keeps them valid until then. With an
// `fd` (the sealed memfd the bytes are `file_offset` into), a large input is mapped
// into the skill's memory instead (input_window.h).
struct InputView {
  std::span<const uint8_t> bytes;
  std::shared_ptr<const void> keep;
  int fd = -1;
  uint64_t file_offset = 0;
};
using ServiceReply = std::function<void(Result<std::string>)>;
// Handles airlock.call from a skill. Reply exactly once, on the loop thread, now or later.
// Returns an id the runtime can hand to the cancel hook if the call is abandoned.
using ServiceHandler = std::function<void(const ServiceCall&, std::string service, std::string input, ServiceReply)>;
// Receives skill log lines (airlock.log, stdout, stderr). level: spdlog numbering.
using LogSink = std::function<void(int level, std::string_view skill, std::string_view line)>;

struct RuntimeStats {
  uint64_t calls = 0;
  uint64_t instantiations = 0;
  uint64_t resets = 0;
  uint64_t mapped_inputs = 0;  // shared inputs mapped into a skill's memory, not copied
  uint64_t kept_inputs = 0;    // ... of those, found still mapped from the call before (input_window.h)
  uint64_t written_outputs = 0;  // outputs a skill wrote into airlock.output_buffer (output_buffer.h)
  size_t in_flight = 0;
  size_t suspended = 0;
  uint64_t memory_bytes = 0;  // linear memory of live instances (RuntimeLimits::max_memory_bytes)
  size_t instances = 0;       // live instances
};

// The type of a function the runtime provides to skills (module "airlock" or
// "wasi_snapshot_preview1"), or nullopt if it provides no such import.
std::optional<engine::FuncType> provided_import_type(std::string_view module, std::string_view name);

class SkillRuntime {
 public:
  explicit SkillRuntime(uv_loop_t* loop, engine::EngineConfig config = {}, RuntimeLimits limits = {});
  ~SkillRuntime();
  SkillRuntime(const SkillRuntime&) = delete;
  SkillRuntime& operator=(const SkillRuntime&) = delete;

  // Validates, limits and compiles a skill. Errors name the skill and the reason.
  // `compiled`: the module's code from a compile cache (compile_for_cache of the same bytes
  // and limits, by an engine with the same config), used if the engine accepts it;
  // `*used_cache` says whether it did.
  Status load(const std::string& name, std::span<const uint8_t> wasm, const SkillLimits& limits = {},
              std::span<const uint8_t> compiled = {}, bool* used_cache = nullptr);
  // The code a load of these bytes with these limits would compile, at its top tier and
  // serialized: a compile-cache entry (needs EngineConfig::cacheable_code). Runs no wasm.
  Result<std::vector<uint8_t>> compile_for_cache(std::span<const uint8_t> wasm, const SkillLimits& limits = {});
  Status load_file(const std::string& name, const std::string& path, const SkillLimits& limits = {});
  Status unload(const std::string& name);  // in-flight calls of the skill finish first
  std::vector<std::string> skills() const;
  bool has_skill(std::string_view name) const;

  // Starts a call; `done` runs exactly once. Returns the call id (for cancel).
  uint64_t call(std::string_view skill, std::string input, const CallOptions& opts, CallDone done);
  uint64_t call(std::string_view skill, InputView input, const CallOptions& opts, CallDone done);
  // Cancels a suspended call (its wait or host-service call is abandoned): Cancelled.
  void cancel(uint64_t call_id);
  // Unmaps inputs kept mapped for a next call whose buffer nobody else holds any more
  // (the host dropped it): call after the shared-buffer registry released some.
  void release_orphaned_inputs();
  // Fails every in-flight call with `error` (shutdown).
  void cancel_all(const Error& error);

  void set_service_handler(ServiceHandler h) { service_handler_ = std::move(h); }
  void set_log_sink(LogSink s) { log_sink_ = std::move(s); }
  // Shared memory for airlock.output_buffer (output_buffer.h); none: plain memory, copied.
  void set_output_source(OutputSource* s) { output_source_ = s; }
  RuntimeStats stats() const;
  const RuntimeLimits& limits() const { return limits_; }
  void log(int level, std::string_view skill, std::string_view line);
  std::string_view engine_name() const { return engine_->name(); }

  struct Skill;
  struct Call;

  // Gives back the memory of Reset instances pooled for at least `idle_for`: their pages
  // go (MADV_DONTNEED) and the snapshot is written back when one is next used (only its
  // non-zero pages: ~3 us for the sample skill). A pooled instance of the 32 KB sample
  // otherwise keeps its 128 KiB memory resident. Returns how many were trimmed.
  size_t trim_idle(std::chrono::steady_clock::duration idle_for);

 private:
  friend struct AbiImports;  // the suspending imports drive suspend()/resume()
  // airlock.output_buffer: the address of `len` bytes of shared memory in the skill's
  // memory that become the call's output (output_buffer.h), or 0 if refused.
  int32_t open_output_buffer(Call& c, uint32_t len);
  Result<std::string> take_output_buffer(Call& c);
  void start(Call& c);
  Result<std::pair<std::shared_ptr<Skill>, std::vector<uint8_t>>> prepare(const std::string& name,
                                                                         std::span<const uint8_t> wasm,
                                                                         const SkillLimits& limits);
  void start_mapped(Call& c);  // a large shared input, mapped (input_window.h)
  void run(Call& c);
  void finish(Call& c, Result<std::string> r);
  void suspend(Call& c);
  void resume(Call& c);
  Status add_instance(Skill& s);
  void drop_idle(Skill& s);
  Result<struct PooledInstance> new_instance(Skill& s, engine::Module& module);
  void disarm_watchdog();
  void pool(Skill& s, struct PooledInstance p);
  // Memory accounting (RuntimeLimits): each live instance's linear memory counts from
  // its creation to its destruction (call_state.h: MemoryShare). True if the total is
  // within the limit, after evicting idle pooled instances if it was not.
  bool within_memory_limit();
  void evict_idle(const std::function<bool()>& enough);
  Error over_memory(const std::string& skill) const;
  uint64_t start_call(std::string_view skill, std::string input, InputView view, const CallOptions& opts, CallDone done);

  uv_loop_t* loop_;
  RuntimeLimits limits_;
  std::unique_ptr<struct RuntimeUsage> usage_;  // outlives every instance (see ~SkillRuntime)
  std::unique_ptr<engine::Engine> engine_;
  std::unique_ptr<class Watchdog> watchdog_;
  std::unordered_map<std::string, std::shared_ptr<Skill>> skills_;
  std::unordered_map<uint64_t, std::unique_ptr<Call>> calls_;
  uint64_t next_call_id_ = 1;
  ServiceHandler service_handler_;
  LogSink log_sink_;
  OutputSource* output_source_ = nullptr;
  RuntimeStats stats_;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // service replies check it after we are gone
};

}  // namespace airlock::runtime
