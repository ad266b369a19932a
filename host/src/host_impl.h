// Host internals. One I/O thread runs a libuv loop that owns every channel, process
// watcher and call timer; public methods post work to it (post()) and, for blocking
// methods, wait on a future.
//
// Rooms (one file each):
//   host.cc          the loop thread, spawn(), the public Host/Extension facade
//   supervisor.cc    processes: start (zygote or exec), exit, restart, stop, health pings
//   peer_frames.cc   every frame an extension sends, checked against the state it may
//                    arrive in; a frame that breaks the protocol cuts the extension off
//   calls.cc         the call table: pending calls, their deadlines and completions
//   services.cc      host services and call chains (+ worker_pool.cc for blocking ones)
//   shared_memory.cc SharedBuffer, Extension::allocate/share, large outputs
//   log_gate.cc      escaping and rate-limiting extension log lines
#pragma once

#include <uv.h>

#include <atomic>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "airlock/channel.h"
#include "airlock/host.h"
#include "airlock/loop_timer.h"
#include "airlock/ring.h"
#include "airlock/shm/fd_channel.h"
#include "airlock/shm/pool.h"
#include "airlock/shm/registry.h"
#include "call_stats.h"
#include "log_gate.h"
#include "process.h"
#include "worker_pool.h"
#include "zygote.h"

namespace airlock::detail {

using Done = std::function<void(CallResult)>;
// What an OutputView holds: the mapping of the extension's output buffer, and whom to
// give it back to when the view goes (any thread).
struct OutputViewState {
  ~OutputViewState();
  shm::View view;
  std::weak_ptr<ExtensionState> ext;
  uint64_t buffer_id = 0;
  uint64_t side_gen = 0;
  uint64_t pinned = 0;  // bytes of mapping it holds (ExtensionState::view_bytes)
};

class HostImpl;
class ExtensionState;

struct LoadedSkill {
  // The module bytes (load_skill_bytes), shared with whoever else holds them (a SkillSet
  // keeps every module it places: one copy in the host, not one more per load) ...
  std::shared_ptr<const void> keep;
  std::string_view wasm;
  std::string path;  // ... or a path the extension reads
  SkillLimits limits;
  std::string cache_key;  // its compile-cache entry's key, if it has one (reloaded from it)
};

using Deadline = std::chrono::steady_clock::time_point;

// Where a call sits in its chain (host -> A -> host service -> B -> ...).
struct ChainInfo {
  uint32_t depth = 0;     // 1 for a call from the application, +1 per nested skill call
  std::string chain;      // "A/run -> kv.get -> B/run", for messages
  Deadline deadline{};
};

struct PendingCall {
  Done done;
  std::shared_ptr<OutputView> view;  // CallOptions::output_view
  LoopTimer* timer = nullptr;  // host-side deadline (backstop to the extension's own)
  ChainInfo info;
  bool counts = true;  // toward max_calls_in_flight (health pings do not)
  bool is_call = false;  // a skill call (counted in CallStats), not a control request
  std::chrono::steady_clock::time_point started{};
  // A thread blocks on it in Extension::call and may read its answer itself (calls.cc,
  // lead): then an answer the loop hands over instead must wake that thread.
  bool waiter = false;
};

// A skill's call of a host service, while it is open. Shared by the handler's
// ServiceRequest copies and the loop.
struct ServiceCallState {
  HostImpl* host = nullptr;
  std::shared_ptr<ExtensionState> ext;  // the caller
  uint64_t id = 0;                      // the extension's request id: the reply goes there
  uint64_t parent = 0;                  // host request id of the call the skill is serving
  std::string service, input;
  ChainInfo info;
  std::atomic<bool> replied{false};
  std::atomic<bool> cancelled{false};
  std::vector<std::pair<std::weak_ptr<ExtensionState>, uint64_t>> children;  // [loop] nested calls
};

// Ids of requests an extension sends (service calls) have the top bit set, so they never
// collide with the host's ids on the same channel (extension/serve/server.cc).
constexpr uint64_t kExtensionIdBit = 1ull << 63;

// One extension: the handle's shared state. Fields marked [loop] are touched only on
// the I/O thread; the atomics may be read anywhere.
class ExtensionState : public std::enable_shared_from_this<ExtensionState> {
 public:
  // Decided at spawn and fixed for its life (HostImpl::resolved_engine): the engine
  // options, and the compile cache it uses (null: none; the cache keeps TurboFan code,
  // so none with lazy compilation or without tier-up).
  EngineOptions engine;
  class CompileCache* compile_cache = nullptr;
  ExtensionState(HostImpl* host, ExtensionOptions opts, const HostLimits& limits)
      : host(host), opts(std::move(opts)), log_gate(limits.log_lines_per_second) {}
  // The channel goes first: a reading thread (gRPC's CQ thread, a leader) may use the
  // members below through ChannelCallbacks::take until the channel is closed.
  ~ExtensionState() { channel.reset(); }
  HostImpl* host;
  const ExtensionOptions opts;
  std::atomic<int> pid{0};
  std::atomic<bool> ready{false};
  std::atomic<bool> stopping{false};
  // Inline request bytes on their way to the loop (posted, not yet sent or refused), and
  // what the channel last said it holds: callers are refused before they copy more than
  // max_queued_bytes into the loop's queue, however far behind the loop is.
  std::atomic<size_t> posted_bytes{0};
  std::atomic<size_t> queued_bytes{0};

