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

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
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

// How an extension's WebAssembly engine (V8) compiles and runs skills. V8's flags are
// per process, so these are per extension.
enum class GuardRegions : uint8_t {
  // On, unless the extension's address-space rlimit (RLIMIT_AS) cannot hold a
  // reservation for each instance it may keep live (8,192), then Off.
  Auto,
  // Out-of-bounds accesses caught by the MMU: no bounds checks in the code, but ~10 GiB
  // of address space reserved per live instance (12,000 fill the 47-bit user space).
  On,
  // Explicit bounds checks (V8's measure: a few % on memory-heavy code), no reservation:
  // the instance cap rises to 16,384.
  Off,
};
std::string_view to_string(GuardRegions g);

struct EngineOptions {
  // Compile each function at its first call instead of when the skill loads (every
  // function is still validated at load). Measured with 500 distinct 32 KB skills:
  // loading them cost ~45% less CPU and ~56 MB less PSS, their first calls ~2.5x more.
  bool lazy_compilation = false;
  // V8's dynamic tiering: functions that run hot are recompiled by TurboFan on one
  // background thread per extension. Off: Liftoff code only (no background compiling;
  // hot loops 1.2-2x slower).
  bool tier_up = true;
  GuardRegions guard_regions = GuardRegions::Auto;
};

struct RestartPolicy {
  enum class Mode : uint8_t { Never, OnFailure } mode = Mode::Never;
  uint32_t max_restarts = 5;  // then the extension stays down (Unavailable)
  std::chrono::milliseconds initial_backoff = 100ms;  // doubled after each restart
  std::chrono::milliseconds max_backoff = 5s;
};

struct ExtensionOptions {
  std::string name;                      // unique per host; tags its log lines
  // Skills this extension may call directly through the host with the built-in service
  // "@EXT/SKILL": entries "EXT" (any skill) or "EXT/SKILL"; "*" allows everything.
  // Default: nothing (PermissionDenied).
  std::vector<std::string> may_call;
  std::optional<SkillLimits> limits;     // default for skills loaded into it (else the host's)
  std::vector<std::string> env;          // "KEY=VALUE" for the process (nothing else is inherited)
  // Linear memory of all its skill instances together (pooled, running and parked
  // calls); a call that would cross it fails with ResourceExhausted naming this.
  uint32_t max_memory_mb = 2048;
  RestartPolicy restart;
  std::chrono::milliseconds start_timeout = 10s;  // spawn -> ready
  // Files or folders the extension may read (absolute paths, bound read-only into its
  // otherwise empty root). Skills are sent as bytes: an extension needs none to run.
  std::vector<std::string> readable;
  // Host services its skills may call, by name; nullopt: every service whose
  // ServiceOptions::allow admits it. Both must agree: this narrows, never widens.
  std::optional<std::vector<std::string>> services;
  std::optional<EngineOptions> engine;  // else HostOptions::engine
};

// The OS sandbox every extension runs in (docs/SECURITY.md): its own user, mount,
// network, ipc and uts namespaces, an empty read-only root, no capabilities,
// no_new_privs, and a seccomp-BPF allow-list. Layers the kernel does not allow (no
// unprivileged user namespaces, say) are reported once, by name, and left out.
struct SandboxOptions {
  bool enabled = true;
  // A layer that cannot be applied fails the spawn instead (PermissionDenied naming it).
  bool required = false;
  // When the host runs as root: run extensions as this uid:gid (-1: root inside their
  // user namespace, which is still no capability outside it).
  int uid = -1;
  int gid = -1;
};

// Bounds that hold whatever an extension sends or does (docs/SECURITY.md). Past one, the
// call fails at once with ResourceExhausted naming the bound: backpressure, not growth.
// All are per extension.
struct HostLimits {
  size_t max_queued_bytes = 64u << 20;      // written to it but not yet read by it
  uint32_t max_calls_in_flight = 16384;      // calls to it (the application's and nested ones)
  uint32_t max_service_requests_per_call = 64;  // host-service requests open for one call
  uint32_t max_service_requests = 4096;      // host-service requests open in all
  uint32_t max_blocking_jobs = 256;          // its blocking-service jobs queued or running
  uint64_t max_output_bytes = 1ull << 30;    // one output it returns in shared memory
  uint64_t max_shared_bytes = 4ull << 30;    // shared-memory buffers it may announce at once
  uint32_t log_lines_per_second = 1000;      // more are dropped (and counted); bursts of 2x pass
  uint32_t max_log_line_bytes = 4096;        // longer lines are cut
};

