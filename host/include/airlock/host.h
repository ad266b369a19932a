// Airlock host library: spawn extension processes, load WebAssembly skills into them
// and call those skills as simply as local functions, over msgpack/libuv or gRPC.
//
//   airlock::Host host({.transport = airlock::Transport::Msgpack});
//   auto ext = host.spawn({.name = "skills"}).value();
//   ext.load_skill("greet", "greet.wasm");
//   auto r = ext.call("greet", "Ada");          // Result<std::string>
//   if (r.ok()) puts(r->c_str()); else puts(r.error().to_string().c_str());
//
// Every method is thread-safe. Errors carry a Code (airlock/status.h) and a message
// naming the extension and skill involved.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "airlock/status.h"

namespace airlock {

using namespace std::chrono_literals;

enum class Transport : uint8_t { Msgpack, Grpc };
std::string_view to_string(Transport t);

struct SkillLimits {
  uint32_t max_memory_mb = 64;   // linear memory cap per skill instance
  uint32_t timeout_ms = 10'000;  // wall clock per call, waits included
};

struct RestartPolicy {
  enum class Mode : uint8_t { Never, OnFailure } mode = Mode::Never;
  uint32_t max_restarts = 5;  // then the extension stays down (Unavailable)
  std::chrono::milliseconds initial_backoff = 100ms;  // doubled after each restart
  std::chrono::milliseconds max_backoff = 5s;
};

struct ExtensionOptions {
  std::string name;                      // unique per host; tags its log lines
  std::optional<SkillLimits> limits;     // default for skills loaded into it (else the host's)
  std::vector<std::string> env;          // "KEY=VALUE" for the process (nothing else is inherited)
  RestartPolicy restart;
  std::chrono::milliseconds start_timeout = 10s;  // spawn -> ready
};

struct HostOptions {
  Transport transport = Transport::Msgpack;
  // airlock-extension to run; empty: $AIRLOCK_EXTENSION, else next to this program,
  // else the one this library was built with.
  std::string extension_binary;
  SkillLimits default_limits;
  std::chrono::milliseconds default_call_timeout = 30s;
  std::string log_level = "info";        // host and extensions (spdlog level names)
  uint32_t max_frame_bytes = 64u << 20;  // larger frames are refused (ResourceExhausted)
  bool use_zygote = true;                // fork extensions from a pre-loaded process
};

struct CallOptions {
  std::string func = "run";
  std::chrono::milliseconds timeout = 0ms;  // 0: the host's default_call_timeout
};

using CallResult = Result<std::string>;
using CallId = uint64_t;

namespace detail {
class HostImpl;
class ExtensionState;
}  // namespace detail

// A handle to one extension process (cheap to copy). Survives restarts: after a crash
// with a restart policy, the same handle talks to the new process.
class Extension {
 public:
  const std::string& name() const;
  int pid() const;     // current process id, 0 while down
  bool alive() const;  // running and ready

  Status load_skill(const std::string& skill, const std::string& wasm_path, std::optional<SkillLimits> limits = {});
  Status load_skill_bytes(const std::string& skill, std::span<const uint8_t> wasm,
                          std::optional<SkillLimits> limits = {});
  Status unload_skill(const std::string& skill);
  std::vector<std::string> skills() const;

  CallResult call(std::string_view skill, std::string_view input, const CallOptions& opts = {});
  std::future<CallResult> call_async(std::string_view skill, std::string_view input, const CallOptions& opts = {});
  // `done` runs on the host's I/O thread: keep it short, do not block in it.
  CallId call_async(std::string_view skill, std::string_view input, const CallOptions& opts,
                    std::function<void(CallResult)> done);
  void cancel(CallId id);  // the call completes with Cancelled (if still in flight)

  // Graceful stop: in-flight calls may finish within `grace`; then SIGTERM, SIGKILL.
  void stop(std::chrono::milliseconds grace = 2s);

 private:
  friend class detail::HostImpl;
  explicit Extension(std::shared_ptr<detail::ExtensionState> s) : s_(std::move(s)) {}
  std::shared_ptr<detail::ExtensionState> s_;
};

class Host {
 public:
  explicit Host(HostOptions options = {});
  ~Host();  // stops every extension (in-flight calls fail fast) and reaps them
  Host(const Host&) = delete;
  Host& operator=(const Host&) = delete;

  // Starts an extension and waits until it reports ready.
  Result<Extension> spawn(ExtensionOptions options);
  std::optional<Extension> find(std::string_view name) const;
  // Stops every extension: graceful within `grace`, then SIGTERM, then SIGKILL.
  void stop(std::chrono::milliseconds grace = 2s);
  const HostOptions& options() const;

 private:
  std::unique_ptr<detail::HostImpl> impl_;
};

}  // namespace airlock