  // [loop] the current process
  ChildProcess proc;
  uint64_t attempt = 0;  // start_process() calls; a late zygote answer for an older one is dropped
  bool got_ready = false;  // Ready arrived from this process (it may, once)
  std::unique_ptr<proto::Channel> channel;
  uv_poll_t* exit_watch = nullptr;
  std::unordered_map<uint64_t, PendingCall> pending;
  // Entries of `pending` and `arrivals` that count toward max_calls_in_flight (any thread).
  std::atomic<size_t> counted_pending{0};
  uint64_t unanswered_ended = 0;    // calls we ended without an answer (timeout, cancel): a late answer is fine
  // The caller's-thread path (calls.cc, send_direct): a call the calling thread wrote to
  // the socket itself waits here until the loop takes it into `pending`
  // (adopt_arrivals), which it does before it reads `pending` for any reason.
  struct Arrival {
    uint64_t id;
    PendingCall pc;
    std::chrono::milliseconds timeout;
  };
  std::mutex direct_mu;
  std::shared_ptr<proto::DirectSender> direct;  // [direct_mu] the current process's channel's, if it has one
  std::shared_ptr<proto::DirectReader> reader;  // [direct_mu] likewise (msgpack only)
  // Skills whose calls send more than their answer (service requests, logs): a leader
  // would only pass those frames on to the loop, one more wake-up than the loop reading
  // them itself, so the next calls of that skill do not lead (calls.cc, lead).
  std::unordered_map<std::string, uint8_t> lead_skips;  // [direct_mu]
  std::vector<Arrival> arrivals;                // [direct_mu]
  std::atomic<bool> has_arrivals{false};
  // Work posted to the loop that sends this extension a frame, not yet run: a later call
  // from the same thread must not overtake it (a load, say), so it is posted too.
  std::atomic<uint32_t> posted_ops{0};
  std::map<std::string, LoadedSkill> skills;  // reloaded after a restart
  uint32_t loads_in_flight = 0;
  // Open service calls, by the host request they were made under (cancelled with it).
  std::unordered_map<uint64_t, std::vector<std::shared_ptr<ServiceCallState>>> services;
  std::unordered_set<uint64_t> open_service_ids;  // the extension's request ids
  std::function<void(Status)> on_ready;       // spawn / restart waiting for Ready
  uint32_t restarts = 0;
  std::chrono::milliseconds backoff{0};
  std::vector<std::function<void()>> on_exit;  // stop() waiters
  std::string down_reason;                     // why the last process ended
  std::string disconnect_reason;               // set when we cut the peer off
  LoopTimer* kill_timer = nullptr;
  LoopTimer* restart_timer = nullptr;
  LoopTimer* health_timer = nullptr;
  bool health_outstanding = false;
  LogGate log_gate;

  // Shared memory. The pool and the exporter outlive restarts (the exporter forgets what
  // the dead process was sent); the side channel is per process. Any thread.
  std::mutex shm_mu;
  shm::FdChannel side;
  // [loop] The ring pair offered to the process being started (HostOptions::ring_bytes);
  // its channel takes it in attach_process.
  std::shared_ptr<proto::RingLink> ring;
  uint64_t side_gen = 0;  // +1 per process: a view of a dead process's output gives nothing back
  std::atomic<uint64_t> view_bytes{0};  // mappings held by OutputViews (HostLimits::max_shared_bytes)
  std::unique_ptr<shm::Registry> inbox;  // outputs the current process shared with us
  std::unique_ptr<shm::Exporter> exporter;
  std::shared_ptr<shm::Pool> pool;

  // A compile-cache entry lent to the current process for one LoadSkill: its fd is
  // announced on the side channel (before the frame that names it), and the extension
  // closes it once the load is done. nullopt when it cannot be sent: no side channel,
  // or its socket stayed full for `wait` (a peer that does not read); the load then
  // compiles. Any thread but the loop's when `wait` > 0.
  std::optional<proto::ShmRef> lend_code(shm::Buffer& code, std::chrono::milliseconds wait);
  void code_returned(uint64_t id);  // the load is answered (or failed): forget the id