// One log line from an extension or one of its skills, already escaped (no control
// characters, one line) and cut to HostLimits::max_log_line_bytes.
struct LogRecord {
  std::string_view extension;
  std::string_view skill;  // empty: the extension's own line
  int level = 2;           // spdlog numbering: 0 trace .. 5 critical
  std::string_view message;
};
// Runs on the host's I/O thread: keep it short.
using LogCallback = std::function<void(const LogRecord&)>;

struct HostOptions {
  Transport transport = Transport::Msgpack;
  // airlock-extension to run; empty: $AIRLOCK_EXTENSION, else next to this program,
  // else the one this library was built with.
  std::string extension_binary;
  SkillLimits default_limits;
  std::chrono::milliseconds default_call_timeout = 30s;
  // Extensions' log level (spdlog names). Their lines, and the host's own, go to
  // spdlog's default logger, whose level the application controls.
  std::string log_level = "info";
  uint32_t max_frame_bytes = 64u << 20;  // larger frames are refused (ResourceExhausted)
  // msgpack: after the host's loop or an extension's handled or sent a frame, it polls
  // this long (yielding) before it sleeps, so that the next frame of a call chain is
  // read at once rather than after a wake-up (~50 µs across the vCPUs of a VM): 30 µs
  // made chains 2-6x faster on 2 vCPUs, but a small call read by its own caller slower
  // in 2 of 3 runs (msgpack_channel.cc has the figures). Costs at most this much CPU
  // per burst of frames, nothing while idle or busy. 0: sleep at once.
  std::chrono::microseconds spin{0};
  // msgpack: >0 puts each extension's frames in a shared-memory ring pair of this many
  // bytes each way (a power of two, 4 KiB to 64 MiB; shared by host and extension, so
  // counted once) instead of its socket, which then carries only doorbell bytes and the
  // hang-up (proto/include/airlock/ring.h). A reader that polls (spin) needs no
  // doorbell: a frame then costs no syscall on either side. With spin 30 µs and
  // 256 KiB, a small call took 7.1-7.4 µs against 29-48 µs on the socket (2 vCPUs);
  // without spin it gains nothing (docs/ARCHITECTURE.md has the figures). 0: the socket.
  uint32_t ring_bytes = 0;
  bool use_zygote = true;                // fork extensions from a pre-loaded process
  // Inline inputs at least this large are moved into a shared buffer of the extension's
  // pool before sending (one copy here instead of a trip through the socket; never
  // limited by max_frame_bytes). 0: always send inline.
  size_t auto_share_min_bytes = 1u << 20;
  uint32_t max_chain_depth = 16;         // nested skill calls per chain (host -> A -> host -> B ...)
  uint32_t service_threads = 4;          // workers for blocking services
  HostLimits limits;
  // Liveness: every health_interval the host pings each extension; one that has not
  // answered within health_timeout (plus the longest time limit of its skills: a
  // CPU-bound call holds its loop that long) is reported, killed and restarted per its
  // RestartPolicy, and its calls fail saying so. 0 turns the pings off.
  std::chrono::milliseconds health_interval = 1s;
  std::chrono::milliseconds health_timeout = 5s;
  // Where extension and skill log lines go. Default: spdlog's default logger, as
  // "[ext NAME] [skill SKILL] line".
  LogCallback log_callback;
  // Which extensions may call a service registered without ServiceOptions::allow:
  // extension names, or "*" for all. The default lets every extension of this host call
  // every such service; set {} to make each registration name its callers.
  std::vector<std::string> default_service_access = {"*"};
  SandboxOptions sandbox;
  EngineOptions engine;  // every extension's, unless its ExtensionOptions::engine says otherwise
  // A folder for the on-disk compile cache (created if missing); empty: none. With one,
  // a skill's code, compiled by TurboFan, is kept there after its first load (built in
  // the background by a sandboxed process of its own) and later loads take it instead
  // of compiling: no compile, and no background tier-up. Extensions then run with eager
  // tier-up, so a skill not yet cached is TurboFan-compiled in the background once.
  // Entries are checksummed: a corrupt or foreign one is deleted and rebuilt.
  std::string compile_cache_dir;
  // How long building one entry may take before its process is killed and the module
  // is given up on (it keeps loading by compiling). A 32 KB skill takes ~100 ms.
  std::chrono::milliseconds compile_cache_build_timeout{std::chrono::minutes(2)};
};

