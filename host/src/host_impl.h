// Host internals. One I/O thread runs a libuv loop that owns every channel, process
// watcher and call timer; public methods post work to it (post()) and, for blocking
// methods, wait on a future.
#pragma once

#include <uv.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "airlock/channel.h"
#include "airlock/host.h"
#include "airlock/loop_timer.h"
#include "airlock/shm/fd_channel.h"
#include "airlock/shm/pool.h"
#include "airlock/shm/registry.h"
#include "process.h"
#include "zygote.h"

namespace airlock::detail {

using Done = std::function<void(CallResult)>;
class HostImpl;
class ExtensionState;

struct LoadedSkill {
  std::string wasm;  // bytes (load_skill_bytes) ...
  std::string path;  // ... or a path the extension reads
  SkillLimits limits;
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
  LoopTimer* timer = nullptr;  // host-side deadline (backstop to the extension's own)
  ChainInfo info;
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

// Workers for blocking services.
class WorkerPool {
 public:
  explicit WorkerPool(unsigned threads);
  ~WorkerPool();
  void submit(std::function<void()> job);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

// One extension: the handle's shared state. Fields marked [loop] are touched only on
// the I/O thread; the atomics may be read anywhere.
class ExtensionState : public std::enable_shared_from_this<ExtensionState> {
 public:
  ExtensionState(HostImpl* host, ExtensionOptions opts) : host(host), opts(std::move(opts)) {}
  HostImpl* host;
  const ExtensionOptions opts;
  std::atomic<int> pid{0};
  std::atomic<bool> ready{false};
  std::atomic<bool> stopping{false};

  // [loop]
  ChildProcess proc;
  std::unique_ptr<proto::Channel> channel;
  uv_poll_t* exit_watch = nullptr;
  std::unordered_map<uint64_t, PendingCall> pending;
  std::map<std::string, LoadedSkill> skills;  // reloaded after a restart
  // Open service calls, by the host request they were made under (cancelled with it).
  std::unordered_map<uint64_t, std::vector<std::shared_ptr<ServiceCallState>>> services;
  std::function<void(Status)> on_ready;       // spawn / restart waiting for Ready
  uint32_t restarts = 0;
  std::chrono::milliseconds backoff{0};
  std::vector<std::function<void()>> on_exit;  // stop() waiters
  std::string down_reason;                     // why the last process ended
  std::string disconnect_reason;               // set when we cut the peer off (bad frame)
  LoopTimer* kill_timer = nullptr;
  LoopTimer* restart_timer = nullptr;

  // Shared memory. The pool and the exporter outlive restarts (the exporter forgets what
  // the dead process was sent); the side channel is per process. Any thread.
  std::mutex shm_mu;
  shm::FdChannel side;
  shm::Registry inbox;  // outputs the current process shared with us
  std::unique_ptr<shm::Exporter> exporter;
  std::shared_ptr<shm::Pool> pool;
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
  bool on_loop_thread() const { return std::this_thread::get_id() == loop_thread_id_; }

  Result<Extension> spawn(ExtensionOptions opts);
  std::optional<Extension> find(std::string_view name) const;
  void stop_all(std::chrono::milliseconds grace);

  // [loop] operations on an extension
  void start_process(const std::shared_ptr<ExtensionState>& e);
  void send_call(const std::shared_ptr<ExtensionState>& e, uint64_t id, proto::Frame frame,
                 std::chrono::milliseconds timeout, Done done, ChainInfo info = {});
  // Ends a pending call: its timer, its chain's open service calls, then `done`.
  void complete_pending(ExtensionState& e, uint64_t id, CallResult r);
  void cancel_call(const std::shared_ptr<ExtensionState>& e, uint64_t id);
  void stop_extension(const std::shared_ptr<ExtensionState>& e, std::chrono::milliseconds grace, std::function<void()> done);

  uint64_t next_id() { return next_id_.fetch_add(1, std::memory_order_relaxed); }

  // Host services (services.cc).
  void register_service(const std::string& name, ServiceHandler h, BlockingServiceHandler b);
  void on_service_request(const std::shared_ptr<ExtensionState>& e, proto::Request&& r);
  void reply_service(const std::shared_ptr<ServiceCallState>& s, CallResult r);  // [loop]
  void nested_call(const std::shared_ptr<ServiceCallState>& s, std::string ext, std::string skill, std::string input,
                   Done done);  // [loop]
  void end_services(ExtensionState& e, uint64_t parent);  // [loop]
  const HostOptions opts;
  std::string binary;  // resolved extension binary ("" if not found)
  Error binary_error;

 private:
  void drain_posted();
  void on_frame(const std::shared_ptr<ExtensionState>& e, proto::Frame&& f);
  void on_channel_closed(const std::shared_ptr<ExtensionState>& e, const Error& err);
  void on_process_exit(const std::shared_ptr<ExtensionState>& e);
  void fail_pending(ExtensionState& e, const Error& err);
  CallResult take_shared_output(ExtensionState& e, const proto::Response& r);
  void reload_skills(const std::shared_ptr<ExtensionState>& e, std::function<void(Status)> done);
  void schedule_restart(const std::shared_ptr<ExtensionState>& e);

  uv_loop_t loop_{};
  uv_async_t wake_{};
  std::mutex mu_;
  std::deque<std::function<void()>> queue_;
  bool closing_ = false;
  std::thread thread_;
  std::thread::id loop_thread_id_;
  std::atomic<uint64_t> next_id_{1};
  std::unique_ptr<Zygote> zygote_;  // [loop] null when HostOptions::use_zygote is off
  std::mutex svc_mu_;
  std::map<std::string, std::pair<ServiceHandler, BlockingServiceHandler>> service_handlers_;
  std::unique_ptr<WorkerPool> workers_;
  mutable std::mutex ext_mu_;
  std::map<std::string, std::shared_ptr<ExtensionState>, std::less<>> extensions_;
};

}  // namespace airlock::detail