  std::string label() const;  // "extension 'x' (pid 123)"
  CallStats stats;  // any thread

  std::string sandbox_report() const;
  void set_sandbox_report(std::string r);

 private:
  mutable std::mutex report_mu_;
  std::string sandbox_report_;  // from the current process's Ready
};

// A SharedBuffer: from one extension's pool (owner set), or host-wide (owner null,
// its own memfd, shareable with every extension of the host).
struct BufferState {
  shm::Lease lease;
  std::optional<shm::Buffer> own;
  size_t size = 0;
  const ExtensionState* owner = nullptr;
  std::mutex mu;
  std::vector<std::weak_ptr<ExtensionState>> shared_with;  // host-wide: who was sent it

  shm::Buffer& buffer() { return own ? *own : lease.buffer(); }
  ~BufferState();  // host-wide: tells every extension that has it to unmap it
};

class HostImpl {
 public:
  explicit HostImpl(HostOptions o);
  ~HostImpl();

  void post(std::function<void()> fn);
  // post() for work that sends `e` a frame (ExtensionState::posted_ops).
  void post_for(const std::shared_ptr<ExtensionState>& e, std::function<void()> fn);
  bool on_loop_thread() const { return std::this_thread::get_id() == loop_thread_id_; }

  Result<Extension> spawn(ExtensionOptions opts);
  std::optional<Extension> find(std::string_view name) const;
  std::vector<Extension> all_extensions() const;
  void stop_all(std::chrono::milliseconds grace);

  std::unique_ptr<class CompileCache> compile_cache;  // HostOptions::compile_cache_dir
  EngineOptions resolved_engine(const ExtensionState& e) const;  // supervisor.cc
  // Host::serve_metrics(); reset first in ~Host.
  std::mutex metrics_mu;
  std::unique_ptr<class MetricsEndpoint> metrics;

  // [loop] supervisor.cc
  void start_process(const std::shared_ptr<ExtensionState>& e);
  void stop_extension(const std::shared_ptr<ExtensionState>& e, std::chrono::milliseconds grace, std::function<void()> done);
  // The extension broke the protocol or stopped answering: its calls fail with `why`,
  // the process is killed (and restarted per its policy once its exit is reaped).
  void cut_off(const std::shared_ptr<ExtensionState>& e, const std::string& why);
  Status check_sandbox(ExtensionState& e, const std::string& report);
  std::string sandbox_kill_text(ExtensionState& e);
  bool sandbox_gap_reported_ = false;  // [loop]

  // [loop] calls.cc
  void send_call(const std::shared_ptr<ExtensionState>& e, uint64_t id, proto::Frame frame,
                 std::chrono::milliseconds timeout, Done done, ChainInfo info = {}, bool counts = true,
                 std::shared_ptr<OutputView> view = {});
  // Ends a pending call: its timer, its chain's open service calls, then `done`.
  void complete_pending(ExtensionState& e, uint64_t id, CallResult r);
  void cancel_call(const std::shared_ptr<ExtensionState>& e, uint64_t id);
  // [any thread] Writes a call on the calling thread, skipping the loop. False: nothing
  // was sent and nothing taken from the arguments; post send_call() instead.
  // `leadable` non-null: the caller will wait; set to whether it may read the answer.
  bool send_direct(const std::shared_ptr<ExtensionState>& e, uint64_t id, const proto::Frame& frame,
                   std::chrono::milliseconds timeout, Done& done, ChainInfo& info, std::shared_ptr<OutputView>& view,
                   bool* leadable);
  // [any thread but the loop] The caller of a call sent directly waits by reading the
  // socket itself, until finished() or `until` (DirectReader::lead); other threads'
  // answers it reads are completed on its thread too, when they are waited for alike.
  void lead(const std::shared_ptr<ExtensionState>& e, std::string_view skill, Deadline until,
            const std::function<bool()>& finished);
  // [the thread that read it: a leader, gRPC's CQ thread] Completes the call a Response answers, if it was sent directly, is still
  // unadopted, waited for in Extension::call, and the answer is inline. False: the loop's.
  bool take_direct_answer(ExtensionState& e, proto::Frame& f);
  bool defer_chain_request(ExtensionState& e, proto::Request& q);
  // [a caller's thread] Serves a chain request a leader deferred: the nested call sent
  // and waited for on this thread, the answer written back to `e`; where it cannot (not
  // allowed, too deep, the target not ready...), the loop serves it as any other.
  void serve_chain_here(const std::shared_ptr<ExtensionState>& e, proto::Request req);
  // The extension's words in an error: one line, cut, prefixed with who said it.
  Error named_error(ExtensionState& e, Error err) const;
  // Moves calls sent on callers' threads into `pending`, with their deadline timers.
  void adopt_arrivals(ExtensionState& e);
  // Sets e.direct: the channel's sender while the extension is ready, else none.
  void set_direct(ExtensionState& e, bool on);
  void fail_pending(ExtensionState& e, const Error& err);