struct CompileCacheStats {
  uint64_t hits = 0;      // loads that sent an entry and saw it used
  uint64_t misses = 0;    // loads that found none
  uint64_t rejected = 0;  // entries the extension's engine refused (another V8, other flags)
  uint64_t corrupt = 0;   // entries whose checksum, size or header was wrong (deleted)
  uint64_t built = 0;     // entries written
  uint64_t build_failures = 0;
  std::string last_failure;  // why the last build failed
};

// Who may call a host service. Checked on every request.
struct ServiceOptions {
  // Extension names, or "*"; nullopt: HostOptions::default_service_access.
  std::optional<std::vector<std::string>> allow;
};

namespace detail {
class HostImpl;
struct OutputViewState;
}  // namespace detail

// A large output left where the extension put it (CallOptions::output_view): its shared
// buffer, mapped read-only here, instead of a copy in the CallResult's string. The
// extension may reuse that buffer only once this object is gone (or reset), so keep it
// no longer than you need. The buffer is sealed against resizing and against new
// writable mappings, but the extension, its creator, keeps one: a compromised extension
// could change the bytes while you read them. Copy what you validate before acting on it.
class OutputView {
 public:
  OutputView() = default;
  OutputView(const OutputView&) = delete;
  OutputView& operator=(const OutputView&) = delete;
  std::span<const uint8_t> data() const;
  size_t size() const;
  explicit operator bool() const { return s_ != nullptr; }
  void reset() { s_.reset(); }

 private:
  friend class detail::HostImpl;
  friend class Extension;
  std::shared_ptr<detail::OutputViewState> s_;
  std::atomic<bool> busy_{false};  // a call in flight fills it
};

struct CallOptions {
  std::string func = "run";
  std::chrono::milliseconds timeout = 0ms;  // 0: the host's default_call_timeout
  // If set, an output that comes back in shared memory (64 KiB or more: the extension's
  // serve --shm-output-min-bytes, or written with airlock_output_buffer) is handed over
  // here as a view, without the host's copy; the CallResult's string is then empty.
  // Smaller outputs arrive in the string as always, and the view stays empty (so it does
  // when the extension's views already hold half of HostLimits::max_shared_bytes). A call empties
  // the view first (giving its earlier output back); a view already used by a call in
  // flight is refused (InvalidArgument).
  std::shared_ptr<OutputView> output_view = nullptr;
};

using CallResult = Result<std::string>;
using CallId = uint64_t;

namespace proto {
struct ShmRef;
}  // namespace proto

namespace detail {
class HostImpl;
class ExtensionState;
struct ServiceCallState;
struct BufferState;
}  // namespace detail

// Shared memory for large inputs (a sealed memfd from the extension's pool): write into
// it, then pass it, or a slice, as a call's input; the bytes are not copied through the
// channel. Write only while no call that uses it is in flight (the extension sees the
// buffer read-only, for the duration of the call). Released to the pool when the last
// copy of the handle goes away; keep it alive until the calls that use it have answered.
class SharedBuffer {
 public:
  SharedBuffer() = default;
  std::span<uint8_t> data();
  size_t size() const;
  explicit operator bool() const { return s_ != nullptr; }

 private:
  friend class Extension;
  friend class Host;
  friend class Payload;
  explicit SharedBuffer(std::shared_ptr<detail::BufferState> s) : s_(std::move(s)) {}
  std::shared_ptr<detail::BufferState> s_;
};

