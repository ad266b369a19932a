// The engine layer: the only interface the rest of Airlock sees of a WebAssembly
// engine. One implementation today (V8 10.2, v8_engine.cc); nothing outside
// extension/engine/ includes V8 headers.
//
// Threading: an Engine and everything it creates belong to the thread that created
// the Engine, except Engine::terminate(), which any thread may call (the watchdog).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "airlock/status.h"

namespace airlock::engine {

enum class ValType : uint8_t { I32, I64, F32, F64 };

struct FuncType {
  std::vector<ValType> params;
  std::vector<ValType> results;
  bool operator==(const FuncType&) const = default;
  std::string to_string() const;  // "(i32, i32) -> i32"
};

struct Value {
  ValType type = ValType::I32;
  union {
    int32_t i32;
    int64_t i64;
    float f32;
    double f64;
  };
  Value() : i64(0) {}
  static Value from_i32(int32_t v) { Value x; x.type = ValType::I32; x.i32 = v; return x; }
  static Value from_i64(int64_t v) { Value x; x.type = ValType::I64; x.i64 = v; return x; }
};

class Instance;

// What a host function sees of its caller.
class Caller {
 public:
  virtual ~Caller() = default;
  virtual Instance& instance() = 0;
};

// Thrown by a host function to trap the calling wasm code with this error.
struct HostTrap {
  Error error;
};

using HostFn = std::function<void(Caller&, std::span<const Value> args, std::span<Value> results)>;

struct HostFunction {
  std::string module;
  std::string name;
  FuncType type;
  HostFn fn;
};

class Instance {
 public:
  virtual ~Instance() = default;
  // Calls an exported function. A trap becomes Code::Trap with its TrapKind; an
  // Engine::terminate() during the call becomes Code::Timeout; a HostTrap thrown by a
  // host function becomes that error. After a Timeout the instance must be discarded.
  virtual Result<std::vector<Value>> call(std::string_view export_name,
                                          std::span<const Value> args) = 0;
  // The current linear memory ("memory" export). The span is invalidated by anything
  // that may grow memory: re-read it after every call into wasm.
  virtual std::span<uint8_t> memory() = 0;
  virtual uint32_t memory_pages() = 0;
  // Grows the linear memory by `pages` (64 KiB each), as memory.grow would; returns the
  // size before, in pages. ResourceExhausted past the memory's maximum.
  virtual Result<uint32_t> grow_memory(uint32_t pages) = 0;
  void* user_data = nullptr;  // owned by whoever set it (the runtime's call state)
};

class Module {
 public:
  virtual ~Module() = default;
  // Links imports against the engine's host functions and instantiates.
  virtual Result<std::unique_ptr<Instance>> instantiate() = 0;
  // The bytes it was compiled from (the engine keeps them anyway: no copy of our own).
  // Valid while the module lives.
  virtual std::span<const uint8_t> wire_bytes() = 0;
};

// Process-wide: the first Engine of a process fixes them (V8 flags precede
// V8::Initialize); later Engines get the same whatever they ask.
struct EngineConfig {
  // Keep the wasm trap handler (guard regions, ~10 GiB address space per memory). Off:
  // explicit bounds checks, for thousands of live instances or an address-space rlimit.
  bool trap_handler = true;
  // Compile each function at its first call instead of at load (all are still validated
  // at load). Measured, 500 distinct 32 KB skills: loads -45% CPU, their first calls x2.5.
  bool lazy_compilation = false;
  // V8's dynamic tiering: hot functions are recompiled by TurboFan on a background
  // thread. Off: Liftoff code only (no background compilation, slower hot loops).
  bool tier_up = true;
  // Code that can go in a compile cache: every function reaches TurboFan (eager tier-up
  // in the background: V8 10.2 serializes TurboFan code only), and only code compiled
  // under the same flags is accepted back (V8 checks its version and flag hash).
  bool cacheable_code = false;
};

class Engine {
 public:
  virtual ~Engine() = default;
  // Registers a host function importable by modules compiled afterwards.
  virtual void define(HostFunction fn) = 0;
  // Compiles wasm bytes. Errors: InvalidArgument with the engine's message.
  // Limits such as the memory maximum are already in the bytes (see wasm_info.h).
  virtual Result<std::shared_ptr<Module>> compile(std::span<const uint8_t> wasm) = 0;
  // The same, taking the code from `cached` (compile_for_cache's output for these bytes)
  // when the engine accepts it: `*used_cache` says whether it did. V8 checks its version,
  // flags and CPU features; it does not check the code itself, so the caller must (a
  // checksum): a corrupt entry would run.
  virtual Result<std::shared_ptr<Module>> compile(std::span<const uint8_t> wasm, std::span<const uint8_t> cached,
                                                  bool* used_cache) = 0;
  // Compiles, waits until every function has its top-tier code and returns that code
  // serialized, for a compile cache. Needs EngineConfig::cacheable_code. Blocks (it pumps
  // V8's foreground tasks): for a process that does nothing else. Runs no wasm code.
  virtual Result<std::vector<uint8_t>> compile_for_cache(std::span<const uint8_t> wasm) = 0;
  // Stops whatever wasm code runs on the engine's thread now (thread-safe). The
  // running call returns Code::Timeout.
  virtual void terminate() = 0;
  // Withdraws a terminate() that arrived after the wasm it meant had already returned
  // (so it would hit the next call instead). Engine thread only.
  virtual void cancel_termination() = 0;
  // Frees what dropped instances still hold (their linear memories go with the next GC).
  virtual void reclaim() = 0;
  virtual std::string_view name() const = 0;
};

// One engine per thread; V8's process-wide state is initialised on first use.
std::unique_ptr<Engine> create_v8_engine(const EngineConfig& config = {});
// "V8 10.2.154.26-node.xx": the engine's version, without initialising it.
std::string engine_version();

}  // namespace airlock::engine