  uint64_t next_id() { return next_id_.fetch_add(1, std::memory_order_relaxed); }
  uint64_t last_id() const { return next_id_.load(std::memory_order_relaxed) - 1; }

  // services.cc
  void register_service(const std::string& name, ServiceHandler h, BlockingServiceHandler b, ServiceOptions o);
  void on_service_request(const std::shared_ptr<ExtensionState>& e, proto::Request&& r);  // [loop]
  void reply_service(const std::shared_ptr<ServiceCallState>& s, CallResult r);  // [loop]
  void nested_call(const std::shared_ptr<ServiceCallState>& s, std::string ext, std::string skill, std::string input,
                   Done done);  // [loop]
  void end_services(ExtensionState& e, uint64_t parent);  // [loop]

  // [loop] peer_frames.cc
  void on_frame(const std::shared_ptr<ExtensionState>& e, proto::Frame&& f);
  void on_channel_closed(const std::shared_ptr<ExtensionState>& e, const Error& err);
  void emit_log(ExtensionState& e, int level, std::string_view skill, std::string_view message);
  void report_dropped_logs(ExtensionState& e, uint64_t n);

  const HostOptions opts;
  std::string binary;  // resolved extension binary ("" if not found)
  Error binary_error;
  uv_loop_t* loop() { return &loop_; }

 private:
  void drain_posted();
  // The backstop for calls sent on callers' threads (calls.cc): one timer that fires no
  // later than the deadline of any call not yet adopted, so a caller wakes the loop only
  // when its deadline is earlier than the timer's (calls with one timeout never do).
  void arm_backstop();
  void on_backstop();
  uv_timer_t backstop_{};
  std::atomic<int64_t> backstop_at_{INT64_MAX};    // steady_clock ns; INT64_MAX: not armed
  std::atomic<int64_t> backstop_period_{INT64_MAX};  // shortest timeout (ns) sent directly since it fired
  void on_process_exit(const std::shared_ptr<ExtensionState>& e);
  CallResult take_shared_output(const std::shared_ptr<ExtensionState>& e, const proto::Response& r, OutputView* view);
  void reload_skills(const std::shared_ptr<ExtensionState>& e, std::function<void(Status)> done);
  // The loads of a reload, with the compiled code found for them (by skill name).
  void send_reloads(const std::shared_ptr<ExtensionState>& e, std::map<std::string, std::shared_ptr<shm::Buffer>> compiled,
                    std::function<void(Status)> done);
  // Compile-cache reads for reloads, off the loop thread (each reads files): joined by
  // ~HostImpl; finished ones are joined when the next starts.
  std::mutex reader_mu_;
  std::vector<std::pair<std::thread, std::shared_ptr<std::atomic<bool>>>> cache_readers_;
  void schedule_restart(const std::shared_ptr<ExtensionState>& e);
  void attach_process(const std::shared_ptr<ExtensionState>& e, ChildProcess child);
  void start_with_exec(const std::shared_ptr<ExtensionState>& e, const std::vector<std::string>& argv, int child_side);
  void schedule_health(const std::shared_ptr<ExtensionState>& e);
  void send_health(const std::shared_ptr<ExtensionState>& e);
  bool is_extension_pid(pid_t pid) const;

  uv_loop_t loop_{};
  uv_async_t wake_{};
  std::mutex mu_;
  std::deque<std::function<void()>> queue_;
  bool closing_ = false;
  std::thread thread_;
  std::thread::id loop_thread_id_;
  std::atomic<uint64_t> next_id_{1};
  std::unique_ptr<Zygote> zygote_;  // [loop] null when HostOptions::use_zygote is off
  struct Service {
    ServiceHandler handler;
    BlockingServiceHandler blocking;
    std::vector<std::string> allow;
  };
  std::mutex svc_mu_;
  std::map<std::string, Service> service_handlers_;
  std::unique_ptr<WorkerPool> workers_;
  mutable std::mutex ext_mu_;
  std::map<std::string, std::shared_ptr<ExtensionState>, std::less<>> extensions_;
};

}  // namespace airlock::detail