// A call's input: bytes (copied through the channel) or a slice of a SharedBuffer.
class Payload {
 public:
  Payload(std::string_view bytes) : bytes_(bytes) {}          // NOLINT(google-explicit-constructor)
  Payload(const std::string& bytes) : bytes_(bytes) {}        // NOLINT(google-explicit-constructor)
  Payload(const char* bytes) : bytes_(bytes) {}               // NOLINT(google-explicit-constructor)
  Payload(const SharedBuffer& buffer, size_t offset = 0, size_t length = SIZE_MAX)  // NOLINT
      : buffer_(buffer), offset_(offset), length_(length) {}
  bool shared() const { return static_cast<bool>(buffer_); }
  std::string_view bytes() const { return bytes_; }
  const SharedBuffer& buffer() const { return buffer_; }
  size_t offset() const { return offset_; }
  size_t length() const { return length_ == SIZE_MAX && buffer_ ? buffer_.size() - std::min(offset_, buffer_.size()) : length_; }

 private:
  std::string_view bytes_;
  SharedBuffer buffer_;
  size_t offset_ = 0, length_ = 0;
};

// A skill's call of a host service, as its handler sees it. Copyable; every copy
// refers to the same request. Thread-safe.
class ServiceRequest {
 public:
  const std::string& service() const;    // e.g. "kv.get"
  const std::string& extension() const;  // the calling extension
  const std::string& input() const;
  std::chrono::steady_clock::time_point deadline() const;  // the chain's deadline
  uint32_t depth() const;                // skill calls above this request in its chain
  std::string chain() const;             // "A/run -> kv.get", for messages
  bool cancelled() const;                // the chain was cancelled or timed out

  // Answers the skill (exactly once; later replies are ignored).
  void reply(CallResult result) const;
  // Calls a skill as part of this chain: inherits the remaining deadline, counts
  // toward max_chain_depth and is cancelled with the chain. `done` runs on the host's
  // I/O thread; errors name the extension and skill where they happened.
  void call(std::string_view extension, std::string_view skill, std::string_view input,
            std::function<void(CallResult)> done) const;
  CallResult call(std::string_view extension, std::string_view skill, std::string_view input) const;  // not on the I/O thread

 private:
  friend class detail::HostImpl;
  explicit ServiceRequest(std::shared_ptr<detail::ServiceCallState> s) : s_(std::move(s)) {}
  std::shared_ptr<detail::ServiceCallState> s_;
};

// Runs on the host's I/O thread: must not block. Reply now or later, from any thread.
using ServiceHandler = std::function<void(ServiceRequest)>;
// Runs on a worker thread (HostOptions::service_threads); may block.
using BlockingServiceHandler = std::function<CallResult(const ServiceRequest&)>;

// What an extension has done so far (Extension::stats(); Host::metrics_text() has the
// same in Prometheus text form). Calls count once they end: answered, failed, timed out,
// cancelled, or refused by a host bound. Latencies are from a log-scale histogram (9 %
// buckets), for the calls this host made to it, nested ones included.
struct ExtensionStats {
  std::string name;
  int pid = 0;
  bool alive = false;
  uint64_t calls = 0;
  uint64_t ok = 0;
  std::map<std::string, uint64_t> errors;  // by code name: {"Timeout", 3}
  uint32_t in_flight = 0;
  uint32_t restarts = 0;
  double latency_p50_us = 0;
  double latency_p99_us = 0;
  double latency_sum_us = 0;  // of all of them (the mean is this / calls)
  std::vector<std::string> skills;
  std::string sandbox;  // Extension::sandbox_report()
  // The process's memory now (/proc/PID/smaps_rollup; 0 while down or unreadable): RSS,
  // PSS (shared pages split among the processes mapping them: the honest share of
  // libnode and the zygote's pages) and USS (private pages only).
  uint64_t rss_bytes = 0, pss_bytes = 0, uss_bytes = 0;
};

// A handle to one extension process (cheap to copy). Survives restarts: after a crash
// with a restart policy, the same handle talks to the new process.
class SkillSet;

class Extension {
 public:
  const std::string& name() const;
  int pid() const;     // current process id, 0 while down
  bool alive() const;  // running and ready
  // The sandbox layers the current process reported ("applied: userns,...; missing: ...").
  // Its own words, for people: the host's checks do not rest on it.
  std::string sandbox_report() const;
  ExtensionStats stats() const;  // any thread, service handlers too

  Status load_skill(const std::string& skill, const std::string& wasm_path, std::optional<SkillLimits> limits = {});
  Status load_skill_bytes(const std::string& skill, std::span<const uint8_t> wasm,
                          std::optional<SkillLimits> limits = {});
  Status unload_skill(const std::string& skill);
  std::vector<std::string> skills() const;

  CallResult call(std::string_view skill, const Payload& input, const CallOptions& opts = {});
  std::future<CallResult> call_async(std::string_view skill, const Payload& input, const CallOptions& opts = {});
  // `done` runs on the host's I/O thread: keep it short, do not block in it.
  CallId call_async(std::string_view skill, const Payload& input, const CallOptions& opts,
                    std::function<void(CallResult)> done);

  // A shared-memory buffer for inputs to this extension (from its pool; see SharedBuffer).
  Result<SharedBuffer> allocate(size_t size);
  void cancel(CallId id);  // the call completes with Cancelled (if still in flight)

  // Graceful stop: in-flight calls may finish within `grace`; then SIGTERM, SIGKILL.
  void stop(std::chrono::milliseconds grace = 2s);

 private:
  friend class detail::HostImpl;
  friend class SkillSet;
  bool on_io_thread() const;  // the host's I/O thread: where blocking methods would deadlock
  explicit Extension(std::shared_ptr<detail::ExtensionState> s) : s_(std::move(s)) {}
  Result<proto::ShmRef> share(const Payload& in);  // sends the buffer's fd once, checks the slice
  // call_async's work; `leads` non-null: the caller will block for the answer, and is
  // told whether it may read it itself (it was sent from this thread).
  CallId start_call(std::string_view skill, const Payload& input, const CallOptions& opts,
                    std::function<void(CallResult)> done, bool* leads);
  // `wasm` stays valid while `keep` lives.
  Status load(const std::string& skill, std::shared_ptr<const void> keep, std::string_view wasm, std::string path,
              std::optional<SkillLimits> limits);
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
  std::vector<Extension> extensions() const;  // every extension spawned and not yet removed, by name
  // Every extension's ExtensionStats in the Prometheus text format (airlock_calls_total,
  // airlock_call_errors_total{code}, airlock_calls_in_flight, airlock_restarts_total,
  // airlock_call_latency_us{quantile}), for an application's /metrics endpoint.
  std::string metrics_text() const;
  // Serves the same at http://ADDRESS/metrics (prometheus-cpp's exposer, on 2 threads of
  // its own) until the Host is destroyed. ADDRESS is "HOST:PORT"; port 0 picks a free
  // one. Returns the port; Unavailable if it cannot listen there, InvalidArgument if
  // metrics are served already.
  Result<int> serve_metrics(const std::string& address);
  // The compile cache (HostOptions::compile_cache_dir): its counts, and a wait until no
  // entry is being built (the builds queued so far are done).
  CompileCacheStats compile_cache_stats() const;
  void wait_for_compile_cache();
  // Stops every extension: graceful within `grace`, then SIGTERM, then SIGKILL.
  void stop(std::chrono::milliseconds grace = 2s);

  // A shared buffer any extension of this host may read (one dataset for all: its pages
  // exist once). Not pooled. Extension::allocate() is the pooled, per-extension kind.
  Result<SharedBuffer> allocate(size_t size);
  const HostOptions& options() const;

  // Host services skills call by name with airlock_call(). Registering a name again
  // replaces the handler. A caller not allowed by `options` gets PermissionDenied.
  void register_service(const std::string& name, ServiceHandler handler, ServiceOptions options = {});
  void register_blocking_service(const std::string& name, BlockingServiceHandler handler, ServiceOptions options = {});
  // A "proxied singleton": one object, its methods as services "NAME.METHOD".
  template <class T>
  void register_object(const std::string& name, std::shared_ptr<T> object,
                       std::vector<std::pair<std::string, CallResult (T::*)(const ServiceRequest&)>> methods,
                       ServiceOptions options = {}) {
    for (auto& [method, fn] : methods) {
      register_blocking_service(name + "." + method, [object, fn = fn](const ServiceRequest& r) { return ((*object).*fn)(r); },
                                options);
    }
  }

 private:
  std::unique_ptr<detail::HostImpl> impl_;
};

}  // namespace airlock
